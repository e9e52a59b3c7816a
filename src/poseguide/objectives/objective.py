"""A stage's training objective, built once per stage: what its loss needs, its pose estimators
on the training device, and the per-sample loss the step calls without asking which kind it is.

:func:`stage_loss` is the one dispatcher over ``loss.kind`` (``denoising``: stage 1, ``heatmap``:
stage 2's HumanSD loss, ``reward``: a base loss plus the pose-consistency reward);
:func:`loss_needs` is the one place that knows what each kind needs and
:func:`estimator_configs` which estimators it uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from poseguide.config.schema import Config, EstimatorConfig, LossConfig, StageConfig
from poseguide.objectives.denoising import Losses, denoising_loss
from poseguide.objectives.heatmap import heatmap_loss
from poseguide.objectives.reward import add_reward, reward_inputs
from poseguide.pose.api import estimator_from_config

LOSS_KINDS: tuple[str, ...] = ("denoising", "heatmap", "reward")


@dataclass(frozen=True)
class LossNeeds:
    """What a stage's loss needs besides the prediction and the target."""

    estimator: bool = False  # a pose estimator (the predicted-error mask)
    vae: bool = False  # the VAE (decoding the error, encoding the mask; the reward's decode)
    keypoints: bool = False  # the rows' keypoints (the ground-truth mask, the reward's targets)
    reward: bool = False  # the reward: its estimator, the scheduler, z_t and the timesteps


def loss_needs(cfg: LossConfig) -> LossNeeds:
    """What :func:`stage_loss` will ask for with ``cfg``: the one place that knows it."""
    if cfg.kind == "reward":
        base = loss_needs(replace(cfg, kind=cfg.base_loss))
        return replace(base, vae=True, keypoints=True, reward=True)
    if cfg.kind == "heatmap" and cfg.source == "predicted_error":
        return LossNeeds(estimator=True, vae=True)
    if cfg.kind == "heatmap" and cfg.source == "ground_truth":
        return LossNeeds(keypoints=True)
    return LossNeeds()


def estimator_configs(config: Config, stage: StageConfig) -> dict[str, EstimatorConfig]:
    """Every estimator config the stage's loss uses, by role: ``mask`` (the predicted-error
    mask: ``loss.estimator``, else ``pose.estimator``) and ``reward`` (``loss.reward_estimator``,
    else ``pose.estimator``); roles the loss does not have are absent."""
    needs = loss_needs(stage.loss)
    found = {"mask": (stage.loss.estimator or config.pose.estimator) if needs.estimator else None,
             "reward": (stage.loss.reward_estimator or config.pose.estimator)
             if needs.reward else None}  # fmt: skip
    return {k: v for k, v in found.items() if v is not None}


@dataclass
class Objective:
    """One stage's objective (:func:`build_objective`): its loss config, what it needs, its
    estimators (None where the loss has no such role) and the per-sample loss
    (:meth:`__call__`)."""

    stage: str
    loss: LossConfig
    needs: LossNeeds
    mask_estimator: Any = None
    reward_estimator: Any = None

    def __call__(self, pred: torch.Tensor, target: torch.Tensor, parts: Any, inputs: Any,
                 batch: dict, generator: Any = None, debug: bool = False) -> Losses:  # fmt: skip
        """The per-sample terms of one batch (:func:`stage_loss`).

        ``parts``: the frozen SD parts (VAE, scheduler); ``inputs``: the step's inputs (z_t
        ``noisy``, ``timesteps`` on the device and ``steps`` on the host); ``batch``: the
        collated batch (keypoints, conditioning, the reward's targets); ``generator``: per-row
        generators of the mask's VAE sample; ``debug``: also the intermediates."""
        reward = None
        if self.needs.reward:
            reward = reward_inputs(parts, inputs, batch, self.stage, self.reward_estimator)
        return stage_loss(
            self.loss, pred, target, vae=parts.vae, estimator=self.mask_estimator,
            keypoints=batch["keypoints"], image_size=tuple(batch["conditioning"].shape[-1:-3:-1]),
            generator=generator, reward=reward, return_debug=debug,
        )  # fmt: skip


def build_objective(config: Config, stage: StageConfig, device: Any,
                    estimators: dict | None = None) -> Objective:  # fmt: skip
    """The stage's objective with its estimators on ``device`` (each loads its weights on first
    use). ``estimators`` shares one estimator per distinct config (the mask's and the reward's
    when they are equal) and across the objectives that get the same dict."""
    shared = {} if estimators is None else estimators

    def one(cfg: EstimatorConfig | None) -> Any:
        if cfg is None:
            return None
        key = repr(cfg)
        if key not in shared:
            shared[key] = estimator_from_config(replace(cfg, device=str(device)))
        return shared[key]

    roles = estimator_configs(config, stage)
    return Objective(stage.name, stage.loss, loss_needs(stage.loss), one(roles.get("mask")),
                     one(roles.get("reward")))  # fmt: skip


def stage_loss(
    cfg: LossConfig,
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    vae: Any = None,
    estimator: Any = None,
    keypoints: Sequence[np.ndarray | torch.Tensor | None] | None = None,
    image_size: tuple[int, int] | None = None,
    generator: torch.Generator | None = None,
    reward: Any = None,
    return_debug: bool = False,
) -> Losses:
    """The loss of one training step as the stage's :class:`LossConfig` says.

    Args:
        cfg: ``kind`` "denoising" (stage 1) or "heatmap" (stage 2, ``source`` picks H_E).
        pred: network output (B, C, h, w), with gradients.
        target: :func:`denoising_target`, same shape.
        vae, estimator: needed for ``source: predicted_error``.
        keypoints, image_size: needed for ``source: ground_truth`` (see
            :func:`ground_truth_mask`).
        generator: for the VAE posterior sample of ``predicted_error``.
        reward: :class:`poseguide.objectives.reward.RewardInputs`, needed for ``kind: reward``.
        return_debug: also return the mask and its intermediates under ``"_debug"`` (a dict of
            tensors, e.g. for ``poseguide explain-loss``); off by default so that the big
            decoded images are not kept alive.

    Returns:
        per-sample float32 (B,) terms, ``"loss"`` first (see :func:`denoising_loss` and
        :func:`heatmap_weighted_loss`), plus ``"_debug"`` when asked.
    """
    kind = cfg.base_loss if cfg.kind == "reward" else cfg.kind
    if cfg.kind == "reward" and reward is None:
        raise ValueError("loss.kind 'reward' needs reward= (objectives.reward.RewardInputs)")
    if kind == "denoising":
        out = denoising_loss(pred, target)
        if return_debug:
            out["_debug"] = {}
    elif kind == "heatmap":  # a reward stage on a heatmap base reads the same fields of cfg
        out = heatmap_loss(cfg, pred, target, vae, estimator, keypoints, image_size, generator,
                           return_debug)  # fmt: skip
    else:
        raise ValueError(f"loss.kind must be one of {', '.join(map(repr, LOSS_KINDS))}")
    return add_reward(cfg, out, pred, reward, return_debug) if cfg.kind == "reward" else out
