"""One training step, the same for every stage (the stage only changes the loss).

Per-row randomness: each row of a batch gets its own CPU generator keyed by
``(run.seed, epoch key, row index)`` (:func:`row_generators`), from which it draws, in this order,
the latent sample noise, the diffusion noise ``eps`` and the timestep ``t``; the stage-2 mask
sample uses a second stream. A row therefore sees the same randomness whatever the number of
processes, the batch it lands in, or whether the run was resumed. The epoch key is
``stage_index * EPOCH_KEY_STRIDE + epoch`` so stages do not repeat each other's draws.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from poseguide.data.cache import encode_latent_dist, sample_latents
from poseguide.data.preprocess import sample_torch_generator

EPOCH_KEY_STRIDE = 100_000
STREAM_MASK = 2


def epoch_key(stage_index: int, epoch: int) -> int:
    return stage_index * EPOCH_KEY_STRIDE + epoch


def row_generators(
    seed: int, key: int, indices: torch.Tensor, stream: int = 1
) -> list[torch.Generator]:
    return [sample_torch_generator(seed, key, int(i), stream) for i in indices]


@dataclass
class StepInputs:
    """What the UNet and ControlNet see for one batch (all on the training device)."""

    noisy: torch.Tensor  # z_t (B, 4, h, w), frozen-model dtype
    timesteps: torch.Tensor  # (B,) int64
    text: torch.Tensor  # (B, 77, D)
    cond: torch.Tensor  # (B, 3, R, R) in [0, 1]
    latents: torch.Tensor  # z_0 (B, 4, h, w) float32
    noise: torch.Tensor  # eps (B, 4, h, w) float32


@torch.no_grad()
def make_inputs(parts: Any, batch: dict, generators: list[torch.Generator], device: torch.device,
                dtype: torch.dtype, cuts: Any = None) -> StepInputs:  # fmt: skip
    """Latents (from the cache or the VAE), per-row noise and timesteps, text embeddings
    (from the cache, or the one caption path; ``cuts`` counts the captions it cuts)."""
    if "latent_mean" in batch:
        mean, std = batch["latent_mean"].to(device), batch["latent_std"].to(device)
    else:
        mean, std = encode_latent_dist(parts.vae, batch["pixel_values"].to(device))
    latents = sample_latents(mean, std, generators, parts.vae.config.scaling_factor)
    shape = latents.shape[1:]
    noise = torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device)
    steps = parts.scheduler.config.num_train_timesteps
    t = torch.cat([torch.randint(0, steps, (1,), generator=g) for g in generators]).to(device)
    if "text_emb" in batch:
        text = batch["text_emb"].to(device)
    else:
        from poseguide.models import encode_prompts

        text = encode_prompts(parts, batch["captions"], cuts)
    noisy = parts.scheduler.add_noise(latents, noise, t)
    return StepInputs(noisy.to(dtype), t, text.to(dtype), batch["conditioning"].to(device, dtype),
                      latents, noise)  # fmt: skip


def predict(controlnet: Any, unet: Any, x: StepInputs) -> torch.Tensor:
    """eps_theta (B, 4, h, w) float32: ControlNet residuals added into the frozen UNet."""
    down, mid = controlnet(
        x.noisy,
        x.timesteps,
        encoder_hidden_states=x.text,
        controlnet_cond=x.cond,
        return_dict=False,
    )
    dtype = x.noisy.dtype  # the frozen UNet's dtype (reading unet.dtype walks every module)
    out = unet(
        x.noisy,
        x.timesteps,
        encoder_hidden_states=x.text,
        down_block_additional_residuals=[d.to(dtype) for d in down],
        mid_block_additional_residual=mid.to(dtype),
        return_dict=False,
    )[0]
    return out.float()
