"""The one training loop. A stage is data (:class:`StageConfig`); this code never branches on it
except through the loss it asks for (:func:`poseguide.train.step.loss_terms`)."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from tqdm.auto import tqdm

from poseguide.config import to_dict
from poseguide.config.schema import StageConfig
from poseguide.errors import Interrupted, is_out_of_memory
from poseguide.paths import RunPaths
from poseguide.train.checkpoint import LATEST, Loaded, Position, TrainState, rng_state
from poseguide.train.checkpoint import save_checkpoint as write_checkpoint
from poseguide.train.monitor import MetricsLog, StepWindow
from poseguide.train.setup import (
    TrainingError,
    controlnet_for_stage,
    make_loader,
    make_lr_scheduler,
    make_optimizer,
    steps_per_epoch,
)
from poseguide.train.step import (
    DivergedError,
    StepResult,
    Trainer,
    epoch_key,
    optimizer_step,
)
from poseguide.utils.checksum import write_checksums
from poseguide.utils.io import atomic_directory, atomic_write_json
from poseguide.utils.units import format_bytes

log = logging.getLogger(__name__)

# What a failing write raises: the OS (ENOSPC, EACCES, ...), torch.save's serializer
# ("[enforce fail at inline_container.cc] ... unexpected pos") and safetensors (SafetensorError).
WRITE_FAILURES = (OSError, RuntimeError, SafetensorError)
NO_STEP_LIMIT = 10**12  # stage.max_steps unset: the epochs decide
FP32_BYTES, ADAM_MOMENTS = 4, 2  # for the checkpoint size estimate


@dataclass
class Run:
    """A training run: the step's :class:`Trainer` (config, accelerator, frozen parts, the
    stages' objectives) and what the loop around the steps needs: the run folder, data, cache,
    metrics and the validator (a callable ``(controlnet, stage_name, global_step)`` or None)."""

    trainer: Trainer
    paths: RunPaths
    source: Any
    rows: list[int]
    cache: Any
    metrics: MetricsLog
    validator: Any = None
    data: dict | None = None  # the training data's identity, kept in every checkpoint
    lock: Any = None  # the run folder's lock when the run holds it itself (runner._make_run)
    replaced: list[dict] = field(default_factory=list)  # rows skipped at load time (this rank)

    @property
    def config(self) -> Any:
        return self.trainer.config

    @property
    def accelerator(self) -> Any:
        return self.trainer.accelerator

    @property
    def frozen(self) -> Any:
        return self.trainer.frozen


def start_stage(trainer: Trainer, index: int, init: str, previous: Path | None,
                loaded: Loaded | None, global_step: int, total: int) -> TrainState:  # fmt: skip
    """The stage's ControlNet (from ``init``, or from ``loaded``, a checkpoint inside the
    stage), optimizer and LR scheduler for ``total`` steps, prepared by accelerate."""
    cfg, acc = trainer.config, trainer.accelerator
    stage = cfg.train.stages[index]
    if loaded is not None:
        model = loaded.build_controlnet(trainer.frozen.device)
    else:
        model = controlnet_for_stage(trainer.frozen, stage, init, previous, cfg.run.seed + index)
    if cfg.train.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, cfg.train.optim, stage.lr)
    scheduler = make_lr_scheduler(optimizer, stage, total)
    ema = _ema(trainer, stage, params)
    if cfg.train.compile:
        model = torch.compile(model)
    model, optimizer = acc.prepare(model, optimizer)
    position = Position(index, stage.name, global_step=global_step)
    state = TrainState(model, optimizer, scheduler, position, getattr(acc, "scaler", None), ema)
    if loaded is not None:
        loaded.load_into(state, acc.process_index)
        if is_deepspeed(acc):
            model.load_checkpoint(str(loaded.path / "deepspeed"), tag="state",
                                  load_lr_scheduler_states=False)  # fmt: skip
        _follow_lr(state, stage.lr)
    return state


def _follow_lr(state: TrainState, lr: float) -> None:
    """A resume with a new ``lr`` (``--allow-config-change``): the loaded LR schedule and the
    optimizer's current rates rescaled to it, so the schedule goes on from where it was."""
    base = state.scheduler.base_lrs
    if all(b == lr for b in base):
        return
    ratios = [lr / b if b else 1.0 for b in base]
    state.scheduler.base_lrs = [lr] * len(base)
    for group, ratio in zip(state.optimizer.param_groups, ratios, strict=True):
        group["lr"] *= ratio
        if "initial_lr" in group:
            group["initial_lr"] = lr
    log.info("learning rate rescaled to %g from the checkpoint's %g", lr, base[0])


def _ema(trainer: Trainer, stage: StageConfig, params: list) -> Any:
    """The stage's EMA of its trainable weights (diffusers' EMAModel), or None."""
    if stage.ema_decay is None:
        return None
    if is_deepspeed(trainer.accelerator):
        raise TrainingError(
            f"train.stages.{stage.name}.ema_decay: no EMA under DeepSpeed (its "
            "weights are partitioned); set it to null or train without ZeRO"
        )
    from diffusers.training_utils import EMAModel

    return EMAModel(params, decay=stage.ema_decay)


def end_stage(trainer: Trainer, state: TrainState) -> None:
    """Release everything of a finished stage: accelerate's references to its model and
    optimizer (and DeepSpeed's engine), the state itself, the stage's pose estimators."""
    trainer.accelerator.free_memory()
    state.model = state.optimizer = state.scheduler = state.scaler = state.ema = None
    trainer.estimators.clear()
    trainer.objectives.clear()


def save(run: Run, state: TrainState, done: bool = False) -> Path | None:
    """A checkpoint of the current state (main process writes; every process takes part)."""
    acc = run.accelerator
    from accelerate.utils import gather_object

    if done:
        state.position = replace(state.position, stage_done=True)
    rngs = gather_object([rng_state()])
    path, ds_dir = None, _deepspeed_save(run, state)
    controlnet = plain_controlnet(run.trainer, state)  # collective under DeepSpeed: every process
    if acc.is_main_process:
        try:
            path = write_checkpoint(
                run.paths.checkpoints, state, controlnet, rngs=rngs,
                config=to_dict(run.config), keep=run.config.train.keep_checkpoints,
                world_size=acc.num_processes, deepspeed_dir=ds_dir, data=run.data,
            )  # fmt: skip
        except WRITE_FAILURES as err:
            if is_out_of_memory(err):
                raise
            pos = state.position
            raise TrainingError(
                f"could not write the checkpoint of {pos.stage_name} step {pos.stage_step} to "
                f"{run.paths.checkpoints} ({_first_line(err)}); {_intact(run)}"
            ) from err
        log.info("checkpoint %s", path)
    acc.wait_for_everyone()
    return path


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:300]


def _intact(run: Run) -> str:
    latest = run.paths.checkpoints / LATEST
    if not latest.is_file():
        return "no earlier checkpoint was written"
    return f"the previous checkpoint ({latest.read_text().strip()}) is intact"


def is_deepspeed(acc: Any) -> bool:
    from accelerate.utils import DistributedType

    return acc.distributed_type == DistributedType.DEEPSPEED


def plain_controlnet(trainer: Trainer, state: TrainState) -> Any:
    """The stage's ``ControlNetModel`` with its fp32 master weights, for checkpoints, exports
    and validation: unwrapped from DDP, torch.compile and DeepSpeed; under DeepSpeed with bf16
    the module itself holds bf16 copies, so an fp32 copy is built from the masters."""
    acc = trainer.accelerator
    model = acc.unwrap_model(state.model, keep_torch_compile=False)
    if not is_deepspeed(acc) or next(model.parameters()).dtype == torch.float32:
        return model
    from deepspeed.utils import safe_get_full_fp32_param
    from diffusers import ControlNetModel

    masters = {name: safe_get_full_fp32_param(p).detach().cpu()
               for name, p in model.named_parameters()}  # fmt: skip
    copy = ControlNetModel.from_config(model.config)
    copy.load_state_dict({**{k: v.float().cpu() for k, v in model.state_dict().items()}, **masters})
    return copy


def _deepspeed_save(run: Run, state: TrainState) -> Path | None:
    """Under DeepSpeed every process writes its optimizer partition (collective); else None."""
    acc = run.accelerator
    if not is_deepspeed(acc):
        return None
    folder = run.paths.checkpoints / f".step-{state.position.global_step:08d}.deepspeed.tmp"
    state.model.save_checkpoint(str(folder), tag="state")  # the DeepSpeedEngine; all processes
    acc.wait_for_everyone()
    return folder


@contextlib.contextmanager
def _ema_weights(state: TrainState, controlnet: Any) -> Any:
    """Inside: ``controlnet`` holds the stage's EMA weights (when it keeps one); after: its own."""
    if state.ema is None:
        yield
        return
    params = [p for p in controlnet.parameters() if p.requires_grad]
    state.ema.store(params)
    state.ema.copy_to(params)
    try:
        yield
    finally:
        state.ema.restore(params)


def export(run: Run, state: TrainState, stage: str) -> Path:
    """The stage's ControlNet as a diffusers folder (``save_pretrained``, safetensors): its EMA
    weights when the stage keeps an EMA (``ema_decay``), else its raw weights."""
    acc, target = run.accelerator, run.paths.export(stage)
    controlnet = plain_controlnet(run.trainer, state)  # collective under DeepSpeed: every process
    if acc.is_main_process:
        try:
            with atomic_directory(target) as tmp, _ema_weights(state, controlnet):
                controlnet.save_pretrained(tmp, safe_serialization=True)
                write_checksums(tmp)
        except WRITE_FAILURES as err:
            if is_out_of_memory(err):
                raise
            raise TrainingError(
                f"could not write the export of {stage} to {target} ({_first_line(err)}); its "
                f"final checkpoint is written: free space and run `poseguide train CONFIG "
                "--resume latest` to export it without training again"
            ) from err
        log.info("exported %s", target)
    acc.wait_for_everyone()
    return target


def _record(stage: StageConfig, pos: Position, terms: dict, lr: float, rate: float) -> dict:
    return {"stage": stage.name, "step": pos.stage_step, "global_step": pos.global_step,
            "epoch": pos.epoch, **terms, "lr": lr, "samples_per_s": round(rate, 4)}  # fmt: skip


def train_stage(
    run: Run, index: int, init: str, previous: Path | None, loaded: Loaded | None, global_step: int
) -> tuple[Path, int]:
    """Train stage ``index`` from ``init`` (or from ``loaded``, a checkpoint inside this stage)
    to its end; write its final checkpoint and its export; return the export folder and the
    global step count at the end.

    ``global_step`` is the optimizer-step count before this stage (when not resuming)."""
    cfg, acc = run.config, run.accelerator
    stage = cfg.train.stages[index]
    data = make_loader(cfg, run.source, run.rows, run.cache, acc.process_index, acc.num_processes,
                       stage)  # fmt: skip
    per_epoch = steps_per_epoch(data[1], cfg)
    total = min(stage.epochs * per_epoch, stage.max_steps or NO_STEP_LIMIT)
    state = start_stage(run.trainer, index, init, previous, loaded, global_step, total)
    _check_disk(run, state)
    _run_epochs(run, stage, state, data, per_epoch, total)
    save(run, state, done=True)
    if run.validator is not None:
        run.validator(plain_controlnet(run.trainer, state), stage.name, state.position.global_step)
    folder, step = export(run, state, stage.name), state.position.global_step
    end_stage(run.trainer, state)
    _report_replaced(run, stage.name)
    return folder, step


def _check_disk(run: Run, state: TrainState) -> None:
    """Warn before the first step when the checkpoints folder cannot hold what the stage will
    write: a new checkpoint beside the newest kept one, and the export (an estimate: fp32
    weights plus AdamW's two moments per trainable parameter)."""
    if not run.accelerator.is_main_process:
        return
    model = run.accelerator.unwrap_model(state.model, keep_torch_compile=False)
    params = sum(p.numel() for p in model.parameters())
    checkpoint = params * FP32_BYTES * (1 + ADAM_MOMENTS)
    need = 2 * checkpoint + params * FP32_BYTES
    folder = run.paths.checkpoints
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < need:
        log.warning("%s has %s free; %s's checkpoints need about %s (checkpoint %s, export %s): "
                    "free space or a full disk will stop the run at a checkpoint", folder,
                    format_bytes(free), state.position.stage_name, format_bytes(need),
                    format_bytes(checkpoint), format_bytes(params * FP32_BYTES))  # fmt: skip


def _report_replaced(run: Run, stage: str) -> None:
    """Rows that failed to load during the stage (data.on_bad_row=skip replaced them): counted,
    logged once, listed in ``<run>/skipped_during_training.json``."""
    from accelerate.utils import gather_object

    every = [r for part in gather_object([run.replaced]) for r in part]
    run.replaced = []
    if not every or not run.accelerator.is_main_process:
        return
    path = run.paths.skipped_during_training
    known = json.loads(path.read_text()) if path.is_file() else {}
    for r in every:
        known.setdefault(r["row"], {"problem": r["problem"], "detail": r["detail"], "stage": stage})
    atomic_write_json(path, known)
    log.warning("%s: %d row(s) failed to load and were skipped (%s); the list is in %s", stage,
                len({r["row"] for r in every}), ", ".join(sorted({r["row"] for r in every})[:5]),
                path)  # fmt: skip


def _run_epochs(run: Run, stage: StageConfig, state: TrainState, data: tuple, per_epoch: int,
                total: int) -> None:  # fmt: skip
    acc = run.accelerator
    bar = tqdm(total=total, initial=state.position.stage_step, desc=stage.name, unit="step",
               disable=not acc.is_main_process, dynamic_ncols=True)  # fmt: skip
    window = StepWindow()
    with bar:  # closed on any exception too, so an error message starts on its own line
        while state.position.stage_step < total:
            _run_epoch(run, stage, state, data, (per_epoch, total), window, bar)
            if state.position.epoch_step >= per_epoch:
                state.next_epoch()


def _run_epoch(run: Run, stage: StageConfig, state: TrainState, data: tuple,
               limits: tuple[int, int], window: StepWindow, bar: Any) -> None:  # fmt: skip
    """The rest of the current epoch (all of it, or from where a resumed run stopped). Steps
    stay on the device; the window of steps is read once at log, checkpoint and validation
    steps (:func:`_read_now`)."""
    cfg, acc = run.config, run.accelerator
    (dataset, sampler, loader), (per_epoch, total) = data, limits
    global_batch = cfg.train.batch_size * cfg.train.grad_accum * acc.num_processes
    pos = state.position
    key = epoch_key(pos.stage_index, pos.epoch)
    dataset.set_epoch(key)
    sampler.set_epoch(key, start=pos.epoch_step * cfg.train.grad_accum * cfg.train.batch_size)
    batches, tick, steps = iter(loader), time.perf_counter(), 0
    while state.position.epoch_step < per_epoch and state.position.stage_step < total:
        result = _step(run, stage, state, batches, key)
        run.replaced += result.replaced
        window.add(result, state.position.global_step + 1)
        state.count_step()
        bar.update(1)
        steps += 1
        if not _read_now(run, state, total):
            continue
        seen = window.read(run.trainer)  # the one host sync of the window
        _stop_if_diverged(run, stage, state, seen)
        now = time.perf_counter()
        rate, tick, steps = global_batch * steps / max(now - tick, 1e-9), now, 0
        lr = state.scheduler.get_last_lr()[0]
        bar.set_postfix(loss=f"{seen.terms['loss']:.4f}", lr=f"{lr:.2e}", sps=f"{rate:.2f}")
        step = state.position.stage_step
        if step % cfg.train.log_every == 0 or step == total:
            run.metrics.write(_record(stage, state.position, seen.terms, lr, rate))
        _periodic(run, stage, state, total, seen.stop)


def _read_now(run: Run, state: TrainState, total: int) -> bool:
    """Whether this step ends a window: a log step, a checkpoint or validation step (nothing is
    saved or shown before the window is known to be finite), the stage's last step, or every
    step under ``train.check_finite=every_step``."""
    cfg, pos = run.config.train, state.position
    every = cfg.validation.every
    return (pos.stage_step % cfg.log_every == 0 or pos.stage_step == total
            or pos.global_step % cfg.checkpoint_every == 0
            or bool(every and pos.global_step % every == 0)
            or cfg.check_finite == "every_step")  # fmt: skip


def _stop_if_diverged(run: Run, stage: StageConfig, state: TrainState, seen: Any) -> None:
    if seen.first_bad is None:
        return
    raise TrainingError(
        f"stage {stage.name!r}: the loss was NaN or Inf at global step {seen.first_bad} (noticed "
        f"at step {state.position.global_step}: train.check_finite=log reads it at log and "
        f"checkpoint steps); the weights were updated with it, so nothing after it is saved. "
        f"{_after_divergence(run, stage)}; train.check_finite=every_step stops before the bad "
        "update"
    )


def _after_divergence(run: Run, stage: StageConfig) -> str:
    """What to do after a divergence, by what exists: resuming with the same config would
    diverge the same way, so the advice changes what training does."""
    lower = f"train.stages.{stage.name}.lr={stage.lr / 10:g}"
    if not (run.paths.checkpoints / LATEST).is_file():
        return (f"No checkpoint was written: train again with a lower learning rate ({lower}) "
                "or train.mixed_precision=bf16, under another run.name or after removing "
                f"{run.paths.root}")  # fmt: skip
    return (f"{_intact(run).capitalize()}: continue from it with a lower learning rate, "
            f"`poseguide train CONFIG {lower} --resume latest --allow-config-change` "
            "(or train.mixed_precision=bf16 the same way)")  # fmt: skip


def _step(run: Run, stage: StageConfig, state: TrainState, batches: Any, key: int) -> StepResult:
    try:
        return optimizer_step(run.trainer, stage, state, batches, key)
    except DivergedError as err:
        raise TrainingError(f"{err}. {_after_divergence(run, stage)}.") from None


def _periodic(run: Run, stage: StageConfig, state: TrainState, total: int, stop: bool) -> None:
    """Checkpoint, validate, or stop after a signal, as the step count says."""
    cfg, pos = run.config.train, state.position
    last = pos.stage_step == total
    if stop:
        path = save(run, state)
        raise Interrupted(
            f"stopped by a signal at {stage.name} step {pos.stage_step}; "
            f"checkpoint {path or run.paths.checkpoints}; continue with --resume latest"
        )
    if pos.global_step % cfg.checkpoint_every == 0 and not last:
        save(run, state)
    every = cfg.validation.every
    if run.validator is not None and every and pos.global_step % every == 0 and not last:
        run.validator(plain_controlnet(run.trainer, state), stage.name, pos.global_step)
