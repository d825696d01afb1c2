"""The window's Help menu: what the numbers on screen mean, and About."""

from __future__ import annotations

import platform

from .. import __version__

TOPICS = {
    "The anomaly score": (
        "Each frame's score says how unlike the good parts the model was trained on it is.\n\n"
        "The raw score is in the detector's own units (a distance, a reconstruction error). The window shows "
        "the normalised score: 0 to 1, where 0.5 is the calibrated threshold, about 0.1 a typical good part, "
        "and values near 1 far beyond the threshold. It reads the same for every model.\n\n"
        "The heat map shows where in the frame the score comes from; boxes surround the regions above the "
        "threshold on NG frames."),
    "The threshold": (
        "A frame whose normalised score is above the threshold is NG, else OK.\n\n"
        "Training calibrates it on good parts held out from training, so that about 1 % of good parts are "
        "flagged (the false-alarm rate). Raise it for fewer false alarms and more missed defects, lower it "
        "for the opposite. Models ▸ Save the live threshold as a new version keeps a threshold you chose, "
        "without changing the model it was set on."),
    "Dropped frames": (
        "A camera delivers frames at its own rate. When the detector is slower, the live view inspects the "
        "newest frame and skips the ones that arrived meanwhile: those are counted as dropped. Dropping is "
        "how the view stays current; it is not an error. A folder or a video file drops nothing: every "
        "item is inspected."),
    "Model versions": (
        "Every trained model is a version in the registry (in the data folder, beside the results "
        "database). One version is active: the model the command line uses without --model. Models ▸ "
        "Make the chosen model active switches to another version and Roll back returns to the one "
        "before; python main.py models list shows them all with their figures."),
}


def about() -> str:
    return (f"<b>Inspector {__version__}</b><br>Visual anomaly inspection for production lines: live camera "
            f"inspection, folder batch review, and detectors trained on your own good parts.<br><br>"
            f"Default detector: a memory bank of EfficientNet-Lite0 patch features (ImageNet weights, "
            f"Apache-2.0).<br>Python {platform.python_version()} on {platform.system()}.")
