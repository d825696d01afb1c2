"""The command line end to end: bench on real data, train -> eval, and bad input."""

import json
from pathlib import Path

import pytest

from inspector.cli import main

FAST = ["--epochs", "2", "--steps-per-epoch", "15", "--size", "32"]
#: EIDN's head on backbone features: whole images, no tile size.
FAST_HEAD = ["--epochs", "2", "--steps-per-epoch", "15"]


def real_slice(src: Path, dst: Path, counts: dict[str, int]) -> Path:
    """A small MVTec-layout set of symlinks into a real set (the data is never copied)."""
    for rel, n in counts.items():
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for f in sorted((src / rel).iterdir())[:n]:
            (dst / rel / f.name).symlink_to(f)
    return dst


@pytest.fixture(scope="module")
def brick_slice(shared_data, tmp_path_factory):
    return real_slice(shared_data / "brickwork_crack", tmp_path_factory.mktemp("brick"),
                      {"train/good": 80, "train/defect/crack": 30, "test/good": 30, "test/crack": 30})


def test_bench_on_real_data_separates_defects_better_than_chance(brick_slice, tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(["bench", "--data", str(brick_slice), "--method", "eidn", "--anomaly-fraction", "0.2",
               "--scale", "0.5", "--json", str(out), *FAST_HEAD])
    assert rc == 0
    result = json.loads(out.read_text())
    for key in ("method", "data", "size", "anomaly_fraction", "n_train_good", "n_train_defect", "n_test_good",
                "n_test_defect", "image_auroc", "pixel_auroc", "threshold", "false_alarm_rate", "recall",
                "train_seconds", "score_ms_per_image", "device", "seed"):
        assert key in result, key
    assert result["n_test_good"] == 30 and result["n_test_defect"] == 30
    # 40 of the 80 goods calibrate (at least 50 where a set has them, at most half); 10 / (40 + 10) = 0.2
    assert result["n_calibration_good"] == 40 and result["n_train_good"] == 40
    assert result["n_train_defect"] == 10
    assert result["pixel_auroc"] is None             # the set has no masks
    assert result["n_pseudo_anomalies"] == 120        # three painted on each training good
    assert result["image_auroc"] > 0.7
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith(f"image_auroc={result['image_auroc']:.4f} pixel_auroc=none train_seconds=")
    assert "score_ms_per_image=" in last


def test_bench_reports_pixel_auroc_where_masks_exist(tiny_mvtec, tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "--data", str(tiny_mvtec), "--method", "ae", "--json", str(out), *FAST]) == 0
    result = json.loads(out.read_text())
    assert 0.0 <= result["pixel_auroc"] <= 1.0
    assert result["n_train_defect"] == 0             # the AE learns from goods only


def test_bench_over_seeds_reports_each_seeds_threshold(tiny_mvtec, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--data", str(tiny_mvtec), "--method", "ae", "--seeds", "0,1", "--json", str(out),
                 *FAST]) == 0
    result = json.loads(out.read_text())
    assert "threshold" in result["varies_by_seed"]          # calibrated per seed: no one value to show
    thresholds = [run["threshold"] for run in result["runs"]]
    printed = capsys.readouterr().out.strip().splitlines()
    assert f"thresholds={thresholds[0]:.6g},{thresholds[1]:.6g} " in printed[-2]
    assert printed[-1].startswith(f"image_auroc={result['image_auroc']:.4f}") and " seeds=0,1 " in printed[-1]


def test_a_head_draws_its_own_share_of_labelled_defects(tiny_mvtec, monkeypatch):
    from inspector.app import jobs

    class Seen(Exception):
        pass

    def spy(detector, data, config, **kwargs):
        raise Seen(data.labelled_share, data.n_labelled, data.n_pseudo)

    monkeypatch.setattr(jobs, "train", spy)
    opts = jobs.TrainOptions(data=tiny_mvtec, method="eidn", anomaly_fraction=0.5, hparams={"labelled_share": 0.3})
    with pytest.raises(Seen) as seen:
        jobs.train_model(opts)
    share, n_labelled, n_pseudo = seen.value.args
    assert share == 0.3 and n_labelled > 0 and n_pseudo > 0


def test_train_then_eval(tiny_mvtec, tmp_path, capsys):
    model = tmp_path / "models" / "m.safetensors"
    assert main(["train", "--data", str(tiny_mvtec), "--method", "eidn", "--out", str(model), *FAST_HEAD]) == 0
    assert model.is_file() and not list(model.parent.glob("*.ckpt")) and not list(model.parent.glob("*partial"))
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", str(model), "--data", str(tiny_mvtec), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["method"] == "eidn" and result["n_test_defect"] == 12
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("image_auroc=")


def test_eval_needs_only_the_test_split(tiny_mvtec, tiny_model, tmp_path, capsys):
    import shutil

    only_test = tmp_path / "line-7"
    shutil.copytree(tiny_mvtec / "test", only_test / "test")
    assert main(["eval", "--model", str(tiny_model), "--data", str(only_test)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("image_auroc=")


def test_a_tile_model_trains_calibrates_and_inspects_on_one_grid(tiny_mvtec, tmp_path, capsys):
    from inspector.app.inspection import InspectorSettings, load_inspector
    from inspector.frames.images import read_image

    out = tmp_path / "bench.json"
    assert main(["bench", "--data", str(tiny_mvtec), "--method", "ae", "--tile", "24", "--stride", "12",
                 "--json", str(out), *FAST]) == 0
    result = json.loads(out.read_text())
    # 48-pixel images on a 24-pixel grid every 12 pixels: 9 tiles each, scored per tile on test too
    assert result["tile"] == 24 and result["stride"] == 12 and result["size"] == 32
    assert result["n_train_tiles"] == 9 * result["n_train_good"]
    assert 0.0 <= result["pixel_auroc"] <= 1.0
    model = tmp_path / "m.safetensors"
    assert main(["train", "--data", str(tiny_mvtec), "--method", "ae", "--tile", "24", "--out", str(model),
                 *FAST]) == 0
    inspector, _ = load_inspector(model, InspectorSettings(device="cpu"))
    assert (inspector.tile, inspector.stride) == (24, None)                # the file keeps its tiling
    frame = read_image(next((tiny_mvtec / "test" / "good").iterdir()))
    assert len(inspector.grid(frame.shape[:2])) == 4


@pytest.mark.parametrize(("args", "says"), [
    (["--method", "default", "--tile", "64"], "--tile and --stride apply to tile methods"),
    (["--method", "ae", "--stride", "8"], "--stride needs --tile"),
    (["--method", "agad", "--tile", "24", "--anomaly-fraction", "0.1"], "an image label, not a place"),
])
def test_tiling_that_cannot_apply_exit_2_and_write_nothing(tiny_mvtec, tmp_path, capsys, args, says):
    model = tmp_path / "m.safetensors"
    assert main(["train", "--data", str(tiny_mvtec), "--out", str(model), *args]) == 2
    assert says in capsys.readouterr().err
    assert not model.exists()


def test_missing_training_images_exit_2_and_write_nothing(tmp_path, capsys):
    (tmp_path / "set" / "train" / "good").mkdir(parents=True)
    model = tmp_path / "m.safetensors"
    rc = main(["train", "--data", str(tmp_path / "set"), "--method", "ae", "--out", str(model)])
    assert rc == 2
    assert "no training images" in capsys.readouterr().err
    assert not model.exists() and not list(tmp_path.glob("m.*"))


def test_the_smoothing_help_names_each_feature_methods_own_default(capsys):
    """The help is written by hand (the parser does not import torch): it must follow the classes."""
    import models
    from models.features import FeatureDetector

    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    feature_methods = [models.get_method(name) for name in models.method_names()
                       if issubclass(models.get_method(name), FeatureDetector)]
    assert len(feature_methods) == 4
    for cls in feature_methods:
        assert f"{cls.method} {cls.default_smoothing:g}" in help_text


def test_unknown_method_lists_the_methods(tiny_mvtec, capsys):
    assert main(["bench", "--data", str(tiny_mvtec), "--method", "nope"]) == 2
    assert "available methods: ae, agad, agad_features, ede, ede_features, eidn, patchcore" in capsys.readouterr().err


def test_a_surface_is_refused_for_methods_other_than_the_bank(tiny_mvtec, tmp_path, capsys):
    model = tmp_path / "m.safetensors"
    rc = main(["train", "--data", str(tiny_mvtec), "--method", "eidn", "--surface", "texture", "--out", str(model)])
    assert rc == 2 and "for the memory bank (patchcore), not 'eidn'" in capsys.readouterr().err
    assert main(["bench", "--data", str(tiny_mvtec), "--method", "default", "--surface", "glass"]) == 2
    assert "unknown surface 'glass': parts, texture, auto" in capsys.readouterr().err
    assert not model.exists()


def test_corrupt_training_images_are_skipped_with_a_warning(tiny_mvtec, tmp_path, caplog):
    (tiny_mvtec / "train" / "good" / "zero.jpg").write_bytes(b"")
    model = tmp_path / "m.safetensors"
    assert main(["train", "--data", str(tiny_mvtec), "--method", "ae", "--out", str(model), *FAST]) == 0
    assert "zero.jpg: empty file" in caplog.text
    assert main(["models", "--show", str(model)]) == 0


def test_bad_model_file_exit_2(tmp_path, tiny_mvtec, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_text("nonsense")
    assert main(["eval", "--model", str(bad), "--data", str(tiny_mvtec)]) == 2
    assert "not an Inspector model file" in capsys.readouterr().err


def test_cancelled_training_writes_no_model(tiny_mvtec, tmp_path, monkeypatch, capsys):
    import inspector.app.jobs as jobs

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(jobs, "train", interrupted)
    model = tmp_path / "m.safetensors"
    assert main(["train", "--data", str(tiny_mvtec), "--method", "ae", "--out", str(model)]) == 130
    assert not model.exists()


def test_unknown_method_setting_exit_2_and_lists_the_settings(tiny_mvtec, tmp_path, capsys):
    model = tmp_path / "m.safetensors"
    rc = main(["train", "--data", str(tiny_mvtec), "--method", "eidn", "--out", str(model), "--set", "foo=1"])
    assert rc == 2
    assert "has no setting foo; its settings: backbone=efficientnet_lite0" in capsys.readouterr().err
    assert not model.exists()


def test_method_settings_reach_the_network(tiny_mvtec, tmp_path):
    from inspector.modelstore.modelfile import read_metadata

    model = tmp_path / "m.safetensors"
    assert main(["train", "--data", str(tiny_mvtec), "--method", "eidn", "--out", str(model),
                 "--set", "embedding_dim=3", *FAST_HEAD]) == 0
    assert read_metadata(model)["hparams"]["embedding_dim"] == 3


def test_backbone_weights_that_do_not_fit_exit_2_and_write_no_model(tiny_mvtec, tmp_path, capsys):
    import torch

    from models.backbone import build_backbone

    model = tmp_path / "m.safetensors"
    wrong = tmp_path / "resnet18.pth"
    torch.save(build_backbone("resnet18", (2, 3)).state_dict(), wrong)
    base = ["train", "--data", str(tiny_mvtec), "--out", str(model)]
    assert main([*base, "--method", "default", "--backbone-weights", str(tmp_path / "absent.pth")]) == 2
    assert main([*base, "--method", "default", "--backbone-weights", str(wrong)]) == 2    # Lite0 expected
    assert main([*base, "--method", "default", "--set", "backbone=wide_resnet50_2", "--backbone-weights",
                 str(wrong)]) == 2
    assert main([*base, "--method", "ae", "--backbone-weights", str(wrong), *FAST]) == 2   # a pixel method
    assert main([*base, "--method", "default", "--size", "64"]) == 2                        # a tile size
    err = capsys.readouterr().err
    assert "no such backbone weights file" in err and "are not efficientnet_lite0's" in err
    assert "are not wide_resnet50_2's" in err and "takes no backbone weights" in err and "use --scale" in err
    assert not model.exists() and not list(tmp_path.glob("*.partial"))


def test_the_default_method_trains_inspects_and_reports_its_heat_map(tiny_mvtec, tmp_path, capsys):
    model = tmp_path / "pc.safetensors"
    assert main(["train", "--data", str(tiny_mvtec), "--method", "default", "--out", str(model)]) == 0
    assert main(["eval", "--model", str(model), "--data", str(tiny_mvtec)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("image_auroc=") and "pixel_auroc=none" not in last     # masks: a pixel figure
