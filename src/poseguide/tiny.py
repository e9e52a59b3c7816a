"""A tiny Stable-Diffusion-architecture pipeline built from configs, for tests and the demo.

Same classes and folder layout as SD1.5 (AutoencoderKL with an 8x downsampling encoder, a
UNet2DConditionModel with cross-attention, a CLIP text model and tokenizer, a DDPM noise
schedule with SD1.5's betas), only narrow: it has random weights, runs in milliseconds on a CPU
and is saved with ``save_pretrained`` so that it is loaded through the same ``from_pretrained``
path as the real model.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from poseguide.utils.io import atomic_directory

log = logging.getLogger(__name__)

TINY_HIDDEN = 32  # text embedding width = UNet cross-attention width
SD15_SCHEDULER = {  # SD1.5's scheduler/scheduler_config.json (PNDM), the values that matter
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "skip_prk_steps": True,
}


def _byte_vocab() -> dict[str, int]:
    """CLIP's byte-level alphabet, each symbol plain and word-final (``</w>``), plus specials."""
    visible = (
        list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    )
    chars, extra = [], 0
    for b in range(256):
        if b in visible:
            chars.append(chr(b))
        else:  # bytes without a printable form map above 255, as in GPT-2/CLIP byte encoding
            chars.append(chr(256 + extra))
            extra += 1
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(tokens)}


def tiny_tokenizer(folder: Path) -> object:
    """A CLIP tokenizer over single characters (no merges): every caption fits, spelled out."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(_byte_vocab()))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77
    )


def tiny_components(seed: int = 0) -> dict:
    """Fresh tiny VAE, UNet and text encoder with seeded random weights, and SD1.5's scheduler."""

    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the global RNG
        torch.manual_seed(seed)
        return _tiny_components()


def _tiny_components() -> dict:
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TINY_HIDDEN,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(  # four blocks: the encoder downsamples 8x, as SD's does
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
    )
    vocab_size = len(_byte_vocab())
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=TINY_HIDDEN,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            vocab_size=vocab_size,
            max_position_embeddings=77,
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
        )
    )
    scheduler = PNDMScheduler.from_config(SD15_SCHEDULER)  # SD1.5 ships a PNDM scheduler
    return {"vae": vae, "unet": unet, "text_encoder": text_encoder, "scheduler": scheduler}


def build_tiny_sd(folder: str | Path | None = None, seed: int = 0) -> Path:
    """Build (once) and return a tiny SD pipeline folder loadable with ``from_pretrained``."""
    from diffusers import StableDiffusionPipeline

    from poseguide.models import TINY_SD_VERSION, cache_root

    folder = (
        Path(folder) if folder else cache_root() / "models" / f"tiny-sd-v{TINY_SD_VERSION}-s{seed}"
    )
    if (folder / "model_index.json").is_file():
        return folder
    log.info("building the tiny SD pipeline in %s", folder)
    with atomic_directory(folder) as tmp:
        parts = tiny_components(seed)
        tokenizer = tiny_tokenizer(tmp / "_tok")
        pipe = StableDiffusionPipeline(
            **parts,
            tokenizer=tokenizer,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.save_pretrained(tmp, safe_serialization=True)
        # Keep every key of SD1.5's scheduler file (PNDM drops clip_sample, which DDPM reads).
        scheduler_file = tmp / "scheduler" / "scheduler_config.json"
        saved = json.loads(scheduler_file.read_text())
        scheduler_file.write_text(json.dumps({**saved, **SD15_SCHEDULER}, indent=2))
        for leftover in (tmp / "_tok").iterdir():
            leftover.unlink()
        (tmp / "_tok").rmdir()
    return folder
