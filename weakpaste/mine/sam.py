"""Segment Anything's automatic masks as F-EM proposals (optional ``segment-anything``)."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np

from weakpaste.core.errors import WeakpasteError
from weakpaste.mine.config import MIN_IMAGE_SIDE
from weakpaste.mine.grouping import as_rgb, check_options, filter_candidates, working_image
from weakpaste.mine.proposals import Proposals


class SamProposer:
    """Segment Anything's automatic masks as proposals (Kirillov et al. 2023).

    Needs the optional ``segment-anything`` package and a checkpoint file. The model runs on
    the working-resolution image, so its masks are stored as explicit working-resolution masks.

    Args:
        checkpoint: path of the SAM weights (e.g. ``sam_vit_b_01ec64.pth``).
        model_type: key of ``segment_anything.sam_model_registry``: ``"vit_b"``, ``"vit_l"``
            or ``"vit_h"``.
        device: torch device the model runs on.
        min_area: as in :func:`generate_proposals`.
        max_span: as in :func:`generate_proposals`.
        max_candidates: as in :func:`generate_proposals`.
        **generator_options: passed to ``SamAutomaticMaskGenerator`` (e.g.
            ``points_per_side=16``).

    Raises:
        WeakpasteError: the package is not installed, the checkpoint file is missing, or the
            model type is unknown.
    """

    def __init__(self, checkpoint: str, model_type: str = "vit_b", *, device: str = "cpu",
                 min_area: float = 0.01, max_span: float = 0.95, max_candidates: int = 300,
                 **generator_options: object):
        try:
            sam_pkg = importlib.import_module("segment_anything")
        except ImportError:
            raise WeakpasteError("SAM proposals need the 'segment-anything' package: "
                                 "pip install segment-anything") from None
        path = Path(checkpoint)
        if not path.is_file():
            raise WeakpasteError(f"{path}: SAM checkpoint not found; download the {model_type} "
                                 "weights from the segment-anything repository and pass their "
                                 "path")
        registry = sam_pkg.sam_model_registry
        if model_type not in registry:
            raise WeakpasteError(f"unknown SAM model type {model_type!r}; choose from: "
                                 f"{', '.join(sorted(registry))}")
        check_options(MIN_IMAGE_SIDE, min_area, max_span, max_candidates, "SamProposer")
        model = registry[model_type](checkpoint=str(path))
        if hasattr(model, "to"):
            model.to(device)
        self._generator = sam_pkg.SamAutomaticMaskGenerator(model, **generator_options)
        self.min_area, self.max_span, self.max_candidates = min_area, max_span, max_candidates

    def propose(self, image: np.ndarray, *, max_side: int = 512) -> Proposals:
        """SAM's masks of an image as filtered proposals (explicit masks).

        Args:
            image: as in :func:`generate_proposals`.
            max_side: longer side of the working resolution the model sees.

        Returns:
            Proposals in explicit-mask mode, highest predicted IoU first, filtered like
            :func:`generate_proposals`' candidates.
        """
        check_options(max_side, self.min_area, self.max_span, self.max_candidates,
                       "SamProposer")
        rgb = as_rgb(image, "SamProposer")
        work = working_image(rgb, int(max_side))
        records = self._generator.generate(work)
        masks = [np.asarray(r["segmentation"], dtype=bool) for r in records]
        scores = [float(r.get("predicted_iou", 0.0)) for r in records]
        keep = [i for i, m in enumerate(masks) if m.shape == work.shape[:2] and m.any()]
        if not keep:
            return Proposals.from_masks(np.zeros((0, *work.shape[:2]), dtype=bool),
                                        rgb.shape[:2])
        # Stable sort: equal scores keep SAM's own order, so the result is deterministic.
        keep.sort(key=lambda i: -scores[i])
        props = Proposals.from_masks(np.stack([masks[i] for i in keep]), rgb.shape[:2])
        return filter_candidates(props, [np.arange(len(props))], min_area=self.min_area,
                       max_span=self.max_span, max_candidates=self.max_candidates)

    __call__ = propose
