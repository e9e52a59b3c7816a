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
from poseguide.data.preprocess import draw_timesteps, sample_torch_generator
from poseguide.errors import UserError
from poseguide.models import encode_prompts
from poseguide.objectives import Objective, build_objective, denoising_target
from poseguide.objectives.terms import local_terms
from poseguide.text import CaptionCuts
from poseguide.utils.device import to_device

log = logging.getLogger(__name__)

EPOCH_KEY_STRIDE = 100_000
STREAM_MASK = 2


def epoch_key(stage_index: int, epoch: int) -> int:
    return stage_index * EPOCH_KEY_STRIDE + epoch


def row_generators(
    seed: int, key: int, indices: torch.Tensor | list[int], stream: int = 1
) -> list[torch.Generator]:
    """One CPU generator per row (``indices``: the batch's row indices, a list of ints or a CPU
    tensor)."""
    rows = indices.tolist() if isinstance(indices, torch.Tensor) else indices
    return [sample_torch_generator(seed, key, int(i), stream) for i in rows]


@dataclass
class StepInputs:
    """What the UNet and ControlNet see for one batch (all on the training device)."""

    noisy: torch.Tensor  # z_t (B, 4, h, w), frozen-model dtype
    timesteps: torch.Tensor  # (B,) int64
    text: torch.Tensor  # (B, 77, D)
    cond: torch.Tensor  # (B, 3, R, R) in [0, 1]
    latents: torch.Tensor  # z_0 (B, 4, h, w) float32
    noise: torch.Tensor  # eps (B, 4, h, w) float32
    steps: list[int] = field(default_factory=list)  # the timesteps as drawn, on the host


@torch.no_grad()
def make_inputs(parts: Any, batch: dict, generators: list[torch.Generator], device: torch.device,
                dtype: torch.dtype, cuts: Any = None) -> StepInputs:  # fmt: skip
    """Latents (from the cache or the VAE), per-row noise and timesteps, text embeddings
    (from the cache, or the one caption path; ``cuts`` counts the captions it cuts)."""
    if "latent_mean" in batch:
        mean, std = to_device(batch["latent_mean"], device), to_device(batch["latent_std"], device)
    else:
        mean, std = encode_latent_dist(parts.vae, to_device(batch["pixel_values"], device))
    latents = sample_latents(mean, std, generators, parts.vae.config.scaling_factor)
    shape = latents.shape[1:]
    # The per-row draws stay on the CPU generators (so they are the same on every device and
    # after a resume); they reach the device without blocking the host.
    noise = to_device(torch.stack([torch.randn(shape, generator=g) for g in generators]), device)
    drawn, steps = draw_timesteps(generators, parts.scheduler.config.num_train_timesteps)
    t = to_device(drawn, device)
    if "text_emb" in batch:
        text = to_device(batch["text_emb"], device)
    else:
        text = encode_prompts(parts, batch["captions"], cuts)
    noisy = parts.scheduler.add_noise(latents, noise, t)
    cond = to_device(batch["conditioning"], device, dtype)
    return StepInputs(noisy.to(dtype), t, text.to(dtype), cond, latents, noise, steps)


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
    each stage's objective is built on its first step, its estimators loaded on first use.
    """

    config: Config
    accelerator: Any
    frozen: Any
    stop: StopFlag = field(default_factory=StopFlag)
    captions: CaptionCuts = field(default_factory=CaptionCuts)  # captions cut to the limit
    estimators: dict = field(default_factory=dict)  # one per estimator config
    objectives: dict = field(default_factory=dict)  # one per stage config

    @property
    def deepspeed(self) -> bool:
        from accelerate.utils import DistributedType

        return self.accelerator.distributed_type == DistributedType.DEEPSPEED

    def objective(self, stage: StageConfig) -> Objective:
        """The stage's objective (:func:`poseguide.objectives.build_objective`), built once per
        stage config; its estimators are shared by config and released with the stage
        (:func:`poseguide.train.loop.end_stage`)."""
        key = (stage.name, repr(stage.loss))
        if key not in self.objectives:
            self.objectives[key] = build_objective(self.config, stage, self.frozen.device,
                                                   self.estimators)  # fmt: skip
        return self.objectives[key]


def loss_terms(trainer: Trainer, controlnet: Any, batch: dict, stage: StageConfig, key: int,
               timestep: int | None = None, debug: bool = False) -> dict:  # fmt: skip
    """The stage's per-sample loss terms for one batch (the stage's objective).

    The row's own randomness (keyed by ``key`` and the row index) draws the latent sample, the
    noise and the timestep; ``timestep`` replaces the drawn one (``explain-loss``); ``debug``
    also returns the loss' intermediates under ``"_debug"``.
    """
    parts, seed = trainer.frozen.parts, trainer.config.run.seed
    rows = batch.get("rows", batch["index"])  # python ints: no tensor read per row
    gens = row_generators(seed, key, rows)
    inputs = make_inputs(parts, batch, gens, trainer.frozen.device, trainer.frozen.weight_dtype,
                         trainer.captions)  # fmt: skip
    if timestep is not None:
        t = torch.full_like(inputs.timesteps, timestep)
        noisy = parts.scheduler.add_noise(inputs.latents, inputs.noise, t)
        inputs = replace(inputs, timesteps=t, noisy=noisy.to(trainer.frozen.weight_dtype),
                         steps=[timestep] * len(inputs.steps))  # fmt: skip
    with trainer.accelerator.autocast():
        pred = predict(controlnet, parts.unet, inputs)
    target = denoising_target(parts.scheduler, inputs.latents, inputs.noise, inputs.timesteps)
    mask_generators = row_generators(seed, key, rows, STREAM_MASK)
    return trainer.objective(stage)(pred, target, parts, inputs, batch, mask_generators, debug)


@dataclass
class StepResult:
    """One optimizer step, on the device (no host sync): its loss terms reduced over the batch
    and the micro-batches, and whether its loss was finite."""

    terms: dict[str, torch.Tensor]  # 0-dim tensors
    finite: torch.Tensor  # 0-dim bool
    replaced: list[dict] = field(default_factory=list)  # rows skipped at load time (skip policy)


def _flags(trainer: Trainer, loss: torch.Tensor) -> tuple[bool, bool]:
    """(any process has a non-finite loss, any process was asked to stop): one all-reduce."""
    acc = trainer.accelerator
    stop = torch.full((), float(trainer.stop.requested), device=loss.device)
    flags = torch.stack([(~torch.isfinite(loss)).float(), stop])
    bad, stop = (acc.reduce(flags.to(acc.device), reduction="sum") > 0).tolist()  # one read
    return bad, stop


def _stop_before_the_update(trainer: Trainer, stage: StageConfig, state: Any,
                            loss: torch.Tensor) -> None:  # fmt: skip
    """Raise :class:`DivergedError` when any process's loss is NaN or Inf (one host read)."""
    bad, _ = _flags(trainer, loss)
    if bad:
        pos = state.position
        raise DivergedError(
            f"stage {stage.name!r}, step {pos.stage_step + 1} (global {pos.global_step + 1}): "
            f"the loss is {float(loss)}; stopped before updating the weights"
        )


def optimizer_step(trainer: Trainer, stage: StageConfig, state: Any, batches: Iterator[dict],
                   key: int) -> StepResult:  # fmt: skip
    """Accumulate ``train.grad_accum`` micro-batches, clip, and step once; no host sync unless
    ``train.check_finite=every_step``, where a NaN or Inf loss on any process raises
    :class:`DivergedError` before the update.

    ``state`` is :class:`poseguide.train.checkpoint.TrainState` (model, optimizer, LR scheduler,
    position).
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
            if trainer.deepspeed:  # DeepSpeed updates the weights inside backward: check first
                _stop_before_the_update(trainer, stage, state, loss)
            acc.backward(loss)
        total += loss.detach()
        logged.append({k: v.detach() for k, v in terms.items() if isinstance(v, torch.Tensor)})
    if trainer.config.train.check_finite == "every_step" and not trainer.deepspeed:
        _stop_before_the_update(trainer, stage, state, total)
    if trainer.config.train.optim.max_grad_norm is not None:
        acc.clip_grad_norm_(model.parameters(), trainer.config.train.optim.max_grad_norm)
    state.optimizer.step()
    state.scheduler.step()
    state.optimizer.zero_grad(set_to_none=True)
    if state.ema is not None:
        state.ema.step([p for p in model.parameters() if p.requires_grad])
    return StepResult(local_terms(logged), torch.isfinite(total), replaced)
