"""The live inspection view: frame with heat map and boxes, verdict, score trace, threshold, ROI,
and the embedding view (EIDN's 2-D embedding, or the score histogram for the other methods).

Every image is a pyqtgraph ImageItem in one ViewBox with locked aspect, row-major like OpenCV; the
heat map is the small stitched map stretched over the frame, coloured by a lookup table, with fixed
levels — nothing is auto-levelled per frame.  Plots are redrawn at most ``PLOT_HZ`` times a second.
"""

from __future__ import annotations

import time
from collections import deque

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF, Qt, Signal
from PySide6.QtGui import QColor, QPainterPath, QPen
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QGraphicsPathItem,
    QGraphicsRectItem,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSlider,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from ..detect.pipeline import NG, FrameResult
from ..detect.tiling import region_placement, resample
from ..results.overlay import COLOURMAPS, colour_lut
from .workers import LiveUpdate

#: The live heat map is drawn at one pixel for this many frame pixels (each way).
HEAT_STEP = 4

TRACE_LENGTH = 300
EMBEDDING_POINTS = 1500
#: At most this many of a frame's tiles or patches enter the embedding view.
EMBEDDING_PER_FRAME = 64
PLOT_HZ = 8.0
VERDICT_STYLE = {
    "OK": "background:#2f9e44; color:white;",
    "NG": "background:#e03131; color:white;",
    "": "background:#868e96; color:white;",
}


class FrameViewBox(pg.ViewBox):
    """The frame's view: zoom with the wheel, pan by dragging — or, in drawing mode, drag out a rectangle
    (``rectDrawn(QRectF)`` in frame pixels)."""

    rectDrawn = Signal(object)

    def __init__(self) -> None:
        super().__init__(lockAspect=True, invertY=True, enableMenu=False)
        self.drawing = False
        self.rubber = QGraphicsRectItem()
        pen = QPen(QColor("#ffd43b"))
        pen.setWidth(2)
        pen.setCosmetic(True)
        pen.setStyle(Qt.DashLine)
        self.rubber.setPen(pen)
        self.rubber.setVisible(False)
        self.addItem(self.rubber, ignoreBounds=True)

    def mouseDragEvent(self, ev, axis=None) -> None:  # noqa: N802 (pyqtgraph's name)
        if not self.drawing or ev.button() != Qt.LeftButton:
            super().mouseDragEvent(ev, axis)
            return
        ev.accept()
        a, b = self.mapToView(ev.buttonDownPos()), self.mapToView(ev.pos())
        rect = QRectF(a, b).normalized()
        self.rubber.setRect(rect)
        self.rubber.setVisible(True)
        if ev.isFinish():
            self.rubber.setVisible(False)
            self.rectDrawn.emit(rect)


class FrameView(pg.GraphicsLayoutWidget):
    """A frame, its heat map and the flagged tiles' boxes; optional rectangular region of interest."""

    roiChanged = Signal(object)      # (x, y, w, h) in frame pixels, or None

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.view = FrameViewBox()
        self.addItem(self.view)
        self.view.rectDrawn.connect(self._roi_drawn)
        self.view.sigResized.connect(self._limit_view)
        self.frame_item = pg.ImageItem(axisOrder="row-major")
        self.heat_item = pg.ImageItem(axisOrder="row-major")
        self.heat_item.setLevels((0.0, 1.0))
        self.heat_item.setOpacity(0.4)
        self.boxes = QGraphicsPathItem()
        pen = QPen(QColor(255, 40, 40))
        pen.setWidth(2)
        pen.setCosmetic(True)
        self.boxes.setPen(pen)
        for item in (self.frame_item, self.heat_item, self.boxes):
            self.view.addItem(item)
        self.roi: pg.RectROI | None = None
        self.shape: tuple[int, int] | None = None
        self.set_colourmap("turbo")

    def set_colourmap(self, name: str) -> None:
        self.heat_item.setLookupTable(colour_lut(name))

    def show_result(self, rgb: np.ndarray, result: FrameResult, *, heat: bool = True) -> None:
        first = self.shape != rgb.shape[:2]
        self.shape = rgb.shape[:2]
        self.frame_item.setImage(rgb, autoLevels=False)   # uint8 RGB without levels: shown as is, no rescaling
        if heat and result.heat_scaled is not None:
            # the map resampled (bilinear) to a quarter of the frame's pixels over the region: smooth at
            # any zoom, and exact where a padded image's cells reach past the region's edge
            fh, fw = self.shape
            (x0, y0, x1, y1), cells = region_placement(result.grid, (max(1, fh // HEAT_STEP), max(1, fw // HEAT_STEP)))
            x, y, w, h = result.grid.roi
            self.heat_item.setImage(resample(result.heat_scaled, cells, (x1 - x0, y1 - y0)), autoLevels=False,
                                    levels=(0.0, 1.0))
            self.heat_item.setRect(QRectF(x, y, w, h))
            self.heat_item.setVisible(True)
        else:
            self.heat_item.setVisible(False)
        path = QPainterPath()
        for x0, y0, x1, y1 in result.flagged_boxes():
            path.addRect(QRectF(float(x0), float(y0), float(x1 - x0), float(y1 - y0)))
        self.boxes.setPath(path)
        if first:
            self._limit_view()
            self.fit()

    def _limit_view(self) -> None:
        """The view never pans or zooms out past the frame: its limits are the frame centred in the box,
        with the bars the box's own aspect ratio adds on two sides (limits of the frame alone would crop a
        16:9 frame in a squarer box, aspect being locked)."""
        if self.shape is None:
            return
        h, w = self.shape
        box = self.view.boundingRect()
        aspect = box.width() / box.height() if box.height() > 0 and box.width() > 0 else w / h
        span_x = max(w, h * aspect) * 1.01      # a little slack: pyqtgraph refits the other axis at equality
        span_y = span_x / aspect
        pad_x, pad_y = (span_x - w) / 2, (span_y - h) / 2
        self.view.setLimits(xMin=-pad_x, xMax=w + pad_x, yMin=-pad_y, yMax=h + pad_y,
                            maxXRange=span_x, maxYRange=span_y)

    def fit(self) -> None:
        """The whole frame in view."""
        if self.shape is not None:
            h, w = self.shape
            self.view.setRange(QRectF(0, 0, w, h), padding=0.0)

    def clear_frame(self) -> None:
        """No frame: what was shown belongs to a source or a model that is gone.  (Not ``clear``:
        GraphicsLayoutWidget forwards that name to its layout, which would remove the view.)"""
        self.frame_item.clear()
        self.heat_item.setVisible(False)
        self.boxes.setPath(QPainterPath())

    def start_roi(self) -> None:
        """The next drag on the frame draws the region of interest (an existing one is replaced)."""
        if self.shape is not None:
            self.view.drawing = True

    def _roi_drawn(self, rect: QRectF) -> None:
        h, w = self.shape
        rect = rect.intersected(QRectF(0, 0, w, h))
        self.view.drawing = rect.width() < 4 or rect.height() < 4     # a click, not a drag: draw again
        if self.view.drawing:
            return
        if self.roi is not None:
            self.view.removeItem(self.roi)
        self.roi = pg.RectROI([rect.x(), rect.y()], [rect.width(), rect.height()], pen=pg.mkPen("#ffd43b", width=2),
                              maxBounds=QRectF(0, 0, w, h))
        self.view.addItem(self.roi)
        self.roi.sigRegionChangeFinished.connect(self._emit_roi)
        self._emit_roi()

    def clear_roi(self) -> None:
        if self.roi is not None:
            self.view.removeItem(self.roi)
            self.roi = None
        self.roiChanged.emit(None)

    def _emit_roi(self) -> None:
        (x, y), (w, h) = self.roi.pos(), self.roi.size()
        self.roiChanged.emit((int(round(x)), int(round(y)), max(1, int(round(w))), max(1, int(round(h)))))


class EmbeddingView(pg.PlotWidget):
    """EIDN: the recent frames' patches in the 2-D embedding (normal at the origin, anomalies toward
    the ones vector, as in the paper's Fig. 2).  Other methods: the histogram of recent frame scores."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setMenuEnabled(False)
        self.points: deque[tuple[float, float, bool]] = deque(maxlen=EMBEDDING_POINTS)
        self.scores: deque[float] = deque(maxlen=TRACE_LENGTH * 4)
        # one item per colour: per-point brushes cost ~50 ms a redraw at 1500 points
        self.scatter_ok = pg.ScatterPlotItem(size=5, pen=None, brush=pg.mkBrush("#2f9e44"))
        self.scatter_ng = pg.ScatterPlotItem(size=5, pen=None, brush=pg.mkBrush("#e03131"))
        self.hist = pg.PlotCurveItem(np.array([0.0, 1.0]), np.array([0.0]), stepMode="center", fillLevel=0,
                                     brush=(80, 140, 220, 160))
        self.threshold_line = pg.InfiniteLine(angle=90, pen=pg.mkPen("#e03131", style=Qt.DashLine))
        self.embedding = False
        self.set_mode(False)

    def set_mode(self, embedding: bool) -> None:
        self.embedding = embedding
        self.clear()
        self.points.clear()
        self.scores.clear()
        if embedding:
            self.setTitle("Embedding of recent patches (EIDN)")
            self.setLabel("bottom", "f₁")
            self.setLabel("left", "f₂")
            self.addItem(self.scatter_ok)
            self.addItem(self.scatter_ng)
            for (x, y), colour in (((0, 0), "#2f9e44"), ((1, 1), "#e03131")):
                self.addItem(pg.ScatterPlotItem([x], [y], symbol="+", size=16, pen=pg.mkPen(colour, width=2)))
        else:
            self.setTitle("Histogram of recent frame scores")
            self.setLabel("bottom", "normalised score")
            self.setLabel("left", "frames")
            self.addItem(self.hist)
            self.addItem(self.threshold_line)

    def add(self, result: FrameResult) -> None:
        if self.embedding and result.embeddings is not None:
            flagged = result.tile_scores > result.threshold
            rows = np.arange(len(flagged))
            if len(rows) > EMBEDDING_PER_FRAME:      # a frame's patches: its worst ones and an even sample
                worst = np.argsort(result.tile_scores)[-EMBEDDING_PER_FRAME // 4:]
                rows = np.union1d(worst, rows[:: -(-len(rows) // (EMBEDDING_PER_FRAME - len(worst)))])
            for (x, y), f in zip(result.embeddings[rows, :2], flagged[rows], strict=True):
                self.points.append((float(x), float(y), bool(f)))
        elif result.error is None:
            self.scores.append(result.normalised)

    def redraw(self, threshold: float) -> None:
        if self.embedding:
            if self.points:
                pts = np.array(self.points)
                flagged = pts[:, 2] > 0
                self.scatter_ok.setData(pts[~flagged, 0], pts[~flagged, 1])
                self.scatter_ng.setData(pts[flagged, 0], pts[flagged, 1])
        elif self.scores:
            counts, edges = np.histogram(np.array(self.scores), bins=40, range=(0.0, 1.0))
            self.hist.setData(edges, counts)
            self.threshold_line.setValue(threshold)


class LiveView(QWidget):
    """Commands out: ``thresholdChanged`` (normalised), ``roiChanged``; results in: ``show_update``."""

    thresholdChanged = Signal(float)
    roiChanged = Signal(object)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.frame = FrameView()
        self.frame.roiChanged.connect(self.roiChanged)
        self.heat_toggle = QCheckBox("Heat map")
        self.heat_toggle.setChecked(True)
        self.opacity = QSlider(Qt.Horizontal)
        self.opacity.setRange(0, 100)
        self.opacity.setValue(40)
        self.opacity.setToolTip("Heat map opacity")
        self.opacity.valueChanged.connect(lambda v: self.frame.heat_item.setOpacity(v / 100.0))
        self.colourmap = QComboBox()
        self.colourmap.addItems(list(COLOURMAPS))
        self.colourmap.currentTextChanged.connect(self.frame.set_colourmap)
        roi_button, clear_roi, fit = QPushButton("Draw ROI"), QPushButton("Clear ROI"), QPushButton("Fit")
        roi_button.setToolTip("Limit inspection to a region: click, then drag a rectangle on the frame "
                              "(move or resize it afterwards by its handles)")
        fit.setToolTip("Show the whole frame")
        roi_button.clicked.connect(self.frame.start_roi)
        clear_roi.clicked.connect(self.frame.clear_roi)
        fit.clicked.connect(self.frame.fit)
        controls = QHBoxLayout()
        for w in (self.heat_toggle, QLabel("Opacity"), self.opacity, QLabel("Colours"), self.colourmap, roi_button,
                  clear_roi, fit):
            controls.addWidget(w)
        left = QWidget()
        lay = QVBoxLayout(left)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.frame, 1)
        lay.addLayout(controls)

        self.verdict = QLabel("—")
        self.verdict.setAlignment(Qt.AlignCenter)
        self.verdict.setMinimumHeight(90)
        self._set_verdict("", None)
        self.threshold_slider = QSlider(Qt.Horizontal)
        self.threshold_slider.setRange(1, 99)
        self.threshold_slider.setValue(50)
        self.threshold_spin = QDoubleSpinBox()
        self.threshold_spin.setRange(0.01, 0.99)
        self.threshold_spin.setSingleStep(0.01)
        self.threshold_spin.setValue(0.5)
        self.threshold_spin.setToolTip("Threshold on the normalised score; 0.50 is the calibrated threshold")
        self.threshold_slider.valueChanged.connect(lambda v: self.threshold_spin.setValue(v / 100.0))
        self.threshold_spin.valueChanged.connect(self._threshold_edited)
        thr = QHBoxLayout()
        thr.addWidget(QLabel("Threshold"))
        thr.addWidget(self.threshold_slider, 1)
        thr.addWidget(self.threshold_spin)

        self.trace = pg.PlotWidget(title="Score of recent frames")
        self.trace.setMenuEnabled(False)
        self.trace.setYRange(0, 1)
        self.trace.setLabel("left", "normalised score")
        self.trace_curve = self.trace.plot(pen=pg.mkPen("#4dabf7", width=2))
        self.trace_line = pg.InfiniteLine(0.5, angle=0, movable=True, pen=pg.mkPen("#e03131", width=2))
        self.trace_line.sigPositionChangeFinished.connect(lambda line: self.threshold_spin.setValue(line.value()))
        self.trace.addItem(self.trace_line)
        self.embedding = EmbeddingView()
        right = QWidget()
        rlay = QVBoxLayout(right)
        rlay.setContentsMargins(0, 0, 0, 0)
        rlay.addWidget(self.verdict)
        rlay.addLayout(thr)
        rlay.addWidget(self.trace, 1)
        rlay.addWidget(self.embedding, 1)

        splitter = QSplitter()
        splitter.addWidget(left)
        splitter.addWidget(right)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 2)
        outer = QVBoxLayout(self)
        outer.addWidget(splitter)
        self.trace_scores: deque[float] = deque(maxlen=TRACE_LENGTH)
        self._last_plot = 0.0
        self.last_update: LiveUpdate | None = None

    def _threshold_edited(self, value: float) -> None:
        self.threshold_slider.blockSignals(True)
        self.threshold_slider.setValue(round(value * 100))
        self.threshold_slider.blockSignals(False)
        self.trace_line.setValue(value)
        self.thresholdChanged.emit(value)

    def set_threshold(self, normalised: float) -> None:
        self.threshold_spin.setValue(normalised)

    def set_method(self, method: str) -> None:
        self.embedding.set_mode(method == "eidn")
        self.trace_scores.clear()

    def _set_verdict(self, verdict: str, normalised: float | None, note: str = "") -> None:
        text = (note or "—") if not verdict else f"{verdict}   {normalised:.2f}"
        self.verdict.setText(text)
        size = 40 if verdict or not note else 22
        self.verdict.setStyleSheet(f"font-size:{size}px; font-weight:700; border-radius:8px; "
                                   f"{VERDICT_STYLE[verdict]}")

    def clear(self, note: str) -> None:
        """Stopped, source lost or model changed: the last frame and verdict leave the screen (a stale
        NG or OK must never read as the current part's), and ``note`` says why."""
        self.frame.clear_frame()
        self._set_verdict("", None, note)
        self.last_update = None

    def show_update(self, update: LiveUpdate) -> None:
        result = update.result
        self.last_update = update
        self.frame.show_result(update.rgb, result, heat=self.heat_toggle.isChecked())
        self._set_verdict(result.verdict if result.verdict in (NG, "OK") else "", result.normalised)
        self.trace_scores.append(result.normalised)
        self.embedding.add(result)
        now = time.monotonic()
        if now - self._last_plot >= 1.0 / PLOT_HZ:
            self._last_plot = now
            self.trace_curve.setData(np.array(self.trace_scores))
            self.embedding.redraw(self.threshold_spin.value())
