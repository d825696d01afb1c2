import os
import tempfile
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")   # GUI tests run without a display
# The tests never touch the user's data folder (results database, models): a fresh one per session.
os.environ["INSPECTOR_DATA_DIR"] = tempfile.mkdtemp(prefix="inspector-test-data-")

import cv2
import numpy as np
import pytest
import torch

from models import Detector, Inference, TrainingDefaults

torch.set_num_threads(min(2, torch.get_num_threads()))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("INSPECTOR_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    assert SHARED_DATA.is_dir(), f"the real test data must be beside the repo: {SHARED_DATA}"
    return SHARED_DATA


def texture(rng: np.random.Generator, size: int = 48) -> np.ndarray:
    """A smooth, slightly noisy grey-brown surface (uint8 BGR)."""
    base = rng.normal(128, 6, (size // 4, size // 4, 1)).astype(np.float32)
    img = cv2.resize(base, (size, size), interpolation=cv2.INTER_CUBIC)[:, :, None]
    img = img + rng.normal(0, 3, (size, size, 1))
    img = np.concatenate([img * 0.8, img * 0.9, img], axis=2)
    return np.clip(img, 0, 255).astype(np.uint8)


def with_defect(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A dark blob painted on ``img``; returns (image, mask)."""
    out = img.copy()
    mask = np.zeros(img.shape[:2], np.uint8)
    c = tuple(int(v) for v in rng.integers(12, img.shape[0] - 12, 2))
    cv2.circle(mask, c, int(rng.integers(5, 9)), 255, -1)
    out[mask > 0] = (out[mask > 0] * 0.25).astype(np.uint8)
    return out, mask


def write_mvtec(root: Path, *, n_train=40, n_pool=10, n_test_good=12, n_test_bad=12, seed=0) -> Path:
    """A generated data set in the MVTec AD layout: textures, with dark blobs as defects."""
    rng = np.random.default_rng(seed)
    dirs = {k: root / k for k in ("train/good", "train/defect/blob", "test/good", "test/blob", "ground_truth/blob")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    for i in range(n_train):
        cv2.imwrite(str(dirs["train/good"] / f"{i:03d}.png"), texture(rng))
    for i in range(n_pool):
        cv2.imwrite(str(dirs["train/defect/blob"] / f"{i:03d}.png"), with_defect(texture(rng), rng)[0])
    for i in range(n_test_good):
        cv2.imwrite(str(dirs["test/good"] / f"{i:03d}.png"), texture(rng))
    for i in range(n_test_bad):
        img, mask = with_defect(texture(rng), rng)
        cv2.imwrite(str(dirs["test/blob"] / f"{i:03d}.png"), img)
        cv2.imwrite(str(dirs["ground_truth/blob"] / f"{i:03d}_mask.png"), mask)
    return root


@pytest.fixture
def tiny_mvtec(tmp_path: Path) -> Path:
    return write_mvtec(tmp_path / "tiny")


class DarknessDetector(Detector):
    """A test double with known answers: a tile's score is its mean darkness, its map the darkness."""

    method = "darkness"
    has_difference_map = True
    defaults = TrainingDefaults(epochs=1, steps_per_epoch=1, batch_size=1, size=16)

    def __init__(self, *, size: int = 16, channels: int = 3) -> None:
        super().__init__(size=size, channels=channels)
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the module a device

    def make_optimizers(self) -> None:
        self.optimizers = []

    def training_step(self, batch, *, epoch, epochs):
        return {}

    @torch.no_grad()
    def infer(self, x: torch.Tensor) -> Inference:
        dark = (1.0 - x.mean(dim=1, keepdim=True)) / 2.0
        return Inference(scores=dark.mean(dim=(1, 2, 3)), maps=dark)


def grey_frame(h: int, w: int, level: int = 200) -> np.ndarray:
    return np.full((h, w, 3), level, np.uint8)


@pytest.fixture
def darkness_inspector():
    """An Inspector whose threshold sits between a light tile (score ~0.2) and a dark one."""
    from inspector.detect.calibration import calibrate
    from inspector.detect.pipeline import Inspector

    calibration = calibrate(np.array([0.20, 0.21, 0.22, 0.23, 0.30]), false_alarm_rate=0.0)
    return lambda **kw: Inspector(DarknessDetector(size=16), calibration, **kw)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A small autoencoder (a tile model) trained on the generated set (seconds), for end-to-end tests."""
    from inspector.cli import main

    root = tmp_path_factory.mktemp("tiny-model")
    model = root / "ae.safetensors"
    rc = main(["train", "--data", str(write_mvtec(root / "data")), "--method", "ae", "--out", str(model),
               "--epochs", "2", "--steps-per-epoch", "15", "--size", "32"])
    assert rc == 0
    return model
