"""Inspection results in SQLite: runs, and one row per inspected image, frame or unreadable entry.

SQLite in WAL mode is the embedded default: one file, readers (the batch view, a report) never
block the writer.  Writes are short transactions: results are buffered in memory while a batch is
scored and written in one transaction after it (``flush``), so two processes can write to one
database at once — each waits its turn (a busy timeout, then retries with back-off), and neither
holds the lock while its model works.  A killed process loses at most the batch it was scoring and
leaves a consistent database.

A run says how it ended: "completed" only when its source ran to the end, "cancelled",
"interrupted" (Ctrl-C), or "failed: <why>".  While a run is written its writer holds an operating-
system lock on a small file beside the database; the lock dies with the process, so a run found
"running" whose lock is free was abandoned by a killed writer, and is marked "interrupted" the next
time the database is opened.

Item names are stored losslessly: a file name that is not valid UTF-8 is stored as its bytes (a
BLOB in the ``item`` column) and read back as the exact ``str`` the OS gave; ``ItemRow.display``
shows it escaped.  Each item row keeps small thumbnails of the image and of its heat map, so a
past run can be reviewed and reported without the original files, and the threshold its verdict
was taken against.  Operator labels (OK / NG) live beside the verdicts, for retraining.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import cv2
import filelock
import numpy as np

from ..base.errors import InspectorError
from ..detect.pipeline import ERROR, NG, OK, FrameResult
from ..frames.listing import display_name

SCHEMA_VERSION = 2
THUMB_SIDE = 160
LABELS = (OK, NG)
RUNNING, COMPLETED, CANCELLED, INTERRUPTED = "running", "completed", "cancelled", "interrupted"
#: How long a write waits for another writer before it gives up (the busy timeout, then retries).
WRITE_PATIENCE_S = 120.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id          INTEGER PRIMARY KEY,
    source      TEXT NOT NULL,
    kind        TEXT NOT NULL,              -- folder | video | camera
    model       TEXT NOT NULL,              -- model file path
    method      TEXT NOT NULL,
    settings    TEXT NOT NULL,              -- JSON: tile, stride, roi, device, half, ...
    threshold   REAL NOT NULL,              -- raw threshold at the start (each item records its own)
    started     TEXT NOT NULL,
    ended       TEXT,
    status      TEXT NOT NULL,              -- running | completed | cancelled | interrupted | failed: <why>
    writer      TEXT,                       -- the writing process's lock token
    summary     TEXT                        -- JSON: entries listed, skipped by reason, dropped, frames lost
);
CREATE TABLE IF NOT EXISTS items (
    id          INTEGER PRIMARY KEY,
    run_id      INTEGER NOT NULL REFERENCES runs(id),
    item        TEXT NOT NULL,              -- file path (a BLOB of its bytes if not UTF-8), or "<camera>#<frame>"
    frame_index INTEGER NOT NULL,
    inspected   TEXT NOT NULL,
    score       REAL,                       -- raw (NULL on error)
    normalised  REAL,                       -- 0..1, 0.5 at the calibrated threshold
    verdict     TEXT NOT NULL,              -- OK | NG | ERROR
    error       TEXT,
    width       INTEGER,
    height      INTEGER,
    overlay     TEXT,                       -- path of the saved overlay image, if any
    thumb       BLOB,                       -- JPEG, longest side THUMB_SIDE
    heat        BLOB,                       -- PNG, 8-bit heat map at the thumbnail's size
    label       TEXT,                       -- operator label: OK | NG | NULL
    labelled    TEXT,
    threshold   REAL,                       -- raw threshold this verdict was taken against
    UNIQUE (run_id, item)
);
CREATE INDEX IF NOT EXISTS items_by_score ON items (run_id, normalised);
CREATE INDEX IF NOT EXISTS items_by_verdict ON items (run_id, verdict);
"""

#: Schema 1 (Inspector 0.1 before run locks) to 2.
_MIGRATE_1_TO_2 = """
ALTER TABLE runs ADD COLUMN writer TEXT;
ALTER TABLE runs ADD COLUMN summary TEXT;
ALTER TABLE items ADD COLUMN threshold REAL;
"""

T = TypeVar("T")


class StoreError(InspectorError):
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
    summary: dict[str, Any]

    @property
    def failed(self) -> bool:
        return self.status.startswith("failed")


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
    threshold: float | None

    @property
    def display(self) -> str:
        """The item's name for people (bytes that are not UTF-8 escaped as \\xNN)."""
        return display_name(self.item)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def item_key(item: str) -> str | bytes:
    """How an item name is stored: text when it is valid UTF-8, else its bytes (lossless)."""
    try:
        item.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(item)
    return item


def item_from_key(value: str | bytes) -> str:
    return os.fsdecode(value) if isinstance(value, bytes) else value


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
    heat = result.heat_at((height, width)) if result.error is None else None
    heat_png = None
    if heat is not None:
        heat_png = cv2.imencode(".png", np.clip(heat * 255, 0, 255).astype(np.uint8))[1].tobytes()
    return jpeg, heat_png


def decode_thumbnails(thumb: bytes | None, heat: bytes | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(BGR uint8 thumbnail, heat float32 in [0, 1]) from the stored blobs."""
    img = cv2.imdecode(np.frombuffer(thumb, np.uint8), cv2.IMREAD_COLOR) if thumb else None
    hm = cv2.imdecode(np.frombuffer(heat, np.uint8), cv2.IMREAD_GRAYSCALE) if heat else None
    return img, (hm.astype(np.float32) / 255.0 if hm is not None else None)


def _finite(x: float) -> float | None:
    return x if x == x and abs(x) != float("inf") else None


class ResultStore:
    """One SQLite results database.  Use one instance per thread (SQLite connections are not shared)."""

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise StoreError(f"{self.path}: no results database")
        self._locks_dir = self.path.with_name(self.path.name + ".locks")
        self._held: dict[int, tuple[filelock.FileLock, Path]] = {}
        self._pending: list[tuple] = []
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Autocommit: every write below opens its own short transaction (BEGIN IMMEDIATE).
            self._db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
            self._db.execute("PRAGMA busy_timeout=10000")
            self._write(lambda db: db.execute("PRAGMA journal_mode=WAL"), transaction=False)
            self._db.execute("PRAGMA synchronous=NORMAL")   # in WAL: durable against a killed process
            self._db.execute("PRAGMA foreign_keys=ON")
            self._write(self._prepare_schema)
        except StoreError as exc:
            if isinstance(exc.__cause__, sqlite3.DatabaseError):
                raise StoreError(f"{self.path}: not a usable results database ({exc.__cause__})") from exc
            raise
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: not a usable results database ({exc})") from exc
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot open the results database ({exc.strerror or exc})") from exc
        self.recover_abandoned_runs()

    def _prepare_schema(self, db: sqlite3.Connection) -> None:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path}: written by a newer Inspector (schema {version}); update Inspector")
        exists = db.execute("SELECT 1 FROM sqlite_master WHERE name='runs'").fetchone() is not None
        if exists and version == 1:
            for statement in filter(str.strip, _MIGRATE_1_TO_2.split(";")):
                db.execute(statement)
        for statement in filter(str.strip, _SCHEMA.split(";")):
            db.execute(statement)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    # -- writing ----------------------------------------------------------------------------------
    def _write(self, work: Callable[[sqlite3.Connection], T], *, transaction: bool = True) -> T:
        """Run ``work`` in one short write transaction; wait for other writers, retrying with back-off."""
        deadline = time.monotonic() + WRITE_PATIENCE_S
        delay = 0.05
        while True:
            try:
                if not transaction:
                    return work(self._db)
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    value = work(self._db)
                    self._db.execute("COMMIT")
                    return value
                except BaseException:
                    if self._db.in_transaction:
                        with contextlib.suppress(sqlite3.Error):   # the cause matters, not the rollback
                            self._db.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:
                text = str(exc).lower()
                if "locked" not in text and "busy" not in text:
                    raise StoreError(f"{self.path}: {exc}") from exc
                if time.monotonic() > deadline:
                    raise StoreError(f"{self.path}: another program kept the database locked for over "
                                     f"{WRITE_PATIENCE_S:.0f} s") from exc
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: {exc}") from exc

    # -- runs -------------------------------------------------------------------------------------
    def _lock_path(self, token: str) -> Path:
        return self._locks_dir / f"{token}.lock"

    def _hold(self) -> tuple[str, filelock.FileLock, Path]:
        """A lock that marks this process as a run's writer for as long as it lives."""
        token = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        path = self._lock_path(token)
        lock = filelock.FileLock(path, timeout=0)
        try:
            self._locks_dir.mkdir(parents=True, exist_ok=True)
            lock.acquire()
        except (OSError, filelock.Timeout) as exc:
            raise StoreError(f"{self._locks_dir}: cannot take the lock that marks a run as being written ({exc})") \
                from exc
        return token, lock, path

    def _writer_alive(self, token: str | None) -> bool | None:
        """Whether the process holding ``token``'s lock is alive (None: cannot tell)."""
        if not token:
            return False
        path = self._lock_path(token)
        lock = filelock.FileLock(path, timeout=0)
        try:
            lock.acquire()
        except filelock.Timeout:
            return True
        except OSError:
            return None
        lock.release()
        path.unlink(missing_ok=True)
        return False

    def _let_go(self, run_id: int) -> None:
        held = self._held.pop(run_id, None)
        if held is not None:
            lock, path = held
            lock.release()
            path.unlink(missing_ok=True)

    def start_run(self, *, source: str, kind: str, model: str, method: str, settings: dict[str, Any],
                  threshold: float) -> int:
        token, lock, path = self._hold()
        try:
            run_id = self._write(lambda db: db.execute(
                "INSERT INTO runs (source, kind, model, method, settings, threshold, started, status, writer) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (item_key(source), kind, item_key(model), method, json.dumps(settings), threshold, _now(), RUNNING,
                 token)).lastrowid)
        except BaseException:
            lock.release()
            path.unlink(missing_ok=True)
            raise
        self._held[int(run_id)] = (lock, path)
        return int(run_id)

    def reopen_run(self, run_id: int) -> None:
        """Mark a run as running again, written by this process (a resumed run appends to it).

        Refused while the run's own writer is still alive: two processes never write one run.
        """
        status, writer = self._db.execute("SELECT status, writer FROM runs WHERE id=?", (run_id,)).fetchone()
        if status == RUNNING and self._writer_alive(writer) is not False:
            raise StoreError(f"{self.path}: run {run_id} is still being written by another process")
        token, lock, path = self._hold()
        try:
            self._write(lambda db: db.execute("UPDATE runs SET status=?, ended=NULL, writer=? WHERE id=?",
                                              (RUNNING, token, run_id)))
        except BaseException:
            lock.release()
            path.unlink(missing_ok=True)
            raise
        self._held[run_id] = (lock, path)

    def finish_run(self, run_id: int, status: str = COMPLETED, summary: dict[str, Any] | None = None) -> None:
        """Write what is pending and the run's end: its status and its summary (counts by kind)."""
        pending, self._pending = self._pending, []

        def finish(db: sqlite3.Connection) -> None:
            self._insert(db, pending)
            db.execute("UPDATE runs SET status=?, ended=?, summary=? WHERE id=?",
                       (status, _now(), json.dumps(summary or {}), run_id))

        try:
            self._write(finish)
        except BaseException:
            self._pending = pending + self._pending
            raise
        finally:
            self._let_go(run_id)

    def recover_abandoned_runs(self) -> list[int]:
        """Mark runs left "running" by a writer that is gone (killed) as "interrupted"; their ids."""
        rows = self._db.execute("SELECT id, writer FROM runs WHERE status=?", (RUNNING,)).fetchall()
        recovered = []
        for run_id, token in rows:
            if run_id in self._held or self._writer_alive(token) is not False:
                continue                     # its writer is alive, or we cannot tell
            changed = self._write(lambda db, r=run_id, t=token: db.execute(
                "UPDATE runs SET status=?, ended=? WHERE id=? AND status=? AND writer IS ?",
                (INTERRUPTED, _now(), r, RUNNING, t)).rowcount)
            if changed:
                recovered.append(run_id)
        self._sweep_orphan_locks({token for _, token in rows})
        return recovered

    def _sweep_orphan_locks(self, in_use: set[str | None]) -> None:
        """Lock files no running run names and no process holds (a writer killed before its run row)."""
        if not self._locks_dir.is_dir():
            return
        for path in self._locks_dir.glob("*.lock"):
            if path.stem not in in_use and all(path != p for _, p in self._held.values()):
                self._writer_alive(path.stem)        # frees and removes it when nobody holds it

    def latest_run(self, source: str) -> Run | None:
        row = self._db.execute(f"SELECT {self._RUN_COLUMNS} FROM runs WHERE source=? ORDER BY id DESC LIMIT 1",
                               (item_key(source),)).fetchone()
        return self._run(row) if row else None

    def run(self, run_id: int) -> Run:
        row = self._db.execute(f"SELECT {self._RUN_COLUMNS} FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is None:
            raise StoreError(f"{self.path}: no run {run_id}")
        return self._run(row)

    def runs(self) -> list[Run]:
        return [self._run(r) for r in self._db.execute(f"SELECT {self._RUN_COLUMNS} FROM runs ORDER BY id DESC")]

    _RUN_COLUMNS = "id, source, kind, model, method, settings, threshold, started, ended, status, summary"

    @staticmethod
    def _run(row) -> Run:
        return Run(row[0], item_from_key(row[1]), row[2], item_from_key(row[3]), row[4], json.loads(row[5]),
                   *row[6:10], json.loads(row[10]) if row[10] else {})

    # -- items ------------------------------------------------------------------------------------
    def add(self, run_id: int, result: FrameResult, *, overlay: str | None = None) -> None:
        """Queue one result; it is written with the others at the next ``flush`` (or ``finish_run``)."""
        thumb, heat = thumbnails(result)
        h, w = result.image.shape[:2] if result.image is not None else (None, None)
        judged = result.verdict != ERROR
        self._pending.append(
            (run_id, item_key(result.item), result.index, _now(), _finite(result.score) if judged else None,
             _finite(result.normalised) if judged else None, result.verdict, result.error, w, h,
             None if overlay is None else item_key(overlay), thumb, heat, _finite(result.threshold)))

    @staticmethod
    def _insert(db: sqlite3.Connection, rows: Iterable[tuple]) -> None:
        db.executemany(
            "INSERT OR REPLACE INTO items (run_id, item, frame_index, inspected, score, normalised, verdict, error, "
            "width, height, overlay, thumb, heat, threshold) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def flush(self) -> None:
        """Write the queued results in one short transaction."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        try:
            self._write(lambda db: self._insert(db, pending))
        except BaseException:
            self._pending = pending + self._pending
            raise

    def recorded_items(self, run_id: int) -> set[str]:
        return {item_from_key(r[0]) for r in self._db.execute("SELECT item FROM items WHERE run_id=?", (run_id,))}

    _ORDER = {"score": "normalised DESC NULLS FIRST", "item": "item", "index": "frame_index"}
    _ITEM_COLUMNS = ("id, run_id, item, frame_index, inspected, score, normalised, verdict, error, width, height, "
                     "overlay, label, threshold")

    def items(self, run_id: int, *, order: str = "score", verdict: str | None = None,
              limit: int | None = None) -> list[ItemRow]:
        """The run's items, worst first by default (errors first: they need a look too)."""
        sql = f"SELECT {self._ITEM_COLUMNS} FROM items WHERE run_id=?"
        args: list[Any] = [run_id]
        if verdict is not None:
            sql += " AND verdict=?"
            args.append(verdict)
        sql += f" ORDER BY {self._ORDER[order]}, id"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return [ItemRow(r[0], r[1], item_from_key(r[2]), *r[3:11], None if r[11] is None else item_from_key(r[11]),
                        *r[12:]) for r in self._db.execute(sql, args)]

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
        self._write(lambda db: db.execute("UPDATE items SET label=?, labelled=? WHERE id=?",
                                          (label, _now() if label else None, item_id)))

    def prune(self, keep_days: float) -> int:
        """Forget the items of runs started more than ``keep_days`` ago, except those an operator
        labelled (they are retraining feedback), and the runs left empty; running runs are kept.
        Returns the number of items removed."""
        cutoff = (datetime.now(UTC) - timedelta(days=keep_days)).isoformat(timespec="milliseconds")

        def work(db: sqlite3.Connection) -> int:
            old = "SELECT id FROM runs WHERE started < ? AND status != 'running'"
            removed = db.execute(f"DELETE FROM items WHERE label IS NULL AND run_id IN ({old})", (cutoff,)).rowcount
            db.execute(f"DELETE FROM runs WHERE id IN ({old}) AND id NOT IN (SELECT DISTINCT run_id FROM items)",
                       (cutoff,))
            return removed

        return self._write(work)

    def labelled_files(self, label: str) -> list[Path]:
        """The files operators labelled ``label`` (OK or NG), across all runs, that still exist: the
        feedback offered to the next retraining.  An item's latest label counts."""
        if label not in LABELS:
            raise ValueError(f"label must be one of {LABELS}, got {label!r}")
        rows = self._db.execute(
            "SELECT item, label FROM items WHERE label IS NOT NULL ORDER BY labelled, id").fetchall()
        latest: dict[str, str] = {}
        for item, given in rows:
            latest[item] = given
        files = []
        for key, given in latest.items():
            path = Path(item_from_key(key))
            if given == label and path.is_file():
                files.append(path)
        return sorted(files)

    def close(self) -> None:
        """Write what is pending and close.  A run still held stays "running" until a later open finds
        its writer gone: closing is not finishing."""
        try:
            self.flush()
        finally:
            for run_id in list(self._held):
                self._let_go(run_id)
            self._db.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
