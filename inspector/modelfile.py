"""Model files: a detector's weights and its metadata in one safetensors file.

The metadata (method, hyper-parameters, input size and channels, pixel scaling, calibration,
training summary, metrics, program version) is JSON stored in the safetensors header, so weights
and metadata can never be separated or mismatched, and the metadata reads without loading the
weights.  safetensors holds tensors only: loading a model file cannot run code.

Files are written to a temporary name in the same folder and renamed into place, so a crash or a
cancel never leaves half a model behind.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

import models
from models import Detector

from . import __version__
from .atomic import atomic_path
from .calibration import Calibration
from .tensors import VALUE_RANGE

FORMAT = "inspector-model"
FORMAT_VERSION = 1
SUFFIX = ".safetensors"
_HEADER_KEY = "inspector"


class ModelFileError(Exception):
    """A model file that cannot be used; the message says why and names the file."""


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
    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in detector.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={_HEADER_KEY: json.dumps(metadata)})
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of a model file, checked for format and version; the weights stay on disk."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"{path}: not an Inspector model file (unreadable safetensors: {exc})") from exc
    try:
        meta = json.loads(header[_HEADER_KEY])
    except (KeyError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path}: a safetensors file without Inspector metadata") from exc
    if meta.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not an Inspector model file")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: model format version {version} is newer than this program reads "
            f"({FORMAT_VERSION}); update Inspector (this is {__version__})")
    return meta


def load_model(path: str | Path, *, device: torch.device | str = "cpu",
               expected_method: str | None = None, expected_size: int | None = None
               ) -> tuple[Detector, dict[str, Any]]:
    """Rebuild the detector a model file describes and load its weights, on ``device``.

    Every way a file can be wrong ends in ``ModelFileError`` with a sentence for the user.
    """
    path = Path(path)
    meta = read_metadata(path)
    method = meta.get("method")
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
        detector = cls(size=size, channels=meta["input"]["channels"], **meta.get("hparams", {}))
        detector.load_state_dict(load_file(str(path)))
    except (TypeError, ValueError, RuntimeError, KeyError) as exc:
        raise ModelFileError(f"{path}: weights do not fit the {method!r} network they claim ({exc})") from exc
    detector.to(device).eval()
    return detector, meta


def calibration_of(meta: dict[str, Any]) -> Calibration:
    return Calibration.from_dict(meta["calibration"])
