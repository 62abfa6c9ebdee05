"""Torch models: backbones and their weights, the image classifier, Grad-CAM, the MIL
head, region pooling, saliency, the torch device.

Imported only by the stages that run a model; ``weakpaste --help`` never loads torch.

May import: core, ops, structures, io.
"""
