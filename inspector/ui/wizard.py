"""The retraining wizard: good samples, optional defects, method and preset, training, validation,
threshold, activation.

Every page only shows and commands; the work is ``inspector.app.retrain`` in a worker thread.  A
run cancelled, failed or closed before the last page leaves the registry and the active model as
they were; the last page records the new version whether it is activated or not.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QObject, Qt, QTimer, Signal, Slot
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
    QWizard,
    QWizardPage,
)

from ..app.retrain import (
    METHODS,
    MIN_GOODS,
    PRESETS,
    WANT_DEFECTS,
    RetrainResult,
    Samples,
    Validation,
    compare_active,
    estimate_seconds,
    fitted_in_one_pass,
    register,
    retrain,
)
from ..app.surfaces import AUTO, AUTO_DESCRIPTION, SURFACE_METHODS, SURFACES, describe_choice
from ..base.progress import Progress
from ..frames.images import write_image
from ..learn.training import TrainingCancelled
from ..modelstore.registry import Registry, Version
from ..results.overlay import render
from .batch_view import to_qpixmap
from .workers import start_in_thread, start_task


class RetrainWorker(QObject):
    """Runs ``retrain`` (and the active model's validation) off the UI thread."""

    progress = Signal(object)          # Progress
    finished = Signal(object, object)  # RetrainResult, (Version, Validation) | None
    failed = Signal(str)
    cancelled = Signal()

    def __init__(self, samples: Samples, method: str, preset: str, seed: int, registry: Registry,
                 current_model: Path | None = None, surface: str | None = None, mirror_images: bool = False) -> None:
        super().__init__()
        self.samples, self.method, self.preset, self.seed, self.registry = samples, method, preset, seed, registry
        self.current_model, self.surface, self.mirror_images = current_model, surface, mirror_images
        self._cancel = threading.Event()

    def cancel(self) -> None:
        self._cancel.set()

    @Slot()
    def run(self) -> None:
        try:
            result = retrain(self.samples, method=self.method, preset=self.preset, seed=self.seed,
                             surface=self.surface, mirror_images=self.mirror_images, progress=self.progress.emit,
                             should_cancel=self._cancel.is_set)
            self.finished.emit(result, compare_active(result, self.registry, fallback=self.current_model))
        except TrainingCancelled:
            self.cancelled.emit()
        except Exception as exc:            # shown on the page; the registry is untouched
            self.failed.emit(str(exc))


def _folder_row(edit: QLineEdit, parent: QWidget) -> QHBoxLayout:
    row = QHBoxLayout()
    browse = QPushButton("Browse…")
    browse.clicked.connect(lambda: (lambda d: d and edit.setText(d))(
        QFileDialog.getExistingDirectory(parent, "Folder", edit.text())))
    row.addWidget(edit, 1)
    row.addWidget(browse)
    return row


class SamplesPage(QWizardPage):
    """Good samples (a folder, frames captured from the live source, items marked OK) and, optionally,
    labelled defects (a folder, items marked NG)."""

    def __init__(self, wizard: RetrainWizard) -> None:
        super().__init__()
        self.w = wizard
        self.setTitle("Samples")
        self.setSubTitle("Good parts teach the model what is normal; a few labelled defects help the methods "
                         "that learn from them.")
        self.goods = QLineEdit()
        self.goods.setPlaceholderText("folder of good parts (read recursively)")
        self.defects = QLineEdit()
        self.defects.setPlaceholderText("optional: folder of labelled defects")
        self.use_ok = QCheckBox(f"items marked OK in review ({len(wizard.feedback_ok)} waiting)")
        self.use_ok.setChecked(bool(wizard.feedback_ok))
        self.use_ng = QCheckBox(f"items marked NG in review ({len(wizard.feedback_ng)} waiting)")
        self.use_ng.setChecked(bool(wizard.feedback_ng))
        self.capture_count = QSpinBox()
        self.capture_count.setRange(1, 5000)
        self.capture_count.setValue(100)
        self.capture_interval = QSpinBox()
        self.capture_interval.setRange(100, 60_000)
        self.capture_interval.setValue(500)
        self.capture_interval.setSuffix(" ms")
        self.capture_button = QPushButton("Capture from the live view")
        self.capture_button.setEnabled(wizard.live_frame is not None)
        self.capture_button.clicked.connect(self._toggle_capture)
        self.preview = QLabel()
        self.preview.setFixedSize(160, 90)
        self.counter = QLabel("")
        self.counter.setWordWrap(True)
        self._timer = QTimer(self, interval=500, timeout=self._capture_one)
        self._captured = 0

        form = QFormLayout()
        form.addRow("Good parts", _folder_row(self.goods, self))
        form.addRow("", self.use_ok)
        capture = QHBoxLayout()
        for widget in (QLabel("frames"), self.capture_count, QLabel("every"), self.capture_interval,
                       self.capture_button):
            capture.addWidget(widget)
        capture.addStretch(1)
        form.addRow("Capture", capture)
        form.addRow("", self.preview)
        form.addRow("Defects", _folder_row(self.defects, self))
        form.addRow("", self.use_ng)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.counter)
        # folders are walked once typing pauses, not at every key
        self._recount = QTimer(self, singleShot=True, interval=300, timeout=self._count)
        for edit in (self.goods, self.defects):
            edit.textChanged.connect(self._recount.start)
        for box in (self.use_ok, self.use_ng):
            box.toggled.connect(self._count)
        self._samples = Samples([])
        self._count()

    def samples(self) -> Samples:
        return self._samples

    def _gather(self) -> Samples:
        w = self.w
        goods = [Path(self.goods.text())] if self.goods.text().strip() else []
        defects = [Path(self.defects.text())] if self.defects.text().strip() else []
        if w.capture_dir.is_dir():
            goods.append(w.capture_dir)
        return Samples.from_folders(goods, defects, extra_goods=w.feedback_ok if self.use_ok.isChecked() else [],
                                    extra_defects=w.feedback_ng if self.use_ng.isChecked() else [])

    def _count(self) -> None:
        s = self._samples = self._gather()
        self.counter.setText(
            f"{len(s.goods)} good samples, {len(s.defects)} labelled defects"
            + ("" if len(s.goods) >= MIN_GOODS else f" — at least {MIN_GOODS} good samples are needed")
            + ("" if s.defects else ". No defects: the memory bank needs none, and EIDN paints synthetic ones."))
        self.completeChanged.emit()

    def isComplete(self) -> bool:  # noqa: N802 (Qt's name)
        return len(self.samples().goods) >= MIN_GOODS

    def _toggle_capture(self) -> None:
        if self._timer.isActive():
            self._timer.stop()
            self.capture_button.setText("Capture from the live view")
            return
        self._captured = 0
        self.w.capture_dir.mkdir(parents=True, exist_ok=True)
        self._timer.setInterval(self.capture_interval.value())
        self._timer.start()
        self.capture_button.setText("Stop capturing")

    def _capture_one(self) -> None:
        frame = self.w.live_frame() if self.w.live_frame is not None else None
        if frame is None:
            return
        write_image(self.w.capture_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{self._captured:05d}.png", frame)
        self._captured += 1
        self.preview.setPixmap(to_qpixmap(frame).scaled(160, 90, Qt.KeepAspectRatio))
        if self._captured >= self.capture_count.value():
            self._toggle_capture()
        self._count()


class MethodPage(QWizardPage):
    def __init__(self, wizard: RetrainWizard) -> None:
        super().__init__()
        self.w = wizard
        self.setTitle("Method and preset")
        self.method = QComboBox()
        for name, what in METHODS.items():
            self.method.addItem(f"{name} — {what}", name)
        self.preset = QComboBox()
        for name, preset in PRESETS.items():
            self.preset.addItem(f"{name} — {preset.description}", name)
        self.preset.setCurrentIndex(0)
        self.surface = QComboBox()
        self.surface.addItem(f"{AUTO} — {AUTO_DESCRIPTION}", AUTO)
        for name, surface in SURFACES.items():
            self.surface.addItem(f"{name} — {surface.description}", name)
        self.surface.setToolTip("For the memory bank: a fine repeating texture weighs the backbone's fine "
                                "stage as much as its deep one and does not smooth the map. Auto fits both "
                                "and keeps the one that tells the labelled defects from good parts best "
                                "(a second fit of the bank, on the same features)")
        self.mirror = QCheckBox("Parts may lie turned or mirrored (round castings, say): learn the good "
                                "samples' mirror images too")
        self.mirror.setToolTip("For the memory bank. With 300 good samples of a round casting it told defects "
                               "from good parts better (AUROC 0.955 against 0.929); with over a thousand it made "
                               "no difference, nor on surfaces always seen one way up. Leave it off where a "
                               "mirrored or upside-down part is itself a defect: the bank would take it for good. "
                               "Training reads four times the images.")
        self.estimate = QLabel("")
        self.estimate.setWordWrap(True)
        advanced = QGroupBox("Advanced")
        advanced.setCheckable(True)
        advanced.setChecked(False)
        self.seed = QSpinBox()
        self.seed.setRange(0, 10_000)
        inner = QFormLayout(advanced)
        inner.addRow("Random seed", self.seed)
        inner.setRowVisible(self.seed, False)               # the label with it
        advanced.toggled.connect(lambda shown: inner.setRowVisible(self.seed, shown))
        form = QFormLayout(self)
        form.addRow("Method", self.method)
        form.addRow("Preset", self.preset)
        form.addRow("Surface", self.surface)
        form.addRow("", self.mirror)
        form.addRow("", self.estimate)
        form.addRow(advanced)
        self._asked: tuple[str, str, str, bool] | None = None
        self.method.currentIndexChanged.connect(self._estimate)
        self.method.currentIndexChanged.connect(self._surface_applies)
        self.preset.currentIndexChanged.connect(self._estimate)
        self.surface.currentIndexChanged.connect(self._estimate)
        self.mirror.toggled.connect(self._estimate)

    def _surface_applies(self) -> None:
        """The surface is the memory bank's setting: other methods train as they always do."""
        applies = self.method.currentData() in SURFACE_METHODS
        self.surface.setEnabled(applies)
        self.surface.setCurrentIndex(self.surface.findData(AUTO if applies else "parts"))
        self.mirror.setEnabled(applies)
        if not applies:
            self.mirror.setChecked(False)

    def chosen_surface(self) -> str:
        return self.surface.currentData()       # "parts" whenever the method is not the bank

    def mirror_images(self) -> bool:
        return self.mirror.isChecked()          # False whenever the method is not the bank

    def initializePage(self) -> None:  # noqa: N802
        # The memory bank whether or not there are defects: with 5 % labels it measured above EIDN and
        # the AE on every set (README, Results), and the defects choose its surface.
        self.method.setCurrentIndex(self.method.findData("patchcore"))
        self._surface_applies()
        self._estimate()

    def _estimate(self) -> None:
        """Measured on this machine: a probe times the backbone (or a few training steps) in the background."""
        samples = self.w.samples_page.samples()
        method, preset, surface = self.method.currentData(), self.preset.currentData(), self.chosen_surface()
        mirror = self.mirror_images()
        if not samples.goods:
            return
        self.estimate.setText("estimating the training time on this machine…")
        key = (method, preset, surface, mirror)
        self._asked = key
        device = "GPU" if self.w.has_gpu else "CPU"
        caveat = (" No labelled defects are given, and this method measured well below the memory bank without "
                  "them." if method in WANT_DEFECTS and not samples.defects else "")

        def shown(seconds: float) -> None:
            if self._asked == key:
                self.estimate.setText(f"About {max(1, round(seconds / 60))} min on this machine's {device} for "
                                      f"{len(samples.goods)} good samples (measured on two of them; the next page "
                                      f"shows the real ETA).{caveat}")

        start_task(lambda: estimate_seconds(samples, method=method, preset=preset, surface=surface,
                                            mirror_images=mirror), shown,
                   lambda msg: self.estimate.setText(f"no estimate: {msg}"))


class TrainPage(QWizardPage):
    def __init__(self, wizard: RetrainWizard) -> None:
        super().__init__()
        self.w = wizard
        self.setTitle("Training")
        self.stage = QLabel("")
        self.bar = QProgressBar()
        self.eta = QLabel("")
        self.loss_plot = pg.PlotWidget(title="Training loss")
        self.loss_plot.setMenuEnabled(False)
        self.loss_curve = self.loss_plot.plot(pen=pg.mkPen("#4dabf7", width=2))
        self.cancel = QPushButton("Cancel training")
        self.cancel.clicked.connect(self._cancel)
        self.message = QLabel("")
        self.message.setWordWrap(True)
        lay = QVBoxLayout(self)
        for widget in (self.stage, self.bar, self.eta, self.loss_plot, self.cancel, self.message):
            lay.addWidget(widget)
        self.worker: RetrainWorker | None = None
        self.thread = None
        self.losses: list[float] = []

    def initializePage(self) -> None:  # noqa: N802
        w = self.w
        w.result = None
        self.losses.clear()
        self.loss_curve.setData([])
        self.message.setText("")
        self.cancel.setEnabled(True)
        method, preset = w.method_page.method.currentData(), w.method_page.preset.currentData()
        self.loss_plot.setTitle("No loss to plot: the memory bank is fitted in one pass"
                                if fitted_in_one_pass(method) else "Training loss")
        self.worker = RetrainWorker(w.samples_page.samples(), method, preset, w.method_page.seed.value(), w.registry,
                                    w.current_model, w.method_page.chosen_surface(),
                                    w.method_page.mirror_images())
        self.worker.progress.connect(self._progress)
        self.worker.finished.connect(self._finished)
        self.worker.failed.connect(self._failed)
        self.worker.cancelled.connect(self._cancelled)      # a bound method: it runs in the UI thread
        self.thread = start_in_thread(self.worker, self)
        self.t0 = time.monotonic()

    def _progress(self, p: Progress) -> None:
        self.stage.setText(p.stage)
        self.bar.setMaximum(max(1, p.total))
        self.bar.setValue(p.done)
        if p.eta_s is not None:
            self.eta.setText(f"about {p.eta_s:.0f} s left in this stage")
        loss = p.info.get("loss", p.info.get("loss_g"))
        if isinstance(loss, float):
            self.losses.append(loss)
            self.loss_curve.setData(np.array(self.losses))

    def _finished(self, result: RetrainResult, active) -> None:
        self.w.result, self.w.active_validation = result, active
        surface = describe_choice(result.trained.metadata["training"])
        self._stopped(f"Trained in {result.seconds:.0f} s." + (f" {surface}" if surface else ""))
        self.completeChanged.emit()

    def _failed(self, message: str) -> None:
        self._stopped(f"Training failed: {message}. Nothing was saved; the active model is unchanged.")

    def _cancelled(self) -> None:
        self._stopped("Cancelled: nothing was saved, the active model is unchanged. Go back to change the settings.")

    def _stopped(self, text: str) -> None:
        self.message.setText(text)
        self.cancel.setEnabled(False)
        if self.thread is not None:
            self.thread.quit()
            self.thread.wait(5000)
            self.thread = None

    def _cancel(self) -> None:
        if self.worker is not None:
            self.worker.cancel()
            self.cancel.setEnabled(False)

    def stop(self) -> None:
        """The wizard closes: cancel a run in progress and wait for it."""
        if self.thread is not None and self.worker is not None:
            self.worker.cancel()
            self.thread.quit()
            self.thread.wait(30_000)
            self.thread = None

    def cleanupPage(self) -> None:  # noqa: N802 (Back from this page)
        self.stop()

    def isComplete(self) -> bool:  # noqa: N802
        return self.w.result is not None


def _figures_text(label: str, v: Validation) -> str:
    f = v.figures()
    parts = [f"false alarms {f['false_alarm_rate']:.1%} of {f['n_validation_good']} goods"]
    if f["recall"] is not None:
        parts.append(f"recall {f['recall']:.1%} of {f['n_validation_defect']} defects")
    if f["image_auroc"] is not None:
        parts.append(f"AUROC {f['image_auroc']:.3f}")
    return f"<b>{label}</b>: " + ", ".join(parts)


class ValidatePage(QWizardPage):
    """The new model and the active one on the same held-out samples; histogram; example heat maps."""

    def __init__(self, wizard: RetrainWizard) -> None:
        super().__init__()
        self.w = wizard
        self.setTitle("Validation on held-out samples")
        self.figures = QLabel("")
        self.figures.setWordWrap(True)
        self.histogram = pg.PlotWidget(title="Normalised scores (new model)")
        self.histogram.setMenuEnabled(False)
        self.histogram.setMinimumHeight(140)
        self.histogram.addLegend()
        self.examples = QGridLayout()
        lay = QVBoxLayout(self)
        lay.addWidget(self.figures)
        lay.addWidget(self.histogram, 1)
        grid = QWidget()
        grid.setLayout(self.examples)
        lay.addWidget(grid)

    def initializePage(self) -> None:  # noqa: N802
        result = self.w.result
        lines = [_figures_text("new model", result.validation)]
        if self.w.active_validation is not None:
            name, theirs = self.w.active_validation
            lines.append(_figures_text(f"active model ({name})", theirs))
        else:
            lines.append("<b>active model</b>: none to compare with")
        self.figures.setText("<br>".join(lines))
        self.histogram.clear()
        bins = np.linspace(0, 1, 31)
        for scores, colour, name in ((result.validation.good_scores, (47, 158, 68, 150), "good"),
                                     (result.validation.defect_scores, (224, 49, 49, 150), "defect")):
            if len(scores):
                counts, edges = np.histogram(scores, bins=bins)
                self.histogram.addItem(pg.PlotCurveItem(edges, counts, stepMode="center", fillLevel=0,
                                                        brush=colour, pen=pg.mkPen(colour[:3], width=2),
                                                        name=name))    # the legend draws the pen
        self.histogram.addItem(pg.InfiniteLine(0.5, angle=90, pen=pg.mkPen("#e03131", style=Qt.DashLine)))
        while self.examples.count():
            self.examples.takeAt(0).widget().deleteLater()
        for k, example in enumerate(result.validation.examples):
            overlay = render(example)
            small = cv2.resize(overlay, (120, max(1, round(120 * overlay.shape[0] / overlay.shape[1]))))
            label = QLabel()
            label.setPixmap(to_qpixmap(small))
            label.setToolTip(f"{example.item}\n{example.verdict} {example.normalised:.2f}")
            self.examples.addWidget(label, k // 4, k % 4)


class ThresholdPage(QWizardPage):
    """The threshold, with the false-alarm rate and recall it gives on the held-out samples."""

    def __init__(self, wizard: RetrainWizard) -> None:
        super().__init__()
        self.w = wizard
        self.setTitle("Threshold")
        self.setSubTitle("Calibrated for about 1 % false alarms on good parts. Move it to trade false alarms "
                         "against missed defects.")
        self.slider = QSlider(Qt.Horizontal)
        self.slider.setRange(1, 99)
        self.slider.setValue(50)
        self.readout = QLabel("")
        lay = QVBoxLayout(self)
        lay.addWidget(self.slider)
        lay.addWidget(self.readout)
        self.slider.valueChanged.connect(self._update)

    def initializePage(self) -> None:  # noqa: N802
        self.slider.setValue(50)
        self._update()

    def threshold(self) -> float:
        """The raw threshold the slider stands for (0.50: the calibrated one)."""
        return self.w.result.validation.calibration.denormalise(self.slider.value() / 100)

    def _update(self) -> None:
        v = self.w.result.validation
        far, recall = v.rates(self.threshold())
        text = f"normalised threshold {self.slider.value() / 100:.2f}: false alarms {far:.1%} on held-out goods"
        text += (f", recall {recall:.1%} on held-out defects" if recall is not None
                 else " (no defects to measure recall)")
        self.readout.setText(text)


class ActivatePage(QWizardPage):
    def __init__(self, wizard: RetrainWizard) -> None:
        super().__init__()
        self.w = wizard
        self.setTitle("Activate")
        self.setSubTitle("The new model is recorded as a version either way; activate it now, or keep the "
                         "current model and activate it later from the Models menu.")
        self.name = QLineEdit()
        self.activate = QRadioButton("Activate the new model")
        self.keep = QRadioButton("Keep the current model active")
        self.activate.setChecked(True)
        form = QFormLayout(self)
        form.addRow("Name", self.name)
        form.addRow(self.activate)
        form.addRow(self.keep)

    def initializePage(self) -> None:  # noqa: N802
        method = self.w.method_page.method.currentData()
        self.name.setText(f"{method} {time.strftime('%Y-%m-%d %H:%M')}")

    def validatePage(self) -> bool:  # noqa: N802 (Finish)
        try:
            self.w.version = register(self.w.result, self.w.registry, name=self.name.text().strip() or None,
                                      activate=self.activate.isChecked(), threshold=self.w.threshold_page.threshold())
        except Exception as exc:               # a registry that cannot be written: say so, stay on the page
            self.setSubTitle(f"Could not record the model: {exc}")
            return False
        return True


class RetrainWizard(QWizard):
    """``versionRecorded(version, activated)`` when Finish recorded the new model."""

    versionRecorded = Signal(object, bool)

    def __init__(self, registry: Registry, *, capture_dir: Path, feedback_ok: list[Path] | None = None,
                 feedback_ng: list[Path] | None = None, live_frame=None, has_gpu: bool = False,
                 current_model: Path | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Retrain the detector")
        self.registry, self.capture_dir = registry, capture_dir
        self.feedback_ok, self.feedback_ng = feedback_ok or [], feedback_ng or []
        self.live_frame, self.has_gpu = live_frame, has_gpu
        #: Compared with when the registry has no active model (the model the window inspects with).
        self.current_model = current_model
        self.result: RetrainResult | None = None
        self.active_validation: tuple[str, Validation] | None = None
        self.version: Version | None = None
        self.samples_page = SamplesPage(self)
        self.method_page = MethodPage(self)
        self.train_page = TrainPage(self)
        self.validate_page = ValidatePage(self)
        self.threshold_page = ThresholdPage(self)
        self.activate_page = ActivatePage(self)
        for page in (self.samples_page, self.method_page, self.train_page, self.validate_page, self.threshold_page,
                     self.activate_page):
            self.addPage(page)
        self.resize(760, 560)
        self.finished.connect(self._closed)

    def _closed(self, _code: int) -> None:
        self.train_page.stop()
        if self.version is not None:
            self.versionRecorded.emit(self.version, self.activate_page.activate.isChecked())

