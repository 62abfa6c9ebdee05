import numpy as np
import pytest

from weakpaste.errors import WeakpasteError
from weakpaste.io.images import read_image_of_size, write_image


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
