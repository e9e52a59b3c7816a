"""Validation grids during training: fixed prompts, poses and seeds, so grids are comparable.

The samples are the first ``train.validation.num_samples`` rows of the eval split (the training
split when none is configured), prepared as for training (no flip, no caption dropout). Each
grid is ``<run>/validation/<stage>-step-XXXXXXXX.png``: one line per sample, pose | image, then
the caption. Generation uses :func:`poseguide.generate.generate`, the same path as evaluation.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from poseguide.config import Config
from poseguide.data.preprocess import prepare
from poseguide.data.sources import open_source
from poseguide.generate import generate, pipeline_from_parts
from poseguide.paths import RunPaths
from poseguide.utils.grid import image_grid
from poseguide.utils.io import atomic_save_image

log = logging.getLogger(__name__)


def _samples(cfg: Config, source: Any, rows: list[int] | None) -> list[tuple[Any, str]]:
    """(pose image, caption) of the fixed validation rows."""
    n = cfg.train.validation.num_samples
    if cfg.data.eval is not None:
        source, rows = open_source(cfg.data.eval, cfg.data.max_image_pixels), None
    indices = (rows or list(range(len(source))))[:n]
    plain = replace(cfg.data, hflip=0.0, caption_dropout=0.0)
    out = []
    for index in indices:  # the grids show the pose and the generated image: no pixels needed
        sample = source.load(index, image=False)
        item = prepare(sample, index, plain, cfg.pose.render, cfg.run.seed, 0)
        out.append((item.pose, item.caption))
    return out


def make_validator(config: Config, acc: Any, frozen: Any, paths: RunPaths, source: Any,
                   rows: list[int] | None) -> Any:  # fmt: skip
    """A callable ``(controlnet, stage, global_step)`` writing a grid, or None when disabled."""
    if config.train.validation.num_samples == 0:
        return None
    samples = _samples(config, source, rows) if acc.is_main_process else []
    seed = config.train.validation.seed

    def validate(controlnet: Any, stage: str, global_step: int) -> None:
        if acc.is_main_process:
            size = (config.data.resolution,) * 2
            text_encoder = frozen.parts.text_encoder
            home = text_encoder.device  # the CPU when the text cache made it unneeded
            text_encoder.to(frozen.device)
            pipe = pipeline_from_parts(frozen.parts, controlnet, config.generate)
            poses, captions = [p for p, _ in samples], [c for _, c in samples]
            seeds = [seed + i for i in range(len(samples))]
            images = generate(pipe, captions, poses, seeds, config.generate, size=size)
            text_encoder.to(home)
            grid = image_grid(
                [[p, im] for p, im in zip(poses, images, strict=True)],
                [f"seed {s}: {c}" for s, c in zip(seeds, captions, strict=True)],
                titles=["pose", f"{stage}, step {global_step}"],
            )
            path = paths.validation / f"{stage}-step-{global_step:08d}.png"
            atomic_save_image(path, grid)
            log.info("validation grid %s", path)
        acc.wait_for_everyone()

    return validate
