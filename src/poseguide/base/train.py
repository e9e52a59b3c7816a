"""Train a small Stable-Diffusion-architecture base from scratch: ``poseguide base train NAME``.

Two phases into ``output_dir/name/`` (see :mod:`poseguide.base.parts` for the losses):

1. ``vae``: an AutoencoderKL on the synthetic images; its ``scaling_factor`` is then set to
   1 / std of the training latents (SD's 0.18215 was chosen the same way);
2. ``unet``: a UNet2DConditionModel on the frozen VAE's latents and a frozen random tiny CLIP
   text encoder's caption embeddings, an EMA of its weights exported in place of the raw ones.

The result is ``pipeline/``, a diffusers ``StableDiffusionPipeline`` folder with
``poseguide-base.json`` (config, hash, steps, wall time) and ``log.jsonl`` beside the weights.

Checkpoints (``checkpoints/step-<n>-<phase>-XXXXXX/``: weights, optimizer, LR schedule, EMA,
``state.json`` with the file sizes, written atomically, ``latest`` pointing at the newest) let an
interrupted run continue with ``--resume latest``, bit for bit: every random draw of a step comes
from a generator seeded by (seed, phase, step).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from poseguide.base.config import BaseConfig, config_hash
from poseguide.base.parts import (
    PHASES,
    Latents,
    batch_rows,
    encode_training_set,
    make_optimizer,
    new_models,
    step_generator,
    training_images,
    unet_loss,
    vae_loss,
)
from poseguide.config.core import to_dict
from poseguide.errors import UserError
from poseguide.models.tiny import SD15_SCHEDULER, save_pipeline
from poseguide.train.checkpoint import LATEST, PREFIX, rotate
from poseguide.utils.checksum import file_records, files_problem
from poseguide.utils.io import atomic_directory, atomic_write_json, atomic_write_text, writing
from poseguide.utils.lock import run_lock

log = logging.getLogger(__name__)

INFO_FILE = "poseguide-base.json"
LOG_FILE = "log.jsonl"
STATE_FILE = "state.json"
RUN_FILE = "base-run.json"  # the hash and config the run folder belongs to


class BaseTrainingError(UserError, RuntimeError):
    """A base run cannot start or continue (no intact checkpoint, another config)."""


@dataclass(frozen=True)
class BasePaths:
    root: Path

    @classmethod
    def of(cls, config: BaseConfig) -> BasePaths:
        return cls(Path(config.output_dir) / config.name)

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def log(self) -> Path:
        return self.root / LOG_FILE

    @property
    def pipeline(self) -> Path:
        return self.root / "pipeline"

    def part(self, phase: str) -> Path:
        """A finished phase's model (``save_pretrained``)."""
        return self.root / "parts" / phase


@dataclass
class Phase:
    """One phase in progress: its trainable model, optimizer, LR schedule, EMA, step."""

    name: str
    model: Any
    optimizer: Any
    scheduler: Any
    ema: Any = None
    step: int = 0
    seconds: float = 0.0  # wall time spent in this phase, across resumes
    losses: list[float] = field(default_factory=list)


# ---------------------------------------------------------------------------- checkpoints


def save_checkpoint(paths: BasePaths, phase: Phase, config: BaseConfig) -> Path:
    """Everything to continue ``phase`` bit for bit, written atomically; ``latest`` names it."""
    # The phase's number first: names sort in training order (rotation keeps the newest).
    order = PHASES.index(phase.name) + 1
    target = paths.checkpoints / f"{PREFIX}{order}-{phase.name}-{phase.step:06d}"
    with writing(target), atomic_directory(target) as tmp:
        save_file({k: v.detach().contiguous() for k, v in phase.model.state_dict().items()},
                  str(tmp / "model.safetensors"))  # fmt: skip
        torch.save(phase.optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(phase.scheduler.state_dict(), tmp / "lr_scheduler.pt")
        if phase.ema is not None:
            torch.save(phase.ema.state_dict(), tmp / "ema.pt")
        state = {"phase": phase.name, "step": phase.step, "seconds": phase.seconds,
                 "hash": config_hash(config), "files": file_records(tmp)}  # fmt: skip
        atomic_write_json(tmp / STATE_FILE, state)  # last: its presence means complete
    atomic_write_text(paths.checkpoints / LATEST, target.name + "\n")
    rotate(paths.checkpoints, config.keep_checkpoints)
    return target


def checkpoint_problem(path: Path) -> str | None:
    """Why ``path`` cannot be resumed from (missing, unfinished, truncated, a file that does not
    match its recorded SHA-256), or None."""
    state_file = path / STATE_FILE
    if not state_file.is_file():
        return f"{state_file} is missing (the checkpoint was not finished)"
    try:
        state = json.loads(state_file.read_text())
        files = dict(state["files"])
    except (ValueError, KeyError, TypeError) as err:
        return f"{state_file} is damaged ({type(err).__name__}: {err})"
    return files_problem(path, files)


def latest_checkpoint(paths: BasePaths) -> Path | None:
    """The newest intact checkpoint (the one ``latest`` names first), or None when none."""
    root = paths.checkpoints
    named = root / (root / LATEST).read_text().strip() if (root / LATEST).is_file() else None
    found = sorted((p for p in root.glob(f"{PREFIX}*") if p.is_dir()), reverse=True)
    for path in ([named] if named else []) + found:
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        log.warning("skipping checkpoint %s: %s", path.name, problem)
    return None


def load_state(path: Path, phase: Phase, config: BaseConfig) -> None:
    """Restore ``phase`` from the checkpoint ``path`` (weights_only loads, no unpickling)."""
    state = json.loads((path / STATE_FILE).read_text())
    if state["hash"] != config_hash(config):
        raise BaseTrainingError(
            f"{path} was written with another base config (hash {state['hash']}, this one "
            f"{config_hash(config)}); resume with the config it was trained with, or use "
            "another name= to train this one from the beginning"
        )
    phase.model.load_state_dict(load_file(str(path / "model.safetensors")))
    phase.optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    phase.scheduler.load_state_dict(torch.load(path / "lr_scheduler.pt", weights_only=True))
    if phase.ema is not None:
        phase.ema.load_state_dict(torch.load(path / "ema.pt", weights_only=True))
    phase.step, phase.seconds = int(state["step"]), float(state["seconds"])


# ----------------------------------------------------------------------------------- log


def append_log(paths: BasePaths, row: dict) -> None:
    paths.root.mkdir(parents=True, exist_ok=True)
    with paths.log.open("a") as handle:
        handle.write(json.dumps(row) + "\n")


def truncate_log(paths: BasePaths, phase: str, step: int) -> None:
    """Drop log rows written after ``step`` of ``phase`` (a resumed run writes them again)."""
    if not paths.log.is_file():
        return
    order = PHASES.index(phase)
    kept = [line for line in paths.log.read_text().splitlines() if line.strip()
            and _before(json.loads(line), order, step)]  # fmt: skip
    atomic_write_text(paths.log, "".join(f"{line}\n" for line in kept))


def _before(row: dict, order: int, step: int) -> bool:
    other = PHASES.index(row["phase"])
    return other < order or (other == order and row["step"] <= step)


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------------------------- loop


def run_phase(paths: BasePaths, config: BaseConfig, phase: Phase, total: int, loss_fn: Any,
              progress: bool = True) -> Phase:  # fmt: skip
    """Train ``phase`` from its step to ``total``: ``loss_fn(step, generator)`` gives the loss;
    logs, checkpoints (every ``checkpoint_every`` steps and at the end) and a progress bar."""
    settings = getattr(config, phase.name)
    params = [p for p in phase.model.parameters() if p.requires_grad]
    start, before = time.perf_counter(), phase.seconds
    bar = tqdm(total=total, initial=phase.step, desc=f"base {phase.name}", disable=not progress)
    phase.model.train()
    while phase.step < total:
        loss = loss_fn(phase.step, step_generator(config.seed, phase.name, phase.step))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"base {phase.name} step {phase.step + 1}: loss is {loss}; "
                                     f"lower {phase.name}.lr")  # fmt: skip
        phase.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if settings.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
        phase.optimizer.step()
        phase.scheduler.step()
        if phase.ema is not None:
            phase.ema.step(params)
        phase.step += 1
        phase.seconds = before + time.perf_counter() - start
        value = float(loss.detach())
        bar.update(1)
        bar.set_postfix(loss=f"{value:.4f}")
        if phase.step <= 3 or phase.step % config.log_every == 0 or phase.step == total:
            append_log(paths, {"phase": phase.name, "step": phase.step, "loss": value,
                               "lr": phase.scheduler.get_last_lr()[0],
                               "seconds": round(phase.seconds, 3)})  # fmt: skip
        if phase.step % config.checkpoint_every == 0 or phase.step == total:
            save_checkpoint(paths, phase, config)
    bar.close()
    return phase


def _resume_point(paths: BasePaths, resume: str | None) -> Path | None:
    if resume is None:
        if latest_checkpoint(paths) is not None:
            raise BaseTrainingError(
                f"{paths.root} already holds a base run: continue it with `--resume latest`, "
                "or pass name=OTHER to start another"
            )
        return None
    if resume != LATEST:
        problem = checkpoint_problem(Path(resume))
        if problem:
            raise BaseTrainingError(f"cannot resume from {resume}: {problem}")
        return Path(resume)
    found = latest_checkpoint(paths)
    if found is None:
        log.info("no checkpoint in %s: starting from the beginning", paths.checkpoints)
    return found


def _phase_of(path: Path | None) -> tuple[str | None, Path | None]:
    if path is None:
        return None, None
    return json.loads((path / STATE_FILE).read_text())["phase"], path


def train_vae(paths: BasePaths, config: BaseConfig, models: dict, pixels: torch.Tensor,
              resume: Path | None, progress: bool) -> Phase:  # fmt: skip
    vae, settings = models["vae"], config.vae
    phase = Phase("vae", vae, *make_optimizer(list(vae.parameters()), settings))
    if resume is not None:
        load_state(resume, phase, config)
    truncate_log(paths, "vae", phase.step)

    def loss(step: int, g: torch.Generator) -> torch.Tensor:
        rows = batch_rows(config.seed, "vae", step, len(pixels), settings.batch_size)
        return vae_loss(vae, pixels[rows], settings.kl_weight, g)

    run_phase(paths, config, phase, settings.steps, loss, progress)
    with writing(paths.part("vae")), atomic_directory(paths.part("vae")) as tmp:
        vae.save_pretrained(tmp, safe_serialization=True)
    return phase


def train_unet(paths: BasePaths, config: BaseConfig, models: dict, latents: Latents,
               resume: Path | None, progress: bool) -> Phase:  # fmt: skip
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel

    unet, settings = models["unet"], config.unet
    scheduler = DDPMScheduler.from_config(SD15_SCHEDULER)
    phase = Phase("unet", unet, *make_optimizer(list(unet.parameters()), settings))
    phase.ema = EMAModel(unet.parameters(), decay=settings.ema_decay, use_ema_warmup=True,
                         power=settings.ema_power)  # fmt: skip
    if resume is not None:
        load_state(resume, phase, config)
    truncate_log(paths, "unet", phase.step)

    def loss(step: int, g: torch.Generator) -> torch.Tensor:
        rows = batch_rows(config.seed, "unet", step, len(latents.mean), settings.batch_size)
        return unet_loss(unet, scheduler, latents, rows, config.data.caption_dropout, g)

    run_phase(paths, config, phase, settings.steps, loss, progress)
    phase.ema.copy_to(unet.parameters())
    with writing(paths.part("unet")), atomic_directory(paths.part("unet")) as tmp:
        unet.save_pretrained(tmp, safe_serialization=True)
    return phase


def train_base(config: BaseConfig, resume: str | None = None, progress: bool = True) -> Path:
    """Train (or finish) the base of ``config``; returns its pipeline folder."""
    paths, started = BasePaths.of(config), time.perf_counter()
    if config.threads:
        torch.set_num_threads(config.threads)
    if _built(paths, config):
        log.info("base %s is built: %s", config.name, paths.pipeline)
        return paths.pipeline
    with run_lock(paths.root, "base train"):  # one writer: nothing is written before it
        return _train_parts(config, paths, resume, progress, started)


def _train_parts(config: BaseConfig, paths: BasePaths, resume: str | None, progress: bool,
                 started: float) -> Path:  # fmt: skip
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel

    at, checkpoint = _phase_of(_resume_point(paths, resume))
    _claim(paths, config)
    models, seconds = new_models(config), {}
    pixels, captions = training_images(config, progress)
    if at in (None, "vae") and not (paths.part("vae") / "config.json").is_file():
        seconds["vae"] = train_vae(paths, config, models, pixels, checkpoint, progress).seconds
        checkpoint = None
    vae = AutoencoderKL.from_pretrained(paths.part("vae")).requires_grad_(False).eval()
    latents = encode_training_set(vae, models, pixels, captions)
    if not (paths.part("unet") / "config.json").is_file():
        resume_unet = checkpoint if at == "unet" else None
        phase = train_unet(paths, config, models, latents, resume_unet, progress)
        seconds["unet"] = phase.seconds
    vae.register_to_config(scaling_factor=latents.scaling_factor)
    unet = UNet2DConditionModel.from_pretrained(paths.part("unet"))
    parts = {"vae": vae, "unet": unet, "text_encoder": models["text_encoder"],
             "scheduler": PNDMScheduler.from_config(SD15_SCHEDULER)}  # fmt: skip
    with writing(paths.pipeline), atomic_directory(paths.pipeline) as tmp:
        save_pipeline(tmp, parts, models["tokenizer"])
        info = {"config": to_dict(config), "hash": config_hash(config),
                "steps": {"vae": config.vae.steps, "unet": config.unet.steps},
                "phase_seconds": seconds, "scaling_factor": latents.scaling_factor,
                "wall_seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
        atomic_write_json(tmp / INFO_FILE, info)
        atomic_write_text(tmp / LOG_FILE, paths.log.read_text())
    print(f"base {config.name}: {paths.pipeline} (this call {info['wall_seconds']:.0f} s)")
    return paths.pipeline


def _claim(paths: BasePaths, config: BaseConfig) -> None:
    """Record the config's hash in the run folder; a folder of another config is refused (its
    checkpoints and finished parts belong to that config)."""
    marker = paths.root / RUN_FILE
    if marker.is_file():
        found = json.loads(marker.read_text())["hash"]
        if found != config_hash(config):
            raise BaseTrainingError(
                f"{paths.root} holds a base of another base config (hash {found}, this one "
                f"{config_hash(config)}); resume with the config it was trained with, or use "
                "another name= to train this one from the beginning"
            )
        return
    atomic_write_json(marker, {"hash": config_hash(config), "config": to_dict(config)})


def _built(paths: BasePaths, config: BaseConfig) -> bool:
    info = paths.pipeline / INFO_FILE
    return info.is_file() and json.loads(info.read_text()).get("hash") == config_hash(config)
