"""Live review: the recent NG frames of the live view, with their overlays, for the operator to
confirm (NG) or overrule (a false alarm: OK).

A live camera's frames are not files, so a frame the operator labels is saved as an image in the
data folder's ``feedback/OK`` or ``feedback/NG``; the retraining wizard offers those (and the labels
given in batch review) to the next training.
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path

import cv2
from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QHBoxLayout, QLabel, QListWidget, QListWidgetItem, QPushButton, QVBoxLayout, QWidget

from ..detect.pipeline import NG, OK, FrameResult
from ..frames.images import write_image
from ..results.overlay import render
from .batch_view import to_qpixmap

#: NG frames kept for review (full frames are held in memory: a 1280x720 frame is 2.7 MB).
RECENT = 24
ICON_WIDTH = 220


def feedback_files(root: Path, label: str) -> list[Path]:
    """The frames labelled ``label`` in live review so far."""
    folder = root / label
    return sorted(folder.glob("*.png")) if folder.is_dir() else []


class LiveReview(QWidget):
    """``labelled(path, label)`` after a frame was saved with the operator's label."""

    labelled = Signal(object, str)

    def __init__(self, feedback_root: Path, parent=None) -> None:
        super().__init__(parent)
        self.feedback_root = feedback_root
        self.frames: deque[tuple[int, FrameResult]] = deque(maxlen=RECENT)
        self._next_id = 0
        self.list = QListWidget()
        self.list.setViewMode(QListWidget.IconMode)
        self.list.setIconSize(QSize(ICON_WIDTH, ICON_WIDTH * 9 // 16))
        self.list.setResizeMode(QListWidget.Adjust)
        self.list.setSelectionMode(QListWidget.ExtendedSelection)
        self.list.setMovement(QListWidget.Static)
        confirm, overrule = QPushButton("Confirm NG (N)"), QPushButton("False alarm: OK (O)")
        confirm.setShortcut("N")
        overrule.setShortcut("O")
        confirm.clicked.connect(lambda: self.label_selected(NG))
        overrule.clicked.connect(lambda: self.label_selected(OK))
        self.counts = QLabel("")
        buttons = QHBoxLayout()
        for w in (confirm, overrule):
            buttons.addWidget(w)
        buttons.addStretch(1)
        buttons.addWidget(self.counts)
        lay = QVBoxLayout(self)
        lay.addWidget(QLabel(f"The last {RECENT} NG frames of the live view. Labels you give are kept for the next "
                             f"retraining (Models ▸ Retrain…)."))
        lay.addWidget(self.list, 1)
        lay.addLayout(buttons)
        self._show_counts()

    def add(self, result: FrameResult) -> None:
        """An inspected live frame: an NG one joins the list (the oldest leaves)."""
        if result.verdict != NG or result.image is None:
            return
        if len(self.frames) == self.frames.maxlen:
            self.list.takeItem(self.list.count() - 1)
        frame_id = self._next_id
        self._next_id += 1
        self.frames.appendleft((frame_id, result))
        overlay = render(result)
        small = cv2.resize(overlay, (ICON_WIDTH, max(1, round(ICON_WIDTH * overlay.shape[0] / overlay.shape[1]))))
        item = QListWidgetItem(QIcon(to_qpixmap(small)), f"{time.strftime('%H:%M:%S')}  {result.normalised:.2f}")
        item.setData(Qt.UserRole, frame_id)
        self.list.insertItem(0, item)

    def label_selected(self, label: str) -> list[Path]:
        """Save the selected frames under ``feedback/<label>`` and take them off the list."""
        chosen = {item.data(Qt.UserRole) for item in self.list.selectedItems()}
        saved = []
        for frame_id, result in [f for f in self.frames if f[0] in chosen]:
            path = self.feedback_root / label / f"{time.strftime('%Y%m%d-%H%M%S')}-{frame_id:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_image(path, result.image)
            saved.append(path)
            self.labelled.emit(path, label)
        self.frames = deque((f for f in self.frames if f[0] not in chosen), maxlen=RECENT)
        for row in reversed(range(self.list.count())):
            if self.list.item(row).data(Qt.UserRole) in chosen:
                self.list.takeItem(row)
        self._show_counts()
        return saved

    def _show_counts(self) -> None:
        ok, ng = (len(feedback_files(self.feedback_root, label)) for label in (OK, NG))
        self.counts.setText(f"waiting for retraining: {ng} confirmed NG, {ok} false alarms")

