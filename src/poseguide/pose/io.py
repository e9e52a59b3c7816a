"""Keypoint JSON files in COCO's layout.

Written by ``poseguide pose estimate`` and read by ``poseguide pose render``::

    {
      "width": 512, "height": 512,             # canvas size (optional when reading)
      "people": [
        {"keypoints": [x1, y1, v1, ..., x17, y17, v17],   # COCO-17 order, flat
         "score": 0.90,                                   # optional: detection confidence
         "keypoint_scores": [...17 numbers...],           # optional: per-joint confidence
         "bbox": [x, y, w, h]}                            # optional
      ]
    }

When reading, the people list may also be under ``annotations`` (COCO) or ``people_coco17``, or
the file may be a bare list of people or a single person; the size may be ``canvas_size`` or
``image_size`` as ``[width, height]``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from poseguide.errors import NotFoundError
from poseguide.pose.skeleton import NUM_COCO17, KeypointError, validate_keypoints
from poseguide.utils.io import atomic_write_json, read_at_most

PEOPLE_KEYS = ("people", "annotations", "people_coco17")
SIZE_KEYS = ("canvas_size", "image_size")
# A keypoint file of 300 people (ultralytics' max_det) with scores is about 200 KB.
MAX_POSE_JSON_BYTES = 1 << 20


@dataclass
class PoseFile:
    """The contents of a keypoint JSON file."""

    people: np.ndarray  # (P, 17, 3) x, y, v
    size: tuple[int, int] | None = None  # (width, height) when the file gives it
    scores: list[float | None] = field(default_factory=list)  # per-person detection score
    keypoint_scores: list[list[float] | None] = field(default_factory=list)


def _people_list(data: object, where: str) -> list:
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        for key in PEOPLE_KEYS:
            if key in data:
                if not isinstance(data[key], list):
                    raise KeypointError(f"{where}: '{key}' must be a list of people")
                return data[key]
        if "keypoints" in data:
            return [data]
    raise KeypointError(
        f"{where}: no people found; expected a list of people or a mapping with one of "
        f"{list(PEOPLE_KEYS)} (each person a mapping with a flat 'keypoints' list)"
    )


def _size(data: object, where: str) -> tuple[int, int] | None:
    if not isinstance(data, dict):
        return None
    if "width" in data or "height" in data:
        raw = (data.get("width"), data.get("height"))
    else:
        raw = next((data[k] for k in SIZE_KEYS if k in data), None)
        if raw is None:
            return None
    values = list(raw) if isinstance(raw, (list, tuple)) else [raw]
    whole = [isinstance(v, int) and not isinstance(v, bool) for v in values]
    if len(values) != 2 or not all(whole):
        raise KeypointError(
            f"{where}: size {raw!r} must be two whole numbers (width, height), e.g. 512 and 384"
        )
    width, height = values
    if width <= 0 or height <= 0:
        raise KeypointError(f"{where}: size must be positive, got {width}x{height}")
    return width, height


def _person_keypoints(person: object, where: str) -> list:
    if not isinstance(person, dict) or "keypoints" not in person:
        raise KeypointError(f"{where}: each person must be a mapping with a 'keypoints' list")
    flat = person["keypoints"]
    if not isinstance(flat, list) or len(flat) != 3 * NUM_COCO17:
        got = len(flat) if isinstance(flat, list) else type(flat).__name__
        raise KeypointError(
            f"{where}: 'keypoints' has {got} values, expected {3 * NUM_COCO17} "
            "(x, y, v for each of the 17 COCO joints)"
        )
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in flat):
        raise KeypointError(f"{where}: 'keypoints' must contain only numbers")
    return flat


def parse_pose(data: object, where: str = "<keypoints>") -> PoseFile:
    """Parse already-loaded JSON data; errors name ``where``, the person and the joint."""
    people = _people_list(data, where)
    flat = [_person_keypoints(p, f"{where}: person {i}") for i, p in enumerate(people)]
    array = validate_keypoints(
        np.array(flat, dtype=np.float64).reshape(-1, NUM_COCO17, 3), where=where
    )
    return PoseFile(
        people=array,
        size=_size(data, where),
        scores=[p.get("score") for p in people],
        keypoint_scores=[p.get("keypoint_scores") for p in people],
    )


def load_pose_json(data: str | bytes, where: str) -> object:
    """Keypoint JSON text (or UTF-8 bytes) as Python data: the one place pose JSON is parsed
    (files, dataset cells, the app's uploads and editor). Anything that is not JSON, not UTF-8,
    or nested deeper than the parser can go (a keypoint file nests four levels; a crafted one
    100000) is one :class:`KeypointError` naming ``where``."""
    try:
        text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
        return json.loads(text)
    except UnicodeDecodeError:
        raise KeypointError(f"{where}: not valid JSON (not UTF-8 text)") from None
    except json.JSONDecodeError as err:
        raise KeypointError(f"{where}: not valid JSON ({err})") from None
    except RecursionError:  # json's parser recurses once per level of nesting
        raise KeypointError(
            f"{where}: not a keypoint file: its JSON is nested too deeply (a keypoint file "
            "nests four levels: mapping, people list, person, keypoints)"
        ) from None


def read_pose(path: str | Path) -> PoseFile:
    """Read a keypoint JSON file (see the module docstring for the layout), at most
    :data:`MAX_POSE_JSON_BYTES`."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"keypoint file not found: {path}")
    data = read_at_most(path, MAX_POSE_JSON_BYTES)
    if data is None:
        raise KeypointError(
            f"{path}: over {MAX_POSE_JSON_BYTES:,} bytes, more than a keypoint file holds; "
            "check that this is the right file"
        )
    return parse_pose(load_pose_json(data, str(path)), str(path))


def pose_to_json(
    people: np.ndarray,
    size: tuple[int, int] | None = None,
    scores: np.ndarray | None = None,
    keypoint_scores: np.ndarray | None = None,
    **extra: object,
) -> dict:
    """The JSON mapping for (P, 17, 3) keypoints with COCO visibility in the third column."""
    people = validate_keypoints(people)
    out: dict = dict(extra)
    if size is not None:
        out["width"], out["height"] = int(size[0]), int(size[1])
    out["people"] = []
    for i, person in enumerate(people):
        entry: dict = {"keypoints": [round(float(v), 3) for v in person.reshape(-1)]}
        labelled = person[person[:, 2] > 0]
        if len(labelled):
            x0, y0 = labelled[:, :2].min(axis=0)
            x1, y1 = labelled[:, :2].max(axis=0)
            entry["bbox"] = [round(float(v), 3) for v in (x0, y0, x1 - x0, y1 - y0)]
        entry["num_keypoints"] = len(labelled)
        if scores is not None:
            entry["score"] = round(float(scores[i]), 5)
        if keypoint_scores is not None:
            entry["keypoint_scores"] = [round(float(s), 5) for s in keypoint_scores[i]]
        out["people"].append(entry)
    return out


def write_pose(path: str | Path, people: np.ndarray, **kwargs: object) -> Path:
    """Write keypoints as JSON (atomically); keyword arguments as for :func:`pose_to_json`."""
    return atomic_write_json(path, pose_to_json(people, **kwargs))
