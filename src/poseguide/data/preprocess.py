"""From a source row to a training example: resize, pose image, flip, caption dropout.

Randomness (the flip and the caption dropout) is drawn from a generator keyed by
``(seed, epoch, row index)`` (:func:`sample_rng`): the same row in the same epoch is prepared the
same way whatever the process count, worker count or resume point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from poseguide.config.schema import DataConfig
from poseguide.data.record import RowError, Sample
from poseguide.pose.render import render_skeleton
from poseguide.pose.skeleton import flip_keypoints
from poseguide.pose.transforms import Placement, place_image, place_keypoints, plan_resize

# Streams of the per-sample generator, so each random choice has its own independent draw.
STREAM_AUGMENT = 0
STREAM_NOISE = 1


def sample_rng(
    seed: int, epoch: int, index: int, stream: int = STREAM_AUGMENT
) -> np.random.Generator:
    """The numpy generator for one row in one epoch (independent of process layout)."""
    return np.random.default_rng([seed, epoch, index, stream])


def sample_torch_generator(
    seed: int, epoch: int, index: int, stream: int = STREAM_NOISE
) -> torch.Generator:
    """A CPU torch generator for one row in one epoch (noise, timestep, latent sample)."""
    state = sample_rng(seed, epoch, index, stream).integers(0, 2**63 - 1)
    return torch.Generator().manual_seed(int(state))


def draw_timesteps(generators: list[torch.Generator], steps: int) -> tuple[torch.Tensor, list]:
    """One diffusion timestep in [0, steps) per row from its CPU generator: the (B,) int64 CPU
    tensor and the same values as Python ints (read from host memory: no device sync)."""
    drawn = torch.cat([torch.randint(0, steps, (1,), generator=g) for g in generators])
    return drawn, drawn.tolist()


@dataclass
class Prepared:
    """One example at training resolution (PIL images; tensors are made by :func:`to_tensors`)."""

    id: str
    index: int  # row index in the source
    image: Image.Image | None  # RGB, resolution x resolution; None when the sample has no pixels
    pose: Image.Image  # RGB skeleton, same size
    caption: str  # "" when dropped for classifier-free guidance
    keypoints: np.ndarray | None  # (P, 17, 3) in training pixels, None when unknown
    placement: Placement  # how the original maps onto the training canvas
    flipped: bool
    areas: np.ndarray | None = None  # (P,) person areas in training pixels^2, None when unknown


def augment_choices(cfg: DataConfig, seed: int, epoch: int, index: int) -> tuple[bool, bool]:
    """(flip, drop_caption) for one row; the flip is drawn first so both are stable."""
    rng = sample_rng(seed, epoch, index)
    flip = bool(rng.random() < cfg.hflip)
    drop = bool(rng.random() < cfg.caption_dropout)
    return flip, drop


def _pose_image(sample: Sample, keypoints: np.ndarray | None, placement: Placement,
                render: bool, style: Any) -> Image.Image:  # fmt: skip
    if render or sample.pose_image is None:
        if keypoints is None:
            raise RowError(
                sample.id, "bad_keypoints",
                "no pose image and no keypoints to render one from",
            )  # fmt: skip
        return Image.fromarray(render_skeleton(keypoints, placement.size, style))
    if sample.pose_image.size != sample.original_size:
        raise RowError(
            sample.id, "pose_size_mismatch",
            f"pose image is {sample.pose_image.size}, image is {sample.original_size}",
        )  # fmt: skip
    return place_image(sample.pose_image, placement, Image.Resampling.BILINEAR)


def prepare(
    sample: Sample,
    index: int,
    cfg: DataConfig,
    style: Any,
    seed: int,
    epoch: int,
    flip: bool | None = None,
) -> Prepared:
    """Resize the image and pose as configured, then apply the row's flip and caption dropout.

    A flip mirrors the image and its keypoints (left and right joints swap) and re-renders the
    pose from the flipped keypoints, so the skeleton's left/right colours stay correct; this
    needs keypoints. ``flip`` forces the flip choice (the latent cache encodes both variants).
    A sample loaded without pixels (``image`` None) gives ``image`` None: the pose, keypoints
    and placement need only the original size.
    """
    size = (cfg.resolution, cfg.resolution)
    placement = plan_resize(sample.original_size, size, cfg.resize_mode)
    keypoints = None if sample.keypoints is None else place_keypoints(sample.keypoints, placement)
    drawn_flip, drop = augment_choices(cfg, seed, epoch, index)
    flip = drawn_flip if flip is None else flip
    render = cfg.pose_image == "render"
    image = None if sample.image is None else place_image(sample.image, placement)
    if flip:
        if keypoints is None:
            raise RowError(
                sample.id, "bad_keypoints", "data.hflip > 0 needs keypoints to re-render the pose"
            )

        image = None if image is None else image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        keypoints = flip_keypoints(keypoints, cfg.resolution)
        render = True
    pose = _pose_image(sample, keypoints, placement, render, style)
    areas = None
    if sample.areas is not None:  # an area scales with both axes (a flip keeps it)
        areas = np.asarray(sample.areas, dtype=np.float64) * placement.scale[0] * placement.scale[1]
    return Prepared(sample.id, index, image, pose, "" if drop else sample.caption, keypoints,
                    placement, flip, areas)  # fmt: skip


def image_to_tensor(image: Image.Image, low: float = -1.0) -> torch.Tensor:
    """(3, H, W) float32: RGB scaled to [low, 1] (-1 for the VAE, 0 for the pose condition)."""
    array = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32).copy())
    unit = array.permute(2, 0, 1) / 255.0
    return unit * (1.0 - low) + low
