"""The model registry: versions, the active one, rollback, and what happens when things go wrong."""

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO

from inspector.cli import main
from inspector.faults import make_model
from inspector.modelstore.modelfile import read_metadata
from inspector.modelstore.registry import INDEX, Registry, RegistryError


@pytest.fixture
def registry(tmp_path):
    return Registry(tmp_path / "models")


@pytest.fixture
def model_files(tmp_path):
    return [make_model(tmp_path / f"m{i}.safetensors", seed=i) for i in range(3)]


def test_versions_activate_roll_back_and_delete(registry, model_files):
    a = registry.add(model_files[0])
    b = registry.add(model_files[1], name="night shift")
    assert (a.id, b.id) == ("v0001", "v0002")
    assert registry.active().id == "v0001"                      # the first version becomes active
    assert b.name == "night shift" and b.method == "ae" and b.threshold is not None
    registry.activate(b.id)
    assert registry.active().id == b.id
    assert registry.rollback().id == a.id and registry.active().id == a.id
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        registry.rollback()
    with pytest.raises(RegistryError, match="is the active model"):
        registry.delete(a.id)
    registry.delete(b.id)
    assert [item.version.id for item in registry.list()] == [a.id]
    assert not registry.path_of(b).exists()
    assert registry.add(model_files[2]).id == "v0003"           # ids are never reused
    with pytest.raises(RegistryError, match="no model version 'v0099'"):
        registry.activate("v0099")


def test_a_changed_threshold_is_saved_as_a_new_version_with_the_same_weights(registry, model_files):
    a = registry.add(model_files[0])
    b = registry.save_threshold(a.id, 0.25)
    assert b.id == "v0002" and b.threshold == 0.25 and b.made_from == "threshold of v0001"
    meta_a, meta_b = read_metadata(registry.path_of(a)), read_metadata(registry.path_of(b))
    assert meta_b["calibration"]["threshold"] == 0.25 and meta_b["calibration"]["rule"] == "manual"
    assert meta_b["weights_sha256"] == meta_a["weights_sha256"]
    assert registry.active().id == a.id                         # kept until asked
    assert not [p for p in registry.root.iterdir() if p.name.startswith(".")]    # nothing staged is left
    with pytest.raises(RegistryError, match="finite"):
        registry.save_threshold(a.id, float("nan"))
    registry.rename(b.id, "  tighter  ")
    assert registry.get(b.id).name == "tighter"


def test_a_version_whose_file_was_deleted_by_hand_is_listed_as_missing(registry, model_files):
    a = registry.add(model_files[0])
    b = registry.add(model_files[1])
    registry.path_of(b).unlink()
    listed = {item.version.id: item for item in registry.list()}
    assert listed[a.id].problem is None and "missing" in listed[b.id].problem
    with pytest.raises(RegistryError, match="cannot be activated"):
        registry.activate(b.id)
    assert registry.active().id == a.id


def test_a_damaged_model_file_is_not_registered(registry, tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\0" * 64)
    with pytest.raises(RegistryError, match="not registered"):
        registry.add(junk)
    assert registry.list() == []


def test_a_registry_folder_that_cannot_be_written_is_a_clear_error(tmp_path, model_files):
    blocker = tmp_path / "data"
    blocker.write_text("a file where the data folder should be")
    with pytest.raises(RegistryError, match="cannot be written here"):
        Registry(blocker / "models").add(model_files[0])
    assert Registry(blocker / "models").list() == []             # reading an absent registry still works


def _add_many(root, path, n):
    registry = Registry(root)
    for _ in range(n):
        registry.add(path)


def test_two_processes_adding_at_once_leave_a_whole_index(registry, model_files):
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_add_many, args=(registry.root, model_files[i], 4)) for i in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    ids = [item.version.id for item in registry.list()]
    assert ids == [f"v{i:04d}" for i in range(1, 9)]
    assert all(registry.path_of(item.version).is_file() for item in registry.list())


def test_train_registers_and_models_list_json_shows_the_versions(tiny_mvtec, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("INSPECTOR_DATA_DIR", str(tmp_path / "data"))
    fast = ["--method", "ae", "--epochs", "1", "--steps-per-epoch", "3", "--size", "32"]
    assert main(["train", "--data", str(tiny_mvtec), *fast]) == 0
    assert "registered as v0001 (active)" in capsys.readouterr().out
    out = tmp_path / "copy.safetensors"
    assert main(["train", "--data", str(tiny_mvtec), *fast, "--out", str(out), "--name", "second"]) == 0
    assert out.is_file()
    capsys.readouterr()
    assert main(["models", "list", "--json"]) == 0
    versions = json.loads(capsys.readouterr().out)
    assert [v["id"] for v in versions] == ["v0001", "v0002"]
    assert [v["active"] for v in versions] == [True, False]
    for v in versions:
        assert {"id", "method", "created", "active", "validation", "threshold", "data"} <= set(v)
        assert v["data"]["n_train_good"] > 0 and len(v["data"]["hash"]) == 16
    assert versions[1]["name"] == "second"
    assert main(["models", "activate", "v0002"]) == 0
    assert main(["models", "rollback"]) == 0
    assert main(["models", "delete", "v0001"]) == 2
    assert "is the active model" in capsys.readouterr().err


def test_a_killed_training_leaves_the_registry_and_the_active_model_as_they_were(tiny_mvtec, tmp_path):
    env = {**os.environ, "INSPECTOR_DATA_DIR": str(tmp_path / "data")}
    registry = Registry(tmp_path / "data" / "models")
    registry.add(make_model(tmp_path / "m.safetensors"))
    before = (registry.root / INDEX).read_bytes()
    proc = subprocess.Popen([sys.executable, str(REPO / "main.py"), "train", "--data", str(tiny_mvtec),
                             "--method", "ae", "--size", "32", "--epochs", "50", "--activate"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    deadline = time.monotonic() + 120
    seen = b""
    while b"train " not in seen and time.monotonic() < deadline:     # killed in the middle of training
        seen += proc.stderr.read1(4096) if hasattr(proc.stderr, "read1") else proc.stderr.read(64)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert b"train " in seen
    assert (registry.root / INDEX).read_bytes() == before
    assert [item.version.id for item in registry.list()] == ["v0001"] and registry.active().id == "v0001"
