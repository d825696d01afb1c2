"""The model registry: every trained model as a numbered version, one of them active.

Kept in the user's data folder beside the results database::

    <data>/models/registry.json          the index: versions, the active one, activation history
    <data>/models/registry.lock          held while the index is read-modified-written
    <data>/models/v0007.safetensors      one model file per version (self-contained, checked on load)

A version's record repeats what an operator chooses by — method, backbone, settings, the data it
was trained on (folder, counts and a content hash), its validation figures, threshold, when and
from what it was made — so that listing never opens the weights.  The model file stays the truth:
``load`` goes through ``modelfile.load_model`` and its checks.

Every change is made under a file lock (``filelock``: an OS lock that dies with its process) and
the index is written to a temporary file and renamed into place, so two windows, or a window and
``train``, never corrupt it, and a killed process leaves the previous index whole.  A model file is
written into the folder before its record enters the index; a file without a record (a training
run killed in between) is ignored.  A record whose file was deleted by hand is listed as missing
and cannot be activated; the rest work on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from ..base.atomic import atomic_path
from ..base.errors import InspectorError
from ..base.paths import data_dir
from .modelfile import ModelFileError, read_metadata

INDEX = "registry.json"
LOCK = "registry.lock"
#: How long a change waits for another process holding the registry.
LOCK_TIMEOUT_S = 30.0


class RegistryError(InspectorError):
    """The registry cannot do what was asked; the message says why and what to do."""


def default_registry_dir() -> Path:
    return data_dir() / "models"


def data_hash(paths: Sequence[Path]) -> str:
    """A content hash of a training set: names, sizes and the first and last 64 KiB of each file
    (a whole-file hash of thousands of images would take longer than some trainings)."""
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        try:
            size = path.stat().st_size
            with path.open("rb") as f:
                head = f.read(65536)
                f.seek(max(0, size - 65536))
                tail = f.read(65536)
        except OSError:
            continue
        digest.update(f"{path.name}|{size}|".encode())
        digest.update(head)
        digest.update(tail)
    return digest.hexdigest()[:16]


@dataclass
class Version:
    """One registry entry (``registry.json``'s record of a model file)."""

    id: str
    file: str                                     # name inside the registry folder
    name: str
    method: str
    created: str
    backbone: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)        # folder, counts, content hash
    validation: dict[str, Any] = field(default_factory=dict)  # image AUROC, false-alarm rate, recall, ...
    threshold: float | None = None
    made_from: str = "train"                      # "train", "import FILE", "threshold of v0003", ...
    note: str = ""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Version:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class Listed:
    """A version as listed: its record, whether it is active, and why its file cannot be used (if so)."""

    version: Version
    active: bool
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self.version), "active": self.active, "problem": self.problem}


def _summary(meta: dict[str, Any]) -> dict[str, Any]:
    """What a version's record repeats of its model file's metadata."""
    training = meta.get("training", {}) if isinstance(meta.get("training"), dict) else {}
    hparams = meta.get("hparams", {}) if isinstance(meta.get("hparams"), dict) else {}
    counts = {k: training[k] for k in ("n_train_good", "n_train_defect", "n_pseudo_anomalies", "n_calibration_good")
              if k in training}
    data = {"folder": training.get("data"), **counts}
    if "data_hash" in training:
        data["hash"] = training["data_hash"]
    return {
        "method": meta["method"],
        "backbone": hparams.get("backbone"),
        "settings": {**hparams, **(meta.get("inspection") or {})},
        "data": data,
        "validation": dict(meta.get("metrics") or {}),
        "threshold": meta["calibration"]["threshold"],
    }


class Registry:
    """The registry in ``root`` (default: ``<data folder>/models``)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_registry_dir()

    # -- the index ---------------------------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """The index, locked for a read-modify-write; written back (atomically) when the block ends."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(self.root / LOCK), timeout=LOCK_TIMEOUT_S)
            lock.acquire()
        except Timeout:
            raise RegistryError(f"{self.root}: another Inspector has held the model registry for "
                                f"{LOCK_TIMEOUT_S:.0f} s; try again when it has finished") from None
        except OSError as exc:
            raise RegistryError(f"{self.root}: the model registry cannot be written here ({exc.strerror or exc}); "
                                f"choose a writable data folder (INSPECTOR_DATA_DIR)") from exc
        try:
            index = self._read()
            before = json.dumps(index, sort_keys=True)
            yield index
            if json.dumps(index, sort_keys=True) != before:
                self._write(index)
        finally:
            lock.release()

    def _read(self) -> dict[str, Any]:
        path = self.root / INDEX
        if not path.exists():
            return {"versions": [], "active": None, "history": []}
        try:
            index = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(index, dict) or not isinstance(index.get("versions"), list):
                raise ValueError("not a registry index")
        except (OSError, ValueError) as exc:
            raise RegistryError(f"{path}: the registry index is unreadable ({exc}); move it aside and "
                                f"re-import the model files with 'models import'") from exc
        index.setdefault("active", None)
        index.setdefault("history", [])
        return index

    def _write(self, index: dict[str, Any]) -> None:
        try:
            with atomic_path(self.root / INDEX) as tmp:
                tmp.write_text(json.dumps(index, indent=2), encoding="utf-8")
        except OSError as exc:
            raise RegistryError(f"{self.root}: the registry index cannot be written ({exc.strerror or exc})") from exc

    @staticmethod
    def _find(index: dict[str, Any], version_id: str) -> dict[str, Any]:
        for record in index["versions"]:
            if record["id"] == version_id:
                return record
        known = ", ".join(r["id"] for r in index["versions"]) or "none yet"
        raise RegistryError(f"no model version {version_id!r} in the registry (versions: {known})")

    @staticmethod
    def _next_id(index: dict[str, Any]) -> str:
        """A new version's id; never one a deleted version had (``last_number`` counts them all)."""
        numbers = [int(r["id"][1:]) for r in index["versions"] if r["id"][1:].isdigit()]
        number = max(max(numbers, default=0), int(index.get("last_number", 0))) + 1
        index["last_number"] = number
        return f"v{number:04d}"

    # -- reading -----------------------------------------------------------------------------------
    def path_of(self, version: Version) -> Path:
        return self.root / version.file

    def list(self) -> list[Listed]:
        """Every version, oldest first; a version whose file is gone or damaged says so."""
        index = self._read()
        out = []
        for record in index["versions"]:
            version = Version.from_dict(record)
            problem = None
            path = self.path_of(version)
            if not path.is_file():
                problem = f"its file {path} is missing (deleted by hand?)"
            out.append(Listed(version, version.id == index["active"], problem))
        return out

    def get(self, version_id: str) -> Version:
        return Version.from_dict(self._find(self._read(), version_id))

    def active(self) -> Version | None:
        index = self._read()
        return Version.from_dict(self._find(index, index["active"])) if index["active"] else None

    def is_active(self, version_id: str) -> bool:
        return self._read()["active"] == version_id

    def active_path(self) -> Path | None:
        version = self.active()
        return None if version is None else self.path_of(version)

    # -- changing ----------------------------------------------------------------------------------
    def add(self, model_file: Path, *, name: str | None = None, made_from: str = "train", note: str = "",
            activate: bool = False, move: bool = False) -> Version:
        """Register a model file (copied, or moved with ``move``) as a new version.

        The file is checked first (``read_metadata``) and copied in under a temporary name before its
        record enters the index.  The first version of an empty registry becomes active.
        """
        try:
            meta = read_metadata(model_file)
        except ModelFileError as exc:
            raise RegistryError(f"not registered: {exc}") from exc
        with self._locked() as index:
            version_id = self._next_id(index)
            file = f"{version_id}.safetensors"
            try:
                with atomic_path(self.root / file) as tmp:
                    (shutil.move if move else shutil.copyfile)(str(model_file), str(tmp))
            except OSError as exc:
                raise RegistryError(f"{self.root}: the model file cannot be stored ({exc.strerror or exc})") from exc
            created = meta.get("created") if isinstance(meta.get("created"), str) else _now()
            version = Version(id=version_id, file=file, name=name or f"{meta['method']} {created[:10]}",
                              created=created, made_from=made_from, note=note, **_summary(meta))
            index["versions"].append(asdict(version))
            if activate or index["active"] is None:
                self._activate(index, version_id)
        return version

    @staticmethod
    def _activate(index: dict[str, Any], version_id: str) -> None:
        if index["active"] and index["active"] != version_id:
            index["history"].append(index["active"])
        index["active"] = version_id

    def activate(self, version_id: str) -> Version:
        with self._locked() as index:
            version = Version.from_dict(self._find(index, version_id))
            path = self.path_of(version)
            try:
                read_metadata(path)
            except ModelFileError as exc:
                raise RegistryError(f"{version_id} cannot be activated: {exc}") from exc
            self._activate(index, version_id)
        return version

    def rollback(self) -> Version:
        """Make the previously active version active again (the one before the current)."""
        with self._locked() as index:
            known = {r["id"] for r in index["versions"]}
            history = [v for v in index["history"] if v in known and v != index["active"]]
            if not history:
                raise RegistryError("nothing to roll back to: no model was active before this one")
            previous = history[-1]
            index["history"] = history[:-1]
            index["active"] = previous
            return Version.from_dict(self._find(index, previous))

    def delete(self, version_id: str) -> None:
        """Remove a version and its file; the active version is refused."""
        with self._locked() as index:
            record = self._find(index, version_id)
            if index["active"] == version_id:
                raise RegistryError(f"{version_id} is the active model: activate another one before deleting it")
            index["versions"].remove(record)
            index["history"] = [v for v in index["history"] if v != version_id]
        try:
            (self.root / record["file"]).unlink(missing_ok=True)
        except OSError:
            pass          # the record is gone; a file left behind is ignored like any unlisted file

    def rename(self, version_id: str, name: str) -> Version:
        name = name.strip()
        if not name:
            raise RegistryError("a model's name cannot be empty")
        with self._locked() as index:
            record = self._find(index, version_id)
            record["name"] = name
            return Version.from_dict(record)

    def save_threshold(self, version_id: str, threshold: float, *, activate: bool = False) -> Version:
        """A new version: the model of ``version_id`` with its threshold changed (the weights untouched)."""
        from ..detect.calibration import Calibration
        from .modelfile import load_model, save_model

        if not math.isfinite(threshold):
            raise RegistryError(f"a threshold must be a finite number, got {threshold}")
        source = self.get(version_id)
        try:
            detector, meta = load_model(self.path_of(source))
        except ModelFileError as exc:
            raise RegistryError(f"{version_id}: {exc}") from exc
        calibration = dataclasses.replace(Calibration.from_dict(meta["calibration"]), threshold=float(threshold),
                                          rule="manual", target_false_alarm_rate=None)
        meta = {**meta, "calibration": calibration.to_dict(), "created": _now()}
        staged = self.root / f".threshold-{os.getpid()}-{version_id}.safetensors"
        try:
            save_model(staged, detector, meta)
            return self.add(staged, name=f"{source.name}, threshold {threshold:.4g}",
                            made_from=f"threshold of {version_id}", activate=activate, move=True)
        finally:
            staged.unlink(missing_ok=True)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
