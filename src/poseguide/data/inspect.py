"""Look at a source: a text summary (``poseguide data inspect``) and a preview grid
(``poseguide data preview``). Bad rows are shown with their problem, never raised."""

from __future__ import annotations

import textwrap
from pathlib import Path

from PIL import Image

from poseguide.data.record import RowError, Sample, Source
from poseguide.data.sources import source_from_cli
from poseguide.data.validate import load_checked
from poseguide.pose.render import DEFAULT_RENDER_STYLE, render_skeleton
from poseguide.utils.grid import image_grid
from poseguide.utils.io import atomic_save_image

__all__ = ["inspect_source", "preview_grid", "source_from_cli"]


def _size(image: Image.Image | None) -> str:
    return "-" if image is None else f"{image.size[0]}x{image.size[1]}"


def _row_line(source: Source, index: int, width: int = 60) -> str:
    try:
        sample = load_checked(source, index)
    except RowError as err:
        return f"  [{index}] {err.row}  BAD {err.problem}: {err.detail}"
    people = "-" if sample.keypoints is None else str(len(sample.keypoints))
    pose = _size(sample.pose_image) if sample.pose_image is not None else "render"
    caption = textwrap.shorten(sample.caption, width=width, placeholder="...")
    return (
        f"  [{index}] {sample.id}  image {_size(sample.image)}  pose {pose}  people {people}  "
        f"caption {caption!r}"
    )


def inspect_source(source: Source, n: int = 3) -> str:
    """Counts, columns and types (from ``describe()``), and the first ``n`` rows: id, sizes,
    number of people and caption (or the row's problem)."""
    info = dict(source.describe())
    columns = info.pop("columns", {})
    lines = [f"source: {source.name}"]
    for key, value in info.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        lines.append(f"  {key}: {value}")
    lines.append("columns:")
    lines += [f"  {name}: {kind}" for name, kind in columns.items()]
    shown = min(n, len(source))
    lines.append(f"first {shown} rows:")
    lines += [_row_line(source, i) for i in range(shown)]
    return "\n".join(lines)


def _pose_for(sample: Sample, style: str) -> tuple[Image.Image | None, str]:
    """The sample's pose image, else one rendered from its keypoints; and where it came from."""
    if sample.pose_image is not None:
        return sample.pose_image, "pose: source"
    if sample.keypoints is None:
        return None, "pose: none"
    return Image.fromarray(render_skeleton(sample.keypoints, sample.image.size, style)), (
        "pose: rendered from keypoints"
    )


def _preview_row(source: Source, index: int, cell: int, style: str) -> tuple[list, str, bool]:
    """(thumbnails, text, is_error) for one row."""
    try:
        sample = load_checked(source, index)
    except RowError as err:
        return [None, None], f"[{index}] {err.row}\n{err.problem}: {err.detail}", True
    pose, origin = _pose_for(sample, style)
    people = "?" if sample.keypoints is None else len(sample.keypoints)
    head = f"[{index}] {sample.id}  {_size(sample.image)}  people {people}  {origin}"
    return [sample.image, pose], f"{head}\n{sample.caption}", False


def preview_grid(
    source: Source,
    out_png: str | Path,
    n: int = 6,
    cell: int = 192,
    style: str = DEFAULT_RENDER_STYLE,
) -> Path:
    """Save a grid of the first ``n`` rows, one per line: image | pose | id and caption.

    Rows without a pose image show the skeleton rendered from their keypoints (``style``); bad
    rows show their problem in red. The PNG is written atomically; returns its path.
    """
    rows = [_preview_row(source, i, cell, style) for i in range(min(n, len(source)))]
    if not rows:
        grid = image_grid([], [f"{source.name}: no rows"], cell=cell)
    else:
        images, texts, errors = zip(*rows, strict=True)
        grid = image_grid(list(images), list(texts), cell=cell, errors=list(errors))
    return atomic_save_image(out_png, grid)
