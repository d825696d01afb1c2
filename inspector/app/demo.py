"""A synthetic production line for the demo: a textured surface moving past a camera, with defects.

The program must show what it does on first launch, with no camera and no trained model.  This
module makes the camera: a seamless (periodic) surface texture — low-frequency shading, grain and
brushed streaks, made in the Fourier domain so that it wraps without a seam — scrolls past a
1280x720 view, and now and then a crack, a scratch or a spot rides along with it.  Defects are
painted with the same painters as the training pseudo-anomalies, each from its own seed, so a
defect looks the same in every frame it crosses.

It acts as an OpenCV capture (``isOpened``, ``read``, ``get``, ``release``), so the live
``CameraSource`` runs it like any camera, capture thread and dropped-frame count included.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..frames.sources import CameraSource, FrameClock
from ..learn.pseudo_anomalies import crack, scratch, spot

FRAME_SHAPE = (720, 1280)
#: Defects are painted at 1/DEFECT_SCALE of the frame's resolution and enlarged: at the demo's
#: tiling (160-pixel tiles seen at 32 pixels) they look to the model as its pseudo-anomalies do.
DEFECT_SCALE = 5
DEMO_NAME = "demo surface"
_PAINTERS = (crack, scratch, spot)


def periodic_noise(shape: tuple[int, int], rng: np.random.Generator, *, beta: float = 2.0,
                   stretch_x: float = 1.0) -> np.ndarray:
    """Zero-mean, unit-variance noise with a 1/f^beta spectrum that wraps seamlessly in x and y.

    ``stretch_x`` > 1 elongates the features along x (brushed or rolled surfaces).
    """
    h, w = shape
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :] * stretch_x
    f = np.sqrt(fx**2 + fy**2)
    f[0, 0] = 1.0
    spectrum = (rng.normal(size=f.shape) + 1j * rng.normal(size=f.shape)) / f ** (beta / 2)
    spectrum[0, 0] = 0.0
    noise = np.fft.irfft2(spectrum, s=shape)
    return ((noise - noise.mean()) / noise.std()).astype(np.float32)


def make_surface(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A brushed-metal-like surface, uint8 BGR, that tiles seamlessly along x."""
    shading = periodic_noise(shape, rng, beta=3.0)
    streaks = periodic_noise(shape, rng, beta=1.5, stretch_x=12.0)
    grain = periodic_noise(shape, rng, beta=0.3)
    grey = 132.0 + 14.0 * shading + 7.0 * streaks + 5.0 * grain
    tint = np.array([1.04, 1.0, 0.95], np.float32)                  # slightly cool metal
    return np.clip(grey[:, :, None] * tint, 0, 255).astype(np.uint8)


@dataclass
class Defect:
    x: int        # left edge on the unrolled surface, in pixels
    y: int        # top edge in the frame
    size: int
    seed: int


class SyntheticSurface:
    """An endless surface moving ``speed`` pixels a frame past the view, offered at ``fps``.

    ``defect_rate`` is the chance that a new defect enters the view with a frame; with
    ``first_defect`` one also enters with the first frame, whatever the draw.
    """

    def __init__(self, *, fps: float = 30.0, speed: int = 6, defect_rate: float = 0.04, seed: int = 0,
                 frame_shape: tuple[int, int] = FRAME_SHAPE, first_defect: bool = False) -> None:
        self.rng = np.random.default_rng(seed)
        self.frame_shape = frame_shape
        h, w = frame_shape
        self.surface = make_surface((h, 2 * w), self.rng)
        self.speed, self.defect_rate = speed, defect_rate
        self.clock = FrameClock(fps)
        self.offset = 0
        self.defects: list[Defect] = []
        self._defect_due = first_defect

    # -- the capture interface --------------------------------------------------------------------
    def isOpened(self) -> bool:  # noqa: N802  (OpenCV's names)
        return True

    def read(self) -> tuple[bool, np.ndarray]:
        self.clock.wait()
        return True, self.next_frame()

    def get(self, prop: int) -> float:
        if prop == cv2.CAP_PROP_FPS:
            return self.clock.fps
        return {cv2.CAP_PROP_FRAME_WIDTH: self.frame_shape[1], cv2.CAP_PROP_FRAME_HEIGHT: self.frame_shape[0]}.get(
            prop, 0.0)

    def release(self) -> None:
        pass

    # -- drawing ----------------------------------------------------------------------------------
    def _strip(self, x: int, width: int, y: int = 0, height: int | None = None) -> np.ndarray:
        """Columns [x, x + width) of the unrolled surface (wrapping), rows [y, y + height)."""
        sw = self.surface.shape[1]
        height = self.frame_shape[0] - y if height is None else height
        cols = (x + np.arange(width)) % sw
        start = cols[0]
        if start + width <= sw:
            return self.surface[y:y + height, start:start + width].copy()
        return self.surface[y:y + height][:, cols]

    def next_frame(self) -> np.ndarray:
        """The next view of the surface (uint8 BGR), without waiting for the frame clock."""
        h, w = self.frame_shape
        if self.rng.random() < self.defect_rate or self._defect_due:
            self._defect_due = False
            size = int(self.rng.integers(64, 160))
            self.defects.append(Defect(self.offset + w, int(self.rng.integers(0, h - size)), size,
                                       int(self.rng.integers(2**31))))
        frame = self._strip(self.offset, w)
        for d in self.defects:
            self._paint(frame, d)
        self.offset += self.speed
        self.defects = [d for d in self.defects if d.x + d.size > self.offset]
        return frame

    def _paint(self, frame: np.ndarray, d: Defect) -> None:
        left = d.x - self.offset
        if left >= frame.shape[1] or left + d.size <= 0:
            return
        rng = np.random.default_rng(d.seed)
        painter = _PAINTERS[int(rng.integers(len(_PAINTERS)))]
        patch = self._strip(d.x, d.size, d.y, d.size)
        small = cv2.resize(patch, (d.size // DEFECT_SCALE,) * 2, interpolation=cv2.INTER_AREA)
        change = painter(small, rng)[0].astype(np.float32) - small
        patch = np.clip(patch + cv2.resize(change, (d.size, d.size), interpolation=cv2.INTER_LINEAR), 0, 255)
        patch = patch.astype(np.uint8)
        a, b = max(0, left), min(frame.shape[1], left + d.size)
        frame[d.y:d.y + d.size, a:b] = patch[:, a - left:b - left]

    def defects_in_view(self) -> list[tuple[int, int, int, int]]:
        """Boxes (x0, y0, x1, y1) of the defects in the last frame drawn."""
        offset = self.offset - self.speed
        return [(d.x - offset, d.y, d.x - offset + d.size, d.y + d.size) for d in self.defects
                if d.x - offset < self.frame_shape[1]]


#: The demo line's chance of a new defect per frame: a defect takes 7 s to cross the view, so at this
#: rate about half the frames are OK and a defect passes every 10 s or so (the verdict changes, and
#: moving the threshold visibly matters).  The first enters with the first frame: left to the draw,
#: the demo's seed brought it after 26 s of OK frames, a long wait on a first launch.
DEMO_DEFECT_RATE = 0.003


def demo_source(*, fps: float = 30.0, seed: int = 0, on_status=None) -> CameraSource:
    """The demo line as a live source: newest frame only, like a real camera."""
    return CameraSource(DEMO_NAME, keep_latest=True,
                        opener=lambda _spec: SyntheticSurface(fps=fps, seed=seed, defect_rate=DEMO_DEFECT_RATE,
                                                              first_defect=True),
                        on_status=on_status)
