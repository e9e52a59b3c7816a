"""Pseudo ground truth in one module: the rule, the estimator a config uses, shard packing and
evaluation's JSON store (the cache's use of it: tests/data/test_cache.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from poseguide.config import load_config
from poseguide.pose.detections import Detections
from poseguide.pseudo import (
    PseudoShards,
    pseudo_estimator_config,
    pseudo_ground_truth,
    pseudo_rows,
    pseudo_shards,
    stored_pseudo,
)


class CountingEstimator:
    """One person per image: joint j at (j, 2j) with score j / 16, box (10, 20)-(40, 80)."""

    def __init__(self) -> None:
        self.images = 0

    def estimate_people(self, images: list) -> list[Detections]:
        self.images += len(images)
        joints = np.arange(17, dtype=np.float64)
        keypoints = np.stack([joints, 2 * joints, joints / 16], axis=-1)[None]
        box = np.array([[10.0, 20.0, 40.0, 80.0]])
        return [Detections(keypoints, np.array([0.9]), box, (64, 64)) for _ in images]


def test_the_rule_labels_sure_joints_and_takes_053_of_the_box() -> None:
    (detections,) = CountingEstimator().estimate_people([None])
    keypoints, areas = pseudo_ground_truth(detections)
    assert keypoints.shape == (1, 17, 3)
    assert (keypoints[0, :, 2] == np.where(np.arange(17) / 16 >= 0.5, 2.0, 0.0)).all()
    assert np.array_equal(keypoints[0, :, :2], detections.keypoints[0, :, :2])
    assert areas == pytest.approx([0.53 * 30 * 60])


def test_only_rows_without_keypoints_are_estimated() -> None:
    class Sample:
        def __init__(self, keypoints) -> None:
            self.keypoints, self.image = keypoints, np.zeros((8, 8, 3), np.uint8)

    estimator = CountingEstimator()
    found = pseudo_rows(estimator, [Sample(np.zeros((1, 17, 3))), Sample(None), Sample(None)])
    assert found[0] is None and found[1][0].shape == (1, 17, 3) and estimator.images == 2


def test_the_json_store_is_computed_once_and_read_back(tmp_path: Path) -> None:
    store, estimator = tmp_path / "pseudo.json", CountingEstimator()
    first = stored_pseudo(store, ["a", "b"], lambda i: np.zeros((8, 8, 3), np.uint8), estimator)
    assert estimator.images == 2 and set(json.loads(store.read_text())) == {"a", "b"}
    again = stored_pseudo(store, ["b", "a", "c"], lambda i: np.zeros((8, 8, 3)), estimator)
    assert estimator.images == 3  # only "c" was estimated
    for i in ("a", "b"):
        assert np.array_equal(first[i][0], again[i][0]) and np.array_equal(first[i][1], again[i][1])
    assert again["c"][0].shape == (1, 17, 3) and again["c"][0].dtype == np.float64


def test_shards_pad_to_the_most_people_and_mark_own_keypoints() -> None:
    people = [
        None,
        (np.ones((2, 17, 3)), np.array([4.0, 5.0])),
        (np.zeros((0, 17, 3)), np.zeros(0)),
    ]
    hook = PseudoShards(load_config("tiny").pose.estimator)
    tensors = hook.tensors(people)
    assert tensors["pseudo_people"].tolist() == [-1, 2, 0]
    assert tuple(tensors["pseudo_keypoints"].shape) == (3, 2, 17, 3)
    assert tensors["pseudo_areas"][1].tolist() == [4.0, 5.0]
    assert hook.counts(tensors) == {"rows": 2, "people": 2}


def test_only_a_config_with_a_reward_stage_stores_pseudo_ground_truth() -> None:
    assert (
        pseudo_estimator_config(load_config("tiny")) is None
        and pseudo_shards(load_config("tiny")) is None
    )
    rewarded = load_config("tiny_reward")
    assert pseudo_estimator_config(rewarded) == rewarded.pose.estimator
    assert pseudo_shards(rewarded).config == rewarded.pose.estimator
