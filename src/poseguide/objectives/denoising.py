"""The stage-1 objective: the denoising loss and its target (METHOD 1.4, 2).

Every loss is a small pure function that returns a dict of **per-sample** float32 tensors of
shape (B,); the training loop reduces each (:mod:`poseguide.objectives.terms`) and logs it.
``"loss"`` is the term to optimise, the others are diagnostics. Keys starting with ``_``
(``"_debug"``) hold intermediates, not per-sample scalars, and are only present when asked for.
The squared error and the per-sample reduction here are the ones every objective shares, so a
zero heatmap weight gives the stage-1 loss bitwise.
"""

from __future__ import annotations

from typing import Any

import torch

PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "v_prediction", "sample")

Losses = dict[str, Any]


def denoising_target(
    scheduler: Any, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the network must predict, read from ``scheduler.config.prediction_type`` (METHOD 1.4).

    Args:
        scheduler: the training noise scheduler (a diffusers DDPMScheduler).
        latents: clean latents z0 (B, C, h, w).
        noise: the noise eps added to them, same shape.
        timesteps: (B,) integer timesteps.

    Returns:
        ``noise`` for "epsilon", the velocity ``sqrt(a_t) eps - sqrt(1 - a_t) z0`` for
        "v_prediction", ``latents`` for "sample"; same shape as ``latents``.
    """
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        if not hasattr(scheduler, "get_velocity"):
            raise ValueError(
                f"{type(scheduler).__name__} has no get_velocity() for prediction_type "
                "'v_prediction'; train with a DDPMScheduler (poseguide.models.load_sd_parts)"
            )
        return scheduler.get_velocity(latents, noise, timesteps)
    if kind == "sample":
        return latents
    raise ValueError(
        f"unsupported scheduler prediction_type {kind!r}; poseguide trains with one of "
        f"{', '.join(map(repr, PREDICTION_TYPES))} (see the scheduler's scheduler_config.json)"
    )


def squared_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(pred - target)^2 in float32, contiguous, (B, C, h, w)."""
    if pred.shape != target.shape or pred.ndim != 4:
        raise ValueError(
            f"pred and target must both be (B, C, h, w); got {tuple(pred.shape)} and "
            f"{tuple(target.shape)}"
        )
    return ((pred.float() - target.float()) ** 2).contiguous()


def per_sample_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over all but the first dimension: (B, ...) -> (B,).

    The one reduction every loss term uses. Flattening to a contiguous (B, N) first makes the
    summation order depend only on the values, so equal element values give bitwise-equal means.
    """
    return x.reshape(x.shape[0], -1).mean(dim=1)


def denoising_loss(pred: torch.Tensor, target: torch.Tensor) -> Losses:
    """Stage-1 loss ``mean((pred - target)^2)`` per sample (METHOD 2).

    Args:
        pred: network output (B, C, h, w), any float dtype (autocast output is fine).
        target: :func:`denoising_target`, same shape.

    Returns:
        ``{"loss": (B,), "mse": (B,)}`` float32, the mean over (C, h, w); the two are equal.
    """
    mse = per_sample_mean(squared_error(pred, target))
    return {"loss": mse, "mse": mse}
