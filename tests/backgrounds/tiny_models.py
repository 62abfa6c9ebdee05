"""Tiny randomly initialised models saved like hub checkpoints, for download-free tests.

Each builder writes a folder that ``from_pretrained(folder)`` loads through the same code as a
real checkpoint: a BLIP captioner, a CLIP model and a Stable Diffusion pipeline, all with a
character-level CLIP tokenizer or a word-level tokenizer made here.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

CAPTION_WORDS = ("a", "dog", "man", "on", "the", "beach", "two", "people", "near", "table",
                 "grass", "with", "red", "car", "street")


def clip_tokenizer(folder: Path, max_length: int = 64):
    """A character-level CLIP BPE tokenizer (every character is a token; no merges)."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = string.ascii_lowercase + string.digits + ".,;:!?'-\"()"
    tokens = ["<|startoftext|>", "<|endoftext|>"] + list(chars) + [c + "</w>" for c in chars]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                        model_max_length=max_length)
    return tok


def build_clip(folder: Path) -> Path:
    """A tiny CLIPModel + tokenizer + image processor (32x32 input)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    tok = clip_tokenizer(folder / "_tok")
    config = CLIPConfig(
        text_config={"vocab_size": len(tok), "hidden_size": 16, "intermediate_size": 32,
                     "num_hidden_layers": 1, "num_attention_heads": 2,
                     "max_position_embeddings": 64, "projection_dim": 8,
                     "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8,
                       "projection_dim": 8},
        projection_dim=8)
    with torch.random.fork_rng():
        torch.manual_seed(0)  # fixed weights: test outcomes must not depend on the run
        model = CLIPModel(config)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32},
                       crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def build_blip(folder: Path) -> Path:
    """A tiny BLIP captioner with a word-level tokenizer over ``CAPTION_WORDS``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        PreTrainedTokenizerFast,
    )

    special = ["[PAD]", "[UNK]", "[BOS]", "[SEP]"]
    vocab = {w: i for i, w in enumerate(special + list(CAPTION_WORDS))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]",
                                  unk_token="[UNK]", bos_token="[BOS]", sep_token="[SEP]")
    config = BlipConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": 16, "intermediate_size": 32,
                     "num_hidden_layers": 1, "num_attention_heads": 2,
                     "encoder_hidden_size": 16, "max_position_embeddings": 32,
                     "bos_token_id": 2, "sep_token_id": 3, "pad_token_id": 0,
                     "eos_token_id": 3},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        projection_dim=8)
    with torch.random.fork_rng():
        # Fixed weights: an unlucky random captioner emits end-of-sequence first (no caption).
        torch.manual_seed(0)
        model = BlipForConditionalGeneration(config)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    BlipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def build_stable_diffusion(folder: Path) -> Path:
    """A tiny Stable Diffusion pipeline (UNet, VAE, CLIP text encoder) making 32x32 images."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    tok = clip_tokenizer(folder / "_tok")
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=64, bos_token_id=0, eos_token_id=1,
        pad_token_id=1))
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(8, 16),
        layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
        attention_head_dim=2, norm_num_groups=4)
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 8),
                        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
                        latent_channels=4, norm_num_groups=4, sample_size=32)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tok, unet=unet,
                                   scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder
