"""File-level pose tasks shared by the CLI, the demo and the UI: estimate, render, visualise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from poseguide.config.schema import EstimatorConfig, PoseConfig, RenderConfig
from poseguide.errors import InputError, NotFoundError
from poseguide.pose.detections import Detections
from poseguide.pose.estimator import PoseEstimator, build_pose_estimator
from poseguide.pose.io import read_pose, write_pose
from poseguide.pose.render import render_skeleton
from poseguide.utils.device import resolve_device
from poseguide.utils.images import DEFAULT_MAX_IMAGE_PIXELS, ImageReadError, read_image
from poseguide.utils.io import atomic_save_image


def estimator_from_config(cfg: EstimatorConfig) -> PoseEstimator:
    """Build the configured pose estimator (the model itself loads on first use)."""
    return build_pose_estimator(
        cfg.backend,
        weights=cfg.weights,
        device=resolve_device(cfg.device),
        conf=cfg.conf,
        iou=cfg.iou,
        imgsz=cfg.imgsz,
        max_det=cfg.max_det,
        heatmap_sigma=cfg.heatmap_sigma,
        heatmap_stride=cfg.heatmap_stride,
        mmpose_config=cfg.mmpose_config,
    )


def load_photo(path: str | Path, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Open a photo as RGB with its EXIF orientation applied (the one safe reader,
    :func:`poseguide.utils.images.read_image`); a clear error for a missing or bad file."""
    try:
        return read_image(path, max_pixels, "image", exif=True)
    except ImageReadError as err:
        if err.problem == "missing_file":
            raise NotFoundError(f"image not found: {path}") from None
        raise InputError(f"{path}: cannot read the image: {err.detail}") from None


def detections_to_coco(detections: Detections, min_score: float) -> np.ndarray:
    """(P, 17, 3) keypoints in COCO's layout: v = 2 where the confidence >= min_score, else 0."""
    people = detections.keypoints.copy()
    people[..., 2] = np.where(detections.keypoints[..., 2] >= min_score, 2.0, 0.0)
    return people


def estimate_file(
    image_path: str | Path,
    out_json: str | Path,
    cfg: PoseConfig,
    render: str | Path | None = None,
    estimator: PoseEstimator | None = None,
) -> str:
    """Estimate the people in a photo, write their keypoints as JSON, optionally draw them.

    Joints whose confidence is below ``cfg.render.min_score`` get v = 0 (unlabelled); the raw
    confidences are kept in ``keypoint_scores``. Returns a one-line summary.
    """
    image = load_photo(image_path)
    estimator = estimator or estimator_from_config(cfg.estimator)
    found = estimator.estimate_people([image])[0]
    people = detections_to_coco(found, cfg.render.min_score)
    write_pose(
        out_json,
        people,
        size=image.size,
        scores=found.scores,
        keypoint_scores=found.keypoints[..., 2],
        image=str(image_path),
        estimator=str(cfg.estimator.weights),
    )
    summary = f"{image_path}: {len(found)} {'person' if len(found) == 1 else 'people'} found"
    if len(found):
        summary += " (scores " + ", ".join(f"{s:.2f}" for s in found.scores) + ")"
    summary += f"; wrote {out_json}"
    if render is not None:
        atomic_save_image(render, render_skeleton(people, image.size, cfg.render))
        summary += f" and {render}"
    return summary


def render_file(
    keypoints_json: str | Path,
    out_png: str | Path,
    style: str = RenderConfig.style,
    size: tuple[int, int] | None = None,
) -> Path:
    """Draw a keypoint JSON file as a skeleton PNG; canvas size from the file or ``size``."""
    pose = read_pose(keypoints_json)
    canvas = tuple(size) if size else pose.size
    if canvas is None:
        raise InputError(
            f"{keypoints_json}: the file has no width/height; pass the canvas size with --size W H"
        )
    drawn = render_skeleton(pose.people, canvas, style, where=str(keypoints_json))
    return atomic_save_image(out_png, drawn)
