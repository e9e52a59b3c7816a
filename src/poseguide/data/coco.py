"""COCO keypoints: a ``person_keypoints_*.json``, its images folder and captions.

This builds a Captioned-COCO-Pose-like set from COCO itself, with real ground-truth keypoints and
segment areas for OKS.

* Rows: one per image that has at least one person annotation with ``iscrowd == 0`` and
  ``num_keypoints > 0``, in increasing image id. The row id is the COCO image id as a string.
  ``select`` (:class:`~poseguide.config.schema.CocoSelect`) keeps only the images whose number of
  non-crowd people (with or without keypoints) is in [min_people, max_people] and whose largest
  person box covers at least ``min_area_ratio`` of the image (``select_dropped`` counts the rest).
* People: those annotations, in increasing annotation id, as (P, 17, 3) keypoints and (P,)
  areas. Crowd annotations (``iscrowd == 1``) are dropped: they mark groups, not people, and
  COCOeval never matches them as ground truth. People with no labelled joint are dropped too
  (COCOeval ignores them for keypoints).
* Captions: a COCO ``captions_*.json`` (several captions per image: the one with the smallest
  caption annotation id is used, so the choice is deterministic) or a JSONL of
  ``{"image_id": ..., "caption": ...}`` (the first line for an image wins), or ``image:FIELD``:
  each image entry's own ``FIELD`` in the keypoints file (Human-Art's annotation files carry a
  ``description`` per image: ``captions: image:description``). When no captions are given,
  ``captions_<split>.json`` beside the keypoints file is used if it exists. An image without a
  caption is a ``bad_caption`` row error.
* Pose images: none (``pose_image=None``): the skeleton is rendered from the keypoints when needed
  (preprocessing, preview).
* The image's decoded size must match the ``width`` and ``height`` in the annotation file, or the
  keypoints would not line up: a mismatch is a ``pose_size_mismatch`` row error.

Reading the json needs memory for the whole file (person_keypoints_train2017.json: ~240 MB on
disk, a few GB as Python objects, like pycocotools); only the fields used are kept afterwards.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path

from poseguide.config.schema import CocoSelect
from poseguide.data.checks import (
    check_declared_size,
    check_sample,
    decode_or_size,
    files_fingerprint,
    parse_areas,
    parse_keypoints,
)
from poseguide.data.record import RowError, Sample, SourceError
from poseguide.utils.images import DEFAULT_MAX_IMAGE_PIXELS

log = logging.getLogger(__name__)

KEYPOINTS_PREFIX = "person_keypoints_"
CAPTIONS_PREFIX = "captions_"
IMAGE_FIELD_PREFIX = "image:"  # captions from a field of each image entry


def _read_json(path: Path, what: str) -> tuple[object, bytes]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SourceError(f"{what} not found: {path}") from None
    try:
        return json.loads(raw), raw
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SourceError(f"{path}: {what} is not valid JSON ({err})") from None


def _image_key(value: object) -> object:
    """COCO image ids are integers; accept digit strings too (e.g. from a JSONL)."""
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return value


def _num_keypoints(ann: dict) -> int:
    count = ann.get("num_keypoints")
    if isinstance(count, int):
        return count
    flat = ann.get("keypoints")
    if not isinstance(flat, list):
        return 1  # keep it: the row reports bad_keypoints when loaded
    return sum(1 for v in flat[2::3] if isinstance(v, (int, float)) and v > 0)


def _box_area(ann: dict) -> float:
    """w x h of an annotation's ``bbox`` ([x, y, w, h]); 0 when it has none."""
    box = ann.get("bbox")
    if isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box):
        return max(float(box[2]), 0.0) * max(float(box[3]), 0.0)
    return 0.0


def default_captions_path(annotations: Path) -> Path | None:
    """``captions_<split>.json`` beside ``person_keypoints_<split>.json``, if it exists."""
    if not annotations.name.startswith(KEYPOINTS_PREFIX):
        return None
    candidate = annotations.with_name(CAPTIONS_PREFIX + annotations.name[len(KEYPOINTS_PREFIX) :])
    return candidate if candidate.is_file() else None


def read_captions(path: Path) -> tuple[dict[object, object], bytes]:
    """image id -> caption, from a COCO captions json or a JSONL (see the module docstring)."""
    captions: dict[object, object] = {}
    if path.suffix == ".jsonl":
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise SourceError(f"captions file not found: {path}") from None
        for lineno, line in enumerate(raw.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise SourceError(f"{path}:{lineno}: not valid JSON ({err})") from None
            if not isinstance(entry, dict) or "image_id" not in entry:
                raise SourceError(f'{path}:{lineno}: expected {{"image_id": ..., "caption": ...}}')
            captions.setdefault(_image_key(entry["image_id"]), entry.get("caption"))
        return captions, raw
    data, raw = _read_json(path, "captions file")
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise SourceError(f"{path}: a COCO captions file needs an 'annotations' list")
    best: dict[object, tuple] = {}
    for k, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "image_id" not in ann:
            raise SourceError(f"{path}: caption annotation {k} has no 'image_id'")
        key, order = _image_key(ann["image_id"]), (ann.get("id", k), k)
        if key not in best or order < best[key][0]:
            best[key] = (order, ann.get("caption"))
    return {key: caption for key, (_, caption) in best.items()}, raw


def _is_field(captions: object) -> bool:
    return isinstance(captions, str) and captions.startswith(IMAGE_FIELD_PREFIX)


def _image_field_captions(data: object, field: str) -> dict[object, object]:
    """image id -> its entry's ``field`` (images without one get no caption: a row error)."""
    images = data.get("images") if isinstance(data, dict) else None
    return {img["id"]: img[field] for img in images or []
            if isinstance(img, dict) and "id" in img and img.get(field) is not None}  # fmt: skip


class CocoSource:
    """Rows of a COCO person-keypoints file (see the module docstring)."""

    def __init__(
        self,
        annotations: str | Path,
        images_dir: str | Path,
        captions: str | Path | None = None,
        *,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        limit: int | None = None,
        select: CocoSelect | None = None,
    ) -> None:
        self.annotations = Path(annotations)
        self.images_dir = Path(images_dir)
        self.max_image_pixels = max_image_pixels
        self.select = select or CocoSelect()
        self.name = f"coco:{self.annotations}"
        if not self.images_dir.is_dir():
            raise SourceError(f"COCO images folder not found: {self.images_dir}")
        data, raw = _read_json(self.annotations, "COCO keypoints file")
        digest = hashlib.sha256(raw)
        self._index(data)
        field = str(captions)[len(IMAGE_FIELD_PREFIX) :] if _is_field(captions) else None
        in_file = _image_field_captions(data, field) if field else None
        del data, raw
        if in_file is not None:
            self.captions_path = f"{self.annotations} (images[].{field})"
            self._captions, self._digest = in_file, digest.hexdigest()
            self._finish(limit)
            return
        captions_path = Path(captions) if captions else default_captions_path(self.annotations)
        if captions_path is None:
            raise SourceError(
                f"{self.annotations}: no captions given and no captions_*.json beside it; pass "
                "captions (a COCO captions_*.json or a JSONL of {image_id, caption})"
            )
        self.captions_path = captions_path
        self._captions, raw = read_captions(captions_path)
        digest.update(hashlib.sha256(raw).digest())
        self._digest = digest.hexdigest()  # a str, so the source pickles (DataLoader workers)
        self._finish(limit)

    def _finish(self, limit: int | None) -> None:
        self.limit = limit
        if limit is not None:
            self._image_ids = self._image_ids[:limit]
        self._fingerprint: str | None = None

    def _index(self, data: object) -> None:
        """Keep the images with non-crowd annotated people; count what was dropped."""
        if not isinstance(data, dict) or not all(
            isinstance(data.get(k), list) for k in ("images", "annotations")
        ):
            raise SourceError(f"{self.annotations}: expected 'images' and 'annotations' lists")
        self._images: dict[object, dict] = {}
        for k, img in enumerate(data["images"]):
            if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
                raise SourceError(f"{self.annotations}: images[{k}] needs 'id' and 'file_name'")
            self._images[img["id"]] = {
                "file_name": img["file_name"],
                "size": (img.get("width"), img.get("height")),
            }
        categories = data.get("categories") or []
        person = {
            c.get("id") for c in categories if isinstance(c, dict) and c.get("name") == "person"
        }
        self._people: dict[object, list[tuple]] = {}
        self._boxes: dict[object, list[float]] = {}  # non-crowd people's box areas, per image
        self.counts = {"crowd_dropped": 0, "no_keypoints_dropped": 0, "unknown_image": 0}
        for k, ann in enumerate(data["annotations"]):
            if not isinstance(ann, dict) or (person and ann.get("category_id") not in person):
                continue
            if ann.get("iscrowd", 0):
                self.counts["crowd_dropped"] += 1
                continue
            if ann.get("image_id") in self._images:
                self._boxes.setdefault(ann["image_id"], []).append(_box_area(ann))
            if _num_keypoints(ann) <= 0:
                self.counts["no_keypoints_dropped"] += 1
            elif ann.get("image_id") not in self._images:
                self.counts["unknown_image"] += 1
            else:
                entry = (ann.get("id", k), ann.get("keypoints"), ann.get("area"))
                self._people.setdefault(ann["image_id"], []).append(entry)
        if self.counts["unknown_image"]:
            log.warning(
                "%s: %d annotations refer to image ids not in 'images'; ignored",
                self.annotations,
                self.counts["unknown_image"],
            )
        for people in self._people.values():
            people.sort(key=lambda p: p[0])
        self.total = len(self._people)
        kept = [i for i in self._people if self._selected(i)]
        self.counts["select_dropped"] = self.total - len(kept)
        self._image_ids = sorted(kept, key=lambda i: (str(type(i)), i))

    def _selected(self, image_id: object) -> bool:
        """Whether ``image_id`` passes ``self.select`` (people count, largest box's area ratio)."""
        sel, areas = self.select, self._boxes.get(image_id, [])
        if len(areas) < sel.min_people or (sel.max_people is not None
                                           and len(areas) > sel.max_people):  # fmt: skip
            return False
        if sel.min_area_ratio <= 0:
            return True
        width, height = self._images[image_id]["size"]
        if not (isinstance(width, (int, float)) and isinstance(height, (int, float))
                and width > 0 and height > 0):  # fmt: skip
            raise SourceError(
                f"{self.annotations}: image id {image_id} has no width/height, which "
                "select.min_area_ratio needs; add them or set min_area_ratio: 0"
            )
        return max(areas) / (width * height) >= sel.min_area_ratio

    def __len__(self) -> int:
        return len(self._image_ids)

    def ids(self) -> list[str]:
        return [str(i) for i in self._image_ids]

    def load(self, index: int, image: bool = True) -> Sample:
        if not 0 <= index < len(self._image_ids):
            raise IndexError(f"{self.name}: row {index} out of range (0..{len(self) - 1})")
        image_id = self._image_ids[index]
        row = str(image_id)
        info, people = self._images[image_id], self._people[image_id]
        path = self.images_dir / info["file_name"]
        pixels, size = decode_or_size(path, row, self.max_image_pixels, image)
        check_declared_size(size, info["size"], row, path, self.annotations.name)
        keypoints = parse_keypoints([p[1] for p in people], row)
        areas = [p[2] for p in people]
        if image_id not in self._captions:
            raise RowError(
                row, "bad_caption", f"no caption for image id {image_id} in {self.captions_path}"
            )
        sample = Sample(
            id=row,
            image=pixels,
            caption=self._captions[image_id],
            keypoints=keypoints,
            areas=None if None in areas else parse_areas(areas, row, len(people)),
            meta={
                "source": "coco",
                "image_id": image_id,
                "path": str(path),
                "annotation_ids": [p[0] for p in people],
            },
            size=size,
        )
        return check_sample(sample)

    def fingerprint(self) -> str:
        # Both json files' bytes plus each image's size and mtime (one stat per image).
        if self._fingerprint is None:
            paths = (self.images_dir / self._images[i]["file_name"] for i in self._image_ids)
            parts = [self._digest, f"{len(self)}:{self.max_image_pixels}"]
            if self.select != CocoSelect():  # the default keeps the fingerprints of before it
                parts.append(f"select:{sorted(asdict(self.select).items())}")
            self._fingerprint = files_fingerprint(parts, paths)
        return self._fingerprint

    def describe(self) -> dict:
        return {
            "kind": "coco",
            "annotations": str(self.annotations),
            "images_dir": str(self.images_dir),
            "captions": str(self.captions_path),
            "rows": len(self),
            "images_in_file": len(self._images),
            "images_with_people": self.total,
            "select": asdict(self.select),
            "people": sum(len(self._people[i]) for i in self._image_ids),
            "captioned_rows": sum(i in self._captions for i in self._image_ids),
            **self.counts,
            "columns": {
                "id": "str (COCO image id)",
                "image": "file in images_dir",
                "caption": "str",
                "keypoints": "(P, 17, 3) x, y, v",
                "areas": "(P,) float (segment area)",
            },
        }
