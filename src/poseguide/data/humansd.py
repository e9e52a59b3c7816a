"""HumanSD's datasets as HumanSD ships them (LAION-Human, and Human-Art's HumanSD copy): a
mapping JSON plus one pose ``.npz`` per image.

Layout (HumanSD's README; paths in the mapping are relative to the base folder, by default the
mapping file's folder, else ``images_dir``)::

    Aesthetics_Human/                     # base
      images/00000/000000000.jpg          # downloaded by the user from LAION (img2dataset)
      pose/00000/000000000.npz
      mapping_file_training.json          # {key: {"img_path", "pose_path", "prompt"}}

* Rows: one per mapping entry whose image and pose file both exist, in sorted key order; the row
  id is the key. LAION downloads have gaps (dead URLs are skipped by the download), so entries
  whose image or pose file is missing are **counted** (``missing_image``, ``missing_pose``, in
  :meth:`HumanSDSource.describe` and one warning line) and left out, never a crash.
* People: the pose file's ``arr_0``, MMPose's bottom-up results, one dict per person with
  ``keypoints`` (17, 3) = x, y, score in the original image's pixels, COCO-17 order (a plain
  numeric (P, 17, 3) array is accepted too). A joint is labelled (v = 2) when its score is
  above ``KEYPOINT_THRESHOLD`` (0.02, HumanSD's ``keypoint_thresh``) and it lies inside the
  image, as HumanSD's loader keeps it; otherwise v = 0. People with no labelled joint are dropped.
* Captions: each entry's ``prompt``. Areas: none (OKS uses the keypoint box's rule).

``arr_0`` is a pickled object array. It is read with an unpickler that builds only numpy arrays,
dtypes, scalars and Python containers: any other class in the file is refused, so no Python code
path of a crafted pose file runs (``numpy.load(allow_pickle=True)`` would run it; numpy's own
parsing of a malformed array could still crash the process).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import pickle
import zipfile
import zlib
from pathlib import Path

import numpy as np

from poseguide.data.checks import check_sample, decode_or_size, files_fingerprint, parse_keypoints
from poseguide.data.record import RowError, Sample, SourceError
from poseguide.utils.images import DEFAULT_MAX_IMAGE_PIXELS

log = logging.getLogger(__name__)

KEYPOINT_THRESHOLD = 0.02  # HumanSD's keypoint_thresh: joints scored above it are labelled
MAPPING_KEYS = ("img_path", "pose_path", "prompt")
# What an MMPose result pickle may build: numpy arrays, dtypes and scalars (numpy 1 and 2
# module names). Python's dicts, lists, str and numbers need no class lookup.
_ALLOWED = {
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict")}


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not a numpy array part")


def read_pose_npz(path: Path) -> np.ndarray | list:
    """``arr_0`` of a HumanSD pose file: a numeric array, or the list of MMPose's per-person
    dicts, unpickled with numpy types only. Raises ``ValueError`` for anything else."""
    try:
        with zipfile.ZipFile(path) as archive, archive.open("arr_0.npy") as f:
            raw = io.BytesIO(f.read())
    except (zipfile.BadZipFile, KeyError, zlib.error, EOFError) as err:
        raise ValueError(f"not an .npz with arr_0 ({err})") from None
    version = np.lib.format.read_magic(raw)
    read_header = {(1, 0): np.lib.format.read_array_header_1_0}.get(
        version, np.lib.format.read_array_header_2_0
    )
    shape, _, dtype = read_header(raw)
    if not dtype.hasobject:
        raw.seek(0)
        return np.lib.format.read_array(raw, allow_pickle=False)
    try:
        array = _ArraysOnly(raw).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError,
            IndexError) as err:  # fmt: skip
        raise ValueError(f"refused: {err}") from None
    if not isinstance(array, np.ndarray) or array.shape != shape:
        raise ValueError(f"arr_0 is not the array its header declares ({shape})")
    return list(array.reshape(-1))


def people_keypoints(found: np.ndarray | list, size: tuple[int, int]) -> np.ndarray:
    """(P, 17, 3) x, y, v from a pose file's people (see the module docstring); v = 2 for a joint
    scored above :data:`KEYPOINT_THRESHOLD` inside the (width, height) image, else 0 (x, y = 0)."""
    if isinstance(found, np.ndarray):
        raw = list(found.reshape(-1, 17, 3))  # a numeric array: people x 17 x (x, y, score)
    else:
        raw = [p.get("keypoints") if isinstance(p, dict) else None for p in found]
    people = []
    for k, person in enumerate(raw):
        kp = np.asarray(person, dtype=np.float64) if person is not None else None
        if kp is None or kp.shape != (17, 3):
            shape = None if kp is None else kp.shape
            raise ValueError(f"person {k}: keypoints must be (17, 3) x, y, score, got {shape}")
        inside = (kp[:, 0] >= 0) & (kp[:, 1] >= 0) & (kp[:, 0] < size[0]) & (kp[:, 1] < size[1])
        labelled = inside & (kp[:, 2] > KEYPOINT_THRESHOLD)
        if labelled.any():
            xy = np.where(labelled[:, None], kp[:, :2], 0.0)
            people.append(np.concatenate([xy, 2.0 * labelled[:, None]], axis=1))
    return np.stack(people) if people else np.zeros((0, 17, 3))


def _read_mapping(path: Path) -> tuple[dict, bytes]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SourceError(f"HumanSD mapping file not found: {path}") from None
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SourceError(f"{path}: the mapping file is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise SourceError(f"{path}: expected an object {{key: {{img_path, pose_path, prompt}}}}")
    for key, entry in data.items():
        missing = [k for k in MAPPING_KEYS if not isinstance(entry, dict) or k not in entry]
        if missing:
            raise SourceError(f"{path}: entry {key!r} lacks {', '.join(missing)}; each entry "
                              f"needs {', '.join(MAPPING_KEYS)}")  # fmt: skip
    return data, raw


class HumanSDSource:
    """Rows of a HumanSD mapping file (see the module docstring)."""

    def __init__(
        self,
        mapping: str | Path,
        base: str | Path | None = None,
        *,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        limit: int | None = None,
    ) -> None:
        self.mapping = Path(mapping)
        self.base = Path(base) if base else self.mapping.parent
        self.name = f"humansd:{self.mapping}"
        self.max_image_pixels = max_image_pixels
        data, raw = _read_mapping(self.mapping)
        self.counts = {"entries": len(data), "missing_image": 0, "missing_pose": 0}
        self._entries: list[tuple[str, dict]] = []
        for key in sorted(data):
            entry = data[key]
            if not (self.base / entry["img_path"]).is_file():
                self.counts["missing_image"] += 1
            elif not (self.base / entry["pose_path"]).is_file():
                self.counts["missing_pose"] += 1
            else:
                self._entries.append((str(key), entry))
        gone = self.counts["missing_image"] + self.counts["missing_pose"]
        if gone:
            log.warning("%s: %d of %d entries left out (%d images and %d pose files missing "
                        "under %s)", self.mapping, gone, len(data), self.counts["missing_image"],
                        self.counts["missing_pose"], self.base)  # fmt: skip
        self.total = len(self._entries)
        self.limit = limit
        if limit is not None:
            self._entries = self._entries[:limit]
        self._digest = hashlib.sha256(raw).hexdigest()
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def ids(self) -> list[str]:
        return [key for key, _ in self._entries]

    def load(self, index: int, image: bool = True) -> Sample:
        if not 0 <= index < len(self._entries):
            raise IndexError(f"{self.name}: row {index} out of range (0..{len(self) - 1})")
        row, entry = self._entries[index]
        path, pose_path = self.base / entry["img_path"], self.base / entry["pose_path"]
        pixels, size = decode_or_size(path, row, self.max_image_pixels, image)
        try:
            keypoints = people_keypoints(read_pose_npz(pose_path), size)
        except (OSError, ValueError, TypeError) as err:  # TypeError: a person not a mapping
            raise RowError(row, "bad_keypoints", f"{pose_path}: {err}") from None
        if not len(keypoints):
            raise RowError(row, "bad_keypoints", f"{pose_path}: nobody with a joint scored "
                           f"above {KEYPOINT_THRESHOLD} inside the image")  # fmt: skip
        sample = Sample(
            id=row,
            image=pixels,
            caption=entry["prompt"],
            keypoints=parse_keypoints(keypoints, row),
            areas=None,
            meta={"source": "humansd", "path": str(path), "pose_path": str(pose_path)},
            size=size,
        )
        return check_sample(sample)

    def fingerprint(self) -> str:
        # The mapping's bytes plus each image's and pose file's size and mtime.
        if self._fingerprint is None:
            paths = (self.base / e[k] for _, e in self._entries for k in ("img_path", "pose_path"))
            parts = (self._digest, f"{len(self)}:{self.max_image_pixels}")
            self._fingerprint = files_fingerprint(parts, paths)
        return self._fingerprint

    def describe(self) -> dict:
        return {
            "kind": "humansd",
            "mapping": str(self.mapping),
            "base": str(self.base),
            "rows": len(self),
            "rows_present": self.total,
            **self.counts,
            "keypoint_threshold": KEYPOINT_THRESHOLD,
            "columns": {
                "id": "str (the mapping key)",
                "image": "img_path (relative to base)",
                "caption": "prompt",
                "keypoints": "(P, 17, 3) x, y, v from pose_path's MMPose results",
            },
        }
