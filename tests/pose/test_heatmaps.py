"""Gaussian heatmaps, the HumanSD binary mask and the ground-truth skeleton / keypoint masks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from poseguide.pose import heatmaps as hm
from poseguide.pose.skeleton import COCO17_LIMBS


def one_joint(x: float, y: float, v: float = 2.0, joint: int = 0) -> np.ndarray:
    people = np.zeros((1, 17, 3))
    people[0, joint] = (x, y, v)
    return people


def argmax_xy(channel: torch.Tensor) -> tuple[int, int]:
    """(column, row) of a 2-D map's maximum."""
    row, col = divmod(int(channel.argmax()), channel.shape[1])
    return col, row


@pytest.mark.parametrize(
    ("image_size", "heatmap_size", "keypoint", "pixel"),
    [
        # keypoint (x, y) maps to (x * w / W, y * h / H); the peak is the pixel containing it.
        ((512, 512), (128, 128), (100.5, 200.5), (25, 50)),  # -> (25.125, 50.125)
        ((512, 512), (64, 64), (333.3, 17.9), (41, 2)),  # -> (41.66, 2.24)
        ((300, 200), (75, 50), (151.7, 99.2), (37, 24)),  # -> (37.925, 24.8)
        ((512, 512), (128, 128), (0.3, 511.9), (0, 127)),  # corners: -> (0.075, 127.975)
        ((640, 480), (80, 120), (7.99, 3.99), (0, 0)),  # anisotropic: -> (0.99875, 0.9975)
        ((640, 480), (80, 120), (8.01, 4.01), (1, 1)),  # -> (1.00125, 1.0025)
    ],
)
def test_peak_lands_on_the_keypoint_pixel(image_size, heatmap_size, keypoint, pixel) -> None:
    maps = hm.gaussian_heatmaps(one_joint(*keypoint), image_size, heatmap_size, sigma=2.0)
    assert maps.shape == (17, heatmap_size[1], heatmap_size[0])
    assert maps.dtype == torch.float32
    assert argmax_xy(maps[0]) == pixel


def test_peak_is_one_at_a_pixel_centre_and_sigma_sets_the_width() -> None:
    # Image 512 -> heatmap 128: image x = 4 * heatmap x, so (102, 202) is pixel (25, 50)'s centre.
    sigma = 3.0
    maps = hm.gaussian_heatmaps(one_joint(102.0, 202.0), (512, 512), (128, 128), sigma=sigma)
    assert maps[0, 50, 25].item() == pytest.approx(1.0)
    # Three pixels to the right (distance sigma) and a 3-4-5 offset (distance 5).
    assert maps[0, 50, 28].item() == pytest.approx(math.exp(-0.5), rel=1e-6)
    assert maps[0, 50, 22].item() == pytest.approx(math.exp(-0.5), rel=1e-6)
    assert maps[0, 54, 28].item() == pytest.approx(math.exp(-25 / (2 * sigma**2)), rel=1e-6)
    wide = hm.gaussian_heatmaps(one_joint(102.0, 202.0), (512, 512), (128, 128), sigma=6.0)
    assert wide[0, 50, 31].item() == pytest.approx(math.exp(-0.5), rel=1e-6)


def test_absent_joints_give_zero_maps() -> None:
    people = one_joint(100.0, 100.0, v=2.0, joint=3)
    people[0, 7] = (200.0, 200.0, 0.0)  # unlabelled: has coordinates but v = 0
    people[0, 9] = (300.0, 300.0, 0.3)  # below min_score below
    maps = hm.gaussian_heatmaps(people, (512, 512), (64, 64), sigma=2.0, min_score=0.5)
    present = [j for j in range(17) if maps[j].max() > 0]
    assert present == [3]
    assert torch.count_nonzero(maps[9]) == 0
    empty = hm.gaussian_heatmaps(np.zeros((0, 17, 3)), (512, 512), (64, 48), sigma=2.0)
    assert empty.shape == (17, 48, 64) and torch.count_nonzero(empty) == 0


def test_scale_by_score_sets_the_peak() -> None:
    people = one_joint(102.0, 202.0, v=0.7)
    maps = hm.gaussian_heatmaps(people, (512, 512), (128, 128), sigma=2.0, scale_by_score=True)
    assert maps.max().item() == pytest.approx(0.7)
    plain = hm.gaussian_heatmaps(people, (512, 512), (128, 128), sigma=2.0)
    assert plain.max().item() == pytest.approx(1.0)


def test_two_people_combine_by_max() -> None:
    a = one_joint(102.0, 102.0, v=0.9)  # pixel centre (25.5, 25.5) on the 64 x 64 grid
    b = one_joint(110.0, 106.0, v=0.6)  # overlapping Gaussians of the same joint
    both = np.concatenate([a, b])
    kwargs = dict(image_size=(256, 256), heatmap_size=(64, 64), sigma=3.0, scale_by_score=True)
    combined = hm.gaussian_heatmaps(both, **kwargs)
    expected = torch.maximum(hm.gaussian_heatmaps(a, **kwargs), hm.gaussian_heatmaps(b, **kwargs))
    torch.testing.assert_close(combined, expected)
    assert combined.max().item() == pytest.approx(0.9)
    # At b's peak (27.5, 26.5), a is sqrt(5) px away: the larger of the two, not their sum.
    a_there = 0.9 * math.exp(-5 / (2 * 3.0**2))
    assert combined[0, 26, 27].item() == pytest.approx(max(0.6, a_there), rel=1e-6)


def test_accepts_tensors_and_single_people() -> None:
    people = one_joint(50.0, 60.0)
    ref = hm.gaussian_heatmaps(people, (128, 128), (32, 32), sigma=1.0)
    torch.testing.assert_close(
        hm.gaussian_heatmaps(torch.tensor(people), (128, 128), (32, 32), 1.0), ref
    )
    torch.testing.assert_close(hm.gaussian_heatmaps(people[0], (128, 128), (32, 32), 1.0), ref)


def test_batch_heatmaps_stacks_and_takes_per_image_sizes() -> None:
    a, b = one_joint(102.0, 202.0), one_joint(51.0, 101.0)
    out = hm.batch_heatmaps([a, b], [(512, 512), (256, 256)], (128, 128), sigma=2.0)
    assert out.shape == (2, 17, 128, 128)
    assert argmax_xy(out[0, 0]) == argmax_xy(out[1, 0]) == (25, 50)
    same = hm.batch_heatmaps([a, a], (512, 512), (128, 128), sigma=2.0)
    torch.testing.assert_close(same[0], same[1])
    assert hm.batch_heatmaps([], (512, 512), (16, 8), sigma=2.0).shape == (0, 17, 8, 16)
    with pytest.raises(ValueError, match="one per image"):
        hm.batch_heatmaps([a, b], [(512, 512)] * 3, (128, 128), sigma=2.0)


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="sigma"):
        hm.gaussian_heatmaps(one_joint(1, 1), (8, 8), (8, 8), sigma=0.0)
    with pytest.raises(ValueError, match="heatmap_size"):
        hm.gaussian_heatmaps(one_joint(1, 1), (8, 8), (8, 0), sigma=1.0)


# Two joints on a 2 x 3 grid. Detected means H > 0.05 (strictly: 0.05 itself is not detected).
H_EXAMPLE = torch.tensor(
    [
        [[0.00, 0.06, 0.50], [0.05, 0.01, 1.00]],
        [[0.20, 0.00, 0.30], [0.05, 0.90, 0.04]],
    ]
)[None]  # (1, 2, 2, 3)
# Per joint, detected: [[0,1,1],[0,0,1]] and [[1,0,1],[0,1,0]].
MASK_EXPECTED = {
    ("detected", "sum"): [[1, 1, 2], [0, 1, 1]],
    ("detected", "max"): [[1, 1, 1], [0, 1, 1]],
    # HumanSD as released, where(H > 0.05, 0, 1): [[1,0,0],[1,1,0]] and [[0,1,0],[1,0,1]].
    ("not_detected", "sum"): [[1, 1, 0], [2, 1, 1]],
    ("not_detected", "max"): [[1, 1, 0], [1, 1, 1]],
}


@pytest.mark.parametrize(("polarity", "reduction"), list(MASK_EXPECTED))
def test_binary_mask_polarity_and_reduction(polarity: str, reduction: str) -> None:
    mask = hm.binary_mask(H_EXAMPLE, threshold=0.05, polarity=polarity, reduction=reduction)
    expected = torch.tensor(MASK_EXPECTED[(polarity, reduction)], dtype=torch.float32)
    assert mask.shape == (1, 1, 2, 3) and mask.dtype == torch.float32
    torch.testing.assert_close(mask[0, 0], expected)


def test_binary_mask_defaults_are_humansd_and_batches_are_independent() -> None:
    batch = torch.cat([H_EXAMPLE, torch.zeros_like(H_EXAMPLE)])
    mask = hm.binary_mask(batch)  # not_detected, sum, threshold 0.05
    torch.testing.assert_close(
        mask[0, 0], torch.tensor(MASK_EXPECTED[("not_detected", "sum")]).float()
    )
    torch.testing.assert_close(
        mask[1, 0], torch.full((2, 3), 2.0)
    )  # nothing detected: J everywhere
    assert hm.MASK_POLARITIES == ("not_detected", "detected")
    assert hm.MASK_REDUCTIONS == ("sum", "max")


def test_binary_mask_rejects_bad_values_naming_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="'not_detected', 'detected'"):
        hm.binary_mask(H_EXAMPLE, polarity="pose")
    with pytest.raises(ValueError, match="'sum', 'max'"):
        hm.binary_mask(H_EXAMPLE, reduction="mean")
    with pytest.raises(ValueError, match=r"\(B, J, h, w\)"):
        hm.binary_mask(H_EXAMPLE[0])


def test_skeleton_mask_hand_example() -> None:
    # 80 x 80 image -> 8 x 8 mask (scale 0.1). Only the shoulders: (15, 35) and (65, 35) map to
    # the centres of pixels (1, 3) and (6, 3); the limb between them is row 3, columns 1..6.
    people = np.zeros((1, 17, 3))
    people[0, 5] = (15.0, 35.0, 2)
    people[0, 6] = (65.0, 35.0, 2)
    people[0, 9] = (5.0, 75.0, 0)  # unlabelled: not drawn
    thin = hm.skeleton_mask(people, (80, 80), (8, 8), limb_width=1.0, joint_radius=0.0)
    expected = torch.zeros(8, 8)
    expected[3, 1:7] = 1
    assert thin.shape == (1, 8, 8) and thin.dtype == torch.float32
    torch.testing.assert_close(thin[0], expected)
    # Joint discs of radius 1 add the four 4-neighbours of each joint pixel.
    round_ = hm.skeleton_mask(people, (80, 80), (8, 8), limb_width=1.0, joint_radius=1.0)
    for col, row in [(1, 2), (1, 4), (0, 3), (6, 2), (6, 4), (7, 3)]:
        expected[row, col] = 1
    torch.testing.assert_close(round_[0], expected)


def full_person() -> np.ndarray:
    """A standing person in a 512 x 512 image, every joint visible."""
    xy = [
        (256, 80), (266, 70), (246, 70), (280, 76), (232, 76), (310, 140), (202, 140),
        (330, 220), (182, 220), (340, 290), (172, 290), (290, 300), (222, 300),
        (295, 390), (217, 390), (300, 480), (212, 480),
    ]  # fmt: skip
    people = np.full((1, 17, 3), 2.0)
    people[0, :, :2] = xy
    return people


def test_skeleton_mask_covers_every_limb_midpoint_and_nothing_far_away() -> None:
    people = full_person()
    # Half-width 0.75 > sqrt(0.5): the centre of the pixel holding any point of a limb is covered.
    mask = hm.skeleton_mask(people, (512, 512), (64, 64), limb_width=1.5, joint_radius=1.0)[0]
    xy = people[0, :, :2] / 8.0  # mask coordinates
    for a, b in COCO17_LIMBS:
        mx, my = (xy[a] + xy[b]) / 2
        assert mask[int(my), int(mx)] == 1, f"limb {a}-{b} midpoint not covered"
    # Reference: distance from each pixel centre to the nearest limb segment, by brute force.
    centres = np.stack(np.meshgrid(np.arange(64) + 0.5, np.arange(64) + 0.5), -1).reshape(-1, 2)
    nearest = np.full(len(centres), np.inf)
    for a, b in COCO17_LIMBS:
        for t in np.linspace(0.0, 1.0, 401):
            point = xy[a] + t * (xy[b] - xy[a])
            nearest = np.minimum(nearest, np.linalg.norm(centres - point, axis=1))
    nearest = nearest.reshape(64, 64)
    assert not mask[torch.from_numpy(nearest > 1.1)].any()  # nothing beyond the joint radius
    assert mask.sum() < 0.15 * 64 * 64
    assert set(mask.unique().tolist()) == {0.0, 1.0}


def test_skeleton_mask_skips_limbs_with_a_missing_joint_and_handles_other_sizes() -> None:
    people = full_person()
    people[0, 9, 2] = 0  # left wrist missing: the forearm 7-9 is not drawn
    mask = hm.skeleton_mask(people, (512, 512), (64, 64), joint_radius=0.5)[0]
    forearm_mid = (people[0, 7, :2] + people[0, 9, :2]) / 2 / 8.0
    assert mask[int(forearm_mid[1]), int(forearm_mid[0])] == 0
    # Non-square: 300 x 200 image -> 75 x 50 mask; (150, 102) -> (37.5, 25.5), pixel (37, 25).
    single = one_joint(150.0, 102.0)
    mask = hm.skeleton_mask(single, (300, 200), (75, 50), joint_radius=0.5)
    assert mask.shape == (1, 50, 75)
    assert mask.sum() == 1 and mask[0, 25, 37] == 1
    assert hm.skeleton_mask(np.zeros((0, 17, 3)), (300, 200), (75, 50)).sum() == 0


def test_keypoint_mask_reduces_gaussians() -> None:
    people = full_person()
    maps = hm.gaussian_heatmaps(people, (512, 512), (64, 64), sigma=1.5)
    soft = hm.keypoint_mask(people, (512, 512), (64, 64), sigma=1.5)
    assert soft.shape == (1, 64, 64)
    torch.testing.assert_close(soft[0], maps.amax(0))
    assert soft.min() >= 0.0 and soft.max() <= 1.0
    summed = hm.keypoint_mask(people, (512, 512), (64, 64), sigma=1.5, reduction="sum")
    torch.testing.assert_close(summed[0], maps.sum(0))
    with pytest.raises(ValueError, match="'sum', 'max'"):
        hm.keypoint_mask(people, (512, 512), (64, 64), sigma=1.5, reduction="mean")
