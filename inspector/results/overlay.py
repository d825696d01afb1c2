"""Drawing a result onto its frame: coloured heat map, boxes, score and verdict (OpenCV only).

One function serves the CLI's saved images, the HTML report and the GUI's snapshots, so that
an operator sees the same picture everywhere.

The heat map is brought to frame resolution a band of rows at a time and blended into the copy of
the frame: drawing a 20000 x 20000 frame costs that copy and a few MB, not five full-size arrays.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..detect.pipeline import NG, OK, FrameResult
from ..detect.tiling import TileGrid, region_placement, resample

COLOURMAPS = {"turbo": cv2.COLORMAP_TURBO, "jet": cv2.COLORMAP_JET, "inferno": cv2.COLORMAP_INFERNO,
              "viridis": cv2.COLORMAP_VIRIDIS, "hot": cv2.COLORMAP_HOT}
VERDICT_BGR = {OK: (60, 170, 40), NG: (40, 40, 220)}
BOX_BGR = (40, 40, 255)
#: Rows of the frame coloured and blended at once.
BAND_ROWS = 512


def colour_heat(heat: np.ndarray, colourmap: str = "turbo") -> np.ndarray:
    """Heat in [0, 1] (0.5 = threshold) -> uint8 BGR through a colour map."""
    levels = np.clip(heat * 255.0, 0, 255).astype(np.uint8)
    return cv2.applyColorMap(levels, COLOURMAPS[colourmap])


def colour_lut(colourmap: str = "turbo") -> np.ndarray:
    """The colour map as a (256, 3) RGB lookup table, for views that colour heat maps themselves."""
    levels = np.arange(256, dtype=np.uint8)[:, None]
    return cv2.applyColorMap(levels, COLOURMAPS[colourmap])[:, 0, ::-1].copy()


def blend_heat(out: np.ndarray, grid: TileGrid, heat: np.ndarray, alpha: float, colourmap: str = "turbo") -> None:
    """Blend the coloured heat map into ``out`` (the frame) over the grid's region, in place, a band of
    rows at a time."""
    (x0, y0, x1, y1), cells = region_placement(grid)
    for r0 in range(0, y1 - y0, BAND_ROWS):
        r1 = min(y1 - y0, r0 + BAND_ROWS)
        band = out[y0 + r0:y0 + r1, x0:x1]
        colour = colour_heat(resample(heat, cells, (x1 - x0, r1 - r0), first_row=r0), colourmap)
        band[...] = cv2.addWeighted(colour, alpha, band, 1.0 - alpha, 0.0)


def render(result: FrameResult, *, heat: bool = True, alpha: float = 0.4, colourmap: str = "turbo",
           boxes: bool = True, text: bool = True) -> np.ndarray:
    """The frame with the heat map blended at ``alpha``, flagged tiles boxed and the verdict written."""
    if result.image is None:
        raise ValueError(f"{result.item}: no image to draw on ({result.error})")
    out = result.image.copy()
    if heat and result.heat_scaled is not None and alpha > 0:
        blend_heat(out, result.grid, result.heat_scaled, alpha, colourmap)
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
