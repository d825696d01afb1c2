"""Drawing a result onto its frame: coloured heat map, boxes, score and verdict (OpenCV only).

One function serves the CLI's saved images, the HTML report and the GUI's snapshots, so that
an operator sees the same picture everywhere.
"""

from __future__ import annotations

import cv2
import numpy as np

from .pipeline import NG, OK, FrameResult

COLOURMAPS = {"turbo": cv2.COLORMAP_TURBO, "jet": cv2.COLORMAP_JET, "inferno": cv2.COLORMAP_INFERNO,
              "viridis": cv2.COLORMAP_VIRIDIS, "hot": cv2.COLORMAP_HOT}
VERDICT_BGR = {OK: (60, 170, 40), NG: (40, 40, 220)}
BOX_BGR = (40, 40, 255)


def colour_heat(heat: np.ndarray, colourmap: str = "turbo") -> np.ndarray:
    """Heat in [0, 1] (0.5 = threshold) -> uint8 BGR through a colour map."""
    levels = np.clip(heat * 255.0, 0, 255).astype(np.uint8)
    return cv2.applyColorMap(levels, COLOURMAPS[colourmap])


def colour_lut(colourmap: str = "turbo") -> np.ndarray:
    """The colour map as a (256, 3) RGB lookup table, for views that colour heat maps themselves."""
    levels = np.arange(256, dtype=np.uint8)[:, None]
    return cv2.applyColorMap(levels, COLOURMAPS[colourmap])[:, 0, ::-1].copy()


def render(result: FrameResult, *, heat: bool = True, alpha: float = 0.4, colourmap: str = "turbo",
           boxes: bool = True, text: bool = True) -> np.ndarray:
    """The frame with the heat map blended at ``alpha``, flagged tiles boxed and the verdict written."""
    if result.image is None:
        raise ValueError(f"{result.item}: no image to draw on ({result.error})")
    out = result.image.copy()
    if heat and result.heat is not None and alpha > 0:
        out = cv2.addWeighted(colour_heat(result.heat, colourmap), alpha, out, 1.0 - alpha, 0.0)
    thickness = max(1, round(max(out.shape[:2]) / 400))
    if boxes:
        for x0, y0, x1, y1 in result.flagged_boxes():
            cv2.rectangle(out, (int(x0), int(y0)), (int(x1) - 1, int(y1) - 1), BOX_BGR, thickness)
    if text and result.error is None:
        _label(out, f"{result.verdict} {result.normalised:.2f}", VERDICT_BGR[result.verdict])
    return out


def _label(img: np.ndarray, text: str, colour: tuple[int, int, int]) -> None:
    scale = max(0.4, max(img.shape[:2]) / 900)
    thickness = max(1, round(scale * 2))
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    pad = max(2, h // 3)
    cv2.rectangle(img, (0, 0), (w + 2 * pad, h + base + 2 * pad), colour, -1)
    cv2.putText(img, text, (pad, h + pad), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness,
                cv2.LINE_AA)
