"""The data layer never imports a user interface library (DESIGN.md, "Layers")."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

import carecli.data
import carecli.services

FORBIDDEN = ("textual", "click", "asyncssh", "rich")


@pytest.mark.parametrize("package", [carecli.data, carecli.services], ids=["data", "services"])
def test_inner_layers_import_no_ui_library(package):
    """carecli.data and carecli.services sit under every way in: no Textual, click or asyncssh."""
    modules = [m.name for m in pkgutil.walk_packages(package.__path__, f"{package.__name__}.")]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({FORBIDDEN!r})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert len(modules) > 3  # the walk found the package's modules


def test_screens_build_no_sql():
    """Screens ask the Desk service for data; they never build SQL or open units of work themselves."""
    import ast
    from pathlib import Path

    import carecli.screens

    allowed = {"sqlalchemy.exc"}  # telling a dropped connection from other failures
    offenders = []
    for path in sorted(Path(carecli.screens.__path__[0]).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if (name.startswith(("sqlalchemy", "psycopg")) and name not in allowed) or \
                        name in ("carecli.data.unit_of_work", "carecli.data.repositories.identity"):
                    offenders.append(f"{path.name}: {name}")
    assert offenders == []
