"""Pose-specific OKS, detection rate and person-count error (poseguide.evaluate.controls)."""

import numpy as np
import pytest

from poseguide.evaluate.controls import moved_pose, placement_summary, pose_specific_rows
from poseguide.pose.oks import box_from_keypoints, oks
from poseguide.synth import make_sample


def _person(seed: int, index: int) -> np.ndarray:
    return make_sample(seed, index, (128, 128), 0.0).keypoints[0].astype(np.float64)


def _record(index: int, gt: np.ndarray, preds: list[np.ndarray], area: float = 900.0) -> dict:
    return {"id": f"r{index}", "index": index, "gt": gt[None].reshape(1, -1).tolist(),
            "preds": [p.reshape(-1).tolist() for p in preds], "scores": [0.9] * len(preds),
            "num_dets": len(preds), "num_gt": 1, "areas": [area]}  # fmt: skip


def test_moved_pose_takes_the_targets_centre_and_size() -> None:
    target, other = _person(1, 0), _person(1, 1)
    moved = moved_pose(other, target)
    a, b = box_from_keypoints(moved), box_from_keypoints(target)
    np.testing.assert_allclose(a[:2] + a[2:] / 2, b[:2] + b[2:] / 2, atol=1e-9)
    np.testing.assert_allclose(np.sqrt(a[2] * a[3]), np.sqrt(b[2] * b[3]), rtol=1e-9)
    # the shape is the other pose's: the same up to scale and shift
    labelled = other[:, 2] > 0
    ratio = np.sqrt(b[2] * b[3]) / np.sqrt(box_from_keypoints(other)[2:].prod())
    d_moved = moved[labelled, :2] - moved[labelled, :2].mean(0)
    d_other = (other[labelled, :2] - other[labelled, :2].mean(0)) * ratio
    np.testing.assert_allclose(d_moved, d_other, atol=1e-9)
    assert np.array_equal(moved[:, 2], other[:, 2])
    assert moved_pose(np.zeros((17, 3)), target) is None


def test_following_the_pose_scores_above_placing_a_person() -> None:
    people = [_person(1, i) for i in range(6)]
    exact = [_record(i, p, [p]) for i, p in enumerate(people)]  # the generated pose is the truth
    rows = pose_specific_rows(exact)
    assert [r["oks"] for r in rows] == pytest.approx([1.0] * 6)
    for k, row in enumerate(rows):
        moved = moved_pose(people[(k + 1) % 6], people[k])
        want = oks(people[k], moved, 900.0)
        assert row["oks_moved"] == pytest.approx(want)
        assert row["pose_specific"] == pytest.approx(1.0 - want)
        assert row["pose_specific"] > 0.05
    # a model that draws the next row's pose, moved onto the target, scores the opposite
    placed = [_record(i, p, [moved_pose(people[(i + 1) % 6], p)]) for i, p in enumerate(people)]
    for k, row in enumerate(pose_specific_rows(placed)):
        drawn = moved_pose(people[(k + 1) % 6], people[k])
        assert row["oks_moved"] == pytest.approx(1.0)
        assert row["oks"] == pytest.approx(oks(drawn, people[k], 900.0))
        assert row["pose_specific"] < -0.05


def test_detection_rate_and_person_count_error() -> None:
    people = [_person(1, i) for i in range(4)]
    records = [_record(0, people[0], []), _record(1, people[1], [people[1]]),
               _record(2, people[2], [people[2], people[3]]),
               _record(3, people[3], [people[3]])]  # fmt: skip
    summary = placement_summary(records, n=200, confidence=0.95, seed=0)
    assert summary["detection_rate"]["mean"] == pytest.approx(0.75)
    assert summary["person_count_error"]["mean"] == pytest.approx(0.5)  # |0-1|, 0, |2-1|, 0
    ps = summary["pose_specific_oks"]
    assert ps["n"] == 4 and ps["ci_low"] <= ps["mean"] <= ps["ci_high"]
