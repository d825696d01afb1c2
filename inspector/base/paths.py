"""Where Inspector keeps its data, and where its shipped resources are.

The command line and the window use the same folders, so that a run started from either appears in
both.  Qt is not needed to find them: the folder follows each platform's convention for
application data, and ``INSPECTOR_DATA_DIR`` overrides it (tests, portable installs).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

APP_NAME = "Inspector"
DATA_DIR_ENV = "INSPECTOR_DATA_DIR"
RESULTS_DB_NAME = "results.sqlite"


def data_dir() -> Path:
    """The user's data folder: results database, models, snapshots.

    Linux ``$XDG_DATA_HOME/Inspector`` (``~/.local/share/Inspector``), macOS
    ``~/Library/Application Support/Inspector``, Windows ``%LOCALAPPDATA%\\Inspector``.
    """
    override = os.environ.get(DATA_DIR_ENV)
    if override:
        return Path(override).expanduser()
    home = Path.home()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = home / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share")
    return base / APP_NAME


def default_results_db() -> Path:
    return data_dir() / RESULTS_DB_NAME


def resources_dir() -> Path:
    """The folder of shipped resources (the demo model, icons).

    In a wheel they are installed as the package data ``inspector/resources``; in a source checkout
    (or an editable install) they are the repository's top-level ``resources/``; in a PyInstaller
    bundle, ``resources/`` beside the bundled code.
    """
    here = Path(__file__).resolve()
    candidates = [here.parents[1] / "resources", here.parents[2] / "resources"]
    bundle = getattr(sys, "_MEIPASS", None)
    if bundle:
        candidates.insert(0, Path(bundle) / "resources")
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    return candidates[-1]


def resource(name: str) -> Path:
    return resources_dir() / name
