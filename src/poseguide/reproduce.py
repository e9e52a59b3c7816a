"""``poseguide reproduce``: the thesis end to end (train every stage, evaluate, report).

Every step resumes: training continues from its latest checkpoint, evaluation reuses stored
images and scores, and a finished step is skipped. ``--dry-run`` instead checks that every model,
dataset and weights file can be reached (all problems at once), measures a few training steps
and one generated image on this machine, and prints the plan with the expected time per stage.
When the base model cannot be reached the probe runs on ``builtin:sd15-random``, SD1.5's exact
architecture with random weights, which costs the same compute.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, replace
from typing import Any

import torch

from poseguide.config import Config
from poseguide.data.dataset import collate, training_item
from poseguide.data.sources import open_source
from poseguide.evaluate.checks import evaluation_checks
from poseguide.evaluate.report import make_report
from poseguide.evaluate.runner import EvaluationError, run_evaluation
from poseguide.generate import generate, pipeline_from_parts
from poseguide.models import untrained_controlnet
from poseguide.models.sd import vae_scale_factor
from poseguide.objectives import estimator_configs, loss_needs
from poseguide.paths import RunPaths
from poseguide.pose.render import render_skeleton
from poseguide.pose.weights import PoseWeightsNotFoundError, resolve_pose_weights
from poseguide.preflight import THESIS_ROWS, run_checks, training_checks
from poseguide.synth.people import make_sample
from poseguide.text import caption_limit
from poseguide.train.loop import end_stage, start_stage
from poseguide.train.runner import train_or_resume
from poseguide.train.setup import make_trainer
from poseguide.train.step import epoch_key, optimizer_step
from poseguide.utils.device import synchronize

log = logging.getLogger(__name__)

PROBE_LATENT_STD = 0.01  # the fake batch's latent posterior std (a cached VAE posterior's scale)


@dataclass
class Probe:
    model: str  # what was measured
    device: str
    step_seconds: dict[str, float]  # per stage name: seconds per optimizer step
    image_seconds: float  # seconds per generated image


def _rows(cfg: Any) -> tuple[int | None, str]:
    """Rows of a source, cheaply: counted for local files, the thesis' figure for its dataset."""
    if cfg is None:
        return None, "no split"
    known = THESIS_ROWS.get((cfg.path, cfg.split))
    if cfg.kind in ("manifest", "coco", "humansd", "synthetic"):
        try:
            return len(open_source(cfg)), "counted"
        except (OSError, ValueError):
            pass
    if cfg.limit is not None:
        return cfg.limit, "data limit"
    return (known, "the thesis' figure") if known else (None, "unknown")


def _fake_batch(config: Config, parts: Any) -> dict:
    """Cached-path inputs of the configured size with random values (a stand-in for data)."""

    b, r = config.train.batch_size, config.data.resolution
    latent = r // vae_scale_factor(parts.vae)
    channels, width = parts.vae.config.latent_channels, parts.text_encoder.config.hidden_size
    tokens = caption_limit(parts.tokenizer, parts.text_encoder.config)
    people = [make_sample(config.run.seed, i, (r, r), 0.0).keypoints for i in range(b)]
    generator = torch.Generator().manual_seed(config.run.seed)
    mean = torch.randn(b, channels, latent, latent, generator=generator)
    text = torch.randn(b, tokens, width, generator=generator)
    conditioning = torch.rand(b, 3, r, r, generator=generator)
    std = torch.full_like(mean, PROBE_LATENT_STD)
    items = [training_item(i, f"probe-{i}", "a person", conditioning[i], people[i],
                           latent_mean=mean[i], latent_std=std[i], text_emb=text[i])
             for i in range(b)]  # fmt: skip
    return collate(items)


def _time_stage(trainer: Any, index: int, batch: dict, steps: int, warmup: int,
                stage: Any = None) -> float:  # fmt: skip
    """Seconds per optimizer step of stage ``index`` (or ``stage`` in its place): training's own
    step (:func:`poseguide.train.step.optimizer_step`) on a fresh stage state (the same
    optimizer, autocast, gradient checkpointing and clipping as ``poseguide train``)."""

    stage = stage or trainer.config.train.stages[index]
    state = start_stage(trainer, index, "unet", None, None, 0, warmup + steps)
    batches = itertools.repeat(batch)
    times = []
    for k in range(warmup + steps):
        start = time.perf_counter()
        optimizer_step(trainer, stage, state, batches, epoch_key(index, k))
        synchronize(trainer.frozen.device)
        times.append(time.perf_counter() - start)
    end_stage(trainer, state)
    return sum(times[warmup:]) / max(1, len(times) - warmup)


def probe(config: Config, model: str, steps: int = 2, warmup: int = 1) -> Probe:
    """Measure each stage's step and one generated image for ``config`` with ``model``."""

    stages = [_usable_stage(config, s) for s in config.train.stages]
    config = replace(config, model=replace(config.model, base=model),
                     train=replace(config.train, stages=stages))  # fmt: skip
    trainer = make_trainer(config)
    batch = _fake_batch(config, trainer.frozen.parts)
    seconds = {s.name: _stage_seconds(trainer, i, batch, steps, warmup)
               for i, s in enumerate(stages)}  # fmt: skip
    parts = trainer.frozen.parts
    pipe = pipeline_from_parts(parts, untrained_controlnet(parts, 0).eval(), config.generate)
    pose = _pose_image(config)
    size = (config.data.resolution,) * 2
    generate(pipe, ["a person"], [pose], [0], config.generate, size=size)  # warm-up
    start = time.perf_counter()
    generate(pipe, ["a person"], [pose], [1], config.generate, size=size)
    return Probe(model, str(trainer.frozen.device), seconds, time.perf_counter() - start)


def _stage_seconds(trainer: Any, index: int, batch: dict, steps: int, warmup: int) -> float:
    """A stage's expected seconds per step. A reward stage's step costs more when its samples
    are rewarded (t <= ``reward_timestep_max``): timed with every sample rewarded and with none,
    weighed by the share of timesteps rewarded (exact for batch 1, the mean otherwise)."""

    stage = trainer.config.train.stages[index]
    if not loss_needs(stage.loss).reward:
        return _time_stage(trainer, index, batch, steps, warmup)
    total = trainer.frozen.parts.scheduler.config.num_train_timesteps
    share = min(stage.loss.reward_timestep_max + 1, total) / total
    every = replace(stage, loss=replace(stage.loss, reward_timestep_max=total - 1))
    none = replace(stage, loss=replace(stage.loss, reward_weight=0.0))
    rewarded = _time_stage(trainer, index, batch, steps, warmup, every)
    plain = _time_stage(trainer, index, batch, steps, warmup, none)
    return share * rewarded + (1 - share) * plain


def _usable_stage(config: Config, stage: Any) -> Any:
    """The stage with pose weights that exist here when its loss needs an estimator (the
    bundled ones when the configured ones are missing: the probe times the step)."""

    keys = {"mask": "estimator", "reward": "reward_estimator"}
    usable = {keys[role]: replace(cfg, weights=_usable_weights(cfg.weights))
              for role, cfg in estimator_configs(config, stage).items()}  # fmt: skip
    return replace(stage, loss=replace(stage.loss, **usable)) if usable else stage


def _usable_weights(weights: str) -> str:
    """The configured pose weights when present, else the bundled yolo11n-pose (timing only)."""

    try:
        return str(resolve_pose_weights(weights))
    except PoseWeightsNotFoundError:
        return "yolo11n-pose.pt"


def _pose_image(config: Config) -> Any:
    from PIL import Image

    r = config.data.resolution
    return Image.fromarray(render_skeleton(make_sample(0, 0, (r, r), 0.0).keypoints, (r, r)))


def plan(config: Config, measured: Probe) -> list[dict]:
    """Expected duration of each stage and of the evaluation on this machine."""
    rows, rows_note = _rows(config.data.train)
    per_step = config.train.batch_size * config.train.grad_accum
    out = []
    for stage in config.train.stages:
        steps = None if rows is None else stage.epochs * (rows // per_step)
        if steps is not None and stage.max_steps:
            steps = min(steps, stage.max_steps)
        seconds = None if steps is None else steps * measured.step_seconds[stage.name]
        out.append({"step": f"train {stage.name} ({stage.loss.kind})", "count": steps,
                    "unit": "steps", "each": measured.step_seconds[stage.name],
                    "total": seconds, "note": rows_note})  # fmt: skip
    eval_rows, eval_note = _rows(config.data.eval)
    if eval_rows is not None and config.evaluate.limit:
        eval_rows = min(eval_rows, config.evaluate.limit)
    images = None if eval_rows is None else eval_rows * len(config.evaluate.models)
    total = None if images is None else images * measured.image_seconds
    out.append({"step": "evaluate (generation)", "count": images, "unit": "images",
                "each": measured.image_seconds, "total": total, "note": eval_note})  # fmt: skip
    return out


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours} h {rest // 60:02d} min" if hours else f"{rest // 60} min {rest % 60:02d} s"


def dry_run(config: Config, probe_model: str | None = None, steps: int = 2) -> dict:
    """Check reachability of everything, probe this machine, print the plan; return both."""
    run = RunPaths.of(config)
    results = run_checks(training_checks(config) + evaluation_checks(config, run, True))
    print("What the reproduction needs:")
    for r in results:
        state = "ok" if r.ok and r.check.probe else ("later" if r.ok else "UNREACHABLE")
        print(
            f"  [{state:^11}] {r.check.what}: {r.check.target}"
            + (f" ({r.check.note})" if r.check.note else "")
        )
        if not r.ok:
            print(f"                {r.error}")
    base_ok = next(r.ok for r in results if r.check.what == "Stable Diffusion base")
    model = probe_model or (config.model.base if base_ok else "builtin:sd15-random")
    print(f"\nProbing {steps} training steps per stage and one image with {model} ...", flush=True)
    measured = probe(config, model, steps)
    steps_plan = plan(config, measured)
    print(f"\nPlan on this machine ({measured.device}; measured with {model}):")
    print(f"  {'step':<34} {'count':>10} {'each':>10} {'expected':>16}  basis")
    for row in steps_plan:
        count = "?" if row["count"] is None else f"{row['count']:,} {row['unit']}"
        print(f"  {row['step']:<34} {count:>10} {row['each']:>9.2f}s {_duration(row['total']):>16}"
              f"  {row['note']}")  # fmt: skip
    known = [r["total"] for r in steps_plan if r["total"] is not None]
    print(f"  {'total':<34} {'':>10} {'':>10} {_duration(sum(known)):>16}")
    unreachable = [r for r in results if not r.ok]
    if unreachable:
        print(f"\n{len(unreachable)} item(s) unreachable: fix them before `poseguide reproduce`.")
    return {"checks": results, "probe": measured, "plan": steps_plan}


def run_reproduce(config: Config) -> dict:
    """Train every unfinished stage, evaluate, write the report (each step resumes)."""

    run = RunPaths.of(config)
    checks = training_checks(config) + evaluation_checks(config, run, True)
    problems = [r for r in run_checks(checks) if not r.ok]
    if problems:
        raise EvaluationError("cannot reproduce:\n  - " + "\n  - ".join(
            f"{r.check.what}: {r.error}" for r in problems))  # fmt: skip
    train_or_resume(config)
    metrics = run_evaluation(config)
    paths = make_report(run.root)
    print(f"report: {paths['html']}")
    return metrics
