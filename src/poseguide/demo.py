"""``poseguide demo``: the whole method, offline on a CPU, in one command.

With the mini preset (the default: ``configs/mini.yaml``, the shipped base ``builtin:mini-sd``
trained here from scratch) it runs, in order, each step reusing what an earlier run finished:

1. the pose toolkit on a real photo (scikit-image's astronaut): the pose estimated by the offline
   YOLO11n-pose model, the skeleton in both ControlNet styles, heatmaps and the stage-2 masks;
2. synthetic people, the latent cache, the config's stages (mini: stage 1, then stage 2, the
   reward and the control arm, each branching from stage 1 with the same extra steps);
3. generation and evaluation of every configured model (OKS with the real YOLO11n-pose);
4. the report (``report.md`` and ``report.html``), and a summary table on the console.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from poseguide.config import Config, save_config
from poseguide.evaluate.report import make_report
from poseguide.evaluate.runner import run_evaluation
from poseguide.paths import RunPaths
from poseguide.pose.api import detections_to_coco, estimator_from_config
from poseguide.pose.heatmaps import binary_mask
from poseguide.pose.io import write_pose
from poseguide.pose.render import RENDER_STYLES, render_skeleton
from poseguide.pose.skeleton import COCO17_NAMES
from poseguide.train.runner import train_or_resume
from poseguide.utils.images import figure_to_image, pyplot
from poseguide.utils.io import atomic_save_image

log = logging.getLogger(__name__)


def demo_photo() -> Image.Image:
    """scikit-image's astronaut (Eileen Collins, public domain), 512x512 RGB."""
    from skimage import data

    return Image.fromarray(data.astronaut())


def _heat_overlay(image: Image.Image, heat: torch.Tensor) -> np.ndarray:
    """The photo darkened, with the max-over-joints heatmap in red on top; HxWx3 uint8."""
    peak = heat.max(dim=0).values[None, None]
    up = torch.nn.functional.interpolate(peak, size=image.size[::-1], mode="bilinear")[0, 0]
    photo = np.asarray(image, dtype=np.float32) * 0.4
    photo[..., 0] = np.maximum(photo[..., 0], up.numpy() * 255)
    return photo.clip(0, 255).astype(np.uint8)


def _mask_image(mask: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """A (1, h, w) mask scaled to 0..255 and resized to ``size`` for viewing."""
    m = mask[0].numpy()
    m = (m / max(float(m.max()), 1e-6) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(m).resize(size, Image.Resampling.NEAREST).convert("RGB"))


def _panel(images: dict[str, np.ndarray], path: Path) -> Path:
    fig, axes = pyplot().subplots(1, len(images), figsize=(3.2 * len(images), 3.6))
    for ax, (title, array) in zip(axes, images.items(), strict=True):
        ax.imshow(array)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    return atomic_save_image(path, figure_to_image(fig, dpi=90))


def pose_demo(config: Config, out_dir: str | Path) -> dict:
    """The pose toolkit on the astronaut photo, into ``out_dir``; returns the summary it prints."""
    out = Path(out_dir)
    start = time.perf_counter()
    save_config(config, out / "config.yaml")
    photo = demo_photo()
    atomic_save_image(out / "photo.png", photo)
    estimator = estimator_from_config(config.pose.estimator)
    found = estimator.estimate_people([photo])[0]
    people = detections_to_coco(found, config.pose.render.min_score)
    write_pose(out / "keypoints.json", people, size=photo.size, scores=found.scores,
               keypoint_scores=found.keypoints[..., 2], image="photo.png")  # fmt: skip
    panels = {"photo": np.asarray(photo)}
    for style in RENDER_STYLES:
        pose = render_skeleton(people, photo.size, style)
        atomic_save_image(out / f"pose_{style}.png", pose)
        panels[f"skeleton ({style})"] = pose
    heat = estimator.heatmaps([photo])  # (1, 17, h, w): Gaussians scaled by confidence
    panels["keypoint heatmaps"] = _heat_overlay(photo, heat[0])
    for polarity, reduction in (("not_detected", "sum"), ("detected", "max")):
        mask = binary_mask(heat, polarity=polarity, reduction=reduction)[0]
        name = f"mask_{polarity}_{reduction}"
        panels[f"H_M {polarity}/{reduction}"] = _mask_image(mask, photo.size)
        atomic_save_image(out / f"{name}.png", panels[f"H_M {polarity}/{reduction}"])
    atomic_save_image(out / "heatmaps.png", panels["keypoint heatmaps"])
    _panel(panels, out / "summary.png")
    summary = {
        "people": len(found),
        "scores": [round(float(s), 3) for s in found.scores],
        "joints": {
            COCO17_NAMES[j]: [round(float(v), 1) for v in found.keypoints[0, j]] for j in (0, 5, 6)
        }
        if len(found)
        else {},
        "out_dir": str(out),
        "seconds": round(time.perf_counter() - start, 2),
    }
    _print_summary(summary, out)
    return summary


def _print_summary(summary: dict, out: Path) -> None:
    print(f"\nposeguide demo: {summary['people']} person(s) found in the astronaut photo", end="")
    print(f" (scores {summary['scores']})" if summary["people"] else "")
    for name, (x, y, score) in summary["joints"].items():
        print(f"  {name:15s} x={x:6.1f}  y={y:6.1f}  confidence={score:.2f}")
    print(f"Wrote to {out}/:")
    for path in sorted(out.glob("*")):
        print(f"  {path.name}")
    print(f"Done in {summary['seconds']} s. Open {out}/summary.png to see everything at once.")


def run_demo(config: Config) -> dict:
    """The whole pipeline for ``config`` (see the module docstring); returns the metrics."""

    start = time.perf_counter()
    run = RunPaths.of(config)
    folder = run.root
    phases: dict[str, float] = {}

    def timed(name: str, work: Any) -> Any:
        t0 = time.perf_counter()
        result = work()
        phases[name] = time.perf_counter() - t0
        return result

    _banner("1/4 pose toolkit on a real photo")
    timed("pose toolkit", lambda: pose_demo(config, run.pose_demo))
    stages = ", ".join(stage.name for stage in config.train.stages)
    _banner(f"2/4 synthetic data, latent cache, training ({stages})")
    timed("data + training", lambda: train_or_resume(config))
    _banner("3/4 generation and evaluation")
    metrics = timed("evaluation", lambda: run_evaluation(config))
    _banner("4/4 report")
    paths = timed("report", lambda: make_report(folder))
    _print_table(metrics)
    print(f"\nReport: {paths['html']} (and {paths['md'].name} beside it)")
    spent = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in phases.items())
    print(f"Run folder: {folder}  |  demo wall time {time.perf_counter() - start:.0f} s ({spent})")
    return metrics


def _banner(text: str) -> None:
    print(f"\n=== poseguide demo: {text} ===", flush=True)


def _cell(summary: dict | None, digits: int, ci: bool = True) -> str:
    """``mean [low, high]`` of a metrics.json summary, ``n/a`` when missing."""
    if not summary or summary.get("mean") is None or summary["mean"] != summary["mean"]:
        return "n/a"
    text = f"{summary['mean']:.{digits}f}"
    low, high = summary.get("ci_low"), summary.get("ci_high")
    if ci and low is not None and high is not None and low == low:
        text += f" [{low:.{digits}f}, {high:.{digits}f}]"
    return text


def _print_table(metrics: dict) -> None:
    """The terminal summary: per model OKS and pose-specific OKS with 95% intervals, detection
    rate, CLIP and LPIPS; then the configured paired comparisons."""
    header = (f"\n{'model':<10} {'OKS ↑ [95% CI]':>22} {'pose-specific ↑':>22} {'detected':>9} "
              f"{'CLIP':>7} {'LPIPS':>7}  (n)")  # fmt: skip
    print(header)
    for name, m in metrics["models"].items():
        print(f"{name:<10} {_cell(m.get('oks'), 3):>22} "
              f"{_cell(m.get('pose_specific_oks'), 3):>22} "
              f"{_cell(m.get('detection_rate'), 2, ci=False):>9} "
              f"{_cell(m.get('clip'), 2, ci=False):>7} {_cell(m.get('lpips'), 3, ci=False):>7}"
              f"  ({m['n']})")  # fmt: skip
    for c in metrics.get("comparisons") or []:
        print(
            f"  {c['model']} − {c['against']}: ΔOKS {_cell(c['oks'], 3)}, "
            f"Δ pose-specific {_cell(c['pose_specific_oks'], 3)}"
        )
