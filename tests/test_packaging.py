"""What an installed Inspector carries: every package, and the resources (the demo model)."""

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_package_is_listed_for_the_wheel():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for top in ("inspector", "models")
               for p in (REPO / top).rglob("__init__.py")}
    assert listed == on_disk | {"inspector.resources"}


def test_a_non_editable_install_finds_the_demo_model(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__",
                                                              ".pytest_cache", "bench-results", "tests"))
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(src)], check=True, capture_output=True)
    shutil.rmtree(src)                  # nothing may come from the source tree
    code = ("from inspector.base.paths import resource; import inspector; "
            "p = resource('demo-patchcore.safetensors'); print(p); assert p.is_file(), p; "
            "assert str(p).startswith(inspector.__path__[0]), p")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(target)})
    assert done.returncode == 0, done.stderr
    assert str(target) in done.stdout
