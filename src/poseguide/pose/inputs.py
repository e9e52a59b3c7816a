"""Poses as ControlNet conditions: a skeleton image, COCO-17 keypoints, or a photo.

The pose comes in one of three kinds (:class:`PoseInput`): a skeleton image (used as is), COCO-17
keypoints (a JSON file, a mapping or an array; rendered), or a photo (its pose is estimated, then
rendered). :func:`pose_from_path` picks the kind of a file, see :func:`guess_image_kind`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from poseguide.config.schema import RenderConfig
from poseguide.errors import InputError, NotFoundError, UserError
from poseguide.pose.api import detections_to_coco, load_photo
from poseguide.pose.estimator import PoseEstimator
from poseguide.pose.io import parse_pose, read_pose
from poseguide.pose.render import (
    DEFAULT_RENDER_STYLE,
    canvas_limit,
    check_canvas_size,
    render_skeleton,
)
from poseguide.pose.skeleton import KeypointError, as_people

log = logging.getLogger(__name__)

DEFAULT_SIZE = (512, 512)  # (width, height): SD1.5's and the thesis' generation size

# The skeleton-or-photo heuristic (guess_image_kind), on a copy at most ANALYSIS_SIDE px wide.
ANALYSIS_SIDE = 256
DARK_LEVEL = 24  # a background pixel's brightest channel is at most this (JPEG noise allowed)
SKELETON_MIN_DARK = 0.5  # at least this fraction of the pixels is background
SATURATED = 0.5  # (max - min) / max of a pixel at least this: an OpenPose colour (min is ~0)
SKELETON_MIN_SATURATED = 0.7  # at least this fraction of the non-background pixels is saturated

PoseKind = Literal["keypoints", "skeleton", "photo"]
POSE_KINDS: tuple[str, ...] = ("keypoints", "skeleton", "photo")
KEYPOINT_SUFFIXES = (".json",)


class NoPersonFoundError(UserError, ValueError):
    """The pose estimator found nobody in the photo that should give the pose."""


# ---------------------------------------------------------------------------------------------
# Poses
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PoseInput:
    """A pose in one of three explicit kinds.

    ``skeleton``: ``image`` is an OpenPose skeleton image, used as is. ``keypoints``: ``people``
    is (P, 17, 3) COCO-17 ``(x, y, v)`` in the pixels of ``canvas`` (W, H), or of the generation
    size when ``canvas`` is None. ``photo``: ``image`` is a photo whose pose is estimated.
    ``source`` names where it came from, for messages.
    """

    kind: PoseKind
    image: Image.Image | None = None
    people: np.ndarray | None = None
    canvas: tuple[int, int] | None = None
    source: str = "<pose>"

    @classmethod
    def skeleton(cls, image: Image.Image, source: str = "<skeleton image>") -> PoseInput:
        return cls("skeleton", image=image.convert("RGB"), canvas=image.size, source=source)

    @classmethod
    def photo(cls, image: Image.Image, source: str = "<photo>") -> PoseInput:
        return cls("photo", image=image.convert("RGB"), canvas=image.size, source=source)

    @classmethod
    def keypoints(
        cls, people: Any, canvas: tuple[int, int] | None = None, source: str = "<keypoints>"
    ) -> PoseInput:
        """From a (P, 17, 3) array, or a keypoint JSON mapping (see :mod:`poseguide.pose.io`)."""
        if isinstance(people, dict) or (
            isinstance(people, list) and people and isinstance(people[0], dict)
        ):
            parsed = parse_pose(people, source)
            return cls(
                "keypoints", people=parsed.people, canvas=canvas or parsed.size, source=source
            )
        try:
            array = as_people(people)
        except KeypointError as err:
            raise KeypointError(f"{source}: {err}") from None
        return cls("keypoints", people=array, canvas=canvas, source=source)


def guess_image_kind(image: Image.Image) -> Literal["skeleton", "photo"]:
    """``"skeleton"`` for an OpenPose skeleton image, else ``"photo"``.

    A skeleton image is mostly background (at least :data:`SKELETON_MIN_DARK` of the pixels have
    every channel <= :data:`DARK_LEVEL`) and what is drawn is saturated OpenPose colour (at least
    :data:`SKELETON_MIN_SATURATED` of the drawn pixels have ``(max - min) / max >=``
    :data:`SATURATED`). An all-black image counts as a skeleton (a pose with nobody in it).
    Photos that are mostly black with vivid colours (neon at night) are misread: pass the kind.
    """
    image = image.convert("RGB")
    if max(image.size) > ANALYSIS_SIDE:  # nearest keeps the colours unmixed
        scale = ANALYSIS_SIDE / max(image.size)
        small = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(small, Image.Resampling.NEAREST)
    pixels = np.asarray(image, dtype=np.float32).reshape(-1, 3)
    high, low = pixels.max(axis=1), pixels.min(axis=1)
    dark = high <= DARK_LEVEL
    if dark.mean() < SKELETON_MIN_DARK:
        return "photo"
    drawn = ~dark
    if not drawn.any():
        return "skeleton"
    saturation = (high[drawn] - low[drawn]) / high[drawn]
    return "skeleton" if (saturation >= SATURATED).mean() >= SKELETON_MIN_SATURATED else "photo"


def pose_from_path(path: str | Path, kind: str = "auto") -> PoseInput:
    """Read a pose file: ``.json`` -> keypoints; an image -> :func:`guess_image_kind` decides.

    ``kind`` ("keypoints", "skeleton" or "photo") overrides the guess.
    """
    path = Path(path)
    if kind not in ("auto", *POSE_KINDS):
        raise InputError(f"unknown pose kind {kind!r}; choose auto, {', '.join(POSE_KINDS)}")
    if not path.is_file():
        raise NotFoundError(f"pose file not found: {path}")
    if kind == "keypoints" or (kind == "auto" and path.suffix.lower() in KEYPOINT_SUFFIXES):
        pose = read_pose(path)
        return PoseInput("keypoints", people=pose.people, canvas=pose.size, source=str(path))
    image = load_photo(path)  # a clear ValueError for an unreadable image
    if kind == "auto":
        kind = guess_image_kind(image)
        log.info("%s: read as a %s (pass the pose kind to override)", path, kind)
    return PoseInput(kind, image=image, canvas=image.size, source=str(path))  # type: ignore[arg-type]


@dataclass(frozen=True)
class PoseCondition:
    """The ControlNet input for one pose.

    ``image``: RGB skeleton image at the generation size. ``people``: the (P, 17, 3) keypoints
    drawn on it, in its pixels (None for a skeleton image given as is). ``source_size``: (W, H)
    of the pose's original canvas (photo, skeleton image or keypoint file), the size evaluation
    maps generated images back to; None when keypoints came without one.
    """

    image: Image.Image
    people: np.ndarray | None
    source_size: tuple[int, int] | None


def _scaled(people: np.ndarray, canvas: tuple[int, int] | None, size: tuple[int, int]):
    """Keypoints moved from ``canvas`` to ``size`` pixels (a stretch, as the images are)."""
    people = people.copy()
    if canvas is not None and tuple(canvas) != tuple(size):
        people[..., 0] *= size[0] / canvas[0]
        people[..., 1] *= size[1] / canvas[1]
    return people


def pose_condition(
    pose: PoseInput | Image.Image | dict | np.ndarray | str | Path,
    size: tuple[int, int] = DEFAULT_SIZE,
    style: Any = DEFAULT_RENDER_STYLE,
    estimator: PoseEstimator | None = None,
    min_score: float = RenderConfig.min_score,
) -> PoseCondition:
    """Turn a pose into the skeleton image ControlNet sees, at ``size`` (W, H).

    ``pose``: a :class:`PoseInput`; a PIL image (taken as a skeleton image: wrap a photo in
    ``PoseInput.photo``); a keypoint mapping or (P, 17, 3) array; or a file path
    (:func:`pose_from_path`, kind guessed). Skeleton images are resized (bicubic); keypoints are
    scaled from their canvas and drawn in ``style``; photos go through ``estimator`` (required
    for a photo: build it from the run's config, :func:`poseguide.pose.api.estimator_from_config`),
    joints below ``min_score`` are dropped.
    """
    # Before anything is read or resized: a skeleton image is resized to it, keypoints drawn.
    size = check_canvas_size(size, canvas_limit(style), "generation size")
    if isinstance(pose, (str, Path)):
        pose = pose_from_path(pose)
    elif isinstance(pose, Image.Image):
        pose = PoseInput.skeleton(pose)
    elif not isinstance(pose, PoseInput):
        pose = PoseInput.keypoints(pose)
    if pose.kind == "skeleton":
        image = pose.image.convert("RGB")
        source_size = pose.canvas or image.size
        if image.size != size:
            image = image.resize(size, Image.Resampling.BICUBIC)
        return PoseCondition(image, None, source_size)
    people = _estimate(pose, estimator, min_score) if pose.kind == "photo" else pose.people
    people = _scaled(people, pose.canvas, size)
    labelled = people[people[..., 2] > 0]
    if ((labelled[:, :2] < 0) | (labelled[:, :2] > size)).any():
        log.warning("%s: keypoints fall outside the %dx%d canvas", pose.source, *size)
    image = Image.fromarray(render_skeleton(people, size, style, where=pose.source))
    return PoseCondition(image, people, pose.canvas)


def _estimate(pose: PoseInput, estimator: PoseEstimator | None, min_score: float) -> np.ndarray:
    if estimator is None:  # a programming error: the caller knows the run's estimator config
        raise TypeError(
            f"{pose.source}: a photo needs a pose estimator; pass estimator="
            "poseguide.pose.api.estimator_from_config(config.pose.estimator)"
        )
    found = estimator.estimate_people([pose.image])[0]
    people = detections_to_coco(found, min_score)
    if len(found) == 0 or not (people[..., 2] > 0).any():
        raise NoPersonFoundError(
            f"{pose.source}: no person found in the photo (detection threshold from the "
            f"estimator config, joint threshold {min_score}); use a photo with a clearly visible "
            "person, or give the pose as a keypoint JSON or a skeleton image"
        )
    return people
