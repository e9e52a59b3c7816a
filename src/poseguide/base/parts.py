"""The base's parts: the synthetic training images, fresh models, the two phases' losses.

Everything random in a step (which rows, the noise, the timesteps, the dropped captions) is drawn
from a generator seeded by (seed, phase, step) (:func:`step_generator`), so the data position is
the step itself and a resumed run continues bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from poseguide.base.config import BaseConfig
from poseguide.models.tiny import byte_vocab, tiny_tokenizer
from poseguide.synth import make_sample
from poseguide.text import encode_captions

PHASES = ("vae", "unet")


# ----------------------------------------------------------------------------------- data


def training_images(cfg: BaseConfig, progress: bool = True) -> tuple[torch.Tensor, list[str]]:
    """The synthetic people, (N, 3, R, R) float32 in [-1, 1], and their captions."""

    d, size = cfg.data, (cfg.data.resolution, cfg.data.resolution)
    images = np.empty((d.n, size[1], size[0], 3), dtype=np.uint8)
    captions = []
    for i in tqdm(range(d.n), desc="synthetic people", disable=not progress, leave=False):
        sample = make_sample(d.seed, i, tuple(d.size), d.two_people)
        picture = Image.fromarray(sample.image).resize(size, Image.Resampling.LANCZOS)
        images[i] = np.asarray(picture)
        captions.append(sample.caption)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return pixels, captions


def step_generator(seed: int, phase: str, step: int) -> torch.Generator:
    """The generator of everything random in ``step`` of ``phase``."""
    return torch.Generator().manual_seed(seed * 1_000_003 + PHASES.index(phase) * 10**9 + step)


def batch_rows(seed: int, phase: str, step: int, n: int, batch: int) -> torch.Tensor:
    """Rows of ``step``: epochs are seeded permutations of the N rows, read ``batch`` at a time
    (the last partial batch of an epoch wraps into the next permutation)."""
    start = step * batch
    rows = []
    while len(rows) < batch:
        epoch, offset = divmod(start + len(rows), n)
        perm = torch.randperm(n, generator=step_generator(seed, phase, -1 - epoch))
        rows.extend(perm[offset : offset + batch - len(rows)].tolist())
    return torch.tensor(rows)


# --------------------------------------------------------------------------------- models


def new_models(cfg: BaseConfig) -> dict[str, Any]:
    """Fresh VAE, UNet and text encoder with weights seeded by ``cfg.seed``, and the tokenizer."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    vocab = byte_vocab()
    special = {"bos_token_id": vocab["<|startoftext|>"], "eos_token_id": vocab["<|endoftext|>"]}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        vae = AutoencoderKL(in_channels=3, out_channels=3, sample_size=cfg.data.resolution,
                            down_block_types=("DownEncoderBlock2D",) * _blocks(cfg.vae.arch),
                            up_block_types=("UpDecoderBlock2D",) * _blocks(cfg.vae.arch),
                            **cfg.vae.arch)  # fmt: skip
        text = CLIPTextConfig(vocab_size=len(vocab), pad_token_id=special["eos_token_id"],
                              **special, **cfg.text)  # fmt: skip
        text_encoder = CLIPTextModel(text).requires_grad_(False).eval()
        latent = cfg.data.resolution // 2 ** (_blocks(cfg.vae.arch) - 1)
        channels = vae.config.latent_channels
        unet = UNet2DConditionModel(sample_size=latent, in_channels=channels,
                                    out_channels=channels, cross_attention_dim=text.hidden_size,
                                    **cfg.unet.arch)  # fmt: skip
    return {"vae": vae, "unet": unet, "text_encoder": text_encoder,
            "tokenizer": tiny_tokenizer()}  # fmt: skip


def _blocks(arch: dict[str, Any]) -> int:
    return len(arch["block_out_channels"])


def make_optimizer(params: list[torch.nn.Parameter], phase: Any) -> tuple[Any, Any]:
    """AdamW and a linear-warmup-then-constant LR for a phase's settings."""
    optimizer = torch.optim.AdamW(params, lr=phase.lr, weight_decay=phase.weight_decay)
    warm = max(phase.warmup_steps, 1)
    lr = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warm))
    return optimizer, lr


def vae_loss(vae: Any, x: torch.Tensor, kl_weight: float, g: torch.Generator) -> torch.Tensor:
    """L1 + L2 reconstruction of ``x`` (B, 3, R, R) in [-1, 1], plus ``kl_weight`` * KL."""
    posterior = vae.encode(x).latent_dist
    noise = torch.randn(posterior.mean.shape, generator=g)
    decoded = vae.decode(posterior.mean + posterior.std * noise).sample
    error = decoded - x
    return error.abs().mean() + error.pow(2).mean() + kl_weight * posterior.kl().mean()


@dataclass
class Latents:
    """The training set as the frozen VAE sees it: distribution (N, C, h, w) and caption ids."""

    mean: torch.Tensor
    std: torch.Tensor
    scaling_factor: float
    text: torch.Tensor  # (K + 1, 77, D): one embedding per distinct caption, the last is ""
    caption_ids: torch.Tensor  # (N,) row -> index into text


@torch.no_grad()
def encode_training_set(vae: Any, models: dict, pixels: torch.Tensor, captions: list[str],
                        batch: int = 64) -> Latents:  # fmt: skip
    """Latent distributions of every image, the scaling factor (1 / their std) and captions."""

    means, stds = [], []
    for start in range(0, len(pixels), batch):
        dist = vae.encode(pixels[start : start + batch]).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    mean, std = torch.cat(means), torch.cat(stds)
    scaling = float(1.0 / torch.sqrt(mean.var() + std.pow(2).mean()))
    distinct = sorted(set(captions))
    index = {c: i for i, c in enumerate(distinct)}
    text = torch.cat([encode_captions(models["text_encoder"], models["tokenizer"],
                                      distinct[i : i + batch] or [""])
                      for i in range(0, len(distinct), batch)])  # fmt: skip
    empty = encode_captions(models["text_encoder"], models["tokenizer"], [""])
    ids = torch.tensor([index[c] for c in captions])
    return Latents(mean, std, scaling, torch.cat([text, empty]), ids)


def unet_loss(unet: Any, scheduler: Any, lat: Latents, rows: torch.Tensor, dropout: float,
              g: torch.Generator) -> torch.Tensor:  # fmt: skip
    """Epsilon-prediction MSE on rows' latents, captions dropped with probability ``dropout``."""
    mean, std = lat.mean[rows], lat.std[rows]
    latents = (mean + std * torch.randn(mean.shape, generator=g)) * lat.scaling_factor
    noise = torch.randn(latents.shape, generator=g)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (len(rows),), generator=g)
    drop = torch.rand(len(rows), generator=g) < dropout
    ids = torch.where(drop, len(lat.text) - 1, lat.caption_ids[rows])
    noisy = scheduler.add_noise(latents, noise, t)
    prediction = unet(noisy, t, encoder_hidden_states=lat.text[ids]).sample
    return torch.nn.functional.mse_loss(prediction, noise)
