"""A detector as an ONNX graph: exported from PyTorch, run by ONNX Runtime on the CPU.

The graph is the detector's ``infer``, backbone and head together: its input ``image`` is what
every detector takes — float32 (B, C, H, W) in [-1, 1], BGR (or grey, C = 1) — with a dynamic
batch, and dynamic H and W for a fully convolutional detector (multiples of ``side_multiple``).
Its outputs are the raw scores and maps in the method's units:

- a tile detector: ``scores`` (B,), and ``maps`` (B, 1, S, S) where the method has a map;
- a fully convolutional detector: ``maps`` (B, 1, h, w), one cell per ``map_stride`` pixels, and
  ``embeddings`` (B, l, h, w) for an embedding method.

Everything after the map — smoothing, the image's score (the map's maximum), normalisation and the
threshold — stays outside the graph, in the pipeline, so a threshold moves without a new export
(the file beside the graph records them: ``inspector.modelstore.onnx_files``).

``OnnxDetector`` presents a session as the detector the pipeline knows (``infer``, ``size``,
``map_stride``, ...), so tiling, whole-image passes, heat maps and verdicts are the same code for
both engines.  ``benchmarks/onnx_engine.py`` measured it faster than eager PyTorch on the CPU for
the default detector, so it is the CPU default (``--engine auto``).
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models import Detector, Inference
from models.features import map_max

from ..base.errors import InspectorError
from .scoring import evaluating

#: The operator set the graphs are written with (ONNX Runtime 1.17 and later read it).
OPSET = 17
INPUT = "image"


class OnnxEngineError(InspectorError):
    """ONNX Runtime is missing, or a graph cannot be exported or run."""


@dataclass(frozen=True)
class GraphSpec:
    """What the pipeline needs to know of a detector to feed its graph and read its outputs."""

    method: str
    size: int | None              # tile side, or None: fully convolutional
    channels: int
    side_multiple: int
    map_stride: int
    has_difference_map: bool
    outputs: tuple[str, ...]

    @classmethod
    def of(cls, detector: Detector) -> GraphSpec:
        outputs = ("maps",) if detector.fully_convolutional else ("scores",)
        if not detector.fully_convolutional and detector.has_difference_map:
            outputs += ("maps",)
        if _has_embeddings(detector):
            outputs += ("embeddings",)
        return cls(detector.method, detector.size, detector.channels, detector.side_multiple,
                   detector.map_stride, detector.has_difference_map, outputs)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"outputs": list(self.outputs)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GraphSpec:
        return cls(**(d | {"outputs": tuple(d["outputs"])}))


def _has_embeddings(detector: Detector) -> bool:
    side = detector.size or detector.side_multiple * 4
    with torch.no_grad(), evaluating(detector):
        probe = detector.infer(torch.zeros(1, detector.channels, side, side, device=detector.device))
    return probe.embeddings is not None


class _Graph(nn.Module):
    """The detector's ``infer`` as a module with plain tensor outputs, in ``spec.outputs`` order."""

    def __init__(self, detector: Detector, spec: GraphSpec) -> None:
        super().__init__()
        self.detector, self.spec = detector, spec

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.detector.infer(x)
        named = {"scores": out.scores, "maps": out.maps, "embeddings": out.embeddings}
        return tuple(named[name].float() for name in self.spec.outputs)


#: PyTorch's exporter keeps process-wide state (``torch.onnx.is_in_onnx_export``) and refuses a second
#: export while one runs: the window can load two models at once (the live view's and batch
#: review's), so exports take turns.
_EXPORTING = threading.Lock()


def export_graph(detector: Detector, path: Path) -> GraphSpec:
    """Write the detector (it must be on the CPU) as an ONNX graph at ``path``; its spec.

    Traced with PyTorch's TorchScript exporter: the graph is what one forward pass did, so the
    methods keep their inference free of data-dependent branches (a memory bank's search is one
    product in an export, not a loop over chunks).
    """
    if detector.device.type != "cpu":
        raise OnnxEngineError("a model is exported from the CPU: load it with device cpu")
    try:
        spec = GraphSpec.of(detector)
    except RuntimeError as exc:     # a detector that cannot score yet (an empty memory bank)
        raise OnnxEngineError(f"the {detector.method!r} model cannot be exported: {exc}") from exc
    side = detector.size or 8 * detector.side_multiple
    example = torch.zeros(2, detector.channels, side, side)
    dynamic = {INPUT: {0: "batch"}} | {name: {0: "batch"} for name in spec.outputs}
    if detector.fully_convolutional:
        dynamic[INPUT] |= {2: "height", 3: "width"}
        for name in spec.outputs:
            dynamic[name] |= {2: "rows", 3: "columns"}
    with _EXPORTING, evaluating(detector), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")     # the tracer's notes on shapes it records as constants
        try:
            torch.onnx.export(_Graph(detector, spec), (example,), str(path), input_names=[INPUT],
                              output_names=list(spec.outputs), dynamic_axes=dynamic, opset_version=OPSET,
                              dynamo=False)
        except Exception as exc:  # the exporter raises many kinds; the user gets one sentence
            raise OnnxEngineError(f"the {detector.method!r} model cannot be exported to ONNX: {exc}") from exc
    return spec


def _runtime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise OnnxEngineError("ONNX Runtime is not installed (pip install onnxruntime), so the onnx engine "
                              "is unavailable: use --engine torch") from exc
    return onnxruntime


class OnnxDetector(nn.Module):
    """An ONNX Runtime session in the place of a detector: same attributes, same ``infer``."""

    fully_convolutional: bool
    engine = "onnx"

    def __init__(self, path: Path, spec: GraphSpec, *, threads: int | None = None) -> None:
        super().__init__()
        ort = _runtime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.log_severity_level = 3          # errors only: the pipeline reports its own
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ONNX Runtime's own exception types
            raise OnnxEngineError(f"{path}: ONNX Runtime cannot load this graph ({exc})") from exc
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = tuple(o.name for o in self.session.get_outputs())
        if inputs != [INPUT] or outputs != spec.outputs:
            raise OnnxEngineError(f"{path}: the graph's inputs {inputs} and outputs {list(outputs)} are not the "
                                  f"ones its description names ({[INPUT]}, {list(spec.outputs)})")
        shape = self.session.get_inputs()[0].shape
        if len(shape) != 4 or shape[1] != spec.channels:
            raise OnnxEngineError(f"{path}: the graph takes input {shape}, its description says "
                                  f"{spec.channels} channel(s)")
        self.spec = spec
        self.method, self.size, self.channels = spec.method, spec.size, spec.channels
        self.fully_convolutional = spec.size is None
        self.has_difference_map = spec.has_difference_map

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def side_multiple(self) -> int:
        return self.spec.side_multiple

    @property
    def map_stride(self) -> int:
        return self.spec.map_stride

    def infer(self, x: torch.Tensor) -> Inference:
        feed = {INPUT: np.ascontiguousarray(x.detach().float().cpu().numpy())}
        out = dict(zip(self.spec.outputs, self.session.run(None, feed), strict=True))
        maps = torch.from_numpy(out["maps"]) if "maps" in out else None
        scores = torch.from_numpy(out["scores"]) if "scores" in out else map_max(maps)
        embeddings = torch.from_numpy(out["embeddings"]) if "embeddings" in out else None
        return Inference(scores=scores, maps=maps, embeddings=embeddings)
