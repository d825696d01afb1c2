"""The main window: choose a source and a model, start / pause / stop, live view and batch review.

On first launch (nothing remembered yet) it starts the demo: the synthetic surface inspected by
the demo model shipped in resources/, so the program shows what it does without a camera or a
trained model.  Errors the operator can cause — a camera that is not there, a model file that
does not load — appear in a banner that does not block, and the previous model stays active.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from PySide6.QtCore import QEvent, QSettings, Qt, QThread, QTimer
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QLabel,
    QLineEdit,
    QMainWindow,
    QMessageBox,
    QPushButton,
    QTabWidget,
    QToolBar,
    QVBoxLayout,
    QWidget,
)

from ..app.inspection import InspectorSettings, load_inspector, run_settings
from ..base.paths import data_dir
from ..detect.device import device_name, resolve_device
from ..detect.pipeline import Inspector
from ..frames.frame import SourceState, SourceStatus
from ..frames.images import write_image
from ..modelstore.registry import Registry, RegistryError, Version
from ..results.overlay import render
from ..results.store import ResultStore
from . import help_text
from .batch_view import BatchView
from .live_review import LiveReview, feedback_files
from .live_view import LiveView
from .settings import DEMO_MODEL, AppSettings, SettingsDialog
from .wizard import RetrainWizard
from .workers import BatchWorker, LiveUpdate, LiveWorker, SourceSpec, start_in_thread, start_task

log = logging.getLogger(__name__)

SOURCE_LABELS = {"demo": "Demo surface", "camera": "Camera", "url": "Stream URL", "video": "Video file",
                 "folder": "Image folder"}
OPEN_MODEL = "Open model file…"
BANNER_STYLE = {"info": "background:#e7f5ff; color:#1864ab;", "warning": "background:#fff3bf; color:#5c3c00;",
                "error": "background:#ffe3e3; color:#a51111;"}


class MainWindow(QMainWindow):
    def __init__(self, qsettings: QSettings | None = None, *, autostart: bool = True) -> None:
        super().__init__()
        self.setWindowTitle("Inspector")
        self.qs = qsettings or QSettings()
        self.settings = AppSettings.load(self.qs)
        first_launch = self.qs.value("source/kind") is None
        #: The model as loaded (calibrated threshold, no region): what batch runs copy.
        self.model_inspector: Inspector | None = None
        #: The live template: the model with the operator's live threshold and region.
        self.inspector: Inspector | None = None
        self.model_meta: dict = {}
        self.model_path: Path | None = None
        self.live_worker: LiveWorker | None = None
        self.live_thread: QThread | None = None
        self.batch_worker: BatchWorker | None = None
        self.batch_thread: QThread | None = None
        self.wizard: RetrainWizard | None = None
        self._pending_start = False
        #: The live source is reconnecting or has failed: frames still queued from before are not shown.
        self._source_lost = False

        self.registry = Registry(self.settings.models_dir)
        self._build_toolbar()
        self._build_menus()
        self.banner = QLabel()
        self.banner.setVisible(False)
        self.banner.setWordWrap(True)
        self._banner_timer = QTimer(self, singleShot=True, timeout=lambda: self.banner.setVisible(False))
        self.live_view = LiveView()
        self.batch_view = BatchView(self.settings.results_db)
        self.tabs = QTabWidget()
        self.tabs.addTab(self.live_view, "Live inspection")
        self.tabs.addTab(self.batch_view, "Batch review")
        self.live_review = LiveReview(data_dir() / "feedback")
        self.tabs.addTab(self.live_review, "Live review")
        central = QWidget()
        lay = QVBoxLayout(central)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addWidget(self.tabs, 1)
        self.setCentralWidget(central)
        # the banner floats over the top of the views: showing and hiding it never moves the layout
        self.banner.setParent(central)
        self.banner.mousePressEvent = lambda _event: self.banner.setVisible(False)     # a click dismisses it
        self.banner.setToolTip("Click to dismiss")
        central.installEventFilter(self)
        self._build_status_bar()

        self.live_view.thresholdChanged.connect(self._threshold_changed)
        self.live_view.roiChanged.connect(self._roi_changed)
        self.batch_view.runRequested.connect(self.start_batch)
        self.batch_view.cancelRequested.connect(self.cancel_batch)
        self.batch_view.message.connect(lambda m: self.notify(m, "info"))
        self.batch_view.misfit.connect(lambda m: self.notify(m, "warning", sticky=True))
        self.tabs.currentChanged.connect(lambda i: self.batch_view.refresh_runs() if i == 1 else None)

        self._restore()
        self._prune_results()
        self._refresh_models()
        if autostart and (first_launch or self.source_spec().kind == "demo"):
            self.start()

    # -- building ---------------------------------------------------------------------------------
    def _build_toolbar(self) -> None:
        bar = QToolBar("Main")
        bar.setObjectName("main toolbar")
        self.addToolBar(bar)
        self.source_kind = QComboBox()
        for kind, label in SOURCE_LABELS.items():
            self.source_kind.addItem(label, kind)
        self.source_value = QLineEdit()
        self.source_value.setMinimumWidth(220)
        self.source_browse = QPushButton("…")
        self.source_browse.setToolTip("Choose a video file or an image folder")
        self.source_browse.clicked.connect(self._browse_source)
        self.source_kind.currentIndexChanged.connect(self._source_kind_changed)
        self.model_box = QComboBox()
        self.model_box.setMinimumContentsLength(24)
        self.model_box.activated.connect(self._model_chosen)
        self.start_action = QAction("Start", self, triggered=self.start)
        self.pause_action = QAction("Pause", self, checkable=True, triggered=self.set_paused)
        self.pause_action.setShortcut(QKeySequence(Qt.Key_Space))
        self.stop_action = QAction("Stop", self, triggered=self.stop)
        self.snapshot_action = QAction("Snapshot", self, triggered=self.snapshot)
        self.snapshot_action.setShortcut(QKeySequence("S"))
        for w in (QLabel(" Source "), self.source_kind, self.source_value, self.source_browse, QLabel("  Model "),
                  self.model_box):
            bar.addWidget(w)
        bar.addSeparator()
        for a in (self.start_action, self.pause_action, self.stop_action, self.snapshot_action):
            bar.addAction(a)
            self.addAction(a)         # shortcuts work wherever the focus is
        self._set_running(False)

    def _build_menus(self) -> None:
        """File, Models (the registry) and Help: what does not fit a 1024-pixel toolbar lives here."""
        menu = self.menuBar().addMenu("&File")
        menu.addAction(QAction("Settings…", self, triggered=self.edit_settings))
        menu.addSeparator()
        menu.addAction(QAction("Quit", self, shortcut=QKeySequence.Quit, triggered=self.close))
        menu = self.menuBar().addMenu("&Models")
        self.retrain_action = QAction("Retrain…", self, triggered=self.open_wizard)
        menu.addAction(self.retrain_action)
        menu.addSeparator()
        self.activate_action = QAction("Make the chosen model active", self, triggered=self.activate_chosen)
        self.rollback_action = QAction("Roll back to the previous active model", self, triggered=self.rollback)
        self.save_threshold_action = QAction("Save the live threshold as a new version", self,
                                             triggered=self.save_threshold)
        for a in (self.activate_action, self.rollback_action, self.save_threshold_action):
            menu.addAction(a)
        menu.addSeparator()
        menu.addAction(QAction(OPEN_MODEL, self, triggered=lambda: self._model_chosen(self.model_box.count() - 1)))
        menu = self.menuBar().addMenu("&Help")
        for title, text in help_text.TOPICS.items():
            menu.addAction(QAction(title, self, triggered=lambda _=False, t=title, x=text: self._explain(t, x)))
        menu.addSeparator()
        menu.addAction(QAction("About Inspector", self, triggered=self.about))

    def _prune_results(self) -> None:
        """Results past the retention setting are forgotten, in the background."""
        days, db = self.settings.retention_days, self.settings.results_db
        if not days or not db.exists():
            return

        def work():
            with ResultStore(db) as store:
                return store.prune(days)

        start_task(work, lambda n: n and self.statusBar().showMessage(
            f"{n} results older than {days} days forgotten (labelled items kept)", 8000),
            lambda msg: log.warning("pruning the results failed: %s", msg))

    def open_wizard(self) -> RetrainWizard:
        """The retraining wizard, with the review labels waiting and the live view to capture from."""
        feedback = {"OK": [], "NG": []}
        try:
            store = self.batch_view.open_store()
            feedback = {label: store.labelled_files(label) for label in feedback}
        except Exception as exc:              # a database that cannot be read: retrain from folders alone
            self.notify(f"Review labels could not be read: {exc}", "warning")
        for label, files in feedback.items():     # and the live frames labelled in live review
            files += feedback_files(self.live_review.feedback_root, label)

        def live_frame():
            update = self.live_view.last_update
            return None if update is None else update.result.image

        wizard = RetrainWizard(self.registry, capture_dir=data_dir() / "samples" / time.strftime("%Y%m%d-%H%M%S"),
                               feedback_ok=feedback["OK"], feedback_ng=feedback["NG"], live_frame=live_frame,
                               has_gpu=resolve_device("auto").type == "cuda", current_model=self.model_path,
                               parent=self)
        wizard.versionRecorded.connect(self._version_recorded)
        wizard.show()
        self.wizard = wizard
        return wizard

    def _version_recorded(self, version: Version, activated: bool) -> None:
        self._relabel_models()
        if activated:
            self.notify(f"{version.id} ({version.name}) is now the active model.", "info")
            self.load_model(self.registry.path_of(version))
        else:
            self.notify(f"{version.id} ({version.name}) recorded; the current model stays active.", "info")

    def _explain(self, title: str, text: str) -> None:
        QMessageBox.information(self, title, text)

    def about(self) -> None:
        QMessageBox.about(self, "About Inspector", help_text.about())

    def _build_status_bar(self) -> None:
        self.device_label, self.model_label = QLabel("device: —"), QLabel("model: —")
        self.fps_label, self.latency_label, self.dropped_label = QLabel("— fps"), QLabel("latency —"), QLabel("")
        self.fps_label.setToolTip("Frames inspected per second")
        self.latency_label.setToolTip("From a frame's capture to its verdict on screen")
        self.dropped_label.setToolTip("Camera frames skipped because a newer one had arrived before the detector "
                                      "was free: the view stays current (Help ▸ Dropped frames)")
        for w in (self.device_label, self.model_label, self.fps_label, self.latency_label, self.dropped_label):
            self.statusBar().addPermanentWidget(w)

    def _restore(self) -> None:
        geometry, state = self.qs.value("window/geometry"), self.qs.value("window/state")
        if geometry is not None:
            self.restoreGeometry(geometry)
        else:                                    # 1400x860, or the whole screen where it is smaller
            screen = self.screen().availableGeometry()
            self.resize(min(1400, screen.width()), min(860, screen.height()))
        if state is not None:
            self.restoreState(state)
        kind = str(self.qs.value("source/kind", "demo"))
        self.source_kind.setCurrentIndex(max(0, self.source_kind.findData(kind)))
        self.source_value.setText(str(self.qs.value("source/value", "")))
        self._source_kind_changed()
        self.live_view.opacity.setValue(int(self.qs.value("view/opacity", 40)))
        self.live_view.colourmap.setCurrentText(str(self.qs.value("view/colourmap", "turbo")))
        self.live_view.heat_toggle.setChecked(str(self.qs.value("view/heat", "true")) == "true")
        self.batch_view.folder.setText(str(self.qs.value("batch/folder", "")))

    def _save(self) -> None:
        self.qs.setValue("window/geometry", self.saveGeometry())
        self.qs.setValue("window/state", self.saveState())
        self.qs.setValue("source/kind", self.source_spec().kind)
        self.qs.setValue("source/value", self.source_value.text())
        if self.model_path is not None:
            self.qs.setValue("model/path", str(self.model_path))
        self.qs.setValue("view/opacity", self.live_view.opacity.value())
        self.qs.setValue("view/colourmap", self.live_view.colourmap.currentText())
        self.qs.setValue("view/heat", "true" if self.live_view.heat_toggle.isChecked() else "false")
        self.qs.setValue("batch/folder", self.batch_view.folder.text())
        self.settings.save(self.qs)
        self.qs.sync()

    # -- notifications ----------------------------------------------------------------------------
    def _place_banner(self) -> None:
        """Across the top of the views, under the tab bar, as tall as its text needs."""
        central = self.centralWidget()
        width = max(100, central.width() - 16)
        top = self.tabs.geometry().top() + self.tabs.tabBar().height() + 4
        self.banner.setGeometry(8, top, width, self.banner.heightForWidth(width))

    def eventFilter(self, watched, event) -> bool:  # noqa: N802 (Qt's name)
        if watched is self.centralWidget() and event.type() == QEvent.Resize:
            self._place_banner()
        return False

    def notify(self, text: str, level: str = "info", *, sticky: bool = False) -> None:
        """A banner above the views that never blocks; it goes away by itself unless ``sticky``."""
        log.info("%s: %s", level, text)
        self.banner.setText(text)
        self.banner.setStyleSheet(f"padding:6px; border-radius:4px; {BANNER_STYLE[level]}")
        self._place_banner()
        self.banner.setVisible(True)
        self.banner.raise_()
        self._banner_timer.stop()
        if not sticky:
            self._banner_timer.start(8000)

    # -- source -----------------------------------------------------------------------------------
    def source_spec(self) -> SourceSpec:
        return SourceSpec(self.source_kind.currentData(), self.source_value.text().strip())

    def _source_kind_changed(self) -> None:
        kind = self.source_kind.currentData()
        self.source_value.setEnabled(kind != "demo")
        self.source_browse.setEnabled(kind in ("video", "folder"))
        self.source_value.setPlaceholderText({"camera": "index: 0, 1, …", "url": "rtsp://… or http://…",
                                              "video": "video file", "folder": "image folder"}.get(kind, ""))

    def _browse_source(self) -> None:
        if self.source_kind.currentData() == "folder":
            chosen = QFileDialog.getExistingDirectory(self, "Image folder", self.source_value.text())
        else:
            chosen = QFileDialog.getOpenFileName(self, "Video file", self.source_value.text(),
                                                 "Videos (*.mp4 *.avi *.mkv *.mov *.mjpg);;All files (*)")[0]
        if chosen:
            self.source_value.setText(chosen)

    # -- model ------------------------------------------------------------------------------------
    def _refresh_models(self) -> None:
        """The chooser: the demo model, every registry version (name, date, figures; the active one
        marked), model files the user opened; the remembered choice, else the active version, else the demo."""
        remembered = self.qs.value("model/path")
        self.model_box.clear()
        if DEMO_MODEL.is_file():
            self.model_box.addItem("demo model", str(DEMO_MODEL))
        active = None
        try:
            for item in self.registry.list():
                path = str(self.registry.path_of(item.version))
                self.model_box.addItem(version_label(item.version, item.active, item.problem), path)
                self.model_box.setItemData(self.model_box.count() - 1, version_tooltip(item.version), Qt.ToolTipRole)
                if item.active and item.problem is None:
                    active = path
        except RegistryError as exc:
            self.notify(f"The model registry cannot be read: {exc}", "error", sticky=True)
        if remembered and Path(remembered).is_file() and self.model_box.findData(remembered) < 0:
            self.model_box.addItem(Path(remembered).stem, remembered)
        self.model_box.addItem(OPEN_MODEL, None)
        if remembered and Path(remembered).is_file():
            choice = remembered
        else:
            choice = active or (str(DEMO_MODEL) if DEMO_MODEL.is_file() else None)
        if choice is not None:
            self.model_box.setCurrentIndex(self.model_box.findData(choice))
            self.load_model(Path(choice))
        else:
            self.notify("No model yet: train one (python main.py train …) and open it here.", "warning", sticky=True)

    def _chosen_version(self) -> Version | None:
        """The registry version the window is inspecting with, if it is one."""
        if self.model_path is None:
            return None
        for item in self.registry.list():
            if self.registry.path_of(item.version) == self.model_path:
                return item.version
        return None

    def _registry_changed(self, message: str) -> None:
        self._relabel_models()
        self.notify(message, "info")

    def _relabel_models(self) -> None:
        """The chooser after a version was activated or added, without reloading the current model."""
        listed = {str(self.registry.path_of(item.version)): item for item in self.registry.list()}
        shown = set()
        for i in range(self.model_box.count()):
            item = listed.get(self.model_box.itemData(i))
            if item is not None:
                self.model_box.setItemText(i, version_label(item.version, item.active, item.problem))
                shown.add(self.model_box.itemData(i))
        for path, item in listed.items():
            if path not in shown:
                self.model_box.insertItem(self.model_box.count() - 1,
                                          version_label(item.version, item.active, item.problem), path)
                self.model_box.setItemData(self.model_box.count() - 2, version_tooltip(item.version), Qt.ToolTipRole)
        self._show_current_model()

    def activate_chosen(self) -> None:
        version = self._chosen_version()
        if version is None:
            self.notify("The chosen model is not a registry version: train one, or save its threshold as a "
                        "version first (Models menu).", "warning")
            return
        try:
            self.registry.activate(version.id)
        except RegistryError as exc:
            self.notify(str(exc), "error")
            return
        self._registry_changed(f"{version.id} ({version.name}) is now the active model.")

    def rollback(self) -> None:
        try:
            version = self.registry.rollback()
        except RegistryError as exc:
            self.notify(str(exc), "warning")
            return
        self._registry_changed(f"Rolled back: {version.id} ({version.name}) is the active model again.")
        self.load_model(self.registry.path_of(version))

    def save_threshold(self) -> None:
        """The live threshold (normalised units) as a new registry version of the current model."""
        if self.model_inspector is None or self.model_path is None:
            return
        raw = self.model_inspector.calibration.denormalise(self.live_view.threshold_spin.value())
        try:
            source = self._chosen_version() or self.registry.add(self.model_path, made_from=f"import {self.model_path}")
            version = self.registry.save_threshold(source.id, raw)
        except RegistryError as exc:
            self.notify(str(exc), "error")
            return
        self._registry_changed(f"Saved {version.id} ({version.name}); make it active from the Models menu.")

    def _model_chosen(self, index: int) -> None:
        path = self.model_box.itemData(index)
        if path is None:
            chosen, _ = QFileDialog.getOpenFileName(self, "Model file", str(self.settings.models_dir),
                                                    "Inspector models (*.safetensors)")
            if not chosen:
                self._show_current_model()
                return
            path = chosen
        self.load_model(Path(path))

    def _show_current_model(self) -> None:
        if self.model_path is None:
            return
        if self.model_box.findData(str(self.model_path)) < 0:
            self.model_box.insertItem(self.model_box.count() - 1, self.model_path.stem, str(self.model_path))
        self.model_box.setCurrentIndex(self.model_box.findData(str(self.model_path)))

    def inspector_settings(self) -> InspectorSettings:
        s = self.settings
        return InspectorSettings(tile=s.tile or None, stride=s.stride or None, device=s.device, engine=s.engine)

    def load_model(self, path: Path) -> None:
        """Load in the background; on failure the previous model stays active."""
        settings = self.inspector_settings()
        self.model_label.setText(f"model: loading {path.name}…")
        start_task(lambda: (path, *load_inspector(path, settings)), self._model_loaded,
                   lambda msg: self._model_failed(path, msg))

    def _model_loaded(self, loaded) -> None:
        path, inspector, meta = loaded
        restart = self.live_worker is not None
        if restart:
            self.stop()
        self.model_inspector, self.inspector = inspector, inspector.copy()
        self.model_meta, self.model_path = meta, path
        self.live_view.clear("model changed")
        self.live_view.set_method(meta["method"])
        self.live_view.set_threshold(0.5)
        if self.live_view.frame.roi is not None:
            self.live_view.frame.clear_roi()
        created = str(meta.get("created", ""))[:10]
        self.model_label.setText(f"model: {path.stem} ({meta['method']}, {created}, v{meta.get('program_version')})")
        engine = "ONNX Runtime" if getattr(inspector.detector, "engine", "torch") == "onnx" else "PyTorch"
        self.device_label.setText(f"device: {device_name(inspector.detector.device)}, {engine}")
        self._show_current_model()
        if restart or self._pending_start:
            self._pending_start = False
            self.start()

    def _model_failed(self, path: Path, message: str) -> None:
        self.notify(f"Could not load {path.name}: {message}"
                    + (" — the previous model stays active." if self.inspector is not None else ""), "error")
        if self.model_path is not None:
            self.model_label.setText(f"model: {self.model_path.stem} ({self.model_meta.get('method')})")
        else:
            self.model_label.setText("model: —")
        self._show_current_model()
        self._pending_start = False

    def _live_inspectors(self) -> list[Inspector]:
        """The window's live template (the next live run starts from it) and the live worker's own copy."""
        found = [self.inspector] if self.inspector is not None else []
        if self.live_worker is not None:
            found.append(self.live_worker.inspector)
        return found

    def _threshold_changed(self, normalised: float) -> None:
        for inspector in self._live_inspectors():
            inspector.set_normalised_threshold(normalised)

    def _roi_changed(self, roi) -> None:
        for inspector in self._live_inspectors():
            inspector.set_roi(roi)

    # -- live -------------------------------------------------------------------------------------
    def _set_running(self, running: bool) -> None:
        self.start_action.setEnabled(not running)
        self.pause_action.setEnabled(running)
        self.stop_action.setEnabled(running)
        self.snapshot_action.setEnabled(running)
        if not running:
            self.pause_action.setChecked(False)

    def start(self) -> None:
        if self.live_worker is not None:
            return
        if self.inspector is None:
            self._pending_start = True     # starts when the model has loaded
            return
        spec = self.source_spec()
        self._source_lost = False
        worker = LiveWorker(spec, self.inspector.copy(), db_path=self.settings.results_db,
                            model_path=str(self.model_path), method=self.model_meta.get("method", ""))
        worker.update.connect(self._show_update)
        worker.status.connect(self._source_status)
        worker.failed.connect(self._live_failed)
        worker.finished.connect(self._live_finished)
        self.live_worker = worker
        self.live_thread = start_in_thread(worker, self)
        self.tabs.setCurrentWidget(self.live_view)
        self._set_running(True)
        self.statusBar().showMessage(f"inspecting {spec.describe()}", 4000)

    def set_paused(self, paused: bool) -> None:
        if self.live_worker is not None:
            self.live_worker.set_paused(paused)
            self.statusBar().showMessage("paused" if paused else "running", 2000)

    def stop(self) -> None:
        """Stop the live worker and wait for its thread (it checks the flag at least every 0.2 s)."""
        worker, thread = self.live_worker, self.live_thread
        if worker is None:
            return
        worker.stop()
        thread.quit()
        if not thread.wait(10_000):
            log.warning("live worker did not stop within 10 s")
        self._live_finished(worker)

    def _live_finished(self, worker: LiveWorker) -> None:
        if worker is not self.live_worker:     # an earlier worker, already cleaned up
            return
        self.live_thread.quit()
        self.live_thread.wait(2000)
        self.live_worker, self.live_thread = None, None
        self._set_running(False)
        self.fps_label.setText("— fps")
        if self.live_view.last_update is not None:       # a failed source has already said why
            self.live_view.clear("stopped")

    def _live_failed(self, message: str) -> None:
        self.notify(message, "error")

    def _show_update(self, update: LiveUpdate) -> None:
        if update.worker is not self.live_worker or self._source_lost:   # frames queued before the loss
            update.worker.shown()
            return
        self.live_view.show_update(update)
        self.live_review.add(update.result)
        update.worker.shown()
        self.fps_label.setText(f"{update.fps:.1f} fps")
        self.latency_label.setText(f"latency {update.latency_ms:.0f} ms")
        self.dropped_label.setText(f"dropped {update.dropped}")

    def _source_status(self, status: SourceStatus) -> None:
        if status.state is SourceState.RECONNECTING or status.failed:
            self._source_lost = True
        elif status.state is SourceState.RUNNING:
            self._source_lost = False
        if status.state is SourceState.RECONNECTING:
            self.live_view.clear("camera lost")
            self.notify(f"Camera lost — {status.describe()}…", "warning", sticky=True)
        elif status.state is SourceState.RUNNING and self.banner.isVisible() and "Camera lost" in self.banner.text():
            self.notify("Camera back.", "info")
        elif status.failed:
            self.live_view.clear("source failed")
            self.notify(f"Source stopped: {status.describe()}", "error", sticky=True)

    def snapshot(self) -> None:
        """Frame, overlay and the result as JSON, saved under the snapshots folder."""
        update = self.live_view.last_update
        if update is None:
            return
        result = update.result
        folder = self.settings.snapshots_dir
        folder.mkdir(parents=True, exist_ok=True)
        stem = folder / time.strftime("%Y%m%d-%H%M%S")
        write_image(f"{stem}-frame.png", result.image)
        write_image(f"{stem}-overlay.png", render(result, alpha=self.live_view.opacity.value() / 100.0,
                                                    colourmap=self.live_view.colourmap.currentText()))
        info = {"item": result.item, "verdict": result.verdict, "score": result.score,
                "normalised": result.normalised, "threshold": result.threshold,
                "model": str(self.model_path), "method": self.model_meta.get("method"),
                "flagged_tiles": result.flagged_boxes().tolist(), "latency_ms": update.latency_ms}
        Path(f"{stem}-result.json").write_text(json.dumps(info, indent=2))
        self.notify(f"Snapshot saved: {stem}-*.png/json", "info")

    # -- batch ------------------------------------------------------------------------------------
    def start_batch(self, folder: Path) -> None:
        if self.model_inspector is None:
            self.notify("Load a model first.", "warning")
            return
        if self.batch_worker is not None:
            return
        worker = BatchWorker(folder, self.model_inspector.copy(), db_path=self.settings.results_db,
                             model_path=str(self.model_path), method=self.model_meta.get("method", ""),
                             settings=run_settings(self.model_inspector, self.inspector_settings()))
        worker.progress.connect(self.batch_view.set_progress)
        worker.finished.connect(self._batch_finished)
        worker.failed.connect(self._batch_failed)
        self.batch_worker = worker
        self.batch_thread = start_in_thread(worker, self)
        self.batch_view.run_started()

    def cancel_batch(self) -> None:
        if self.batch_worker is not None:
            self.batch_worker.cancel()

    def _end_batch(self) -> None:
        if self.batch_thread is not None:
            self.batch_thread.quit()
            self.batch_thread.wait(5000)
        self.batch_worker, self.batch_thread = None, None

    def _batch_finished(self, run_id: int, summary) -> None:
        self._end_batch()
        self.batch_view.run_ended(run_id)
        self.notify(f"Run #{run_id} {summary.status}: {summary.items} items, {summary.anomalous} NG, "
                    f"{summary.errors} errors ({summary.items_per_second:.0f} items/s)", "info")

    def _batch_failed(self, message: str) -> None:
        self._end_batch()
        self.batch_view.run_ended(None)
        self.notify(f"Folder run failed: {message}", "error")

    # -- settings and closing ---------------------------------------------------------------------
    def edit_settings(self) -> None:
        dialog = SettingsDialog(self.settings, self)
        if dialog.exec():
            before = self.settings
            self.settings = dialog.settings()
            self.settings.save(self.qs)
            self.batch_view.set_db_path(self.settings.results_db)
            how = ("tile", "stride", "device", "engine")
            if ([getattr(before, k) for k in how] != [getattr(self.settings, k) for k in how]
                    and self.model_path):
                self.load_model(self.model_path)     # re-tile / move to the new device or engine
            if before.models_dir != self.settings.models_dir:    # another registry
                self.registry = Registry(self.settings.models_dir)
                self._refresh_models()

    def stop_workers(self) -> None:
        """Stop the live, folder and retraining work and wait for it (closing, or the display is gone)."""
        self.stop()
        if self.batch_worker is not None:
            self.batch_worker.cancel()
            self.batch_thread.quit()
            self.batch_thread.wait(10_000)
        if self.wizard is not None:
            self.wizard.train_page.stop()

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        self.stop_workers()
        self.batch_view.close_store()
        self._save()
        super().closeEvent(event)


def version_label(version: Version, active: bool, problem: str | None) -> str:
    """A registry version in the chooser: id, name, date and its validation AUROC."""
    auroc = version.validation.get("image_auroc")
    figures = f" · AUROC {auroc:.3f}" if isinstance(auroc, float) else ""
    mark = " (active)" if active else ""
    missing = " — file missing" if problem else ""
    return f"{version.id} {version.name} · {version.created[:10]}{figures}{mark}{missing}"


def version_tooltip(version: Version) -> str:
    data = version.data
    counts = ", ".join(f"{k.removeprefix('n_').replace('_', ' ')} {v}" for k, v in data.items() if k.startswith("n_"))
    lines = [f"{version.method}" + (f" on {version.backbone}" if version.backbone else ""),
             f"created {version.created} from {version.made_from}",
             f"data: {data.get('folder') or '—'}" + (f" ({counts})" if counts else ""),
             f"threshold {version.threshold:.6g}" if version.threshold is not None else "threshold —"]
    figures = {k: v for k, v in version.validation.items() if isinstance(v, float)}
    if figures:
        lines.append("validation: " + ", ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in figures.items()))
    return "\n".join(lines)

