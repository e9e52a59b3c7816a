"""Keypoint formats as named constants, conversions and validation.

Conventions used everywhere in poseguide:

* Keypoints are ``(x, y, v)`` with **x before y**, in continuous pixel coordinates: the image's
  top-left corner is ``(0, 0)`` and pixel ``(i, j)`` (column ``i``, row ``j``) covers
  ``[i, i+1) x [j, j+1)``.
* A set of people is a float array of shape ``(P, 17, 3)`` in COCO-17 order. For ground truth the
  third value is COCO's visibility (0 unlabelled, 1 labelled but hidden, 2 visible); for estimator
  output it is a confidence in ``[0, 1]``.
* OpenPose-18 arrays have shape ``(P, 18, 3)``; a joint is present when its third value is > 0.
"""

from __future__ import annotations

import numpy as np

from poseguide.errors import UserError

COCO17_NAMES: tuple[str, ...] = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)
NUM_COCO17 = len(COCO17_NAMES)

# Horizontal flip swaps left and right: joint i of the flipped person is joint FLIP[i] of the
# original one.
COCO17_FLIP_MAP: tuple[int, ...] = (0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15)

# COCO's skeleton (0-based joint pairs), used for drawing synthetic people and previews.
COCO17_LIMBS: tuple[tuple[int, int], ...] = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7),
    (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
)  # fmt: skip

# Per-joint OKS falloff constants (pycocotools' `kpt_oks_sigmas`), COCO-17 order.
COCO17_OKS_SIGMAS: np.ndarray = (
    np.array(
        [.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89]
    )
    / 10.0
)  # fmt: skip

OPENPOSE18_NAMES: tuple[str, ...] = (
    "nose",
    "neck",
    "right_shoulder",
    "right_elbow",
    "right_wrist",
    "left_shoulder",
    "left_elbow",
    "left_wrist",
    "right_hip",
    "right_knee",
    "right_ankle",
    "left_hip",
    "left_knee",
    "left_ankle",
    "right_eye",
    "left_eye",
    "right_ear",
    "left_ear",
)
NUM_OPENPOSE18 = len(OPENPOSE18_NAMES)
OPENPOSE18_NECK = 1

# OpenPose-18 joint i comes from COCO-17 joint OPENPOSE18_FROM_COCO17[i]; the neck (None) is the
# midpoint of the two shoulders and exists only when both shoulders do.
OPENPOSE18_FROM_COCO17: tuple[int | None, ...] = (
    0, None, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3,
)  # fmt: skip
COCO17_LEFT_SHOULDER = 5
COCO17_RIGHT_SHOULDER = 6

# OpenPose-18 limbs, 0-based joint pairs. ControlNet's annotator lists 19 pairs but draws only
# the first 17; the last two (shoulder-ear) are kept here for completeness.
OPENPOSE18_LIMBS: tuple[tuple[int, int], ...] = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11),
    (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17), (2, 16), (5, 17),
)  # fmt: skip
OPENPOSE18_DRAWN_LIMBS = 17

# One RGB colour per joint, and per limb (limb i uses colour i).
OPENPOSE18_COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)  # fmt: skip

VISIBILITY_VALUES = (0, 1, 2)


class KeypointError(UserError, ValueError):
    """A keypoint array or file is malformed; the message names the person and joint."""


def as_people(keypoints: np.ndarray | list, num_joints: int = NUM_COCO17) -> np.ndarray:
    """Return keypoints as a float64 array of shape (P, num_joints, 3).

    Accepts (P, J, 3), a single person (J, 3), or flat COCO lists (P, 3J) / (3J,).
    """
    try:
        arr = np.asarray(keypoints, dtype=np.float64)
    except (TypeError, ValueError):
        raise KeypointError(
            f"keypoints must be numbers shaped (P, {num_joints}, 3); got a "
            f"{type(keypoints).__name__} that is not a numeric array (ragged lists or strings?)"
        ) from None
    if arr.ndim == 1 and arr.size == 0:
        return np.zeros((0, num_joints, 3))
    if arr.ndim == 1 and arr.shape[0] == 3 * num_joints:
        arr = arr.reshape(1, num_joints, 3)
    elif arr.ndim == 2 and arr.shape == (num_joints, 3):
        arr = arr[None]
    elif arr.ndim == 2 and arr.shape[1] == 3 * num_joints:
        arr = arr.reshape(-1, num_joints, 3)
    if arr.ndim != 3 or arr.shape[1:] != (num_joints, 3):
        raise KeypointError(
            f"keypoints have shape {tuple(np.shape(keypoints))}; expected (P, {num_joints}, 3) "
            f"(x, y, v per joint) or flat lists of {3 * num_joints} numbers per person"
        )
    return arr


def validate_keypoints(
    keypoints: np.ndarray | list,
    kind: str = "visibility",
    num_joints: int = NUM_COCO17,
    where: str = "",
) -> np.ndarray:
    """Check a keypoint array and return it as (P, J, 3) float64.

    ``kind="visibility"``: the third value must be 0, 1 or 2 (ground truth, COCO layout).
    ``kind="score"``: the third value must be a confidence in [0, 1] (estimator output).
    Coordinates must be finite. ``where`` prefixes the message (a file name or row id).
    """
    if kind not in ("visibility", "score"):
        raise ValueError(f"kind must be 'visibility' or 'score', got {kind!r}")
    prefix = f"{where}: " if where else ""
    try:
        arr = as_people(keypoints, num_joints)
    except (TypeError, ValueError) as err:
        raise KeypointError(f"{prefix}{err}") from None
    names = COCO17_NAMES if num_joints == NUM_COCO17 else OPENPOSE18_NAMES
    bad = ~np.isfinite(arr)
    if bad.any():
        p, j, c = np.argwhere(bad)[0]
        raise KeypointError(
            f"{prefix}person {p}, joint {j} ({names[j]}): {'xyv'[c]} is {arr[p, j, c]} "
            "(coordinates and visibility must be finite numbers)"
        )
    third = arr[..., 2]
    if kind == "visibility":
        bad = ~np.isin(third, VISIBILITY_VALUES)
        expected = "0 (unlabelled), 1 (hidden) or 2 (visible)"
    else:
        bad = (third < 0) | (third > 1)
        expected = "a confidence in [0, 1]"
    if bad.any():
        p, j = np.argwhere(bad)[0]
        raise KeypointError(
            f"{prefix}person {p}, joint {j} ({names[j]}): third value is {third[p, j]:g}, "
            f"expected {expected}"
        )
    return arr


def coco17_to_openpose18(people: np.ndarray, min_score: float = 0.0) -> np.ndarray:
    """Convert (P, 17, 3) COCO-17 keypoints to (P, 18, 3) OpenPose-18.

    A COCO joint is present when its third value is > ``min_score``. The neck is the midpoint of
    the shoulders and is present only when both shoulders are; its third value is the smaller of
    the two. Absent joints get (0, 0, 0).
    """
    people = as_people(people)
    out = np.zeros((people.shape[0], NUM_OPENPOSE18, 3))
    present = people[..., 2] > min_score
    for op_index, coco_index in enumerate(OPENPOSE18_FROM_COCO17):
        if coco_index is None:
            continue
        keep = present[:, coco_index]
        out[keep, op_index] = people[keep, coco_index]
    ls, rs = COCO17_LEFT_SHOULDER, COCO17_RIGHT_SHOULDER
    both = present[:, ls] & present[:, rs]
    out[both, OPENPOSE18_NECK, :2] = (people[both, ls, :2] + people[both, rs, :2]) / 2.0
    out[both, OPENPOSE18_NECK, 2] = np.minimum(people[both, ls, 2], people[both, rs, 2])
    return out


def flip_keypoints(people: np.ndarray, width: float) -> np.ndarray:
    """Mirror (P, 17, 3) keypoints for an image of ``width`` flipped left-right.

    x becomes ``width - x`` (continuous coordinates) and left/right joints swap places, so the
    result describes the flipped image in COCO-17 order. Unlabelled joints stay unlabelled.
    """
    people = as_people(people).copy()
    flipped = people[:, list(COCO17_FLIP_MAP)]
    labelled = flipped[..., 2] > 0
    flipped[..., 0] = np.where(labelled, width - flipped[..., 0], flipped[..., 0])
    return flipped
