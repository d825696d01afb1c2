"""Build Inspector as a one-folder application with PyInstaller, then try the frozen program.

    python installer/build.py [--dist dist] [--smoke-folder DIR] [--no-smoke] [--install-desktop]

Run it with the Python of the environment to bundle (``.venv/bin/python`` after
``installer/bootstrap.py``): the bundle carries that environment's PyTorch — the CPU build that
bootstrap installs on a machine without an NVIDIA GPU, or the CUDA build after ``bootstrap.py
--gpu`` (several GB).  PyInstaller is installed into that environment if it is missing.

It writes ``DIST/inspector/`` with ``inspector`` (the command line; the window when run without
arguments) and ``inspector-gui`` (the window, with no console on Windows), and a desktop entry
``inspector.desktop`` beside them.  ``--install-desktop`` also puts the entry and the icon into
the user's menu (``~/.local/share/applications``, Linux).

The smoke test then runs the frozen program as a user would: ``--version``; ``inspect`` of a
folder with the bundled demo model, headless, every file accounted for in the CSV; ``export`` of
that model to ONNX; and the window (Qt's offscreen platform), which must still be running after
20 seconds with no traceback.
The build time, the bundle's size and each check's outcome are printed at the end.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "installer" / "inspector.spec"
DESKTOP_TEMPLATE = REPO / "installer" / "inspector.desktop"
WINDOW_SECONDS = 20


def say(text: str) -> None:
    print(f"build: {text}", flush=True)


def ensure_pyinstaller() -> None:
    try:
        import PyInstaller  # noqa: F401
    except ImportError:
        say("PyInstaller is not installed here: installing it (pip install 'pyinstaller>=6.5')")
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "pyinstaller>=6.5"], check=True)


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def build(dist: Path) -> tuple[Path, float]:
    work = REPO / "build" / "pyinstaller"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "PyInstaller", str(SPEC), "--noconfirm", "--clean", "--log-level", "WARN",
                    "--distpath", str(dist), "--workpath", str(work)], check=True, cwd=REPO)
    return dist / "inspector", time.perf_counter() - t0


def program(bundle: Path, name: str) -> Path:
    return bundle / (name + ".exe" if sys.platform == "win32" else name)


def bundled_resource(bundle: Path, name: str) -> Path:
    found = sorted(bundle.rglob(f"resources/{name}"))
    if not found:
        raise SystemExit(f"build: the bundle lacks resources/{name}")
    return found[0]


def write_desktop_entry(bundle: Path) -> Path:
    text = DESKTOP_TEMPLATE.read_text(encoding="utf-8")
    text = text.replace("@EXEC@", str(program(bundle, "inspector-gui").resolve()))
    text = text.replace("@ICON@", str(bundled_resource(bundle, "inspector.png").resolve()))
    entry = bundle / "inspector.desktop"
    entry.write_text(text, encoding="utf-8")
    entry.chmod(0o755)
    return entry


def install_desktop(entry: Path, bundle: Path) -> None:
    share = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    icons = share / "icons" / "hicolor" / "256x256" / "apps"
    apps = share / "applications"
    icons.mkdir(parents=True, exist_ok=True)
    apps.mkdir(parents=True, exist_ok=True)
    shutil.copy2(bundled_resource(bundle, "inspector.png"), icons / "inspector.png")
    text = entry.read_text(encoding="utf-8")
    (apps / "inspector.desktop").write_text(text.replace(str(bundled_resource(bundle, "inspector.png").resolve()),
                                                         "inspector"), encoding="utf-8")
    say(f"desktop entry installed: {apps / 'inspector.desktop'}")


def default_smoke_folder() -> Path | None:
    shared = REPO.parent / "shared" / "data" / "magnetic_tile" / "test" / "good"
    return shared if shared.is_dir() else None


def smoke(bundle: Path, folder: Path | None) -> list[tuple[str, bool, str]]:
    """The frozen program's checks: (what, passed, detail)."""
    checks = []
    cli = program(bundle, "inspector")
    with tempfile.TemporaryDirectory(prefix="inspector-smoke-") as tmp:
        env = {**os.environ, "INSPECTOR_DATA_DIR": str(Path(tmp) / "data")}
        env.pop("DISPLAY", None)
        done = subprocess.run([str(cli), "--version"], capture_output=True, text=True, env=env, timeout=120)
        checks.append(("--version", done.returncode == 0, done.stdout.strip() or done.stderr.strip()[-300:]))

        if folder is None:
            folder = Path(tmp) / "images"
            folder.mkdir()
            import cv2
            import numpy as np
            rng = np.random.default_rng(0)
            for i in range(6):
                cv2.imwrite(str(folder / f"{i}.png"), rng.integers(90, 160, (160, 200, 3), dtype=np.uint8))
        n_files = sum(1 for p in folder.rglob("*") if p.is_file())
        demo = bundled_resource(bundle, "demo-patchcore.safetensors")
        table = Path(tmp) / "results.csv"
        t0 = time.perf_counter()
        done = subprocess.run([str(cli), "inspect", str(folder), "--model", str(demo),
                               "--db", str(Path(tmp) / "results.sqlite"), "--csv", str(table)],
                              capture_output=True, text=True, env=env, timeout=900)
        seconds = time.perf_counter() - t0
        rows = list(csv.DictReader(table.open(encoding="utf-8"))) if table.is_file() else []
        ok = done.returncode == 0 and len(rows) == n_files
        last = (done.stdout.strip().splitlines() or [""])[-1]
        checks.append((f"inspect {folder} (headless)", ok,
                       f"exit {done.returncode}, {len(rows)} of {n_files} files in the CSV, {seconds:.0f} s; {last}"
                       + ("" if ok else " " + done.stderr.strip()[-400:])))

        graph = Path(tmp) / "demo.onnx"
        done = subprocess.run([str(cli), "export", "--model", str(demo), str(graph)], capture_output=True, text=True,
                              env=env, timeout=300)
        ok = done.returncode == 0 and graph.is_file() and graph.with_suffix(".json").is_file()
        checks.append(("export --format onnx", ok, done.stdout.strip() or done.stderr.strip()[-400:]))

        gui_env = {**env, "QT_QPA_PLATFORM": os.environ.get("SMOKE_QT_PLATFORM", "offscreen")}
        with open(Path(tmp) / "window.log", "w+", encoding="utf-8") as log:
            window = subprocess.Popen([str(program(bundle, "inspector-gui"))], stdout=log, stderr=subprocess.STDOUT,
                                      env=gui_env)
            try:
                window.wait(timeout=WINDOW_SECONDS)
            except subprocess.TimeoutExpired:
                pass
            running = window.poll() is None
            window.terminate()
            try:
                window.wait(timeout=10)
            except subprocess.TimeoutExpired:
                window.kill()
            log.seek(0)
            output = log.read()
        ok = running and "Traceback" not in output
        checks.append((f"window open for {WINDOW_SECONDS} s (Qt {gui_env['QT_QPA_PLATFORM']})", ok,
                       "still running, no traceback" if ok else output.strip()[-600:]))
    return checks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dist", type=Path, default=REPO / "dist", help="where the bundle goes (default dist/)")
    parser.add_argument("--smoke-folder", type=Path, help="a folder of images for the frozen inspect "
                        "(default: ../shared/data/magnetic_tile/test/good, else generated images)")
    parser.add_argument("--no-smoke", action="store_true", help="build only")
    parser.add_argument("--install-desktop", action="store_true",
                        help="add the desktop entry and icon to the user's application menu (Linux)")
    args = parser.parse_args()
    ensure_pyinstaller()
    import torch

    flavour = f"torch {torch.__version__}" + (f", CUDA {torch.version.cuda}" if torch.version.cuda else ", CPU only")
    say(f"bundling with {sys.executable} ({flavour})")
    bundle, seconds = build(args.dist.resolve())
    entry = write_desktop_entry(bundle)
    if args.install_desktop:
        install_desktop(entry, bundle)
    size = folder_size(bundle)
    say(f"built {bundle} in {seconds:.0f} s: {size / 2**20:.0f} MB ({flavour})")
    if args.no_smoke:
        return 0
    checks = smoke(bundle, args.smoke_folder or default_smoke_folder())
    for what, ok, detail in checks:
        say(f"{'PASS' if ok else 'FAIL'} {what}: {detail}")
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
