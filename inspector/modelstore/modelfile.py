"""Model files: a detector's weights and its metadata in one safetensors file.

The metadata (method, hyper-parameters, input size and channels, pixel scaling, calibration,
training summary, metrics, program version, and a SHA-256 of the weights) is JSON stored in the
safetensors header, so weights and metadata can never be separated or mismatched, and the
metadata reads without loading the weights.  safetensors holds tensors only: loading a model file
cannot run code.

A file is trusted only as far as it checks out: weights whose checksum differs from the one
recorded (flipped bytes, a file edited by hand) or that hold NaN or infinity are refused, and so
is metadata that lacks a key or holds a value that cannot work (a NaN threshold).  Every defect
is a ``ModelFileError`` with a sentence for the user, never a traceback.

Files are written to a temporary name in the same folder and renamed into place, so a crash or a
cancel never leaves half a model behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

import models
from models import Detector

from .. import __version__
from ..base.atomic import atomic_path
from ..base.errors import InspectorError
from ..detect.calibration import Calibration
from ..detect.tensors import VALUE_RANGE

log = logging.getLogger(__name__)

FORMAT = "inspector-model"
#: 2: the weights' SHA-256 is recorded and checked.  Files of version 1 load without that check.
FORMAT_VERSION = 2
SUFFIX = ".safetensors"
_HEADER_KEY = "inspector"


class ModelFileError(InspectorError):
    """A model file that cannot be used; the message says why and names the file."""


def weights_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors' names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _non_finite(tensors: dict[str, torch.Tensor]) -> list[str]:
    return [name for name, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def build_metadata(detector: Detector, calibration: Calibration, *, training: dict[str, Any],
                   metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "program_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "method": detector.method,
        "hparams": detector.hparams(),
        "input": {"size": detector.size, "channels": detector.channels,
                  "colour_order": "grey" if detector.channels == 1 else "bgr",
                  "value_range": list(VALUE_RANGE)},
        "calibration": calibration.to_dict(),
        "training": training,
        "metrics": metrics or {},
    }


def save_model(path: str | Path, detector: Detector, metadata: dict[str, Any]) -> Path:
    """Write the model file atomically; the weights' checksum goes into the metadata written."""
    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in detector.state_dict().items()}
    bad = _non_finite(tensors)
    if bad:
        raise ModelFileError(f"{path}: not written: the weights hold NaN or infinity ({', '.join(bad[:3])}); "
                             f"training diverged")
    metadata = {**metadata, "format_version": FORMAT_VERSION, "weights_sha256": weights_checksum(tensors)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={_HEADER_KEY: json.dumps(metadata)})
    return path


def _require(meta: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str = "") -> Any:
    value = meta.get(key)
    if value is None:
        raise ValueError(f"its metadata lacks '{where}{key}'")
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ValueError(f"its metadata's '{where}{key}' is not valid ({value!r})")
    return value


def check_metadata(meta: dict[str, Any]) -> None:
    """Every key the program relies on, present and usable; ValueError with the first defect."""
    _require(meta, "method", str)
    inp = _require(meta, "input", dict)
    if "size" not in inp:
        raise ValueError("its metadata lacks 'input.size'")
    size = inp["size"]        # None: a fully convolutional model (any size)
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
        raise ValueError(f"its input size is not valid ({size!r})")
    if _require(inp, "channels", int, "input.") not in (1, 3):
        raise ValueError(f"its input has {inp['channels']} channels (1 or 3 expected)")
    if not isinstance(meta.get("hparams", {}), dict):
        raise ValueError("its metadata's 'hparams' is not a table of settings")
    Calibration.from_dict(_require(meta, "calibration", dict))
    made_for = meta.get("inspection", {})
    if not isinstance(made_for, dict):
        raise ValueError("its metadata's 'inspection' is not a table of settings")
    for key in ("tile", "stride"):
        value = made_for.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"its recommended {key} is not a positive whole number ({value!r})")
    for key, positive in (("scale", True), ("smoothing", False)):
        if key not in made_for:
            continue
        value = made_for[key]
        if (isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
                or value < 0 or (positive and value == 0)):
            raise ValueError(f"its inspection {key} is not a valid number ({value!r})")


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of a model file, checked for format, version and completeness; the weights stay on disk."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"{path}: not an Inspector model file (unreadable safetensors: {exc})") from exc
    try:
        meta = json.loads(header[_HEADER_KEY])
    except (KeyError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path}: a safetensors file without Inspector metadata") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not an Inspector model file")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ModelFileError(f"{path}: model file without a valid format version ({version!r})")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: model format version {version} is newer than this program reads "
            f"({FORMAT_VERSION}); update Inspector (this is {__version__})")
    try:
        check_metadata(meta)
    except ValueError as exc:
        raise ModelFileError(f"{path}: damaged model file: {exc}") from exc
    return meta


def _check_weights(path: Path, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    recorded = meta.get("weights_sha256")
    if meta["format_version"] >= 2:
        if not isinstance(recorded, str):
            raise ModelFileError(f"{path}: damaged model file: its metadata lacks 'weights_sha256'")
        if weights_checksum(tensors) != recorded:
            raise ModelFileError(f"{path}: the weights do not match their checksum: the file is damaged "
                                 f"(or was changed after it was written); use another copy or train again")
    else:
        log.warning("%s: written by an older Inspector: its weights carry no checksum", path)
    bad = _non_finite(tensors)
    if bad:
        raise ModelFileError(f"{path}: the weights hold NaN or infinity ({', '.join(bad[:3])}"
                             f"{' …' if len(bad) > 3 else ''}): the model cannot score; train again")


def load_model(path: str | Path, *, device: torch.device | str = "cpu",
               expected_method: str | None = None, expected_size: int | None = None
               ) -> tuple[Detector, dict[str, Any]]:
    """Rebuild the detector a model file describes and load its checked weights, on ``device``.

    Every way a file can be wrong ends in ``ModelFileError`` with a sentence for the user.
    """
    path = Path(path)
    meta = read_metadata(path)
    method = meta["method"]
    if expected_method is not None and method != expected_method:
        raise ModelFileError(f"{path}: holds a {method!r} model, expected {expected_method!r}")
    size = meta["input"]["size"]
    if expected_size is not None and size != expected_size:
        raise ModelFileError(f"{path}: model input size is {size}, expected {expected_size}")
    try:
        cls = models.get_method(method)
    except models.UnknownMethodError as exc:
        raise ModelFileError(f"{path}: {exc}") from exc
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"{path}: the weights cannot be read ({exc})") from exc
    _check_weights(path, meta, tensors)
    try:
        hparams = {**cls.legacy_hparams, **meta.get("hparams", {})}
        detector = cls(size=size, channels=meta["input"]["channels"], **hparams)
        detector.load_state_dict(tensors)
    except (TypeError, ValueError, RuntimeError, KeyError) as exc:
        raise ModelFileError(f"{path}: weights do not fit the {method!r} network they claim ({exc})") from exc
    detector.to(device).eval()      # a loaded model is for inference; training code switches it back
    return detector, meta


def calibration_of(meta: dict[str, Any]) -> Calibration:
    return Calibration.from_dict(meta["calibration"])
