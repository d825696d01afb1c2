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


def test_the_installer_spec_bundles_files_that_exist(monkeypatch):
    """The PyInstaller spec, run with PyInstaller's objects recorded instead of built: the entry
    point, the resources (demo model, icon) and the backbone's weights it names are all there."""
    import types

    built: dict[str, list] = {}
    hooks = types.ModuleType("PyInstaller.utils.hooks")

    def collect_data_files(package):
        import importlib.util

        root = Path(importlib.util.find_spec(package).origin).parent
        return [(str(p), package) for p in root.rglob("*") if p.is_file() and p.suffix != ".pyc"]

    hooks.collect_data_files = collect_data_files
    hooks.collect_submodules = lambda package: [package]
    for name in ("PyInstaller", "PyInstaller.utils"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "PyInstaller.utils.hooks", hooks)

    def record(kind):
        def made(*args, **kw):
            built.setdefault(kind, []).append((args, kw))
            return types.SimpleNamespace(pure=[], scripts=[], binaries=[], datas=[])
        return made

    spec = REPO / "installer" / "inspector.spec"
    exec(compile(spec.read_text(), str(spec), "exec"),
         {"SPECPATH": str(spec.parent), **{k: record(k) for k in ("Analysis", "PYZ", "EXE", "COLLECT")}})
    (scripts, ), analysis = built["Analysis"][0]
    assert [Path(s) for s in scripts] == [REPO / "main.py"]
    datas = analysis["datas"]
    assert (str(REPO / "resources"), "resources") in datas
    assert {"demo-patchcore.safetensors", "inspector.png"} <= {p.name for p in (REPO / "resources").iterdir()}
    assert any(Path(src).suffix == ".pth" for src, _ in datas)           # EfficientNet-Lite0's ImageNet weights
    assert {kw["name"] for _, kw in built["EXE"]} == {"inspector", "inspector-gui"}
    desktop = (REPO / "installer" / "inspector.desktop").read_text()
    assert "Exec=@EXEC@" in desktop and "Icon=@ICON@" in desktop        # filled in by installer/build.py
