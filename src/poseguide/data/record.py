"""The sample record every source yields, and the error a bad row raises.

A source is anything with ``__len__``, ``ids`` and ``load(index) -> Sample``; see
:class:`Source`. Sources decode lazily: building one never reads every image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from PIL import Image

from poseguide.errors import UserError

# Why a row can be bad; `skip` reports count rows per reason under these names.
ROW_PROBLEMS: tuple[str, ...] = (
    "missing_file",  # an image or pose file does not exist, a null image cell, no pose at all
    "unreadable_image",  # not an image, corrupt or truncated
    "zero_size",  # an empty (0-byte) file, or width or height 0
    "too_many_pixels",  # over data.max_image_pixels (decompression-bomb guard)
    "pose_size_mismatch",  # pose image (or the size keypoints refer to) differs from the image
    "bad_caption",  # empty, whitespace only, or not a string
    "bad_keypoints",  # wrong shape, NaN/inf, visibility not in {0, 1, 2}
)


class SourceError(UserError, ValueError):
    """A source cannot be opened at all (missing column, malformed manifest line, unreachable
    hub dataset...); unlike :class:`RowError` it is never skipped. The message says what to do."""


class RowError(UserError, ValueError):
    """A dataset row cannot be used; names the row and the problem.

    ``RowError(message)`` with one argument (what a DataLoader worker's error is rebuilt from
    in the main process) keeps the message as it is."""

    def __init__(self, row: str, problem: str | None = None, detail: str | None = None) -> None:
        if problem is None:  # rebuilt from its message
            self.row, self.problem, self.detail = "", "unreadable_image", row
            super().__init__(row)
            return
        if problem not in ROW_PROBLEMS:
            raise ValueError(f"unknown row problem {problem!r}")
        self.row, self.problem, self.detail = row, problem, detail or ""
        super().__init__(f"row {row}: {problem}: {detail}")


@dataclass
class Sample:
    """One training or evaluation example at its original size.

    ``keypoints`` are ground truth in COCO-17 layout, (P, 17, 3) x, y, v in ``image`` pixels,
    or None when the source has none. ``areas`` (P,) are the people's segment areas in pixels
    when known (COCO); OKS falls back to ``0.53 * box area`` otherwise. ``image`` is None when
    the row was loaded without its pixels (``load(index, image=False)``: training from cached
    latents); ``size`` is then the size read from the image's header.
    """

    id: str
    image: Image.Image | None  # RGB; None = not decoded (``size`` still known)
    caption: str
    pose_image: Image.Image | None = None  # RGB skeleton, same size as image; None = render it
    keypoints: np.ndarray | None = None
    areas: np.ndarray | None = None
    meta: dict = field(default_factory=dict)  # where the row came from (path, shard, index)
    size: tuple[int, int] | None = None  # (width, height); taken from ``image`` when given

    def __post_init__(self) -> None:
        if self.image is not None:
            self.size = self.image.size
        elif self.size is None:
            raise ValueError(f"sample {self.id}: an image or its size is needed")

    @property
    def original_size(self) -> tuple[int, int]:
        """(width, height) of the original image."""
        return self.size


class Source(Protocol):
    """A dataset source: a fixed, ordered list of rows, decoded on demand."""

    name: str

    def __len__(self) -> int: ...

    def ids(self) -> list[str]:
        """Row ids in order (cheap: no image decoding)."""
        ...

    def load(self, index: int, image: bool = True) -> Sample:
        """Decode row ``index``; raises :class:`RowError` for a bad row. ``image=False`` leaves
        the image's pixels undecoded (``Sample.image`` None, its size read from the header):
        what training needs when the latent cache holds the image."""
        ...

    def fingerprint(self) -> str:
        """A short hash that changes when the rows' content would change."""
        ...

    def describe(self) -> dict:
        """Counts, columns and types for ``poseguide data inspect``."""
        ...
