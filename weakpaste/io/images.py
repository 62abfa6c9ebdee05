"""Reading and writing image files (RGB uint8 in memory) and atomic file writes.

Limits: an image larger than ``max_image_pixels()`` (2**28 pixels by default, 805 MB as RGB;
raise it with the environment variable ``WEAKPASTE_MAX_IMAGE_PIXELS``) is refused from its
header, before anything is decoded, and so is a file whose header tells no size (a format
outside ``PIL_FORMATS``): nothing is decoded whose size was not checked. OpenCV's own limit
is set to the same number when weakpaste is imported (``weakpaste/__init__.py``), for a file
whose header Pillow and OpenCV would read differently. The codecs' own messages on standard
error are dropped. Writes that fail because the disk is full or read-only raise one
``WeakpasteError`` naming the folder (``write_error``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from weakpaste.core.errors import WeakpasteError
from weakpaste.core.files import atomic_write_bytes
from weakpaste.core.manifest import read_manifest
from weakpaste.core.run_options import RESUME

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

MAX_PIXELS_ENV = "WEAKPASTE_MAX_IMAGE_PIXELS"
DEFAULT_MAX_IMAGE_PIXELS = 1 << 28


def max_image_pixels() -> int:
    """The largest image (width x height) weakpaste decodes: ``WEAKPASTE_MAX_IMAGE_PIXELS``
    when set, else 2**28.

    Raises:
        WeakpasteError: the environment variable is not a positive integer.
    """
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise WeakpasteError(f"{MAX_PIXELS_ENV}={text!r} is not a positive number of pixels; "
                             f"unset it or set it like {MAX_PIXELS_ENV}={1 << 30}")
    return value


# The formats whose header gives the size before anything is decoded, and that Pillow may
# decode itself when OpenCV cannot. Anything else (Radiance HDR, PAM, PFM, OpenEXR: formats
# OpenCV decodes but no header check here covers; EPS, which Pillow hands to Ghostscript) is
# refused unread.
PIL_FORMATS = ("JPEG", "PNG", "BMP", "WEBP", "TIFF", "GIF", "PPM", "JPEG2000")


@functools.cache
def _pil_formats() -> tuple[str, ...]:
    """``PIL_FORMATS`` that this Pillow build opens (naming another one is an error)."""
    from PIL import Image

    Image.init()
    return tuple(f for f in PIL_FORMATS if f in Image.OPEN)


def header_size(data: np.ndarray) -> tuple[int, int] | None:
    """(width, height) from an image file's header without decoding it; None when it is not
    one of ``PIL_FORMATS``."""
    from PIL import Image

    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # our own limit applies, not Pillow's bomb check
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data.tobytes()), formats=_pil_formats()) as im:
                return int(im.size[0]), int(im.size[1])
    except Exception:  # not an image of those formats, or a damaged header
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _check_pixels(path: Path, data: np.ndarray) -> None:
    """Refuse, before decoding, a file whose size its header does not tell, or whose size is
    over ``max_image_pixels()``."""
    size = header_size(data)
    if size is None:
        raise WeakpasteError(f"{path}: cannot decode image (not a JPEG, PNG, BMP, WebP, TIFF, "
                             "GIF, PNM or JPEG 2000 file); the file is corrupt or not an image: "
                             "re-export it as JPEG or PNG")
    limit = max_image_pixels()
    if size[0] * size[1] > limit:
        raise WeakpasteError(f"{path}: image is {size[0]}x{size[1]} pixels, more than the limit "
                             f"of {limit}; shrink it, or raise the limit with {MAX_PIXELS_ENV} "
                             "if the file is genuine")


def _decode_pillow(path: Path, data: np.ndarray) -> np.ndarray:
    from PIL import Image

    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # the size was checked against max_image_pixels()
    try:
        with Image.open(io.BytesIO(data.tobytes()), formats=_pil_formats()) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except Exception as err:
        raise WeakpasteError(f"{path}: cannot decode image ({type(err).__name__}); the file is "
                             "corrupt or not an image: re-export it as JPEG or PNG") from None
    finally:
        Image.MAX_IMAGE_PIXELS = saved


_QUIET_LOCK = threading.Lock()
_DEVNULL: list[int] = []


@contextlib.contextmanager
def codec_output_dropped() -> Iterator[None]:
    """Drop what is written to file descriptor 2 meanwhile.

    libpng and libjpeg print their warnings and errors there themselves ("libpng error: IDAT:
    CRC error", "Corrupt JPEG data: 12 extraneous bytes"), around weakpaste's one-line error or
    for an image that decodes all the same. The lock keeps two threads from swapping the
    descriptor under each other.
    """
    with _QUIET_LOCK:
        if not _DEVNULL:
            _DEVNULL.append(os.open(os.devnull, os.O_WRONLY))
        saved = os.dup(2)
        os.dup2(_DEVNULL[0], 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def decode_image(data: np.ndarray, path: str | os.PathLike, flags: int = cv2.IMREAD_COLOR
                 ) -> np.ndarray | None:
    """OpenCV's decoding of an image file's bytes, after the header checks of ``read_image``
    (size known, within ``max_image_pixels()``), with the codecs' own messages dropped.

    Args:
        data: the file's bytes as uint8.
        path: the file, for messages.
        flags: ``cv2.imdecode`` flags.

    Returns:
        OpenCV's array (BGR or grayscale), or None when OpenCV cannot decode it.

    Raises:
        WeakpasteError: no size in the header, or too many pixels.
    """
    _check_pixels(Path(path), data)
    if not data.size:
        return None
    try:
        with codec_output_dropped():
            return cv2.imdecode(data, flags | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error:  # e.g. above OpenCV's own pixel limit, raised by the user's setting
        return None


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as RGB (``read_image_sha256`` without the hash)."""
    return read_image_sha256(path, digest=False)[0]


def read_image_sha256(path: str | os.PathLike, *, digest: bool = True
                      ) -> tuple[np.ndarray, str | None]:
    """Read an image file as RGB, with the SHA-256 of the bytes decoded.

    The hash costs little next to the decoding, and proves which bytes a run used (a
    resumed paste compares it with the interrupted run's).

    Grayscale, RGBA, palette and CMYK files are converted to RGB (alpha dropped). The file's
    EXIF orientation is ignored so that the pixels match the width/height that annotation
    files record.

    Args:
        path: image file.
        digest: compute the hash (else None).

    Returns:
        (uint8 (H, W, 3) RGB, hex SHA-256 of the file's bytes or None).

    Raises:
        WeakpasteError: the file is missing, cannot be decoded, is of no format in
            ``PIL_FORMATS``, or its header gives more pixels than ``max_image_pixels()``.
    """
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise WeakpasteError(f"{path}: image file not found; check the images folder "
                             "or remove the entry") from None
    except OSError as err:
        raise WeakpasteError(f"{path}: cannot read image ({err.strerror}); check the file's "
                             "permissions") from None
    sha = hashlib.sha256(data).hexdigest() if digest else None
    bgr = decode_image(data, path)
    if bgr is not None:
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), sha
    # OpenCV does not decode every format (e.g. some CMYK or palette files); Pillow may.
    return _decode_pillow(path, data), sha


def encode_image(rgb: np.ndarray, fmt: str = "jpg", quality: int = 95) -> bytes:
    """Encode RGB uint8 (H, W, 3) as JPEG or PNG bytes (deterministic for equal input)."""
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if fmt in ("jpg", "jpeg"):
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    elif fmt == "png":
        ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    else:
        raise ValueError(f"unknown image format {fmt!r}; choose jpg or png")
    if not ok:
        raise WeakpasteError(f"could not encode a {rgb.shape} image as {fmt}")
    return buf.tobytes()


def read_image_of_size(path: str | os.PathLike, width: int, height: int, source: str
                       ) -> np.ndarray:
    """``read_image`` that checks the size an annotation file gives the image.

    Args:
        path: the image file.
        width, height: the size ``source`` records for it.
        source: who records it, for the message (an annotation file's path, "its COCO entry").

    Returns:
        uint8 (height, width, 3) RGB.

    Raises:
        WeakpasteError: unreadable image, or another size than recorded.
    """
    rgb = read_image(path)
    if rgb.shape[:2] != (height, width):
        raise WeakpasteError(f"{path}: image is {rgb.shape[1]}x{rgb.shape[0]} but {source} says "
                             f"{width}x{height}; fix 'width'/'height' or the image")
    return rgb


def write_image(path: str | os.PathLike, rgb: np.ndarray, quality: int = 95) -> None:
    """Atomically write RGB uint8 (H, W, 3) to ``path``; the format follows the extension."""
    fmt = Path(path).suffix.lower().lstrip(".")
    atomic_write_bytes(path, encode_image(rgb, fmt, quality))


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files below ``folder`` (recursively, hidden files and folders left out), sorted
    by relative path.

    Raises:
        WeakpasteError: the folder does not exist or holds no image.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise WeakpasteError(f"{folder}: not a folder; pass a folder of images")
    # Hidden files and folders (macOS's ._photo.jpg resource forks, .thumbnails, .git) hold
    # no images of the data set.
    files = sorted(p for p in folder.rglob("*")
                   if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        raise WeakpasteError(f"{folder}: no image files ({', '.join(IMAGE_EXTENSIONS)}) found; "
                             "pass a folder that holds images")
    return files


def background_files(folder: str | os.PathLike) -> list[Path] | None:
    """The kept images a backgrounds output lists in its manifest (None: not such an output).

    Raises:
        WeakpasteError: the backgrounds run did not finish.
    """
    manifest = read_manifest(folder)
    if manifest is None or manifest.get("stage") != "backgrounds":
        return None
    if manifest.get("status") != "complete":
        raise WeakpasteError(f"{folder}: the backgrounds run did not finish; rerun it with "
                             f"{RESUME} first")
    return [Path(folder) / f for f in manifest.get("images", [])]
