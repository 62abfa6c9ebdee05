"""Pure numpy/OpenCV kernels on arrays: masks, boxes and geometry, blending, grids.

No files, no torch, no randomness of their own (a caller passes a ``Generator``).

May import: core.
"""
