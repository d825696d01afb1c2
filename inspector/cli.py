"""Command-line interface: inspect, train, eval, bench, bench-pipeline, models.  Never imports Qt.

Exit codes: 0 done; 1 an unexpected error (a bug; a run in progress is recorded as failed); 2 bad
input (arguments, data, source, model file, device: nothing is written); 3 an inspection run that
failed (a stream lost for good, a video file that could not be read to its end; the database
records why); 130 cancelled or interrupted by Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from . import __version__
from .base.errors import InspectorError

EXIT_OK, EXIT_UNEXPECTED, EXIT_BAD_INPUT, EXIT_RUN_FAILED, EXIT_CANCELLED = 0, 1, 2, 3, 130
#: Tile side for the live benchmark's 1280x720 frames (README, "Pipeline").
LIVE_TILE = 160
log = logging.getLogger("inspector")


class ProgressBar:
    """A one-line progress bar with ETA on stderr; plain periodic lines when stderr is not a TTY."""

    def __init__(self, stream=sys.stderr, interval: float = 0.2) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.interval = interval if self.tty else 10.0
        self.last = 0.0
        self.stage = None

    def __call__(self, p) -> None:
        now = time.monotonic()
        finished = p.total > 0 and p.done >= p.total
        if p.stage == self.stage and not finished and now - self.last < self.interval:
            return
        if p.stage != self.stage and self.stage is not None and self.tty:
            self.stream.write("\n")
        self.stage, self.last = p.stage, now
        eta = f" ETA {int(p.eta_s // 60):d}:{int(p.eta_s % 60):02d}" if p.eta_s is not None and not finished else ""
        extra = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in p.info.items())
        if p.total > 0:
            line = f"{p.stage:<10} [{'#' * int(p.done / p.total * 30):<30}] {p.done}/{p.total}{eta} {extra}"
        else:
            line = f"{p.stage:<10} {p.done} {extra}"
        line = line.rstrip()
        self.stream.write(("\r" + line) if self.tty else line + "\n")
        if finished and self.tty:
            self.stream.write("\n")
            self.stage = None
        self.stream.flush()


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError("must be in [0, 1)")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("must be a positive number")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError("must be a number of at least 0")
    return value


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError("expected seeds separated by commas, e.g. 0,1,2") from None
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError("each seed once")
    return seeds


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def parse_hparam(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError("expected KEY=VALUE")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _add_training_args(p: argparse.ArgumentParser) -> None:
    import models

    p.add_argument("--data", type=Path, required=True, help="data folder in the MVTec AD layout")
    p.add_argument("--method", required=True, metavar="M",
                   help=f"detection method: {', '.join(models.method_names())}, or default "
                        f"({models.DEFAULT_METHOD}: no labelled defects needed)")
    p.add_argument("--anomaly-fraction", type=_fraction, default=0.0, metavar="G",
                   help="share of labelled defects in the training set, G = a/(n+a), drawn from "
                        "DATA/train/defect; only for methods that learn from anomalies (default 0)")
    p.add_argument("--size", type=_positive_int, help="tile size in pixels (default: the method's own)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default="auto", help="auto (default: CUDA GPU if present), cpu, cuda, cuda:N")
    p.add_argument("--epochs", type=_positive_int, help="training epochs (default: the method's own)")
    p.add_argument("--steps-per-epoch", type=_positive_int, help="steps per epoch (default: the method's own)")
    p.add_argument("--batch-size", type=_positive_int, help="samples per step (default: the method's own)")
    p.add_argument("--flips", action="store_true",
                   help="augment training samples with random mirror images (the memory bank: cover each good "
                        "image's three mirror images too, for parts that may lie turned or mirrored)")
    p.add_argument("--time-budget", type=float, metavar="SECONDS",
                   help="stop training after this many seconds and keep what was learned")
    p.add_argument("--set", type=parse_hparam, action="append", default=[], metavar="KEY=VALUE", dest="hparams",
                   help="a method hyper-parameter, e.g. --set embedding_dim=8 (repeatable; see 'models')")
    p.add_argument("--false-alarm-rate", type=_fraction, default=0.01,
                   help="calibrate the threshold to this false-alarm rate on held-out goods (default 0.01)")
    p.add_argument("--scale", type=_positive_float, default=1.0,
                   help="methods on backbone features: resize images by this before the model sees them, in "
                        "training and inspection alike (default 1: native resolution)")
    p.add_argument("--smoothing", type=_non_negative_float, metavar="CELLS",
                   help="methods on backbone features: Gaussian smoothing of the anomaly map, in map cells, "
                        "before the image's score is taken (default: the method's own, chosen on validation "
                        "splits: patchcore 12, agad_features 12, ede_features 12, eidn 1)")
    p.add_argument("--backbone-weights", type=Path, metavar="FILE",
                   help="ImageNet weights for a torchvision backbone (--set backbone=wide_resnet50_2); "
                        "efficientnet_lite0's ship with Inspector")
    p.add_argument("--tile", type=_positive_int, metavar="N",
                   help="tile methods: train on N x N pixel tiles cut from the images, and inspect them so (the "
                        "model file keeps the tiling; default: each image whole, as one tile, at --size)")
    p.add_argument("--stride", type=_positive_int, metavar="N",
                   help="with --tile: the tile step in pixels (default: the tile size)")
    p.add_argument("--surface", default="parts", metavar="S",
                   help="the memory bank (patchcore): parts (default; castings, tiles, components), texture (a "
                        "fine repeating texture with thin defects: brick, fabric) or auto (fit both, keep the "
                        "one the labelled defects of --anomaly-fraction prefer)")


def _model_arg(text: str) -> Path:
    """A model file, or a registry version id (``v0003``) read as its file."""
    from .modelstore.registry import Registry, RegistryError

    if text[:1] == "v" and text[1:].isdigit() and not Path(text).exists():
        registry = Registry()
        try:
            return registry.path_of(registry.get(text))
        except RegistryError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return Path(text)


def _active_model() -> Path:
    from .modelstore.registry import Registry

    path = Registry().active_path()
    if path is None:
        raise InputError("no --model given and the model registry has no active model: train one, or give "
                         "--model FILE")
    return path


def _roi(text: str) -> tuple[int, int, int, int]:
    try:
        x, y, w, h = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("expected X,Y,WIDTH,HEIGHT in frame pixels") from None
    if w <= 0 or h <= 0 or x < 0 or y < 0:
        raise argparse.ArgumentTypeError("X and Y must be >= 0, WIDTH and HEIGHT > 0")
    return x, y, w, h


def _add_tiling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tile", type=_positive_int, metavar="N",
                   help="cut frames into N x N pixel tiles, each scored (default: each image whole, as one tile)")
    p.add_argument("--stride", type=_positive_int, metavar="N", help="tile step in pixels (default: the tile size)")
    p.add_argument("--roi", type=_roi, metavar="X,Y,W,H", help="inspect only this region of each frame")
    _add_inference_args(p)


def _add_inference_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (default: CUDA GPU if present), cpu, cuda, cuda:N")
    p.add_argument("--half", action="store_true", help="float16 inference on a CUDA GPU")
    p.add_argument("--engine", choices=("auto", "torch", "onnx"), default="auto",
                   help="auto (default: ONNX Runtime on the CPU, PyTorch on a GPU), torch, or onnx (ONNX Runtime, "
                        "CPU; also runs a .onnx file from 'export')")


def build_parser() -> argparse.ArgumentParser:
    from .frames.images import DEFAULT_MAX_PIXELS

    parser = argparse.ArgumentParser(
        prog="inspector", description="Visual anomaly inspection: train, evaluate and benchmark detectors.")
    parser.add_argument("--version", action="version", version=f"inspector {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train a detector on a data folder; add it to the model registry")
    _add_training_args(p)
    p.add_argument("--out", type=Path, help="also write the model file here (.safetensors)")
    p.add_argument("--name", help="the version's name in the registry (default: method and date)")
    p.add_argument("--activate", action="store_true",
                   help="make the new version the active model (the first version always is)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the checkpoint left by an interrupted run of the same command")

    p = sub.add_parser("retrain", help="the retraining wizard's service: train on folders of good parts (and "
                                       "defects), validate beside the active model, record a version")
    p.add_argument("--goods", type=Path, action="append", required=True, metavar="DIR",
                   help="a folder of good parts (repeatable)")
    p.add_argument("--defects", type=Path, action="append", default=[], metavar="DIR",
                   help="a folder of labelled defects (optional, repeatable)")
    p.add_argument("--feedback", action="store_true",
                   help="also take the items labelled OK / NG in batch and live review")
    p.add_argument("--method", default="patchcore",
                   help="patchcore (default), eidn, agad_features (given labelled defects) or ae")
    p.add_argument("--preset", default="balanced", help="fast, balanced (default) or accurate")
    p.add_argument("--surface", metavar="S",
                   help="for the memory bank: auto (default: fit both and keep the one the labelled defects "
                        "prefer; parts without defects), parts (castings, tiles, components) or texture (a "
                        "fine repeating texture with thin defects: brick, fabric, wood grain)")
    p.add_argument("--mirror-images", action="store_true",
                   help="for the memory bank: the parts may lie turned or mirrored (round castings, say), so it "
                        "learns the good samples' mirror images too; leave it off where a mirrored part is a defect")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (default: CUDA GPU if present), cpu, cuda, cuda:N")
    p.add_argument("--name", help="the version's name in the registry")
    p.add_argument("--activate", action="store_true", help="make the new version the active model")

    p = sub.add_parser("eval", help="score a data folder's test split with a model file")
    p.add_argument("--model", type=_model_arg, default=None, metavar="MODEL",
                   help="a model file, or a registry version (v0003); default: the registry's active model")
    p.add_argument("--data", type=Path, required=True, help="data folder in the MVTec AD layout")
    _add_inference_args(p)
    p.add_argument("--json", type=Path, metavar="OUT", help="write the figures as JSON")

    p = sub.add_parser("bench", help="train, calibrate and score in one run; print the figures")
    _add_training_args(p)
    p.add_argument("--seeds", type=_seeds, metavar="S,S,...",
                   help="run once per seed and report each figure's mean and standard deviation")
    p.add_argument("--protocol", choices=("test", "validation"), default="test",
                   help="score test/ (default), or a validation split cut from train/ (a fifth of the goods and "
                        "half of the defect pool) for choosing settings without looking at test/")
    p.add_argument("--json", type=Path, metavar="OUT", help="write the figures as JSON")

    p = sub.add_parser("inspect", help="inspect a folder, image, video file, camera or stream with a model file",
                       description="Inspect SOURCE: a folder (recursively), an image file, a video file, a camera "
                                   "index (0, 1, ...) or a stream URL (rtsp://, http://). Every result is recorded "
                                   "in the results database; anomalous items are saved as overlay images under --out.")
    p.add_argument("source", metavar="SOURCE", help="folder, image, video file, camera index or URL")
    p.add_argument("--model", type=_model_arg, default=None, metavar="MODEL",
                   help="a model file, or a registry version (v0003); default: the registry's active model")
    p.add_argument("--db", type=Path, default=None,
                   help="results database (SQLite; default: the one the window uses, in the user's data folder, "
                        "so command-line runs appear in batch review); runs are appended")
    p.add_argument("--out", type=Path, metavar="DIR", help="save overlay images of anomalous items here")
    p.add_argument("--report", type=Path, metavar="FILE.html", help="write a self-contained HTML report")
    p.add_argument("--csv", type=Path, metavar="FILE", help="write every item's result as CSV")
    _add_tiling_args(p)
    p.add_argument("--max-frames", type=_positive_int, metavar="N", help="stop after N items")
    p.add_argument("--max-megapixels", type=_positive_float, default=DEFAULT_MAX_PIXELS / 1e6, metavar="MP",
                   help=f"larger images are not decoded but recorded as errors, their size read from the header "
                        f"(default {DEFAULT_MAX_PIXELS / 1e6:g})")
    p.add_argument("--resume", action="store_true",
                   help="continue the last run on this folder in --db, skipping what it already recorded")

    p = sub.add_parser("bench-pipeline", help="measure folder and live throughput and latency of the pipeline")
    p.add_argument("--model", type=_model_arg, default=None, metavar="MODEL",
                   help="a model file, or a registry version (v0003); default: the registry's active model")
    p.add_argument("--folder", type=Path, required=True, help="a folder of images (read recursively)")
    _add_inference_args(p)
    p.add_argument("--live-tile", type=_positive_int, default=LIVE_TILE,
                   help=f"tile size for the live 1280x720 frames, in frame pixels (default {LIVE_TILE})")
    p.add_argument("--live-stride", type=_positive_int, help="tile stride for the live frames (default: the tile)")
    p.add_argument("--live-seconds", type=float, default=10.0, help="length of the live measurement (default 10)")
    p.add_argument("--camera-fps", type=float, default=60.0,
                   help="rate at which the simulated camera offers frames (default 60)")
    p.add_argument("--json", type=Path, metavar="OUT", help="write the figures as JSON")

    p = sub.add_parser("export", help="write a model as an ONNX graph, with a JSON of its threshold, score "
                                      "normalisation, input and tiling beside it",
                       description="Export MODEL (a model file or a registry version) as OUT.onnx and OUT.json. The "
                                   "graph holds the backbone and the head and outputs raw scores and maps; the "
                                   "threshold and normalisation stay outside it, in the JSON.")
    p.add_argument("out", type=Path, metavar="OUT", help="the ONNX file to write (.onnx is added if missing)")
    p.add_argument("--model", type=_model_arg, default=None, metavar="MODEL",
                   help="a model file, or a registry version (v0003); default: the registry's active model")
    p.add_argument("--format", choices=("onnx",), default="onnx", help="onnx (the only format)")

    p = sub.add_parser("models", help="the model registry (list, show, activate, rollback, delete, ...); "
                                      "with no action, the detection methods")
    p.add_argument("--show", type=Path, metavar="MODEL", help="print this model file's metadata")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    q = actions.add_parser("list", help="every version: id, name, method, created, figures, which is active")
    q.add_argument("--json", action="store_true", help="print a JSON array of versions")
    q = actions.add_parser("show", help="a version's record and its model file's metadata")
    q.add_argument("version")
    q = actions.add_parser("activate", help="make a version the active model")
    q.add_argument("version")
    actions.add_parser("rollback", help="make the previously active version active again")
    q = actions.add_parser("delete", help="remove a version and its file (not the active one)")
    q.add_argument("version")
    q = actions.add_parser("rename", help="give a version a new name")
    q.add_argument("version")
    q.add_argument("name")
    q = actions.add_parser("threshold", help="save a version with another threshold as a new version")
    q.add_argument("version")
    q.add_argument("value", type=float, help="the new threshold, in raw score units")
    q.add_argument("--activate", action="store_true", help="make the new version active")
    q = actions.add_parser("import", help="add a model file to the registry as a new version")
    q.add_argument("file", type=Path)
    q.add_argument("--name")
    q.add_argument("--activate", action="store_true", help="make it the active model")
    return parser


def _options(args: argparse.Namespace):
    from .app.jobs import TrainOptions

    return TrainOptions(data=args.data, method=args.method, anomaly_fraction=args.anomaly_fraction,
                        size=args.size, seed=args.seed, device=args.device, epochs=args.epochs,
                        steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size,
                        flips=args.flips, time_budget_s=args.time_budget, hparams=dict(args.hparams),
                        false_alarm_rate=args.false_alarm_rate, scale=args.scale, smoothing=args.smoothing,
                        backbone_weights=args.backbone_weights, protocol=getattr(args, "protocol", "test"),
                        surface=args.surface, tile=args.tile, stride=args.stride)


def _write_json(path: Path | None, data: dict[str, Any]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2, default=_jsonable) + "\n")


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _fmt(x: float | None, digits: int = 4) -> str:
    return "none" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _summary(result: dict[str, Any]) -> list[str]:
    lines = [f"method={result.get('method', '?')} data={result.get('data')} device={result.get('device', '?')}",
             f"test: {result['n_test_good']} good, {result['n_test_defect']} defective"]
    for label, value in result.get("auroc_per_type", {}).items():
        lines.append(f"  auroc {label:<14} {value:.4f}")
    lines.append(f"{_threshold_text(result)} false_alarm_rate={_fmt(result['false_alarm_rate'], 3)} "
                 f"recall={_fmt(result['recall'], 3)}")
    return lines


def _threshold_text(result: dict[str, Any]) -> str:
    """The calibrated threshold; a multi-seed summary has one per seed (``varies_by_seed``)."""
    if result["threshold"] is None and "runs" in result:
        return "thresholds=" + ",".join(f"{run['threshold']:.6g}" for run in result["runs"])
    return f"threshold={result['threshold']:.6g}"


def _report(result: dict[str, Any], json_path: Path | None) -> int:
    """Write the JSON, print a summary and the contract's last line (train_seconds for a bench)."""
    _write_json(json_path, result)
    print("\n".join(_summary(result)))
    train = f" train_seconds={result['train_seconds']:.1f}" if "train_seconds" in result else ""
    spread = ""
    if "seeds" in result:
        spread = (f" seeds={','.join(map(str, result['seeds']))} image_auroc_sd={result['image_auroc_sd']:.4f}"
                  + (f" pixel_auroc_sd={result['pixel_auroc_sd']:.4f}" if result.get("pixel_auroc_sd") is not None
                     else ""))
    print(f"image_auroc={result['image_auroc']:.4f} pixel_auroc={_fmt(result['pixel_auroc'])}{train} "
          f"score_ms_per_image={result['score_ms_per_image']:.3f}{spread}")
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    from .app.jobs import train_model
    from .modelstore.modelfile import SUFFIX, save_model
    from .modelstore.registry import Registry

    registry = Registry()
    out: Path | None = None
    if args.out is not None:
        out = args.out if args.out.suffix else args.out.with_suffix(SUFFIX)
    opts = _options(args)
    opts.checkpoint_path = (out.with_name(out.name + ".ckpt") if out is not None
                            else registry.root / f"train-{args.method}.ckpt")
    opts.resume = args.resume
    trained = train_model(opts, progress=ProgressBar())
    staged = out or registry.root / f".train-{os.getpid()}{SUFFIX}"
    save_model(staged, trained.detector, trained.metadata)
    try:
        version = registry.add(staged, name=args.name, activate=args.activate, move=out is None)
    finally:
        if out is None:
            staged.unlink(missing_ok=True)
    opts.checkpoint_path.unlink(missing_ok=True)
    t = trained.metadata["training"]
    active = " (active)" if registry.is_active(version.id) else ""
    where = f"wrote {out} and registered it" if out is not None else "registered"
    print(f"{where} as {version.id}{active}: {args.method}, {t['n_train_good']} good + {t['n_train_defect']} "
          f"labelled defects, {t['epochs_done']} epochs in {t['seconds']:.0f} s on {t['device']}, "
          f"threshold {trained.calibration.threshold:.6g} ({trained.calibration.rule})")
    return EXIT_OK


def cmd_retrain(args: argparse.Namespace) -> int:
    from .app.retrain import PRESETS, RetrainError, Samples, compare_active, register, retrain
    from .app.surfaces import describe_choice
    from .base.paths import data_dir, default_results_db
    from .modelstore.registry import Registry
    from .results.store import ResultStore

    if args.preset not in PRESETS:
        raise InputError(f"unknown preset {args.preset!r}: {', '.join(PRESETS)}")
    extra: dict[str, list[Path]] = {"OK": [], "NG": []}
    if args.feedback:
        if default_results_db().exists():
            with ResultStore(default_results_db()) as store:
                extra = {label: store.labelled_files(label) for label in extra}
        for label in extra:
            extra[label] += sorted((data_dir() / "feedback" / label).glob("*.png"))
    samples = Samples.from_folders(args.goods, args.defects, extra_goods=extra["OK"], extra_defects=extra["NG"])
    print(f"{len(samples.goods)} good samples, {len(samples.defects)} labelled defects", file=sys.stderr)
    registry = Registry()
    try:
        result = retrain(samples, method=args.method, preset=args.preset, seed=args.seed, device=args.device,
                         surface=args.surface, mirror_images=args.mirror_images, progress=ProgressBar())
    except RetrainError as exc:
        raise InputError(str(exc)) from None
    surface = describe_choice(result.trained.metadata["training"])
    if surface:
        print(surface, file=sys.stderr)
    mine = result.validation.figures()
    theirs = compare_active(result, registry)
    version = register(result, registry, name=args.name, activate=args.activate)

    def line(label: str, f: dict) -> str:
        parts = [f"false_alarm_rate={f['false_alarm_rate']:.3f}"]
        parts += [f"{k}={f[k]:.3f}" for k in ("recall", "image_auroc") if f[k] is not None]
        return f"{label}: " + " ".join(parts)

    print(line(f"new {version.id}", mine))
    if theirs is not None:
        print(line(f"active {theirs[0]}", theirs[1].figures()))
    print(f"recorded {version.id}" + (" (active)" if registry.is_active(version.id) else "")
          + f" in {result.seconds:.0f} s")
    return EXIT_OK


def cmd_eval(args: argparse.Namespace) -> int:
    from .app.inspection import InspectorSettings, load_inspector
    from .app.jobs import evaluate
    from .detect.device import device_name
    from .learn.datasets import discover

    inspector, meta = load_inspector(args.model, InspectorSettings(device=args.device, half=args.half,
                                                                   engine=args.engine))
    dataset = discover(args.data, need_train=False, need_test=True)
    result = {"model": str(args.model), "method": meta["method"], "data": str(args.data),
              "device": device_name(inspector.detector.device)}
    result |= evaluate(inspector, dataset.test, root=args.data, progress=ProgressBar())
    return _report(result, args.json)


def cmd_bench(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .app.jobs import bench, summarise_seeds

    opts = _options(args)
    if not args.seeds:
        _, result = bench(opts, progress=ProgressBar())
        return _report(result, args.json)
    runs = []
    for seed in args.seeds:
        _, run = bench(replace(opts, seed=seed), progress=ProgressBar())
        print(f"seed {seed}: image_auroc={run['image_auroc']:.4f} pixel_auroc={_fmt(run['pixel_auroc'])}",
              file=sys.stderr)
        runs.append(run)
    return _report(summarise_seeds(runs), args.json)


def _source_key(source: str) -> str:
    """Files and folders by their absolute path (so that --resume finds them from anywhere)."""
    path = Path(source)
    return str(path.resolve()) if path.exists() else source


def _resume_point(db: Path, source_key: str, model_key: str):
    """(run id, items it recorded) of the last run on this source, or (None, set()) to start anew."""
    from .results.store import ResultStore

    if not db.is_file():
        print(f"no results database at {db}: starting a new run", file=sys.stderr)
        return None, set()
    with ResultStore(db) as store:
        previous = store.latest_run(source_key)
        if previous is None:
            print(f"no earlier run on {source_key} in {db}: starting a new run", file=sys.stderr)
            return None, set()
        if previous.model != model_key:
            raise InputError(f"the last run on {source_key} used {previous.model}; resume it with that "
                             f"model, or start a new run without --resume")
        return previous.id, store.recorded_items(previous.id)


def cmd_inspect(args: argparse.Namespace) -> int:
    import numpy as np

    from .app.inspection import InspectorSettings, load_inspector, run_inspection, run_settings, source_kind
    from .base.paths import default_results_db
    from .detect.calibration import fit_warning
    from .frames.sources import FolderSource, open_source
    from .results.report import write_csv, write_html
    from .results.store import ResultStore

    for path, what in ((args.csv, "--csv"), (args.report, "--report")):
        if path is not None and path.is_dir():
            raise InputError(f"{what} {path} is a folder: give a file name")
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise InputError(f"--out {args.out} is a file: give a folder for the overlays")
    settings = InspectorSettings(tile=args.tile, stride=args.stride, roi=args.roi, device=args.device,
                                 half=args.half, engine=args.engine)
    inspector, meta = load_inspector(args.model, settings)
    if inspector.detector.fully_convolutional and (args.tile or args.stride):
        raise InputError(f"{args.model} inspects each frame whole at its own scale: --tile and --stride apply "
                         f"to tile models only")
    db = args.db or default_results_db()
    source_key, model_key = _source_key(args.source), str(args.model.resolve())
    run_id, skip = _resume_point(db, source_key, model_key) if args.resume else (None, set())
    # The source opens before the database: a source that does not open leaves nothing behind.
    source = open_source(source_key, skip=skip, max_pixels=round(args.max_megapixels * 1e6),
                         on_status=lambda s: print(f"{source_key}: {s.describe()}", file=sys.stderr))
    if args.resume and not isinstance(source, FolderSource):
        source.close()
        raise InputError("--resume continues folder runs only")
    try:
        store = ResultStore(db)
    except BaseException:
        source.close()
        raise
    with store:
        if run_id is None:
            run_id = store.start_run(source=source_key, kind=source_kind(source), model=model_key,
                                     method=meta["method"], settings=run_settings(inspector, settings),
                                     threshold=inspector.threshold)
        else:
            store.reopen_run(run_id)
            print(f"resuming run {run_id}: {len(skip)} items already recorded, {source.total} to go",
                  file=sys.stderr)
        summary = run_inspection(inspector, source, store, run_id, out_dir=args.out, max_frames=args.max_frames,
                                 progress=ProgressBar())
        for path, write in ((args.csv, write_csv), (args.report, write_html)):
            if path is not None:
                print(f"wrote {write(store, run_id, path)}")
        counts = store.counts(run_id)
        misfit = fit_warning(np.array([r.normalised for r in store.items(run_id) if r.normalised is not None]))
    if misfit:
        print(f"warning: {misfit}", file=sys.stderr)
    extra = "".join(f", {n} frames {what}" for n, what in ((summary.dropped, "dropped"),
                                                          (summary.frames_lost, "lost")) if n)
    print(f"run {run_id} in {db}: {summary.status}{extra}")
    print(summary.accounting())
    print(f"items={sum(counts.values())} anomalous={counts['NG']} errors={counts['ERROR']} "
          f"items_per_second={summary.items_per_second:.2f}")
    if summary.status == "interrupted":
        return EXIT_CANCELLED
    return EXIT_RUN_FAILED if summary.failed else EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from .modelstore.onnx_files import description_path, export_onnx

    graph = export_onnx(args.model, args.out)
    print(f"wrote {graph} ({graph.stat().st_size / 2**20:.1f} MB) and {description_path(graph)}")
    return EXIT_OK


def cmd_bench_pipeline(args: argparse.Namespace) -> int:
    from .app.pipeline_bench import LiveSettings, bench_pipeline

    live = LiveSettings(tile=args.live_tile, stride=args.live_stride, seconds=args.live_seconds,
                        camera_fps=args.camera_fps)
    result = bench_pipeline(args.model, args.folder, device=args.device, half=args.half, engine=args.engine,
                            live=live, progress=ProgressBar())
    _write_json(args.json, result)
    for key in ("model", "method", "folder", "n_files", "device", "engine", "live_tile", "live_tiles_per_frame",
                "live_scale", "live_frames", "live_dropped", "overlay_ms"):
        print(f"{key}={result[key]}")
    print(f"folder_items_per_s={result['folder_items_per_s']:.2f} "
          f"decode_only_items_per_s={result['decode_only_items_per_s']:.2f} ratio={result['ratio']:.3f} "
          f"live_fps={result['live_fps']:.2f} live_latency_p50_ms={result['live_latency_p50_ms']:.1f} "
          f"live_latency_p95_ms={result['live_latency_p95_ms']:.1f} device={result['device_tag']}")
    return EXIT_OK


def _figures(version) -> str:
    v = version.validation
    parts = [f"{label} {v[key]:.3f}" for key, label in (("image_auroc", "AUROC"), ("false_alarm_rate", "FAR"),
                                                          ("recall", "recall")) if isinstance(v.get(key), float)]
    return ", ".join(parts) or "no figures"


def cmd_registry(args: argparse.Namespace) -> int:
    from .modelstore.modelfile import read_metadata
    from .modelstore.registry import Registry

    registry = Registry()
    if args.action == "list":
        listed = registry.list()
        if args.json:
            print(json.dumps([item.to_dict() for item in listed], indent=2))
            return EXIT_OK
        if not listed:
            print(f"no models in the registry ({registry.root}); 'train' adds one")
        for item in listed:
            v = item.version
            mark = "*" if item.active else " "
            print(f"{mark} {v.id}  {v.name:<28} {v.method:<9} {v.created[:16]:<16}  {_figures(v)}"
                  + (f"  [{item.problem}]" if item.problem else ""))
        return EXIT_OK
    if args.action == "show":
        version = registry.get(args.version)
        record = {"record": next(i.to_dict() for i in registry.list() if i.version.id == version.id)}
        record["model_file"] = read_metadata(registry.path_of(version))
        print(json.dumps(record, indent=2))
        return EXIT_OK
    if args.action == "activate":
        version = registry.activate(args.version)
        print(f"active: {version.id} {version.name}")
    elif args.action == "rollback":
        version = registry.rollback()
        print(f"rolled back; active: {version.id} {version.name}")
    elif args.action == "delete":
        registry.delete(args.version)
        print(f"deleted {args.version}")
    elif args.action == "rename":
        version = registry.rename(args.version, args.name)
        print(f"{version.id} is now named {version.name!r}")
    elif args.action == "threshold":
        version = registry.save_threshold(args.version, args.value, activate=args.activate)
        print(f"saved {version.id} ({version.name})" + (", active" if registry.is_active(version.id) else ""))
    elif args.action == "import":
        version = registry.add(args.file, name=args.name, made_from=f"import {args.file}", activate=args.activate)
        print(f"imported {args.file} as {version.id}" + (" (active)" if registry.is_active(version.id) else ""))
    return EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    import models

    from .modelstore.modelfile import read_metadata

    if args.action is not None:
        return cmd_registry(args)
    if args.show:
        print(json.dumps(read_metadata(args.show), indent=2))
        return EXIT_OK
    for name in models.method_names():
        cls = models.get_method(name)
        doc = (sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[0]
        d = cls.defaults
        default = " (the default)" if name == models.DEFAULT_METHOD else ""
        print(f"{name:<6} {doc}{default}")
        if d.size is None:
            print("       training: whole images at --scale (default 1), on a frozen backbone's features"
                  + ("; fitted in one pass, no gradient steps" if cls.gradient_free else "")
                  + f"; learns from anomalies: {'yes' if cls.uses_anomalies else 'no'}")
        else:
            print(f"       training: size={d.size} epochs={d.epochs} steps_per_epoch={d.steps_per_epoch} "
                  f"batch_size={d.batch_size}; learns from anomalies: {'yes' if cls.uses_anomalies else 'no'}")
        print("       settings (--set): " + " ".join(f"{k}={'auto' if v is None else v}"
                                                   for k, v in cls.hparam_defaults().items()))
    return EXIT_OK


COMMANDS = {"train": cmd_train, "retrain": cmd_retrain, "eval": cmd_eval, "bench": cmd_bench, "models": cmd_models,
            "inspect": cmd_inspect, "bench-pipeline": cmd_bench_pipeline, "export": cmd_export}


class InputError(InspectorError):
    """A combination of options or inputs that cannot work; the message says what to do instead."""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.command is None:
        parser.print_help()
        print("\n'python main.py' with no command opens the desktop window.")
        return EXIT_OK

    import models

    from .learn.training import TrainingCancelled

    try:
        if hasattr(args, "model") and args.model is None:
            args.model = _active_model()
        return COMMANDS[args.command](args)
    except (InspectorError, models.UnknownMethodError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (KeyboardInterrupt, TrainingCancelled):
        training = args.command in ("train", "bench")
        print("\ncancelled" + (": no model file was written" if training else ""), file=sys.stderr)
        return EXIT_CANCELLED
    except Exception as exc:  # a bug: say so in one line (the traceback with -v); a run records it as failed
        log.info("unexpected error", exc_info=True)
        print(f"error: unexpected {type(exc).__name__}: {exc} (a bug; -v shows where)", file=sys.stderr)
        return EXIT_UNEXPECTED
