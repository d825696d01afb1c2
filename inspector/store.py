"""Inspection results in SQLite: runs, and one row per inspected image or frame.

SQLite in WAL mode is the embedded default: one file, readers (the batch view, a report) never
block the writer.  Rows are committed at least every ``commit_interval_s`` seconds, so a process
that is killed loses at most the last second of work and leaves a consistent database; a resumed
folder run skips every item already recorded.

Each item row keeps small thumbnails of the image and of its heat map, so that a past run can be
reviewed and reported without the original files and without scoring anything again.  Operator
labels (OK / NG) live beside the verdicts, for the retraining wizard.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .pipeline import ERROR, NG, OK, FrameResult

SCHEMA_VERSION = 1
THUMB_SIDE = 160
LABELS = (OK, NG)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id          INTEGER PRIMARY KEY,
    source      TEXT NOT NULL,
    kind        TEXT NOT NULL,              -- folder | camera
    model       TEXT NOT NULL,              -- model file path
    method      TEXT NOT NULL,
    settings    TEXT NOT NULL,              -- JSON: tile, stride, roi, device, half, ...
    threshold   REAL NOT NULL,              -- raw threshold the verdicts were taken against
    started     TEXT NOT NULL,
    ended       TEXT,
    status      TEXT NOT NULL               -- running | completed | interrupted | <why it stopped>
);
CREATE TABLE IF NOT EXISTS items (
    id          INTEGER PRIMARY KEY,
    run_id      INTEGER NOT NULL REFERENCES runs(id),
    item        TEXT NOT NULL,              -- file path, or "<camera>#<frame>"
    frame_index INTEGER NOT NULL,
    inspected   TEXT NOT NULL,
    score       REAL,                       -- raw (NULL on error)
    normalised  REAL,                       -- 0..1, 0.5 at the threshold
    verdict     TEXT NOT NULL,              -- OK | NG | ERROR
    error       TEXT,
    width       INTEGER,
    height      INTEGER,
    overlay     TEXT,                       -- path of the saved overlay image, if any
    thumb       BLOB,                       -- JPEG, longest side THUMB_SIDE
    heat        BLOB,                       -- PNG, 8-bit heat map at the thumbnail's size
    label       TEXT,                       -- operator label: OK | NG | NULL
    labelled    TEXT,
    UNIQUE (run_id, item)
);
CREATE INDEX IF NOT EXISTS items_by_score ON items (run_id, normalised);
CREATE INDEX IF NOT EXISTS items_by_verdict ON items (run_id, verdict);
"""


class StoreError(Exception):
    """A results database that cannot be used; the message says why."""


@dataclass(frozen=True)
class Run:
    id: int
    source: str
    kind: str
    model: str
    method: str
    settings: dict[str, Any]
    threshold: float
    started: str
    ended: str | None
    status: str


@dataclass(frozen=True)
class ItemRow:
    id: int
    run_id: int
    item: str
    frame_index: int
    inspected: str
    score: float | None
    normalised: float | None
    verdict: str
    error: str | None
    width: int | None
    height: int | None
    overlay: str | None
    label: str | None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def thumbnail_size(shape: tuple[int, ...]) -> tuple[int, int]:
    """(width, height) of an image's thumbnail: the longest side THUMB_SIDE, never enlarged."""
    h, w = shape[:2]
    scale = min(1.0, THUMB_SIDE / max(h, w))
    return max(1, round(w * scale)), max(1, round(h * scale))


def image_thumbnail(image: np.ndarray) -> bytes | None:
    """The image's thumbnail as JPEG."""
    size = thumbnail_size(image.shape)
    # Area averaging only where it matters (strong shrinking): it costs several times more.
    strong = size[0] < image.shape[1] / 2
    thumb = cv2.resize(image, size, interpolation=cv2.INTER_AREA if strong else cv2.INTER_LINEAR)
    ok, jpeg = cv2.imencode(".jpg", thumb, [cv2.IMWRITE_JPEG_QUALITY, 85])
    return jpeg.tobytes() if ok else None


def thumbnails(result: FrameResult) -> tuple[bytes | None, bytes | None]:
    """JPEG of the image (made ahead when the result carries it) and PNG of the 8-bit heat map."""
    if result.image is None:
        return None, None
    jpeg = result.thumbnail if result.thumbnail is not None else image_thumbnail(result.image)
    width, height = thumbnail_size(result.image.shape)
    heat = result.heat_at((height, width))
    heat_png = None
    if heat is not None:
        heat_png = cv2.imencode(".png", np.clip(heat * 255, 0, 255).astype(np.uint8))[1].tobytes()
    return jpeg, heat_png


def decode_thumbnails(thumb: bytes | None, heat: bytes | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(BGR uint8 thumbnail, heat float32 in [0, 1]) from the stored blobs."""
    img = cv2.imdecode(np.frombuffer(thumb, np.uint8), cv2.IMREAD_COLOR) if thumb else None
    hm = cv2.imdecode(np.frombuffer(heat, np.uint8), cv2.IMREAD_GRAYSCALE) if heat else None
    return img, (hm.astype(np.float32) / 255.0 if hm is not None else None)


class ResultStore:
    """One SQLite results database.  Use one instance per thread (SQLite connections are not shared)."""

    def __init__(self, path: str | Path, *, commit_interval_s: float = 1.0) -> None:
        self.path = Path(path)
        self.commit_interval_s = commit_interval_s
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=10.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")   # in WAL: durable against a killed process
            self._db.execute("PRAGMA foreign_keys=ON")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.path}: written by a newer Inspector (schema {version}); update Inspector")
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self._db.commit()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: not a usable results database ({exc})") from exc
        self._last_commit = time.monotonic()

    # -- runs -------------------------------------------------------------------------------------
    def start_run(self, *, source: str, kind: str, model: str, method: str, settings: dict[str, Any],
                  threshold: float) -> int:
        cur = self._db.execute(
            "INSERT INTO runs (source, kind, model, method, settings, threshold, started, status) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, 'running')",
            (source, kind, model, method, json.dumps(settings), threshold, _now()))
        self._db.commit()
        return int(cur.lastrowid)

    def reopen_run(self, run_id: int) -> None:
        """Mark a run as running again (a resumed run appends to it)."""
        self._db.execute("UPDATE runs SET status='running', ended=NULL WHERE id=?", (run_id,))
        self._db.commit()

    def finish_run(self, run_id: int, status: str = "completed") -> None:
        self._db.execute("UPDATE runs SET status=?, ended=? WHERE id=?", (status, _now(), run_id))
        self._db.commit()
        self._last_commit = time.monotonic()

    def latest_run(self, source: str) -> Run | None:
        row = self._db.execute("SELECT * FROM runs WHERE source=? ORDER BY id DESC LIMIT 1", (source,)).fetchone()
        return self._run(row) if row else None

    def run(self, run_id: int) -> Run:
        row = self._db.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is None:
            raise StoreError(f"{self.path}: no run {run_id}")
        return self._run(row)

    def runs(self) -> list[Run]:
        return [self._run(r) for r in self._db.execute("SELECT * FROM runs ORDER BY id DESC")]

    @staticmethod
    def _run(row) -> Run:
        return Run(row[0], row[1], row[2], row[3], row[4], json.loads(row[5]), row[6], row[7], row[8], row[9])

    # -- items ------------------------------------------------------------------------------------
    def add(self, run_id: int, result: FrameResult, *, overlay: str | None = None) -> None:
        """Record one result; committed within ``commit_interval_s`` (or at flush / finish_run)."""
        thumb, heat = thumbnails(result)
        h, w = result.image.shape[:2] if result.image is not None else (None, None)
        nan = result.error is not None
        self._db.execute(
            "INSERT OR REPLACE INTO items (run_id, item, frame_index, inspected, score, normalised, verdict, error, "
            "width, height, overlay, thumb, heat) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (run_id, result.item, result.index, _now(), None if nan else result.score,
             None if nan else result.normalised, result.verdict, result.error, w, h, overlay, thumb, heat))
        if time.monotonic() - self._last_commit >= self.commit_interval_s:
            self.flush()

    def flush(self) -> None:
        self._db.commit()
        self._last_commit = time.monotonic()

    def recorded_items(self, run_id: int) -> set[str]:
        return {r[0] for r in self._db.execute("SELECT item FROM items WHERE run_id=?", (run_id,))}

    _ORDER = {"score": "normalised DESC NULLS FIRST", "item": "item", "index": "frame_index"}

    def items(self, run_id: int, *, order: str = "score", verdict: str | None = None,
              limit: int | None = None) -> list[ItemRow]:
        """The run's items, worst first by default (errors first: they need a look too)."""
        sql = ("SELECT id, run_id, item, frame_index, inspected, score, normalised, verdict, error, width, height, "
               "overlay, label FROM items WHERE run_id=?")
        args: list[Any] = [run_id]
        if verdict is not None:
            sql += " AND verdict=?"
            args.append(verdict)
        sql += f" ORDER BY {self._ORDER[order]}, id"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return [ItemRow(*r) for r in self._db.execute(sql, args)]

    def images(self, item_id: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        """An item's stored thumbnail (BGR) and heat map (float in [0, 1]) at thumbnail size."""
        row = self._db.execute("SELECT thumb, heat FROM items WHERE id=?", (item_id,)).fetchone()
        if row is None:
            raise StoreError(f"{self.path}: no item {item_id}")
        return decode_thumbnails(*row)

    def counts(self, run_id: int) -> dict[str, int]:
        rows = self._db.execute("SELECT verdict, COUNT(*) FROM items WHERE run_id=? GROUP BY verdict", (run_id,))
        counts = {OK: 0, NG: 0, ERROR: 0}
        counts.update(dict(rows.fetchall()))
        return counts

    def set_label(self, item_id: int, label: str | None) -> None:
        """The operator's own verdict on an item (OK, NG, or None to clear it); saved at once."""
        if label is not None and label not in LABELS:
            raise ValueError(f"label must be one of {LABELS} or None, got {label!r}")
        self._db.execute("UPDATE items SET label=?, labelled=? WHERE id=?",
                         (label, _now() if label else None, item_id))
        self.flush()

    def close(self) -> None:
        self.flush()
        self._db.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
