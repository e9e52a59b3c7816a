"""A local JSONL manifest: one JSON object per line, paths relative to the manifest file.

Each line::

    {"id": "a1",                          # required: a unique string (integers are accepted)
     "image": "images/a1.jpg",            # required: the image, relative to the manifest
     "caption": "a man jumping",          # required: a non-empty string (checked per row)
     "pose_image": "poses/a1.png",        # optional: the skeleton image, same size as the image
     "keypoints": [[51 numbers], ...],    # optional: people, COCO-17 flat x, y, v in image pixels
                                          #   (each person may also be 17 [x, y, v] triples)
     "areas": [1234.5, ...],              # optional: one segment area in pixels per person
     "width": 640, "height": 480}         # optional: the image size the keypoints refer to

Absolute paths are used as they are; blank lines are ignored, other keys are ignored. A row
without ``pose_image`` has ``pose_image=None`` and its skeleton is rendered from ``keypoints``
later (preprocessing, preview); a row with neither is a ``missing_file`` row error. When
``width`` and ``height`` are given, an image of another size is a ``pose_size_mismatch`` row error
(its keypoints would not line up).

A line that is not valid JSON, not an object, or lacks a usable ``id`` or ``image``, and a
duplicate id, are :class:`SourceError` naming the line: the manifest is broken, not a row.
Everything that needs the files (decoding, sizes) or concerns the values (caption, keypoints) is
checked when a row is loaded and raises :class:`RowError`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from poseguide.data.checks import (
    check_declared_size,
    check_sample,
    decode_or_size,
    files_fingerprint,
    open_image,
    parse_areas,
    parse_keypoints,
)
from poseguide.data.record import RowError, Sample, SourceError
from poseguide.utils.images import DEFAULT_MAX_IMAGE_PIXELS


def _row_id(value: object, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise SourceError(f"{where}: 'id' must be a non-empty string, got {value!r}")
    return str(value)


def _rel_path(entry: dict, key: str, where: str, required: bool) -> str | None:
    value = entry.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        need = "required" if required else "optional"
        raise SourceError(f"{where}: {key!r} ({need}) must be a path string, got {value!r}")
    return value


def read_manifest(path: Path) -> tuple[list[dict], bytes]:
    """Parse a manifest into entries (with their line numbers) and return its raw bytes."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SourceError(f"manifest not found: {path}") from None
    entries: list[dict] = []
    first_line: dict[str, int] = {}
    for lineno, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            entry = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            raise SourceError(f"{where}: not UTF-8 text") from None
        except json.JSONDecodeError as err:
            raise SourceError(
                f"{where}: not valid JSON ({err.msg} at column {err.colno}); each line must be "
                "one JSON object"
            ) from None
        if not isinstance(entry, dict):
            raise SourceError(f"{where}: expected a JSON object, got {type(entry).__name__}")
        row_id = _row_id(entry.get("id"), where)
        if row_id in first_line:
            raise SourceError(
                f"{where}: duplicate id {row_id!r} (first used on line {first_line[row_id]})"
            )
        first_line[row_id] = lineno
        entries.append(
            {
                "id": row_id,
                "line": lineno,
                "image": _rel_path(entry, "image", where, required=True),
                "pose_image": _rel_path(entry, "pose_image", where, required=False),
                "caption": entry.get("caption"),
                "keypoints": entry.get("keypoints"),
                "areas": entry.get("areas"),
                "size": (entry.get("width"), entry.get("height")),
            }
        )
    return entries, raw


class ManifestSource:
    """Rows of a JSONL manifest (see the module docstring for the format)."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        limit: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.root = self.path.parent
        self.name = f"manifest:{self.path}"
        self.max_image_pixels = max_image_pixels
        entries, raw = read_manifest(self.path)
        self.total = len(entries)
        self.limit = limit
        self._entries = entries if limit is None else entries[:limit]
        self._digest = hashlib.sha256(raw).hexdigest()
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def ids(self) -> list[str]:
        return [e["id"] for e in self._entries]

    def file(self, relpath: str) -> Path:
        """A manifest path resolved against the manifest's folder."""
        return self.root / relpath

    def load(self, index: int, image: bool = True) -> Sample:
        if not 0 <= index < len(self._entries):
            raise IndexError(f"{self.name}: row {index} out of range (0..{len(self) - 1})")
        entry = self._entries[index]
        row = entry["id"]
        image_path = self.file(entry["image"])
        pixels, size = decode_or_size(image_path, row, self.max_image_pixels, image)
        check_declared_size(size, entry["size"], row, image_path, f"line {entry['line']}")
        pose = None
        if entry["pose_image"] is not None:
            pose_path = self.file(entry["pose_image"])
            pose = open_image(pose_path, row, self.max_image_pixels, what="pose image")
        keypoints = parse_keypoints(entry["keypoints"], row)
        if pose is None and keypoints is None:
            raise RowError(
                row,
                "missing_file",
                f"line {entry['line']} has neither 'pose_image' nor 'keypoints'",
            )
        num = None if keypoints is None else keypoints.shape[0]
        sample = Sample(
            id=row,
            image=pixels,
            caption=entry["caption"],
            pose_image=pose,
            keypoints=keypoints,
            areas=parse_areas(entry["areas"], row, num),
            meta={"source": "manifest", "path": str(image_path), "line": entry["line"]},
            size=size,
        )
        return check_sample(sample)

    def fingerprint(self) -> str:
        # The manifest's bytes plus each referenced file's size and mtime (a stat per file, no
        # reads): editing an image in place changes the fingerprint too.
        if self._fingerprint is None:
            paths = (self.file(entry[key]) for entry in self._entries
                     for key in ("image", "pose_image") if entry[key] is not None)  # fmt: skip
            parts = (self._digest, f"{len(self._entries)}:{self.max_image_pixels}")
            self._fingerprint = files_fingerprint(parts, paths)
        return self._fingerprint

    def describe(self) -> dict:
        columns = {
            "id": "str",
            "image": "path (relative to the manifest)",
            "caption": "str",
            "pose_image": "path (optional)",
            "keypoints": "(P, 17, 3) x, y, v (optional)",
            "areas": "(P,) float (optional)",
        }
        return {
            "kind": "manifest",
            "path": str(self.path),
            "rows": len(self._entries),
            "rows_in_file": self.total,
            "with_pose_image": sum(e["pose_image"] is not None for e in self._entries),
            "with_keypoints": sum(e["keypoints"] is not None for e in self._entries),
            "with_areas": sum(e["areas"] is not None for e in self._entries),
            "columns": columns,
        }
