"""Frame sources: folders with bad files, video files, live cameras that drop, die and come back."""

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from inspector.frames.frame import SourceState
from inspector.frames.sources import CameraSource, FolderSource, SourceError, open_source


def write_bad_folder(root: Path) -> dict[str, str | None]:
    """A folder with every kind of awkward file; returns {name: expected error substring or None}."""
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
    (root / "sub").mkdir(parents=True)
    cv2.imwrite(str(root / "a_colour.png"), colour)
    cv2.imwrite(str(root / "b_grey.png"), colour[:, :, 0])
    cv2.imwrite(str(root / "c_alpha.png"), np.dstack([colour, np.full((40, 60), 255, np.uint8)]))
    cv2.imwrite(str(root / "d_16bit.png"), (colour[:, :, 0].astype(np.uint16) * 257))
    ok, jpeg = cv2.imencode(".jpg", colour)
    (root / "e_truncated.jpg").write_bytes(jpeg.tobytes()[:200])
    (root / "f_empty.jpg").write_bytes(b"")
    (root / "g_png_named_jpg.jpg").write_bytes(cv2.imencode(".png", colour)[1].tobytes())
    (root / "h_text.png").write_text("not an image")
    cv2.imwrite(str(root / "sub" / "i_huge.jpg"), np.zeros((4000, 6000), np.uint8))
    (root / "notes.txt").write_text("not an image, whatever its name says")
    return {"a_colour.png": None, "b_grey.png": None, "c_alpha.png": None, "d_16bit.png": None,
            "e_truncated.jpg": "damaged image header", "f_empty.jpg": "empty file", "g_png_named_jpg.jpg": None,
            "h_text.png": "not an image file", "i_huge.jpg": None, "notes.txt": "not an image file"}


def test_folder_source_accounts_for_every_file_in_sorted_order(tmp_path):
    expected = write_bad_folder(tmp_path)
    frames = list(FolderSource(tmp_path, workers=2, ahead=3))
    in_order = sorted(expected, key=lambda name: ("sub/" if name == "i_huge.jpg" else "") + name)
    assert [Path(f.item).name for f in frames] == in_order
    assert [f.index for f in frames] == list(range(len(expected)))
    for frame in frames:
        want = expected[Path(frame.item).name]
        if want is None:
            assert frame.error is None and frame.image.dtype == np.uint8 and frame.image.shape[2] == 3, frame.item
        else:
            assert frame.image is None and want in frame.error, (frame.item, frame.error)
    huge = next(f for f in frames if f.item.endswith("i_huge.jpg"))
    assert huge.image.shape == (4000, 6000, 3)


def test_folder_source_skips_what_is_already_done(tmp_path):
    for i in range(5):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.zeros((8, 8), np.uint8))
    done = {str(tmp_path / "1.png"), str(tmp_path / "3.png")}
    source = FolderSource(tmp_path, skip=done)
    assert source.total == 3 and source.skipped == {"already recorded by the run being resumed": 2}
    frames = list(source)
    assert [Path(f.item).name for f in frames] == ["0.png", "2.png", "4.png"]
    assert [f.index for f in frames] == [0, 2, 4]        # a resumed run keeps the indices of the whole folder


def write_video(path: Path, n: int = 12, size=(64, 48)) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, size)
    assert writer.isOpened()
    for i in range(n):
        frame = np.full((size[1], size[0], 3), i * 20, np.uint8)
        writer.write(frame)
    writer.release()
    return path


def test_video_file_yields_every_frame_in_order_then_ends(tmp_path):
    video = write_video(tmp_path / "clip.avi")
    with CameraSource(str(video)) as source:
        assert not source.keep_latest and source.total == 12
        frames = list(source)
    assert [f.index for f in frames] == list(range(12))
    levels = [int(f.image.mean()) for f in frames]
    assert levels == sorted(levels) and levels[-1] > levels[0] + 150   # the frames, in order
    assert source.status.state is SourceState.ENDED and source.dropped == 0 and source.frames_lost == 0
    assert frames[3].item == f"{video}#3"


class FakeCapture:
    """A camera stand-in: ``frames`` reads succeed, then the stream dies (read fails)."""

    def __init__(self, frames: int, opened: bool = True, period: float = 0.0) -> None:
        self.left, self.opened, self.period = frames, opened, period

    def isOpened(self):  # noqa: N802
        return self.opened

    def read(self):
        if self.period:
            time.sleep(self.period)
        if self.left <= 0:
            return False, None
        self.left -= 1
        return True, np.zeros((4, 4, 3), np.uint8)

    def get(self, prop):
        return 0.0

    def release(self):
        pass


def test_live_source_keeps_the_newest_frame_and_counts_drops():
    source = CameraSource(0, opener=lambda spec: FakeCapture(200, period=0.001), reconnect_attempts=0)
    got = []
    for frame in source:
        got.append(frame.index)
        time.sleep(0.01)    # a slow consumer
    source.close()
    assert source.dropped > 0
    assert len(got) + source.dropped == source.captured == 200
    assert got == sorted(got) and got[-1] == 199    # never old frames, and the last one is delivered


def test_a_dead_stream_reconnects_with_backoff_and_reports_it():
    opened = iter([FakeCapture(3), FakeCapture(0, opened=False), FakeCapture(4)])
    statuses = []
    source = CameraSource("rtsp://camera.invalid/stream", keep_latest=False,
                          opener=lambda spec: next(opened, FakeCapture(0, opened=False)),
                          reconnect_attempts=3, max_backoff_s=0.01, on_status=statuses.append)
    n = 0
    while source.next_frame(timeout=5) is not None:
        n += 1
    source.close()
    # 3 frames, stream dies, attempt 1 fails, attempt 2 opens and gives 4 frames, then 3 attempts fail
    assert n == 7
    assert source.reconnects == 1
    assert any(s.describe().startswith("reconnecting (attempt 1/3)") for s in statuses)
    assert statuses[-1].state is SourceState.LOST and statuses[-1].failed


def test_a_camera_that_does_not_open_is_a_clear_error():
    with pytest.raises(SourceError, match="cannot open camera 7"):
        CameraSource(7, opener=lambda spec: FakeCapture(0, opened=False))


def test_open_source_chooses_by_what_the_spec_names(tmp_path):
    cv2.imwrite(str(tmp_path / "one.png"), np.zeros((8, 8), np.uint8))
    assert isinstance(open_source(str(tmp_path)), FolderSource)
    assert open_source(str(tmp_path / "one.png")).total == 1
    with pytest.raises(SourceError, match="no such file or folder"):
        open_source(str(tmp_path / "missing"))
    (tmp_path / "notes.txt").write_text("not a video")
    with pytest.raises(SourceError, match="not a video format"):
        open_source(str(tmp_path / "notes.txt"))


def test_closing_a_live_source_stops_its_thread_promptly():
    source = CameraSource(0, opener=lambda spec: FakeCapture(10**9, period=0.001))
    assert source.next_frame(timeout=2) is not None
    t0 = time.monotonic()
    source.close()
    assert time.monotonic() - t0 < 2
    assert not any(t.name == "capture camera 0" and t.is_alive() for t in threading.enumerate())
