"""The report's figures: the qualitative grid, OKS histograms, per-joint accuracy bars.

Each takes the loaded evaluation (:class:`poseguide.evaluate.report.EvalRun`) and returns PNG
bytes (None when there is nothing to draw).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from poseguide.evaluate.report.data import EvalRun, as_number
from poseguide.paths import file_stem
from poseguide.pose.skeleton import COCO17_NAMES
from poseguide.utils.grid import image_grid
from poseguide.utils.images import (
    ImageReadError,
    figure_to_image,
    image_png_bytes,
    pyplot,
    read_image,
)

log = logging.getLogger(__name__)

OKS_BINS = 20  # equal-width bins on [0, 1], the same for every model
GRID_CELL = 192
GRID_TEXT_WIDTH = 380


def _open(path: Path) -> Any:
    """The image at ``path``, or None when it is missing or unreadable (a grey cell)."""
    try:
        return read_image(path)
    except ImageReadError:
        return None


def _fmt(value: Any, decimals: int) -> str:
    value = as_number(value)
    return f"{value:.{decimals}f}" if math.isfinite(value) else "n/a"


def grid_figure(run: EvalRun, ids: Sequence[str]) -> tuple[bytes | None, list[str]]:
    """Thesis Fig. 4.3-4.6: pose | each model's image, one row per sample, with the caption
    and each model's OKS/LPIPS/CLIP as the row text. Returns the PNG and notes on missing
    images (drawn as grey cells, their row text in red)."""
    if not ids:
        return None, []
    by_id, labels = run.by_id(), ["pose", *run.models]
    rows, texts, errors, notes = [], [], [], []
    for sample in ids:
        stem = file_stem(sample)
        paths = [run.eval_dir / "poses" / f"{stem}.png"]
        paths += [run.eval_dir / "images" / m / f"{stem}.png" for m in run.models]
        images = [_open(p) for p in paths]
        missing = [label for label, image in zip(labels, images, strict=True) if image is None]
        rows_here = by_id.get(sample, {})
        caption = next((r.get("caption") for r in rows_here.values() if r.get("caption")), "")
        lines = [f"{sample}: {caption}"]
        for model in run.models:
            r = rows_here.get(model, {})
            lines.append(
                f"{model}: OKS {_fmt(r.get('oks'), 3)}  LPIPS {_fmt(r.get('lpips'), 3)}"
                f"  CLIP {_fmt(r.get('clip'), 2)}"
            )
        if missing:
            lines.append(f"missing image: {', '.join(missing)} (grey)")
            notes.append(f"{sample}: no image for {', '.join(missing)} (shown grey)")
        rows.append(images)
        texts.append("\n".join(lines))
        errors.append(bool(missing))
    grid = image_grid(rows, texts, labels, GRID_CELL, GRID_TEXT_WIDTH, errors)
    return image_png_bytes(grid), notes


def _figure_png(fig: Any) -> bytes:
    return image_png_bytes(figure_to_image(fig, dpi=100))


def oks_histogram_figure(run: EvalRun) -> bytes | None:
    """Per-sample OKS (samples.jsonl ``oks``) of each model, small multiples, the same bins."""
    if not run.samples:
        return None

    plt, models = pyplot(), run.models
    bins = np.linspace(0.0, 1.0, OKS_BINS + 1)
    fig, axes = plt.subplots(
        1, len(models), figsize=(3.4 * len(models), 2.8), squeeze=False, sharex=True, sharey=True
    )
    for k, (ax, model) in enumerate(zip(axes[0], models, strict=True)):
        oks = [v for v in (as_number(r.get("oks")) for r in run.rows_of(model)) if math.isfinite(v)]
        if oks:
            ax.hist(np.clip(oks, 0.0, 1.0), bins=bins, color=f"C{k}")
            ax.axvline(
                float(np.mean(oks)), color="k", ls="--", lw=1, label=f"row mean {np.mean(oks):.3f}"
            )
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no OKS values", ha="center", transform=ax.transAxes)
        ax.set(title=f"{model} (n={len(oks)})", xlabel="OKS per sample", xlim=(0, 1))
    axes[0][0].set_ylabel("samples")
    return _figure_png(fig)


def joints_figure(run: EvalRun) -> bytes | None:
    """Grouped bars: per-joint keypoint accuracy, one colour per model (null ones skipped)."""

    series = []
    for k, model in enumerate(run.models):
        accuracy = run.entry(model).get("per_joint_accuracy")
        if isinstance(accuracy, list) and len(accuracy) == len(COCO17_NAMES):
            series.append((k, model, [as_number(a) for a in accuracy]))
        elif accuracy is not None:
            log.warning("%s: per_joint_accuracy is not 17 values; left out", model)
    if not series:
        return None
    names = run.entry(series[0][1]).get("joint_names") or COCO17_NAMES
    plt, x, width = pyplot(), np.arange(len(COCO17_NAMES)), 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(12, 3.8))
    for i, (k, model, accuracy) in enumerate(series):
        ax.bar(x - 0.4 + width * (i + 0.5), accuracy, width, label=model, color=f"C{k}")
    ax.set_xticks(x, list(names), rotation=40, ha="right")
    ax.set(ylabel="keypoint accuracy", ylim=(0, 1), title="per-joint keypoint accuracy")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _figure_png(fig)
