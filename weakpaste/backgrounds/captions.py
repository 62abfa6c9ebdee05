"""Captions of the source images: from an image-to-text model or from a COCO captions file.

The file path is a thin wrapper of ``weakpaste.io.coco_captions``; the model path runs any
transformers image-text-to-text model that ``AutoModelForImageTextToText`` knows (BLIP, GIT,
VisionEncoderDecoder), e.g. ``Salesforce/blip-image-captioning-base``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

from weakpaste.backgrounds import CAPTIONER_FLAG, CAPTIONS_FLAG, DEFAULT_CAPTIONER
from weakpaste.backgrounds._models import load_error, quiet_loading, resolve_device
from weakpaste.io.coco_captions import Caption, load_coco_captions

__all__ = ["Caption", "Captioner", "DEFAULT_CAPTIONER", "load_coco_captions"]


class Captioner:
    """An image captioning model.

    Args:
        model_id: hub id or local folder (``from_pretrained``).
        device: ``auto``, ``cpu`` or ``cuda``.
        max_new_tokens: caption length cap.
        num_captions: captions per image; more than one samples (``do_sample``) instead of
            beam search, so the captions differ.
        seed: torch seed for sampling.

    Raises:
        WeakpasteError: the model or its processor cannot be loaded (one line, names the id).
    """

    def __init__(self, model_id: str = DEFAULT_CAPTIONER, device: str = "auto",
                 max_new_tokens: int = 30, num_captions: int = 1, seed: int = 0):
        import torch
        from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

        self.device = resolve_device(device)
        self.max_new_tokens = max_new_tokens
        self.num_captions = num_captions
        self.seed = seed
        with quiet_loading():
            try:
                self.image_processor = AutoImageProcessor.from_pretrained(model_id)
                self.tokenizer = AutoTokenizer.from_pretrained(model_id)
                self.model = AutoModelForImageTextToText.from_pretrained(model_id)
            except (OSError, ValueError, KeyError) as err:
                raise load_error("captioning", model_id, CAPTIONER_FLAG, err,
                                 f"or {CAPTIONS_FLAG} FILE (COCO captions)") from None
        self.model.to(self.device).eval()
        self._torch = torch

    def caption(self, images: Sequence, seeds: Sequence[int] | None = None) -> list[list[str]]:
        """Captions of a batch.

        Args:
            images: RGB uint8 (H, W, 3) arrays.
            seeds: one torch seed per image for sampling (``num_captions`` > 1), so an
                image's captions do not depend on its batch (default: ``seed``).

        Returns:
            Per image, ``num_captions`` stripped captions.
        """
        torch = self._torch
        pixels = self.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
        pixels = pixels.to(self.device)
        n = self.num_captions
        with torch.inference_mode():
            if n == 1:  # deterministic decoding, batched
                ids = [self.model.generate(pixel_values=pixels,
                                           max_new_tokens=self.max_new_tokens)]
            else:
                ids = []
                for k in range(len(images)):
                    torch.manual_seed(seeds[k] if seeds is not None else self.seed)
                    ids.append(self.model.generate(
                        pixel_values=pixels[k:k + 1], max_new_tokens=self.max_new_tokens,
                        do_sample=True, num_return_sequences=n))
        texts = [" ".join(t.split()) for batch in ids
                 for t in self.tokenizer.batch_decode(batch, skip_special_tokens=True)]
        return [texts[i * n:(i + 1) * n] for i in range(len(images))]


def caption_folder(captioner: Captioner, paths: Sequence[str | os.PathLike],
                   seeds: Sequence[int] | None = None,
                   batch_size: int = 8) -> Iterator[tuple[int, list[str]]]:
    """Caption image files in batches; yields (index into ``paths``, its captions).

    Args:
        captioner: the model.
        paths: image files.
        seeds: one sampling seed per image (see ``Captioner.caption``).
        batch_size: images per batch.
    """
    from weakpaste.io.images import read_image

    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        chunk_seeds = None if seeds is None else seeds[start:start + batch_size]
        images = [read_image(p) for p in chunk]
        for k, caps in enumerate(captioner.caption(images, chunk_seeds)):
            yield start + k, caps
