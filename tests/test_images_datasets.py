import logging

import cv2
import numpy as np
import pytest

from inspector.frames.images import ImageReadError, read_image, read_mask
from inspector.learn.datasets import (
    DatasetError,
    defects_for_fraction,
    detect_channels,
    discover,
    load_grid_tiles,
    load_tiles,
    split_holdout,
)
from inspector.learn.pseudo_anomalies import KINDS, make_pseudo_anomalies


def test_read_image_normalises_odd_formats(tmp_path):
    grey = np.full((10, 12), 100, np.uint8)
    cv2.imwrite(str(tmp_path / "grey.png"), grey)
    cv2.imwrite(str(tmp_path / "deep.png"), np.full((10, 12), 40000, np.uint16))
    cv2.imwrite(str(tmp_path / "alpha.png"), np.full((10, 12, 4), 50, np.uint8))
    for name, value in [("grey.png", 100), ("deep.png", 40000 >> 8), ("alpha.png", 50)]:
        img = read_image(tmp_path / name)
        assert img.shape == (10, 12, 3) and img.dtype == np.uint8
        assert (img == value).all()


def test_read_image_errors_name_the_file_and_reason(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ImageReadError, match="empty.jpg: empty file"):
        read_image(tmp_path / "empty.jpg")
    with pytest.raises(ImageReadError, match=r"text.png: not an image file \(unknown format\)"):
        read_image(tmp_path / "text.png")
    with pytest.raises(ImageReadError, match="missing.png: no such file"):
        read_image(tmp_path / "missing.png")


def test_mask_is_binarised_above_127(tmp_path):
    cv2.imwrite(str(tmp_path / "m.png"), np.array([[0, 127, 128, 255]], np.uint8))
    assert read_mask(tmp_path / "m.png").tolist() == [[False, False, True, True]]


def test_discover_reads_the_mvtec_layout(tiny_mvtec):
    ds = discover(tiny_mvtec, need_test=True)
    assert len(ds.train_good) == 40
    assert len(ds.train_defect) == 10 and {t for _, t in ds.train_defect} == {"blob"}
    assert sum(t.is_defect for t in ds.test) == 12
    assert all(t.mask is not None for t in ds.test if t.is_defect)
    assert all(t.mask is None for t in ds.test if not t.is_defect)


def test_discover_rejects_missing_or_empty_training_folder(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        discover(tmp_path / "nope")
    (tmp_path / "train" / "good").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no training images"):
        discover(tmp_path)


def test_unreadable_images_are_skipped_named_and_counted(tiny_mvtec, caplog):
    bad = tiny_mvtec / "train" / "good" / "broken.png"
    bad.write_bytes(b"\x89PNG garbage")
    paths = discover(tiny_mvtec).train_good
    with caplog.at_level(logging.WARNING):
        loaded = load_tiles(paths, size=32, channels=3)
    assert len(loaded.tiles) == len(paths) - 1
    assert [p for p, _ in loaded.errors] == [bad]
    assert "broken.png" in caplog.text and "1 of 41 images" in caplog.text


def test_grid_tiles_are_the_tiles_inspection_cuts(tmp_path):
    from inspector.detect.tiling import cut_tiles, plan_grid

    rng = np.random.default_rng(0)
    wide, small = tmp_path / "wide.png", tmp_path / "small.png"
    cv2.imwrite(str(wide), rng.integers(0, 255, (40, 100, 3), dtype=np.uint8))
    cv2.imwrite(str(small), rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    (tmp_path / "broken.png").write_bytes(b"not an image")
    loaded = load_grid_tiles([wide, tmp_path / "broken.png", small], size=8, tile=20, stride=20, channels=1,
                             max_tiles=1000)
    grid = plan_grid((40, 100), 8, tile=20, stride=20)
    expected = cut_tiles(read_image(wide), grid, 1)
    assert len(grid) == 10 and loaded.tiles.shape == (11, 8, 8, 1)        # 2 x 5 tiles, and one of the
    assert np.array_equal(loaded.tiles[:10], expected)                     # small image, its side a tile
    assert loaded.paths == [wide] * 10 + [small] and [p.name for p, _ in loaded.errors] == ["broken.png"]
    thinned = load_grid_tiles([wide, small], size=8, tile=20, stride=20, channels=1, max_tiles=6)
    assert len(thinned.tiles) == 4                                          # 3 of wide's 10, spread out
    assert np.array_equal(thinned.tiles[:3], expected[[0, 4, 9]])


def test_channels_are_detected(tiny_mvtec, tmp_path):
    assert detect_channels(discover(tiny_mvtec).train_good) == 3
    grey = tmp_path / "g.png"
    cv2.imwrite(str(grey), np.full((8, 8), 7, np.uint8))
    assert detect_channels([grey]) == 1


def test_anomaly_fraction_follows_a_over_n_plus_a():
    pool = [(f"d{i}", "t") for i in range(100)]
    rng = np.random.default_rng(0)
    assert defects_for_fraction(pool, 190, 0.05, rng).__len__() == 10   # 10 / (190 + 10) = 0.05
    assert defects_for_fraction(pool, 190, 0.0, rng) == []
    assert len(defects_for_fraction(pool, 10_000, 0.5, rng)) == 100    # capped by the pool


def test_holdout_split_is_disjoint_and_seeded():
    paths = [f"p{i}" for i in range(100)]
    a = split_holdout(paths, 0.1, np.random.default_rng(3))
    b = split_holdout(paths, 0.1, np.random.default_rng(3))
    assert a == b
    train, hold = a
    assert len(hold) == 10 and not set(train) & set(hold) and len(train) + len(hold) == 100


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_pseudo_anomaly_kind_changes_the_image_where_its_mask_says(kind):
    rng = np.random.default_rng(0)
    images = [rng.integers(100, 140, (90, 160, 3), dtype=np.uint8) for _ in range(4)]
    out, masks, sources = make_pseudo_anomalies(images, 20, rng, kinds=(kind,))
    assert len(out) == len(masks) == len(sources) == 20
    for image, mask in zip(out, masks, strict=True):
        assert image.shape == (90, 160, 3) and image.dtype == np.uint8          # native size, aspect kept
        assert mask.shape == (90, 160) and mask.dtype == np.float32 and 0 <= mask.min() <= mask.max() <= 1
    changed = [not any(np.array_equal(o, t) for t in images) for o in out]
    assert sum(changed) >= 18
    for image, mask, painted_on in zip(out, masks, sources, strict=True):
        source = images[painted_on]
        moved = np.abs(image.astype(int) - source).max(axis=2) > 0
        assert not (moved & (mask == 0)).any()                           # nothing changed outside the mask
        assert 0 < mask.mean() < 0.5                                     # a defect, not the whole image


def test_pseudo_anomalies_keep_the_surface_texture_under_a_crack():
    rng = np.random.default_rng(1)
    stripes = np.tile((np.arange(128) % 8 < 4).astype(np.uint8)[None, :, None] * 80 + 100, (128, 1, 1))
    out, masks, _ = make_pseudo_anomalies([stripes], 10, rng, kinds=("crack",))
    for image, mask in zip(out, masks, strict=True):
        core = mask > 0.9
        if core.sum() > 20:
            on_light, on_dark = image[core & (stripes[:, :, 0] == 180), 0], image[core & (stripes[:, :, 0] == 100), 0]
            if len(on_light) and len(on_dark):
                assert on_light.mean() > on_dark.mean()                  # darkened, not painted flat


def test_pseudo_anomalies_are_reproducible():
    tiles = list(np.random.default_rng(0).integers(0, 255, (4, 32, 32, 1), dtype=np.uint8))
    a, ma, sa = make_pseudo_anomalies(tiles, 10, np.random.default_rng(5))
    b, mb, sb = make_pseudo_anomalies(tiles, 10, np.random.default_rng(5))
    assert sa == sb
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert all(np.array_equal(x, y) for x, y in zip(ma, mb, strict=True))
