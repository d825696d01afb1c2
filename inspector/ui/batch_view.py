"""Batch review: score a folder, then sort, filter, look closely, label and export.

Everything shown comes from the results database, so a past run reopens as it was, without
scoring anything again.  The table reads thumbnails lazily (only the rows on screen); the detail
panel shows the original, the overlay and the heat map side by side with linked zoom and pan;
the operator's OK / NG labels are saved the moment they are given.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QAbstractTableModel, QModelIndex, QRectF, QSortFilterProxyModel, Qt, Signal
from PySide6.QtGui import QImage, QKeySequence, QPixmap, QShortcut
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSplitter,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from ..detect.calibration import fit_warning
from ..detect.pipeline import ERROR, NG, OK
from ..frames.images import read_image
from ..frames.listing import display_name
from ..results.overlay import colour_lut
from ..results.report import write_csv, write_html
from ..results.store import ItemRow, ResultStore, Run
from .workers import start_task

COLUMNS = ("", "file", "score", "verdict", "operator")
SORT_ROLE = Qt.UserRole + 1
FILTERS = ("all", NG, OK, ERROR, "labelled", "unlabelled")
VERDICT_COLOURS = {OK: "#2f9e44", NG: "#e03131", ERROR: "#b7791f"}


def to_qpixmap(bgr: np.ndarray) -> QPixmap:
    rgb = np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    h, w = rgb.shape[:2]
    return QPixmap.fromImage(QImage(rgb.data, w, h, 3 * w, QImage.Format_RGB888).copy())


class ItemsModel(QAbstractTableModel):
    """The items of one run, as rows of the table; thumbnails come from the database on demand."""

    def __init__(self, store: ResultStore | None = None) -> None:
        super().__init__()
        self.store = store
        self.rows: list[ItemRow] = []
        self._thumbs: dict[int, QPixmap] = {}

    def load(self, store: ResultStore, run_id: int) -> None:
        self.beginResetModel()
        self.store = store
        self.rows = store.items(run_id)
        self._thumbs = {}
        self.endResetModel()

    def rowCount(self, parent=None) -> int:  # noqa: N802 (Qt's names)
        return 0 if parent is not None and parent.isValid() else len(self.rows)

    def columnCount(self, parent=None) -> int:  # noqa: N802
        return len(COLUMNS)

    def headerData(self, section, orientation, role=Qt.DisplayRole):  # noqa: N802
        if orientation == Qt.Horizontal and role == Qt.DisplayRole:
            return COLUMNS[section]
        return None

    def _thumb(self, row: ItemRow) -> QPixmap | None:
        if row.id not in self._thumbs and self.store is not None:
            thumb, _ = self.store.images(row.id)
            self._thumbs[row.id] = to_qpixmap(thumb).scaledToHeight(48) if thumb is not None else None
        return self._thumbs[row.id]

    def data(self, index: QModelIndex, role=Qt.DisplayRole):
        row, col = self.rows[index.row()], index.column()
        if role == Qt.DecorationRole and col == 0:
            return self._thumb(row)
        if role == Qt.DisplayRole:
            return ("", Path(row.display).name, "" if row.normalised is None else f"{row.normalised:.3f}",
                    row.verdict if row.error is None else f"ERROR: {row.error}", row.label or "")[col]
        if role == SORT_ROLE:
            return (row.frame_index, row.item, -1.0 if row.normalised is None else row.normalised, row.verdict,
                    row.label or "")[col]
        if role == Qt.ForegroundRole and col == 3:
            return pg.mkColor(VERDICT_COLOURS[row.verdict])
        if role == Qt.ToolTipRole:
            return row.display if row.error is None else f"{row.display}\n{row.error}"
        if role == Qt.SizeHintRole and col == 0:
            return pg.QtCore.QSize(64, 50)
        return None

    def set_label(self, source_row: int, label: str | None) -> None:
        row = self.rows[source_row]
        self.store.set_label(row.id, label)
        self.rows[source_row] = dataclasses.replace(row, label=label)
        self.dataChanged.emit(self.index(source_row, 0), self.index(source_row, len(COLUMNS) - 1))


class ItemsFilter(QSortFilterProxyModel):
    def __init__(self) -> None:
        super().__init__()
        self.kind = "all"
        self.text = ""
        self.setSortRole(SORT_ROLE)

    def set_filter(self, kind: str, text: str) -> None:
        self.kind, self.text = kind, text.lower()
        self.invalidate()   # invalidateFilter() is deprecated from Qt 6.10

    def filterAcceptsRow(self, source_row: int, source_parent) -> bool:  # noqa: N802
        row = self.sourceModel().rows[source_row]
        if self.text and self.text not in row.display.lower():
            return False
        return {"all": True, "labelled": row.label is not None, "unlabelled": row.label is None}.get(
            self.kind, row.verdict == self.kind)


class DetailPanel(pg.GraphicsLayoutWidget):
    """Original, overlay and heat map of one item, side by side, zooming and panning together."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.views, self.images = [], []
        for col, title in enumerate(("original", "overlay", "heat map")):
            self.addLabel(title, row=0, col=col)
            view = self.addViewBox(row=1, col=col, lockAspect=True, invertY=True, enableMenu=False)
            item = pg.ImageItem(axisOrder="row-major")
            view.addItem(item)
            if self.views:
                view.setXLink(self.views[0])
                view.setYLink(self.views[0])
            self.views.append(view)
            self.images.append(item)
        self.heat_over = pg.ImageItem(axisOrder="row-major")
        self.heat_over.setOpacity(0.45)
        self.views[1].addItem(self.heat_over)
        lut = colour_lut("turbo")
        for item in (self.heat_over, self.images[2]):
            item.setLookupTable(lut)

    def show_item(self, image: np.ndarray | None, heat: np.ndarray | None) -> None:
        """An item's panes; with no image (an error row, a file gone) they are emptied."""
        if image is None:
            for item in (*self.images, self.heat_over):
                item.clear()
            return
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        h, w = rgb.shape[:2]
        self.images[0].setImage(rgb, autoLevels=False)
        self.images[1].setImage(rgb, autoLevels=False)
        if heat is not None:
            for item in (self.heat_over, self.images[2]):
                item.setImage(heat, autoLevels=False, levels=(0.0, 1.0))
                item.setRect(QRectF(0, 0, w, h))   # the stored heat map is thumbnail-sized
        else:
            self.heat_over.clear()
            self.images[2].clear()
        self.views[0].autoRange(padding=0.02)


class BatchView(QWidget):
    """Commands out: ``runRequested(folder)``, ``cancelRequested``, ``message``; runs shown from the database."""

    runRequested = Signal(Path)
    cancelRequested = Signal()
    message = Signal(str)
    #: The shown run's scores say its model does not fit its images (the sentence to show).
    misfit = Signal(str)

    def __init__(self, db_path: Path, parent=None) -> None:
        super().__init__(parent)
        self.db_path = db_path
        self.store: ResultStore | None = None
        self.run: Run | None = None

        self.folder = QLineEdit()
        self.folder.setPlaceholderText("folder of images to inspect (read recursively)")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        self.run_button = QPushButton("Run")
        self.run_button.clicked.connect(self._request_run)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancelRequested)
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        top = QHBoxLayout()
        for w in (QLabel("Folder"), self.folder, browse, self.run_button, self.cancel_button, self.progress):
            top.addWidget(w)
        top.setStretch(1, 1)

        self.runs = QComboBox()
        self.runs.setMinimumContentsLength(40)
        self.runs.activated.connect(lambda i: self.show_run(self.runs.itemData(i)))
        self.kind = QComboBox()
        self.kind.addItems(FILTERS)
        self.search = QLineEdit()
        self.search.setPlaceholderText("filter by file name")
        self.kind.currentTextChanged.connect(self._refilter)
        self.search.textChanged.connect(self._refilter)
        self.export_csv, self.export_html = QPushButton("Export CSV…"), QPushButton("Export report…")
        self.export_csv.clicked.connect(lambda: self._export("CSV (*.csv)", ".csv", write_csv))
        self.export_html.clicked.connect(lambda: self._export("HTML report (*.html)", ".html", write_html))
        second = QHBoxLayout()
        for w in (QLabel("Run"), self.runs, QLabel("Show"), self.kind, self.search, self.export_csv,
                  self.export_html):
            second.addWidget(w)
        second.setStretch(1, 1)

        self.model = ItemsModel()
        self.proxy = ItemsFilter()
        self.proxy.setSourceModel(self.model)
        self.table = QTableView()
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.verticalHeader().setDefaultSectionSize(52)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(1, QHeaderView.Stretch)
        for column, width in ((0, 70), (2, 60), (3, 80), (4, 70)):
            header.resizeSection(column, width)
        self.table.selectionModel().currentRowChanged.connect(self._current_changed)

        mark_ok, mark_ng, unmark = QPushButton("Mark OK (O)"), QPushButton("Mark NG (N)"), QPushButton("Clear label")
        mark_ok.clicked.connect(lambda: self.label_selected(OK))
        mark_ng.clicked.connect(lambda: self.label_selected(NG))
        unmark.clicked.connect(lambda: self.label_selected(None))
        QShortcut(QKeySequence("O"), self.table, activated=lambda: self.label_selected(OK))
        QShortcut(QKeySequence("N"), self.table, activated=lambda: self.label_selected(NG))
        self.summary = QLabel("")
        labels = QHBoxLayout()
        for w in (mark_ok, mark_ng, unmark):
            labels.addWidget(w)
        labels.addStretch(1)
        labels.addWidget(self.summary)

        self.detail = DetailPanel()
        self.histogram = pg.PlotWidget(title="Scores of this run")
        self.histogram.setMenuEnabled(False)
        self.histogram.setLabel("bottom", "normalised score")
        self.hist_curve = pg.PlotCurveItem(np.array([0.0, 1.0]), np.array([0.0]), stepMode="center", fillLevel=0,
                                     brush=(80, 140, 220, 160))
        self.histogram.addItem(self.hist_curve)
        self.hist_line = pg.InfiniteLine(0.5, angle=90, pen=pg.mkPen("#e03131", width=2))
        self.histogram.addItem(self.hist_line)
        self.detail_note = QLabel()
        self.detail_note.setWordWrap(True)
        self.detail_note.setStyleSheet("padding:6px; color:#5c3c00; background:#fff3bf; border-radius:4px;")
        self.detail_note.setVisible(False)
        details = QWidget()
        dlay = QVBoxLayout(details)
        dlay.setContentsMargins(0, 0, 0, 0)
        dlay.addWidget(self.detail_note)
        dlay.addWidget(self.detail, 1)
        right = QSplitter(Qt.Vertical)
        right.addWidget(details)
        right.addWidget(self.histogram)
        right.setStretchFactor(0, 3)
        right.setStretchFactor(1, 1)
        left = QWidget()
        llay = QVBoxLayout(left)
        llay.setContentsMargins(0, 0, 0, 0)
        llay.addWidget(self.table)
        llay.addLayout(labels)
        split = QSplitter()
        split.addWidget(left)
        split.addWidget(right)
        split.setStretchFactor(0, 2)
        split.setStretchFactor(1, 3)
        lay = QVBoxLayout(self)
        lay.addLayout(top)
        lay.addLayout(second)
        lay.addWidget(split, 1)

    # -- runs -------------------------------------------------------------------------------------
    def open_store(self) -> ResultStore:
        if self.store is None:
            self.store = ResultStore(self.db_path)
        return self.store

    def set_db_path(self, path: Path) -> None:
        if path != self.db_path:
            self.close_store()
            self.db_path = path
            self.refresh_runs()

    def close_store(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    def refresh_runs(self, select: int | None = None) -> None:
        """The list of runs, and a run shown: ``select``, else the one shown before, else the newest."""
        store = self.open_store()
        shown = self.run.id if self.run is not None else None
        self.runs.clear()
        for run in store.runs():      # folder runs, and the NG frames recorded by live runs
            self.runs.addItem(f"#{run.id}  {run.kind}: {display_name(run.source)}  "
                              f"({run.started[:16].replace('T', ' ')}, {run.status})", run.id)
        choice = next((r for r in (select, shown) if r is not None and self.runs.findData(r) >= 0),
                      self.runs.itemData(0) if self.runs.count() else None)
        if choice is not None:
            self.runs.setCurrentIndex(self.runs.findData(choice))
            self.show_run(choice)

    def show_run(self, run_id: int | None) -> None:
        if run_id is None:
            return
        store = self.open_store()
        self.run = store.run(run_id)
        self.model.load(store, run_id)
        self.table.sortByColumn(2, Qt.DescendingOrder)
        counts = store.counts(run_id)
        self.summary.setText(f"{sum(counts.values())} items: {counts[NG]} NG, {counts[OK]} OK, "
                             f"{counts[ERROR]} errors")
        scores = np.array([r.normalised for r in self.model.rows if r.normalised is not None])
        if scores.size:
            counts_, edges = np.histogram(scores, bins=40, range=(0.0, 1.0))
            self.hist_curve.setData(edges, counts_)
        else:
            self.hist_curve.setData([0, 1], [0])
        self.hist_line.setValue(self.run.settings.get("normalised_threshold", 0.5))
        if self.proxy.rowCount():
            self.table.selectRow(0)
        warning = fit_warning(scores) if self.run.kind == "folder" else None   # live runs record NG frames only
        if warning:
            self.misfit.emit(warning)

    # -- running ----------------------------------------------------------------------------------
    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder to inspect", self.folder.text())
        if folder:
            self.folder.setText(folder)

    def _request_run(self) -> None:
        folder = Path(self.folder.text().strip())
        if not folder.is_dir():
            self.message.emit(f"not a folder: {folder}")
            return
        self.runRequested.emit(folder)

    def run_started(self) -> None:
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setValue(0)
        self.progress.setVisible(True)

    def set_progress(self, done: int, total: int) -> None:
        self.progress.setMaximum(max(total, 1))
        self.progress.setValue(done)
        self.progress.setFormat(f"{done} / {total}")

    def run_ended(self, run_id: int | None) -> None:
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.progress.setVisible(False)
        if run_id is not None:
            self.refresh_runs(select=run_id)

    # -- looking and labelling --------------------------------------------------------------------
    def _refilter(self) -> None:
        self.proxy.set_filter(self.kind.currentText(), self.search.text())

    def _current_changed(self, current: QModelIndex, _previous: QModelIndex) -> None:
        if not current.isValid():
            self.detail.show_item(None, None)
            return
        row = self.model.rows[self.proxy.mapToSource(current).row()]
        thumb, heat = self.store.images(row.id)
        if row.error is not None:                   # the reason, where the images would be
            self.detail.show_item(None, None)
            self.detail_note.setText(f"{Path(row.display).name}: not inspected — {row.error}")
            self.detail_note.setVisible(True)
            return
        self.detail_note.setVisible(False)
        self.detail.show_item(thumb, heat)          # at once, from the database ...
        path = Path(row.item)
        if path.is_file():                          # ... then the full-resolution original, off the UI thread
            item_id = row.id
            start_task(lambda: read_image(path), lambda img: self._show_original(item_id, img, heat),
                       lambda _msg: None)

    def _show_original(self, item_id: int, image: np.ndarray, heat: np.ndarray | None) -> None:
        current = self.table.currentIndex()
        if current.isValid() and self.model.rows[self.proxy.mapToSource(current).row()].id == item_id:
            self.detail.show_item(image, heat)

    def selected_source_rows(self) -> list[int]:
        return sorted({self.proxy.mapToSource(i).row() for i in self.table.selectionModel().selectedRows()})

    def label_selected(self, label: str | None) -> None:
        rows = self.selected_source_rows()
        for r in rows:
            self.model.set_label(r, label)
        if rows:
            self.message.emit(f"{len(rows)} item(s) labelled {label or 'none'}")

    def _export(self, pattern: str, suffix: str, writer) -> None:
        if self.run is None:
            self.message.emit("no run to export")
            return
        name, _ = QFileDialog.getSaveFileName(self, "Export", f"inspection-run-{self.run.id}{suffix}", pattern)
        if name:
            self.export(Path(name), writer)

    def export(self, path: Path, writer) -> None:
        """Write a report of the shown run in the background (its own database connection)."""
        db, run_id = self.db_path, self.run.id

        def work():
            with ResultStore(db) as store:
                return writer(store, run_id, path)

        start_task(work, lambda p: self.message.emit(f"wrote {p}"), lambda e: self.message.emit(f"export failed: {e}"))
