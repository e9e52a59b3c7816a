"""Synthetic people: pose families, joint angles sampled within anatomical ranges.

A pose is a :class:`PoseAngles`: per-limb angles (:class:`Limb`), torso lean and bend, head
movement and the facing direction. :data:`POSE_FAMILIES` lists the kinds of pose (standing,
walking, running, arms raised, waving, sitting, ...) with a sampler each;
:func:`sample_pose` draws one and mirrors it left-right half the time.
:mod:`poseguide.synth.body` turns the angles into keypoints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class Limb:
    """Joint angles of one arm or leg, in degrees.

    ``abduct``: 0 hangs straight down, 90 points out to the side, 180 straight up. ``flex``:
    swing forward (positive) or back. ``bend``: extra abduction of the distal segment (forearm
    or shin) in the frontal plane. ``bend_flex``: extra forward swing of the distal segment (an
    elbow bends forward, so > 0; a knee bends backward, so < 0).
    """

    abduct: float = 8.0
    flex: float = 0.0
    bend: float = 0.0
    bend_flex: float = 0.0


@dataclass(frozen=True)
class PoseAngles:
    """The sampled pose of one person.

    ``family`` names the pose (a key of :data:`POSE_FAMILIES`); ``side`` is the person's side
    doing the one-sided action (waving, pointing, ...), None when symmetric. ``lean`` tilts the
    upper body to the person's left (degrees, frontal plane), ``bend`` forward; ``head_tilt``,
    ``head_turn`` and ``head_nod`` move the head relative to the torso; ``yaw`` turns the whole
    body (0 faces the camera, positive faces the image's right). ``seated`` people sit on a
    stool that the renderer draws.
    """

    family: str
    left_arm: Limb
    right_arm: Limb
    left_leg: Limb
    right_leg: Limb
    lean: float = 0.0
    bend: float = 0.0
    head_tilt: float = 0.0
    head_turn: float = 0.0
    head_nod: float = 0.0
    yaw: float = 0.0
    side: str | None = None
    seated: bool = False


def mirror_pose(pose: PoseAngles) -> PoseAngles:
    """The same pose with the person's left and right exchanged."""
    side = None if pose.side is None else ("right" if pose.side == "left" else "left")
    return replace(
        pose,
        left_arm=pose.right_arm,
        right_arm=pose.left_arm,
        left_leg=pose.right_leg,
        right_leg=pose.left_leg,
        lean=-pose.lean,
        head_tilt=-pose.head_tilt,
        head_turn=-pose.head_turn,
        yaw=-pose.yaw,
        side=side,
    )


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _arm_down(rng: np.random.Generator) -> Limb:
    return Limb(_u(rng, 4, 16), _u(rng, -10, 12), _u(rng, -8, 6), _u(rng, 0, 25))


def _leg_straight(rng: np.random.Generator) -> Limb:
    return Limb(_u(rng, 2, 8), _u(rng, -4, 4), _u(rng, -3, 2), -_u(rng, 0, 8))


def _standing(rng):
    return dict(
        left_arm=_arm_down(rng),
        right_arm=_arm_down(rng),
        left_leg=_leg_straight(rng),
        right_leg=_leg_straight(rng),
    )


def _walking(rng, run: bool = False):
    swing = _u(rng, 32, 48) if run else _u(rng, 14, 26)
    elbow = _u(rng, 70, 100) if run else _u(rng, 5, 25)
    front = Limb(_u(rng, 2, 6), swing, -2, -(_u(rng, 25, 60) if run else _u(rng, 0, 12)))
    back = Limb(_u(rng, 2, 6), -swing * 0.7, -2, -(_u(rng, 50, 90) if run else _u(rng, 10, 30)))
    arm_f = Limb(_u(rng, 8, 16), swing * 0.9, 0, elbow)
    arm_b = Limb(_u(rng, 8, 16), -swing * 0.8, 0, elbow * 0.8)
    yaw = _u(rng, 35, 70) * (1 if rng.random() < 0.5 else -1)
    bend = _u(rng, 6, 14) if run else _u(rng, 0, 4)
    return dict(left_arm=arm_b, right_arm=arm_f, left_leg=front, right_leg=back, yaw=yaw, bend=bend)


def _arms_raised(rng):
    return dict(
        left_arm=Limb(_u(rng, 145, 172), _u(rng, -5, 15), _u(rng, -15, 10), _u(rng, 0, 15)),
        right_arm=Limb(_u(rng, 145, 172), _u(rng, -5, 15), _u(rng, -15, 10), _u(rng, 0, 15)),
        left_leg=_leg_straight(rng),
        right_leg=_leg_straight(rng),
    )


def _arms_out(rng):
    return dict(
        left_arm=Limb(_u(rng, 78, 100), _u(rng, -5, 10), _u(rng, -10, 10), 0),
        right_arm=Limb(_u(rng, 78, 100), _u(rng, -5, 10), _u(rng, -10, 10), 0),
        left_leg=_leg_straight(rng),
        right_leg=_leg_straight(rng),
    )


def _waving(rng):
    wave = Limb(_u(rng, 75, 120), _u(rng, 0, 20), _u(rng, 45, 85), _u(rng, 0, 15))
    return dict(
        right_arm=wave,
        left_arm=_arm_down(rng),
        left_leg=_leg_straight(rng),
        right_leg=_leg_straight(rng),
        head_tilt=_u(rng, -8, 8),
        side="right",
    )


def _hands_on_hips(rng):
    def arm():
        # Elbows out, forearms back in: the wrists end at the sides of the waist.
        return Limb(_u(rng, 38, 50), _u(rng, -12, 5), -_u(rng, 82, 98), _u(rng, -10, 5))

    legs = Limb(_u(rng, 5, 12), 0, -3, -_u(rng, 0, 5))
    return dict(left_arm=arm(), right_arm=arm(), left_leg=legs, right_leg=legs)


def _sitting(rng):
    def leg():
        return Limb(_u(rng, 4, 14), _u(rng, 75, 92), _u(rng, -8, 0), -_u(rng, 75, 95))

    def arm():
        return Limb(_u(rng, 6, 14), _u(rng, 15, 35), 0, _u(rng, 35, 60))

    yaw = _u(rng, 25, 55) * (1 if rng.random() < 0.5 else -1)
    return dict(left_arm=arm(), right_arm=arm(), left_leg=leg(), right_leg=leg(), yaw=yaw,
                seated=True)  # fmt: skip


def _star_jump(rng):
    def arm():
        return Limb(_u(rng, 120, 150), _u(rng, -5, 10), _u(rng, -5, 15), 0)

    def leg():
        return Limb(_u(rng, 18, 28), _u(rng, -3, 5), -_u(rng, 5, 10), -_u(rng, 0, 10))

    return dict(left_arm=arm(), right_arm=arm(), left_leg=leg(), right_leg=leg())


def _one_leg(rng):
    arm = Limb(_u(rng, 40, 75), _u(rng, -5, 15), _u(rng, -10, 10), _u(rng, 0, 20))
    raised = Limb(_u(rng, 5, 15), _u(rng, 50, 85), 0, -_u(rng, 50, 100))
    yaw = _u(rng, 15, 40) * (1 if rng.random() < 0.5 else -1)
    return dict(left_arm=arm, right_arm=replace(arm, abduct=arm.abduct + _u(rng, -8, 8)),
                left_leg=_leg_straight(rng), right_leg=raised, yaw=yaw, side="right")  # fmt: skip


def _pointing(rng):
    point = Limb(_u(rng, 70, 95), _u(rng, 0, 35), _u(rng, -5, 5), _u(rng, 0, 8))
    return dict(
        right_arm=point,
        left_arm=_arm_down(rng),
        left_leg=_leg_straight(rng),
        right_leg=_leg_straight(rng),
        head_turn=-_u(rng, 10, 30),
        side="right",
    )


def _side_stretch(rng):
    up = Limb(_u(rng, 150, 175), _u(rng, -5, 10), _u(rng, 5, 25), 0)
    hip = Limb(_u(rng, 38, 50), _u(rng, -10, 5), -_u(rng, 95, 115), 0)
    return dict(right_arm=up, left_arm=hip, left_leg=_leg_straight(rng),
                right_leg=_leg_straight(rng), lean=_u(rng, 12, 22), side="right")  # fmt: skip


# name -> (sampler, relative frequency). Samplers return PoseAngles fields; the one-sided ones
# act with the right side and are mirrored half the time.
POSE_FAMILIES: dict[str, tuple[Callable[[np.random.Generator], dict], float]] = {
    "standing": (_standing, 1.2),
    "walking": (_walking, 1.2),
    "running": (lambda rng: _walking(rng, run=True), 0.8),
    "arms_raised": (_arms_raised, 1.0),
    "arms_out": (_arms_out, 0.8),
    "waving": (_waving, 1.0),
    "hands_on_hips": (_hands_on_hips, 0.8),
    "sitting": (_sitting, 0.7),
    "star_jump": (_star_jump, 0.7),
    "one_leg": (_one_leg, 0.6),
    "pointing": (_pointing, 0.8),
    "side_stretch": (_side_stretch, 0.6),
}


def sample_pose(rng: np.random.Generator, family: str | None = None) -> PoseAngles:
    """Draw a pose: a family (by :data:`POSE_FAMILIES` frequency unless given), its angles,
    a facing direction, small head and torso movements, and a random left-right mirror."""
    names = list(POSE_FAMILIES)
    if family is None:
        weights = np.array([POSE_FAMILIES[k][1] for k in names])
        family = names[int(rng.choice(len(names), p=weights / weights.sum()))]
    fields = {
        "lean": _u(rng, -4, 4),
        "head_tilt": _u(rng, -6, 6),
        "head_turn": _u(rng, -15, 15),
        "head_nod": _u(rng, -8, 8),
        "yaw": _u(rng, -30, 30),
    }
    fields.update(POSE_FAMILIES[family][0](rng))
    pose = PoseAngles(family=family, **fields)
    return mirror_pose(pose) if rng.random() < 0.5 else pose
