"""The floors of the house: models/ is torch only; the core never imports Qt or the UI."""

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STDLIB = set(sys.stdlib_module_names)


def imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module)
    return names


def test_models_import_only_torch_and_the_standard_library():
    for path in (REPO / "models").rglob("*.py"):
        for name in imports(path):
            top = name.split(".")[0]
            assert top in STDLIB or top == "torch", f"{path.name} imports {name}"


def test_core_never_imports_qt_or_the_ui():
    for path in (REPO / "inspector").rglob("*.py"):
        if "ui" in path.relative_to(REPO / "inspector").parts:
            continue
        for name in imports(path):
            assert not name.startswith(("PySide6", "pyqtgraph", "inspector.ui")), f"{path.name} imports {name}"


def test_cli_runs_headless_without_qt_loaded():
    code = "import sys, inspector.cli as c; c.main(['models']); assert 'PySide6' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True)
