"""Reports of a run, read from the results database: CSV and a self-contained HTML page.

The HTML page needs nothing beside it (images are embedded, the histogram is inline SVG), so it
can be mailed or archived as one file.  Items are listed worst first; the worst
``THUMBNAILS_MAX`` carry the image and its heat map side by side, the rest are listed as text so
the page stays small for folders of many thousands of images.
"""

from __future__ import annotations

import base64
import csv
import html
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np

from .. import __version__
from ..base.atomic import atomic_path
from ..detect.pipeline import ERROR, NG, OK
from ..frames.listing import ALREADY_RECORDED, display_name
from .overlay import colour_heat
from .store import ItemRow, ResultStore, Run

THUMBNAILS_MAX = 300
CSV_COLUMNS = ("item", "frame_index", "verdict", "score", "normalised", "error", "operator_label", "overlay",
               "inspected")


@contextmanager
def _atomic_text(path: Path) -> Iterator:
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        yield f


def write_csv(store: ResultStore, run_id: int, path: str | Path) -> Path:
    path = Path(path)
    with _atomic_text(path) as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for r in store.items(run_id):
            writer.writerow([r.display, r.frame_index, r.verdict, "" if r.score is None else f"{r.score:.6g}",
                             "" if r.normalised is None else f"{r.normalised:.4f}", r.error or "", r.label or "",
                             display_name(r.overlay) if r.overlay else "", r.inspected])
    return path


def _data_uri(img: np.ndarray) -> str:
    ok, jpeg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 80])
    return "data:image/jpeg;base64," + base64.b64encode(jpeg.tobytes()).decode() if ok else ""


def _histogram_svg(items: list[ItemRow], threshold: float = 0.5, bins: int = 40, width: int = 640,
                   height: int = 180) -> str:
    """Normalised scores of OK and NG items as stacked bars; the threshold as a line."""
    scores = np.array([r.normalised for r in items if r.normalised is not None])
    if scores.size == 0:
        return "<p>No scored items.</p>"
    edges = np.linspace(0.0, 1.0, bins + 1)
    ok = np.histogram(scores[scores <= threshold], edges)[0]
    ng = np.histogram(scores[scores > threshold], edges)[0]
    top = max(1, int((ok + ng).max()))
    bw = width / bins
    bars = []
    for i, (a, b) in enumerate(zip(ok, ng, strict=True)):
        for value, base, colour in ((a, 0, "#2f9e44"), (b, a, "#e03131")):
            if value:
                h, y = value / top * (height - 20), height - 20 - (value + base) / top * (height - 20)
                bars.append(f'<rect x="{i * bw + 1:.1f}" y="{y:.1f}" width="{bw - 2:.1f}" height="{h:.1f}" '
                            f'fill="{colour}"><title>{edges[i]:.3f}–{edges[i + 1]:.3f}: {value}</title></rect>')
    x_thr = width * threshold
    return (f'<svg width="{width}" height="{height}" role="img" aria-label="score histogram">'
            + "".join(bars)
            + f'<line x1="{x_thr}" y1="0" x2="{x_thr}" y2="{height - 20}" stroke="#222" stroke-dasharray="4 3"/>'
            + f'<text x="{x_thr + 4}" y="12" font-size="11">threshold</text>'
            + f'<text x="0" y="{height - 4}" font-size="11">0</text>'
            + f'<text x="{width - 8}" y="{height - 4}" font-size="11">1</text>'
            + f'<text x="{width / 2 - 60}" y="{height - 4}" font-size="11">normalised score (max {top})</text>'
            + "</svg>")


def _overlay_thumb(thumb: np.ndarray, heat: np.ndarray | None) -> np.ndarray:
    if heat is None:
        return thumb
    return cv2.addWeighted(colour_heat(heat), 0.45, thumb, 0.55, 0.0)


_STYLE = """
body { font: 14px system-ui, sans-serif; margin: 24px; color: #222; }
table { border-collapse: collapse; } td, th { padding: 4px 8px; border-bottom: 1px solid #ddd; text-align: left; }
.OK { color: #2f9e44; font-weight: 600; } .NG { color: #e03131; font-weight: 600; } .ERROR { color: #b7791f; }
img { max-height: 160px; margin-right: 4px; vertical-align: middle; } .num { text-align: right; }
.summary td:first-child { color: #666; }
"""


def _summary_rows(run: Run, counts: dict[str, int]) -> str:
    rows = [("source", display_name(run.source)), ("model", f"{display_name(run.model)} ({run.method})"),
            ("threshold (raw)", f"{run.threshold:.6g}"),
            ("settings", ", ".join(f"{k}={v}" for k, v in run.settings.items())),
            ("started", run.started), ("ended", run.ended or "—"), ("status", run.status),
            ("items", str(sum(counts.values()))), ("OK", str(counts[OK])), ("NG (anomalous)", str(counts[NG])),
            ("errors", str(counts[ERROR]))]
    summary = run.summary
    if summary.get("entries") is not None:
        rows.insert(7, ("entries listed", str(summary["entries"])))
    # Entries a resumed run found already recorded are among the items above: not counted twice.
    rows += [(f"skipped: {why}", str(n)) for why, n in summary.get("skipped", {}).items() if why != ALREADY_RECORDED]
    for key, label in (("dropped", "frames dropped (live: newer frame taken)"),
                       ("frames_lost", "frames lost (could not be read)")):
        if summary.get(key):
            rows.append((label, str(summary[key])))
    return "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in rows)


def write_html(store: ResultStore, run_id: int, path: str | Path) -> Path:
    path = Path(path)
    run = store.run(run_id)
    items = store.items(run_id)
    counts = store.counts(run_id)
    with _atomic_text(path) as f:
        f.write(f"<!doctype html><html><head><meta charset='utf-8'><title>Inspection report: "
                f"{html.escape(display_name(run.source))}</title><style>{_STYLE}</style></head><body>")
        f.write(f"<h1>Inspection report</h1><table class='summary'>{_summary_rows(run, counts)}</table>")
        threshold = run.settings.get("normalised_threshold", 0.5)
        f.write(f"<h2>Score histogram</h2>{_histogram_svg(items, threshold)}")
        f.write("<h2>Items, worst first</h2><table><tr><th>#</th><th>verdict</th><th class='num'>score</th>"
                "<th>item</th><th>image and heat map</th></tr>")
        for rank, row in enumerate(items, 1):
            cell = html.escape(row.error or "")
            if rank <= THUMBNAILS_MAX and row.error is None:
                thumb, heat = store.images(row.id)
                if thumb is not None:
                    cell = (f"<img src='{_data_uri(thumb)}' alt='image'>"
                            f"<img src='{_data_uri(_overlay_thumb(thumb, heat))}' alt='heat map'>")
            score = "" if row.normalised is None else f"{row.normalised:.3f}"
            label = f" (operator: {row.label})" if row.label else ""
            f.write(f"<tr><td>{rank}</td><td class='{row.verdict}'>{row.verdict}{label}</td><td class='num'>{score}"
                    f"</td><td>{html.escape(row.display)}</td><td>{cell}</td></tr>")
        f.write(f"</table><p>Inspector {__version__}. Scores are normalised: 0.5 is the calibrated threshold."
                "</p></body></html>")
    return path
