"""Which engine runs a model: PyTorch (CPU or GPU), or ONNX Runtime (CPU).

- ``torch``: the model file's detector, on the chosen device.
- ``onnx``: its ONNX export, run by ONNX Runtime on the CPU.  A ``.onnx`` file (from ``export``)
  runs as it is, with the description beside it; a model file is exported once into the data
  folder's cache and run from there.
- ``auto`` (the default): ONNX Runtime when the model runs on the CPU — ``benchmarks/onnx_engine.py``
  measured it faster than eager PyTorch there for the default detector — and PyTorch on a GPU.
  If ONNX Runtime is missing or the model cannot be exported, PyTorch, with a line in the log.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from models import Detector

from ..base.errors import InspectorError
from ..base.paths import data_dir
from ..detect.device import resolve_device
from ..detect.onnx_engine import OnnxEngineError
from ..modelstore.modelfile import load_model
from ..modelstore.onnx_files import SUFFIX, OnnxFileError, cached_graph, load_onnx

log = logging.getLogger(__name__)

ENGINES = ("auto", "torch", "onnx")


class EngineError(InspectorError):
    """An engine that cannot run this model here."""


def onnx_cache() -> Path:
    return data_dir() / "onnx-cache"


def load_detector(model: str | Path, *, device: str = "auto", engine: str = "auto") -> tuple[Detector, dict[str, Any]]:
    """The model ready to score on the engine chosen, and its metadata (calibration, inspection settings)."""
    if engine not in ENGINES:
        raise EngineError(f"unknown engine {engine!r}: use {', '.join(ENGINES)}")
    model = Path(model)
    if model.suffix == SUFFIX:
        if engine == "torch":
            raise EngineError(f"{model} is an ONNX graph: it runs on the onnx engine (--engine onnx or auto)")
        if resolve_device(device).type != "cpu":
            raise EngineError("the onnx engine runs on the CPU: use --device cpu (or auto)")
        return load_onnx(model)
    where = resolve_device(device)
    detector, meta = load_model(model, device=where)
    if engine == "torch" or (engine == "auto" and where.type != "cpu"):
        return detector, meta
    if where.type != "cpu":
        raise EngineError("the onnx engine runs on the CPU: use --device cpu, or --engine torch for the GPU")
    try:
        graph, _ = load_onnx(cached_graph(model, meta, detector, onnx_cache()))
    except (OnnxFileError, OnnxEngineError) as exc:
        if engine == "onnx":
            raise
        log.warning("%s runs on PyTorch: %s", model, exc)
        return detector, meta
    return graph, meta
