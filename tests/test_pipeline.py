"""The Inspector: a defect in one tile makes that tile the frame's score, box and hot spot."""

import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import grey_frame

from inspector.detect.pipeline import ERROR, NG, OK
from inspector.frames.sources import Frame
from inspector.results.overlay import render


def frame_of(image, index=0, error=None) -> Frame:
    return Frame(image, f"test#{index}", index, time.monotonic(), error)


def with_dark_spot(image, x, y, r=12):
    out = image.copy()
    cv2.circle(out, (x, y), r, (0, 0, 0), -1)
    return out


def test_a_defect_in_one_tile_lights_that_tile(darkness_inspector):
    inspector = darkness_inspector(tile=64)
    clean = grey_frame(192, 256)
    result = inspector.inspect(frame_of(with_dark_spot(clean, 160, 96)))   # inside tile (row 1, col 2)
    assert result.verdict == NG
    assert len(result.tile_scores) == 3 * 4
    worst = int(np.argmax(result.tile_scores))
    assert result.grid.boxes[worst].tolist() == [128, 64, 192, 128]
    (box,) = result.flagged_boxes().tolist()                    # one box, around the spot, not the tile
    x0, y0, x1, y1 = box
    assert 128 <= x0 <= 160 <= x1 <= 192 and 64 <= y0 <= 96 <= y1 <= 128 and (x1 - x0) * (y1 - y0) < 64 * 64 / 4
    assert result.score == result.tile_scores[worst] and result.normalised > 0.5
    heat = result.heat
    assert heat.shape == (192, 256)
    y, x = np.unravel_index(np.argmax(heat), heat.shape)
    assert abs(x - 160) < 12 and abs(y - 96) < 12
    assert heat[:64].max() < 0.5 and heat[:, :128].max() < 0.5       # other tiles stay below the threshold

    ok = inspector.inspect(frame_of(clean))
    assert ok.verdict == OK and ok.normalised < 0.5 and len(ok.flagged_boxes()) == 0


def test_batches_of_frames_give_the_same_results_as_one_at_a_time(darkness_inspector):
    inspector = darkness_inspector(tile=50, stride=40)
    rng = np.random.default_rng(1)
    frames = [frame_of(with_dark_spot(grey_frame(120 + 10 * i, 200), *rng.integers(20, 100, 2)), i) for i in range(4)]
    frames.insert(2, frame_of(None, 9, error="empty file"))
    together = inspector.inspect_batch(frames)
    alone = [inspector.inspect(f) for f in frames]
    assert [r.item for r in together] == [f.item for f in frames]
    assert together[2].verdict == ERROR and together[2].error == "empty file"
    for a, b in zip(together, alone, strict=True):
        if a.error is None:
            np.testing.assert_allclose(a.tile_scores, b.tile_scores, rtol=1e-5)
            assert a.verdict == b.verdict


def test_moving_the_threshold_changes_verdicts_not_the_calibrated_scale(darkness_inspector):
    inspector = darkness_inspector()
    frame = frame_of(with_dark_spot(grey_frame(64, 64), 32, 32, r=20))
    first = inspector.inspect(frame)
    assert first.verdict == NG and first.normalised > 0.5
    inspector.set_threshold(first.score + 0.01)
    again = inspector.inspect(frame)
    assert again.verdict == OK and again.normalised == first.normalised
    assert inspector.normalised_threshold > first.normalised
    inspector.set_normalised_threshold(0.5)
    assert inspector.threshold == pytest.approx(inspector.calibration.threshold)
    assert inspector.inspect(frame).verdict == NG


def test_region_of_interest_limits_inspection(darkness_inspector):
    inspector = darkness_inspector(tile=32, roi=(0, 0, 64, 64))
    image = with_dark_spot(grey_frame(128, 128), 100, 100)     # the spot is outside the region
    result = inspector.inspect(frame_of(image))
    assert result.verdict == OK and result.grid.boxes[:, 2:].max() <= 64
    assert result.heat[64:, 64:].max() == 0
    inspector.set_roi(None)
    assert inspector.inspect(frame_of(image)).verdict == NG


def test_overlay_draws_heat_boxes_and_verdict(darkness_inspector):
    inspector = darkness_inspector(tile=64)
    image = with_dark_spot(grey_frame(128, 128), 96, 96)
    result = inspector.inspect(frame_of(image))
    drawn = render(result)
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    (x0, y0, x1, y1), = result.flagged_boxes().tolist()
    assert (drawn[y0, x0:x1] == (40, 40, 255)).all(axis=1).any()    # the box around the spot, in red
    assert not np.array_equal(render(result, boxes=False, text=False), image)     # heat blended in
    plain = render(result, heat=False, boxes=False, text=False)
    assert np.array_equal(plain, image)
    assert (drawn[2:10, 2:10] != image[2:10, 2:10]).any()          # the verdict label


def test_frame_calibration_holds_the_false_alarm_rate_per_frame(darkness_inspector):
    from inspector.detect.calibration import calibrate
    from inspector.detect.pipeline import Inspector, calibrate_frames

    rng = np.random.default_rng(0)
    frames = [np.clip(rng.normal(200, 30, (96, 128, 3)), 0, 255).astype(np.uint8) for _ in range(200)]
    inspector = darkness_inspector(tile=16)                # 48 tiles a frame
    fit, held_out = frames[:100], frames[100:]

    def flagged(insp, images):
        return np.mean([insp.inspect(frame_of(f)).verdict == NG for f in images])

    tiles = np.concatenate([inspector.inspect(frame_of(f)).tile_scores for f in fit])
    per_tile = Inspector(inspector.detector, calibrate(tiles, false_alarm_rate=0.05), tile=16)
    per_frame = Inspector(inspector.detector, calibrate_frames(inspector, fit, false_alarm_rate=0.05), tile=16)
    assert flagged(per_tile, held_out) > 0.5               # about 1 - 0.95^48 of good frames
    assert flagged(per_frame, fit) <= 0.05
    assert flagged(per_frame, held_out) < 0.15


def test_a_region_outside_a_frame_is_that_frames_error_not_the_runs(darkness_inspector, tmp_path):
    from inspector.app.inspection import run_inspection
    from inspector.frames.sources import FolderSource
    from inspector.results.store import ResultStore

    folder = tmp_path / "images"
    folder.mkdir()
    cv2.imwrite(str(folder / "big.png"), grey_frame(200, 200))
    cv2.imwrite(str(folder / "small.png"), grey_frame(40, 40))
    inspector = darkness_inspector(tile=32, roi=(100, 100, 64, 64))
    with ResultStore(tmp_path / "r.sqlite") as store:
        run = store.start_run(source="f", kind="folder", model="m", method="darkness", settings={}, threshold=0.3)
        summary = run_inspection(inspector, FolderSource(folder), store, run)
        rows = {Path(r.item).name: r for r in store.items(run)}
    assert summary.items == 2 and summary.errors == 1
    assert rows["big.png"].verdict == OK and "outside" in rows["small.png"].error
