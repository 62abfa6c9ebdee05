"""Scoring against ground truth: COCO/LVIS AP of detections, mined-mask quality, the funnel.

* ``coco``: pycocotools and lvis-api adapters (ground truth and detections as they want them).
* ``detection``: AP, per class and rare/common/frequent (used by ``eval`` and ``train``).
* ``masks``: precision and yield of mined masks (``evaluate-masks``).
* ``funnel``: where the right segment is lost between proposals and the kept mask; curves.

No torch. The miners never import this package: they must not see the ground truth.

May import: core, ops, structures, io, bank.
"""
