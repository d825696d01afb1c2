"""The README's screenshots, made from the running program so that they stay current.

    xvfb-run -a -s "-screen 0 1280x800x24" .venv/bin/python tools/screenshots.py [--out docs/screenshots]
        [--data ../shared/data/brickwork_crack] [--size 1280x800] [--surface auto]

In a fresh data folder (nothing of the user's is touched) it opens the window as on a first launch
and waits for the demo line to show a defect (live view); trains the default detector on the
set's good parts and labelled defects through the retraining service (balanced preset: native
resolution; the surface given, by default chosen with the defects) and reviews a folder of its
test parts, goods and defects (batch review, the worst selected); and walks the retraining
wizard on the same set from samples to the threshold, one picture a page.  Each picture is the window as Qt draws it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TMP = Path(tempfile.mkdtemp(prefix="inspector-screenshots-"))
os.environ["INSPECTOR_DATA_DIR"] = str(TMP / "data")

from PySide6.QtCore import QSettings  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402


def wait(app: QApplication, condition, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise SystemExit(f"screenshots: gave up waiting for {what}")
        app.processEvents()
        time.sleep(0.02)


def settle(app: QApplication, seconds: float = 0.5) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)


def shoot(widget, path: Path) -> None:
    widget.grab().save(str(path))
    print(f"screenshots: {path}", flush=True)


def review_folder(data: Path, target: Path, per_kind: int = 12) -> Path:
    """A folder of the set's test parts, goods and defects (links to the files: nothing is copied)."""
    target.mkdir(parents=True)
    for kind in sorted(p for p in (data / "test").iterdir() if p.is_dir()):
        for f in sorted(kind.iterdir())[:per_kind]:
            (target / f"{kind.name}-{f.name}").symlink_to(f.resolve())
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "brickwork_crack")
    parser.add_argument("--size", default="1280x800", help="the window's size, WIDTHxHEIGHT")
    parser.add_argument("--surface", default="auto",
                        help="the memory bank's surface (default auto: chosen with the set's labelled defects)")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    args.out.mkdir(parents=True, exist_ok=True)

    import pyqtgraph as pg

    from inspector.app.retrain import Samples, register, retrain
    from inspector.learn.datasets import list_images
    from inspector.modelstore.registry import Registry
    from inspector.ui.main_window import MainWindow

    pg.setConfigOptions(imageAxisOrder="row-major", antialias=True)
    app = QApplication(sys.argv)
    app.setOrganizationName("Inspector")
    app.setApplicationName("Inspector")
    qs = QSettings(str(TMP / "settings.ini"), QSettings.IniFormat)
    window = MainWindow(qs)
    window.resize(width, height)
    window.show()

    # live view: the demo line, caught with a defect in view
    wait(app, lambda: window.live_view.last_update is not None, 60, "the first live frame")
    wait(app, lambda: window.live_view.last_update.result.verdict == "NG", 120, "a defect on the demo line")
    settle(app, 0.3)
    shoot(window, args.out / "live-view.png")
    window.stop()

    # batch review: the default detector trained on the set's good parts, a folder of test parts reviewed
    defects = args.data / "train" / "defect"
    samples = Samples(goods=list_images(args.data / "train" / "good"),
                      defects=list_images(defects) if defects.is_dir() else [])
    result = retrain(samples, method="patchcore", preset="balanced", surface=args.surface)
    registry = Registry(window.settings.models_dir)
    version = register(result, registry, name=f"{args.data.name} (default)", activate=True)
    window._refresh_models()
    window.load_model(registry.path_of(version))
    wait(app, lambda: window.model_path == registry.path_of(version), 60, "the trained model to load")
    window.tabs.setCurrentWidget(window.batch_view)
    window.batch_view.folder.setText(str(review_folder(args.data, TMP / "review")))
    window.batch_view.run_button.click()
    wait(app, lambda: window.batch_worker is None and window.batch_view.run is not None, 300, "the folder run")
    window.batch_view.table.selectRow(0)
    settle(app, 0.5)
    window.banner.setVisible(False)         # "run completed": it floats over the folder row
    shoot(window, args.out / "batch-review.png")

    # the retraining wizard, page by page
    wizard = window.open_wizard()
    wizard.resize(min(width, 960), min(height, 720))
    page = wizard.samples_page
    page.goods.setText(str(args.data / "train" / "good"))
    if (args.data / "train" / "defect").is_dir():
        page.defects.setText(str(args.data / "train" / "defect"))
    wait(app, page.isComplete, 30, "the samples to be counted")
    settle(app)
    shoot(wizard, args.out / "wizard-1-samples.png")
    wizard.next()
    method = wizard.method_page
    method.method.setCurrentIndex(method.method.findData("patchcore"))
    method.preset.setCurrentIndex(method.preset.findData("balanced"))
    method.surface.setCurrentIndex(method.surface.findData(args.surface))
    wait(app, lambda: "min on this machine" in method.estimate.text(), 120, "the training estimate")
    shoot(wizard, args.out / "wizard-2-method.png")
    wizard.next()
    wait(app, wizard.train_page.isComplete, 600, "the wizard's training")
    shoot(wizard, args.out / "wizard-3-training.png")
    wizard.next()
    settle(app, 1.0)
    shoot(wizard, args.out / "wizard-4-validation.png")
    wizard.next()
    settle(app)
    shoot(wizard, args.out / "wizard-5-threshold.png")
    wizard.close()
    window.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
