"""weakpaste: instance-segmentation training data without mask annotations."""

import os as _os

__version__ = "0.1.0"

# OpenCV reads its largest decodable image once, when it is loaded: set it to weakpaste's
# pixel limit (weakpaste.io.images.max_image_pixels) before any module imports cv2, so that
# no image format OpenCV knows can make it allocate more, whatever its header claims. An
# invalid WEAKPASTE_MAX_IMAGE_PIXELS is left for read_image to refuse in one line.
_pixels = _os.environ.get("WEAKPASTE_MAX_IMAGE_PIXELS", "").strip() or str(1 << 28)
if _pixels.isdigit() and int(_pixels) > 0:
    _os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", _pixels)
del _pixels
