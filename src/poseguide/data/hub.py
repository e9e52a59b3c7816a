"""A Hugging Face dataset shaped like ``limingcv/Captioned_COCOPose``, from the hub or a folder.

``path`` is a hub dataset id (``owner/name``) or a local folder holding the dataset's parquet
shards, laid out as on the hub: ``data/train-*.parquet`` and ``data/validation-*.parquet``
(``<split>-*.parquet``, ``<split>/*.parquet`` and ``data/<split>/*.parquet`` are found too).

Columns are detected when the source is opened, by name (first match wins):

* image: ``image`` (required); caption: ``caption``, ``text``, ``prompt`` (required);
* pose image: ``control_pose``, ``pose_image``, ``conditioning_image``, ``pose``;
* keypoints: ``keypoints``, ``pose_keypoints``, ``keypoints_coco``, ``coco_keypoints``,
  ``person_keypoints``; areas: ``areas``, ``area``; id: ``id``, ``image_id``, ``cocoid``.

A pose image column or a keypoint column is needed (a row without a pose image is rendered from its
keypoints later). ``columns={"caption": "my_text"}`` overrides the detection. A missing column is a
:class:`SourceError` listing the columns found. Row ids come from the id column when it is unique,
else they are ``<split>-<index>``.

Memory: ``datasets`` converts the parquet shards once into Arrow files in its cache (about the
shards' size on disk) and memory-maps them; rows are read one at a time and images are decoded
here, not by ``datasets`` (image columns are cast to ``Image(decode=False)``), so that a corrupt
image is a :class:`RowError` rather than a crash inside ``datasets``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

from poseguide.data.checks import (
    check_sample,
    decode_or_size,
    parse_areas,
    parse_keypoints,
)
from poseguide.data.record import RowError, Sample, SourceError
from poseguide.utils.images import DEFAULT_MAX_IMAGE_PIXELS
from poseguide.utils.offline import is_offline

log = logging.getLogger(__name__)

COLUMN_CANDIDATES: dict[str, tuple[str, ...]] = {
    "image": ("image",),
    "caption": ("caption", "text", "prompt"),
    "pose_image": ("control_pose", "pose_image", "conditioning_image", "pose"),
    "keypoints": (
        "keypoints",
        "pose_keypoints",
        "keypoints_coco",
        "coco_keypoints",
        "person_keypoints",
    ),
    "areas": ("areas", "area"),
    "id": ("id", "image_id", "cocoid"),
}
REQUIRED_ROLES = ("image", "caption")
SHARD_PATTERNS = (
    "data/{split}-*.parquet",
    "data/{split}/*.parquet",
    "{split}-*.parquet",
    "{split}/*.parquet",
)
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def find_shards(folder: Path, split: str) -> list[Path]:
    """The parquet shards of ``split`` in a local copy of the dataset, in name order."""
    for pattern in SHARD_PATTERNS:
        shards = sorted(folder.glob(pattern.format(split=split)))
        if shards:
            return shards
    found = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.parquet"))[:10]
    tried = ", ".join(p.format(split=split) for p in SHARD_PATTERNS)
    raise SourceError(
        f"{folder}: no parquet shards for split {split!r} (looked for {tried}); parquet files "
        f"found: {found or 'none'}. Pass the folder that holds the dataset's data/ folder."
    )


def _hint(name: str) -> str:
    return (
        f"(No local folder named {name!r} exists.) To use a local copy, download the dataset's "
        f"parquet shards (data/train-*.parquet, data/validation-*.parquet), e.g. `hf download "
        f"{name} --repo-type dataset --local-dir DIR` on a machine with access, and pass "
        "the folder DIR as the source path (data.train.path=DIR, kind hub)."
    )


def _probe_hub(name: str, revision: str | None) -> None:
    """Fail fast when the hub cannot be reached: ``load_dataset`` would retry for ~25 s."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        HfApi().dataset_info(name, revision=revision, timeout=10)
    except (RepositoryNotFoundError, RevisionNotFoundError) as err:
        raise SourceError(
            f"hub dataset {name!r} (revision {revision or 'main'}) not found ({type(err).__name__})"
            f"; check the name, or pass a local folder. {_hint(name)}"
        ) from None
    except Exception as err:  # network errors come from several libraries
        raise SourceError(
            f"cannot reach the Hugging Face hub for dataset {name!r} ({type(err).__name__}: "
            f"{err}). If the dataset is already in your cache, set HF_HUB_OFFLINE=1 to use it. "
            f"{_hint(name)}"
        ) from None


def load_hub_dataset(path: str, split: str, revision: str | None, cache_dir: str | None):
    """A memory-mapped ``datasets.Dataset`` for ``split`` of a hub id or a local shard folder."""
    import datasets

    folder = Path(path).expanduser()
    if folder.is_dir():
        files = [str(p) for p in find_shards(folder, split)]
        return datasets.load_dataset(
            "parquet",
            data_files={split: files},
            split=split,
            cache_dir=cache_dir,
            keep_in_memory=False,
        )
    if folder.exists() or not HUB_ID.match(path):
        raise SourceError(
            f"hub source {path!r} is neither a folder of parquet shards nor a hub dataset id "
            "(owner/name)"
        )
    if not is_offline():
        _probe_hub(path, revision)
    try:
        # Rows are checked one by one by poseguide; the card's split sizes are not needed (and
        # other users of this dataset turn that check off), so a stale card cannot block loading.
        return datasets.load_dataset(
            path,
            split=split,
            revision=revision,
            cache_dir=cache_dir,
            keep_in_memory=False,
            verification_mode="no_checks",
        )
    except Exception as err:  # ConnectionError, DatasetNotFoundError, ValueError (bad split)...
        # Connection and not-found errors are OSErrors: say how to use a local copy instead.
        hint = _hint(path) if isinstance(err, OSError) else ""
        raise SourceError(
            f"could not load hub dataset {path!r} split {split!r}: {type(err).__name__}: {err}. "
            f"{hint}"
        ) from None


def detect_columns(features: dict, overrides: dict[str, str] | None = None) -> dict[str, str]:
    """Map roles (image, caption, pose_image, keypoints, areas, id) to column names."""
    names = list(features)
    roles: dict[str, str] = {}
    for role, column in (overrides or {}).items():
        if role not in COLUMN_CANDIDATES:
            raise SourceError(f"unknown column role {role!r}; roles are {list(COLUMN_CANDIDATES)}")
        if column not in features:
            raise SourceError(f"column {column!r} (given for {role}) not found; columns: {names}")
        roles[role] = column
    for role, candidates in COLUMN_CANDIDATES.items():
        if role not in roles:
            found = next((c for c in candidates if c in features), None)
            if found is not None:
                roles[role] = found
    wanted = [f"{r}: one of {list(COLUMN_CANDIDATES[r])}" for r in REQUIRED_ROLES if r not in roles]
    if "pose_image" not in roles and "keypoints" not in roles:
        pose = COLUMN_CANDIDATES["pose_image"] + COLUMN_CANDIDATES["keypoints"]
        wanted.append(f"a pose image or keypoints: one of {list(pose)}")
    if wanted:
        raise SourceError(
            f"dataset is missing required columns ({'; '.join(wanted)}); columns found: {names}. "
            "Pass columns={'role': 'name'} to name them."
        )
    return roles


def feature_type(feature: object) -> str:
    """A short readable type for a ``datasets`` feature."""
    kind = type(feature).__name__
    if kind == "Image":
        return "image"
    if kind == "Value":
        return str(feature.dtype)
    if kind in ("List", "Sequence", "LargeList"):
        return f"list<{feature_type(feature.feature)}>"
    if isinstance(feature, (list, tuple)) and feature:
        return f"list<{feature_type(feature[0])}>"
    return str(feature)


class HubSource:
    """Rows of a ``Captioned_COCOPose``-like dataset (see the module docstring)."""

    def __init__(
        self,
        path: str,
        split: str = "train",
        revision: str | None = None,
        *,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        limit: int | None = None,
        cache_dir: str | None = None,
        columns: dict[str, str] | None = None,
    ) -> None:
        from datasets import Image as ImageFeature

        self.path, self.split, self.revision = str(path), split, revision
        self.max_image_pixels = max_image_pixels
        self.name = f"hub:{self.path}[{split}]"
        dataset = load_hub_dataset(self.path, split, revision, cache_dir)
        self.features = {k: feature_type(v) for k, v in dataset.features.items()}
        self.roles = detect_columns(dataset.features, columns)
        dataset = dataset.select_columns(sorted(set(self.roles.values())))
        for role in ("image", "pose_image"):
            column = self.roles.get(role)
            if column and isinstance(dataset.features[column], ImageFeature):
                dataset = dataset.cast_column(column, ImageFeature(decode=False))
        self._dataset = dataset
        self.total = len(dataset)
        self._n = self.total if limit is None else min(limit, self.total)
        self.limit = limit
        self._ids = self._read_ids()

    def _read_ids(self) -> list[str]:
        column = self.roles.get("id")
        if column is not None:
            ids = [str(v) for v in self._dataset.data.column(column).to_pylist()[: self._n]]
            if len(set(ids)) == len(ids) and "None" not in ids:
                return ids
            log.warning("%s: id column %r is not unique; using <split>-<index>", self.name, column)
        return [f"{self.split}-{i}" for i in range(self._n)]

    def __len__(self) -> int:
        return self._n

    def ids(self) -> list[str]:
        return list(self._ids)

    def _image(self, cell: object, row: str, role: str, decode: bool = True) -> tuple | None:
        """Decode an image cell: {bytes, path} (a datasets Image), raw bytes or a path; returns
        (image, size) (image None when not ``decode``: only the header is read), None for null."""
        what = f"column {self.roles[role]!r}"
        if isinstance(cell, dict):
            cell = cell.get("bytes") or cell.get("path")
        if cell is None:
            return None
        return decode_or_size(cell, row, self.max_image_pixels, decode, what=what)

    def load(self, index: int, image: bool = True) -> Sample:
        if not 0 <= index < self._n:
            raise IndexError(f"{self.name}: row {index} out of range (0..{self._n - 1})")
        row_id = self._ids[index]
        cells = self._dataset[index]
        found = self._image(cells[self.roles["image"]], row_id, "image", decode=image)
        if found is None:
            raise RowError(row_id, "missing_file", f"column {self.roles['image']!r} is null")
        pose = None
        if "pose_image" in self.roles:
            pose_found = self._image(cells[self.roles["pose_image"]], row_id, "pose_image")
            pose = None if pose_found is None else pose_found[0]
        keypoints = None
        if "keypoints" in self.roles:
            keypoints = parse_keypoints(cells[self.roles["keypoints"]], row_id)
        if pose is None and keypoints is None:
            raise RowError(
                row_id, "missing_file", "no pose image and no keypoints to render one from"
            )
        areas = None
        if "areas" in self.roles:
            num = None if keypoints is None else keypoints.shape[0]
            areas = parse_areas(cells[self.roles["areas"]], row_id, num)
        meta = {"source": "hub", "dataset": self.path, "split": self.split, "index": index}
        sample = Sample(
            id=row_id,
            image=found[0],
            caption=cells[self.roles["caption"]],
            pose_image=pose,
            keypoints=keypoints,
            areas=areas,
            meta=meta,
            size=found[1],
        )
        return check_sample(sample)

    def fingerprint(self) -> str:
        key = {
            "kind": "hub",
            "data": self._dataset._fingerprint,
            "split": self.split,
            "revision": self.revision,
            "roles": self.roles,
            "rows": self._n,
            "max_image_pixels": self.max_image_pixels,
        }
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]

    def describe(self) -> dict:
        return {
            "kind": "hub",
            "path": self.path,
            "split": self.split,
            "revision": self.revision,
            "rows": self._n,
            "rows_in_split": self.total,
            "columns": dict(self.features),
            "roles": dict(self.roles),
            "has_keypoints": "keypoints" in self.roles,
        }
