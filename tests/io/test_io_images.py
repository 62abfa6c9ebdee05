import errno
import os

import numpy as np
import pytest
from conftest import png_header

from weakpaste.core.errors import WeakpasteError
from weakpaste.core.files import atomic_write_bytes
from weakpaste.io import images
from weakpaste.io.images import read_image, read_image_of_size, write_image


def test_read_image_of_size(tmp_path):
    path = tmp_path / "a.png"
    rgb = np.zeros((10, 12, 3), np.uint8)
    rgb[2, 3] = (1, 2, 3)
    write_image(path, rgb)
    out = read_image_of_size(path, 12, 10, "a.json")
    assert out.shape == (10, 12, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, rgb)
    with pytest.raises(WeakpasteError) as err:
        read_image_of_size(path, 10, 12, "a.json")
    assert str(err.value) == (f"{path}: image is 12x10 but a.json says 10x12; "
                              "fix 'width'/'height' or the image")


def test_an_image_over_the_pixel_limit_is_refused_from_its_header(tmp_path, monkeypatch):
    path = tmp_path / "huge.png"
    path.write_bytes(png_header(60000, 60000))
    with pytest.raises(WeakpasteError) as err:
        read_image(path)
    assert str(err.value) == (f"{path}: image is 60000x60000 pixels, more than the limit of "
                              "268435456; shrink it, or raise the limit with "
                              "WEAKPASTE_MAX_IMAGE_PIXELS if the file is genuine")
    # The limit is the user's: inclusive, and read at each call.
    small = tmp_path / "small.png"
    write_image(small, np.zeros((10, 12, 3), np.uint8))
    monkeypatch.setenv("WEAKPASTE_MAX_IMAGE_PIXELS", "119")
    with pytest.raises(WeakpasteError, match=r"image is 12x10 pixels, more than the limit of 119"):
        read_image(small)
    monkeypatch.setenv("WEAKPASTE_MAX_IMAGE_PIXELS", "120")
    assert read_image(small).shape == (10, 12, 3)
    monkeypatch.setenv("WEAKPASTE_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(WeakpasteError, match=r"WEAKPASTE_MAX_IMAGE_PIXELS='lots' is not a "
                                             r"positive number of pixels; unset it"):
        read_image(small)


def test_a_full_disk_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "a.json"
    atomic_write_bytes(path, b"old")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(images.os, "replace", full)
    with pytest.raises(WeakpasteError) as err:
        atomic_write_bytes(path, b"new")
    assert str(err.value) == (f"{tmp_path}: cannot write (No space left on device); free some "
                              "space or choose a writable --out, then run the command again "
                              "(with --resume where offered: finished work is kept)")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["a.json"]
