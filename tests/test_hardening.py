"""Hardening, unit by unit: pixel budget, bounded decode-ahead, NaN never OK, an Inspector per worker,
lossless names, old databases, abandoned and failed runs, side-effect-free inference."""

import math
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import DarknessDetector, grey_frame

import models
from inspector.app.inspection import run_inspection
from inspector.detect.calibration import calibrate
from inspector.detect.pipeline import ERROR, NG, OK, FrameResult, Inspector
from inspector.faults import png_claiming
from inspector.frames.frame import Frame, SourceState
from inspector.frames.images import ImageReadError, read_header, read_image, write_image
from inspector.frames.sources import CameraSource, DecodeBudget, FolderSource
from inspector.results.report import write_csv
from inspector.results.store import ResultStore

REPO = Path(__file__).resolve().parents[1]


# -- images and folders ---------------------------------------------------------------------------------
def test_a_header_over_the_pixel_budget_is_refused_before_decoding(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_claiming(100_000, 100_000))
    assert bomb.stat().st_size < 1000
    with pytest.raises(ImageReadError, match=r"100000x100000 pixels \(10000 MP\) is over the 100 MP budget"):
        read_image(bomb)
    cv2.imwrite(str(tmp_path / "ok.png"), np.zeros((300, 400, 3), np.uint8))
    with pytest.raises(ImageReadError, match="over the 0 MP budget"):
        read_image(tmp_path / "ok.png", max_pixels=100_000)
    assert read_image(tmp_path / "ok.png", max_pixels=120_000).shape == (300, 400, 3)


def test_a_fifo_is_an_error_not_a_hang(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(ImageReadError, match="named pipe"):
        read_image(tmp_path / "pipe.png")


def test_decode_ahead_is_bounded_by_bytes_not_by_count(tmp_path):
    for i in range(24):
        cv2.imwrite(str(tmp_path / f"{i:02d}.png"), np.full((300, 300, 3), i, np.uint8))
    one = max(read_header(p).decoded_bytes for p in tmp_path.iterdir())     # what one decode costs at its peak

    def peak(budget: int) -> int:
        source = FolderSource(tmp_path, workers=4, ahead=16, memory_budget=budget)
        for frame in source:
            time.sleep(0.01)                 # a slow consumer: the decoders run ahead as far as they may
            del frame
        return source.budget_peak

    assert peak(3 * one) <= 3 * one + one    # the budget, plus the one the consumer waits for
    assert peak(100 * one) >= 8 * one        # unbounded, sixteen files may be decoded ahead


def test_the_image_the_consumer_waits_for_always_fits():
    budget = DecodeBudget(100)
    assert budget.acquire(80, seq=0)
    got = []
    waiter = threading.Thread(target=lambda: got.append(budget.acquire(80, seq=1)))
    waiter.start()
    time.sleep(0.1)
    assert not got                           # does not fit, and is not the head yet
    budget.advance(1)                        # the consumer now waits for it
    waiter.join(2)
    assert got == [True] and budget.used == 160


# -- verdicts ----------------------------------------------------------------------------------------
def test_a_score_that_is_not_a_number_is_never_ok():
    result = FrameResult("x", 0, 0.0, 0.0, None, score=float("nan"), threshold=0.5)
    assert result.verdict == ERROR
    assert FrameResult("x", 0, 0.0, 0.0, None, score=0.1, threshold=float("nan")).verdict == ERROR
    assert FrameResult("x", 0, 0.0, 0.0, None, score=float("inf"), threshold=0.5).verdict == ERROR
    assert FrameResult("x", 0, 0.0, 0.0, None, score=0.1, threshold=0.5).verdict == OK


class NanDetector(DarknessDetector):
    def infer(self, x):
        out = super().infer(x)
        out.scores[:] = float("nan")
        return out


def test_a_model_that_scores_nan_gives_error_frames_with_the_reason():
    calibration = calibrate(np.array([0.2, 0.21, 0.3]), false_alarm_rate=0.0)
    result = Inspector(NanDetector(size=16), calibration, tile=32).inspect(
        Frame(grey_frame(64, 64), "f", 0, time.monotonic()))
    assert result.verdict == ERROR and "not a number" in result.error
    with pytest.raises(ValueError, match="finite"):
        Inspector(NanDetector(size=16), calibration).set_threshold(math.nan)


def test_each_worker_owns_its_inspector(darkness_inspector):
    live = darkness_inspector(tile=32)
    batch = live.copy()
    assert batch.detector is live.detector                       # one model in memory
    live.set_normalised_threshold(0.9)
    live.set_roi((0, 0, 40, 40))
    assert batch.threshold != live.threshold and batch.roi is None
    frame = Frame(grey_frame(64, 64, level=60), "dark", 0, time.monotonic())
    assert batch.inspect(frame).threshold == batch.threshold


# -- the results database ----------------------------------------------------------------------------
def test_names_that_are_not_utf8_are_stored_losslessly_and_shown_escaped(tmp_path, darkness_inspector):
    folder = tmp_path / "in"
    folder.mkdir()
    raw = os.fsencode(folder) + b"/caf\xe9.png"
    cv2.imwrite(str(tmp_path / "tmp.png"), grey_frame(32, 32))
    os.rename(tmp_path / "tmp.png", raw)
    name = os.fsdecode(raw)
    with ResultStore(tmp_path / "r.sqlite") as store:
        run = store.start_run(source=str(folder), kind="folder", model="m", method="darkness", settings={},
                              threshold=0.3)
        run_inspection(darkness_inspector(), FolderSource(folder), store, run)
        assert store.recorded_items(run) == {name}                # the exact name, to open and to skip
        row = store.items(run)[0]
        assert row.item == name and row.display.endswith("caf\\xe9.png") and row.verdict == OK
        text = write_csv(store, run, tmp_path / "r.csv").read_text(encoding="utf-8")
    assert "caf\\xe9.png" in text


def test_a_database_of_the_previous_version_opens_and_is_upgraded(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as old:
        old.executescript("""
            CREATE TABLE runs (id INTEGER PRIMARY KEY, source TEXT NOT NULL, kind TEXT NOT NULL, model TEXT NOT NULL,
                method TEXT NOT NULL, settings TEXT NOT NULL, threshold REAL NOT NULL, started TEXT NOT NULL,
                ended TEXT, status TEXT NOT NULL);
            CREATE TABLE items (id INTEGER PRIMARY KEY, run_id INTEGER NOT NULL REFERENCES runs(id),
                item TEXT NOT NULL, frame_index INTEGER NOT NULL, inspected TEXT NOT NULL, score REAL,
                normalised REAL, verdict TEXT NOT NULL, error TEXT, width INTEGER, height INTEGER, overlay TEXT,
                thumb BLOB, heat BLOB, label TEXT, labelled TEXT, UNIQUE (run_id, item));
            INSERT INTO runs VALUES (1, '/data', 'folder', 'm', 'eidn', '{}', 0.5, '2026-01-01', '2026-01-01',
                                     'completed');
            INSERT INTO items (run_id, item, frame_index, inspected, score, normalised, verdict)
                VALUES (1, '/data/a.png', 0, '2026-01-01', 0.1, 0.1, 'OK');
            PRAGMA user_version=1;""")
    with ResultStore(path) as store:
        run = store.runs()[0]
        assert run.status == "completed" and run.summary == {}
        assert [r.item for r in store.items(1)] == ["/data/a.png"] and store.items(1)[0].threshold is None


def test_a_run_whose_writer_died_is_interrupted_at_the_next_open(tmp_path):
    db = tmp_path / "r.sqlite"
    code = (f"import os; from inspector.results.store import ResultStore; s = ResultStore({str(db)!r}); "
            "s.start_run(source='s', kind='folder', model='m', method='x', settings={}, threshold=1.0); os._exit(0)")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
    with ResultStore(db) as store:
        assert store.runs()[0].status == "interrupted"


def test_a_live_run_in_this_process_is_not_taken_for_abandoned(tmp_path):
    db = tmp_path / "r.sqlite"
    with ResultStore(db) as writer:
        run = writer.start_run(source="s", kind="camera", model="m", method="x", settings={}, threshold=1.0)
        with ResultStore(db) as reader:                          # e.g. the batch view, opened meanwhile
            assert reader.run(run).status == "running"


class Exploding(Inspector):
    def inspect_batch(self, frames):
        raise RuntimeError("the GPU fell off the bus")


def test_an_unexpected_error_ends_the_run_failed_and_is_raised(tmp_path, darkness_inspector):
    cv2.imwrite(str(tmp_path / "a.png"), grey_frame(32, 32))
    template = darkness_inspector()
    inspector = Exploding(template.detector, template.calibration)
    with ResultStore(tmp_path / "r.sqlite") as store:
        run = store.start_run(source="s", kind="folder", model="m", method="x", settings={}, threshold=1.0)
        with pytest.raises(RuntimeError, match="fell off"):
            run_inspection(inspector, FolderSource([tmp_path / "a.png"]), store, run)
        assert store.run(run).status == "failed: RuntimeError: the GPU fell off the bus"


def test_a_truncated_video_ends_failed_with_its_lost_frames(tmp_path):
    from inspector.faults import make_video

    video = make_video(tmp_path / "v.avi", n=120, damage="truncated")
    with CameraSource(str(video)) as source:
        frames = sum(1 for _ in source)
    assert source.status.state is SourceState.FAILED and source.frames_lost == 120 - frames > 0
    assert f"{source.frames_lost} of 120 frames could not be read" in source.status.detail


# -- detectors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", models.method_names())
def test_infer_leaves_the_training_mode_alone(method):
    cls = models.get_method(method)
    detector = models.create(method, size=None if cls.defaults.size is None else 16, channels=1)
    if detector.gradient_free:
        detector.fit_features([torch.randn(detector.feature_dim, 2, 2)])
    elif cls.defaults.size is None:                  # a head on features: EIDN's bank of good patches
        detector.begin_training([torch.randn(detector.feature_dim, 2, 2)])
    detector.train()
    detector.infer(torch.zeros(2, 1, 16, 16))
    assert detector.training


def test_hyper_parameters_are_recorded_from_the_constructor_once():
    detector = models.create("agad", size=16, channels=1, generator="unet", w_con=10.0)
    assert detector.hparams() == {**models.get_method("agad").hparam_defaults(), "generator": "unet", "w_con": 10.0}
    assert "size" not in detector.hparams()


def test_frames_in_a_resumed_run_keep_their_index(tmp_path, darkness_inspector):
    for i in range(5):
        cv2.imwrite(str(tmp_path / f"{i}.png"), grey_frame(32, 32, level=250 if i != 3 else 20))
    files = sorted(tmp_path.glob("*.png"))
    with ResultStore(tmp_path / "r.sqlite") as store:
        run = store.start_run(source="s", kind="folder", model="m", method="x", settings={}, threshold=1.0)
        run_inspection(darkness_inspector(), FolderSource(files[:2]), store, run)
        done = store.recorded_items(run)
        run_inspection(darkness_inspector(), FolderSource(files, skip=done), store, run)
        rows = store.items(run, order="index")
    assert [r.frame_index for r in rows] == [0, 1, 2, 3, 4] and rows[3].verdict == NG


# -- found in review -----------------------------------------------------------------------------------
def test_a_folder_whose_own_name_is_not_utf8_is_inspected(tmp_path, tiny_model, capsys):
    from inspector.cli import main

    folder = os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9")
    overlays = os.fsdecode(os.fsencode(tmp_path) + b"/\xffout")
    os.mkdir(folder)
    for i in range(3):                   # cv2.imwrite would crash on this path: the product never uses it
        write_image(os.path.join(folder, f"{i}.png"), grey_frame(32, 32, level=255 if i else 0))
    db = tmp_path / "r.sqlite"
    assert main(["inspect", folder, "--model", str(tiny_model), "--db", str(db), "--report", str(tmp_path / "r.html"),
                 "--csv", str(tmp_path / "r.csv"), "--out", overlays]) == 0
    with ResultStore(db) as store:
        run = store.runs()[0]
        assert run.source == folder                               # the exact name, stored losslessly
        saved = [r.overlay for r in store.items(run.id) if r.overlay]
    assert "caf\\xe9" in (tmp_path / "r.html").read_text()
    assert saved and all(os.path.isfile(path) for path in saved)


def test_a_video_whose_path_is_not_utf8_is_refused_not_a_crash(tmp_path):
    from inspector.frames.sources import SourceError, open_source

    video = os.fsdecode(os.fsencode(tmp_path) + b"/clip\xe9.avi")
    with open(video, "wb") as f:
        f.write(b"RIFF not really a video")
    with pytest.raises(SourceError, match="not valid UTF-8"):
        open_source(video)


def test_resume_is_refused_while_the_runs_writer_is_alive(tmp_path):
    from inspector.results.store import StoreError

    db = tmp_path / "r.sqlite"
    with ResultStore(db) as writer:
        run = writer.start_run(source="s", kind="folder", model="m", method="x", settings={}, threshold=1.0)
        with ResultStore(db) as other, pytest.raises(StoreError, match="still being written"):
            other.reopen_run(run)


def test_one_frame_that_fails_is_its_own_error_and_the_rest_are_inspected(tmp_path, darkness_inspector, monkeypatch):
    import inspector.detect.pipeline as pipeline

    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(6):
        cv2.imwrite(str(folder / f"{i}.png"), grey_frame(40 + i, 40))
    real_cut = pipeline.cut_tiles

    def cut(image, grid, channels):
        if image.shape[0] == 43:
            raise MemoryError
        return real_cut(image, grid, channels)

    monkeypatch.setattr(pipeline, "cut_tiles", cut)
    with ResultStore(tmp_path / "r.sqlite") as store:
        run = store.start_run(source="s", kind="folder", model="m", method="x", settings={}, threshold=1.0)
        summary = run_inspection(darkness_inspector(tile=16), FolderSource(folder), store, run)
        rows = {Path(r.item).name: r for r in store.items(run)}
    assert summary.status == "completed" and len(rows) == 6
    assert rows["3.png"].verdict == ERROR and "memory" in rows["3.png"].error
    assert all(r.verdict != ERROR for name, r in rows.items() if name != "3.png")


def test_16_bit_colour_images_are_counted_at_their_decoded_size(tmp_path):
    cv2.imwrite(str(tmp_path / "c16.png"), np.full((30, 40, 3), 40000, np.uint16))
    cv2.imwrite(str(tmp_path / "c8.png"), np.full((30, 40, 3), 150, np.uint8))
    assert read_header(tmp_path / "c16.png").sample_bytes == 2 and read_header(tmp_path / "c8.png").sample_bytes == 1


def test_a_region_moved_while_a_grid_is_planned_is_not_lost(darkness_inspector, monkeypatch):
    import inspector.detect.pipeline as pipeline

    inspector = darkness_inspector(tile=16)
    real_plan = pipeline.plan_grid

    def slow_plan(*args, **kw):        # the UI thread moves the region while the worker plans
        inspector.set_roi((0, 0, 32, 32))
        return real_plan(*args, **kw)

    monkeypatch.setattr(pipeline, "plan_grid", slow_plan)
    inspector.grid((64, 64))
    monkeypatch.setattr(pipeline, "plan_grid", real_plan)
    assert inspector.grid((64, 64)).roi == (0, 0, 32, 32)


def test_a_resumed_runs_report_counts_each_entry_once(tmp_path, darkness_inspector):
    from inspector.results.report import write_html

    for i in range(4):
        cv2.imwrite(str(tmp_path / f"{i}.png"), grey_frame(32, 32))
    files = sorted(tmp_path.glob("*.png"))
    with ResultStore(tmp_path / "r.sqlite") as store:
        run = store.start_run(source="s", kind="folder", model="m", method="x", settings={}, threshold=1.0)
        run_inspection(darkness_inspector(), FolderSource(files[:2]), store, run)
        store.reopen_run(run)
        run_inspection(darkness_inspector(), FolderSource(files, skip=store.recorded_items(run)), store, run)
        page = write_html(store, run, tmp_path / "r.html").read_text()
    assert "already recorded" not in page and "<td>items</td><td>4</td>" in page


def test_lock_files_left_by_a_writer_killed_before_its_run_row_are_swept(tmp_path):
    locks = tmp_path / "r.sqlite.locks"
    locks.mkdir()
    (locks / "host-123-abc.lock").write_text("")
    with ResultStore(tmp_path / "r.sqlite"):
        pass
    assert not (locks / "host-123-abc.lock").exists()


def test_a_run_stopped_by_max_frames_does_not_claim_completion(tmp_path, darkness_inspector):
    for i in range(5):
        cv2.imwrite(str(tmp_path / f"{i}.png"), grey_frame(32, 32))
    with ResultStore(tmp_path / "r.sqlite") as store:
        run = store.start_run(source="s", kind="folder", model="m", method="x", settings={}, threshold=1.0)
        summary = run_inspection(darkness_inspector(), FolderSource(sorted(tmp_path.glob("*.png"))), store, run,
                                 max_frames=2)
    assert summary.items == 2 and summary.status == "stopped after 2 items (--max-frames)"


def test_output_paths_that_cannot_be_written_are_input_errors_and_leave_no_run(tmp_path, tiny_model, capsys):
    from inspector.cli import main

    folder = tmp_path / "parts"
    folder.mkdir()
    write_image(folder / "0.png", grey_frame(32, 32))
    db = tmp_path / "r.sqlite"
    in_the_way = tmp_path / "file"
    in_the_way.write_text("x")
    base = ["inspect", str(folder), "--model", str(tiny_model), "--db", str(db)]
    assert main([*base, "--out", str(in_the_way)]) == 2
    assert main([*base, "--report", str(tmp_path)]) == 2
    assert main([*base, "--csv", str(in_the_way / "x.csv")]) == 2      # after the run: its folder is a file
    err = capsys.readouterr().err
    assert "is a file: give a folder" in err and "is a folder: give a file name" in err
    assert "cannot write" in err and ".partial" not in err and "a bug" not in err
    with ResultStore(db) as store:
        assert [run.status for run in store.runs()] == ["completed"]     # only the --csv run started


def test_a_fifo_given_as_the_source_is_refused_not_waited_on(tmp_path):
    from inspector.frames.sources import SourceError, open_source

    os.mkfifo(tmp_path / "stream")
    with pytest.raises(SourceError, match="not a regular file"):
        open_source(str(tmp_path / "stream"))


def test_a_truncated_jpeg_is_an_error_not_a_half_grey_part(tmp_path):
    ok, data = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
    (tmp_path / "cut.jpg").write_bytes(data.tobytes()[: len(data) // 2])
    (tmp_path / "whole.jpg").write_bytes(data.tobytes() + b"\0" * 16)      # padding after the end marker is fine
    with pytest.raises(ImageReadError, match="truncated JPEG"):
        read_image(tmp_path / "cut.jpg")
    assert read_image(tmp_path / "whole.jpg").shape == (64, 64, 3)


def test_a_single_frame_whose_model_fails_is_an_error_not_the_end_of_the_run(darkness_inspector, monkeypatch):
    inspector = darkness_inspector(tile=16)

    def broken(x):
        raise RuntimeError("the model broke")

    monkeypatch.setattr(inspector.detector, "infer", broken)
    (result,) = inspector.inspect_batch([Frame(grey_frame(32, 32), "live#1", 0, 0.0)])   # a live batch: one frame
    assert result.verdict == ERROR and "the model broke" in result.error
