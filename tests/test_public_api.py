"""`import ssamba` is light, `dir(ssamba)` lists the public API, and the TYPE_CHECKING imports that
IDEs and type checkers read name exactly the lazily exported objects."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import ssamba

INIT = Path(ssamba.__file__)


def test_dir_lists_the_public_api():
    names = dir(ssamba)
    assert set(ssamba.__all__) <= set(names)
    assert not {"importlib", "Any", "TYPE_CHECKING", "_EXPORTS"} & set(names)
    for name in ssamba.__all__:
        assert getattr(ssamba, name) is not None, name


def test_type_checking_imports_match_the_lazy_exports():
    tree = ast.parse(INIT.read_text())
    guarded = [node for node in tree.body if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"]
    assert len(guarded) == 1
    imported = {alias.name: stmt.module for stmt in guarded[0].body if isinstance(stmt, ast.ImportFrom) for alias in stmt.names}
    assert imported == ssamba._EXPORTS


def test_import_does_not_load_torch():
    code = "import sys, ssamba; dir(ssamba); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "False"
