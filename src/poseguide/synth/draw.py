"""Synthetic people, part 2: outfits, backgrounds and drawing a person-like figure.

A placed :class:`~poseguide.synth.body.Person` is drawn as filled, anti-aliased shapes (not
as its skeleton): tapered capsules for the limbs, a convex hull for the torso, ellipses for the
head, ears and eyes, hair, hands and shoes, each with a thin darker outline so that limbs stay
apart where they overlap. Shapes are painted back to front by their depth, and the far side of
the body is shaded a little darker. Each person's silhouette is drawn into a mask as well; its
pixel count is the person's area for OKS.

Colours are RGB. Every named colour used in a caption comes from :data:`COLORS`, so a caption's
colour words can be checked against the pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from poseguide.synth.body import EAR_HIDDEN_DEPTH, EYE_HIDDEN_DEPTH, SIDES, Person

RGB = tuple[int, int, int]

COLORS: dict[str, RGB] = {
    "red": (200, 35, 40),
    "orange": (235, 125, 30),
    "yellow": (235, 205, 45),
    "green": (45, 145, 65),
    "teal": (20, 135, 140),
    "blue": (40, 80, 195),
    "navy": (28, 38, 92),
    "purple": (120, 55, 160),
    "pink": (235, 120, 170),
    "white": (240, 240, 236),
    "grey": (128, 128, 128),
    "black": (32, 32, 34),
    "brown": (115, 70, 40),
    "beige": (215, 195, 155),
}
TOP_COLORS = tuple(COLORS)
BOTTOM_COLORS = ("blue", "navy", "black", "grey", "brown", "beige", "green", "red", "white")
SHOE_COLORS = ("black", "brown", "white", "grey", "red", "blue")
SKIN_TONES: dict[str, RGB] = {
    "light": (241, 204, 176),
    "fair": (226, 182, 147),
    "medium": (198, 148, 108),
    "tan": (168, 118, 82),
    "brown": (124, 83, 57),
    "dark": (88, 58, 42),
}
HAIR_COLORS: dict[str, RGB] = {
    "black": (24, 20, 20),
    "dark brown": (58, 36, 24),
    "brown": (104, 64, 36),
    "blond": (214, 178, 100),
    "red": (158, 62, 30),
    "grey": (165, 165, 162),
}
TOPS = ("t-shirt", "shirt", "sweater", "jacket", "top")
BOTTOMS = ("trousers", "jeans", "shorts", "skirt", "dress")
LONG_SLEEVED = ("sweater", "jacket")

# Fractional bits for OpenCV's sub-pixel drawing (coordinates are multiplied by 2**SHIFT).
SHIFT = 4
OUTLINE_DARKEN = 0.55
OUTLINE_WIDTH = 0.003  # in body heights; thicker outlines lowered OKS at 512 px
# The finished picture is blurred with sigma = SOFTNESS * (shorter side / 256) pixels, then given
# a little grain. Crisp, flat cartoon edges at 512 px made yolo11n-pose miss most people (found
# 10-15 of 30); softened, it finds nearly all of them at every size.
SOFTNESS = 0.8
REFERENCE_SIDE = 256
GRAIN = 2.5
CAPSULE_ARC_POINTS = 10


@dataclass(frozen=True)
class Outfit:
    """What one person looks like; the names are the caption's words."""

    skin: str
    hair: str
    long_hair: bool
    top: str
    top_color: str
    long_sleeves: bool
    bottom: str
    bottom_color: str  # equals top_color for a dress
    shoes: str


def sample_outfit(rng: np.random.Generator) -> Outfit:
    """Draw skin tone, hair and clothes; top and bottom always differ in colour (but a dress)."""
    bottom = str(rng.choice(BOTTOMS, p=[0.3, 0.25, 0.2, 0.12, 0.13]))
    top = "dress" if bottom == "dress" else str(rng.choice(TOPS))
    top_color = str(rng.choice(TOP_COLORS))
    bottom_color = top_color
    while bottom != "dress" and bottom_color == top_color:
        bottom_color = str(rng.choice(BOTTOM_COLORS))
    if bottom == "jeans" and rng.random() < 0.7:
        bottom_color = "blue" if top_color != "blue" else "black"
    long_sleeves = top in LONG_SLEEVED or (top in ("shirt", "dress") and rng.random() < 0.4)
    return Outfit(
        skin=str(rng.choice(list(SKIN_TONES))),
        hair=str(rng.choice(list(HAIR_COLORS))),
        long_hair=bool(rng.random() < (0.6 if bottom in ("skirt", "dress") else 0.25)),
        top=top,
        top_color=top_color,
        long_sleeves=bool(long_sleeves),
        bottom=bottom,
        bottom_color=bottom_color,
        shoes=str(rng.choice(SHOE_COLORS)),
    )


def article(phrase: str) -> str:
    """``phrase`` with "a" or "an" in front (for caption words such as "orange shirt")."""
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


# ------------------------------------------------------------------------------- shapes


def capsule(p0: np.ndarray, p1: np.ndarray, r0: float, r1: float) -> np.ndarray:
    """Outline (N, 2) of a tapered capsule from ``p0`` (radius ``r0``) to ``p1`` (``r1``)."""
    axis = np.asarray(p1, float) - np.asarray(p0, float)
    length = float(np.hypot(*axis))
    u = axis / length if length > 1e-6 else np.array([0.0, 1.0])
    n = np.array([-u[1], u[0]])
    t = np.linspace(-np.pi / 2, np.pi / 2, CAPSULE_ARC_POINTS)[:, None]
    end1 = p1 + r1 * (np.cos(t) * u + np.sin(t) * n)
    end0 = p0 + r0 * (-np.cos(t) * u - np.sin(t) * n)
    return np.concatenate([end1, end0])


def ellipse(center: np.ndarray, rx: float, ry: float, up: np.ndarray, n: int = 28) -> np.ndarray:
    """Outline (N, 2) of an ellipse with half-axis ``ry`` along the unit vector ``up``."""
    up = np.asarray(up, float) / max(float(np.hypot(*up)), 1e-9)
    side = np.array([-up[1], up[0]])
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)[:, None]
    return np.asarray(center, float) + rx * np.cos(t) * side + ry * np.sin(t) * up


def disc_hull(centers: list[np.ndarray], radii: list[float]) -> np.ndarray:
    """Convex hull (N, 2) of a set of discs."""
    t = np.linspace(0.0, 2 * np.pi, 16, endpoint=False)
    ring = np.stack([np.cos(t), np.sin(t)], axis=1)
    pts = np.concatenate([c + r * ring for c, r in zip(centers, radii, strict=True)])
    return cv2.convexHull(pts.astype(np.float32))[:, 0, :].astype(np.float64)


@dataclass(frozen=True)
class Part:
    """One filled shape of a figure; parts are painted in increasing ``key`` (depth) order."""

    key: float
    polygon: np.ndarray
    color: RGB
    outline: bool = True
    body: bool = True  # False for props (the stool): not part of the person's silhouette


def shade(color: RGB, factor: float) -> RGB:
    return tuple(min(255, max(0, round(c * factor))) for c in color)  # type: ignore[return-value]


def _depth_shade(depth_units: float) -> float:
    """Far parts (negative depth, in body units) come out up to 18% darker."""
    return float(np.clip(1.0 + 1.5 * depth_units, 0.82, 1.0))


# ------------------------------------------------------------------------------- figure parts


def _mid_depth(person: Person, *names: str) -> float:
    return float(np.mean([person.depth[k] for k in names]))


def _segment(person: Person, a: str, b: str, ra: float, rb: float, color: RGB, bias: float):
    """A limb segment between two named points, widths in body units, shaded by depth."""
    s = person.scale
    z = _mid_depth(person, a, b)
    poly = capsule(person.points[a], person.points[b], ra * s / 2, rb * s / 2)
    return Part(z + bias * s, poly, shade(color, _depth_shade(z / s)))


def _leg_parts(person: Person, outfit: Outfit, side: str) -> list[Part]:
    p, pts = person.prop, person.points
    skin, cloth = SKIN_TONES[outfit.skin], COLORS[outfit.bottom_color]
    covered = outfit.bottom in ("trousers", "jeans")
    hip, knee, ankle = f"{side}_hip", f"{side}_knee", f"{side}_ankle"
    parts = [
        _segment(person, hip, knee, p.thigh_width, p.shin_width * 1.1, cloth if covered else skin,
                 -0.06),
        _segment(person, knee, ankle, p.shin_width, p.shin_width * 0.72,
                 cloth if covered else skin, -0.059),
        _segment(person, f"{side}_heel", f"{side}_toe", p.shin_width * 0.75, p.shin_width * 0.8,
                 COLORS[outfit.shoes], -0.058),
    ]  # fmt: skip
    if outfit.bottom == "shorts":
        end = pts[hip] + 0.55 * (pts[knee] - pts[hip])
        z = _mid_depth(person, hip, knee)
        poly = capsule(pts[hip], end, p.thigh_width * 0.56 * person.scale,
                       p.thigh_width * 0.54 * person.scale)  # fmt: skip
        parts.append(
            Part(z - 0.0595 * person.scale, poly, shade(cloth, _depth_shade(z / person.scale)))
        )
    return parts


def _arm_parts(person: Person, outfit: Outfit, side: str) -> list[Part]:
    p = person.prop
    skin, cloth = SKIN_TONES[outfit.skin], COLORS[outfit.top_color]
    shoulder, elbow, wrist = f"{side}_shoulder", f"{side}_elbow", f"{side}_wrist"
    return [
        _segment(person, shoulder, elbow, p.arm_width, p.forearm_width * 1.05, cloth, 0.015),
        _segment(person, elbow, wrist, p.forearm_width, p.forearm_width * 0.8,
                 cloth if outfit.long_sleeves else skin, 0.016),
        _segment(person, wrist, f"{side}_hand", p.forearm_width * 0.85, p.forearm_width * 1.0,
                 skin, 0.017),
    ]  # fmt: skip


def _lerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    return a + t * (b - a)


def _torso_parts(person: Person, outfit: Outfit) -> list[Part]:
    """Shirt (or dress bodice), the trousers' seat or a skirt, and the neck."""
    p, pts, s = person.prop, person.points, person.scale
    shoulders = [pts["left_shoulder"], pts["right_shoulder"]]
    hips = [pts["left_hip"], pts["right_hip"]]
    depth = [pts[k] for k in ("chest_front", "chest_back", "belly_front", "belly_back")]
    waist = [_lerp(sh, hp, 0.9) for sh, hp in zip(shoulders, hips, strict=True)]
    r_arm, r_leg = p.arm_width * s * 0.52, p.thigh_width * s * 0.5
    shirt = disc_hull(shoulders + waist + depth, [r_arm] * 2 + [r_leg * 0.95] * 2 + [s * 0.01] * 4)
    seat_top = [_lerp(sh, hp, 0.72) for sh, hp in zip(shoulders, hips, strict=True)]
    seat = disc_hull(hips + seat_top + depth[2:], [r_leg] * 2 + [r_leg * 0.9] * 2 + [s * 0.01] * 2)
    bottom = COLORS[outfit.bottom_color]
    parts = [Part(0.0, shirt, COLORS[outfit.top_color]), Part(-0.02 * s, seat, bottom)]
    if outfit.bottom in ("skirt", "dress"):
        hem = _skirt(person, seat_top, r_leg)
        z = _mid_depth(person, "left_knee", "right_knee", "pelvis")
        parts.append(Part(max(z, 0.0) - 0.01 * s, hem, bottom))
    neck = capsule(pts["neck"], pts["chin"], p.neck_width * s / 2, p.neck_width * s / 2)
    parts.append(Part(0.2 * s, neck, SKIN_TONES[outfit.skin]))
    return parts


def _skirt(person: Person, waist: list[np.ndarray], r_leg: float) -> np.ndarray:
    """A skirt flaring from the waist to just above the knees (a hull, so legs apart widen it)."""
    pts = person.points
    middle = (pts["left_hip"] + pts["right_hip"]) / 2
    centers, radii = list(waist), [r_leg] * 2
    for side in SIDES:
        hem = _lerp(pts[f"{side}_hip"], pts[f"{side}_knee"], 0.8)
        out = pts[f"{side}_hip"] - middle
        out = out / max(float(np.hypot(*out)), 1e-6)
        centers.append(hem + out * r_leg * 0.7)
        radii.append(r_leg * 0.45)
    return disc_hull(centers, radii)


def _face_visible(person: Person, name: str) -> bool:
    radius = person.prop.head_width / 2 * person.scale
    rel = (person.depth[name] - person.depth["head_center"]) / radius
    return bool(rel >= (EAR_HIDDEN_DEPTH if name.endswith("ear") else EYE_HIDDEN_DEPTH))


def _hair_cap(person: Person, rx: float, ry: float, up: np.ndarray) -> np.ndarray:
    """The top of the head ellipse, tipped towards the back of the head when seen from aside."""
    pts = person.points
    center = pts["head_center"]
    face = (pts["nose"] - center) / max(rx, 1e-6)
    face_side = float(np.dot(face, np.array([-up[1], up[0]])))
    head = ellipse(center, rx * 1.04, ry * 1.04, up, n=40)
    normal = up - 0.9 * face_side * np.array([-up[1], up[0]])
    normal /= np.hypot(*normal)
    rel = (head - center) @ normal
    return head[rel > 0.25 * ry]


def _head_parts(person: Person, outfit: Outfit) -> list[Part]:
    pts, s, p = person.points, person.scale, person.prop
    skin, hair = SKIN_TONES[outfit.skin], HAIR_COLORS[outfit.hair]
    center, rx, ry = pts["head_center"], p.head_width * s / 2, p.head / 2 * s
    up = pts["crown"] - center
    up = up / max(float(np.hypot(*up)), 1e-9)
    key = 0.3 * s
    parts = []
    facing = _face_visible(person, "nose")
    if outfit.long_hair:
        bottom = center - up * ry * 1.5
        z = person.depth["hair"] - person.depth["head_center"]
        hkey = 0.5 * s if (z > 0 and not facing) else -0.01 * s
        parts.append(Part(hkey, capsule(pts["hair"], bottom, rx * 1.15, rx * 1.05), hair))
    for ear in ("left_ear", "right_ear"):
        parts.append(Part(key - 1, ellipse(pts[ear], rx * 0.2, ry * 0.24, up, 14), skin))
    parts.append(Part(key, ellipse(center, rx, ry, up), skin))
    if facing:
        parts.extend(_face_parts(person, key, rx, up, skin))
        parts.append(Part(key + 2, _hair_cap(person, rx, ry, up), hair))
    else:
        parts.append(Part(key + 2, ellipse(center, rx * 1.03, ry * 1.02, up), hair))
    return parts


def _face_parts(person: Person, key: float, rx: float, up: np.ndarray, skin: RGB) -> list[Part]:
    pts = person.points
    parts = []
    for eye in ("left_eye", "right_eye"):
        if _face_visible(person, eye):
            parts.append(Part(key + 1, ellipse(pts[eye], rx * 0.2, rx * 0.13, up, 12),
                              (245, 245, 245), outline=False))  # fmt: skip
            parts.append(Part(key + 1.1, ellipse(pts[eye], rx * 0.11, rx * 0.11, up, 10),
                              (30, 25, 25), outline=False))  # fmt: skip
    parts.append(Part(key + 1, ellipse(pts["nose"], rx * 0.1, rx * 0.13, up, 10),
                      shade(skin, 0.75), outline=False))  # fmt: skip
    side = np.array([-up[1], up[0]])
    mouth = capsule(pts["mouth"] - side * rx * 0.22, pts["mouth"] + side * rx * 0.22,
                    rx * 0.05, rx * 0.05)  # fmt: skip
    parts.append(Part(key + 1, mouth, (150, 50, 50), outline=False))
    return parts


def _stool(person: Person, ground_y: float) -> Part:
    pts, s = person.points, person.scale
    x, top = pts["pelvis"][0], pts["pelvis"][1] + person.prop.thigh_width * s * 0.45
    half = 0.14 * s
    poly = np.array([[x - half, top], [x + half, top], [x + half, ground_y], [x - half, ground_y]])
    return Part(-1e9, poly, (110, 80, 55), body=False)


def figure_parts(person: Person, outfit: Outfit) -> list[Part]:
    """All shapes of one person, sorted back to front."""
    parts: list[Part] = []
    for side in SIDES:
        parts += _leg_parts(person, outfit, side) + _arm_parts(person, outfit, side)
    parts += _torso_parts(person, outfit) + _head_parts(person, outfit)
    if person.pose.seated:
        feet = [person.points[f"{x}_{e}"][1] for x in SIDES for e in ("heel", "toe")]
        parts.append(_stool(person, max(feet)))
    return sorted(parts, key=lambda part: part.key)


# ------------------------------------------------------------------------------- painting


def _fixed(polygon: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(polygon) * (1 << SHIFT)).astype(np.int32)


def draw_people(
    background: np.ndarray, people: list[Person], outfits: list[Outfit]
) -> tuple[np.ndarray, np.ndarray]:
    """Paint people (back to front, in list order) onto a copy of ``background``.

    Args:
        background: (H, W, 3) uint8 RGB.
        people, outfits: one outfit per person.

    Returns:
        ``(image, masks)``: (H, W, 3) uint8 RGB and (P, H, W) bool silhouettes, each person's
        whole silhouette (also where a nearer person covers it).
    """
    image = background.copy()
    height, width = image.shape[:2]
    masks = np.zeros((len(people), height, width), dtype=np.uint8)
    for i, (person, outfit) in enumerate(zip(people, outfits, strict=True)):
        thickness = max(1, round(person.scale * OUTLINE_WIDTH))
        for part in figure_parts(person, outfit):
            pts = _fixed(part.polygon)
            cv2.fillPoly(image, [pts], part.color, cv2.LINE_AA, SHIFT)
            if part.outline:
                edge = shade(part.color, OUTLINE_DARKEN)
                cv2.polylines(image, [pts], True, edge, thickness, cv2.LINE_AA, SHIFT)
            if part.body:
                cv2.fillPoly(masks[i], [pts], 1, cv2.LINE_8, SHIFT)
    return image, masks.astype(bool)


def finish(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Soften a drawn (H, W, 3) uint8 picture in proportion to its size and add grain."""
    sigma = SOFTNESS * min(image.shape[:2]) / REFERENCE_SIDE
    soft = cv2.GaussianBlur(image.astype(np.float32), (0, 0), sigma)
    noisy = soft + rng.normal(0.0, GRAIN, (*image.shape[:2], 1)).astype(np.float32)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)
