"""Set up Inspector from a source checkout: a virtual environment with the right PyTorch, then Inspector.

    python3 installer/bootstrap.py [--venv .venv] [--fresh] [--gpu | --cpu]

PyPI's PyTorch for Linux is the CUDA build, several GB.  On a Linux machine without an NVIDIA GPU
(or with ``--cpu``) this installs a CPU build instead: one pip can already see without a network
(a wheel folder or mirror in pip's configuration) if there is one, else from PyTorch's own CPU index
(https://download.pytorch.org/whl/cpu).  It never falls back to the CUDA build silently: if no CPU
build can be found it says so and stops.  With an NVIDIA GPU (or ``--gpu``), and on Windows and
macOS (where PyPI's build is the right one), it installs PyPI's PyTorch.

Then it installs Inspector itself in editable mode with the test tools (``.[dev]``), and on Linux
names any system library the desktop window needs that is missing.  Standard library only: it runs
before anything is installed.
"""

from __future__ import annotations

import argparse
import ctypes.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TORCH = "torch>=2.4"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
#: Shared libraries Qt's xcb platform plugin loads to open a window, and the Debian packages with them.
QT_LIBRARIES = {"xcb-cursor": "libxcb-cursor0", "xkbcommon-x11": "libxkbcommon-x11-0", "xcb-icccm": "libxcb-icccm4",
                "xcb-image": "libxcb-image0", "xcb-keysyms": "libxcb-keysyms1", "xcb-randr": "libxcb-randr0",
                "xcb-render-util": "libxcb-render-util0", "xcb-shape": "libxcb-shape0",
                "xcb-xinerama": "libxcb-xinerama0", "EGL": "libegl1", "GL": "libgl1",
                "fontconfig": "libfontconfig1", "dbus-1": "libdbus-1-3"}


class BootstrapError(Exception):
    pass


def say(text: str) -> None:
    print(f"bootstrap: {text}", flush=True)


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


def pip(python: Path, *args: str, capture: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-m", "pip", *args], check=False, text=True,
                          capture_output=capture)


def has_nvidia_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    done = subprocess.run([smi, "-L"], capture_output=True, text=True, check=False)
    return done.returncode == 0 and "GPU" in done.stdout


def torch_installed(python: Path) -> str | None:
    done = subprocess.run([str(python), "-c", "import torch; print(torch.__version__)"], capture_output=True,
                          text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else None


def planned_torch(python: Path, *index_args: str) -> tuple[str, str] | None:
    """(version, url) of the torch wheel pip would pick with these index options, or None."""
    done = pip(python, "install", "--dry-run", "--ignore-installed", "--no-deps", "--quiet", "--report", "-",
               *index_args, TORCH, capture=True)
    if done.returncode != 0:
        return None
    try:
        chosen = [item for item in json.loads(done.stdout)["install"] if item["metadata"]["name"] == "torch"]
    except (json.JSONDecodeError, KeyError):
        return None
    if not chosen:
        return None
    return chosen[0]["metadata"]["version"], chosen[0].get("download_info", {}).get("url", "")


def install_cpu_torch(python: Path) -> None:
    """A CPU build of torch: one pip sees without a network first, then PyTorch's CPU index.

    The install pins the exact version, whose local label ``+cpu`` only a CPU build carries, and
    lets pip's usual indexes supply torch's own dependencies.
    """
    for where, find_args, install_args in (("a local wheel", ("--no-index",), ()),
                                           (CPU_INDEX, ("--index-url", CPU_INDEX), ("--extra-index-url", CPU_INDEX))):
        plan = planned_torch(python, *find_args)
        if plan is None or "+cpu" not in plan[0]:
            continue
        version = plan[0]
        say(f"installing PyTorch {version} (CPU build) from {where}")
        if pip(python, "install", *install_args, f"torch=={version}").returncode == 0:
            return
    raise BootstrapError(
        "no CPU build of PyTorch could be found, and PyPI's Linux build is the CUDA one (several GB). Install a CPU "
        f"build into the environment first (pip install torch --index-url {CPU_INDEX}), or run this again with "
        "--gpu to accept the CUDA build.")


def missing_qt_libraries() -> list[str]:
    return [package for name, package in QT_LIBRARIES.items() if ctypes.util.find_library(name) is None]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="installer/bootstrap.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", type=Path, default=REPO / ".venv", help="the virtual environment (default .venv)")
    parser.add_argument("--fresh", action="store_true", help="remove the environment first")
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--gpu", action="store_true", help="install PyPI's PyTorch (the CUDA build on Linux)")
    choice.add_argument("--cpu", action="store_true", help="install a CPU build of PyTorch even with a GPU")
    args = parser.parse_args(argv)
    try:
        if args.fresh and args.venv.exists():
            shutil.rmtree(args.venv)
        python = venv_python(args.venv)
        if not python.exists():
            say(f"creating the virtual environment {args.venv}")
            subprocess.run([sys.executable, "-m", "venv", str(args.venv)], check=True)
        present = torch_installed(python)
        if present:
            say(f"PyTorch {present} is already installed")
        elif args.gpu or (not args.cpu and (not sys.platform.startswith("linux") or has_nvidia_gpu())):
            say("installing PyTorch from PyPI" + (" (CUDA build)" if sys.platform.startswith("linux") else ""))
            if pip(python, "install", TORCH).returncode != 0:
                raise BootstrapError("pip could not install PyTorch")
        else:
            say("no NVIDIA GPU: installing a CPU build of PyTorch")
            install_cpu_torch(python)
        say("installing Inspector (editable, with the test tools)")
        if pip(python, "install", "-e", f"{REPO}[dev]").returncode != 0:
            raise BootstrapError("pip could not install Inspector")
    except BootstrapError as exc:
        print(f"bootstrap: error: {exc}", file=sys.stderr)
        return 1
    if sys.platform.startswith("linux"):
        missing = missing_qt_libraries()
        if missing:
            say("the desktop window needs these system packages (the command line does not): "
                f"sudo apt-get install {' '.join(missing)}")
    say(f"done: {python} main.py opens the window; {python} -m pytest runs the tests")
    return 0


if __name__ == "__main__":
    sys.exit(main())
