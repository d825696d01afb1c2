"""The inspect command end to end: real data, reports, resume, a killed process, bad input."""

import csv
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import REPO, texture
from test_cli import real_slice

from inspector.cli import main


@pytest.fixture(scope="module")
def brick(shared_data, tmp_path_factory):
    """A slice of the real brickwork set and the default detector fitted on it in this test (seconds)."""
    root = tmp_path_factory.mktemp("brick-inspect")
    data = real_slice(shared_data / "brickwork_crack", root / "data",
                      {"train/good": 80, "train/defect/crack": 30, "test/good": 25, "test/crack": 25})
    model = root / "bank.safetensors"
    assert main(["train", "--data", str(data), "--method", "default", "--out", str(model),
                 "--false-alarm-rate", "0.1"]) == 0
    return data, model


def last_line(capsys) -> str:
    return capsys.readouterr().out.strip().splitlines()[-1]


def test_inspect_a_real_folder_with_report_csv_and_overlays(brick, tmp_path, capsys):
    data, model = brick
    out, report, table = tmp_path / "overlays", tmp_path / "report.html", tmp_path / "items.csv"
    rc = main(["inspect", str(data / "test"), "--model", str(model), "--db", str(tmp_path / "r.sqlite"),
               "--out", str(out), "--report", str(report), "--csv", str(table)])
    assert rc == 0
    line = last_line(capsys)
    assert line.startswith("items=50 anomalous=") and " errors=0 items_per_second=" in line
    anomalous = int(line.split()[1].split("=")[1])
    rows = list(csv.DictReader(table.open()))
    assert len(rows) == 50 and len(list(out.glob("*.jpg"))) == anomalous
    flagged = {r["item"] for r in rows if r["verdict"] == "NG"}
    cracks = {r["item"] for r in rows if "/crack/" in r["item"]}
    assert len(flagged & cracks) / 25 > len(flagged - cracks) / 25     # flags cracks more than goods
    page = report.read_text()
    assert all(Path(r["item"]).name in page for r in rows)
    for f in out.glob("*.jpg"):
        assert cv2.imread(str(f)) is not None


def test_inspect_a_video_file_with_tiles(tiny_model, tmp_path, capsys):
    video = tmp_path / "line.avi"
    rng = np.random.default_rng(0)
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (192, 96))
    for _ in range(10):
        writer.write(cv2.resize(texture(rng, 96), (192, 96)))
    writer.release()
    rc = main(["inspect", str(video), "--model", str(tiny_model), "--db", str(tmp_path / "r.sqlite"),
               "--tile", "48", "--max-frames", "6"])
    assert rc == 0
    assert last_line(capsys).startswith("items=6 anomalous=")


def write_big_folder(root: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for i in range(n):
        cv2.imwrite(str(root / f"{i:04d}.png"), texture(rng, 192))
    return root


def test_a_killed_run_leaves_a_consistent_database_and_resume_finishes_it(tiny_model, tmp_path, capsys):
    folder, db = write_big_folder(tmp_path / "folder", 300), tmp_path / "r.sqlite"
    cmd = [sys.executable, "main.py", "inspect", str(folder), "--model", str(tiny_model), "--db", str(db),
           "--tile", "12"]  # 256 tiles an image: slow enough to be killed mid-run
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            time.sleep(0.1)
            if db.exists():
                try:
                    with sqlite3.connect(db) as reader:
                        if reader.execute("SELECT COUNT(*) FROM items").fetchone()[0] >= 10:
                            break
                except sqlite3.OperationalError:
                    pass   # tables not made yet
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    with sqlite3.connect(db) as reader:
        assert reader.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        before = dict(reader.execute("SELECT item, inspected FROM items"))
        assert reader.execute("SELECT status FROM runs").fetchall() == [("running",)]
    assert 10 <= len(before) < 300, "the writer should have been killed mid-run"

    assert main(["inspect", str(folder), "--model", str(tiny_model), "--db", str(db), "--tile", "12",
                 "--resume"]) == 0
    assert last_line(capsys).startswith("items=300 ")
    with sqlite3.connect(db) as reader:
        after = dict(reader.execute("SELECT item, inspected FROM items"))
        assert reader.execute("SELECT COUNT(*), COUNT(DISTINCT item) FROM items").fetchone() == (300, 300)
        assert reader.execute("SELECT status FROM runs").fetchall() == [("completed",)]
    assert all(after[item] == when for item, when in before.items())      # nothing was scored twice


def test_ctrl_c_ends_the_run_cleanly_with_what_was_done(tiny_model, tmp_path, monkeypatch, capsys):
    import inspector.detect.pipeline as pipeline

    folder = write_big_folder(tmp_path / "folder", 40)
    calls = {"n": 0}
    original = pipeline.Inspector.inspect_batch

    def interrupted_later(self, frames):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, frames)

    monkeypatch.setattr(pipeline.Inspector, "inspect_batch", interrupted_later)
    report = tmp_path / "r.html"
    rc = main(["inspect", str(folder), "--model", str(tiny_model), "--db", str(tmp_path / "r.sqlite"),
               "--report", str(report), "--tile", "48"])
    assert rc == 130
    assert last_line(capsys).startswith("items=8 ")     # two batches of 4 images (64 tiles) were done
    assert report.read_text().count("<tr><td>") >= 8
    with sqlite3.connect(tmp_path / "r.sqlite") as reader:
        assert reader.execute("SELECT status FROM runs").fetchall() == [("interrupted",)]


def test_bad_sources_and_options_exit_2(tiny_model, tmp_path, capsys):
    db = ["--db", str(tmp_path / "r.sqlite")]
    assert main(["inspect", str(tmp_path / "missing"), "--model", str(tiny_model), *db]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert main(["inspect", "rtsp://127.0.0.1:9/none", "--model", str(tiny_model), *db]) == 2
    assert "cannot open rtsp://127.0.0.1:9/none" in capsys.readouterr().err
    assert main(["inspect", "97", "--model", str(tiny_model), *db]) == 2
    assert "cannot open camera 97" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path), "--model", str(tmp_path / "none.safetensors"), *db]) == 2
    assert "no such model file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["inspect", str(tmp_path), "--model", str(tiny_model), "--roi", "1,2,3"])
    assert exc.value.code == 2


def test_bench_pipeline_prints_its_figures(tiny_model, tmp_path, capsys):
    folder = write_big_folder(tmp_path / "folder", 12)
    assert main(["bench-pipeline", "--model", str(tiny_model), "--folder", str(folder), "--live-seconds", "1",
                 "--live-tile", "64", "--json", str(tmp_path / "b.json")]) == 0
    line = last_line(capsys)
    keys = [part.split("=")[0] for part in line.split()]
    assert keys == ["folder_items_per_s", "decode_only_items_per_s", "ratio", "live_fps", "live_latency_p50_ms",
                    "live_latency_p95_ms", "device"]
    assert float(line.split()[3].split("=")[1]) > 0


def test_a_stream_that_dies_stops_cleanly_with_what_was_recorded(tiny_model, tmp_path):
    from test_sources import FakeCapture

    from inspector.app.inspection import InspectorSettings, load_inspector, run_inspection
    from inspector.frames.sources import CameraSource
    from inspector.results.store import ResultStore

    inspector, meta = load_inspector(tiny_model, InspectorSettings())
    captures = iter([FakeCapture(5)])       # five frames, then the stream is gone for good
    source = CameraSource("rtsp://line-3.invalid/cam", keep_latest=False, reconnect_attempts=2, max_backoff_s=0.01,
                          opener=lambda spec: next(captures, FakeCapture(0, opened=False)))
    with ResultStore(tmp_path / "r.sqlite") as store:
        run = store.start_run(source="cam", kind="camera", model=str(tiny_model), method="eidn", settings={},
                              threshold=inspector.threshold)
        summary = run_inspection(inspector, source, store, run)
        assert summary.items == 5 and summary.status == "failed: no frames after 2 reconnect attempts"
        assert store.run(run).status == summary.status and len(store.items(run)) == 5


def test_a_model_that_does_not_fit_the_images_says_so(brick, tmp_path, capsys):
    from inspector.base.paths import resource

    data, _ = brick
    demo = resource("demo-patchcore.safetensors")
    rc = main(["inspect", str(data / "test"), "--model", str(demo), "--db", str(tmp_path / "r.sqlite")])
    assert rc == 0
    assert "the model most likely does not fit these images" in capsys.readouterr().err


def test_the_demo_line_shows_a_boxed_defect_in_its_first_seconds():
    """A first launch must show what the program does: an NG frame, boxed where the defect is, soon."""
    from inspector.app.demo import DEMO_DEFECT_RATE, SyntheticSurface
    from inspector.app.inspection import InspectorSettings, load_inspector
    from inspector.base.paths import resource
    from inspector.frames.frame import Frame

    settings = InspectorSettings(device="cpu", engine="torch")
    inspector, _ = load_inspector(resource("demo-patchcore.safetensors"), settings)
    line = SyntheticSurface(seed=0, defect_rate=DEMO_DEFECT_RATE, first_defect=True)
    verdicts = []
    for i in range(61):                                     # two seconds at the demo's 30 frames/s
        image = line.next_frame()
        if i % 15:
            continue
        result = inspector.inspect(Frame(image, f"demo#{i}", i, 0.0))
        verdicts.append(result.verdict)
        if result.verdict == "NG":
            (dx0, dy0, dx1, dy1), = line.defects_in_view()
            assert any(x0 < dx1 and dx0 < x1 and y0 < dy1 and dy0 < y1 for x0, y0, x1, y1 in result.flagged_boxes())
    assert "NG" in verdicts and verdicts[0] == "OK"         # the defect enters from the edge
