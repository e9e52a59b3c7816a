"""The one training loop. A stage is data (:class:`StageConfig`); this code never branches on it
except through the loss it asks for."""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from poseguide.config import Config, to_dict
from poseguide.config.schema import StageConfig
from poseguide.errors import UserError
from poseguide.text import CaptionCuts
from poseguide.train.checkpoint import LATEST, Loaded, Position, rng_state, save_checkpoint
from poseguide.train.monitor import MetricsLog
from poseguide.train.setup import (
    Frozen,
    TrainingError,
    make_loader,
    make_lr_scheduler,
    make_optimizer,
    steps_per_epoch,
)
from poseguide.train.step import STREAM_MASK, epoch_key, make_inputs, predict, row_generators
from poseguide.utils.io import atomic_directory

log = logging.getLogger(__name__)


class Interrupted(UserError, RuntimeError):
    """SIGINT/SIGTERM arrived; a checkpoint was written and the run stopped cleanly."""


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


@dataclass
class Run:
    """Everything a stage needs; built once by the runner (derived values, not config)."""

    config: Config
    run_dir: Path
    accelerator: Any
    frozen: Frozen
    source: Any
    rows: list[int]
    cache: Any
    metrics: MetricsLog
    stop: StopFlag
    validator: Any = None  # callable(controlnet, stage_name, global_step) or None
    estimators: dict = field(default_factory=dict)
    captions: CaptionCuts = field(default_factory=CaptionCuts)  # captions cut to the limit

    @property
    def checkpoints(self) -> Path:
        return self.run_dir / "checkpoints"

    def export_dir(self, stage: str) -> Path:
        return self.run_dir / "exports" / stage


def _estimator(run: Run, stage: StageConfig) -> Any:
    if stage.loss.kind != "heatmap" or stage.loss.source != "predicted_error":
        return None
    cfg = stage.loss.estimator or run.config.pose.estimator
    key = repr(cfg)
    if key not in run.estimators:
        from poseguide.pose.api import estimator_from_config

        run.estimators[key] = estimator_from_config(replace(cfg, device=str(run.frozen.device)))
    return run.estimators[key]


def _loss_terms(run: Run, stage: StageConfig, controlnet: Any, batch: dict, key: int) -> dict:
    from poseguide.losses import denoising_target, stage_loss

    parts = run.frozen.parts
    gens = row_generators(run.config.run.seed, key, batch["index"])
    inputs = make_inputs(parts, batch, gens, run.frozen.device, run.frozen.weight_dtype,
                         run.captions)  # fmt: skip
    with run.accelerator.autocast():
        pred = predict(controlnet, parts.unet, inputs)
    target = denoising_target(parts.scheduler, inputs.latents, inputs.noise, inputs.timesteps)
    size = tuple(batch["conditioning"].shape[-1:-3:-1])
    return stage_loss(
        stage.loss, pred, target, vae=parts.vae, estimator=_estimator(run, stage),
        keypoints=batch["keypoints"], image_size=size,
        generator=row_generators(run.config.run.seed, key, batch["index"], STREAM_MASK),
    )  # fmt: skip


def _step_terms(micro: list[dict[str, torch.Tensor]], acc: Any) -> dict[str, float]:
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


def _sync_flags(run: Run, loss: torch.Tensor) -> tuple[bool, bool]:
    """(any process has a non-finite loss, any process was asked to stop): one all-reduce."""
    flags = torch.tensor([float(not torch.isfinite(loss)), float(run.stop.requested)],
                         device=run.accelerator.device)  # fmt: skip
    flags = run.accelerator.reduce(flags, reduction="sum")
    return bool(flags[0] > 0), bool(flags[1] > 0)


def _optimizer_step(run: Run, stage: StageConfig, model: Any, opt: Any, sched: Any,
                    it: Any, key: int, pos: Position) -> dict[str, float]:  # fmt: skip
    """Accumulate ``grad_accum`` micro-batches, check the loss, clip, and step once."""
    acc, accum = run.accelerator, run.config.train.grad_accum
    logged: list[dict[str, torch.Tensor]] = []
    total = torch.zeros((), device=acc.device)
    for micro in range(accum):
        batch = next(it)
        sync = micro == accum - 1
        ctx = contextlib.nullcontext() if sync else acc.no_sync(model)
        with ctx:
            terms = _loss_terms(run, stage, model, batch, key)
            loss = terms["loss"].mean() / accum
            acc.backward(loss)
        total += loss.detach()
        logged.append({k: v.detach() for k, v in terms.items() if isinstance(v, torch.Tensor)})
    bad, stop = _sync_flags(run, total)
    if bad:
        raise TrainingError(
            f"stage {stage.name!r}, step {pos.stage_step + 1} (global {pos.global_step + 1}): the "
            f"loss is {float(total)}; stopped before updating the weights. The last checkpoint "
            f"in {run.checkpoints} is still valid (resume with --resume latest, maybe with a "
            "lower learning rate or train.mixed_precision=bf16)."
        )
    if run.config.train.optim.max_grad_norm is not None:
        acc.clip_grad_norm_(model.parameters(), run.config.train.optim.max_grad_norm)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return {**_step_terms(logged, acc), "_stop": stop}


def save(run: Run, model: Any, opt: Any, sched: Any, pos: Position) -> Path | None:
    """A checkpoint of the current state (main process writes; every process takes part)."""
    acc = run.accelerator
    from accelerate.utils import gather_object

    rngs = gather_object([rng_state()])
    path, ds_dir = None, _deepspeed_save(run, model, pos)
    if acc.is_main_process:
        scaler = getattr(acc, "scaler", None)
        try:
            path = save_checkpoint(
                run.checkpoints, pos, acc.unwrap_model(model), opt, sched, scaler,
                rngs, to_dict(run.config), run.config.train.keep_checkpoints, acc.num_processes,
                ds_dir,
            )  # fmt: skip
        except OSError as err:
            latest = run.checkpoints / LATEST
            kept = latest.read_text().strip() if latest.is_file() else "none yet"
            raise TrainingError(
                f"could not write the checkpoint of {pos.stage_name} step {pos.stage_step} "
                f"({err}); the previous checkpoint ({kept}) is intact"
            ) from err
        log.info("checkpoint %s", path)
    acc.wait_for_everyone()
    return path


def is_deepspeed(acc: Any) -> bool:
    from accelerate.utils import DistributedType

    return acc.distributed_type == DistributedType.DEEPSPEED


def _deepspeed_save(run: Run, model: Any, pos: Position) -> Path | None:
    """Under DeepSpeed every process writes its optimizer partition (collective); else None."""
    acc = run.accelerator
    if not is_deepspeed(acc):
        return None
    folder = run.checkpoints / f".step-{pos.global_step:08d}.deepspeed"
    model.save_checkpoint(str(folder), tag="state")  # the DeepSpeedEngine; all processes
    acc.wait_for_everyone()
    return folder


def export(run: Run, model: Any, stage: str) -> Path:
    """The stage's ControlNet as a diffusers folder (``save_pretrained``, safetensors)."""
    acc, target = run.accelerator, run.export_dir(stage)
    if acc.is_main_process:
        with atomic_directory(target) as tmp:
            acc.unwrap_model(model).save_pretrained(tmp, safe_serialization=True)
        log.info("exported %s", target)
    acc.wait_for_everyone()
    return target


def _record(stage: StageConfig, pos: Position, terms: dict, lr: float, rate: float) -> dict:
    record = {"stage": stage.name, "step": pos.stage_step, "global_step": pos.global_step,
              "epoch": pos.epoch, **{k: v for k, v in terms.items() if not k.startswith("_")},
              "lr": lr, "samples_per_s": round(rate, 4)}  # fmt: skip
    return record


def train_stage(
    run: Run, index: int, init: str, previous: Path | None, loaded: Loaded | None, global_step: int
) -> tuple[Path, int]:
    """Train stage ``index`` from ``init`` (or from ``loaded``, a checkpoint inside this stage)
    to its end; write its final checkpoint and its export; return the export folder and the
    global step count at the end.

    ``global_step`` is the optimizer-step count before this stage (when not resuming)."""
    from poseguide.train.setup import controlnet_for_stage

    cfg, acc = run.config, run.accelerator
    stage = cfg.train.stages[index]
    if loaded is not None:
        model = loaded.build_controlnet(run.frozen.device)
    else:
        model = controlnet_for_stage(run.frozen, stage, init, previous, cfg.run.seed + index)
    if cfg.train.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    dataset, sampler, loader = make_loader(cfg, run.source, run.rows, run.cache,
                                           acc.process_index, acc.num_processes)  # fmt: skip
    per_epoch = steps_per_epoch(sampler, cfg)
    total = min(stage.epochs * per_epoch, stage.max_steps or 10**12)
    opt = make_optimizer(
        [p for p in model.parameters() if p.requires_grad], cfg.train.optim, stage.lr
    )
    sched = make_lr_scheduler(opt, stage, total)
    model, opt = acc.prepare(model, opt)
    pos = Position(index, stage.name, global_step=global_step)
    if loaded is not None:
        loaded.load_into(opt, sched, getattr(acc, "scaler", None), acc.process_index)
        if is_deepspeed(acc):
            model.load_checkpoint(str(loaded.path / "deepspeed"), tag="state",
                                  load_lr_scheduler_states=False)  # fmt: skip
        pos = loaded.position
    return _run_epochs(
        run, stage, model, opt, sched, (dataset, sampler, loader), pos, per_epoch, total
    )


def _run_epochs(run: Run, stage: StageConfig, model: Any, opt: Any, sched: Any, data: tuple,
                pos: Position, per_epoch: int, total: int) -> tuple[Path, int]:  # fmt: skip
    cfg, acc = run.config, run.accelerator
    dataset, sampler, loader = data
    global_batch = cfg.train.batch_size * cfg.train.grad_accum * acc.num_processes
    bar = tqdm(total=total, initial=pos.stage_step, desc=stage.name, unit="step",
               disable=not acc.is_main_process, dynamic_ncols=True)  # fmt: skip
    rate, tick = 0.0, time.perf_counter()
    while pos.stage_step < total:
        key = epoch_key(pos.stage_index, pos.epoch)
        dataset.set_epoch(key)
        sampler.set_epoch(key, start=pos.epoch_step * cfg.train.grad_accum * cfg.train.batch_size)
        batches = iter(loader)
        while pos.epoch_step < per_epoch and pos.stage_step < total:
            terms = _optimizer_step(run, stage, model, opt, sched, batches, key, pos)
            pos = replace(pos, global_step=pos.global_step + 1, stage_step=pos.stage_step + 1,
                          epoch_step=pos.epoch_step + 1)  # fmt: skip
            now = time.perf_counter()
            instant = global_batch / max(now - tick, 1e-9)
            rate = instant if rate == 0 else 0.9 * rate + 0.1 * instant  # smoothed samples/s
            tick = now
            lr = sched.get_last_lr()[0]
            bar.update(1)
            bar.set_postfix(loss=f"{terms['loss']:.4f}", lr=f"{lr:.2e}", sps=f"{rate:.2f}")
            if pos.stage_step % cfg.train.log_every == 0 or pos.stage_step == total:
                run.metrics.write(_record(stage, pos, terms, lr, rate))
            _periodic(run, stage, model, opt, sched, pos, total, terms["_stop"])
        if pos.epoch_step >= per_epoch:
            pos = replace(pos, epoch=pos.epoch + 1, epoch_step=0)
    bar.close()
    save(run, model, opt, sched, replace(pos, stage_done=True))
    if run.validator is not None:
        run.validator(acc.unwrap_model(model), stage.name, pos.global_step)
    return export(run, model, stage.name), pos.global_step


def _periodic(run: Run, stage: StageConfig, model: Any, opt: Any, sched: Any, pos: Position,
              total: int, stop: bool) -> None:  # fmt: skip
    """Checkpoint, validate, or stop after a signal, as the step count says."""
    cfg = run.config.train
    last = pos.stage_step == total
    if stop:
        path = save(run, model, opt, sched, pos)
        raise Interrupted(
            f"stopped by a signal at {stage.name} step {pos.stage_step}; "
            f"checkpoint {path or run.checkpoints}; continue with --resume latest"
        )
    if pos.global_step % cfg.checkpoint_every == 0 and not last:
        save(run, model, opt, sched, pos)
    every = cfg.validation.every
    if run.validator is not None and every and pos.global_step % every == 0 and not last:
        run.validator(run.accelerator.unwrap_model(model), stage.name, pos.global_step)
