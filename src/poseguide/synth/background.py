"""Synthetic people, part 3: backgrounds (sky and ground, rooms, plain and textured walls).

Each background comes with a caption phrase that fits after a description of the people
("..., on a sandy beach"). Scenes with a ground keep their horizon above the people's feet.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from poseguide.synth.draw import COLORS, article

WALL_COLORS: dict[str, tuple[int, int, int]] = {
    "white": (236, 234, 228),
    "beige": (222, 206, 175),
    "light grey": (200, 200, 198),
    "pale blue": (190, 210, 228),
    "pale green": (196, 220, 190),
    "pale yellow": (240, 228, 170),
}
FLOORS: dict[str, tuple[int, int, int]] = {
    "wooden": (150, 105, 65),
    "grey": (120, 120, 124),
    "tiled": (190, 185, 175),
}
PLAIN_COLORS = ("white", "grey", "beige", "blue", "green", "yellow", "pink", "teal", "orange")

PHRASES: dict[str, tuple[str, ...]] = {
    "grass": ("on the grass under a blue sky", "in a green field under a blue sky",
              "outdoors on a lawn", "in a park on a sunny day"),
    "beach": ("on a sandy beach", "on the beach by the sea", "at the seaside"),
    "sunset": ("outdoors at sunset", "under an orange sunset sky"),
    "snow": ("in the snow", "on a snowy field under a pale sky"),
    "street": ("on a city street", "in front of buildings in a town"),
    "room": ("in a room with {wall} walls and a {floor} floor", "indoors in front of a {wall} wall",
             "in a room with {wall} walls"),
    "plain": ("against a plain {color} background", "in front of a plain {color} backdrop",
              "on {a_color} background"),
    "texture": ("against a mottled {color} background", "in front of a textured {color} wall"),
}  # fmt: skip
SCENE_WEIGHTS = {"grass": 1.2, "beach": 0.8, "sunset": 0.6, "snow": 0.5, "street": 0.7,
                 "room": 1.2, "plain": 1.0, "texture": 0.8}  # fmt: skip


@dataclass(frozen=True)
class Background:
    """A background image (H, W, 3) uint8 RGB, its scene name and caption phrase."""

    scene: str
    phrase: str
    image: np.ndarray


def vertical_gradient(height: int, width: int, top, bottom) -> np.ndarray:
    """(height, width, 3) float image going from colour ``top`` to ``bottom``."""
    t = np.linspace(0.0, 1.0, max(height, 1))[:, None, None]
    column = (1 - t) * np.asarray(top, float) + t * np.asarray(bottom, float)
    return np.broadcast_to(column, (height, width, 3)).copy()


def low_frequency_noise(rng: np.random.Generator, size: tuple[int, int], cells: int) -> np.ndarray:
    """(H, W) smooth noise in about [0, 1]: a coarse random grid upsampled bicubically."""
    width, height = size
    grid = rng.random((cells, cells)).astype(np.float32)
    return cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.float64)


def _jitter(rng: np.random.Generator, color, amount: float = 12.0) -> np.ndarray:
    return np.clip(np.asarray(color, float) + rng.uniform(-amount, amount, 3), 0, 255)


def _sky_ground(rng, size, horizon, sky, ground_top, ground_bottom, texture=0.15) -> np.ndarray:
    width, height = size
    h = int(np.clip(round(horizon), 1, height - 1))
    image = np.empty((height, width, 3))
    image[:h] = vertical_gradient(h, width, _jitter(rng, sky[0]), _jitter(rng, sky[1]))
    ground = vertical_gradient(height - h, width, _jitter(rng, ground_top),
                               _jitter(rng, ground_bottom))  # fmt: skip
    noise = low_frequency_noise(rng, (width, height - h), int(rng.integers(8, 24)))
    image[h:] = ground * (1 - texture + 2 * texture * noise[..., None])
    return image


def _grass(rng, size, horizon):
    return _sky_ground(rng, size, horizon, ((120, 170, 230), (190, 220, 245)), (95, 160, 70),
                       (55, 125, 45), 0.12), {}  # fmt: skip


def _beach(rng, size, horizon):
    width, height = size
    image = _sky_ground(rng, size, horizon, ((90, 150, 225), (180, 215, 240)), (225, 205, 160),
                        (210, 185, 135), 0.1)  # fmt: skip
    h = int(np.clip(round(horizon), 1, height - 1))
    sea = max(1, int(0.07 * height))
    image[h : h + sea] = vertical_gradient(min(sea, height - h), width, (40, 100, 170),
                                           (70, 140, 190))  # fmt: skip
    return image, {}


def _sunset(rng, size, horizon):
    return _sky_ground(rng, size, horizon, ((90, 60, 130), (245, 150, 70)), (70, 60, 50),
                       (45, 40, 35), 0.15), {}  # fmt: skip


def _snow(rng, size, horizon):
    return _sky_ground(rng, size, horizon, ((175, 190, 210), (215, 222, 232)), (238, 240, 245),
                       (225, 228, 236), 0.05), {}  # fmt: skip


def _street(rng, size, horizon):
    width, height = size
    image = _sky_ground(rng, size, horizon, ((130, 175, 225), (200, 220, 240)), (120, 120, 118),
                        (95, 95, 95), 0.08)  # fmt: skip
    h = int(np.clip(round(horizon), 1, height - 1))
    x = int(rng.integers(-width // 8, 1))
    while x < width:
        w = int(rng.uniform(0.15, 0.35) * width)
        top = int(h * rng.uniform(0.05, 0.6))
        color = _jitter(rng, COLORS[str(rng.choice(["beige", "brown", "grey", "white", "red"]))])
        image[top:h, max(x, 0) : x + w] = color * 0.9
        _windows(image, (x, top, x + w, h), color * 0.55, width)
        x += w
    return image, {}


def _windows(image: np.ndarray, box: tuple, color: np.ndarray, width: int) -> None:
    x0, y0, x1, y1 = box
    step = max(6, width // 20)
    for wy in range(y0 + step // 2, y1 - step, step):
        for wx in range(max(x0, 0) + step // 3, min(x1, width) - step // 2, step):
            image[wy : wy + step // 2, wx : wx + step // 3] = color


def _room(rng, size, horizon):
    wall, floor = str(rng.choice(list(WALL_COLORS))), str(rng.choice(list(FLOORS)))
    image = _sky_ground(rng, size, horizon, (WALL_COLORS[wall],) * 2, FLOORS[floor],
                        np.asarray(FLOORS[floor]) * 0.85, 0.12)  # fmt: skip
    height = size[1]
    h = int(np.clip(round(horizon), 1, height - 1))
    board = max(1, int(0.015 * height))
    image[max(h - board, 0) : h] = 235.0  # skirting board
    return image, {"wall": wall, "floor": floor}


def _plain(rng, size, horizon):
    color = str(rng.choice(PLAIN_COLORS))
    width, height = size
    base = np.asarray(COLORS[color], float) * 0.35 + 0.65 * 225.0  # pastel, people stand out
    return vertical_gradient(height, width, _jitter(rng, base, 6), _jitter(rng, base * 0.92, 6)), {
        "color": color
    }


def _texture(rng, size, horizon):
    color = str(rng.choice(PLAIN_COLORS))
    base = np.asarray(COLORS[color], float) * 0.5 + 0.5 * 200.0
    noise = low_frequency_noise(rng, size, int(rng.integers(5, 14)))
    fine = low_frequency_noise(rng, size, int(rng.integers(30, 60)))
    image = base * (0.75 + 0.35 * noise[..., None] + 0.15 * fine[..., None])
    return image, {"color": color}


SCENES: dict[str, Callable] = {
    "grass": _grass,
    "beach": _beach,
    "sunset": _sunset,
    "snow": _snow,
    "street": _street,
    "room": _room,
    "plain": _plain,
    "texture": _texture,
}


def sample_background(rng: np.random.Generator, size: tuple[int, int], feet_y: float) -> Background:
    """Draw a background for a ``(width, height)`` image whose people stand at ``feet_y``.

    The horizon (or the wall's foot) lies between 30% of the height and a little above the
    highest foot, so people stand on the ground.
    """
    height = size[1]
    names = list(SCENES)
    weights = np.array([SCENE_WEIGHTS[k] for k in names])
    scene = names[int(rng.choice(len(names), p=weights / weights.sum()))]
    hi = max(min(feet_y - 0.06 * height, 0.7 * height), 0.3 * height)
    horizon = rng.uniform(min(0.3 * height, hi), hi)
    image, words = SCENES[scene](rng, size, horizon)
    if "color" in words:
        words["a_color"] = article(words["color"])
    phrase = str(rng.choice(PHRASES[scene])).format(**words)
    return Background(scene, phrase, np.clip(np.round(image), 0, 255).astype(np.uint8))
