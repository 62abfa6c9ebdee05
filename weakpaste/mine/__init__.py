"""Mining masks from image-level labels: F-EM (EM-Paste §3.1) and FreeSeg.

One pipeline (``pipeline``, with the ``miner`` interface, the ``resume`` checks and the
``outputs``); a miner is a pure per-image function plus a pure selection
(``fem``/``fem_image``/``mil``, ``freeseg``/``coseg``/``refine``/``lore``/``ranking``);
class-agnostic proposals (``proposals``, ``candidates``, ``grouping``, ``saliency``,
``saliency_proposals``, ``sam``), EM (``em``), the per-image cache (``cache``) and the options
(``config``).

May import: core, ops, structures, io, models, bank.
"""
