"""The fault suite: hostile inputs made on the spot, run through the real command line.

    python -m inspector.faults [--workdir DIR] [--big-side 20000] [--big-count 4] [--keep]

Each scenario runs ``python -m inspector ...`` in a child process, as an operator would, and checks
what it leaves behind:

- a folder of hostile entries (truncated, empty and mislabelled files, a PNG whose header claims
  100000 x 100000 pixels, a GIF, names that are not UTF-8, a path longer than the OS allows, broken
  and looping links, a FIFO, a socket, unreadable files and folders): every entry is accounted
  for — scored, an ERROR row, or skipped with a reason — and nothing crashes;
- damaged model files (NaN weights, flipped bytes, a missing metadata key, a NaN threshold, a cut-
  off file) and a damaged training checkpoint: refused with exit 2 and a sentence;
- two ``inspect`` runs writing to one database at once: both finish with every row;
- a writer killed mid-run: the next open marks its run "interrupted", and ``--resume`` finishes it
  without losing or re-scoring an item, each keeping its index;
- a damaged and a truncated video file: the run ends "failed" with the frames lost counted;
- a missing source, an empty folder, a camera that is not there: exit 2, no database created, no
  OpenCV chatter;
- large images with ``--out``: the peak memory of the process.

The last line: ``files=<n> accounted=<k> crashes=<c> rows_lost=<r> writers_ok=<w>/2
nan_refused=<y|n> peak_rss_mb=<m>``.  The models here are untrained networks with a calibration:
the suite tests how the program survives bad input, not how well it detects.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

import models

from .detect.calibration import calibrate
from .modelstore.modelfile import build_metadata, save_model
from .results.store import ResultStore

#: Exit codes the command line documents; anything else, or a traceback, is a crash.
DOCUMENTED_EXITS = {0, 2, 3, 130}


@dataclass
class Tally:
    """What the scenarios found, summed into the last line."""

    files: int = 0
    accounted: int = 0
    crashes: int = 0
    rows_lost: int = 0
    writers_ok: int = 0
    nan_refused: bool = True
    peak_rss_mb: float = 0.0
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"files={self.files} accounted={self.accounted} crashes={self.crashes} rows_lost={self.rows_lost} "
                f"writers_ok={self.writers_ok}/2 nan_refused={'y' if self.nan_refused else 'n'} "
                f"peak_rss_mb={self.peak_rss_mb:.0f}")


@dataclass
class Ran:
    args: list[str]
    code: int
    out: str
    err: str
    peak_rss_mb: float = 0.0

    @property
    def crashed(self) -> bool:
        return self.code not in DOCUMENTED_EXITS or "Traceback" in self.err or "Traceback" in self.out


def run_cli(*args: str, timeout: float = 900.0) -> Ran:
    """``python -m inspector ARGS`` in a child process; its exit code, output and peak memory."""
    command = [sys.executable, "-m", "inspector", *args]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(command, stdout=out, stderr=err, text=True)
        deadline = time.monotonic() + timeout
        rusage = None
        while rusage is None:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                rusage, code = usage, os.waitstatus_to_exitcode(status)
                child.returncode = code
            elif time.monotonic() > deadline:
                child.kill()
                child.wait()
                code, rusage = -9, None
                break
            else:
                time.sleep(0.05)
        out.seek(0)
        err.seek(0)
        peak = rusage.ru_maxrss / 1024.0 if rusage is not None else 0.0   # KiB on Linux
        return Ran(list(args), code, out.read(), err.read(), peak)


# -- inputs ----------------------------------------------------------------------------------------
def texture_image(rng: np.random.Generator, h: int = 96, w: int = 128) -> np.ndarray:
    base = rng.normal(128, 10, (max(2, h // 8), max(2, w // 8), 1)).astype(np.float32)
    img = cv2.resize(base, (w, h), interpolation=cv2.INTER_CUBIC)[:, :, None] + rng.normal(0, 3, (h, w, 1))
    return np.clip(np.concatenate([img * 0.9, img, img * 1.05], axis=2), 0, 255).astype(np.uint8)


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 65536, 9))
            + chunk(b"IEND", b""))


def _long_path_file(root: Path) -> None:
    """A file at the bottom of folders whose full path is longer than the OS allows (PATH_MAX)."""
    fd = os.open(root, os.O_RDONLY)
    try:
        for _ in range(24):                       # 24 x 201 characters > 4096
            os.mkdir("d" * 200, dir_fd=fd)
            sub = os.open("d" * 200, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = sub
        ok, png = cv2.imencode(".png", np.full((8, 8, 3), 128, np.uint8))
        leaf = os.open("deep.png", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(leaf, png.tobytes())
        os.close(leaf)
    finally:
        os.close(fd)


def make_hostile_folder(root: Path, seed: int = 0) -> int:
    """Every kind of entry that has made a folder run crash or lose an item; returns how many entries
    it made (a folder that cannot be listed counts as one)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    good = texture_image(rng)
    made = 0

    def put(name: str | bytes, data: bytes) -> None:
        nonlocal made
        path = os.path.join(os.fsencode(root), name if isinstance(name, bytes) else name.encode())
        with open(path, "wb") as f:
            f.write(data)
        made += 1

    png = cv2.imencode(".png", good)[1].tobytes()
    jpeg = cv2.imencode(".jpg", good)[1].tobytes()
    put("good.png", png)
    put("grey.png", cv2.imencode(".png", good[:, :, 0])[1].tobytes())
    put("alpha.png", cv2.imencode(".png", np.dstack([good, np.full(good.shape[:2], 200, np.uint8)]))[1].tobytes())
    put("sixteen_bit.png", cv2.imencode(".png", good.astype(np.uint16) * 257)[1].tobytes())
    put("truncated.jpg", jpeg[: len(jpeg) // 2])
    put("cut_header.jpg", jpeg[:60])
    put("empty.jpg", b"")
    put("png_named.jpg", png)
    put("text.png", b"this is text, not a picture\n")
    put("notes.txt", b"a stray file\n")
    put("bomb.png", png_claiming(100_000, 100_000))
    put("zero_wide.png", png_claiming(0, 10))
    put(b"caf\xe9_latin1.png", png)                              # a name that is not UTF-8
    put("line\nbreak.png", png)
    put("n" * 240 + ".png", png)
    put(".DS_Store", b"\0\0\0\1Bud1")                             # hidden: skipped, with the reason
    from PIL import Image

    frames = [Image.fromarray(texture_image(rng)[:, :, ::-1]) for _ in range(2)]
    gif = root / "animated.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100, loop=0)
    made += 1
    (root / "folder.png").mkdir()                                # a folder named like an image
    put("folder.png/inside.png", png)
    _long_path_file(root)
    made += 1
    os.symlink("does-not-exist.png", root / "broken_link.png")
    os.symlink("loop_b", root / "loop_a")
    os.symlink("loop_a", root / "loop_b")
    (root / "nested").mkdir()
    put("nested/ok.jpg", jpeg)
    os.symlink("..", root / "nested" / "back_to_top")             # a folder link back up: a loop
    made += 4
    os.mkfifo(root / "pipe.png")
    made += 1
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(root / "socket.png"))
    sock.close()
    made += 1
    put("unreadable.png", png)
    os.chmod(root / "unreadable.png", 0)
    locked = root / "locked_folder"
    locked.mkdir()
    put("locked_folder/hidden_from_us.png", png)
    os.chmod(locked, 0)                      # as root still readable: then its file is listed instead
    return made


def restore_permissions(root: Path) -> None:
    for path in (root / "unreadable.png", root / "locked_folder"):
        if path.exists():
            os.chmod(path, 0o755)


def make_folder(root: Path, n: int, *, seed: int = 0, h: int = 96, w: int = 128) -> list[Path]:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = root / f"{i:05d}.png"
        cv2.imwrite(str(path), texture_image(rng, h, w))
        paths.append(path)
    return paths


def make_model(path: Path, *, seed: int = 0, flag_everything: bool = False) -> Path:
    """An untrained autoencoder with a calibration from its own scores: a valid model file, made in a second.

    ``flag_everything`` calibrates it far below any score it gives, so every item is NG (and gets an
    overlay image with ``--out``).
    """
    torch.manual_seed(seed)
    detector = models.create("ae", size=32, channels=3).eval()
    with torch.no_grad():
        scores = detector.infer(torch.rand(64, 3, 32, 32) * 2 - 1).scores.numpy()
    calibration = calibrate(scores - 1000.0 if flag_everything else scores)
    return save_model(path, detector, build_metadata(detector, calibration, training={"fault_suite": True}))


def _rewrite(src: Path, dst: Path, change) -> Path:
    """A copy of a model file whose metadata and weights ``change(meta, weights)`` altered in place,
    written as a careless tool would (no checks)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(src), framework="pt") as f:
        meta = json.loads(f.metadata()["inspector"])
    weights = load_file(str(src))
    change(meta, weights)
    save_file(weights, str(dst), metadata={"inspector": json.dumps(meta)})
    return dst


def _nan_weights(meta: dict, weights: dict) -> None:
    """NaN in one layer, and a checksum that matches: the file of a training that diverged."""
    from .modelstore.modelfile import weights_checksum

    name = next(k for k, t in weights.items() if t.is_floating_point() and t.numel() > 1)
    weights[name] = torch.full_like(weights[name], float("nan"))
    meta["weights_sha256"] = weights_checksum(weights)


def make_damaged_models(good: Path, folder: Path) -> dict[str, Path]:
    """Variants of a good model file, each damaged in one way that once loaded and passed everything."""
    folder.mkdir(parents=True, exist_ok=True)
    changes = {
        "nan_weights": _nan_weights,
        "missing_calibration": lambda meta, _w: meta.pop("calibration"),
        "nan_threshold": lambda meta, _w: meta["calibration"].update(threshold=float("nan")),
        "missing_input_size": lambda meta, _w: meta["input"].pop("size"),
    }
    variants = {name: _rewrite(good, folder / f"{name}.safetensors", change) for name, change in changes.items()}
    data = bytearray(good.read_bytes())
    for offset in range(len(data) - 4000, len(data) - 4000 + 64, 8):    # flip bytes inside the weights
        data[offset] ^= 0xFF
    variants["flipped_bytes"] = folder / "flipped_bytes.safetensors"
    variants["flipped_bytes"].write_bytes(bytes(data))
    variants["cut_off"] = folder / "cut_off.safetensors"
    variants["cut_off"].write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return variants


def make_video(path: Path, n: int = 300, *, damage: str | None = None) -> Path:
    """An MJPG video of ``n`` frames; ``damage`` 'middle' overwrites its middle third, 'truncated' cuts it."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (160, 120))
    rng = np.random.default_rng(1)
    for _ in range(n):
        writer.write(texture_image(rng, 120, 160))
    writer.release()
    data = bytearray(path.read_bytes())
    if damage == "middle":
        third = len(data) // 3
        data[third:2 * third] = np.random.default_rng(2).integers(0, 256, third, dtype=np.uint8).tobytes()
    elif damage == "truncated":
        data = data[: len(data) * 2 // 5]
    path.write_bytes(bytes(data))
    return path


def make_big_images(folder: Path, side: int, count: int) -> None:
    """``count`` smooth PNGs of ``side`` x ``side`` pixels (they compress well: the files stay small)."""
    folder.mkdir(parents=True, exist_ok=True)
    y = np.linspace(0, 6 * np.pi, side, dtype=np.float32)[:, None]
    for i in range(count):
        band = (128 + 60 * np.sin(y + i)).astype(np.uint8)
        image = np.repeat(np.broadcast_to(band, (side, side))[:, :, None], 3, axis=2)
        cv2.imwrite(str(folder / f"big_{i}.png"), image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        del image


# -- scenarios --------------------------------------------------------------------------------------
def _rows(db: Path, run_id: int | None = None) -> int:
    with sqlite3.connect(db) as con:
        if run_id is None:
            return con.execute("SELECT COUNT(*) FROM items").fetchone()[0]
        return con.execute("SELECT COUNT(*) FROM items WHERE run_id=?", (run_id,)).fetchone()[0]


def _last_run(db: Path):
    with ResultStore(db) as store:
        return store.runs()[0]


def _record(tally: Tally, ran: Ran, scenario: str) -> Ran:
    if ran.crashed:
        tally.crashes += 1
        tally.problems.append(f"{scenario}: crashed (exit {ran.code}): {ran.err.strip()[-400:]}")
    return ran


def hostile_folder(work: Path, model: Path, tally: Tally) -> None:
    folder = work / "hostile"
    made = make_hostile_folder(folder)
    db = work / "hostile.sqlite"
    try:
        ran = _record(tally, run_cli("inspect", str(folder), "--model", str(model), "--db", str(db),
                                     "--report", str(work / "hostile.html"), "--csv", str(work / "hostile.csv")),
                      "hostile folder")
    finally:
        restore_permissions(folder)
    tally.files += made
    if ran.code != 0:
        tally.problems.append(f"hostile folder: exit {ran.code}: {ran.err.strip()[-300:]}")
        return
    run = _last_run(db)
    accounted = _rows(db, run.id) + sum(run.summary.get("skipped", {}).values())
    tally.accounted += accounted
    if accounted != made or run.summary.get("entries") != made:
        tally.problems.append(f"hostile folder: {made} entries made, {run.summary.get('entries')} listed, "
                              f"{accounted} accounted for")


def damaged_models(work: Path, model: Path, tally: Tally) -> None:
    folder = work / "one"
    make_folder(folder, 2)
    for name, path in make_damaged_models(model, work / "damaged").items():
        db = work / f"damaged-{name}.sqlite"
        ran = _record(tally, run_cli("inspect", str(folder), "--model", str(path), "--db", str(db)),
                      f"model {name}")
        if ran.code != 2 or "error:" not in ran.err or db.exists():
            tally.nan_refused = False
            tally.problems.append(f"model {name}: exit {ran.code}, {ran.err.strip()[-200:]!r}")
    data = work / "tiny-set"
    make_folder(data / "train" / "good", 12)
    out = work / "resumed.safetensors"
    out.with_name(out.name + ".ckpt").write_bytes(b"PK\x03\x04 not a checkpoint at all" * 10)
    ran = _record(tally, run_cli("train", "--data", str(data), "--method", "ae", "--size", "16", "--epochs", "1",
                                 "--steps-per-epoch", "1", "--out", str(out), "--resume"), "damaged checkpoint")
    if ran.code != 2 or "checkpoint" not in ran.err or out.exists():
        tally.nan_refused = False
        tally.problems.append(f"damaged checkpoint: exit {ran.code}, {ran.err.strip()[-200:]!r}")


def two_writers(work: Path, model: Path, tally: Tally, n: int = 300) -> None:
    db = work / "shared.sqlite"
    folders = [work / "writer_a", work / "writer_b"]
    for i, folder in enumerate(folders):
        make_folder(folder, n, seed=10 + i, h=48, w=64)
    command = [sys.executable, "-m", "inspector", "inspect"]
    children = [subprocess.Popen([*command, str(f), "--model", str(model), "--db", str(db)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for f in folders]
    for folder, child in zip(folders, children, strict=True):
        out, err = child.communicate(timeout=900)
        ran = _record(tally, Ran([str(folder)], child.returncode, out, err), "two writers")
        with ResultStore(db) as store:
            run = store.latest_run(str(folder.resolve()))
            rows = _rows(db, run.id) if run else 0
        tally.rows_lost += n - rows
        if ran.code == 0 and rows == n and run.status == "completed":
            tally.writers_ok += 1
        else:
            tally.problems.append(f"two writers: {folder.name}: exit {ran.code}, {rows}/{n} rows, "
                                  f"{run.status if run else 'no run'}: {err.strip()[-200:]}")


def killed_writer(work: Path, model: Path, tally: Tally, n: int = 400) -> None:
    folder = work / "to_kill"
    make_folder(folder, n, seed=3, h=64, w=64)
    db = work / "killed.sqlite"
    child = subprocess.Popen([sys.executable, "-m", "inspector", "inspect", str(folder), "--model", str(model),
                              "--db", str(db)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and child.poll() is None:
        try:
            if _rows(db) > 0:
                break
        except sqlite3.Error:
            pass
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    run = _last_run(db)               # opening the database finds the killed writer's run
    if run.status != "interrupted":
        tally.problems.append(f"killed writer: its run reads {run.status!r}, not 'interrupted'")
    ran = _record(tally, run_cli("inspect", str(folder), "--model", str(model), "--db", str(db), "--resume"),
                  "resume after kill")
    with ResultStore(db) as store:
        items = store.items(run.id, order="index")
        final = store.run(run.id)
    tally.rows_lost += n - len(items)
    indices_ok = [r.frame_index for r in items] == list(range(n))
    if ran.code != 0 or final.status != "completed" or not indices_ok:
        tally.problems.append(f"resume after kill: exit {ran.code}, {len(items)}/{n} rows, status {final.status}, "
                              f"indices {'kept' if indices_ok else 'wrong'}")


def damaged_videos(work: Path, model: Path, tally: Tally) -> None:
    for damage in ("middle", "truncated"):
        video = make_video(work / f"video_{damage}.avi", damage=damage)
        db = work / f"video_{damage}.sqlite"
        ran = _record(tally, run_cli("inspect", str(video), "--model", str(model), "--db", str(db)),
                      f"{damage} video")
        run = _last_run(db) if db.exists() else None
        lost = run.summary.get("frames_lost", 0) if run else 0
        if ran.code != 3 or run is None or not run.failed or lost <= 0 or _rows(db, run.id) + lost != 300:
            tally.problems.append(f"{damage} video: exit {ran.code}, status {run.status if run else None}, "
                                  f"{lost} frames lost")


def bad_sources(work: Path, model: Path, tally: Tally) -> None:
    empty = work / "empty"
    empty.mkdir()
    for name, source in (("missing", str(work / "no-such-folder")), ("empty", str(empty)), ("camera", "7")):
        db = work / f"bad-{name}.sqlite"
        ran = _record(tally, run_cli("inspect", source, "--model", str(model), "--db", str(db)), f"{name} source")
        chatter = [line for line in ran.err.splitlines() if "WARN" in line or "@ 0x" in line]
        if ran.code != 2 or db.exists() or chatter:
            tally.problems.append(f"{name} source: exit {ran.code}, database {'made' if db.exists() else 'not made'}"
                                  f", {len(chatter)} OpenCV lines")


def big_images(work: Path, tally: Tally, side: int, count: int) -> None:
    """Large images inspected whole, each NG (a model that flags everything) so each gets its overlay."""
    folder = work / "big"
    make_big_images(folder, side, count)
    model = make_model(work / "flags-everything.safetensors", flag_everything=True)
    db = work / "big.sqlite"
    out = work / "big_out"
    budget = str(max(100.0, side * side / 1e6 + 1))
    ran = _record(tally, run_cli("inspect", str(folder), "--model", str(model), "--db", str(db), "--out", str(out),
                                 "--max-megapixels", budget), "big images")
    tally.peak_rss_mb = max(tally.peak_rss_mb, ran.peak_rss_mb)
    overlays = len(list(out.glob("*.jpg"))) if out.is_dir() else 0
    if ran.code != 0 or _rows(db) != count or overlays != count:
        tally.problems.append(f"big images: exit {ran.code}, {overlays}/{count} overlays: {ran.err.strip()[-300:]}")


def run_all(work: Path, *, big_side: int, big_count: int, log=print) -> Tally:
    tally = Tally()
    model = make_model(work / "model.safetensors")
    for name, scenario in (("hostile folder", lambda: hostile_folder(work, model, tally)),
                           ("damaged models", lambda: damaged_models(work, model, tally)),
                           ("two writers", lambda: two_writers(work, model, tally)),
                           ("killed writer", lambda: killed_writer(work, model, tally)),
                           ("damaged videos", lambda: damaged_videos(work, model, tally)),
                           ("bad sources", lambda: bad_sources(work, model, tally)),
                           ("big images", lambda: big_images(work, tally, big_side, big_count))):
        t0 = time.perf_counter()
        before = len(tally.problems)
        scenario()
        verdict = "ok" if len(tally.problems) == before else "PROBLEM"
        log(f"{name:<16} {verdict:<8} {time.perf_counter() - t0:6.1f} s")
    return tally


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inspector.faults", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, help="where to make the inputs (default: a temporary folder)")
    parser.add_argument("--big-side", type=int, default=20000, help="side of the large images (default 20000)")
    parser.add_argument("--big-count", type=int, default=4, help="how many large images (default 4)")
    parser.add_argument("--keep", action="store_true", help="keep the inputs and databases afterwards")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="inspector-faults-", dir=args.workdir))
    try:
        tally = run_all(work, big_side=args.big_side, big_count=args.big_count)
    finally:
        if args.keep:
            print(f"inputs kept in {work}")
        else:
            restore_permissions(work / "hostile")
            shutil.rmtree(work, ignore_errors=True)
    for problem in tally.problems:
        print(f"problem: {problem}")
    print(tally.line())
    return 0 if not tally.problems and not tally.crashes else 1


if __name__ == "__main__":
    sys.exit(main())
