"""The retraining service under the wizard: sharing samples out, training, validating, registering."""

import pytest
import torch

from inspector.app.retrain import MIN_GOODS, RetrainError, Samples, compare_active, plan, register, retrain
from inspector.faults import make_model
from inspector.learn.training import TrainingCancelled
from inspector.modelstore.registry import Registry
from inspector.results.store import ResultStore


def samples_of(root):
    return Samples.from_folders([root / "train" / "good", root / "test" / "good"],
                                [root / "train" / "defect", root / "test" / "blob"])


def test_too_few_good_samples_say_how_many_are_needed(tiny_mvtec):
    few = Samples(sorted((tiny_mvtec / "train" / "good").iterdir())[:12])
    with pytest.raises(RetrainError, match=f"12 good samples: at least {MIN_GOODS} are needed"):
        plan(few)


def test_samples_are_shared_out_without_overlap(tiny_mvtec):
    samples = samples_of(tiny_mvtec)
    assert len(samples.goods) == 52 and len(samples.defects) == 22
    shares = plan(samples, seed=3)
    train = set(shares.dataset.train_good)
    assert not train & set(shares.held_goods) and len(shares.held_goods) == 10
    pool = {p for p, _ in shares.dataset.train_defect}
    assert not pool & set(shares.held_defects) and len(pool) + len(shares.held_defects) == 22
    assert plan(samples, seed=3).held_goods == shares.held_goods          # reproducible


def test_retrain_validates_and_registers_only_when_asked(tiny_mvtec, tmp_path):
    registry = Registry(tmp_path / "models")
    old = registry.add(make_model(tmp_path / "old.safetensors"))
    seen = []
    result = retrain(samples_of(tiny_mvtec), method="patchcore", preset="fast", device="cpu", progress=seen.append)
    stages = {p.stage for p in seen}                      # each surface's fit says which it is
    assert {"features (parts surface)", "calibrate (texture surface)", "choose surface (parts surface)",
            "validate"} <= stages
    assert "features (texture surface)" not in stages     # the second fit reuses the goods' descriptors
    figures = result.validation.figures()
    assert figures["n_validation_good"] == 10 and figures["n_validation_defect"] == 11
    assert figures["image_auroc"] > 0.8                  # dark blobs on texture: easy
    assert len(result.validation.examples) > 0
    assert [v.version.id for v in registry.list()] == [old.id]          # nothing written yet
    name, theirs = compare_active(result, registry)
    assert name.startswith(old.id) and len(theirs.raw_good) == 10
    version = register(result, registry, name="from the wizard", activate=True, threshold=1e9)
    assert registry.active().id == version.id and version.name == "from the wizard"
    assert version.threshold == 1e9 and version.validation["false_alarm_rate"] == 0.0
    assert version.validation["recall"] == 0.0 and version.made_from == "retraining wizard"


def test_a_texture_surface_weighs_the_stages_alike_and_leaves_the_map_unsmoothed(tiny_mvtec):
    result = retrain(samples_of(tiny_mvtec), method="patchcore", preset="fast", device="cpu", surface="texture")
    meta, detector = result.trained.metadata, result.trained.detector
    assert meta["hparams"]["balance_stages"] and detector.balance_stages and not detector.whiten
    assert meta["inspection"]["smoothing"] == 0.0 and meta["training"]["surface"] == "texture"
    assert not torch.equal(detector.channel_weights, torch.ones_like(detector.channel_weights))
    with pytest.raises(RetrainError, match="unknown surface"):
        retrain(samples_of(tiny_mvtec), surface="glass", device="cpu")
    with pytest.raises(RetrainError, match="for the memory bank"):
        retrain(samples_of(tiny_mvtec), method="eidn", surface="texture", device="cpu")
    with pytest.raises(RetrainError, match="mirror images are for the memory bank"):
        retrain(samples_of(tiny_mvtec), method="eidn", mirror_images=True, device="cpu")


def test_auto_surface_keeps_the_fit_the_training_defects_prefer(tiny_mvtec):
    result = retrain(samples_of(tiny_mvtec), method="patchcore", preset="fast", device="cpu")   # auto by default
    training, detector = result.trained.metadata["training"], result.trained.detector
    choice = training["surface_choice"]
    assert set(choice["auroc"]) == {"parts", "texture"} and choice["n_defects"] >= 2
    best = max(choice["auroc"], key=lambda name: (choice["auroc"][name], name == "parts"))
    assert choice["chosen"] == training["surface"] == best
    assert detector.balance_stages == (best == "texture")
    # The held-out defects validate; every one of the training half chose, never the same images.
    assert choice["n_defects"] == len(result.plan.dataset.train_defect) == 11


def test_auto_surface_without_defects_is_parts(tiny_mvtec):
    goods = Samples.from_folders([tiny_mvtec / "train" / "good", tiny_mvtec / "test" / "good"])
    result = retrain(goods, method="patchcore", preset="fast", device="cpu", surface="auto")
    training = result.trained.metadata["training"]
    assert training["surface"] == "parts" and not result.trained.detector.balance_stages
    assert training["surface_choice"]["reason"].startswith("too few labelled defects")


def test_agad_on_features_retrains_from_every_training_side_defect(tiny_mvtec):
    result = retrain(samples_of(tiny_mvtec), method="agad_features", preset="fast", device="cpu")
    training = result.trained.metadata["training"]
    assert result.trained.detector.method == "agad_features" and training["n_pseudo_anomalies"] == 0
    assert training["n_train_defect"] == len(result.plan.dataset.train_defect) == 11   # what it learns from
    assert result.validation.figures()["n_validation_defect"] == 11                    # the other half


def test_a_cancelled_retraining_writes_nothing(tiny_mvtec, tmp_path):
    registry = Registry(tmp_path / "models")
    with pytest.raises(TrainingCancelled):
        retrain(samples_of(tiny_mvtec), preset="fast", device="cpu", should_cancel=lambda: True)
    assert registry.list() == [] and not registry.root.exists()


def test_labels_from_review_are_offered_to_the_next_retraining(tiny_mvtec, tmp_path):
    from inspector.app.inspection import InspectorSettings, load_inspector, run_inspection
    from inspector.frames.sources import FolderSource

    model = make_model(tmp_path / "m.safetensors")
    inspector, meta = load_inspector(model, InspectorSettings())
    with ResultStore(tmp_path / "r.sqlite") as store:
        run = store.start_run(source=str(tiny_mvtec / "test"), kind="folder", model=str(model), method="ae",
                              settings={}, threshold=inspector.threshold)
        run_inspection(inspector, FolderSource(tiny_mvtec / "test"), store, run)
        items = store.items(run)
        store.set_label(items[0].id, "NG")
        store.set_label(items[1].id, "OK")
        store.set_label(items[2].id, "NG")
        store.set_label(items[2].id, "OK")             # changed its mind: the latest label counts
        ng, ok = store.labelled_files("NG"), store.labelled_files("OK")
    assert len(ng) == 1 and len(ok) == 2 and not set(ng) & set(ok)


def test_samples_of_mixed_sizes_and_colour_and_grey_files_train(tmp_path):
    import cv2
    import numpy as np
    from conftest import texture

    rng = np.random.default_rng(0)
    folder = tmp_path / "goods"
    folder.mkdir()
    for i in range(24):
        img = cv2.resize(texture(rng), (96, 64) if i % 2 else (64, 80))
        if i % 3 == 0:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)          # a grey file among colour ones
        cv2.imwrite(str(folder / f"{i:02d}.png"), img)
    result = retrain(Samples.from_folders([folder]), method="patchcore", preset="fast", device="cpu")
    assert result.validation.figures()["n_validation_good"] == 5
    assert np.isfinite(result.validation.raw_good).all()


def test_the_training_time_is_estimated_by_a_probe_on_this_machine(tiny_mvtec, monkeypatch):
    import itertools

    from inspector.app import retrain as service

    samples = samples_of(tiny_mvtec)
    assert 0 < service.estimate_seconds(samples, method="patchcore", preset="fast", device="cpu") < 3600
    assert service.estimate_seconds(samples, method="ae", preset="fast", device="cpu") > 0
    # With a clock that ticks one second a reading, every probe times alike and what is left is what
    # the estimate scales the probe by (timings compared on a loaded machine cross).
    ticks = itertools.count()
    monkeypatch.setattr(service.time, "perf_counter", lambda: float(next(ticks)))
    fast = service.estimate_seconds(samples, method="patchcore", preset="fast", device="cpu")
    slow = service.estimate_seconds(samples, method="eidn", preset="accurate", device="cpu")
    # A head's steps are counted: far above the memory bank's one fit.  AGAD on features paints
    # nothing and takes fewer steps than EIDN's head, which also learns from painted images.
    assert 0 < fast < service.estimate_seconds(samples, method="agad_features", preset="accurate",
                                               device="cpu") < slow


def test_the_command_line_retrains_through_the_same_service(tiny_mvtec, tmp_path, monkeypatch, capsys):
    from inspector.cli import main

    monkeypatch.setenv("INSPECTOR_DATA_DIR", str(tmp_path / "data"))
    rc = main(["retrain", "--goods", str(tiny_mvtec / "train" / "good"), "--goods", str(tiny_mvtec / "test" / "good"),
               "--defects", str(tiny_mvtec / "test" / "blob"), "--preset", "fast", "--device", "cpu",
               "--activate", "--name", "cli"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "new v0001: false_alarm_rate=" in out and "image_auroc=" in out and "recorded v0001 (active)" in out
    assert Registry(tmp_path / "data" / "models").active().name == "cli"
    few = main(["retrain", "--goods", str(tiny_mvtec / "test" / "good")])
    assert few == 2 and "12 good samples: at least 20 are needed" in capsys.readouterr().err
