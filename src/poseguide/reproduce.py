"""``poseguide reproduce``: the thesis end to end (train every stage, evaluate, report).

Every step resumes: training continues from its latest checkpoint, evaluation reuses stored
images and scores, and a finished step is skipped. ``--dry-run`` instead checks that every model,
dataset and weights file can be reached (all problems at once), measures a few training steps
and one generated image on this machine, and prints the plan with the expected time per stage.
When the base model cannot be reached the probe runs on ``builtin:sd15-random``, SD1.5's exact
architecture with random weights, which costs the same compute.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any

import torch

from poseguide.config import Config
from poseguide.preflight import THESIS_ROWS, evaluation_checks, run_checks, training_checks

log = logging.getLogger(__name__)


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
    if cfg.kind in ("manifest", "coco", "synthetic"):
        try:
            from poseguide.data.sources import open_source

            return len(open_source(cfg)), "counted"
        except (OSError, ValueError):
            pass
    if cfg.limit is not None:
        return cfg.limit, "data limit"
    return (known, "the thesis' figure") if known else (None, "unknown")


def _fake_batch(config: Config, parts: Any, device: torch.device) -> dict:
    """Cached-path inputs of the configured size with random values (a stand-in for data)."""
    from poseguide.data.synth import make_sample

    b, r = config.train.batch_size, config.data.resolution
    latent = r // (2 ** (len(parts.vae.config.block_out_channels) - 1))
    width = parts.text_encoder.config.hidden_size
    people = [make_sample(config.run.seed, i, (r, r), 0.0).keypoints for i in range(b)]
    return {
        "index": torch.arange(b),
        "latent_mean": torch.randn(b, parts.vae.config.latent_channels, latent, latent),
        "latent_std": torch.full((b, parts.vae.config.latent_channels, latent, latent), 0.01),
        "text_emb": torch.randn(b, 77, width),
        "conditioning": torch.rand(b, 3, r, r),
        "keypoints": people,
    }


def _time_steps(config: Config, parts: Any, stage: Any, batch: dict, steps: int, warmup: int,
                device: torch.device, estimator: Any) -> float:  # fmt: skip
    """Seconds per optimizer step of the trainer's own step functions (after ``warmup``)."""
    from poseguide.losses import denoising_target, stage_loss
    from poseguide.models import build_controlnet
    from poseguide.train.step import make_inputs, predict, row_generators

    controlnet = build_controlnet(parts.unet).to(device)
    optimizer = torch.optim.AdamW(controlnet.parameters(), lr=stage.lr)
    times = []
    for k in range(warmup + steps):
        start = time.perf_counter()
        gens = row_generators(config.run.seed, k, batch["index"])
        x = make_inputs(parts, batch, gens, device, parts.unet.dtype)
        mixed = parts.unet.dtype != torch.float32  # as accelerate's autocast in the trainer
        with torch.autocast(device.type, dtype=parts.unet.dtype, enabled=mixed):
            pred = predict(controlnet, parts.unet, x)
        target = denoising_target(parts.scheduler, x.latents, x.noise, x.timesteps)
        size = (config.data.resolution,) * 2
        loss = stage_loss(stage.loss, pred, target, vae=parts.vae, estimator=estimator,
                          keypoints=batch["keypoints"], image_size=size)["loss"].mean()  # fmt: skip
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sum(times[warmup:]) / max(1, len(times) - warmup)


def probe(config: Config, model: str, steps: int = 2, warmup: int = 1) -> Probe:
    """Measure each stage's step and one generated image for ``config`` with ``model``."""
    from poseguide.generate import generate, pipeline_from_parts
    from poseguide.models import build_controlnet, load_sd_parts
    from poseguide.pose.api import estimator_from_config
    from poseguide.train.setup import WEIGHT_DTYPES
    from poseguide.utils.device import resolve_device

    device = resolve_device(config.run.device)
    parts = load_sd_parts(model, dtype=WEIGHT_DTYPES[config.train.mixed_precision], device=device)
    batch = _fake_batch(config, parts, device)
    seconds = {}
    for stage in config.train.stages:
        estimator = None
        if stage.loss.kind == "heatmap" and stage.loss.source == "predicted_error":
            cfg = stage.loss.estimator or config.pose.estimator
            estimator = estimator_from_config(replace(cfg, weights=_usable_weights(cfg.weights)))
        seconds[stage.name] = _time_steps(config, parts, stage, batch, steps, warmup, device,
                                          estimator)  # fmt: skip
    pipe = pipeline_from_parts(parts, build_controlnet(parts.unet).eval(), config.generate)
    pose = _pose_image(config)
    size = (config.data.resolution,) * 2
    generate(pipe, ["a person"], [pose], [0], config.generate, size=size)  # warm-up
    start = time.perf_counter()
    generate(pipe, ["a person"], [pose], [1], config.generate, size=size)
    return Probe(model, str(device), seconds, time.perf_counter() - start)


def _usable_weights(weights: str) -> str:
    """The configured pose weights when present, else the bundled yolo11n-pose (timing only)."""
    from poseguide.pose.estimator import PoseWeightsNotFoundError, resolve_pose_weights

    try:
        return str(resolve_pose_weights(weights))
    except PoseWeightsNotFoundError:
        return "yolo11n-pose.pt"


def _pose_image(config: Config) -> Any:
    from PIL import Image

    from poseguide.data.synth import make_sample
    from poseguide.pose.render import render_skeleton

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
    from poseguide.data.api import run_dir

    results = run_checks(training_checks(config) + evaluation_checks(config, run_dir(config), True))
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
    from poseguide.data.api import run_dir
    from poseguide.evaluate.report import make_report
    from poseguide.evaluate.runner import run_evaluation
    from poseguide.train.runner import train_or_resume

    checks = training_checks(config) + evaluation_checks(config, run_dir(config), True)
    problems = [r for r in run_checks(checks) if not r.ok]
    if problems:
        from poseguide.evaluate.runner import EvaluationError

        raise EvaluationError("cannot reproduce:\n  - " + "\n  - ".join(
            f"{r.check.what}: {r.error}" for r in problems))  # fmt: skip
    train_or_resume(config)
    metrics = run_evaluation(config)
    paths = make_report(run_dir(config))
    print(f"report: {paths['html']}")
    return metrics
