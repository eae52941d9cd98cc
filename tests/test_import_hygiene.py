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
