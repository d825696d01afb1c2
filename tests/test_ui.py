"""The desktop window, offscreen (conftest sets QT_QPA_PLATFORM): demo, threshold, batch review, labels,
bad input, responsiveness."""

import csv
import sqlite3
import time

import cv2
import numpy as np
import pytest
from conftest import texture
from PySide6.QtCore import QSettings, QTimer

from inspector.results.report import write_csv
from inspector.ui.batch_view import BatchView
from inspector.ui.main_window import MainWindow
from inspector.ui.settings import DEMO_MODEL


@pytest.fixture
def settings(tmp_path):
    qs = QSettings(str(tmp_path / "settings.ini"), QSettings.IniFormat)
    qs.setValue("paths/results_db", str(tmp_path / "results.sqlite"))
    qs.setValue("paths/models_dir", str(tmp_path / "models"))
    qs.setValue("paths/snapshots_dir", str(tmp_path / "snapshots"))
    return qs


@pytest.fixture
def window(qtbot, settings):
    windows = []

    def make(**kw):
        w = MainWindow(settings, **kw)
        qtbot.addWidget(w)
        w.show()
        windows.append(w)
        return w

    yield make
    for w in windows:
        w.close()


def wait_for_update(qtbot, w, timeout: int = 30_000):
    qtbot.waitUntil(lambda: w.live_view.last_update is not None, timeout=timeout)
    return w.live_view.last_update


def wait_for_threshold(qtbot, w, timeout: int = 30_000):
    """The first update inspected against the inspector's current threshold (a frame already in
    flight when the threshold moved was judged against the old one)."""
    qtbot.waitUntil(lambda: w.live_view.last_update is not None
                    and w.live_view.last_update.result.threshold == w.inspector.threshold, timeout=timeout)
    return w.live_view.last_update


def test_the_demo_model_is_shipped():
    assert DEMO_MODEL.is_file()


def test_first_launch_runs_the_demo_and_the_view_updates(qtbot, window, settings):
    w = window()
    update = wait_for_update(qtbot, w)
    assert update.rgb.shape == (720, 1280, 3)
    assert w.live_view.frame.frame_item.image.shape == (720, 1280, 3)
    assert w.live_view.verdict.text().split()[0] in ("OK", "NG")
    assert "demo-patchcore" in w.model_label.text()
    assert "cpu" in w.device_label.text() and "ONNX Runtime" in w.device_label.text()   # the CPU default engine
    qtbot.waitUntil(lambda: w.fps_label.text() != "— fps", timeout=10_000)
    assert not w.live_view.embedding.embedding        # the memory bank has no embedding: a score histogram
    heat = w.live_view.frame.heat_item.image
    assert heat is not None and heat.shape == (720 // 4, 1280 // 4)     # the map, smooth, over the frame
    w.close()
    assert settings.value("source/kind") == "demo"   # remembered


def test_moving_the_threshold_changes_the_verdicts(qtbot, window):
    w = window()
    wait_for_update(qtbot, w)
    w.live_view.set_threshold(0.01)                  # everything is over it
    update = wait_for_threshold(qtbot, w)
    assert update.result.verdict == "NG" and w.live_view.verdict.text().startswith("NG")
    w.live_view.set_threshold(0.99)
    update = wait_for_threshold(qtbot, w)
    assert update.result.normalised < 0.99 and update.result.verdict == "OK"


def test_the_model_never_runs_on_the_ui_thread(qtbot, window, monkeypatch):
    """The design that keeps the window responsive: inspection (and so the model) runs on worker
    threads only.  The stall figures are measured under Xvfb (README); here only a freeze (a
    second without the event loop turning, as a blocking call on the UI thread would cause) fails."""
    import threading

    from inspector.detect.pipeline import Inspector

    threads = set()
    original = Inspector.inspect_batch

    def recording(self, frames):
        threads.add(threading.current_thread())
        return original(self, frames)

    monkeypatch.setattr(Inspector, "inspect_batch", recording)
    w = window()
    wait_for_update(qtbot, w)
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(5)
    qtbot.wait(3000)
    timer.stop()
    gaps = np.diff(ticks)
    print(f"longest gap between 5 ms timer ticks while inspecting: {gaps.max() * 1000:.1f} ms")
    assert threads and threading.main_thread() not in threads
    assert len(ticks) > 30 and gaps.max() < 1.0


def write_folder(root, n=10):
    rng = np.random.default_rng(0)
    root.mkdir()
    for i in range(n):
        img = texture(rng, 160)
        if i % 3 == 0:
            cv2.circle(img, (80, 80), 20, (0, 0, 0), -1)
        cv2.imwrite(str(root / f"{i:02d}.png"), img)
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    return root


def test_batch_review_lists_sorts_labels_and_exports(qtbot, window, tmp_path):
    w = window(autostart=False)
    qtbot.waitUntil(lambda: w.inspector is not None, timeout=20_000)
    folder = write_folder(tmp_path / "parts")
    view = w.batch_view
    view.folder.setText(str(folder))
    view.run_button.click()
    qtbot.waitUntil(lambda: w.batch_worker is None and view.run is not None, timeout=60_000)
    rows = view.model.rows
    assert len(rows) == 11 and sum(r.verdict == "ERROR" for r in rows) == 1
    shown = [view.proxy.data(view.proxy.index(i, 2)) for i in range(view.proxy.rowCount())]
    scores = [float(s) for s in shown if s]
    assert scores == sorted(scores, reverse=True)    # worst first

    view.kind.setCurrentText("ERROR")
    assert view.proxy.rowCount() == 1
    view.kind.setCurrentText("all")
    view.table.selectRow(0)
    view.label_selected("NG")
    with sqlite3.connect(tmp_path / "results.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM items WHERE label='NG'").fetchone() == (1,)

    out = tmp_path / "export.csv"
    view.export(out, write_csv)
    qtbot.waitUntil(out.exists, timeout=10_000)
    assert len(list(csv.DictReader(out.open()))) == 11

    view.kind.setCurrentText("ERROR")                 # an error row says why in place of its images
    view.table.selectRow(0)
    assert "not inspected — " in view.detail_note.text() and view.detail.images[0].image is None
    assert not view.detail_note.isHidden()
    view.kind.setCurrentText("all")

    again = BatchView(tmp_path / "results.sqlite")   # after a restart the last run opens as it was
    qtbot.addWidget(again)
    again.refresh_runs()
    assert again.run.id == view.run.id
    assert len(again.model.rows) == 11 and any(r.label == "NG" for r in again.model.rows)
    assert again.hist_curve.yData.sum() == 10          # the histogram of its scored items
    again.close_store()


def test_a_folder_run_keeps_its_threshold_while_the_live_slider_moves(qtbot, window, tmp_path):
    w = window()
    wait_for_update(qtbot, w)
    started_with = w.inspector.threshold
    view = w.batch_view
    view.folder.setText(str(write_folder(tmp_path / "parts", n=30)))
    view.run_button.click()
    w.live_view.set_threshold(0.05)                 # the operator moves the live threshold meanwhile
    qtbot.waitUntil(lambda: w.batch_worker is None and view.run is not None, timeout=60_000)
    assert w.live_worker.inspector.threshold != started_with          # the live view follows the slider ...
    assert view.run.threshold == started_with                          # ... the folder run does not
    assert {r.threshold for r in view.model.rows} == {started_with}
    w.stop()
    view.refresh_runs()                             # live runs are listed in batch review too
    listed = [view.runs.itemText(i) for i in range(view.runs.count())]
    assert any("camera: demo surface" in text and "cancelled" in text for text in listed), listed


def test_a_folder_run_started_after_live_changes_uses_the_models_threshold_and_no_region(qtbot, window, tmp_path):
    w = window(autostart=False)
    qtbot.waitUntil(lambda: w.inspector is not None, timeout=20_000)
    calibrated = w.model_inspector.threshold
    w.live_view.set_threshold(0.9)                  # the operator's live choices, made before the run ...
    w._roi_changed((10, 10, 20, 20))
    assert w.inspector.threshold != calibrated and w.inspector.roi == (10, 10, 20, 20)
    view = w.batch_view
    view.folder.setText(str(write_folder(tmp_path / "parts", n=4)))
    view.run_button.click()
    qtbot.waitUntil(lambda: w.batch_worker is None and view.run is not None, timeout=60_000)
    assert view.run.threshold == calibrated          # ... stay with live inspection
    assert view.run.settings["roi"] is None


def test_default_paths_are_not_saved_so_the_window_follows_the_data_folder(tmp_path, monkeypatch):
    from inspector.ui.settings import AppSettings

    qs = QSettings(str(tmp_path / "fresh.ini"), QSettings.IniFormat)
    AppSettings.load(qs).save(qs)
    assert qs.value("paths/results_db") is None
    monkeypatch.setenv("INSPECTOR_DATA_DIR", str(tmp_path / "moved"))
    moved = AppSettings.load(qs)
    assert moved.results_db.is_relative_to(tmp_path / "moved")      # the command line's default too
    moved.results_db = tmp_path / "mine.sqlite"                     # a path the user chose is kept
    moved.save(qs)
    assert AppSettings.load(qs).results_db == tmp_path / "mine.sqlite"


def test_a_model_that_does_not_load_is_reported_and_the_previous_stays(qtbot, window, tmp_path):
    w = window(autostart=False)
    qtbot.waitUntil(lambda: w.inspector is not None, timeout=20_000)
    before = w.inspector
    bad = tmp_path / "models" / "broken.safetensors"
    bad.parent.mkdir()
    bad.write_text("not a model")
    w.load_model(bad)
    qtbot.waitUntil(lambda: w.banner.isVisible() and "Could not load" in w.banner.text(), timeout=10_000)
    assert "previous model stays active" in w.banner.text()
    assert w.inspector is before and "demo-patchcore" in w.model_label.text()


def test_a_missing_camera_is_reported_and_the_window_stays(qtbot, window):
    w = window(autostart=False)
    qtbot.waitUntil(lambda: w.inspector is not None, timeout=20_000)
    w.source_kind.setCurrentIndex(w.source_kind.findData("camera"))
    w.source_value.setText("97")
    w.start()
    qtbot.waitUntil(lambda: w.live_worker is None, timeout=20_000)
    assert "cannot open camera 97" in w.banner.text()
    assert w.isVisible() and w.start_action.isEnabled()


def test_snapshot_saves_frame_overlay_and_result(qtbot, window, tmp_path):
    w = window()
    wait_for_update(qtbot, w)
    w.snapshot()
    files = sorted(p.name.split("-")[-1] for p in (tmp_path / "snapshots").iterdir())
    assert files == ["frame.png", "overlay.png", "result.json"]


def test_a_camera_lost_mid_run_shows_a_banner_and_the_window_stays(qtbot, window, monkeypatch):
    from test_sources import FakeCapture

    import inspector.ui.workers as workers
    from inspector.frames.sources import CameraSource

    def flaky_camera(spec, on_status):     # 20 frames, then the stream is gone for good
        captures = iter([FakeCapture(20, period=0.01)])
        return CameraSource(0, opener=lambda _: next(captures, FakeCapture(0, opened=False)), on_status=on_status,
                            max_backoff_s=0.05)

    monkeypatch.setattr(workers, "open_live_source", flaky_camera)
    w = window(autostart=False)
    qtbot.waitUntil(lambda: w.inspector is not None, timeout=20_000)
    w.source_kind.setCurrentIndex(w.source_kind.findData("camera"))
    w.source_value.setText("0")
    w.start()
    qtbot.waitUntil(lambda: "Camera lost" in w.banner.text(), timeout=20_000)
    assert "reconnecting (attempt" in w.banner.text() and w.isVisible()
    assert w.live_view.frame.frame_item.image is None                 # no stale frame while it is gone
    qtbot.waitUntil(lambda: w.live_worker is None, timeout=30_000)     # 5 attempts, then a clean stop
    assert "Source stopped: lost" in w.banner.text() and w.isVisible()
    assert w.live_view.verdict.text() == "source failed"


def test_stopping_clears_the_last_frame_and_verdict(qtbot, window):
    w = window()
    wait_for_update(qtbot, w)
    assert w.live_view.verdict.text().split()[0] in ("OK", "NG")
    w.stop()
    assert w.live_view.verdict.text() == "stopped" and w.live_view.frame.frame_item.image is None
    assert not w.live_view.frame.heat_item.isVisible() and w.live_view.frame.boxes.path().isEmpty()


def test_without_a_display_the_window_says_what_to_do_instead():
    import os
    import subprocess
    import sys

    from conftest import REPO

    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    done = subprocess.run([sys.executable, "main.py"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and "python main.py inspect" in done.stderr


def test_qt_saying_the_display_is_gone_stops_the_live_run_before_qt_exits(qtbot, window, settings):
    """Qt's X11 plugin warns and then calls exit() at once: the warning must stop the workers."""
    from PySide6.QtCore import qInstallMessageHandler, qWarning

    from inspector.ui.app import route_qt_messages

    w = window()
    wait_for_update(qtbot, w)
    previous = route_qt_messages(w.stop_workers)
    try:
        qWarning("The X11 connection broke (error 1). Did the X11 server die?")
    finally:
        qInstallMessageHandler(previous)
    assert w.live_worker is None                   # stopped and waited for, before any event loop turn
    with sqlite3.connect(settings.value("paths/results_db")) as db:
        assert db.execute("SELECT status FROM runs ORDER BY id DESC LIMIT 1").fetchone() == ("cancelled",)


def test_the_model_chooser_lists_registry_versions_and_switches_the_active_one(qtbot, window, tmp_path):
    from inspector.faults import make_model
    from inspector.modelstore.registry import Registry

    registry = Registry(tmp_path / "models")
    first = registry.add(make_model(tmp_path / "a.safetensors"), name="day shift")
    second = registry.add(make_model(tmp_path / "b.safetensors", seed=1), name="night shift")
    w = window(autostart=False)
    qtbot.waitUntil(lambda: w.model_path is not None, timeout=30_000)
    assert w.model_path == registry.path_of(first)                # the active version, nothing remembered
    labels = [w.model_box.itemText(i) for i in range(w.model_box.count())]
    assert any(t.startswith("v0001 day shift · ") and t.endswith("(active)") for t in labels)
    assert any(t.startswith("v0002 night shift · ") and "(active)" not in t for t in labels)
    w._model_chosen(w.model_box.findData(str(registry.path_of(second))))
    qtbot.waitUntil(lambda: w.model_path == registry.path_of(second), timeout=30_000)
    w.activate_chosen()
    assert registry.active().id == second.id
    assert "(active)" in w.model_box.itemText(w.model_box.findData(str(registry.path_of(second))))
    w.live_view.threshold_spin.setValue(0.7)
    w.save_threshold()
    third = registry.list()[-1].version
    assert third.id == "v0003" and third.made_from == "threshold of v0002"
    assert third.threshold == pytest.approx(w.model_inspector.calibration.denormalise(0.7))
    w.rollback()
    assert registry.active().id == first.id
    qtbot.waitUntil(lambda: w.model_path == registry.path_of(first), timeout=30_000)


def test_the_retraining_wizard_goes_from_samples_to_an_activated_model(qtbot, window, tmp_path):
    from conftest import write_mvtec
    from PySide6.QtWidgets import QWizard

    from inspector.modelstore.registry import Registry

    data = write_mvtec(tmp_path / "line")
    w = window(autostart=False)
    qtbot.waitUntil(lambda: w.inspector is not None, timeout=20_000)
    wizard = w.open_wizard()
    page = wizard.samples_page
    assert not page.isComplete()                                   # no samples yet
    page.goods.setText(str(data / "train" / "good"))
    page.defects.setText(str(data / "train" / "defect"))
    qtbot.waitUntil(lambda: "40 good samples, 10 labelled defects" in page.counter.text(), timeout=5_000)
    assert page.isComplete()
    wizard.next()
    page = wizard.method_page
    assert page.method.currentData() == "patchcore"                 # defects or not: the bank, measured best
    assert page.surface.isEnabled() and page.chosen_surface() == "auto"      # ... its surface chosen with them
    page.mirror.setChecked(True)
    page.method.setCurrentIndex(page.method.findData("eidn"))
    assert not page.surface.isEnabled() and page.chosen_surface() == "parts"   # the memory bank's setting only
    assert not page.mirror.isEnabled() and not page.mirror_images()           # ... and so are mirror images
    page.method.setCurrentIndex(page.method.findData("agad_features"))
    qtbot.waitUntil(lambda: "min on this machine" in page.estimate.text(), timeout=60_000)
    assert "No labelled defects" not in page.estimate.text()       # they are given: no caveat
    page.method.setCurrentIndex(page.method.findData("patchcore"))
    assert page.surface.isEnabled() and page.chosen_surface() == "auto" and page.mirror.isEnabled()
    page.mirror.setChecked(True)
    qtbot.waitUntil(lambda: "min on this machine" in wizard.method_page.estimate.text(), timeout=60_000)
    wizard.next()
    qtbot.waitUntil(wizard.train_page.isComplete, timeout=120_000)
    assert "Trained in" in wizard.train_page.message.text()
    assert "Surface: " in wizard.train_page.message.text() and "chosen with 5 labelled defects" in \
        wizard.train_page.message.text()                          # all of the training half of the 10 chose
    assert "mirror images too" in wizard.train_page.message.text()
    wizard.next()
    assert "new model" in wizard.validate_page.figures.text() and "active model" in wizard.validate_page.figures.text()
    assert wizard.validate_page.examples.count() > 0
    wizard.next()
    wizard.threshold_page.slider.setValue(80)
    assert "false alarms" in wizard.threshold_page.readout.text() and "recall" in wizard.threshold_page.readout.text()
    wizard.next()
    wizard.activate_page.name.setText("line 3, spring")
    wizard.button(QWizard.FinishButton).click()
    registry = Registry(tmp_path / "models")
    active = registry.active()
    assert active is not None and active.name == "line 3, spring" and active.made_from == "retraining wizard"
    qtbot.waitUntil(lambda: w.model_path == registry.path_of(active), timeout=30_000)


def test_a_cancelled_wizard_training_leaves_the_registry_as_it_was(qtbot, window, tmp_path):
    from conftest import write_mvtec

    from inspector.modelstore.registry import Registry

    data = write_mvtec(tmp_path / "line", n_train=60)
    w = window(autostart=False)
    qtbot.waitUntil(lambda: w.inspector is not None, timeout=20_000)
    wizard = w.open_wizard()
    wizard.samples_page.goods.setText(str(data / "train" / "good"))
    qtbot.waitUntil(wizard.samples_page.isComplete, timeout=5_000)
    wizard.next()
    wizard.method_page.preset.setCurrentIndex(wizard.method_page.preset.findData("accurate"))
    wizard.next()
    wizard.train_page._cancel()
    qtbot.waitUntil(lambda: "Cancelled" in wizard.train_page.message.text(), timeout=60_000)
    assert not wizard.train_page.isComplete()
    assert Registry(tmp_path / "models").list() == []


def test_a_region_is_drawn_by_dragging_and_the_view_never_pans_off_the_frame(qtbot, window):
    from PySide6.QtCore import QRectF

    w = window()
    wait_for_update(qtbot, w)
    frame = w.live_view.frame
    regions = []
    w.live_view.roiChanged.connect(regions.append)
    frame.start_roi()
    assert frame.view.drawing
    frame.view.rectDrawn.emit(QRectF(1200, 600, 300, 300))      # dragged past the frame's corner
    assert regions[-1] == (1200, 600, 80, 120) and not frame.view.drawing
    frame.start_roi()
    frame.view.rectDrawn.emit(QRectF(10, 10, 2, 2))             # a click is not a region
    assert frame.roi is not None and regions[-1] == (1200, 600, 80, 120)
    def whole_frame_in_view():       # to within the limits' 1 % of slack
        (x0, x1), (y0, y1) = frame.view.viewRange()
        return x0 <= 13 and y0 <= 8 and x1 >= 1267 and y1 >= 712

    for size in ((1024, 640), (700, 700), (1400, 500)):          # wide, square and very wide views
        w.resize(*size)
        qtbot.waitUntil(lambda: frame.fit() or whole_frame_in_view(), timeout=5_000)
    frame.view.translateBy(x=-5000, y=-5000)                     # try to drag it away
    assert whole_frame_in_view()
    frame.view.scaleBy((0.2, 0.2))
    frame.view.translateBy(x=5000, y=5000)
    (x0, x1), (y0, y1) = frame.view.viewRange()
    assert x0 < 1280 - 50 and y0 < 720 - 50 and x1 > 50 and y1 > 50    # zoomed in, still on the frame
    frame.fit()
    assert whole_frame_in_view()                                 # the whole frame again


def test_live_review_keeps_ng_frames_and_their_labels_reach_the_wizard(qtbot, window):
    w = window()
    wait_for_update(qtbot, w)
    w.live_view.set_threshold(0.01)                  # every frame NG
    qtbot.waitUntil(lambda: w.live_review.list.count() >= 3, timeout=30_000)
    review = w.live_review
    review.list.item(0).setSelected(True)
    review.list.item(1).setSelected(True)
    saved = review.label_selected("OK")                   # two false alarms
    assert len(saved) == 2 and all(p.is_file() and p.parent.name == "OK" for p in saved)
    review.list.item(0).setSelected(True)
    assert len(review.label_selected("NG")) == 1
    assert "1 confirmed NG, 2 false alarms" in review.counts.text()
    w.stop()
    wizard = w.open_wizard()
    assert set(saved) <= set(wizard.feedback_ok) and len(wizard.feedback_ng) >= 1
    assert "(2 waiting)" in wizard.samples_page.use_ok.text()
    wizard.close()


def test_the_wizard_captures_good_samples_from_the_live_view(qtbot, tmp_path):
    from inspector.modelstore.registry import Registry
    from inspector.ui.wizard import RetrainWizard

    frame = texture(np.random.default_rng(0))
    wizard = RetrainWizard(Registry(tmp_path / "models"), capture_dir=tmp_path / "captured",
                           live_frame=lambda: frame)
    qtbot.addWidget(wizard)
    page = wizard.samples_page
    page.capture_count.setValue(3)
    page.capture_interval.setValue(100)
    page.capture_button.click()
    qtbot.waitUntil(lambda: len(list((tmp_path / "captured").glob("*.png"))) == 3, timeout=10_000)
    qtbot.waitUntil(lambda: "3 good samples" in page.counter.text(), timeout=5_000)
    assert page.capture_button.text() == "Capture from the live view"       # it stopped by itself
    assert page.preview.pixmap() is not None and not page.preview.pixmap().isNull()


def test_the_wizard_warns_that_agad_on_features_wants_labelled_defects(qtbot, tmp_path):
    from conftest import write_mvtec

    from inspector.modelstore.registry import Registry
    from inspector.ui.wizard import RetrainWizard

    data = write_mvtec(tmp_path / "line")
    wizard = RetrainWizard(Registry(tmp_path / "models"), capture_dir=tmp_path / "captured")
    qtbot.addWidget(wizard)
    wizard.samples_page.goods.setText(str(data / "train" / "good"))            # goods only
    qtbot.waitUntil(wizard.samples_page.isComplete, timeout=5_000)
    wizard.next()
    page = wizard.method_page
    page.method.setCurrentIndex(page.method.findData("agad_features"))
    qtbot.waitUntil(lambda: "min on this machine" in page.estimate.text(), timeout=60_000)
    assert "No labelled defects are given" in page.estimate.text()
    page.method.setCurrentIndex(page.method.findData("patchcore"))
    qtbot.waitUntil(lambda: "min on this machine" in page.estimate.text(), timeout=60_000)
    assert "No labelled defects" not in page.estimate.text()                    # the bank needs none
