"""Keypoint constants, the COCO-17 -> OpenPose-18 conversion, flipping and validation."""

from __future__ import annotations

import numpy as np
import pytest

from poseguide.pose import skeleton as sk


def person(seed: int = 0, v: int = 2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    kps = np.zeros((17, 3))
    kps[:, :2] = rng.uniform(10, 500, size=(17, 2))
    kps[:, 2] = v
    return kps


def test_constants_are_consistent() -> None:
    assert len(sk.COCO17_NAMES) == 17 and len(sk.OPENPOSE18_NAMES) == 18
    assert len(sk.OPENPOSE18_COLORS) == 18 and len(sk.COCO17_OKS_SIGMAS) == 17
    flip = sk.COCO17_FLIP_MAP
    assert sorted(flip) == list(range(17)) and all(flip[flip[i]] == i for i in range(17))
    for i, j in enumerate(flip):  # the flip map swaps exactly left and right names
        assert sk.COCO17_NAMES[j] == sk.COCO17_NAMES[i].replace("left", "X").replace(
            "right", "left"
        ).replace("X", "right")
    for op, coco in enumerate(sk.OPENPOSE18_FROM_COCO17):
        if coco is not None:
            assert sk.OPENPOSE18_NAMES[op] == sk.COCO17_NAMES[coco]
    assert sk.OPENPOSE18_NAMES[sk.OPENPOSE18_NECK] == "neck"


def test_openpose_conversion_maps_every_joint() -> None:
    coco = person()
    op = sk.coco17_to_openpose18(coco)
    assert op.shape == (1, 18, 3)
    for name_index, name in enumerate(sk.OPENPOSE18_NAMES):
        if name == "neck":
            expected = (coco[5, :2] + coco[6, :2]) / 2
        else:
            expected = coco[sk.COCO17_NAMES.index(name), :2]
        np.testing.assert_allclose(op[0, name_index, :2], expected)
    assert (op[0, :, 2] == 2).all()


@pytest.mark.parametrize("missing", [5, 6])
def test_no_neck_without_both_shoulders(missing: int) -> None:
    coco = person()
    coco[missing, 2] = 0
    op = sk.coco17_to_openpose18(coco)[0]
    assert op[sk.OPENPOSE18_NECK, 2] == 0
    shoulder = sk.OPENPOSE18_FROM_COCO17.index(missing)
    assert op[shoulder, 2] == 0 and (op[shoulder, :2] == 0).all()


def test_conversion_min_score_drops_low_confidence_joints() -> None:
    coco = person()
    coco[:, 2] = np.linspace(0.05, 0.95, 17)
    op = sk.coco17_to_openpose18(coco, min_score=0.5)[0]
    for op_index, coco_index in enumerate(sk.OPENPOSE18_FROM_COCO17):
        if coco_index is not None:
            assert (op[op_index, 2] > 0) == (coco[coco_index, 2] > 0.5)


def test_flip_swaps_sides_and_mirrors_x() -> None:
    coco = person()
    coco[3, 2] = 0  # an unlabelled left ear stays unlabelled (as the right ear after the flip)
    flipped = sk.flip_keypoints(coco, width=512)[0]
    assert flipped[4, 2] == 0
    np.testing.assert_allclose(flipped[6, 0], 512 - coco[5, 0])  # right shoulder <- left
    np.testing.assert_allclose(flipped[6, 1], coco[5, 1])
    np.testing.assert_allclose(sk.flip_keypoints(flipped, 512)[0], coco)  # an involution


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((2, 16, 3)), r"shape \(2, 16, 3\); expected \(P, 17, 3\)"),
        (np.zeros((17, 2)), r"shape \(17, 2\)"),
        ("nonsense", "not a numeric array"),
        ([[1, 2], [3]], "not a numeric array"),
    ],
)
def test_bad_shapes_are_reported(array: object, message: str) -> None:
    with pytest.raises(sk.KeypointError, match=message):
        sk.validate_keypoints(array)


def test_bad_values_name_person_and_joint() -> None:
    people = np.stack([person(0), person(1)])
    people[1, 9, 0] = np.nan
    with pytest.raises(
        sk.KeypointError, match=r"f.json: person 1, joint 9 \(left_wrist\): x is nan"
    ):
        sk.validate_keypoints(people, where="f.json")
    people[1, 9, 0] = 3.0
    people[0, 15, 2] = 3
    with pytest.raises(
        sk.KeypointError, match=r"person 0, joint 15 \(left_ankle\): third value is 3"
    ):
        sk.validate_keypoints(people)
    people[..., 2] = 0.5  # a score is fine for estimator output, not for ground truth
    assert sk.validate_keypoints(people, kind="score").shape == (2, 17, 3)
    people[1, 3, 2] = 1.5
    with pytest.raises(sk.KeypointError, match=r"person 1, joint 3 \(left_ear\).*confidence"):
        sk.validate_keypoints(people, kind="score")
    with pytest.raises(sk.KeypointError, match="expected 0 \\(unlabelled\\)"):
        sk.validate_keypoints(people, kind="visibility")


def test_flat_coco_lists_are_accepted() -> None:
    flat = person().reshape(-1).tolist()
    assert sk.validate_keypoints(flat).shape == (1, 17, 3)
    assert sk.validate_keypoints([flat, flat]).shape == (2, 17, 3)
    assert sk.validate_keypoints([]).shape == (0, 17, 3)
