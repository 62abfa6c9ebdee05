"""Mask R-CNN training and evaluation on COCO data, and long-tailed subsets.

* ``weakpaste.train.data``: COCO sets as torch data, class mapping by name, augmentation
  (large-scale jittering, brightness/contrast), repeat-factor sampling.
* ``weakpaste.train.engine``: the model (ResNet-50 / MobileNetV3 FPN), weights, the SGD
  schedule, checkpoints, resume and the two-stage loop (``run_train``).
* ``weakpaste.train.evaluation``: COCOeval bbox/segm, per-class and rare/common/frequent AP
  (``run_eval``).
* ``weakpaste.train.longtail``: Pareto long-tailed subsets (``run_longtail``; no torch).

Nothing is imported here, so that ``longtail`` stays free of torch.
"""
