import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import models
from inspector.detect.calibration import calibrate
from inspector.detect.device import DeviceError, resolve_device
from inspector.learn.training import TrainConfig, TrainingCancelled, TrainingData, train
from inspector.modelstore.modelfile import (
    FORMAT_VERSION,
    ModelFileError,
    build_metadata,
    load_model,
    read_metadata,
    save_model,
)


def data(seed=0, n=32, size=16):
    rng = np.random.default_rng(seed)
    normal = rng.integers(90, 110, (n, size, size, 1), dtype=np.uint8)
    pseudo = normal.copy()
    pseudo[:, 5:9, 5:9] = 250
    return TrainingData(normal, pseudo=pseudo)


def trained(method="ae", seed=0, **cfg):
    torch.manual_seed(seed)
    det = models.create(method, size=16, channels=1)
    config = TrainConfig(**{"epochs": 2, "steps_per_epoch": 3, "batch_size": 8, "seed": seed, **cfg})
    return det, train(det, data(), config)


def weights(det):
    return torch.cat([p.detach().flatten() for p in det.state_dict().values() if p.is_floating_point()])


def test_training_is_reproducible_with_a_seed():
    a, _ = trained(seed=1)
    b, _ = trained(seed=1)
    c, _ = trained(seed=2)
    assert torch.equal(weights(a), weights(b))
    assert not torch.equal(weights(a), weights(c))


def test_progress_is_reported_per_step_with_eta():
    seen = []
    det = models.create("ae", size=16, channels=1)
    train(det, data(), TrainConfig(epochs=2, steps_per_epoch=3, batch_size=4), progress=seen.append)
    assert [p.done for p in seen] == list(range(1, 7))
    assert all(p.total == 6 and p.eta_s is not None for p in seen)
    assert seen[-1].eta_s == 0 and "loss" in seen[-1].info


def test_cancel_raises():
    calls = iter(range(100))
    det = models.create("ae", size=16, channels=1)
    with pytest.raises(TrainingCancelled):
        train(det, data(), TrainConfig(epochs=5, steps_per_epoch=10, batch_size=4),
              should_cancel=lambda: next(calls) >= 3)


def test_time_budget_stops_early():
    det = models.create("ae", size=16, channels=1)
    report = train(det, data(), TrainConfig(epochs=1000, steps_per_epoch=10, batch_size=4, time_budget_s=0.5))
    assert report.stopped_by == "time budget"
    assert report.steps_done < 10_000 and report.seconds < 5


def test_a_stopped_run_leaves_a_checkpoint_that_resumes(tmp_path):
    ckpt = tmp_path / "m.ckpt"
    _, report = trained(epochs=3, checkpoint_path=ckpt, time_budget_s=0.0)  # stops after one step
    assert report.epochs_done == 1 and ckpt.exists()
    _, report = trained(epochs=3, checkpoint_path=ckpt, resume=True)
    assert report.resumed_from_epoch == 1 and report.epochs_done == 3


def test_resume_is_exact_after_a_full_epoch(tmp_path):
    full, _ = trained(epochs=3)
    ckpt = tmp_path / "m.ckpt"
    trained(epochs=1, checkpoint_path=ckpt)              # first epoch done and saved
    resumed, _ = trained(epochs=3, checkpoint_path=ckpt, resume=True)
    assert torch.allclose(weights(full), weights(resumed))


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(DeviceError):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA GPU"):
            resolve_device("cuda")


def saved(tmp_path, method="ae"):
    det, _ = trained(method)
    det.eval()                   # infer() leaves the mode to its caller
    cal = calibrate(det.infer(torch.rand(8, 1, 16, 16)).scores.numpy())
    path = save_model(tmp_path / f"{method}.safetensors", det, build_metadata(det, cal, training={"seed": 0}))
    return det, path


@pytest.mark.parametrize("method", ["ae", "agad", "ede"])
def test_model_file_round_trip(tmp_path, method):
    det, path = saved(tmp_path, method)
    loaded, meta = load_model(path)
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    assert torch.equal(det.infer(x).scores, loaded.infer(x).scores)
    assert meta["method"] == method and meta["input"] == {"size": 16, "channels": 1, "colour_order": "grey",
                                                          "value_range": [-1.0, 1.0]}
    assert meta["calibration"]["rule"] == "false_alarm_rate"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]   # no temporary file left


def test_a_file_older_than_a_setting_keeps_its_behaviour(tmp_path):
    det, _ = trained("ede")
    det.eval()
    meta = build_metadata(det, calibrate(det.infer(torch.rand(8, 1, 16, 16)).scores.numpy()), training={"seed": 0})
    del meta["hparams"]["score_sigma"]                 # written before EDE scored its map's peak
    loaded, _ = load_model(save_model(tmp_path / "old.safetensors", det, meta))
    assert det.score_sigma == 2.0 and loaded.score_sigma is None    # the mean error it was calibrated on


def test_an_eidn_file_from_before_the_bank_keeps_its_behaviour(tmp_path):
    det = models.create("eidn", stages=(2,), pool=1, hidden=16, residual=False, bank_prior=False).eval()
    x = torch.rand(2, 3, 32, 48) * 2 - 1
    meta = build_metadata(det, calibrate(det.infer(x).scores.numpy()), training={"seed": 0})
    for later in ("residual", "max_bank", "coreset_ratio", "bank_prior", "image_weighted", "labelled_share", "bag_top"):
        del meta["hparams"][later]
    want = det.infer(x).scores
    del det._buffers["bank"], det._buffers["prior_scale"]    # such files hold no bank
    loaded, _ = load_model(save_model(tmp_path / "old.safetensors", det, meta))
    assert loaded.residual is False and len(loaded.bank) == 0
    assert torch.equal(want, loaded.infer(x).scores)


def test_an_eidn_file_from_before_the_bank_prior_keeps_its_behaviour(tmp_path):
    det = models.create("eidn", stages=(2,), pool=1, hidden=16, coreset_ratio=1.0, bank_prior=False)
    x = torch.rand(2, 3, 32, 48) * 2 - 1
    with torch.no_grad():
        det.begin_training(list(det.features(x)))
    det.eval()
    meta = build_metadata(det, calibrate(det.infer(x).scores.numpy()), training={"seed": 0})
    for later in ("bank_prior", "image_weighted", "labelled_share", "bag_top"):
        del meta["hparams"][later]
    want = det.infer(x).scores
    del det._buffers["prior_scale"]                           # such files hold no prior's unit
    loaded, _ = load_model(save_model(tmp_path / "old.safetensors", det, meta))
    assert loaded.residual is True and loaded.bank_prior is False
    assert loaded.image_weighted is False and loaded.labelled_share == 0.5 and loaded.bag_top == 1   # as trained
    assert torch.equal(want, loaded.infer(x).scores)


def test_model_file_errors_are_clear(tmp_path):
    _, path = saved(tmp_path)
    with pytest.raises(ModelFileError, match="holds a 'ae' model, expected 'eidn'"):
        load_model(path, expected_method="eidn")
    with pytest.raises(ModelFileError, match="input size is 16, expected 64"):
        load_model(path, expected_size=64)
    with pytest.raises(ModelFileError, match="no such model file"):
        load_model(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(ModelFileError, match="not an Inspector model file"):
        load_model(junk)
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(ModelFileError, match="without Inspector metadata"):
        load_model(plain)


def rewrite_meta(path, **changes):
    meta = read_metadata(path)
    meta.update(changes)
    from safetensors.torch import load_file
    save_file(load_file(str(path)), str(path), metadata={"inspector": json.dumps(meta)})


def test_newer_format_and_wrong_weights_are_refused(tmp_path):
    _, path = saved(tmp_path)
    rewrite_meta(path, format_version=FORMAT_VERSION + 1)
    with pytest.raises(ModelFileError, match="newer than this program reads"):
        load_model(path)
    _, path = saved(tmp_path)
    rewrite_meta(path, method="agad")
    with pytest.raises(ModelFileError, match="weights do not fit"):
        load_model(path)
    _, path = saved(tmp_path)
    rewrite_meta(path, method="nonexistent")
    with pytest.raises(ModelFileError, match="unknown method"):
        load_model(path)


def test_flips_mirror_samples_only_when_asked():
    from inspector.learn.training import _BatchSampler

    tile = np.zeros((1, 8, 8, 1), np.uint8)
    tile[0, 0, 0] = 255                          # one bright corner pixel
    torch.manual_seed(0)
    plain = _BatchSampler(TrainingData(tile), torch.device("cpu"), False, flips=False)(64).normal
    assert (plain[:, 0, 0, 0] == 1).all()
    flipped = _BatchSampler(TrainingData(tile), torch.device("cpu"), False, flips=True)(64).normal
    corners = flipped[:, 0, [0, 0, -1, -1], [0, -1, 0, -1]] == 1
    assert (corners.sum(dim=1) == 1).all()       # the pixel is in exactly one corner ...
    assert corners.any(dim=0).all()              # ... and every corner occurs
