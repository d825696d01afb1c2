"""ONNX export and the ONNX Runtime engine: every method's graph scores as PyTorch does, the
description beside it is required and checked, and bad model files write nothing."""

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import models
from inspector.app.engine import EngineError, load_detector
from inspector.cli import EXIT_BAD_INPUT, EXIT_OK, main
from inspector.detect.onnx_engine import OnnxDetector, export_graph
from inspector.detect.pipeline import Inspector
from inspector.frames.frame import Frame
from inspector.learn.datasets import list_images
from inspector.modelstore.onnx_files import OnnxFileError, description_path, export_onnx, load_onnx

DEMO = Path(__file__).resolve().parents[1] / "resources" / "demo-patchcore.safetensors"


def _built(name: str, channels: int) -> models.Detector:
    cls = models.get_method(name)
    detector = cls(size=None if cls.defaults.size is None else 32, channels=channels).eval()
    if hasattr(detector, "bank"):                          # the memory bank, EIDN's good patches
        detector.bank = torch.randn(200, detector.feature_dim, generator=torch.Generator().manual_seed(0))
    return detector


@pytest.mark.parametrize("name", models.method_names())
def test_every_method_exports_and_onnx_runtime_scores_as_torch(name, tmp_path):
    channels = 1 if name in ("ede", "eidn") else 3       # grey through a tile method and the RGB backbone
    detector = _built(name, channels)
    spec = export_graph(detector, tmp_path / "g.onnx")
    graph = OnnxDetector(tmp_path / "g.onnx", spec)
    assert (graph.size, graph.channels, graph.map_stride) == (detector.size, channels, detector.map_stride)
    # a batch size and (for a fully convolutional model) image sides other than the export's example
    shapes = [(3, 64, 96), (1, 128, 64)] if detector.fully_convolutional else [(5, 32, 32)]
    gen = torch.Generator().manual_seed(1)
    for batch, h, w in shapes:
        x = torch.rand(batch, channels, h, w, generator=gen) * 2 - 1
        with torch.no_grad():
            want = detector.infer(x)
        got = graph.infer(x)
        assert got.scores.shape == want.scores.shape
        torch.testing.assert_close(got.scores, want.scores.float(), rtol=1e-4, atol=1e-4)
        if want.maps is not None:
            torch.testing.assert_close(got.maps, want.maps.float(), rtol=1e-4, atol=1e-4)
        if want.embeddings is not None:
            torch.testing.assert_close(got.embeddings, want.embeddings.float(), rtol=1e-4, atol=1e-4)


def test_a_map_peak_score_exports_and_scores_as_torch(tmp_path):
    detector = models.create("agad", size=32, channels=1, score_sigma=2.0).eval()
    graph = OnnxDetector(tmp_path / "g.onnx", export_graph(detector, tmp_path / "g.onnx"))
    x = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        want = detector.infer(x)
    torch.testing.assert_close(graph.infer(x).scores, want.scores.float(), rtol=1e-4, atol=1e-5)


def test_both_engines_give_the_same_verdicts_on_real_images(shared_data):
    files = list_images(shared_data / "brickwork_crack" / "test" / "crack")[:4]
    files += list_images(shared_data / "brickwork_crack" / "test" / "good")[:4]
    torch_model, meta = load_detector(DEMO, device="cpu", engine="torch")
    onnx_model, _ = load_detector(DEMO, device="cpu", engine="auto")        # the CPU default
    assert isinstance(onnx_model, OnnxDetector) and not isinstance(torch_model, OnnxDetector)
    from inspector.frames.images import read_image
    from inspector.modelstore.modelfile import calibration_of

    results = []
    for model in (torch_model, onnx_model):
        inspector = Inspector(model, calibration_of(meta), scale=meta["inspection"]["scale"],
                              smoothing=meta["inspection"]["smoothing"])
        frames = [Frame(read_image(f), f.name, i, time.monotonic()) for i, f in enumerate(files)]
        results.append(inspector.inspect_batch(frames))
    for a, b in zip(*results, strict=True):
        assert b.error is None
        assert b.score == pytest.approx(a.score, rel=1e-4, abs=1e-4)
        np.testing.assert_allclose(b.heat_scaled, a.heat_scaled, atol=1e-4)
        assert a.verdict == b.verdict


def test_two_models_exported_at_once_from_two_threads_both_export(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    detectors = [_built("patchcore", 3), _built("ae", 3)]        # the live view's and batch review's
    with ThreadPoolExecutor(2) as pool:
        specs = list(pool.map(lambda i: export_graph(detectors[i], tmp_path / f"{i}.onnx"), range(2)))
    assert [s.method for s in specs] == ["patchcore", "ae"]
    assert all((tmp_path / f"{i}.onnx").stat().st_size > 0 for i in range(2))


def test_export_writes_the_graph_and_its_description(tmp_path):
    out = tmp_path / "exports" / "line3"
    assert main(["export", "--model", str(DEMO), str(out)]) == EXIT_OK
    graph = tmp_path / "exports" / "line3.onnx"
    info = json.loads(description_path(graph).read_text())
    meta_threshold = info["model"]["calibration"]["threshold"]
    assert info["threshold"] == meta_threshold == info["normalisation"]["threshold"]
    assert info["input"]["dynamic_axes"] == ["batch", "height", "width"]
    assert info["tiling"] == {"mode": "whole", "scale": 0.25, "map_stride": 4}
    assert info["score"]["smoothing"] == 4.0
    model, meta = load_onnx(graph)
    assert meta["method"] == "patchcore" and model.fully_convolutional


def test_the_onnx_engine_inspects_an_exported_graph_from_the_command_line(tmp_path, shared_data):
    graph = export_onnx(DEMO, tmp_path / "demo.onnx")
    folder = shared_data / "magnetic_tile" / "test" / "good"
    csv = tmp_path / "out.csv"
    assert main(["inspect", str(folder), "--model", str(graph), "--engine", "onnx", "--max-frames", "3",
                 "--db", str(tmp_path / "r.sqlite"), "--csv", str(csv)]) == EXIT_OK
    assert len(csv.read_text().splitlines()) == 4           # a header and three items
    assert main(["inspect", str(folder), "--model", str(graph), "--engine", "torch",
                 "--db", str(tmp_path / "r.sqlite")]) == EXIT_BAD_INPUT


def _tampered(tmp_path: Path) -> Path:
    data = bytearray(DEMO.read_bytes())
    data[-100] ^= 0xFF                                       # a byte of the weights
    path = tmp_path / "tampered.safetensors"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("bad", ["tampered", "unreadable", "missing"])
def test_export_of_a_bad_model_file_fails_and_writes_nothing(bad, tmp_path, capsys):
    model = {"tampered": lambda: _tampered(tmp_path),
             "unreadable": lambda: (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64) and
             tmp_path / "junk.safetensors",
             "missing": lambda: tmp_path / "nothing.safetensors"}[bad]()
    out = tmp_path / "out"
    out.mkdir()
    assert main(["export", "--model", str(model), str(out / "m.onnx")]) == EXIT_BAD_INPUT
    assert "error:" in capsys.readouterr().err
    assert list(out.iterdir()) == []


def test_a_graph_without_its_description_or_with_another_is_refused(tmp_path, capsys):
    graph = export_onnx(DEMO, tmp_path / "a.onnx")
    description = description_path(graph)
    info = json.loads(description.read_text())

    description.unlink()
    with pytest.raises(OnnxFileError, match="description a.json is missing"):
        load_onnx(graph)
    assert main(["inspect", str(tmp_path), "--model", str(graph), "--engine", "onnx",
                 "--db", str(tmp_path / "r.sqlite")]) == EXIT_BAD_INPUT
    assert "is missing" in capsys.readouterr().err

    description.write_text(json.dumps(info | {"graph_sha256": "0" * 64}))
    with pytest.raises(OnnxFileError, match="does not match its description"):
        load_onnx(graph)

    description.write_text(json.dumps(info | {"graph": info["graph"] | {"channels": 1}}))
    with pytest.raises(OnnxFileError, match="do not match the model"):
        load_onnx(graph)

    description.write_text("{not json")
    with pytest.raises(OnnxFileError, match="not a readable description"):
        load_onnx(graph)


def test_an_unknown_engine_is_refused():
    with pytest.raises(EngineError, match="unknown engine 'tensorrt'"):
        load_detector(DEMO, engine="tensorrt")


def test_the_engine_cache_exports_once_and_remakes_a_damaged_entry(tmp_path):
    from inspector.modelstore.modelfile import load_model
    from inspector.modelstore.onnx_files import cached_graph

    detector, meta = load_model(DEMO)
    graph = cached_graph(DEMO, meta, detector, tmp_path)
    made = graph.stat().st_mtime_ns
    assert cached_graph(DEMO, meta, detector, tmp_path) == graph and graph.stat().st_mtime_ns == made   # reused
    graph.write_bytes(graph.read_bytes()[:1000])                      # cut short
    cached_graph(DEMO, meta, detector, tmp_path)
    model, _ = load_onnx(graph)                                       # made again, whole
    assert model.fully_convolutional


def test_export_to_a_folder_asks_for_a_file_name(tmp_path, capsys):
    assert main(["export", "--model", str(DEMO), str(tmp_path)]) == EXIT_BAD_INPUT
    assert "is a folder" in capsys.readouterr().err and list(tmp_path.iterdir()) == []
