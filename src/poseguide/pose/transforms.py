"""Resize, crop, pad and flip an image together with its keypoints.

Every geometric change is described by a :class:`Placement`: the source image is scaled by
``(sx, sy)`` to ``resized`` pixels and placed at integer ``offset`` on a canvas of ``size``
pixels. A keypoint moves as ``x' = x * sx + ox`` (continuous pixel coordinates, see
:mod:`poseguide.pose.skeleton`), which is exactly where the image content moves, so the pose
stays aligned with the picture. The placement is kept with each sample so generated images can
be mapped back to the original size for evaluation (:func:`restore_image`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

from poseguide.pose.skeleton import as_people, flip_keypoints

ResizeMode = Literal["stretch", "crop", "pad"]
RESIZE_MODES: tuple[str, ...] = ("stretch", "crop", "pad")


@dataclass(frozen=True)
class Placement:
    """How a (W, H) source maps onto a (w, h) canvas: scale to ``resized``, paste at ``offset``."""

    source: tuple[int, int]  # original (width, height)
    size: tuple[int, int]  # canvas (width, height)
    resized: tuple[int, int]  # (width, height) of the scaled source before cropping/padding
    offset: tuple[int, int]  # where the scaled source's top-left corner lands on the canvas

    @property
    def scale(self) -> tuple[float, float]:
        return self.resized[0] / self.source[0], self.resized[1] / self.source[1]


def plan_resize(source: tuple[int, int], size: tuple[int, int], mode: str = "stretch") -> Placement:
    """Plan the mapping of a ``source`` (W, H) image onto a ``size`` (w, h) canvas.

    ``stretch`` scales each axis independently (the thesis' choice); ``crop`` scales the shorter
    side to fit and centre-crops; ``pad`` scales the longer side to fit and centres the image on
    a black canvas.
    """
    (sw, sh), (w, h) = source, size
    if sw <= 0 or sh <= 0 or w <= 0 or h <= 0:
        raise ValueError(f"image sizes must be positive, got source {source} and target {size}")
    if mode == "stretch":
        return Placement(tuple(source), tuple(size), (w, h), (0, 0))
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {mode!r}; choose one of {RESIZE_MODES}")
    pick = max if mode == "crop" else min
    scale = pick(w / sw, h / sh)
    resized = (max(1, round(sw * scale)), max(1, round(sh * scale)))
    if mode == "crop":  # make sure the scaled image covers the canvas despite rounding
        resized = (max(resized[0], w), max(resized[1], h))
    else:
        resized = (min(resized[0], w), min(resized[1], h))
    offset = ((w - resized[0]) // 2, (h - resized[1]) // 2)
    return Placement(tuple(source), tuple(size), resized, offset)


def place_image(
    image: Image.Image, placement: Placement, resample: int = Image.Resampling.BICUBIC
) -> Image.Image:
    """Apply ``placement`` to a PIL image (black fill where padding)."""
    if image.size != placement.source:
        raise ValueError(f"image is {image.size}, the placement was planned for {placement.source}")
    scaled = image.resize(placement.resized, resample=resample)
    canvas = Image.new(image.mode, placement.size)
    canvas.paste(scaled, placement.offset)
    return canvas


def place_keypoints(people: np.ndarray, placement: Placement) -> np.ndarray:
    """Move (P, 17, 3) keypoints with the image; joints pushed off the canvas become unlabelled."""
    people = as_people(people).copy()
    sx, sy = placement.scale
    people[..., 0] = people[..., 0] * sx + placement.offset[0]
    people[..., 1] = people[..., 1] * sy + placement.offset[1]
    w, h = placement.size
    inside = (
        (people[..., 0] >= 0) & (people[..., 0] < w) & (people[..., 1] >= 0) & (people[..., 1] < h)
    )
    people[~inside] = 0.0
    return people


def restore_image(
    image: Image.Image, placement: Placement, resample: int = Image.Resampling.BICUBIC
) -> Image.Image:
    """Map a canvas-sized image (e.g. a generated one) back to the original size.

    Inverts :func:`place_image`: padding is cut away; with ``crop`` the parts of the original that
    were cropped off have no counterpart and stay black.
    """
    if image.size != placement.size:
        raise ValueError(f"image is {image.size}, expected the canvas size {placement.size}")
    (ox, oy), (rw, rh) = placement.offset, placement.resized
    box = (max(ox, 0), max(oy, 0), min(ox + rw, placement.size[0]), min(oy + rh, placement.size[1]))
    content = image.crop(box)
    sx, sy = placement.scale
    left, top = round((box[0] - ox) / sx), round((box[1] - oy) / sy)
    right, bottom = round((box[2] - ox) / sx), round((box[3] - oy) / sy)
    restored = Image.new(image.mode, placement.source)
    restored.paste(content.resize((right - left, bottom - top), resample=resample), (left, top))
    return restored


def hflip(image: Image.Image, people: np.ndarray) -> tuple[Image.Image, np.ndarray]:
    """Mirror an image and its keypoints left-right (left and right joints swap)."""
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), flip_keypoints(people, image.width)
