"""ONNX exports of model files: the graph, and a JSON description beside it.

``export_onnx`` writes ``NAME.onnx`` (the detector, backbone and head: ``inspector.detect.onnx_engine``)
and ``NAME.json``, which says everything another program needs to use the graph and that is kept
outside it on purpose — so the threshold can move without a new export:

- ``input``: tensor name, layout, dtype, value range, colour order, which axes are dynamic, the
  multiple the sides must be padded to (mirrored, bottom and right);
- ``tiling``: the whole region at ``scale`` (a fully convolutional model), or tiles of ``tile``
  frame pixels at ``stride``, each resized to the model's input side;
- ``score``: how an image's score follows from the outputs (a Gaussian of ``smoothing`` cells over
  the map, then its maximum; or the worst tile's score);
- ``threshold`` (raw) and ``normalisation`` (logistic: 0.5 at the threshold);
- ``graph_sha256``: the graph's checksum, and ``model``: the source model file's full metadata.

``load_onnx`` refuses a graph whose description is missing, damaged, or describes another graph
(its checksum differs): the engine never guesses a threshold or an input convention.

``cached_graph`` keeps one export per model (weights checksum and program version) in the data
folder, so that ``--engine auto`` runs a model file on ONNX Runtime without an export step.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..base.atomic import atomic_path
from ..base.checksum import file_sha256
from ..base.errors import InspectorError
from ..detect.onnx_engine import INPUT, GraphSpec, OnnxDetector, OnnxEngineError, export_graph
from ..detect.tensors import VALUE_RANGE
from .modelfile import calibration_of, check_metadata, load_model

log = logging.getLogger(__name__)

FORMAT = "inspector-onnx"
FORMAT_VERSION = 1
SUFFIX = ".onnx"


class OnnxFileError(InspectorError):
    """An ONNX export that cannot be written, or a graph and description that cannot be used."""


def description_path(graph: Path) -> Path:
    return graph.with_suffix(".json")


def describe(spec: GraphSpec, meta: dict[str, Any], graph_sha256: str) -> dict[str, Any]:
    """The JSON written beside a graph."""
    made_for = meta.get("inspection", {})
    calibration = calibration_of(meta)
    whole = spec.size is None
    dynamic = ["batch", "height", "width"] if whole else ["batch"]
    if whole:
        tiling = {"mode": "whole", "scale": made_for.get("scale", 1.0), "map_stride": spec.map_stride}
        score = {"from": "maps", "smoothing": made_for.get("smoothing", 0.0),
                 "rule": "Gaussian smoothing of the map by `smoothing` cells (sigma; 0: none), then its maximum "
                         "over the cells of the unpadded image"}
    else:
        tiling = {"mode": "tiles", "tile": made_for.get("tile"), "stride": made_for.get("stride"),
                  "input_size": spec.size,
                  "note": "tile and stride in frame pixels (null: the whole frame is one tile); each tile is "
                          "resized to input_size"}
        score = {"from": "scores", "rule": "the image's score is its worst tile's score"}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "program_version": __version__,
        "graph_sha256": graph_sha256,
        "graph": spec.to_dict(),
        "input": {"name": INPUT, "layout": "NCHW", "dtype": "float32", "value_range": list(VALUE_RANGE),
                  "colour_order": "grey" if spec.channels == 1 else "bgr", "channels": spec.channels,
                  "size": spec.size, "dynamic_axes": dynamic, "side_multiple": spec.side_multiple,
                  "padding": "mirror the bottom and right edges up to side_multiple; cut the outputs back"},
        "outputs": list(spec.outputs),
        "tiling": tiling,
        "score": score,
        "threshold": calibration.threshold,
        "normalisation": {"rule": "1 / (1 + exp(-(raw - threshold) / scale))", "threshold": calibration.threshold,
                          "scale": calibration.scale},
        "model": meta,
    }


def _graph_and_description(detector, meta: dict[str, Any], out: Path) -> Path:
    """Export to ``out`` and its description, both or neither."""
    description = description_path(out)
    with atomic_path(out) as tmp_graph:
        spec = export_graph(detector, tmp_graph)
        text = json.dumps(describe(spec, meta, file_sha256(tmp_graph)), indent=2)
        with atomic_path(description) as tmp_description:
            tmp_description.write_text(text, encoding="utf-8")
    return out


def export_onnx(model: Path, out: Path) -> Path:
    """Export a model file as ``out`` (``.onnx`` added if missing) and its JSON description.

    A model file that does not load (missing, damaged, tampered) is a ``ModelFileError``, and
    nothing is written; so is a method the exporter cannot trace.
    """
    if out.is_dir():
        raise OnnxFileError(f"{out} is a folder: give the ONNX file's name, e.g. {out / 'model.onnx'}")
    out = out if out.suffix == SUFFIX else out.with_name(out.name + SUFFIX)
    detector, meta = load_model(model, device="cpu")
    try:
        return _graph_and_description(detector, meta, out)
    except OnnxEngineError as exc:
        raise OnnxFileError(str(exc)) from exc


def load_onnx(path: Path, *, threads: int | None = None) -> tuple[OnnxDetector, dict[str, Any]]:
    """An exported graph and its description: the session as a detector, and the model's metadata."""
    path = Path(path)
    if not path.is_file():
        raise OnnxFileError(f"{path}: no such ONNX file")
    description = description_path(path)
    if not description.is_file():
        raise OnnxFileError(f"{path}: its description {description.name} is missing; it holds the threshold and the "
                            f"input convention, so the graph cannot be used without it (export the model again)")
    try:
        info = json.loads(description.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OnnxFileError(f"{description}: not a readable description ({exc})") from exc
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise OnnxFileError(f"{description}: not an Inspector ONNX description")
    if info.get("format_version") != FORMAT_VERSION:
        raise OnnxFileError(f"{description}: description version {info.get('format_version')!r} is not one this "
                            f"program reads ({FORMAT_VERSION})")
    if info.get("graph_sha256") != file_sha256(path):
        raise OnnxFileError(f"{path}: the graph does not match its description (its checksum differs): one of the "
                            f"two was changed or belongs to another export; export the model again")
    meta = info.get("model")
    try:
        check_metadata(meta if isinstance(meta, dict) else {})
        spec = GraphSpec.from_dict(info["graph"])
    except (ValueError, KeyError, TypeError) as exc:
        raise OnnxFileError(f"{description}: damaged description: {exc}") from exc
    if (spec.method, spec.size, spec.channels) != (meta["method"], meta["input"]["size"], meta["input"]["channels"]):
        raise OnnxFileError(f"{description}: the graph's method and input do not match the model it names")
    try:
        return OnnxDetector(path, spec, threads=threads), meta
    except OnnxEngineError as exc:
        raise OnnxFileError(str(exc)) from exc


def _intact(graph: Path) -> bool:
    """The graph and its description are there and agree (a cache entry a crash or a hand left damaged
    is made again)."""
    try:
        info = json.loads(description_path(graph).read_text(encoding="utf-8"))
        return isinstance(info, dict) and info.get("graph_sha256") == file_sha256(graph)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False


def cached_graph(model: Path, meta: dict[str, Any], detector, cache: Path) -> Path:
    """The export of this model in ``cache``, made now if it is not there yet (or is damaged).

    Keyed by the weights' checksum and the program's and PyTorch's versions: the same weights
    exported by another version of either may trace to another graph.  The folder can be deleted
    at any time.
    """
    key = f"{meta.get('weights_sha256', 'unchecked')[:24]}-{__version__}-torch{torch.__version__}"
    graph = cache / f"{key}{SUFFIX}"
    if not _intact(graph):
        log.info("exporting %s to ONNX for the onnx engine (once): %s", model, graph)
        try:
            _graph_and_description(detector, meta, graph)
        except OnnxEngineError as exc:
            raise OnnxFileError(str(exc)) from exc
    return graph

