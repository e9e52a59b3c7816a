"""Keypoints move exactly with their image through stretch, crop, pad and flip."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from poseguide.pose.transforms import (
    Placement,
    hflip,
    place_image,
    place_keypoints,
    plan_resize,
    restore_image,
)


def dots_image(size: tuple[int, int], points: np.ndarray, sigma: float = 3.0) -> Image.Image:
    """A float image with one Gaussian blob centred on each (continuous) keypoint."""
    ys, xs = np.mgrid[0 : size[1], 0 : size[0]] + 0.5  # pixel centres
    blobs = [np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2)) for x, y in points]
    return Image.fromarray(np.max(blobs, axis=0).astype(np.float32), mode="F")


def centroid(image: Image.Image, near: np.ndarray, window: int = 16) -> np.ndarray:
    """Intensity centroid (continuous coordinates) of the blob around ``near``."""
    a = np.asarray(image, dtype=np.float64)
    x0, y0 = (max(int(v) - window, 0) for v in near)
    patch = a[y0 : y0 + 2 * window, x0 : x0 + 2 * window]
    ys, xs = np.mgrid[0 : patch.shape[0], 0 : patch.shape[1]]
    total = patch.sum()
    return np.array([(xs * patch).sum() / total + x0 + 0.5, (ys * patch).sum() / total + y0 + 0.5])


SOURCE = (300, 200)
POINTS = np.array([[40.3, 50.7], [150.0, 100.0], [260.5, 160.2], [20.0, 180.0], [280.0, 30.0]])


@pytest.mark.parametrize("mode", ["stretch", "crop", "pad"])
@pytest.mark.parametrize("size", [(128, 128), (96, 160), (512, 256)])
def test_keypoints_follow_the_image(mode: str, size: tuple[int, int]) -> None:
    placement = plan_resize(SOURCE, size, mode)
    people = np.concatenate([POINTS, np.full((5, 1), 2.0)], axis=1)
    people = np.concatenate([people, np.zeros((12, 3))])[None]  # 5 labelled joints
    image = place_image(dots_image(SOURCE, POINTS, sigma=4), placement, Image.Resampling.BILINEAR)
    moved = place_keypoints(people, placement)[0]
    assert image.size == size
    for j in range(5):
        if moved[j, 2] == 0:  # cropped away: the blob must be gone (or cut) too
            continue
        margin = 12 * max(placement.scale) + 2
        x, y = moved[j, :2]
        if margin < x < size[0] - margin and margin < y < size[1] - margin:
            np.testing.assert_allclose(centroid(image, moved[j, :2]), moved[j, :2], atol=0.25)


def test_plans() -> None:
    assert plan_resize((300, 200), (100, 100), "stretch") == Placement(
        (300, 200), (100, 100), (100, 100), (0, 0)
    )
    crop = plan_resize((300, 200), (100, 100), "crop")
    assert crop.resized == (150, 100) and crop.offset == (-25, 0)
    pad = plan_resize((300, 200), (100, 100), "pad")
    assert pad.resized == (100, 67) and pad.offset == (0, 16)
    with pytest.raises(ValueError, match="unknown resize mode 'zoom'"):
        plan_resize((3, 2), (1, 1), "zoom")
    with pytest.raises(ValueError, match="must be positive"):
        plan_resize((0, 2), (1, 1), "pad")


def test_cropped_joints_become_unlabelled() -> None:
    placement = plan_resize((300, 100), (100, 100), "crop")  # keeps x in [100, 200)
    people = np.zeros((1, 17, 3))
    people[0, :3] = [[10, 50, 2], [150, 50, 2], [290, 50, 1]]
    moved = place_keypoints(people, placement)[0]
    assert moved[0, 2] == 0 and moved[2, 2] == 0 and moved[1, 2] == 2
    np.testing.assert_allclose(moved[1, :2], [50, 50])


@pytest.mark.parametrize("mode", ["stretch", "pad"])
def test_restore_inverts_place(mode: str) -> None:
    rng = np.random.default_rng(0)
    smooth = Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).resize(SOURCE)
    placement = plan_resize(SOURCE, (256, 256), mode)
    restored = restore_image(place_image(smooth, placement), placement)
    assert restored.size == SOURCE
    diff = np.abs(np.asarray(restored, float) - np.asarray(smooth, float))
    assert diff[4:-4, 4:-4].mean() < 4.0


def test_restore_crop_keeps_the_visible_part() -> None:
    image = Image.new("RGB", (300, 100), (200, 10, 10))
    placement = plan_resize(image.size, (100, 100), "crop")
    restored = np.asarray(restore_image(place_image(image, placement), placement))
    assert restored.shape == (100, 300, 3)
    assert (restored[:, 110:190] == (200, 10, 10)).all()  # the centre came back
    assert (restored[:, :90] == 0).all() and (restored[:, 210:] == 0).all()  # cropped: black


def test_hflip_moves_blobs_with_keypoints() -> None:
    people = np.zeros((1, 17, 3))
    people[0, 5] = [40.3, 50.7, 2]  # left shoulder
    image = dots_image(SOURCE, people[0, 5:6, :2])
    flipped_image, flipped = hflip(image, people)
    assert flipped[0, 5, 2] == 0 and flipped[0, 6, 2] == 2  # now the right shoulder
    np.testing.assert_allclose(
        centroid(flipped_image, flipped[0, 6, :2]), flipped[0, 6, :2], atol=0.2
    )


def test_image_size_mismatch_is_an_error() -> None:
    placement = plan_resize((10, 10), (8, 8))
    with pytest.raises(ValueError, match="planned for"):
        place_image(Image.new("RGB", (11, 10)), placement)
