"""Text-to-image generation of context backgrounds with diffusers (EM-Paste §3.2).

Any diffusers text-to-image pipeline loads (``AutoPipelineForText2Image``), e.g. Stable
Diffusion ``stable-diffusion-v1-5/stable-diffusion-v1-5``. Image j of a caption is drawn from
its own ``torch.Generator`` seeded from the caption's ``SeedSequence`` child, so an image does
not depend on the batch it was generated in, nor on which captions were done before a resume.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from weakpaste.backgrounds import DEFAULT_GENERATOR, GENERATOR_FLAG
from weakpaste.backgrounds._models import load_error, quiet_loading, resolve_device


def image_seeds(seed: np.random.SeedSequence, n: int) -> list[int]:
    """n 63-bit torch seeds from a caption's SeedSequence."""
    return [int(s.generate_state(1, np.uint64)[0] >> np.uint64(1)) for s in seed.spawn(n)]


class TextToImage:
    """A diffusers text-to-image pipeline.

    Args:
        model_id: hub id or local folder (``from_pretrained``).
        device: ``auto``, ``cpu`` or ``cuda``; fp16 weights on cuda, fp32 on cpu.
        steps: denoising steps.
        guidance_scale: classifier-free guidance scale.
        height: output height (pixels; None: the model's default).
        width: output width (pixels; None: the model's default).
        negative_prompt: what the images should not show (None: nothing).

    Raises:
        WeakpasteError: the pipeline cannot be loaded (one line, names the id).
    """

    def __init__(self, model_id: str = DEFAULT_GENERATOR, device: str = "auto",
                 steps: int = 30, guidance_scale: float = 7.5, height: int | None = None,
                 width: int | None = None, negative_prompt: str | None = None):
        import torch
        from diffusers import AutoPipelineForText2Image

        self.device = resolve_device(device)
        # Half precision only where it is fast and safe: CUDA (CPU fp16 is slow or unsupported).
        kwargs = {"torch_dtype": torch.float16} if self.device.startswith("cuda") else {}
        with quiet_loading():
            try:
                self.pipe = AutoPipelineForText2Image.from_pretrained(model_id, **kwargs)
            except (OSError, ValueError, KeyError) as err:
                raise load_error("text-to-image", model_id, GENERATOR_FLAG, err) from None
        self.pipe.to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        self.steps, self.guidance_scale = steps, guidance_scale
        self.height, self.width = height, width
        self.negative_prompt = negative_prompt
        self._torch = torch

    def generate(self, prompt: str, seeds: Sequence[int],
                 batch_size: int = 4) -> tuple[list[np.ndarray], list[bool]]:
        """Images of one prompt, one per seed.

        Args:
            prompt: the (rewritten) caption.
            seeds: one torch seed per image.
            batch_size: images per pipeline call.

        Returns:
            (RGB uint8 (H, W, 3) arrays, whether the pipeline's safety checker blanked each
            one), in ``seeds`` order.
        """
        torch = self._torch
        out: list[np.ndarray] = []
        flagged: list[bool] = []
        for start in range(0, len(seeds), batch_size):
            chunk = seeds[start:start + batch_size]
            gens = [torch.Generator(device="cpu").manual_seed(s) for s in chunk]
            kwargs = {}
            if self.height:
                kwargs["height"] = self.height
            if self.width:
                kwargs["width"] = self.width
            if self.negative_prompt:
                kwargs["negative_prompt"] = [self.negative_prompt] * len(chunk)
            with torch.inference_mode():
                result = self.pipe(prompt=[prompt] * len(chunk), generator=gens,
                                   num_inference_steps=self.steps,
                                   guidance_scale=self.guidance_scale, output_type="np",
                                   **kwargs)
            images = np.asarray(result.images)  # float (B, H, W, 3) in [0, 1]
            out.extend(np.clip(np.rint(images * 255), 0, 255).astype(np.uint8))
            # Stable Diffusion's safety checker returns black images and says which.
            nsfw = getattr(result, "nsfw_content_detected", None) or [False] * len(chunk)
            flagged.extend(bool(f) for f in nsfw)
        return out, flagged
