"""Stable-Diffusion-architecture pipelines built from configs with random weights, offline.

Same classes and folder layout as SD1.5 (AutoencoderKL with an 8x downsampling encoder, a
UNet2DConditionModel with cross-attention, a CLIP text model and tokenizer, a DDPM noise
schedule with SD1.5's betas), saved with ``save_pretrained`` so that they are loaded through the
same ``from_pretrained`` path as the real model. Two sizes:

* :func:`build_tiny_sd` (``builtin:tiny-sd``): narrow, runs in milliseconds on a CPU; for tests
  and the demo.
* :func:`build_random_sd15` (``builtin:sd15-random``): SD1.5's exact architecture (UNet, VAE, CLIP
  ViT-L/14 text encoder sizes) with random weights; for speed and memory benchmarks. It is ~4 GB
  on disk. Both use the tiny byte-level tokenizer (no BPE merges to download).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import torch

from poseguide.paths import cache_root
from poseguide.utils.io import atomic_directory

log = logging.getLogger(__name__)

TINY_SD_VERSION = 1  # bump when the tiny architecture changes; old folders are rebuilt
SD15_RANDOM_VERSION = 1  # bump when its construction changes; old folders are rebuilt
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

# Architectures as constructor arguments: {"unet": UNet2DConditionModel, "vae": AutoencoderKL,
# "text": CLIPTextConfig}. The text config's vocabulary defaults to the byte tokenizer's.
TINY_ARCH: dict[str, dict[str, Any]] = {
    "unet": {
        "sample_size": 8,
        "block_out_channels": (32, 64),
        "layers_per_block": 2,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "cross_attention_dim": TINY_HIDDEN,
        "attention_head_dim": 8,
        "norm_num_groups": 8,
    },
    "vae": {  # four blocks: the encoder downsamples 8x, as SD's does
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "block_out_channels": (8, 8, 16, 16),
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 4,
        "sample_size": 64,
    },
    "text": {
        "hidden_size": TINY_HIDDEN,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 77,
    },
}
# SD1.5's unet/, vae/ and text_encoder/ configs (runwayml/stable-diffusion-v1-5).
SD15_ARCH: dict[str, dict[str, Any]] = {
    "unet": {
        "sample_size": 64,
        "block_out_channels": (320, 640, 1280, 1280),
        "layers_per_block": 2,
        "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        "cross_attention_dim": 768,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
    },
    "vae": {
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "block_out_channels": (128, 256, 512, 512),
        "layers_per_block": 2,
        "latent_channels": 4,
        "norm_num_groups": 32,
        "sample_size": 512,
        "scaling_factor": 0.18215,
    },
    "text": {  # CLIP ViT-L/14's text tower
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "max_position_embeddings": 77,
        "vocab_size": 49408,  # CLIP's BPE vocabulary; the byte tokenizer uses its first 514 ids
        "hidden_act": "quick_gelu",
    },
}


def byte_vocab() -> dict[str, int]:
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


def tiny_tokenizer(folder: Path | None = None) -> object:
    """A CLIP tokenizer over single characters (no merges): every caption fits, spelled out.

    Its two files are written to ``folder`` (a temporary folder, removed again, when None)."""
    from transformers import CLIPTokenizer

    if folder is None:
        with tempfile.TemporaryDirectory() as tmp:
            return tiny_tokenizer(Path(tmp))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(byte_vocab()))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77
    )


def tiny_components(seed: int = 0) -> dict:
    """Fresh tiny VAE, UNet and text encoder with seeded random weights, and SD1.5's scheduler."""
    return random_components(TINY_ARCH, seed)


def random_components(arch: dict[str, dict[str, Any]], seed: int = 0) -> dict:
    """VAE, UNet and text encoder of ``arch`` with seeded random weights, SD1.5's scheduler."""
    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the global RNG
        torch.manual_seed(seed)
        return _components(arch)


def _components(arch: dict[str, dict[str, Any]]) -> dict:
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = UNet2DConditionModel(**arch["unet"])
    vae = AutoencoderKL(in_channels=3, out_channels=3, **arch["vae"])
    vocab = byte_vocab()
    # The specials are the byte tokenizer's ids, which any vocabulary size >= its own covers.
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    text = {"vocab_size": len(vocab), **arch["text"]}
    config = CLIPTextConfig(**text, bos_token_id=bos, eos_token_id=eos, pad_token_id=eos)
    text_encoder = CLIPTextModel(config)
    scheduler = PNDMScheduler.from_config(SD15_SCHEDULER)  # SD1.5 ships a PNDM scheduler
    return {"vae": vae, "unet": unet, "text_encoder": text_encoder, "scheduler": scheduler}


def _build(folder: Path, arch: dict[str, dict[str, Any]], seed: int) -> Path:
    """Build (once) a pipeline folder of ``arch`` with seeded random weights at ``folder``."""
    if (folder / "model_index.json").is_file():
        return folder
    log.info("building a random-weight SD pipeline in %s", folder)
    with atomic_directory(folder) as tmp:
        save_pipeline(tmp, random_components(arch, seed), tiny_tokenizer())
    return folder


def save_pipeline(folder: Path, parts: dict, tokenizer: Any) -> Path:
    """Write ``parts`` (vae, unet, text_encoder, scheduler) and ``tokenizer`` as a diffusers
    ``StableDiffusionPipeline`` folder (safetensors, no safety checker) into ``folder``."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        **parts,
        tokenizer=tokenizer,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    # Keep every key of SD1.5's scheduler file (PNDM drops clip_sample, which DDPM reads).
    scheduler_file = folder / "scheduler" / "scheduler_config.json"
    saved = json.loads(scheduler_file.read_text())
    scheduler_file.write_text(json.dumps({**saved, **SD15_SCHEDULER}, indent=2))
    return folder


def build_tiny_sd(folder: str | Path | None = None, seed: int = 0) -> Path:
    """Build (once) and return a tiny SD pipeline folder loadable with ``from_pretrained``."""
    name = f"tiny-sd-v{TINY_SD_VERSION}-s{seed}"
    return _build(Path(folder) if folder else cache_root() / "models" / name, TINY_ARCH, seed)


def build_random_sd15(folder: str | Path | None = None, seed: int = 0) -> Path:
    """Build (once) and return an SD1.5-architecture pipeline folder with random weights.

    The UNet (860M parameters), VAE (84M) and text encoder (123M) have SD1.5's exact shapes, so
    speed, memory and FLOPs match the real model; the outputs are meaningless. Building takes
    about a minute on a CPU and writes ~4 GB (float32 safetensors) under
    ``cache_root()/models/`` (or ``folder``): meant for benchmarks, not for tests.
    """
    name = f"sd15-random-v{SD15_RANDOM_VERSION}-s{seed}"
    return _build(Path(folder) if folder else cache_root() / "models" / name, SD15_ARCH, seed)


TINY_CLIP_ARCH = {
    "text": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 4, "max_position_embeddings": 77},
    "vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
               "num_attention_heads": 4, "image_size": 32, "patch_size": 8},
    "projection_dim": 16,
}  # fmt: skip


def build_tiny_clip(folder: str | Path | None = None, seed: int = 0) -> Path:
    """Build (once) a tiny CLIP (model, tokenizer, image processor) with random weights.

    The offline stand-in for ``openai/clip-vit-large-patch14`` in the tiny preset: the CLIP
    score code path runs, its values mean nothing.
    """
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    folder = Path(folder) if folder else cache_root() / "models" / f"tiny-clip-v1-s{seed}"
    if (folder / "config.json").is_file():
        return folder
    vocab = byte_vocab()
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    text = {**TINY_CLIP_ARCH["text"], "vocab_size": len(vocab), "bos_token_id": bos,
            "eos_token_id": eos, "pad_token_id": eos}  # fmt: skip
    config = CLIPConfig(text_config=text, vision_config=TINY_CLIP_ARCH["vision"],
                        projection_dim=TINY_CLIP_ARCH["projection_dim"])  # fmt: skip
    with atomic_directory(folder) as tmp, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        CLIPModel(config).save_pretrained(tmp, safe_serialization=True)
        tiny_tokenizer().save_pretrained(tmp)
        size = TINY_CLIP_ARCH["vision"]["image_size"]
        CLIPImageProcessor(size={"shortest_edge": size}, crop_size=size).save_pretrained(tmp)
    return folder
