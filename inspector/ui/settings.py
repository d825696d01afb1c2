"""The GUI's settings: where things are kept, how frames are tiled, which device runs the model.

Kept in QSettings (with the window layout and the last choices), edited in a dialog.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QSettings
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QWidget,
)

from ..app.engine import ENGINES
from ..base.paths import data_dir, default_results_db, resource

DEMO_MODEL = resource("demo-patchcore.safetensors")


@dataclass
class AppSettings:
    results_db: Path
    models_dir: Path
    snapshots_dir: Path
    tile: int = 0          # 0: what the model recommends, else each frame whole
    stride: int = 0        # 0: the tile size
    device: str = "auto"
    #: The inference engine (``inspector.app.engine``): auto (ONNX Runtime on the CPU), torch, onnx.
    engine: str = "auto"
    #: Results older than this many days are forgotten at start (labelled items are kept); 0: never.
    retention_days: int = 90

    @staticmethod
    def default_paths() -> dict[str, Path]:
        """The paths a user has not chosen: in the user's data folder, shared with the command line."""
        base = data_dir()
        return {"paths/results_db": default_results_db(), "paths/models_dir": base / "models",
                "paths/snapshots_dir": base / "snapshots"}

    @classmethod
    def load(cls, qs: QSettings) -> AppSettings:
        paths = {key: Path(qs.value(key, str(default))) for key, default in cls.default_paths().items()}
        return cls(results_db=paths["paths/results_db"], models_dir=paths["paths/models_dir"],
                   snapshots_dir=paths["paths/snapshots_dir"],
                   tile=int(qs.value("inspection/tile", 0)), stride=int(qs.value("inspection/stride", 0)),
                   device=str(qs.value("inspection/device", "auto")),
                   engine=str(qs.value("inspection/engine", "auto")),
                   retention_days=int(qs.value("results/retention_days", 90)))

    def save(self, qs: QSettings) -> None:
        """Paths are saved only where the user chose another than the default: the default follows the
        data folder, so the window and the command line keep sharing one results database."""
        chosen = {"paths/results_db": self.results_db, "paths/models_dir": self.models_dir,
                  "paths/snapshots_dir": self.snapshots_dir}
        for key, default in self.default_paths().items():
            if chosen[key] == default:
                qs.remove(key)
            else:
                qs.setValue(key, str(chosen[key]))
        qs.setValue("inspection/tile", self.tile)
        qs.setValue("inspection/stride", self.stride)
        qs.setValue("inspection/device", self.device)
        qs.setValue("inspection/engine", self.engine)
        qs.setValue("results/retention_days", self.retention_days)


def _path_row(value: Path, folder: bool, parent: QWidget) -> tuple[QWidget, QLineEdit]:
    edit = QLineEdit(str(value))
    button = QPushButton("Browse…")

    def browse():
        chosen = (QFileDialog.getExistingDirectory(parent, "Folder", edit.text()) if folder
                  else QFileDialog.getSaveFileName(parent, "Results database", edit.text(), "SQLite (*.sqlite)")[0])
        if chosen:
            edit.setText(chosen)

    button.clicked.connect(browse)
    row = QWidget()
    lay = QHBoxLayout(row)
    lay.setContentsMargins(0, 0, 0, 0)
    lay.addWidget(edit, 1)
    lay.addWidget(button)
    return row, edit


class SettingsDialog(QDialog):
    def __init__(self, settings: AppSettings, parent=None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self.setMinimumWidth(620)            # room for whole paths
        form = QFormLayout(self)
        self.tile = QSpinBox()
        self.tile.setRange(0, 4096)
        self.tile.setSpecialValueText("model's choice")
        self.tile.setValue(settings.tile)
        self.tile.setToolTip("Tile side in frame pixels; 'model's choice' uses the model's recommendation, "
                             "or inspects each frame whole")
        self.stride = QSpinBox()
        self.stride.setRange(0, 4096)
        self.stride.setSpecialValueText("tile size")
        self.stride.setValue(settings.stride)
        self.device = QComboBox()
        self.device.addItems(["auto", "cpu", "cuda"])
        self.device.setCurrentText(settings.device)
        self.engine = QComboBox()
        self.engine.addItems(list(ENGINES))
        self.engine.setCurrentText(settings.engine)
        self.engine.setToolTip("auto: ONNX Runtime when the model runs on the CPU (faster there), PyTorch on a GPU; "
                               "torch or onnx to choose one")
        self.retention = QSpinBox()
        self.retention.setRange(0, 3650)
        self.retention.setSpecialValueText("for ever")
        self.retention.setSuffix(" days")
        self.retention.setValue(settings.retention_days)
        self.retention.setToolTip("Results older than this are forgotten when the window starts; items you "
                                  "labelled OK or NG are kept for retraining. Live runs record NG frames and "
                                  "one good frame in 100.")
        db_row, self.db = _path_row(settings.results_db, False, self)
        models_row, self.models = _path_row(settings.models_dir, True, self)
        snaps_row, self.snaps = _path_row(settings.snapshots_dir, True, self)
        form.addRow("Tile size (px)", self.tile)
        form.addRow("Tile stride (px)", self.stride)
        form.addRow("Device", self.device)
        form.addRow("Engine", self.engine)
        form.addRow("Keep results", self.retention)
        form.addRow("Results database", db_row)
        form.addRow("Models folder", models_row)
        form.addRow("Snapshots folder", snaps_row)
        buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)

    def settings(self) -> AppSettings:
        return AppSettings(results_db=Path(self.db.text()), models_dir=Path(self.models.text()),
                           snapshots_dir=Path(self.snaps.text()), tile=self.tile.value(), stride=self.stride.value(),
                           device=self.device.currentText(), engine=self.engine.currentText(),
                           retention_days=self.retention.value())
