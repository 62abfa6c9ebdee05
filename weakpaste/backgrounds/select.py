"""CLIP selection of generated backgrounds (EM-Paste §4.1: keep the top 5 of 10 by CLIP).

An image is kept when it is among the ``keep`` images most similar to its caption and no
target-class prompt ("a photo of a {class}") is more similar to it than ``reject_threshold``
(cosine similarity of the CLIP embeddings): the generator may draw a target object even from a
rewritten caption, and such an object would be an unlabelled instance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from weakpaste.backgrounds import CLIP_FLAG, DEFAULT_CLIP
from weakpaste.backgrounds._models import load_error, quiet_loading, resolve_device


@dataclass(frozen=True)
class Selection:
    """Scores and decision for the images of one caption.

    Attributes:
        caption_scores: float (n,) cosine similarity image-caption.
        class_scores: float (n,) highest cosine similarity to a target-class prompt.
        classes: (n,) the class of that prompt.
        kept: bool (n,) selected images.
        rejected: bool (n,) images over the class threshold.
    """

    caption_scores: np.ndarray
    class_scores: np.ndarray
    classes: tuple[str, ...]
    kept: np.ndarray
    rejected: np.ndarray


def select_images(caption_scores: np.ndarray, class_scores: np.ndarray, keep: int,
                  reject_threshold: float,
                  blocked: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The selection rule on precomputed scores.

    Args:
        caption_scores: float (n,) image-caption similarity.
        class_scores: float (n, K) image-class-prompt similarity (K may be 0).
        keep: at most this many images are kept.
        reject_threshold: reject images with any class similarity above it.
        blocked: bool (n,) images that may not be kept anyway (blanked by a safety checker).

    Returns:
        (kept, rejected): bool (n,) each. Among the images not rejected, the ``keep`` best by
        caption similarity are kept (ties: lower index first).
    """
    n = len(caption_scores)
    rejected = (class_scores > reject_threshold).any(axis=1) if class_scores.size \
        else np.zeros(n, dtype=bool)
    order = np.argsort(-np.asarray(caption_scores, dtype=np.float64), kind="stable")
    excluded = rejected if blocked is None else rejected | np.asarray(blocked, dtype=bool)
    kept = np.zeros(n, dtype=bool)
    kept[[i for i in order if not excluded[i]][:keep]] = True
    return kept, rejected


class ClipSelector:
    """CLIP scoring of images against their caption and the target-class prompts.

    Args:
        model_id: hub id or local folder of a transformers ``CLIPModel``.
        classes: target class names for the rejection prompts.
        device: ``auto``, ``cpu`` or ``cuda``.
        template: the rejection prompt, with ``{}`` for the class.

    Raises:
        WeakpasteError: the model cannot be loaded (one line, names the id).
    """

    def __init__(self, model_id: str = DEFAULT_CLIP, classes: Sequence[str] = (),
                 device: str = "auto", template: str = "a photo of a {}"):
        import torch
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        self.device = resolve_device(device)
        with quiet_loading():
            try:
                self.tokenizer = AutoTokenizer.from_pretrained(model_id)
                self.image_processor = AutoImageProcessor.from_pretrained(model_id)
                self.model = CLIPModel.from_pretrained(model_id)
            except (OSError, ValueError, KeyError) as err:
                raise load_error("CLIP", model_id, CLIP_FLAG, err) from None
        self.model.to(self.device).eval()
        self._torch = torch
        self.classes = tuple(classes)
        self._class_emb = self._text([template.format(c) for c in self.classes]) \
            if self.classes else None

    def _text(self, texts: Sequence[str]):
        torch = self._torch
        max_len = self.model.config.text_config.max_position_embeddings
        tok = self.tokenizer(list(texts), padding=True, truncation=True, max_length=max_len,
                             return_tensors="pt").to(self.device)
        with torch.inference_mode():
            emb = self.model.get_text_features(input_ids=tok["input_ids"],
                                               attention_mask=tok.get("attention_mask"))
        emb = getattr(emb, "pooler_output", emb)
        return torch.nn.functional.normalize(emb.float(), dim=-1)

    def _images(self, images: Sequence[np.ndarray]):
        torch = self._torch
        pixels = self.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            emb = self.model.get_image_features(pixel_values=pixels.to(self.device))
        emb = getattr(emb, "pooler_output", emb)
        return torch.nn.functional.normalize(emb.float(), dim=-1)

    def score(self, images: Sequence[np.ndarray], caption: str
              ) -> tuple[np.ndarray, np.ndarray]:
        """Cosine similarities.

        Args:
            images: RGB uint8 (H, W, 3) arrays.
            caption: the text they were generated from.

        Returns:
            (caption similarity float (n,), class-prompt similarity float (n, K)).
        """
        img = self._images(images)
        cap = (img @ self._text([caption]).T)[:, 0].cpu().numpy()
        if self._class_emb is None:
            return cap, np.zeros((len(images), 0))
        return cap, (img @ self._class_emb.T).cpu().numpy()

    def select(self, images: Sequence[np.ndarray], caption: str, keep: int,
               reject_threshold: float, blocked: Sequence[bool] | None = None) -> Selection:
        """Score and select the images of one caption (see ``select_images``)."""
        cap, cls = self.score(images, caption)
        kept, rejected = select_images(cap, cls, keep, reject_threshold,
                                       None if blocked is None else np.asarray(blocked))
        best = cls.argmax(axis=1) if cls.size else np.zeros(len(images), dtype=int)
        return Selection(caption_scores=cap,
                         class_scores=cls.max(axis=1) if cls.size else np.zeros(len(images)),
                         classes=tuple(self.classes[b] if self.classes else "" for b in best),
                         kept=kept, rejected=rejected)
