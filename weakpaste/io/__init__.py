"""File formats: the only code that knows their quirks.

COCO and LVIS instances files (``coco``, ``lvis``), RLE checks (``rle``), image files
(``images``), image-level labels (``labels``), COCO captions, detector results
(``results``). Inside weakpaste masks are bool (H, W) and boxes xyxy; conversions happen here.

May import: core, ops, structures.
"""
