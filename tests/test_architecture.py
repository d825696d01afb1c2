"""The floors of the house: import-linter's contracts (pyproject.toml) and the headless command line."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    """Layers (ui/cli above app above results/modelstore above learn above detect above frames above
    base), no Qt outside the ui, models/ on torch alone — relative imports included."""
    code = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True, no_logo=True))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 kept, 0 broken" in done.stdout


def test_cli_runs_headless_without_qt_loaded():
    code = "import sys, inspector.cli as c; c.main(['models']); assert 'PySide6' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True)
