"""Starting the desktop application: ``python main.py`` with no arguments."""

from __future__ import annotations

import gc
import logging
import os
import sys
from collections.abc import Callable

import pyqtgraph as pg
from PySide6.QtCore import QtMsgType, qInstallMessageHandler
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QApplication

from .. import __version__
from ..base.paths import resource


def _no_display() -> bool:
    """On Linux without X11 or Wayland (and no platform chosen), Qt would abort with a cryptic message."""
    return (sys.platform.startswith("linux") and not os.environ.get("QT_QPA_PLATFORM")
            and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"))


_QT_LEVELS = {QtMsgType.QtDebugMsg: logging.DEBUG, QtMsgType.QtInfoMsg: logging.INFO,
              QtMsgType.QtWarningMsg: logging.WARNING, QtMsgType.QtCriticalMsg: logging.ERROR,
              QtMsgType.QtFatalMsg: logging.CRITICAL}


def route_qt_messages(on_display_lost: Callable[[], None]):
    """Qt's messages go to the log, and Qt saying the display is gone stops the workers first.

    When the X server dies, Qt's X11 plugin prints "The X11 connection broke" and then calls the C
    library's exit() at once: no close event, no Python shutdown.  A worker's QThread still running
    is then destroyed and Qt aborts the process (measured under Xvfb: every time; daemon Python
    threads instead met ONNX Runtime's teardown and aborted a third of the time).  The warning comes
    first, through this handler, so the workers are stopped and waited for here (the live run is
    then recorded as cancelled).  Returns the handler it replaced.
    """
    qt_log = logging.getLogger("qt")

    def handle(mode, _context, message: str) -> None:
        qt_log.log(_QT_LEVELS.get(mode, logging.WARNING), "%s", message)
        if "connection broke" in message:          # the X11 plugin's last word before exit()
            on_display_lost()

    return qInstallMessageHandler(handle)


def run(argv: list[str] | None = None) -> int:
    if _no_display():
        print("error: no display to open the window on (DISPLAY is not set). On a headless machine use the "
              "command line, e.g. 'python main.py inspect FOLDER --model MODEL' (see 'python main.py --help').",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    pg.setConfigOptions(imageAxisOrder="row-major", antialias=True)
    app = QApplication.instance() or QApplication(argv if argv is not None else sys.argv)
    app.setOrganizationName("Inspector")
    app.setApplicationName("Inspector")
    app.setApplicationVersion(__version__)
    app.setWindowIcon(QIcon(str(resource("inspector.png"))))
    app.setDesktopFileName("inspector")           # the desktop entry's name (installer/inspector.desktop)
    from .main_window import MainWindow  # after the application exists: settings paths need its names

    window = MainWindow()
    route_qt_messages(window.stop_workers)
    window.show()
    # Torch, Qt and pyqtgraph leave some 10^5 long-lived objects; a full garbage collection walking
    # them stalls the UI thread for ~100 ms (measured under Xvfb).  Freezing them out of the
    # collector's view after start-up removes that stall (README, "Desktop application").
    gc.freeze()
    return app.exec()
