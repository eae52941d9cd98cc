"""The data layer never imports a user interface library (DESIGN.md, "Layers")."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import carecli.data

FORBIDDEN = ("textual", "click", "asyncssh", "rich")


def test_data_layer_imports_no_ui_library():
    modules = [m.name for m in pkgutil.walk_packages(carecli.data.__path__, "carecli.data.")]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({FORBIDDEN!r})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert "carecli.data.models.platform" in modules  # the walk found the package's modules
