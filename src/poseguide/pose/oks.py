"""Object keypoint similarity (OKS), greedy matching, mean OKS and COCO keypoint AP/AR.

OKS between a predicted and a ground-truth person (METHOD.md section 5)::

    OKS = sum_i exp(-d_i^2 / (2 s^2 k_i^2)) [v_i > 0] / sum_i [v_i > 0]
    s^2 = the ground-truth person's area, k_i = 2 sigma_i

Only ground-truth joints with visibility ``v > 0`` count; the prediction's third value (a
confidence) is ignored. Numbers follow pycocotools ``COCOeval.computeOks`` exactly, including
the ``np.spacing(1)`` it adds to the area.

A ground-truth person with **no labelled keypoint** has no OKS of its own. pycocotools then
measures the distance from each predicted joint to the person's box grown by one box size on every
side; :func:`oks_matrix` does the same when boxes are passed and returns NaN otherwise. COCOeval
ignores such people when it counts true positives, and :func:`mean_oks` likewise leaves them out
of the mean (and reports how many it left out).

All arrays follow :mod:`poseguide.pose.skeleton`: people are ``(P, 17, 3)`` arrays of
``(x, y, v)``, x before y, in pixels; boxes are ``(x, y, w, h)``.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np

from poseguide.pose.skeleton import (
    COCO17_LIMBS,
    COCO17_NAMES,
    COCO17_OKS_SIGMAS,
    NUM_COCO17,
    KeypointError,
    as_people,
    validate_keypoints,
)

# pycocotools adds this to every area so that a zero area does not divide by zero.
AREA_EPS = float(np.spacing(1))
# Box area -> segment area factor ultralytics uses when only a box is known.
BOX_AREA_FACTOR = 0.53
# COCOeval's OKS thresholds (params.iouThrs for keypoints): 0.50, 0.55, ..., 0.95.
COCO_OKS_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1)
# COCOeval matches at min(threshold, 1 - 1e-10) so that a threshold of 1 stays reachable.
_MAX_MATCH_THRESHOLD = 1.0 - 1e-10
# Detections per image COCOeval keeps for keypoints (params.maxDets).
COCO_KEYPOINT_MAX_DETS = 20
COCO_KEYPOINT_STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
PERSON_CATEGORY_ID = 1


# ----------------------------------------------------------------------------- input checks


def _as_preds(preds: np.ndarray | list, where: str) -> np.ndarray:
    """Predicted people as (D, 17, 3) float64; x and y must be finite, v is not looked at."""
    try:
        arr = as_people(preds)
    except KeypointError as err:
        raise KeypointError(f"{where}: {err}") from None
    bad = ~np.isfinite(arr[..., :2])
    if bad.any():
        p, j, c = np.argwhere(bad)[0]
        raise KeypointError(
            f"{where}: person {p}, joint {j} ({COCO17_NAMES[j]}): {'xy'[c]} is {arr[p, j, c]} "
            "(predicted coordinates must be finite; give absent joints any finite value)"
        )
    return arr


def _as_vector(values, n: int, name: str, what: str, nonnegative: bool = False) -> np.ndarray:
    """A finite float vector of length n (one value per person)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 0 and n == 1:
        arr = arr.reshape(1)
    if arr.shape != (n,):
        raise KeypointError(f"{name} has shape {arr.shape}; expected ({n},): one {what} per person")
    bad = ~np.isfinite(arr) | ((arr < 0) if nonnegative else False)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        sign = "finite and >= 0" if nonnegative else "finite"
        raise KeypointError(f"{name}[{i}] is {arr[i]}; each {what} must be {sign}")
    return arr


def _as_boxes(boxes, n: int, name: str) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.ndim == 1 and n == 1:
        arr = arr.reshape(1, -1)
    if arr.shape != (n, 4):
        raise KeypointError(f"{name} has shape {arr.shape}; expected ({n}, 4) boxes (x, y, w, h)")
    return arr


def _as_sigmas(sigmas) -> np.ndarray:
    arr = np.asarray(sigmas, dtype=np.float64)
    if arr.shape != (NUM_COCO17,) or not np.all(np.isfinite(arr) & (arr > 0)):
        raise KeypointError(f"sigmas must be {NUM_COCO17} positive numbers, got shape {arr.shape}")
    return arr


# ----------------------------------------------------------------------------- boxes and areas


def box_from_keypoints(keypoints: np.ndarray | list) -> np.ndarray:
    """Tight (x, y, w, h) box around the labelled (v > 0) joints.

    ``keypoints`` is one person (17, 3) -> (4,), or people (P, 17, 3) -> (P, 4). A person with
    no labelled joint gets a NaN box.
    """
    people = as_people(keypoints)
    labelled = people[..., 2] > 0
    xy = np.where(labelled[..., None], people[..., :2], np.nan)
    boxes = np.full((people.shape[0], 4), np.nan)
    has = labelled.any(axis=1)
    lo, hi = np.nanmin(xy[has], axis=1), np.nanmax(xy[has], axis=1)
    boxes[has] = np.concatenate([lo, hi - lo], axis=1)
    single = np.ndim(keypoints) == 1 or np.shape(keypoints) == (NUM_COCO17, 3)
    return boxes[0] if single else boxes


def area_from_box(box_xywh: np.ndarray | Sequence[float]) -> np.ndarray | float:
    """Person area ``0.53 * w * h`` from (..., 4) xywh boxes (ultralytics' stand-in for the
    segment area COCO uses). Returns a float for one box, an array of shape (...) otherwise."""
    box = np.asarray(box_xywh, dtype=np.float64)
    area = BOX_AREA_FACTOR * box[..., 2] * box[..., 3]
    return float(area) if area.ndim == 0 else area


def box_area_from_keypoints(keypoints: np.ndarray | list) -> np.ndarray | float:
    """``area_from_box(box_from_keypoints(keypoints))``: (17, 3) -> float, (P, 17, 3) -> (P,).

    NaN for a person with no labelled joint; 0 when only one joint (or a line of joints) is
    labelled, which makes every OKS against that person ~0, so pass real areas when known.
    """
    return area_from_box(box_from_keypoints(keypoints))


# ----------------------------------------------------------------------------- OKS


def _squared_error(preds: np.ndarray, gts: np.ndarray, areas: np.ndarray, sigmas: np.ndarray):
    """(D, G, 17) exponent ``d^2 / (2 area k^2)``, written in computeOks' order of operations."""
    variances = (sigmas * 2) ** 2
    dx = preds[:, None, :, 0] - gts[None, :, :, 0]
    dy = preds[:, None, :, 1] - gts[None, :, :, 1]
    return (dx**2 + dy**2) / variances / (areas[None, :, None] + AREA_EPS) / 2


def _box_rule_error(preds: np.ndarray, boxes: np.ndarray, areas: np.ndarray, sigmas: np.ndarray):
    """(D, G, 17) exponent for people without labelled joints: distance from each predicted
    joint to the box grown by its own size on every side (pycocotools' rule)."""
    x0, y0 = boxes[:, 0] - boxes[:, 2], boxes[:, 1] - boxes[:, 3]
    x1, y1 = boxes[:, 0] + boxes[:, 2] * 2, boxes[:, 1] + boxes[:, 3] * 2
    xd, yd = preds[:, None, :, 0], preds[:, None, :, 1]
    dx = np.maximum(0, x0[None, :, None] - xd) + np.maximum(0, xd - x1[None, :, None])
    dy = np.maximum(0, y0[None, :, None] - yd) + np.maximum(0, yd - y1[None, :, None])
    variances = (sigmas * 2) ** 2
    return (dx**2 + dy**2) / variances / (areas[None, :, None] + AREA_EPS) / 2


def oks_matrix(
    preds: np.ndarray | list,
    gts: np.ndarray | list,
    areas: np.ndarray | Sequence[float],
    gt_boxes: np.ndarray | None = None,
    sigmas: np.ndarray = COCO17_OKS_SIGMAS,
) -> np.ndarray:
    """OKS of every prediction against every ground-truth person of one image.

    Args:
        preds: (D, 17, 3) predicted people; the third value is ignored.
        gts: (G, 17, 3) ground truth with COCO visibility 0/1/2.
        areas: (G,) ground-truth areas in pixels^2 (COCO segment area or :func:`area_from_box`).
        gt_boxes: optional (G, 4) xywh boxes, used only for people with no labelled joint.
        sigmas: (17,) per-joint falloff constants.

    Returns:
        (D, G) OKS in [0, 1], rows in the order of ``preds``. This equals
        ``COCOeval.computeOks`` for the image when ``preds`` is given as computeOks orders it
        (descending score, stable; at most ``maxDets``). A column for a person without labelled
        joints uses pycocotools' box rule when ``gt_boxes`` is given and is NaN otherwise.
    """
    preds, gts = _as_preds(preds, "preds"), validate_keypoints(gts, where="gts")
    areas = _as_vector(areas, len(gts), "areas", "area", nonnegative=True)
    sigmas = _as_sigmas(sigmas)
    labelled = gts[..., 2] > 0
    count = labelled.sum(axis=1)
    similarity = np.exp(-_squared_error(preds, gts, areas, sigmas))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (similarity * labelled[None]).sum(axis=2) / count[None]
    empty = count == 0
    if gt_boxes is not None and empty.any():
        boxes = _as_boxes(gt_boxes, len(gts), "gt_boxes")[empty]
        box_rule = np.exp(-_box_rule_error(preds, boxes, areas[empty], sigmas))
        out[:, empty] = box_rule.mean(axis=2)
    return out


def oks(
    pred: np.ndarray | list,
    gt: np.ndarray | list,
    area: float,
    sigmas: np.ndarray = COCO17_OKS_SIGMAS,
    gt_box: Sequence[float] | None = None,
) -> float:
    """OKS between one predicted (17, 3) and one ground-truth (17, 3) person.

    ``area`` is the ground truth's area in pixels^2. Returns a float in [0, 1]; NaN when the
    ground truth has no labelled joint and no ``gt_box`` is given (see :func:`oks_matrix`).
    """
    pred_people, gt_people = _as_preds(pred, "pred"), validate_keypoints(gt, where="gt")
    for name, people in (("pred", pred_people), ("gt", gt_people)):
        if len(people) != 1:
            raise KeypointError(f"{name} holds {len(people)} people; oks() takes one (17, 3)")
    boxes = None if gt_box is None else [gt_box]
    return float(oks_matrix(pred_people, gt_people, [area], boxes, sigmas)[0, 0])


def keypoint_similarity(
    pred: np.ndarray | list,
    gt: np.ndarray | list,
    area: float,
    sigmas: np.ndarray = COCO17_OKS_SIGMAS,
) -> np.ndarray:
    """Per-joint similarity ``exp(-d_i^2 / (2 s^2 k_i^2))`` for one pair, shape (17,).

    NaN where the ground-truth joint is unlabelled. OKS is the mean of the non-NaN entries.
    """
    pred_people, gt_people = _as_preds(pred, "pred"), validate_keypoints(gt, where="gt")
    area_arr = _as_vector([area], 1, "area", "area", nonnegative=True)
    similarity = np.exp(-_squared_error(pred_people, gt_people, area_arr, _as_sigmas(sigmas)))
    return np.where(gt_people[0, :, 2] > 0, similarity[0, 0], np.nan)


# ----------------------------------------------------------------------------- matching


class GreedyMatch(NamedTuple):
    """Result of :func:`match_greedy`, one entry per ground-truth person."""

    pred_index: np.ndarray  # (G,) int: the matched prediction, -1 when none
    oks: np.ndarray  # (G,) float: OKS of the match, 0 when unmatched, NaN when not scoreable


def match_greedy(
    preds: np.ndarray | list,
    scores: np.ndarray | Sequence[float],
    gts: np.ndarray | list,
    areas: np.ndarray | Sequence[float],
    min_oks: float = 0.0,
    sigmas: np.ndarray = COCO17_OKS_SIGMAS,
    max_dets: int | None = None,
) -> GreedyMatch:
    """Match predictions to ground truth greedily, highest detection score first (as COCOeval).

    Predictions are visited in descending ``scores`` (stable sort, so ties keep input order),
    keeping the first ``max_dets`` if given. Each takes the not-yet-matched ground-truth person
    with the highest OKS among those with ``OKS >= min(min_oks, 1 - 1e-10)`` and ``OKS > 0``;
    among equal best OKS the last person wins, as in COCOeval. With ``min_oks`` set to a COCO
    threshold (and ``max_dets=20``) this gives COCOeval's ``evaluateImg`` matches at that
    threshold for every person with a labelled joint. People without labelled joints are never
    matched (COCOeval ignores them and tries them only after every regular person, so they do
    not change the regular matches). A zero-OKS pair never matches: it would score nothing and
    only block a later prediction.

    Args:
        preds: (D, 17, 3); scores: (D,) detection scores; gts: (G, 17, 3); areas: (G,).
        min_oks: smallest OKS that counts as a match, in [0, 1].

    Returns:
        :class:`GreedyMatch` with ``pred_index`` (G,) and ``oks`` (G,): 0 for an unmatched
        person, NaN for a person with no labelled joint.
    """
    if not 0.0 <= min_oks <= 1.0:
        raise ValueError(f"min_oks must be in [0, 1], got {min_oks}")
    gts = validate_keypoints(gts, where="gts")
    ious = oks_matrix(preds, gts, areas, sigmas=sigmas)
    scores = _as_vector(scores, ious.shape[0], "scores", "detection score")
    threshold = min(min_oks, _MAX_MATCH_THRESHOLD)
    scoreable = (gts[..., 2] > 0).any(axis=1)
    pred_index = np.full(ious.shape[1], -1, dtype=np.int64)
    matched_oks = np.where(scoreable, 0.0, np.nan)
    free = scoreable.copy()
    for d in np.argsort(-scores, kind="mergesort")[:max_dets]:
        row = ious[d]
        candidate = free & (row >= threshold) & (row > 0)
        if not candidate.any():
            continue
        g = np.flatnonzero(candidate & (row == row[candidate].max()))[-1]
        pred_index[g], matched_oks[g], free[g] = d, row[g], False
    return GreedyMatch(pred_index, matched_oks)


# ----------------------------------------------------------------------------- mean OKS


def _match_image(i: int, item: tuple, min_oks: float, sigmas: np.ndarray):
    """Check one ``(preds, scores, gts, areas | None)`` entry of :func:`mean_oks` and match it."""
    if len(item) != 4:
        raise KeypointError(
            f"image {i}: expected (preds, scores, gts, areas), got {len(item)} items"
        )
    try:
        preds, gts = _as_preds(item[0], "preds"), validate_keypoints(item[2], where="gts")
        areas = item[3]
        if areas is None:  # NaN for people without labelled joints, who are not scored anyway
            areas = np.nan_to_num(box_area_from_keypoints(gts), nan=0.0)
        areas = _as_vector(areas, len(gts), "areas", "area", nonnegative=True)
        match = match_greedy(preds, item[1], gts, areas, min_oks, sigmas)
    except KeypointError as err:
        raise KeypointError(f"image {i}: {err}") from None
    return preds, gts, areas, match


def mean_oks(
    per_image: Iterable[tuple],
    min_oks: float = 0.0,
    joint_threshold: float = 0.5,
    sigmas: np.ndarray = COCO17_OKS_SIGMAS,
) -> dict:
    """Mean OKS over ground-truth people, with per-joint accuracy.

    Args:
        per_image: one ``(preds (D, 17, 3), scores (D,), gts (G, 17, 3), areas (G,) | None)``
            per image; ``areas=None`` uses :func:`box_area_from_keypoints`.
        min_oks: passed to :func:`match_greedy`.
        joint_threshold: a labelled joint of a matched person is a hit when its similarity
            ``exp(-d^2 / (2 s^2 k^2))`` exceeds this; joints of unmatched people are misses.

    Returns:
        dict with ``mean_oks`` (NaN when no person can be scored), ``num_gt`` (people scored),
        ``num_gt_unlabelled`` (people without labelled joints, left out), ``num_matched``,
        ``per_gt_oks`` (list, unmatched = 0), ``per_joint_accuracy`` (17 floats, NaN for a
        joint never labelled), ``per_joint_labelled`` (17 counts), ``joint_names``,
        ``joint_threshold`` and ``min_oks``.
    """
    per_gt: list[float] = []
    hits, labelled_total = np.zeros(NUM_COCO17), np.zeros(NUM_COCO17, dtype=np.int64)
    unlabelled = matched = 0
    for i, item in enumerate(per_image):
        preds, gts, areas, match = _match_image(i, item, min_oks, sigmas)
        labelled = gts[..., 2] > 0
        scoreable = labelled.any(axis=1)
        unlabelled += int((~scoreable).sum())
        per_gt.extend(float(v) for v in match.oks[scoreable])
        labelled_total += labelled.sum(axis=0)
        for g in np.flatnonzero(match.pred_index >= 0):
            similarity = keypoint_similarity(preds[match.pred_index[g]], gts[g], areas[g], sigmas)
            hits += labelled[g] & (np.nan_to_num(similarity) > joint_threshold)
            matched += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.where(labelled_total > 0, hits / labelled_total, np.nan)
    return {
        "mean_oks": float(np.mean(per_gt)) if per_gt else float("nan"),
        "num_gt": len(per_gt),
        "num_gt_unlabelled": unlabelled,
        "num_matched": matched,
        "per_gt_oks": per_gt,
        "per_joint_accuracy": [float(a) for a in accuracy],
        "per_joint_labelled": [int(n) for n in labelled_total],
        "joint_names": list(COCO17_NAMES),
        "joint_threshold": float(joint_threshold),
        "min_oks": float(min_oks),
    }


# ----------------------------------------------------------------------------- COCO AP / AR


def _coco_gt_dataset(gts_per_image, areas_per_image, boxes_per_image) -> tuple[dict, int]:
    """COCO ground-truth dict (images 1..N, person category) and the number of scoreable people.

    People without labelled joints go in only when a box is given (COCOeval then ignores them,
    and a detection on them is neither a true nor a false positive); without a box they are
    dropped, since their box rule cannot be evaluated.
    """
    images, annotations, num_scoreable = [], [], 0
    for i, gts in enumerate(gts_per_image):
        gts = validate_keypoints(gts, where=f"gts_per_image[{i}]")
        boxes = box_from_keypoints(gts)
        if boxes_per_image is not None and boxes_per_image[i] is not None:
            boxes = _as_boxes(boxes_per_image[i], len(gts), f"boxes_per_image[{i}]")
        areas = area_from_box(boxes)
        if areas_per_image is not None and areas_per_image[i] is not None:
            name = f"areas_per_image[{i}]"
            areas = _as_vector(areas_per_image[i], len(gts), name, "area", nonnegative=True)
        images.append({"id": i + 1})
        for person, box, area in zip(gts, boxes, np.atleast_1d(areas), strict=True):
            num_keypoints = int((person[:, 2] > 0).sum())
            if not np.all(np.isfinite(box)) or not np.isfinite(area):
                continue  # no labelled joint and no box given
            num_scoreable += num_keypoints > 0
            annotations.append(
                {
                    "id": len(annotations) + 1,  # COCOeval treats id 0 as "unmatched"
                    "image_id": i + 1,
                    "category_id": PERSON_CATEGORY_ID,
                    "keypoints": person.reshape(-1).tolist(),
                    "num_keypoints": num_keypoints,
                    "area": float(area),
                    "bbox": [float(v) for v in box],
                    "iscrowd": 0,
                }
            )
    category = {
        "id": PERSON_CATEGORY_ID,
        "name": "person",
        "supercategory": "person",
        "keypoints": list(COCO17_NAMES),
        "skeleton": [[a + 1, b + 1] for a, b in COCO17_LIMBS],
    }
    return {"images": images, "annotations": annotations, "categories": [category]}, num_scoreable


def _coco_detections(preds_per_image, scores_per_image) -> list[dict]:
    detections = []
    for i, (preds, scores) in enumerate(zip(preds_per_image, scores_per_image, strict=True)):
        preds = _as_preds(preds, f"preds_per_image[{i}]")
        scores = _as_vector(scores, len(preds), f"scores_per_image[{i}]", "detection score")
        for person, score in zip(preds, scores, strict=True):
            detections.append(
                {
                    "image_id": i + 1,
                    "category_id": PERSON_CATEGORY_ID,
                    "keypoints": person.reshape(-1).tolist(),
                    "score": float(score),
                }
            )
    return detections


def coco_keypoint_ap(
    gts_per_image: Sequence[np.ndarray],
    preds_per_image: Sequence[np.ndarray],
    scores_per_image: Sequence[np.ndarray],
    areas_per_image: Sequence[np.ndarray | None] | None = None,
    boxes_per_image: Sequence[np.ndarray | None] | None = None,
    sigmas: np.ndarray = COCO17_OKS_SIGMAS,
) -> dict:
    """COCO keypoint AP/AR by pycocotools ``COCOeval(iouType="keypoints")``.

    Args:
        gts_per_image: per image, (G, 17, 3) ground truth with visibility 0/1/2.
        preds_per_image: per image, (D, 17, 3) predictions; scores_per_image: per image (D,).
        areas_per_image: per image (G,) areas; default ``0.53 * box w * h``.
        boxes_per_image: per image (G, 4) xywh; default the box of the labelled joints. People
            without labelled joints and without a box are left out.

    Returns:
        dict with ``AP, AP50, AP75, APm, APl, AR, AR50, AR75, ARm, ARl`` (pycocotools' ``stats``;
        NaN where pycocotools reports -1, i.e. no person in that area range), ``num_images``,
        ``num_gt`` (people with a labelled joint), ``num_dets`` and ``valid``. When no person has
        a labelled joint every metric is NaN, ``valid`` is False and ``reason`` says why.
        COCOeval keeps the 20 highest-scoring detections per image.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    n = len(gts_per_image)
    for name, seq in (("preds_per_image", preds_per_image), ("scores_per_image", scores_per_image)):
        if len(seq) != n:
            raise KeypointError(f"{name} has {len(seq)} images; gts_per_image has {n}")
    dataset, num_gt = _coco_gt_dataset(gts_per_image, areas_per_image, boxes_per_image)
    detections = _coco_detections(preds_per_image, scores_per_image)
    result = {"num_images": n, "num_gt": num_gt, "num_dets": len(detections), "valid": True}
    if num_gt == 0:
        result.update(dict.fromkeys(COCO_KEYPOINT_STAT_NAMES, float("nan")))
        result["valid"] = False
        result["reason"] = "no ground-truth person has a labelled keypoint; AP/AR are undefined"
        return result
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = dataset
        coco_gt.createIndex()
        if detections:
            coco_dt = coco_gt.loadRes(detections)
        else:  # loadRes cannot take an empty list
            coco_dt = COCO()
            coco_dt.dataset = {**dataset, "annotations": []}
            coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, iouType="keypoints")
        evaluator.params.kpt_oks_sigmas = _as_sigmas(sigmas)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    for name, value in zip(COCO_KEYPOINT_STAT_NAMES, evaluator.stats, strict=True):
        result[name] = float(value) if value > -1 else float("nan")
    return result
