"""Infrastructure every stage stands on; no computer vision here.

* ``errors``: ``WeakpasteError`` (one line for the user) and its helpers.
* ``options``: the one option dialect: config dataclasses whose fields carry their flag,
  default, range and help; the CLI parsers are built from them.
* ``manifest``: ``manifest.json`` of every output folder, fingerprints, output-folder checks.
* ``runners``: map a pure per-item function over items (process pool or Ray), seeded.
* ``files``, ``jsonfile``: atomic writes with one clear disk-full error; JSON with positions.
* ``threads``: a library's thread count for the length of a block.

Nothing here imports the rest of weakpaste, so any module may use it.

May import: nothing else of weakpaste.
"""
