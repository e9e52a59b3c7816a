"""Synthetic people, part 1: a kinematic body model that poses COCO-17 skeletons.

A person is a tree of rigid segments (torso, neck and head, upper and lower arms and legs, hands
and feet) whose lengths vary per person (:class:`Proportions`, in units of the standing body
height) and whose joint angles are drawn from a pose family within anatomical ranges
(:mod:`poseguide.synth.poses`: standing, walking, running, arms raised, waving, sitting,
...). The body is posed in 3D, turned about the vertical axis (the facing direction) and projected
orthographically, so a person seen at an angle foreshortens and self-occludes like a real one.

Body frame: ``x`` points to the person's **left**, ``y`` up, ``z`` forward (out of the chest); the
origin is the middle of the hip joints. With ``yaw = 0`` the person faces the camera, so their
left side is on the image's right (as in COCO). Positive yaw turns them towards the image's right.
Image coordinates follow :mod:`poseguide.pose.skeleton`: x before y, continuous pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from poseguide.pose.skeleton import COCO17_NAMES, NUM_COCO17
from poseguide.synth.poses import Limb, PoseAngles

SIDES = ("left", "right")
# Lateral sign of each side in the body frame (x points to the person's left).
SIDE_SIGN = {"left": 1.0, "right": -1.0}
FACE_JOINTS = ("nose", "left_eye", "right_eye", "left_ear", "right_ear")
# A face point is hidden when it turns this far behind the head's centre (in head radii):
# eyes and the nose sit on the front of the head, ears on its sides.
EYE_HIDDEN_DEPTH = 0.2
EAR_HIDDEN_DEPTH = -0.35


@dataclass(frozen=True)
class Proportions:
    """Segment lengths and widths of one person, in units of their standing height.

    Widths are full diameters. ``torso`` runs from the hip line to the shoulder line, ``neck``
    from the shoulder line to the chin; ``shoulder_width`` and ``hip_width`` are the distances
    between the joints (not the outer body outline).
    """

    head: float
    head_width: float
    neck: float
    torso: float
    shoulder_width: float
    hip_width: float
    upper_arm: float
    forearm: float
    hand: float
    thigh: float
    shin: float
    ankle: float
    foot: float
    arm_width: float
    forearm_width: float
    thigh_width: float
    shin_width: float
    neck_width: float
    torso_depth: float
    build: str  # "slim", "average" or "broad": scales the widths; used in captions


BUILDS = {"slim": 0.85, "average": 1.0, "broad": 1.18}


def sample_proportions(rng: np.random.Generator) -> Proportions:
    """Draw one person's proportions around adult averages (head ~1/7.5 of the height)."""
    build = str(rng.choice(list(BUILDS), p=[0.3, 0.45, 0.25]))
    w = BUILDS[build] * rng.uniform(0.95, 1.05)
    head = rng.uniform(0.125, 0.145)
    leg = rng.uniform(0.48, 0.52)  # hip joint height above the sole
    ankle = 0.04
    knee_split = rng.uniform(0.49, 0.53)
    return Proportions(
        head=head,
        head_width=head * rng.uniform(0.74, 0.82),
        neck=rng.uniform(0.035, 0.05),
        torso=1.0 - leg - head - 0.04,
        shoulder_width=rng.uniform(0.2, 0.24) * (0.5 + 0.5 * w),
        hip_width=rng.uniform(0.11, 0.135) * (0.6 + 0.4 * w),
        upper_arm=rng.uniform(0.165, 0.185),
        forearm=rng.uniform(0.14, 0.155),
        hand=rng.uniform(0.06, 0.075),
        thigh=(leg - ankle) * knee_split,
        shin=(leg - ankle) * (1 - knee_split),
        ankle=ankle,
        foot=rng.uniform(0.11, 0.125),  # heel to toe; the rounded shoe adds ~0.05
        arm_width=0.06 * w,
        forearm_width=0.048 * w,
        thigh_width=0.105 * w,
        shin_width=0.07 * w,
        neck_width=0.055 * w,
        torso_depth=0.13 * w,
        build=build,
    )


# ------------------------------------------------------------------------------- kinematics


def _direction(abduct: float, flex: float, sign: float) -> np.ndarray:
    """Unit vector of a limb segment in the body frame (angles in degrees)."""
    a, f = math.radians(abduct), math.radians(flex)
    return np.array([sign * math.sin(a) * math.cos(f), -math.cos(a) * math.cos(f), math.sin(f)])


def _rot_x(deg: float) -> np.ndarray:  # positive: +y towards +z (bends forward)
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _rot_y(deg: float) -> np.ndarray:  # positive: +z towards +x (turns to the image's right)
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rot_z(deg: float) -> np.ndarray:  # positive: +y towards +x (leans to the person's left)
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]])


def _leg_points(prop: Proportions, leg: Limb, side: str) -> dict[str, np.ndarray]:
    s = SIDE_SIGN[side]
    hip = np.array([s * prop.hip_width / 2, 0.0, 0.0])
    knee = hip + prop.thigh * _direction(leg.abduct, leg.flex, s)
    shin_dir = _direction(leg.abduct * 0.5 + leg.bend, leg.flex + leg.bend_flex, s)
    ankle = knee + prop.shin * shin_dir
    foot_dir = np.array([0.12 * s, shin_dir[2], -shin_dir[1]])  # shin turned 90 deg forward
    foot_dir /= np.linalg.norm(foot_dir)
    sole = ankle + shin_dir * prop.ankle
    return {
        f"{side}_hip": hip,
        f"{side}_knee": knee,
        f"{side}_ankle": ankle,
        f"{side}_heel": sole - 0.22 * prop.foot * foot_dir,
        f"{side}_toe": sole + 0.78 * prop.foot * foot_dir,
    }


def _arm_points(prop: Proportions, arm: Limb, side: str, top: float) -> dict[str, np.ndarray]:
    s = SIDE_SIGN[side]
    shoulder = np.array([s * prop.shoulder_width / 2, top, 0.0])
    elbow = shoulder + prop.upper_arm * _direction(arm.abduct, arm.flex, s)
    fore = _direction(arm.abduct + arm.bend, arm.flex + arm.bend_flex, s)
    wrist = elbow + prop.forearm * fore
    return {
        f"{side}_shoulder": shoulder,
        f"{side}_elbow": elbow,
        f"{side}_wrist": wrist,
        f"{side}_hand": wrist + prop.hand * fore,
    }


def _head_points(prop: Proportions, pose: PoseAngles, top: float) -> dict[str, np.ndarray]:
    """Head centre, crown, chin and face points; the head turns, tilts and nods on the neck."""
    rx, ry, rz = prop.head_width / 2, prop.head / 2, prop.head_width / 2 * 1.05
    turn = _rot_y(pose.head_turn) @ _rot_z(pose.head_tilt) @ _rot_x(-pose.head_nod)
    local = {
        "head_center": (0.0, 0.0, 0.0),
        "crown": (0.0, ry, 0.0),
        "chin": (0.0, -ry, 0.45 * rz),
        "nose": (0.0, -0.12 * ry, 1.05 * rz),
        "left_eye": (0.36 * rx, 0.1 * ry, 0.82 * rz),
        "right_eye": (-0.36 * rx, 0.1 * ry, 0.82 * rz),
        "left_ear": (1.0 * rx, 0.02 * ry, -0.1 * rz),
        "right_ear": (-1.0 * rx, 0.02 * ry, -0.1 * rz),
        "mouth": (0.0, -0.5 * ry, 0.9 * rz),
        "hair": (0.0, 0.12 * ry, -0.3 * rz),
    }
    center = np.array([0.0, top + prop.neck + ry * 0.92, 0.02])
    return {k: center + turn @ np.array(v) for k, v in local.items()}


def pose_points(prop: Proportions, pose: PoseAngles) -> dict[str, np.ndarray]:
    """All named 3D body points (COCO-17 joints and the extra outline points the renderer uses),
    in body-height units, after the lean, bend and yaw; the camera looks along -z."""
    top = prop.torso
    points: dict[str, np.ndarray] = {"pelvis": np.zeros(3)}
    for side in SIDES:
        points.update(_leg_points(prop, getattr(pose, f"{side}_leg"), side))
    upper: dict[str, np.ndarray] = {"neck": np.array([0.0, top, 0.0])}
    for side in SIDES:
        upper.update(_arm_points(prop, getattr(pose, f"{side}_arm"), side, top))
    upper.update(_head_points(prop, pose, top))
    # The torso's front and back at chest and belly give it depth when seen from the side.
    half = prop.torso_depth / 2
    for name, y in (("chest", top - 0.05), ("belly", 0.07)):
        upper[f"{name}_front"] = np.array([0.0, y, half])
        upper[f"{name}_back"] = np.array([0.0, y, -half])
    upper_turn = _rot_z(pose.lean) @ _rot_x(pose.bend)
    points.update({k: upper_turn @ v for k, v in upper.items()})
    yaw = _rot_y(pose.yaw)
    return {k: yaw @ v for k, v in points.items()}


# ------------------------------------------------------------------------------- projection


@dataclass(frozen=True)
class Person:
    """One person placed in an image.

    ``points`` maps each body point name to its (x, y) image position in pixels and ``depth`` to
    its distance towards the camera in pixels (larger is nearer). ``scale`` is pixels per body
    height. ``keypoints`` is (17, 3) COCO ``(x, y, v)`` with v = 2 for a joint inside the image
    and 0 for one outside it or for a face point turned away from the camera.
    """

    prop: Proportions
    pose: PoseAngles
    points: dict[str, np.ndarray]
    depth: dict[str, float]
    scale: float
    keypoints: np.ndarray


def project(points3d: dict[str, np.ndarray], scale: float, offset: np.ndarray) -> tuple:
    """Orthographic projection: image x = x * scale + offset_x, image y = -y * scale + offset_y.

    Returns ``(points2d, depth)`` dicts; depth = z * scale.
    """
    points = {k: np.array([v[0] * scale + offset[0], -v[1] * scale + offset[1]]) for k, v in
              points3d.items()}  # fmt: skip
    depth = {k: float(v[2] * scale) for k, v in points3d.items()}
    return points, depth


def _face_hidden(points3d: dict[str, np.ndarray], name: str, prop: Proportions) -> bool:
    """True when a face point has turned behind the head, as seen from the camera."""
    radius = prop.head_width / 2
    rel = (points3d[name][2] - points3d["head_center"][2]) / radius
    limit = EAR_HIDDEN_DEPTH if name.endswith("ear") else EYE_HIDDEN_DEPTH
    return bool(rel < limit)


def coco_keypoints(
    points3d: dict[str, np.ndarray],
    points2d: dict[str, np.ndarray],
    prop: Proportions,
    size: tuple[int, int],
) -> np.ndarray:
    """(17, 3) COCO keypoints; v = 2 inside the ``(width, height)`` image, else 0."""
    width, height = size
    out = np.zeros((NUM_COCO17, 3))
    for j, name in enumerate(COCO17_NAMES):
        x, y = points2d[name]
        inside = 0.0 <= x < width and 0.0 <= y < height
        hidden = name in FACE_JOINTS and _face_hidden(points3d, name, prop)
        out[j] = (x, y, 2.0 if inside and not hidden else 0.0)
    return out


def extent(points3d: dict[str, np.ndarray], prop: Proportions) -> np.ndarray:
    """``(x0, y0, x1, y1)`` of the body outline in body units, image orientation (y down)."""
    pts = np.array([[v[0], -v[1]] for v in points3d.values()])
    pad = max(prop.thigh_width, prop.head_width) / 2
    lo, hi = pts.min(axis=0) - pad, pts.max(axis=0) + pad
    lo[1] = min(lo[1], -points3d["crown"][1] - 0.01)
    return np.array([lo[0], lo[1], hi[0], hi[1]])


def place_person(
    prop: Proportions,
    pose: PoseAngles,
    points3d: dict[str, np.ndarray],
    scale: float,
    offset: np.ndarray,
    size: tuple[int, int],
) -> Person:
    """Project a posed body with ``scale`` (pixels per body unit) and pixel ``offset``."""
    points, depth = project(points3d, scale, offset)
    keypoints = coco_keypoints(points3d, points, prop, size)
    return Person(prop, pose, points, depth, scale, keypoints)
