"""The results database: runs and items, labels, thumbnails, and reports made from it."""

import csv
import sqlite3
import time

import numpy as np
import pytest
from conftest import grey_frame

from inspector.detect.pipeline import ERROR, NG, OK, FrameResult
from inspector.results.report import write_csv, write_html
from inspector.results.store import ResultStore, StoreError


def result(item: str, score: float, *, threshold: float = 1.0, error: str | None = None) -> FrameResult:
    now = time.monotonic()
    if error is not None:
        return FrameResult(item, 0, now, now, None, error=error, threshold=threshold)
    return FrameResult(item, 0, now, now, grey_frame(30, 40), score=score, normalised=score / 2,
                       threshold=threshold)


@pytest.fixture
def store(tmp_path):
    with ResultStore(tmp_path / "results.sqlite") as s:
        yield s


def new_run(store, source="folder") -> int:
    return store.start_run(source=source, kind="folder", model="m.safetensors", method="eidn",
                           settings={"tile": None}, threshold=1.0)


def test_items_are_recorded_sorted_worst_first_with_errors_first(store):
    run = new_run(store)
    for item, score in (("a", 0.5), ("b", 1.8), ("c", 0.9)):
        store.add(run, result(item, score))
    store.add(run, result("broken", 0, error="empty file"))
    store.finish_run(run)
    rows = store.items(run)
    assert [r.item for r in rows] == ["broken", "b", "c", "a"]
    assert [r.verdict for r in rows] == [ERROR, NG, OK, OK]
    assert rows[0].score is None and rows[0].error == "empty file"
    assert store.counts(run) == {OK: 2, NG: 1, ERROR: 1}
    assert [r.item for r in store.items(run, verdict=NG)] == ["b"]
    assert store.run(run).status == "completed" and store.run(run).ended
    thumb, heat = store.images(rows[1].id)
    assert thumb.shape == (30, 40, 3) and heat is None


def test_a_resumed_run_knows_what_it_recorded(store):
    run = new_run(store, "/data/folder")
    store.add(run, result("x", 0.1))
    store.add(run, result("y", 0.2))
    store.finish_run(run, "interrupted")
    assert store.latest_run("/data/folder").id == run
    assert store.latest_run("/elsewhere") is None
    assert store.recorded_items(run) == {"x", "y"}


def test_operator_labels_are_saved_at_once_and_checked(store, tmp_path):
    run = new_run(store)
    store.add(run, result("a", 0.5))
    store.flush()
    item = store.items(run)[0].id
    store.set_label(item, NG)
    other = sqlite3.connect(tmp_path / "results.sqlite")          # another reader sees it immediately
    assert other.execute("SELECT label FROM items WHERE id=?", (item,)).fetchone() == ("NG",)
    with pytest.raises(ValueError):
        store.set_label(item, "maybe")
    store.set_label(item, None)
    assert store.items(run)[0].label is None


def test_a_batch_is_written_in_one_short_transaction_and_no_lock_is_held_between(tmp_path):
    path = tmp_path / "r.sqlite"
    with ResultStore(path) as writer:
        run = new_run(writer)
        writer.add(run, result("a", 0.5))
        writer.add(run, result("b", 0.7))
        reader = sqlite3.connect(path)
        assert reader.execute("SELECT COUNT(*) FROM items").fetchone() == (0,)     # queued while the batch is scored
        writer.flush()
        assert reader.execute("SELECT COUNT(*) FROM items").fetchone() == (2,)
        other = sqlite3.connect(path, timeout=0, isolation_level=None)             # another writer gets in at once
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.sqlite"
    bad.write_text("this is not sqlite, just text long enough to be a header........................" * 20)
    with pytest.raises(StoreError, match="not a usable results database"):
        ResultStore(bad)


def test_csv_and_html_list_every_item(store, tmp_path):
    run = new_run(store)
    names = [f"item{i}" for i in range(7)]
    for i, name in enumerate(names):
        store.add(run, result(name, i * 0.3))
    store.add(run, result("broken.jpg", 0, error="not a decodable image"))
    store.finish_run(run)
    rows = list(csv.DictReader(open(write_csv(store, run, tmp_path / "r.csv"))))
    assert sorted(r["item"] for r in rows) == sorted([*names, "broken.jpg"])
    assert {r["verdict"] for r in rows} == {OK, NG, ERROR}
    page = write_html(store, run, tmp_path / "r.html").read_text()
    for name in [*names, "broken.jpg", "not a decodable image"]:
        assert name in page
    assert page.count("data:image/jpeg;base64,") == 2 * len(names)   # image + heat per scored item
    assert "<svg" in page and "threshold" in page


def test_thumbnails_carry_the_heat_map(darkness_inspector, store):
    from inspector.frames.frame import Frame

    image = grey_frame(100, 300)
    image[40:60, 250:270] = 0
    res = darkness_inspector(tile=50).inspect(Frame(image, "f", 0, time.monotonic()))
    run = new_run(store)
    store.add(run, res)
    store.flush()
    thumb, heat = store.images(store.items(run)[0].id)
    assert thumb.shape[1] == 160 and heat.shape == thumb.shape[:2]
    y, x = np.unravel_index(np.argmax(heat), heat.shape)
    assert x > 120                                       # the dark spot is at the right end


def test_old_results_are_pruned_but_labelled_items_and_running_runs_are_kept(store):
    old, recent, running = new_run(store), new_run(store), new_run(store)
    for run in (old, recent, running):
        for item, score in (("a", 0.5), ("b", 1.8)):
            store.add(run, result(item, score))
    store.finish_run(old)
    store.finish_run(recent)
    store.flush()
    labelled = store.items(old)[0]
    store.set_label(labelled.id, "NG")
    with store._db:                                        # the old run and the running one started long ago
        store._db.execute("UPDATE runs SET started='2020-01-01T00:00:00.000+00:00' WHERE id IN (?, ?)",
                          (old, running))
    assert store.prune(30) == 1                            # the old run's unlabelled item only
    assert [r.id for r in store.items(old)] == [labelled.id]
    assert len(store.items(recent)) == 2 and len(store.items(running)) == 2
    store.set_label(labelled.id, None)
    assert store.prune(30) == 1
    assert old not in [r.id for r in store.runs()]         # an emptied run goes too


def test_a_sampled_record_keeps_every_defect_and_one_good_frame_in_a_hundred(tmp_path, darkness_inspector):
    import cv2

    from inspector.app.inspection import OK_SAMPLE_EVERY, Record, run_inspection
    from inspector.frames.sources import FolderSource

    folder = tmp_path / "frames"                           # 250 light frames and 3 dark ones
    folder.mkdir()
    for i in range(253):
        cv2.imwrite(str(folder / f"{i:03d}.png"), np.full((16, 16, 3), 20 if i in (5, 50, 200) else 230, np.uint8))
    with ResultStore(tmp_path / "r.sqlite") as store:
        run = new_run(store, source="cam")
        run_inspection(darkness_inspector(), FolderSource(folder), store, run, record=Record.SAMPLED)
        counts = store.counts(run)
    assert counts[NG] == 3 and counts[OK] == -(-250 // OK_SAMPLE_EVERY)
