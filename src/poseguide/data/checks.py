"""Decoding and row checks shared by every source.

Every source decodes its images with :func:`open_image` and finishes each row with
:func:`check_sample`, so a bad row gives the same :class:`~poseguide.data.record.RowError` problem
whatever the source (the names are :data:`~poseguide.data.record.ROW_PROBLEMS`):

* ``missing_file``: the file does not exist (or a dataset cell is null).
* ``zero_size``: the file is empty (0 bytes), or its header says width or height 0.
* ``too_many_pixels``: width * height is over the limit (``data.max_image_pixels``). The size is
  read from the header before any pixel is decoded, so a decompression bomb costs nothing.
* ``unreadable_image``: not an image, corrupt or truncated. Images are decoded in full here (PIL
  decodes lazily), PNG chunk checksums are verified, and ``ImageFile.LOAD_TRUNCATED_IMAGES`` must
  stay False (a warning is logged once if some other library switched it on).
* ``pose_size_mismatch``, ``bad_caption``, ``bad_keypoints``: see :func:`check_sample`.

Pixels are returned as stored: EXIF orientation is not applied, because COCO keypoints are given in
stored-pixel coordinates.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from poseguide.data.record import RowError, Sample
from poseguide.pose.io import load_pose_json, parse_pose
from poseguide.pose.skeleton import KeypointError, validate_keypoints
from poseguide.utils.images import ImageReadError, ImageSource, read_image, read_image_size

log = logging.getLogger(__name__)

# The config's default, used when a source is built without a config.

ImageInput = ImageSource


def open_image(src: ImageInput, row: str, max_pixels: int, what: str = "image") -> Image.Image:
    """Decode a row's untrusted image in full (:func:`poseguide.utils.images.read_image`, stored
    pixels, no EXIF rotation) and return it as an RGB PIL image.

    ``src`` is a file path or the encoded bytes; ``row`` and ``what`` (e.g. ``"pose image"`` or
    ``"column 'image'"``) name it in errors. Raises :class:`RowError` with problem
    ``missing_file``, ``zero_size``, ``too_many_pixels`` or ``unreadable_image``.
    """
    try:
        return read_image(src, max_pixels, what)
    except ImageReadError as err:
        raise RowError(row, err.problem, err.detail) from None


def open_image_size(
    src: ImageInput, row: str, max_pixels: int, what: str = "image"
) -> tuple[int, int]:
    """(width, height) of a row's image from its header, no pixel decoded
    (:func:`poseguide.utils.images.read_image_size`); the errors of :func:`open_image` that the
    header shows (a truncated body shows only when decoding)."""
    try:
        return read_image_size(src, max_pixels, what)
    except ImageReadError as err:
        raise RowError(row, err.problem, err.detail) from None


def decode_or_size(
    src: ImageInput, row: str, max_pixels: int, decode: bool = True, what: str = "image"
) -> tuple[Image.Image | None, tuple[int, int]]:
    """(the decoded image, its size) when ``decode``, else (None, the size from its header)."""
    if decode:
        image = open_image(src, row, max_pixels, what)
        return image, image.size
    return None, open_image_size(src, row, max_pixels, what)


def parse_keypoints(raw: object, row: str, where: str = "keypoints") -> np.ndarray | None:
    """(P, 17, 3) float64 ground-truth keypoints from a dataset cell, or None when absent.

    Accepts a list of people (each 17 ``[x, y, v]`` triples or 51 flat COCO numbers), one flat
    person, a keypoint-file mapping (:mod:`poseguide.pose.io`), or any of these as a JSON string.
    Raises :class:`RowError` ``bad_keypoints`` naming the person and joint.
    """
    if raw is None:
        return None
    try:
        if isinstance(raw, str):
            raw = load_pose_json(raw, where)
        if isinstance(raw, dict):
            return parse_pose(raw, where).people
        return validate_keypoints(raw, where=where)
    except KeypointError as err:
        raise RowError(row, "bad_keypoints", str(err)) from None


def parse_areas(raw: object, row: str, num_people: int | None) -> np.ndarray | None:
    """(P,) float64 person areas in pixels, or None; must be finite, >= 0, one per person."""
    if raw is None:
        return None
    try:
        areas = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        raise RowError(row, "bad_keypoints", f"areas {raw!r} are not a list of numbers") from None
    if areas.ndim != 1 or (num_people is not None and areas.shape[0] != num_people):
        raise RowError(
            row,
            "bad_keypoints",
            f"areas have shape {areas.shape}; expected one area per person ({num_people},)",
        )
    if not np.isfinite(areas).all() or (areas < 0).any():
        raise RowError(row, "bad_keypoints", f"areas must be finite and >= 0, got {areas.tolist()}")
    return areas


def check_caption(caption: object, row: str) -> str:
    """Return ``caption`` if it is a non-empty string, else raise ``bad_caption``."""
    if not isinstance(caption, str):
        kind = "missing (null)" if caption is None else f"a {type(caption).__name__}"
        raise RowError(row, "bad_caption", f"caption is {kind}, expected a non-empty string")
    if not caption.strip():
        raise RowError(row, "bad_caption", f"caption is empty or whitespace only ({caption!r})")
    return caption


def check_declared_size(
    size: tuple[int, int], declared: tuple, row: str, path: object, says: str
) -> None:
    """``pose_size_mismatch`` when the image's ``size`` (width, height) is not the size its
    keypoints refer to.

    ``declared`` is (width, height) as the source states it (None parts: not stated); ``says``
    names who states it (e.g. "line 3", "person_keypoints_val2017.json").
    """
    if None not in declared and tuple(declared) != tuple(size):
        (w, h), (dw, dh) = size, declared
        raise RowError(
            row,
            "pose_size_mismatch",
            f"{path} is {w}x{h} but {says} says {dw}x{dh}; the keypoints would not line up "
            "with the image",
        )


def check_sample(sample: Sample) -> Sample:
    """Cross-field checks on a decoded sample; returns it with keypoints as (P, 17, 3) float64.

    ``pose_size_mismatch`` when the pose image's size differs from the image's; ``bad_caption``
    for an empty, whitespace-only or non-string caption; ``bad_keypoints`` for keypoints of the
    wrong shape, non-finite values or visibility outside {0, 1, 2}, or areas that do not match.
    """
    row = sample.id
    check_caption(sample.caption, row)
    if sample.pose_image is not None and sample.pose_image.size != sample.original_size:
        (pw, ph), (w, h) = sample.pose_image.size, sample.original_size
        raise RowError(
            row, "pose_size_mismatch", f"pose image is {pw}x{ph} but the image is {w}x{h}"
        )
    if sample.keypoints is not None:
        sample.keypoints = parse_keypoints(sample.keypoints, row)
    if sample.areas is not None:
        num_people = None if sample.keypoints is None else sample.keypoints.shape[0]
        sample.areas = parse_areas(sample.areas, row, num_people)
    return sample


def stat_token(path: Path) -> str:
    """A cheap token that changes when a file changes (size and mtime), for fingerprints."""
    try:
        st = path.stat()
    except OSError:
        return "missing"
    return f"{st.st_size}:{st.st_mtime_ns}"


def files_fingerprint(parts: Iterable[str], paths: Iterable[Path]) -> str:
    """A short hash of ``parts`` (e.g. an index file's digest, the row count and limits) and of
    each file's :func:`stat_token` (one stat per file, no reads)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
    for path in paths:
        digest.update(stat_token(path).encode())
    return digest.hexdigest()[:16]
