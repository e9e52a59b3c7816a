"""Synthetic people: a small, deterministic pose dataset for tests and the offline demo.

``poseguide data synth --n N --out DIR --seed S`` writes N images of person-like figures posed
from COCO-17 skeletons (varied poses, body proportions, clothes, backgrounds; one or two people),
each with a caption, ground-truth keypoints, silhouette areas and the rendered skeleton image, as
a local JSONL manifest::

    DIR/images/00000.png      the picture (RGB)
    DIR/poses/00000.png       render_skeleton(keypoints), default (ControlNet 1.0) style
    DIR/synth_info.json       the parameters, to tell whether a folder can be reused
    DIR/manifest.jsonl        one row per sample, written last

Sample ``i`` is drawn from ``np.random.default_rng([seed, i])`` alone, so it does not depend on
``n`` and a seed always gives byte-identical files. The pieces live beside this module in
:mod:`poseguide.synth`: ``body`` (skeletons), ``poses`` (pose families), ``draw`` (figures),
``background`` and ``caption``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from poseguide.config.schema import SynthConfig
from poseguide.errors import InputError
from poseguide.pose.render import render_skeleton
from poseguide.synth.background import Background, sample_background
from poseguide.synth.body import (
    Person,
    extent,
    place_person,
    pose_points,
    sample_proportions,
)
from poseguide.synth.caption import caption
from poseguide.synth.draw import Outfit, draw_people, finish, sample_outfit
from poseguide.synth.poses import sample_pose
from poseguide.utils.io import atomic_save_image, atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

# Bump when the drawing or sampling changes: ensure_synthetic then regenerates old folders.
SYNTH_VERSION = 1
MANIFEST_NAME = "manifest.jsonl"
INFO_NAME = "synth_info.json"
IMAGES_DIR, POSES_DIR = "images", "poses"
MIN_SIZE = 32
# zlib level for the pictures: the grain makes them compress poorly, and level 3 is ~3x faster
# than PIL's default 6 for files ~4% larger.
PNG_LEVEL = 3
# Keypoints are stored with this many decimals; the pose image is drawn from the stored values.
KEYPOINT_DECIMALS = 2
# Chance that a lone person is drawn large enough to be cut off by the image's bottom edge.
CROP_PROBABILITY = 0.08
_SAMPLE_FILE = re.compile(r"^(\d{5,})\.png$")


@dataclass(frozen=True)
class SynthSample:
    """One generated sample.

    ``image`` and ``pose_image`` are (H, W, 3) uint8 RGB; ``keypoints`` (P, 17, 3) COCO
    ``(x, y, v)`` in pixels (v = 2 visible, 0 outside the image or a face point turned away, with
    x = y = 0), people left to right; ``areas`` (P,) silhouette areas in pixels; ``masks``
    (P, H, W) bool silhouettes.
    """

    index: int
    image: np.ndarray
    pose_image: np.ndarray
    caption: str
    keypoints: np.ndarray
    areas: np.ndarray
    masks: np.ndarray
    people: tuple[Person, ...]
    outfits: tuple[Outfit, ...]
    background: Background

    @property
    def id(self) -> str:
        return f"synth-{self.index:05d}"


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of sample ``index``; any integer seed works (negatives wrap to 64 bits)."""
    return np.random.default_rng([int(seed) % 2**64, int(index)])


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    width, height = (int(v) for v in size)
    if min(width, height) < MIN_SIZE:
        raise InputError(f"size must be at least {MIN_SIZE}x{MIN_SIZE} (width, height), got {size}")
    return width, height


# ------------------------------------------------------------------------------- layout


def _scale_and_offset(
    rng: np.random.Generator, box: np.ndarray, size: tuple[int, int], slot: tuple[float, float],
    height_range: tuple[float, float], crop: bool,
) -> tuple[float, np.ndarray]:  # fmt: skip
    """Pixels per body unit and the pixel offset that put a figure's ``box`` (body units,
    ``x0, y0, x1, y1``) inside the horizontal ``slot`` (pixels) of the image."""
    height = size[1]
    box_w, box_h = box[2] - box[0], box[3] - box[1]
    slot_w = slot[1] - slot[0]
    if crop:  # taller than the image, head near the top, feet cut off
        scale = rng.uniform(1.05, 1.35) * height / box_h
        top = rng.uniform(0.02, 0.08) * height
    else:
        scale = min(rng.uniform(*height_range) * height / box_h, 0.96 * slot_w / box_w)
        margin = 0.02 * height
        top = rng.uniform(margin, max(height - margin - box_h * scale, margin))
    spare = max(slot_w - box_w * scale, 0.0)
    left = slot[0] + rng.uniform(0.0, spare) - max(box_w * scale - slot_w, 0.0) / 2
    return scale, np.array([left - box[0] * scale, top - box[1] * scale])


def layout_people(rng: np.random.Generator, count: int, size: tuple[int, int]) -> list[Person]:
    """Sample ``count`` (1 or 2) people and place them side by side; returned left to right."""
    width, _ = size
    crop = count == 1 and rng.random() < CROP_PROBABILITY
    if count == 1:
        slots, heights = [(0.04 * width, 0.96 * width)], (0.62, 0.92)
    else:  # two halves that overlap a little: people may touch but not hide each other
        slots, heights = [(0.02 * width, 0.54 * width), (0.46 * width, 0.98 * width)], (0.5, 0.82)
    people = []
    for slot in slots:
        prop, pose = sample_proportions(rng), sample_pose(rng)
        points3d = pose_points(prop, pose)
        scale, offset = _scale_and_offset(rng, extent(points3d, prop), size, slot, heights, crop)
        people.append(place_person(prop, pose, points3d, scale, offset, size))
    return people


def _feet_y(person: Person) -> float:
    return max(person.points[f"{s}_{e}"][1] for s in ("left", "right") for e in ("heel", "toe"))


def _stored_keypoints(people: list[Person], size: tuple[int, int]) -> np.ndarray:
    """(P, 17, 3) rounded as stored; joints outside the image after rounding get v = 0."""
    kps = np.stack([p.keypoints for p in people]) if people else np.zeros((0, 17, 3))
    kps = kps.copy()
    kps[..., :2] = np.round(kps[..., :2], KEYPOINT_DECIMALS)
    width, height = size
    x, y = kps[..., 0], kps[..., 1]
    inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
    kps[..., 2] = np.where(inside & (kps[..., 2] > 0), 2.0, 0.0)
    kps[kps[..., 2] == 0] = 0.0
    return kps


def make_sample(
    seed: int,
    index: int,
    size: tuple[int, int] = SynthConfig.size,
    two_people: float = SynthConfig.two_people,
) -> SynthSample:
    """Generate sample ``index`` of the set with ``seed`` (depends on nothing else)."""
    size = _check_size(size)
    rng = sample_rng(seed, index)
    count = 2 if rng.random() < two_people else 1
    people = layout_people(rng, count, size)
    outfits = [sample_outfit(rng) for _ in people]
    background = sample_background(rng, size, min(_feet_y(p) for p in people))
    # Paint the person standing lower in the picture (nearer the camera) last.
    order = sorted(range(count), key=lambda i: _feet_y(people[i]))
    image, masks = draw_people(
        background.image, [people[i] for i in order], [outfits[i] for i in order]
    )
    image, masks = finish(image, rng), masks[np.argsort(order)]
    keypoints = _stored_keypoints(people, size)
    text = caption(
        [p.pose for p in people], outfits, [p.prop.build for p in people], background.phrase, rng
    )
    return SynthSample(
        index=index,
        image=image,
        pose_image=render_skeleton(keypoints, size),
        caption=text,
        keypoints=keypoints,
        areas=masks.sum(axis=(1, 2)).astype(np.float64),
        masks=masks,
        people=tuple(people),
        outfits=tuple(outfits),
        background=background,
    )


# ------------------------------------------------------------------------------- files


def synth_info(n: int, seed: int, size: tuple[int, int], two_people: float) -> dict:
    """The parameters recorded in ``synth_info.json`` (what :func:`ensure_synthetic` compares)."""
    width, height = _check_size(size)
    return {
        "n": int(n),
        "seed": int(seed),
        "size": [width, height],
        "two_people": float(two_people),
        "version": SYNTH_VERSION,
    }


def manifest_row(sample: SynthSample) -> dict:
    """The manifest line of a sample (paths relative to the manifest)."""
    name = f"{sample.index:05d}.png"
    height, width = sample.image.shape[:2]
    # x and y as floats, v as an integer, as in COCO files.
    keypoints = [
        [int(v) if j % 3 == 2 else float(v) for j, v in enumerate(person.reshape(-1))]
        for person in sample.keypoints
    ]
    return {
        "id": sample.id,
        "image": f"{IMAGES_DIR}/{name}",
        "pose_image": f"{POSES_DIR}/{name}",
        "caption": sample.caption,
        "keypoints": keypoints,
        "areas": [float(a) for a in sample.areas],
        "width": width,
        "height": height,
    }


def _remove_stale(out_dir: Path, n: int) -> None:
    """Delete numbered images from an earlier, larger set in the same folder."""
    for sub in (IMAGES_DIR, POSES_DIR):
        folder = out_dir / sub
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            match = _SAMPLE_FILE.match(path.name)
            if match and int(match.group(1)) >= n:
                path.unlink()


def synthesize(
    out_dir: str | os.PathLike,
    n: int,
    seed: int,
    size: tuple[int, int] = (256, 256),
    two_people: float = 0.3,
    progress: bool = True,
) -> Path:
    """Write ``n`` synthetic samples into ``out_dir`` and return the manifest's path.

    Args:
        out_dir: folder to write into (created; files of an earlier set are replaced).
        n: number of samples (>= 1).
        seed: any integer; the same seed gives byte-identical files.
        size: ``(width, height)`` in pixels, each at least 32.
        two_people: probability that an image shows two people, in [0, 1].
        progress: show a progress bar.

    Every file is written atomically and the manifest last: an interrupted run leaves no
    manifest (an old one is removed first), never one that points at missing files.
    """
    if int(n) < 1:
        raise InputError(f"n must be at least 1, got {n}")
    if not 0.0 <= float(two_people) <= 1.0:
        raise InputError(f"two_people must be a probability in [0, 1], got {two_people}")
    info = synth_info(n, seed, size, two_people)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = out_dir / MANIFEST_NAME
    manifest.unlink(missing_ok=True)
    (out_dir / INFO_NAME).unlink(missing_ok=True)
    rows = []
    for index in tqdm(range(int(n)), desc="synthetic people", unit="img", disable=not progress):
        sample = make_sample(seed, index, tuple(info["size"]), two_people)
        row = manifest_row(sample)
        atomic_save_image(out_dir / row["image"], sample.image, compress_level=PNG_LEVEL)
        atomic_save_image(out_dir / row["pose_image"], sample.pose_image)
        rows.append(row)
    _remove_stale(out_dir, int(n))
    atomic_write_json(out_dir / INFO_NAME, info)
    atomic_write_text(manifest, "".join(json.dumps(row) + "\n" for row in rows))
    logger.info("wrote %d synthetic samples to %s", n, manifest)
    return manifest


def _reusable(path: Path, info: dict) -> bool:
    """True when ``path`` holds a complete set made with exactly these parameters."""
    manifest = path / MANIFEST_NAME
    try:
        old = json.loads((path / INFO_NAME).read_text(encoding="utf-8"))
        rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]
    except (OSError, ValueError):
        return False
    if old != info or len(rows) != info["n"]:
        return False
    return all((path / r["image"]).is_file() and (path / r["pose_image"]).is_file() for r in rows)


def ensure_synthetic(path: str | os.PathLike, cfg: SynthConfig, progress: bool = True) -> Path:
    """Return the manifest of the synthetic set in ``path``, generating it when needed.

    An existing set is reused when its ``synth_info.json`` matches ``cfg`` (n, seed, size,
    two_people) and this code's :data:`SYNTH_VERSION`, and all its files exist; otherwise the
    folder is regenerated. This is what the data loader calls for ``kind: synthetic``.
    """
    path = Path(path)
    info = synth_info(cfg.n, cfg.seed, tuple(cfg.size), cfg.two_people)
    if _reusable(path, info):
        logger.info("reusing synthetic data in %s", path)
        return path / MANIFEST_NAME
    logger.info("generating %d synthetic samples in %s", cfg.n, path)
    return synthesize(path, cfg.n, cfg.seed, tuple(cfg.size), cfg.two_people, progress=progress)
