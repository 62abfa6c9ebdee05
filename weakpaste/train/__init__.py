"""Mask R-CNN training and evaluation on COCO data, and long-tailed subsets.

* ``weakpaste.train.data``: COCO sets as torch data, class mapping by name, augmentation
  (large-scale jittering, brightness/contrast), repeat-factor sampling.
* ``weakpaste.train.config``: the options of ``train``, ``eval`` and ``longtail`` (no torch).
* ``weakpaste.train.model``: the model (ResNet-50/34/18, MobileNetV2 or MobileNetV3 FPN), its
  weights and checkpoints.
* ``weakpaste.train.loop``: the SGD schedule, resume and the two-stage loop (``run_train``).
* ``weakpaste.train.plan``: what the training data decide (stages, classes, counts);
  ``weakpaste.train.resume``: the checkpoint a run resumes from and the data check.
* ``weakpaste.train.evaluation``: the ``eval`` stage: a checkpoint's predictions, scored by
  ``weakpaste.evaluate.detection`` (``run_eval``); ``loop`` evaluates with it after training.
* ``weakpaste.train.longtail``: Pareto long-tailed subsets (``run_longtail``; no torch).

Nothing is imported here, so that ``config`` and ``longtail`` stay free of torch.

May import: core, ops, structures, io, models, evaluate.
"""
