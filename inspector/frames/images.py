"""Reading images from disk into the core's one image type: numpy uint8 BGR, (H, W, 3).

Every reader of the program goes through ``read_image``, so that grey, 16-bit, alpha, palette and
odd files are handled once, and a file that cannot be read raises ``ImageReadError`` with the
reason — never anything else, whatever the file holds.

Before a pixel is decoded the header is read (Pillow reads headers without decoding) and the pixel
count is checked against a budget: a PNG of a few hundred bytes can claim 100000 x 100000 pixels,
30 GB once decoded.  ``ImageHeader.decoded_bytes`` also tells the folder source how much memory a
decode will take, so that decoding ahead is bounded by bytes, not by a count of files.

OpenCV decodes (it is the faster); Pillow decodes what OpenCV cannot (some TIFF compressions,
CMYK JPEGs, palette GIFs on older OpenCV builds).
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from ..base.errors import InspectorError

#: File names the data-set loaders take for images (the folder source tries every file by content).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".gif"})
#: The largest image read by default: 100 megapixels (about 300 MB decoded as 8-bit BGR).
DEFAULT_MAX_PIXELS = 100_000_000

# Pillow's own decompression-bomb guard would raise before we can say what the budget is; the
# budget below is checked on every header instead.
Image.MAX_IMAGE_PIXELS = None


class ImageReadError(InspectorError):
    """A file that is not a readable image; the message says why and names the file."""


@dataclass(frozen=True)
class ImageHeader:
    format: str          # "PNG", "JPEG", ... as Pillow names it
    width: int
    height: int
    bands: int           # channels as stored (1 grey or palette, 3 colour, 4 with alpha)
    sample_bytes: int    # 1 for 8-bit, 2 for 16-bit, 4 for 32-bit samples
    file_bytes: int = 0

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def decoded_bytes(self) -> int:
        """Memory a decode takes at its peak: the file's bytes, the decoder's array and the copy OpenCV's
        Python binding returns of it (measured: twice the decoded image, for PNG and JPEG alike), and
        the uint8 BGR conversion where one is needed."""
        decoded = self.pixels * max(self.bands, 1) * self.sample_bytes
        converted = 0 if (self.bands == 3 and self.sample_bytes == 1) else self.pixels * 3
        return self.file_bytes + 2 * decoded + converted


_MODE_BYTES = {"I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2, "I": 4, "F": 4}


def _sample_bytes(im: Image.Image) -> int:
    """Bytes per sample as stored: Pillow opens 16-bit colour as mode "RGB", but its decoder's raw
    mode ("RGB;16B", "RGB;16N") tells, and OpenCV decodes those to uint16."""
    if im.mode in _MODE_BYTES:
        return _MODE_BYTES[im.mode]
    for tile in im.tile or ():
        args = tile[3] if len(tile) > 3 else None
        rawmode = args[0] if isinstance(args, tuple) and args else args
        if isinstance(rawmode, str) and ";16" in rawmode:
            return 2
    return 1


def is_image_file(path: str | Path) -> bool:
    """True for file names the data-set loaders take as images."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def decode_workers() -> int:
    """Threads that decode images ahead (OpenCV and Pillow release the GIL while decoding)."""
    return max(2, min(8, os.cpu_count() or 2))


def _os_reason(exc: OSError) -> str:
    reasons = {errno.ENOENT: "no such file", errno.EACCES: "permission denied", errno.EPERM: "permission denied",
               errno.ENAMETOOLONG: "path too long for the operating system", errno.ELOOP: "symbolic link loop",
               errno.EISDIR: "a folder, not a file"}
    return reasons.get(exc.errno, exc.strerror or str(exc))


def _check_regular(path: Path) -> None:
    """Refuse what is not a regular file before opening it: opening a FIFO would block for ever."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ImageReadError(f"{path}: {_os_reason(exc)}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise ImageReadError(f"{path}: not a regular file: {file_kind(st.st_mode)}")
    if st.st_size == 0:
        raise ImageReadError(f"{path}: empty file")


def file_kind(mode: int) -> str:
    """What a non-regular directory entry is, in words."""
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "an entry of an unknown kind"


#: Leading bytes of the formats folders mostly hold: Pillow is told which parser to try first.
_MAGIC = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"BM", "BMP"), (b"GIF8", "GIF"),
          (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))


def _guess_format(head: bytes) -> list[str] | None:
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return [name]
    return None


def read_header(path: str | Path) -> ImageHeader:
    """The image's format and size, read from its header without decoding the pixels."""
    path = Path(path)
    _check_regular(path)
    try:
        with open(path, "rb") as f:
            guess = _guess_format(f.read(16))
            for formats in ([guess, None] if guess else [None]):
                f.seek(0)
                try:
                    with Image.open(f, formats=formats) as im:
                        width, height = im.size
                        return ImageHeader(im.format or "?", int(width), int(height), len(im.getbands()),
                                           _sample_bytes(im), os.fstat(f.fileno()).st_size)
                except UnidentifiedImageError:
                    if formats is None:
                        raise
    except UnidentifiedImageError as exc:
        raise ImageReadError(f"{path}: not an image file (unknown format)") from exc
    except OSError as exc:
        if exc.errno is None:   # the format's parser gave up: a cut-off or damaged header
            raise ImageReadError(f"{path}: damaged image header ({exc})") from exc
        raise ImageReadError(f"{path}: {_os_reason(exc)}") from exc
    except Exception as exc:     # a damaged header can make a format parser raise anything
        raise ImageReadError(f"{path}: damaged image header ({type(exc).__name__}: {exc})") from exc
    raise ImageReadError(f"{path}: not an image file (unknown format)")


def check_size(header: ImageHeader, path: str | Path, max_pixels: int | None) -> None:
    if header.width < 1 or header.height < 1:
        raise ImageReadError(f"{path}: image claims {header.width}x{header.height} pixels")
    if max_pixels is not None and header.pixels > max_pixels:
        raise ImageReadError(
            f"{path}: {header.width}x{header.height} pixels ({header.pixels / 1e6:.0f} MP) is over the "
            f"{max_pixels / 1e6:.0f} MP budget (--max-megapixels raises it)")


def to_bgr8(img: np.ndarray) -> np.ndarray:
    """Any decoded image (grey, BGR, BGRA; 8 or 16 bit or float) as uint8 BGR."""
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        img = np.nan_to_num(img.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        img = np.clip(img * (255.0 if img.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    return img


def _decode_with_pillow(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        im.seek(0)                      # the first frame of an animation
        rgb = np.asarray(im.convert("RGB"))
    return np.ascontiguousarray(rgb[:, :, ::-1])


#: Where a whole JPEG's end-of-image marker is looked for: its last bytes (some writers pad after it).
JPEG_TAIL = 1024


def decode(path: str | Path, header: ImageHeader) -> np.ndarray:
    """Decode an image whose header has been read and checked: uint8 BGR."""
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)   # unlike cv2.imread, any path text on any system
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot read file ({_os_reason(exc)})") from exc
    if header.format == "JPEG" and bytes(data[-JPEG_TAIL:]).rfind(b"\xff\xd9") < 0:
        # libjpeg would fill the missing part with grey, print a warning of its own and return the
        # image as if it were whole: a part half-seen must not pass as inspected
        raise ImageReadError(f"{path}: truncated JPEG (the file ends before its end-of-image marker)")
    try:
        img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error:
        img = None
    del data
    if img is not None and img.size and img.shape[:2] == (header.height, header.width):
        return to_bgr8(img)
    try:
        return _decode_with_pillow(path)
    except Exception as exc:     # truncated or corrupt data: each decoder has its own exceptions
        raise ImageReadError(f"{path}: not a decodable {header.format} image ({exc})") from exc


def read_image(path: str | Path, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image file as uint8 BGR; raise ImageReadError (never return None, never anything else)."""
    header = read_header(path)
    check_size(header, path, max_pixels)
    try:
        return decode(path, header)
    except MemoryError as exc:
        raise ImageReadError(f"{path}: not enough memory to decode {header.width}x{header.height} pixels") from exc


def write_image(path: str | Path, image: np.ndarray) -> Path:
    """Encode ``image`` by the path's suffix and write it with Python's file I/O.

    Never ``cv2.imwrite``: OpenCV's Python binding cannot take a path that is not valid UTF-8 (it
    crashes the process), and such folders exist on real machines.
    """
    path = Path(path)
    ok, encoded = cv2.imencode(path.suffix or ".png", image)
    if not ok:
        raise OSError(f"{path}: OpenCV could not encode the image as {path.suffix or '.png'}")
    path.write_bytes(encoded.tobytes())
    return path


def read_mask(path: str | Path) -> np.ndarray:
    """A ground-truth mask as bool (H, W): anti-aliased masks are binarised at > 127."""
    img = read_image(path)
    return img[:, :, 0] > 127


def is_grey(img: np.ndarray) -> bool:
    """True when all three channels of a BGR image are equal (a grey image stored as colour)."""
    return bool(np.array_equal(img[:, :, 0], img[:, :, 1]) and np.array_equal(img[:, :, 1], img[:, :, 2]))
