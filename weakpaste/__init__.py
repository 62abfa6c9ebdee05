"""weakpaste: instance-segmentation training data without mask annotations."""

__version__ = "0.1.0"
