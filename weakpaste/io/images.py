"""Reading and writing image files (RGB uint8 in memory) and atomic file writes."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from weakpaste.errors import WeakpasteError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    path = Path(path)
    # A per-process temporary name is enough: one process writes a given output at a time.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as RGB.

    Grayscale, RGBA, palette and CMYK files are converted to RGB (alpha dropped). The file's
    EXIF orientation is ignored so that the pixels match the width/height that annotation
    files record.

    Args:
        path: image file.

    Returns:
        uint8 (H, W, 3) RGB.

    Raises:
        WeakpasteError: the file is missing or cannot be decoded.
    """
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise WeakpasteError(f"{path}: image file not found; check the images folder "
                             "(--images) or remove the entry") from None
    except OSError as err:
        raise WeakpasteError(f"{path}: cannot read image ({err.strerror}); check the file's "
                             "permissions") from None
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION) if data.size \
        else None
    if bgr is not None:
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    # OpenCV does not decode every format (e.g. some CMYK or palette files); Pillow may.
    try:
        from PIL import Image

        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except Exception as err:
        raise WeakpasteError(f"{path}: cannot decode image ({type(err).__name__}); the file is "
                             "corrupt or not an image: re-export it as JPEG or PNG") from None


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
    """Image files below ``folder`` (recursively), sorted by relative path.

    Raises:
        WeakpasteError: the folder does not exist or holds no image.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise WeakpasteError(f"{folder}: not a folder; pass a folder of images")
    files = sorted(p for p in folder.rglob("*")
                   if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                   and not p.name.startswith("."))
    if not files:
        raise WeakpasteError(f"{folder}: no image files ({', '.join(IMAGE_EXTENSIONS)}) found; "
                             "pass a folder that holds images")
    return files
