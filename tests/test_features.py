"""The frozen backbone, the memory-bank detector on its patch features, and whole-region inspection."""

import math

import cv2
import numpy as np
import pytest
import torch
from conftest import texture

import models
from inspector.app.jobs import TrainOptions, summarise_seeds, train_model
from inspector.detect.pipeline import Inspector
from inspector.detect.tiling import TilingError
from inspector.frames.frame import Frame
from inspector.learn.backbones import BackboneWeightsError, pretrained_backbone, read_weights
from inspector.learn.datasets import discover
from inspector.learn.splits import make_split
from inspector.modelstore.modelfile import load_model, save_model
from models import patchcore
from models.backbone import build_backbone
from models.patchcore import draw_cells, greedy_coreset, nearest_distance, sample_patches, stage_weights, whitening


@pytest.fixture(scope="module")
def lite0():
    return pretrained_backbone("efficientnet_lite0", (3, 5))


def test_lite0_takes_the_shipped_imagenet_weights_frozen_and_any_size(lite0):
    assert not any(p.requires_grad for p in lite0.parameters())
    lite0.train()
    assert not lite0.training                       # ImageNet's batch-norm statistics, always
    x = torch.rand(2, 3, 64, 96) * 2 - 1
    a, b = lite0(x)
    assert a.shape == (2, 40, 8, 12) and b.shape == (2, 112, 4, 6)
    untrained = build_backbone("efficientnet_lite0", (3, 5)).eval()
    assert not torch.allclose(untrained(x)[0], a)    # the weights were really loaded


def test_grey_images_go_through_the_rgb_backbone_as_three_equal_channels(lite0):
    grey = torch.rand(1, 1, 32, 32) * 2 - 1
    for got, want in zip(lite0(grey), lite0(grey.expand(-1, 3, -1, -1)), strict=True):
        assert torch.allclose(got, want)


def test_backbone_weights_that_are_missing_wrong_or_tampered_are_refused(tmp_path):
    with pytest.raises(BackboneWeightsError, match="no such backbone weights file"):
        read_weights(tmp_path / "absent.pth")
    wrong = tmp_path / "resnet18.pth"
    torch.save(build_backbone("resnet18", (2, 3)).state_dict(), wrong)
    with pytest.raises(BackboneWeightsError, match="efficientnet|missing|shape|key"):
        pretrained_backbone("efficientnet_lite0", (3, 5), wrong)
    tampered = tmp_path / "resnet18-0123abcd.pth"           # the name promises a checksum the bytes lack
    tampered.write_bytes(wrong.read_bytes())
    with pytest.raises(BackboneWeightsError, match="do not match the checksum"):
        read_weights(tampered)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a weights file")
    with pytest.raises(BackboneWeightsError, match="not a readable weights file"):
        read_weights(junk)
    nan = tmp_path / "nan.pth"
    state = build_backbone("resnet18", (2, 3)).state_dict()
    state["conv1.weight"][0, 0, 0, 0] = math.nan
    torch.save(state, nan)
    with pytest.raises(BackboneWeightsError, match="NaN"):
        read_weights(nan)
    with pytest.raises(BackboneWeightsError, match="needs its weights file"):
        pretrained_backbone("wide_resnet50_2")


def test_greedy_coreset_takes_one_point_from_each_cluster_first():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    points = torch.cat([c + 0.1 * torch.randn(50, 2, generator=g) for c in centres])
    chosen = greedy_coreset(points, 4, projection=0, generator=g)
    assert sorted((chosen // 50).tolist()) == [0, 1, 2, 3]
    assert len(greedy_coreset(points, 500, generator=g)) == len(points)   # asking for more keeps all


def test_nearest_distance_matches_brute_force_across_query_chunks(monkeypatch):
    monkeypatch.setattr(patchcore, "_QUERY_CHUNK", 7)
    g = torch.Generator().manual_seed(1)
    queries, bank = torch.randn(30, 5, generator=g), torch.randn(11, 5, generator=g)
    want = torch.cdist(queries, bank).amin(dim=1)
    assert torch.allclose(nearest_distance(queries, bank), want, atol=1e-4)


def test_patches_are_sampled_uniformly_from_every_image_without_gathering_them_all():
    g = torch.Generator().manual_seed(0)
    maps = [torch.arange(i * 1000, i * 1000 + 3 * h * w, dtype=torch.float32).view(3, h, w)
            for i, (h, w) in enumerate(((4, 5), (6, 2), (1, 9)))]
    every = torch.cat([m.flatten(1).T for m in maps])
    assert torch.equal(sample_patches(maps, 100, generator=g), every)          # fewer than asked: all
    some = sample_patches(maps, 20, generator=g)
    assert some.shape == (20, 3)
    rows = {tuple(r) for r in every.tolist()}
    assert all(tuple(r) in rows for r in some.tolist())                        # real patches, each once
    assert len({tuple(r) for r in some.tolist()}) == 20
    picks = torch.cat([sample_patches(maps, 10, generator=g)[:, 0] for _ in range(300)])
    share = [((picks >= i * 1000) & (picks < i * 1000 + 100)).float().mean().item() for i in range(3)]
    assert share == pytest.approx([20 / 41, 12 / 41, 9 / 41], abs=0.03)       # in proportion to size


def test_cells_are_drawn_from_one_image_in_its_share_each_once():
    g = torch.Generator().manual_seed(0)
    features = torch.arange(3 * 10 * 20, dtype=torch.float32).view(3, 10, 20)
    drawn = draw_cells(features, 0.25, generator=g)
    assert drawn.shape == (3, 1, 50)
    cells = {tuple(c) for c in features.flatten(1).T.tolist()}
    picked = [tuple(c) for c in drawn[:, 0].T.tolist()]
    assert all(c in cells for c in picked) and len(set(picked)) == 50       # real cells, each once
    assert draw_cells(features, 2.0, generator=g).shape == (3, 1, 200)        # never more than there are


def test_stage_weights_give_every_stage_the_same_rms_norm():
    g = torch.Generator().manual_seed(0)
    patches = torch.cat([0.1 * torch.randn(500, 4, generator=g), 30 * torch.randn(500, 12, generator=g)], dim=1)
    weighted = patches * stage_weights(patches, (4, 12))
    for block in (weighted[:, :4], weighted[:, 4:]):
        assert block.pow(2).sum(1).mean().sqrt().item() == pytest.approx(1.0, rel=1e-4)


def test_whitening_weighs_a_direction_by_how_little_good_patches_vary_along_it():
    g = torch.Generator().manual_seed(0)
    patches = torch.randn(4000, 3, generator=g) * torch.tensor([10.0, 1.0, 0.1]) + 5
    mean, matrix = whitening(patches, shrink=0.0, generator=g)
    torch.testing.assert_close(mean, patches.mean(0), atol=1e-4, rtol=0)
    white = (patches - mean) @ matrix
    torch.testing.assert_close(torch.cov(white.T), torch.eye(3), atol=1e-3, rtol=0)
    unit = torch.eye(3) @ matrix                        # one unit along each axis, as a distance
    assert unit[2].norm() > 5 * unit[1].norm() > 25 * unit[0].norm()
    still = torch.cat([patches, torch.full((4000, 1), 2.0)], dim=1)   # a channel that never varies
    _, matrix = whitening(still, generator=g)           # shrunk: finite, and that channel still counts
    assert torch.isfinite(matrix).all() and (torch.eye(4)[3] @ matrix).norm() > 0


# -- a memory bank trained on generated parts, inspected whole ------------------------------------------
H, W = 144, 208             # not multiples of the backbone's 32: padded, and the padding cut off again


def spot(img: np.ndarray, centre: tuple[int, int]) -> np.ndarray:
    out = img.copy()
    cv2.circle(out, centre, 5, (30, 30, 30), -1)
    return out


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("parts")
    for rel, n in (("train/good", 60), ("test/good", 6), ("test/spot", 6)):
        (root / rel).mkdir(parents=True)
        for i in range(n):
            img = cv2.resize(texture(rng, 96), (W, H))
            if rel == "test/spot":
                img = spot(img, (int(rng.integers(12, W - 12)), int(rng.integers(12, H - 12))))
            cv2.imwrite(str(root / rel / f"{i:02d}.png"), img)
    return root


@pytest.fixture(scope="module")
def bank_model(parts):
    return train_model(TrainOptions(data=parts, method="default", device="cpu", smoothing=1.0))


def test_default_method_is_the_memory_bank_fitted_on_goods_alone(bank_model):
    assert models.get_method("default") is models.get_method("patchcore")
    detector = bank_model.detector
    assert detector.method == "patchcore" and detector.fully_convolutional and detector.whiten
    t = bank_model.metadata["training"]
    assert t["n_calibration_good"] == 30 and t["n_train_good"] == 30     # half held out: fewer than 100 goods
    assert 0 < len(detector.bank) <= detector.max_bank
    assert bank_model.metadata["inspection"] == {"scale": 1.0, "smoothing": 1.0}


def test_the_heat_map_locates_a_spot_and_the_box_surrounds_it(bank_model):
    inspector = bank_model.inspector()
    rng = np.random.default_rng(5)
    good = cv2.resize(texture(rng, 96), (W, H))
    bad = spot(good, (140, 60))
    ok, ng = inspector.inspect_batch([Frame(good, "good", 0, 0.0), Frame(bad, "bad", 1, 0.0)])
    assert ok.error is None and ng.error is None
    assert ng.score > ok.score and ng.verdict == "NG"
    heat = ng.heat
    assert heat.shape == (H, W)
    assert heat[60, 140] == heat.max()                       # the spot is as hot as the map gets
    boxes = ng.flagged_boxes()
    assert len(boxes) >= 1
    x0, y0, x1, y1 = boxes[np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))]
    assert x0 <= 140 <= x1 and y0 <= 60 <= y1 and x0 > 48        # around the spot, not the whole part
    assert heat[55:66, 135:146].mean() > 4 * heat[:, :60].mean()


def test_a_region_of_interest_limits_the_whole_region_map(bank_model):
    inspector = bank_model.inspector(roi=(16, 16, 128, 96))
    clean = cv2.resize(texture(np.random.default_rng(9), 96), (W, H))
    spotted = spot(clean, (180, 120))                                  # outside the region
    a, b = inspector.inspect_batch([Frame(clean, "a", 0, 0.0), Frame(spotted, "b", 1, 0.0)])
    assert b.heat.shape == (H, W) and b.heat[:, 144:].max() == 0 and b.heat[:16].max() == 0
    assert b.score == a.score


def test_tile_settings_are_refused_for_a_whole_region_model(bank_model):
    with pytest.raises(TilingError, match="tile models only"):
        Inspector(bank_model.detector, bank_model.calibration, tile=32)


def test_a_bank_model_file_round_trips_with_its_bank_and_backbone(bank_model, tmp_path):
    path = save_model(tmp_path / "pc.safetensors", bank_model.detector, bank_model.metadata)
    assert path.stat().st_size < 16 * 2**20             # Lite0 to stage 6 and the bank
    loaded, meta = load_model(path)
    assert torch.equal(loaded.bank, bank_model.detector.bank)
    x = torch.rand(1, 3, 64, 96) * 2 - 1
    assert torch.allclose(loaded.infer(x).maps, bank_model.detector.infer(x).maps)
    assert meta["inspection"] == bank_model.metadata["inspection"]


def test_a_balanced_bank_weighs_its_stages_alike_and_keeps_the_weights_in_its_file(parts, tmp_path):
    balanced = train_model(TrainOptions(data=parts, method="default", device="cpu", smoothing=1.0,
                                        hparams={"balance_stages": True}))
    detector = balanced.detector
    channels = detector.patch_features.backbone.out_channels
    weights = detector.channel_weights
    assert len(set(weights[:channels[0]].tolist())) == 1 and len(set(weights[channels[0]:].tolist())) == 1
    assert weights[0] != weights[-1]
    loaded, _ = load_model(save_model(tmp_path / "bal.safetensors", detector, balanced.metadata))
    assert torch.equal(loaded.channel_weights, weights)
    x = torch.rand(1, 3, 64, 96) * 2 - 1
    assert torch.allclose(loaded.infer(x).maps, detector.infer(x).maps)


def test_a_whitened_bank_finds_the_spot_and_keeps_its_whitening_in_its_file(parts, tmp_path):
    whitened = train_model(TrainOptions(data=parts, method="default", device="cpu", smoothing=1.0,
                                        hparams={"whiten": True}))
    detector = whitened.detector
    assert detector.whiten and not torch.equal(detector.whiten_matrix, torch.eye(detector.feature_dim))
    loaded, meta = load_model(save_model(tmp_path / "white.safetensors", detector, whitened.metadata))
    assert meta["hparams"]["whiten"] and loaded.whiten
    assert torch.equal(loaded.whiten_matrix, detector.whiten_matrix)
    x = torch.rand(1, 3, 64, 96) * 2 - 1
    assert torch.allclose(loaded.infer(x).maps, detector.infer(x).maps)
    good = cv2.resize(texture(np.random.default_rng(5), 96), (W, H))
    frames = [Frame(good, "good", 0, 0.0), Frame(spot(good, (140, 60)), "bad", 1, 0.0)]
    ok, ng = whitened.inspector().inspect_batch(frames)
    assert ok.verdict == "OK" and ng.verdict == "NG"
    assert ng.heat[55:66, 135:146].mean() > 4 * ng.heat[:, :60].mean()       # hot on the spot, not away from it


def test_a_bank_trained_with_mirror_images_takes_a_mirrored_good_part_for_good(tmp_path):
    rng = np.random.default_rng(3)

    def one_way_up() -> np.ndarray:            # a part always seen with its dark edge on the left
        img = cv2.resize(texture(rng, 64), (128, 96))
        img[:, :36] //= 3
        return img

    (tmp_path / "train/good").mkdir(parents=True)
    for i in range(24):
        cv2.imwrite(str(tmp_path / "train/good" / f"{i:02d}.png"), one_way_up())
    plain = train_model(TrainOptions(data=tmp_path, method="default", device="cpu", smoothing=1.0))
    mirrored = train_model(TrainOptions(data=tmp_path, method="default", device="cpu", smoothing=1.0, flips=True,
                                        hparams={"max_patches": 1500}))
    assert mirrored.metadata["training"]["flips"] is True and plain.metadata["training"]["flips"] is False
    # Four views of 12 training goods, 192 cells each, thinned as they came to about the 1500 sampled.
    assert abs(mirrored.report.last_losses["patches"] - 1500) <= 12 * 4
    good = one_way_up()
    frames = [Frame(good, "good", 0, 0.0), Frame(np.ascontiguousarray(good[:, ::-1]), "turned", 1, 0.0)]
    ok, turned = plain.inspector().inspect_batch(frames)
    assert ok.verdict == "OK" and turned.verdict == "NG"
    ok, turned = mirrored.inspector().inspect_batch(frames)
    assert ok.verdict == "OK" and turned.verdict == "OK"


def older_file(src, dst, hparams: tuple[str, ...], tensors: tuple[str, ...]):
    """A copy of model file ``src`` as an Inspector from before ``hparams`` and ``tensors`` existed wrote it."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from inspector.modelstore.modelfile import weights_checksum

    with safe_open(str(src), framework="pt") as f:
        meta = json.loads(f.metadata()["inspector"])
    weights = {k: v for k, v in load_file(str(src)).items() if k not in tensors}
    meta["hparams"] = {k: v for k, v in meta["hparams"].items() if k not in hparams}
    meta["weights_sha256"] = weights_checksum(weights)
    save_file(weights, str(dst), metadata={"inspector": json.dumps(meta)})
    return dst


def test_a_bank_file_from_before_stage_weights_and_whitening_loads_unweighted_and_unwhitened(bank_model, tmp_path):
    path = save_model(tmp_path / "new.safetensors", bank_model.detector, bank_model.metadata)
    old = older_file(path, tmp_path / "old.safetensors", ("balance_stages", "whiten"),
                     ("channel_weights", "whiten_mean", "whiten_matrix"))
    loaded, meta = load_model(old)
    assert "balance_stages" not in meta["hparams"] and not loaded.balance_stages
    assert torch.equal(loaded.channel_weights, torch.ones(loaded.feature_dim))
    assert not loaded.whiten and torch.equal(loaded.whiten_matrix, torch.eye(loaded.feature_dim))
    assert torch.equal(loaded.bank, bank_model.detector.bank)


def test_a_tile_size_set_for_tile_models_does_not_stop_a_whole_region_model_loading(bank_model, tmp_path):
    from inspector.app.inspection import InspectorSettings, load_inspector
    from inspector.modelstore.modelfile import ModelFileError

    path = save_model(tmp_path / "pc.safetensors", bank_model.detector, bank_model.metadata)
    inspector, _ = load_inspector(path, InspectorSettings(tile=160, stride=80))     # the window's setting
    assert inspector.tile is None and inspector.scale == 1.0
    meta = dict(bank_model.metadata, inspection={"scale": None, "smoothing": 1.0})
    with pytest.raises(ModelFileError, match="inspection scale is not a valid number"):
        load_model(save_model(tmp_path / "bad.safetensors", bank_model.detector, meta))


def test_the_validation_protocol_never_looks_at_test(tiny_mvtec):
    dataset = discover(tiny_mvtec)
    split = make_split(dataset, anomaly_fraction=0.2, rng=np.random.default_rng(0), protocol="validation")
    held = {item.path for item in split.evaluation}
    assert held and all("train" in p.relative_to(tiny_mvtec).parts[0] for p in held)
    assert not held & set(split.train_good + split.calibration_good + split.labelled)
    assert {item.label for item in split.evaluation} == {"good", "blob"}


def test_several_seeds_are_summarised_as_mean_and_sample_deviation():
    runs = [{"seed": s, "method": "m", "image_auroc": a, "pixel_auroc": None, "false_alarm_rate": 0.0,
             "recall": 1.0, "train_seconds": 1.0, "score_ms_per_image": 2.0, "auroc_per_type": {"x": a},
             "surface": surface}
            for s, a, surface in ((0, 0.90, "parts"), (1, 0.94, "texture"), (2, 0.98, "parts"))]
    summary = summarise_seeds(runs)
    assert summary["seeds"] == [0, 1, 2] and summary["method"] == "m"
    assert summary["surface"] is None and summary["varies_by_seed"] == ["surface"]   # not seed 0's for all
    assert summary["image_auroc"] == pytest.approx(0.94) and summary["image_auroc_sd"] == pytest.approx(0.04)
    assert summary["pixel_auroc"] is None and summary["auroc_per_type"]["x"] == pytest.approx(0.94)
    assert len(summary["runs"]) == 3


def test_an_image_too_large_for_one_pass_goes_in_windows_and_keeps_its_geometry(bank_model, monkeypatch):
    from inspector.detect import scoring

    big = (2 * H, 2 * W)
    image = spot(cv2.resize(texture(np.random.default_rng(5), 192), big[::-1]), (280, 120))
    whole = scoring.map_images(bank_model.detector, [image])[0].map
    monkeypatch.setattr(scoring, "MAX_PASS_PIXELS", 96 * 96)
    monkeypatch.setattr(scoring, "WINDOW_MARGIN", 64)                 # windows of 256 px: 2 x 3 of them
    calls = []
    run = scoring._run
    monkeypatch.setattr(scoring, "_run", lambda *a: calls.append(a[2][0].shape) or run(*a))
    windowed = scoring.map_images(bank_model.detector, [image])[0].map
    assert windowed.shape == whole.shape == (big[0] // 8, big[1] // 8)
    assert np.isfinite(windowed).all() and len(calls) == 6
    y, x = np.unravel_index(np.argmax(windowed), windowed.shape)
    assert abs(8 * x + 4 - 280) <= 12 and abs(8 * y + 4 - 120) <= 12   # the spot is where it was


def test_on_the_cpu_the_bank_is_searched_with_faiss_and_scores_as_torch_does(bank_model):
    detector = bank_model.detector
    bank_model.inspector()                           # an Inspector hands a CPU bank to faiss
    assert detector.cpu_search is not None
    features = detector.features(torch.rand(2, 3, 64, 96) * 2 - 1)
    with_faiss = detector.score_features(features).maps
    search, detector.cpu_search = detector.cpu_search, None
    try:
        with_torch = detector.score_features(features).maps
    finally:
        detector.cpu_search = search
    assert torch.allclose(with_faiss, with_torch, atol=1e-3)
