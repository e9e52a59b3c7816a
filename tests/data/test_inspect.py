"""`data inspect` text and the `data preview` grid, bad rows included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from poseguide.data.inspect import inspect_source, preview_grid
from poseguide.data.manifest import ManifestSource
from poseguide.pose.render import render_skeleton


def source(make) -> ManifestSource:
    make.write("a.png", make.pixels(40, 30, 0))
    make.write("a_pose.png", make.pixels(40, 30, 1))
    make.write("b.png", make.pixels(30, 40, 2))
    person = make.person(3, 30, 40)
    rows = [
        {"id": "a", "image": "a.png", "pose_image": "a_pose.png", "caption": "a person waving"},
        {"id": "b", "image": "b.png", "keypoints": [person.tolist()], "caption": "rendered"},
        {"id": "c", "image": "missing.png", "pose_image": "a_pose.png", "caption": "bad"},
    ]
    return ManifestSource(make.manifest(rows))


def test_inspect_source(make) -> None:
    text = inspect_source(source(make), n=3)
    assert "source: manifest:" in text and "rows: 3" in text and "with_keypoints: 1" in text
    assert "columns:" in text and "pose_image: path (optional)" in text
    assert "[0] a  image 40x30  pose 40x30  people -  caption 'a person waving'" in text
    assert "[1] b  image 30x40  pose render  people 1" in text
    assert "[2] c  BAD missing_file: image" in text


def test_preview_grid(make, tmp_path: Path) -> None:
    src = source(make)
    out = preview_grid(src, tmp_path / "out" / "grid.png", n=6, cell=64)
    grid = np.asarray(Image.open(out).convert("RGB"))
    assert grid.shape == (8 + 3 * (64 + 8), 4 * 64 + 4 * 8, 3)
    # Row b has no pose image: its skeleton is rendered from the keypoints, scaled into the cell.
    pose_cell = grid[8 + 72 : 8 + 72 + 64, 8 + 72 : 8 + 72 + 64]
    sample = src.load(1)
    expected = render_skeleton(sample.keypoints, sample.image.size)
    assert (pose_cell.sum(axis=2) > 0).any() and expected.any()
    # The bad row's image cells are placeholders.
    assert (grid[8 + 2 * 72 : 8 + 2 * 72 + 64, 8 : 8 + 64] == 200).all()
