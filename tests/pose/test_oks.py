"""OKS, matching, mean OKS and COCO AP checked against pycocotools' COCOeval."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from poseguide.pose.coco_eval import COCO_KEYPOINT_STAT_NAMES, coco_keypoint_ap
from poseguide.pose.oks import (
    COCO_OKS_THRESHOLDS,
    area_from_box,
    box_area_from_keypoints,
    box_from_keypoints,
    keypoint_similarity,
    match_greedy,
    mean_oks,
    oks,
    oks_matrix,
)
from poseguide.pose.skeleton import COCO17_OKS_SIGMAS, KeypointError

# ----------------------------------------------------------------------------- random data


def random_person(rng: np.random.Generator, centre, scale: float) -> np.ndarray:
    """One (17, 3) ground-truth person: joints around a centre, visibility 0/1/2."""
    person = np.zeros((17, 3))
    person[:, :2] = centre + rng.normal(0.0, scale, size=(17, 2))
    person[:, 2] = rng.choice([0, 1, 2], size=17, p=[0.3, 0.2, 0.5])
    if rng.random() < 0.15:  # some people with no labelled joint at all
        person[:, 2] = 0
    return person


def random_image(rng: np.random.Generator):
    """(gts, areas, boxes, preds, scores) for one image; predictions are noisy copies of
    ground truth (so OKS spans (0, 1)) plus some spurious people."""
    num_gt, num_extra = int(rng.integers(0, 5)), int(rng.integers(0, 3))
    gts = np.array([random_person(rng, rng.uniform(50, 450, 2), rng.uniform(10, 60))
                    for _ in range(num_gt)]).reshape(num_gt, 17, 3)  # fmt: skip
    if num_gt and rng.random() < 0.2:  # an exact duplicate person: equal-OKS ties in matching
        gts = np.concatenate([gts, gts[-1:]])
        num_gt += 1
    areas = rng.uniform(300.0, 20000.0, num_gt)
    areas[rng.random(num_gt) < 0.05] = 0.0  # pycocotools' np.spacing(1) matters here
    boxes = np.concatenate([rng.uniform(0, 400, (num_gt, 2)), rng.uniform(5, 100, (num_gt, 2))], 1)
    preds = []
    for person in gts:
        for _ in range(int(rng.integers(0, 3))):
            pred = person.copy()
            if rng.random() < 0.8:  # else an exact copy
                pred[:, :2] += rng.normal(0.0, rng.uniform(0.5, 25.0), size=(17, 2))
            pred[:, 2] = rng.uniform(0, 1, 17)
            preds.append(pred)
    preds += [random_person(rng, rng.uniform(50, 450, 2), 40) for _ in range(num_extra)]
    preds = np.array(preds).reshape(-1, 17, 3)
    # Rounded scores make ties, which exercises the stable (mergesort) order.
    scores = np.round(rng.uniform(0, 1, len(preds)), 1)
    return gts, areas, boxes, preds, scores


def random_set(seed: int, num_images: int):
    rng = np.random.default_rng(seed)
    return [random_image(rng) for _ in range(num_images)]


# ----------------------------------------------------------------------------- reference


def reference_coco(images):
    """COCO gt/dt objects built straight from the arrays, as a user of pycocotools would."""
    anns, dets, cat = [], [], {"id": 1, "name": "person", "keypoints": [str(i) for i in range(17)]}
    for image_id, (gts, areas, boxes, preds, scores) in enumerate(images, start=1):
        for person, area, box in zip(gts, areas, boxes, strict=True):
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": 1,
                         "keypoints": person.ravel().tolist(), "area": float(area),
                         "num_keypoints": int((person[:, 2] > 0).sum()),
                         "bbox": box.tolist(), "iscrowd": 0})  # fmt: skip
        for person, score in zip(preds, scores, strict=True):
            dets.append({"image_id": image_id, "category_id": 1,
                         "keypoints": person.ravel().tolist(), "score": float(score)})  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": [{"id": i + 1} for i in range(len(images))],
                      "annotations": anns, "categories": [cat]}  # fmt: skip
        gt.createIndex()
        dt = gt.loadRes(dets)
    return gt, dt


@pytest.fixture(scope="module")
def images():
    return random_set(seed=0, num_images=200)


@pytest.fixture(scope="module")
def evaluated(images):
    gt, dt = reference_coco(images)
    evaluator = COCOeval(gt, dt, iouType="keypoints")
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
    return evaluator


# ----------------------------------------------------------------------------- OKS values


def test_oks_matrix_equals_compute_oks(images, evaluated):
    compared = 0
    for image_id, (gts, areas, boxes, preds, scores) in enumerate(images, start=1):
        reference = evaluated.computeOks(image_id, 1)
        # computeOks orders detections by descending score (stable) and keeps maxDets of them.
        order = np.argsort(-scores, kind="mergesort")[: evaluated.params.maxDets[-1]]
        ours = oks_matrix(preds[order], gts, areas, gt_boxes=boxes)
        if len(reference) == 0:
            assert ours.size == 0
            continue
        np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-6)
        compared += ours.size
    assert compared > 500


def test_oks_without_boxes_is_nan_only_for_unlabelled(images):
    gts, areas, boxes, preds, _ = next(im for im in images if len(im[4]) and len(im[0]))
    with_boxes = oks_matrix(preds, gts, areas, gt_boxes=boxes)
    without = oks_matrix(preds, gts, areas)
    unlabelled = ~(gts[..., 2] > 0).any(axis=1)
    assert np.isnan(without[:, unlabelled]).all()
    np.testing.assert_array_equal(without[:, ~unlabelled], with_boxes[:, ~unlabelled])


def test_single_oks_equals_compute_oks(images, evaluated):
    for image_id, (gts, areas, boxes, preds, scores) in enumerate(images[:40], start=1):
        reference = evaluated.computeOks(image_id, 1)
        order = np.argsort(-scores, kind="mergesort")
        for d, p in enumerate(order):
            for g in range(len(gts)):
                value = oks(preds[p], gts[g], areas[g], gt_box=boxes[g])
                assert value == pytest.approx(reference[d, g], abs=1e-6)


def test_identical_keypoints_give_one():
    gt = random_person(np.random.default_rng(1), np.array([200.0, 200.0]), 30)
    gt[0, 2] = 2
    assert oks(gt, gt, area=1234.0) == pytest.approx(1.0, abs=1e-12)
    assert oks(gt, gt, area=0.0) == 1.0  # pycocotools adds np.spacing(1): no 0 / 0


@pytest.mark.parametrize(("shift", "area"), [(3.0, 900.0), (10.0, 5000.0), (25.0, 20000.0)])
def test_uniform_shift_known_value(shift, area):
    gt = np.zeros((17, 3))
    gt[:, 0] = np.linspace(100, 200, 17)
    gt[:, 1] = 150.0
    gt[:, 2] = 2
    pred = gt.copy()
    pred[:, 0] += shift * 0.6  # a shift of length `shift`, split over x and y
    pred[:, 1] -= shift * 0.8
    k = 2 * COCO17_OKS_SIGMAS
    expected = np.mean(np.exp(-(shift**2) / (2 * area * k**2)))
    assert oks(pred, gt, area) == pytest.approx(expected, rel=1e-9)
    # Only labelled joints count, and predicted visibility is ignored.
    gt[::2, 2] = 0
    pred[:, 2] = 0
    expected = np.mean(np.exp(-(shift**2) / (2 * area * k[1::2] ** 2)))
    assert oks(pred, gt, area) == pytest.approx(expected, rel=1e-9)
    similarity = keypoint_similarity(pred, gt, area)
    assert np.isnan(similarity[::2]).all()
    assert np.nanmean(similarity) == pytest.approx(expected, rel=1e-9)


def test_unlabelled_gt_oks_is_nan_without_box():
    gt = np.zeros((17, 3))
    assert math.isnan(oks(gt, gt, 100.0))
    assert oks(gt, gt, 100.0, gt_box=[-10, -10, 5, 5]) == pytest.approx(1.0)  # inside the box


def test_boxes_and_areas():
    person = np.zeros((17, 3))
    person[[0, 5, 16], :] = [[10, 20, 2], [40, 5, 1], [25, 60, 2]]
    person[3] = [1000, 1000, 0]  # unlabelled, must not widen the box
    np.testing.assert_allclose(box_from_keypoints(person), [10, 5, 30, 55])
    assert area_from_box([10, 5, 30, 55]) == pytest.approx(0.53 * 30 * 55)
    assert box_area_from_keypoints(person) == pytest.approx(0.53 * 30 * 55)
    boxes = box_from_keypoints(np.stack([person, np.zeros((17, 3))]))
    assert boxes.shape == (2, 4) and np.isnan(boxes[1]).all()


# ----------------------------------------------------------------------------- matching


def line_person(x: float) -> np.ndarray:
    person = np.zeros((17, 3))
    person[:, 0] = x
    person[:, 1] = np.linspace(100, 300, 17)
    person[:, 2] = 2
    return person


def test_greedy_order_matters():
    # Two people 30 px apart; prediction A sits between them (a bit nearer the right one) and
    # has the higher score, prediction B sits exactly on the right one. Greedy by score gives
    # the right person to A, leaving B the left one; an OKS-optimal matching would not.
    gts = np.stack([line_person(100.0), line_person(130.0)])
    pred_a, pred_b = line_person(118.0), line_person(130.0)
    areas = [4000.0, 4000.0]
    match = match_greedy(np.stack([pred_a, pred_b]), [0.9, 0.3], gts, areas)
    assert match.pred_index.tolist() == [1, 0]
    expected = oks_matrix(np.stack([pred_a, pred_b]), gts, areas)
    np.testing.assert_allclose(match.oks, [expected[1, 0], expected[0, 1]])
    # Swapping the scores swaps the outcome: B takes its own person first.
    match = match_greedy(np.stack([pred_a, pred_b]), [0.3, 0.9], gts, areas)
    assert match.pred_index.tolist() == [0, 1]


def test_min_oks_and_zero_oks():
    gts = np.stack([line_person(100.0)])
    far = line_person(2000.0)
    near = line_person(104.0)
    # A far prediction has OKS 0 and must not take the person from a nearer, lower-scored one.
    match = match_greedy(np.stack([far, near]), [0.9, 0.1], gts, [3000.0])
    assert match.pred_index.tolist() == [1]
    value = match.oks[0]
    assert match_greedy([near], [1.0], gts, [3000.0], min_oks=value).pred_index.tolist() == [0]
    above = np.nextafter(value, 1.0)
    assert match_greedy([near], [1.0], gts, [3000.0], min_oks=above).pred_index.tolist() == [-1]
    assert match_greedy([near], [1.0], gts, [3000.0], min_oks=above).oks.tolist() == [0.0]


def test_matching_reproduces_evaluate_img(images, evaluated):
    params = evaluated.params
    area_all = params.areaRng[params.areaRngLbl.index("all")]
    np.testing.assert_allclose(params.iouThrs, COCO_OKS_THRESHOLDS)
    checked = 0
    for image_id, (gts, areas, _, preds, scores) in enumerate(images, start=1):
        result = evaluated.evaluateImg(image_id, 1, area_all, params.maxDets[-1])
        if result is None:
            continue
        gt_ids = {ann_id: g for g, ann_id in enumerate(result["gtIds"])}
        scoreable = (gts[..., 2] > 0).any(axis=1)
        # evaluateImg reorders people (ignored last) and detections; map ids back to indices.
        id_to_index = {ann["id"]: g for g, ann in enumerate(evaluated._gts[image_id, 1])}
        dt_id_to_index = {ann["id"]: d for d, ann in enumerate(evaluated._dts[image_id, 1])}
        for t, threshold in enumerate(params.iouThrs):
            match = match_greedy(preds, scores, gts, areas, min_oks=threshold, max_dets=20)
            expected = np.full(len(gts), -1)
            for ann_id, g_sorted in gt_ids.items():
                dt_id = int(result["gtMatches"][t, g_sorted])
                if dt_id > 0:
                    expected[id_to_index[ann_id]] = dt_id_to_index[dt_id]
            np.testing.assert_array_equal(match.pred_index[scoreable], expected[scoreable])
            assert (match.pred_index[~scoreable] == -1).all()
            checked += int((expected[scoreable] >= 0).sum())
    assert checked > 200


# ----------------------------------------------------------------------------- mean OKS


def test_mean_oks_unmatched_and_extra_predictions():
    gts = np.stack([line_person(100.0), line_person(300.0)])
    pred = line_person(103.0)
    result = mean_oks([(pred[None], [0.8], gts, [3000.0, 3000.0])])
    single = oks(pred, gts[0], 3000.0)
    assert result["num_gt"] == 2 and result["num_matched"] == 1
    assert result["per_gt_oks"] == pytest.approx([single, 0.0])
    assert result["mean_oks"] == pytest.approx(single / 2)
    # Duplicates and junk below the real prediction's score cannot raise the mean.
    junk = np.stack([pred, pred, line_person(2000.0)])
    preds = np.concatenate([pred[None], junk])
    extra = mean_oks([(preds, [0.8, 0.5, 0.5, 0.4], gts[:1], [3000.0])])
    alone = mean_oks([(pred[None], [0.8], gts[:1], [3000.0])])
    assert extra["mean_oks"] == pytest.approx(alone["mean_oks"])


def test_mean_oks_excludes_unlabelled_and_counts_joints():
    gts = np.stack([line_person(100.0), np.zeros((17, 3))])
    gts[0, :3, 2] = 0  # three unlabelled joints
    pred = line_person(100.0)
    pred[5, 0] += 200.0  # one joint far off
    result = mean_oks([(pred[None], [1.0], gts, None), (np.zeros((0, 17, 3)), [], gts[:1], None)])
    assert result["num_gt"] == 2 and result["num_gt_unlabelled"] == 1
    assert result["per_gt_oks"][1] == 0.0
    accuracy = np.array(result["per_joint_accuracy"])
    assert np.isnan(accuracy[:3]).all()
    assert accuracy[5] == 0.0
    np.testing.assert_allclose(np.delete(accuracy, [0, 1, 2, 5]), 0.5)  # second image unmatched
    assert result["per_joint_labelled"] == [0, 0, 0] + [2] * 14
    empty = mean_oks([(np.zeros((0, 17, 3)), [], np.zeros((1, 17, 3)), [100.0])])
    assert math.isnan(empty["mean_oks"]) and empty["num_gt"] == 0


def test_mean_oks_agrees_with_match_greedy(images):
    result = mean_oks([(p, s, g, a) for g, a, _, p, s in images])
    per_gt = []
    for gts, areas, _, preds, scores in images:
        match = match_greedy(preds, scores, gts, areas)
        per_gt += match.oks[~np.isnan(match.oks)].tolist()
    assert result["per_gt_oks"] == pytest.approx(per_gt)
    assert 0.0 < result["mean_oks"] < 1.0


# ----------------------------------------------------------------------------- COCO AP / AR


def reference_stats(images) -> np.ndarray:
    gt, dt = reference_coco(images)
    evaluator = COCOeval(gt, dt, iouType="keypoints")
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return np.where(evaluator.stats > -1, evaluator.stats, np.nan)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_coco_keypoint_ap_equals_cocoeval(seed):
    images = random_set(seed, 60)
    result = coco_keypoint_ap(
        [im[0] for im in images],
        [im[3] for im in images],
        [im[4] for im in images],
        areas_per_image=[im[1] for im in images],
        boxes_per_image=[im[2] for im in images],
    )
    ours = np.array([result[name] for name in COCO_KEYPOINT_STAT_NAMES])
    np.testing.assert_allclose(ours, reference_stats(images), rtol=0, atol=1e-12)
    assert result["valid"] and 0.0 < result["AP"] < 1.0 and 0.0 < result["AR"] < 1.0


def test_coco_keypoint_ap_default_areas_and_perfect_predictions():
    images = random_set(4, 30)
    gts = [im[0] for im in images]
    preds = [g[(g[..., 2] > 0).any(axis=1)] for g in gts]
    scores = [np.ones(len(p)) for p in preds]
    result = coco_keypoint_ap(gts, preds, scores)
    assert result["AP"] == pytest.approx(1.0) and result["AR"] == pytest.approx(1.0)
    assert result["num_gt"] == sum(len(p) for p in preds) > 20
    # People without labelled joints and without a box are left out, so a prediction on one
    # is a false positive; with a box COCOeval ignores it instead.
    with_unlabelled = coco_keypoint_ap(gts, gts, [np.ones(len(g)) for g in gts])
    assert with_unlabelled["AP"] < 1.0 and with_unlabelled["AR"] == pytest.approx(1.0)
    boxes = [np.tile([0.0, 0.0, 500.0, 500.0], (len(g), 1)) for g in gts]
    boxed = coco_keypoint_ap(gts, gts, [np.ones(len(g)) for g in gts], boxes_per_image=boxes)
    assert boxed["AP"] == pytest.approx(1.0)


def test_coco_keypoint_ap_empty_cases():
    gts = [line_person(100.0)[None], np.zeros((0, 17, 3))]
    none = [np.zeros((0, 17, 3)), np.zeros((0, 17, 3))]
    result = coco_keypoint_ap(gts, none, [[], []])
    assert result["valid"] and result["AP"] == 0.0 and result["AR"] == 0.0
    unlabelled = coco_keypoint_ap([np.zeros((2, 17, 3))], none[:1], [[]])
    assert not unlabelled["valid"] and "labelled" in unlabelled["reason"]
    assert all(math.isnan(unlabelled[name]) for name in COCO_KEYPOINT_STAT_NAMES)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda: oks(np.zeros((16, 3)), np.zeros((17, 3)), 1.0), "(P, 17, 3)"),
        (lambda: oks(np.zeros((2, 17, 3)), np.zeros((17, 3)), 1.0), "pred holds 2 people"),
        (lambda: oks(np.zeros((17, 3)), np.full((17, 3), 3.0), 1.0), "joint 0 (nose)"),
        (lambda: oks_matrix(np.zeros((2, 17, 3)), np.zeros((3, 17, 3)), [1.0, 2.0]), "areas"),
        (lambda: oks_matrix(np.zeros((2, 17, 2)), np.zeros((3, 17, 3)), [1.0] * 3), "preds"),
        (lambda: oks_matrix(np.zeros((1, 17, 3)), np.zeros((1, 17, 3)), [-1.0]), ">= 0"),
        (lambda: match_greedy(np.zeros((2, 17, 3)), [1.0], np.zeros((1, 17, 3)), [1.0]), "scores"),
        (lambda: mean_oks([(np.zeros((1, 17, 3)), [1.0], np.zeros((1, 4)), None)]), "image 0"),
        (lambda: coco_keypoint_ap([np.zeros((1, 17, 3))], [], []), "preds_per_image"),
    ],
)
def test_bad_input_names_the_problem(call, words):
    with pytest.raises(KeypointError) as info:
        call()
    assert words in str(info.value)
