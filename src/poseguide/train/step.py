"""One training step, the same for every stage (the stage only changes the loss).

:func:`loss_terms` computes a batch's loss terms and :func:`optimizer_step` takes one optimizer
step (gradient accumulation, the finiteness check, clipping, the update, the logged terms).
Training, ``explain-loss``, the ``reproduce --dry-run`` probe and ``bench/train_step.py`` all call
them on a :class:`Trainer` built by :func:`poseguide.train.setup.make_trainer`, so they run the
same step with the same optimizer, autocast and gradient-checkpointing settings.

Per-row randomness: each row of a batch gets its own CPU generator keyed by
``(run.seed, epoch key, row index)`` (:func:`row_generators`), from which it draws, in this order,
the latent sample noise, the diffusion noise ``eps`` and the timestep ``t``; the stage-2 mask
sample uses a second stream. A row therefore sees the same randomness whatever the number of
processes, the batch it lands in, or whether the run was resumed. The epoch key is
``stage_index * EPOCH_KEY_STRIDE + epoch`` so stages do not repeat each other's draws.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from poseguide.config import Config
from poseguide.config.schema import StageConfig
from poseguide.data.cache import encode_latent_dist, sample_latents
from poseguide.data.preprocess import sample_torch_generator
from poseguide.errors import UserError
from poseguide.text import CaptionCuts

log = logging.getLogger(__name__)

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


class StopFlag:
    """Set by SIGINT/SIGTERM; the loop checkpoints and stops after the current step."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # a second signal: stop at once
            raise KeyboardInterrupt
        log.warning("signal %d: finishing this step, writing a checkpoint, then stopping", signum)
        self.requested = True

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class DivergedError(UserError, RuntimeError):
    """The loss is NaN or Inf; the weights were not updated."""


@dataclass
class Trainer:
    """What one training step needs, built once (:func:`poseguide.train.setup.make_trainer`).

    ``frozen`` is :class:`poseguide.train.setup.Frozen` (the SD parts on the training device);
    estimators are loaded on first use, one per estimator config.
    """

    config: Config
    accelerator: Any
    frozen: Any
    stop: StopFlag = field(default_factory=StopFlag)
    captions: CaptionCuts = field(default_factory=CaptionCuts)  # captions cut to the limit
    estimators: dict = field(default_factory=dict)

    def estimator(self, stage: StageConfig) -> Any:
        """The pose estimator the stage's loss needs, on the training device; None if none."""
        from poseguide.losses import stage_estimator_config

        cfg = stage_estimator_config(self.config, stage)
        if cfg is None:
            return None
        key = repr(cfg)
        if key not in self.estimators:
            from poseguide.pose.api import estimator_from_config

            device = str(self.frozen.device)
            self.estimators[key] = estimator_from_config(replace(cfg, device=device))
        return self.estimators[key]


def loss_terms(trainer: Trainer, controlnet: Any, batch: dict, stage: StageConfig, key: int,
               timestep: int | None = None, debug: bool = False) -> dict:  # fmt: skip
    """The stage's per-sample loss terms for one batch (:func:`poseguide.losses.stage_loss`).

    The row's own randomness (keyed by ``key`` and the row index) draws the latent sample, the
    noise and the timestep; ``timestep`` replaces the drawn one (``explain-loss``); ``debug``
    also returns the loss' intermediates under ``"_debug"``.
    """
    from poseguide.losses import denoising_target, stage_loss

    parts, seed = trainer.frozen.parts, trainer.config.run.seed
    gens = row_generators(seed, key, batch["index"])
    inputs = make_inputs(parts, batch, gens, trainer.frozen.device, trainer.frozen.weight_dtype,
                         trainer.captions)  # fmt: skip
    if timestep is not None:
        t = torch.full_like(inputs.timesteps, timestep)
        noisy = parts.scheduler.add_noise(inputs.latents, inputs.noise, t)
        inputs = replace(inputs, timesteps=t, noisy=noisy.to(trainer.frozen.weight_dtype))
    with trainer.accelerator.autocast():
        pred = predict(controlnet, parts.unet, inputs)
    target = denoising_target(parts.scheduler, inputs.latents, inputs.noise, inputs.timesteps)
    return stage_loss(
        stage.loss, pred, target, vae=parts.vae, estimator=trainer.estimator(stage),
        keypoints=batch["keypoints"], image_size=tuple(batch["conditioning"].shape[-1:-3:-1]),
        generator=row_generators(seed, key, batch["index"], STREAM_MASK), return_debug=debug,
    )  # fmt: skip


@dataclass
class StepResult:
    """One optimizer step: its logged terms (reduced over batch, micro-batches and processes)
    and whether any process was asked to stop."""

    terms: dict[str, float]
    stop: bool
    replaced: list[dict] = field(default_factory=list)  # rows skipped at load time (skip policy)


def step_terms(micro: list[dict[str, torch.Tensor]], acc: Any) -> dict[str, float]:
    """The logged terms of one optimizer step: each reduced over its batch, the micro-batches
    and the processes as its loss declares (mean, min or max), in one collective."""
    from poseguide.losses import reduce_terms

    keys = [k for k, v in micro[0].items() if isinstance(v, torch.Tensor) and not k.startswith("_")]
    per_micro = [reduce_terms({k: terms[k] for k in keys}) for terms in micro]
    step = reduce_terms({k: torch.stack([m[k] for m in per_micro]) for k in keys})
    local = torch.stack([step[k] for k in keys]).to(acc.device)
    every = acc.gather(local[None]).reshape(-1, len(keys))  # (processes, terms)
    merged = reduce_terms({k: every[:, j] for j, k in enumerate(keys)})
    values = torch.stack([merged[k] for k in keys]).tolist()
    return dict(zip(keys, values, strict=True))


def _flags(trainer: Trainer, loss: torch.Tensor) -> tuple[bool, bool]:
    """(any process has a non-finite loss, any process was asked to stop): one all-reduce."""
    acc = trainer.accelerator
    stop = torch.tensor(float(trainer.stop.requested), device=loss.device)
    flags = torch.stack([(~torch.isfinite(loss)).float(), stop])
    flags = acc.reduce(flags.to(acc.device), reduction="sum")
    return bool(flags[0] > 0), bool(flags[1] > 0)


def optimizer_step(trainer: Trainer, stage: StageConfig, state: Any, batches: Iterator[dict],
                   key: int) -> StepResult:  # fmt: skip
    """Accumulate ``train.grad_accum`` micro-batches, check the loss, clip, and step once.

    ``state`` is :class:`poseguide.train.checkpoint.TrainState` (model, optimizer, LR scheduler,
    position). Raises :class:`DivergedError` before the update when any process's loss is NaN
    or Inf.
    """
    acc, accum = trainer.accelerator, trainer.config.train.grad_accum
    model = state.model
    logged: list[dict[str, torch.Tensor]] = []
    replaced: list[dict] = []
    total = torch.zeros((), device=acc.device)
    for micro in range(accum):
        batch = next(batches)
        replaced += batch.get("replaced", [])
        ctx = contextlib.nullcontext() if micro == accum - 1 else acc.no_sync(model)
        with ctx:
            terms = loss_terms(trainer, model, batch, stage, key)
            loss = terms["loss"].mean() / accum
            acc.backward(loss)
        total += loss.detach()
        logged.append({k: v.detach() for k, v in terms.items() if isinstance(v, torch.Tensor)})
    bad, stop = _flags(trainer, total)
    if bad:
        pos = state.position
        raise DivergedError(
            f"stage {stage.name!r}, step {pos.stage_step + 1} (global {pos.global_step + 1}): the "
            f"loss is {float(total)}; stopped before updating the weights"
        )
    if trainer.config.train.optim.max_grad_norm is not None:
        acc.clip_grad_norm_(model.parameters(), trainer.config.train.optim.max_grad_norm)
    state.optimizer.step()
    state.scheduler.step()
    state.optimizer.zero_grad(set_to_none=True)
    return StepResult(step_terms(logged, acc), stop, replaced)
