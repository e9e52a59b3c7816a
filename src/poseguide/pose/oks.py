"""Object keypoint similarity (OKS) and greedy matching, in numpy (evaluation) and torch (the
reward's differentiable OKS): the formula lives here once (:func:`oks_exponent`). COCO keypoint
AP/AR is :mod:`poseguide.pose.coco_eval`.

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

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from poseguide.pose.skeleton import (
    COCO17_NAMES,
    COCO17_OKS_SIGMAS,
    NUM_COCO17,
    KeypointError,
    as_people,
    validate_keypoints,
)
from poseguide.utils.device import to_device

# pycocotools adds this to every area so that a zero area does not divide by zero.
AREA_EPS = float(np.spacing(1))
# Box area -> segment area factor ultralytics uses when only a box is known.
BOX_AREA_FACTOR = 0.53
# COCOeval's OKS thresholds (params.iouThrs for keypoints): 0.50, 0.55, ..., 0.95.
COCO_OKS_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1)
# COCOeval matches at min(threshold, 1 - 1e-10) so that a threshold of 1 stays reachable.
_MAX_MATCH_THRESHOLD = 1.0 - 1e-10


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


def oks_exponent(d2: Any, sigmas: Any, areas: Any) -> Any:
    """The OKS exponent ``e = d^2 / (2 s^2 k^2)`` (a joint's similarity is ``exp(-e)``), in
    pycocotools ``computeOks``' order of operations: ``d2 / (2 sigma)^2 / (area + eps) / 2``.

    ``d2`` squared distances, ``sigmas`` per joint, ``areas`` per person, broadcast against
    each other; numpy arrays and torch tensors alike (the evaluation and the reward share it).
    """
    return d2 / (sigmas * 2) ** 2 / (areas + AREA_EPS) / 2


def _squared_error(preds: np.ndarray, gts: np.ndarray, areas: np.ndarray, sigmas: np.ndarray):
    """(D, G, 17) exponent of every prediction against every ground-truth person."""
    dx = preds[:, None, :, 0] - gts[None, :, :, 0]
    dy = preds[:, None, :, 1] - gts[None, :, :, 1]
    return oks_exponent(dx**2 + dy**2, sigmas, areas[None, :, None])


def _box_rule_error(preds: np.ndarray, boxes: np.ndarray, areas: np.ndarray, sigmas: np.ndarray):
    """(D, G, 17) exponent for people without labelled joints: distance from each predicted
    joint to the box grown by its own size on every side (pycocotools' rule)."""
    x0, y0 = boxes[:, 0] - boxes[:, 2], boxes[:, 1] - boxes[:, 3]
    x1, y1 = boxes[:, 0] + boxes[:, 2] * 2, boxes[:, 1] + boxes[:, 3] * 2
    xd, yd = preds[:, None, :, 0], preds[:, None, :, 1]
    dx = np.maximum(0, x0[None, :, None] - xd) + np.maximum(0, xd - x1[None, :, None])
    dy = np.maximum(0, y0[None, :, None] - yd) + np.maximum(0, yd - y1[None, :, None])
    return oks_exponent(dx**2 + dy**2, sigmas, areas[None, :, None])


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


# ----------------------------------------------------------------------------- torch (the reward)


def _torch_sigmas(like: torch.Tensor) -> torch.Tensor:
    return to_device(torch.as_tensor(COCO17_OKS_SIGMAS, dtype=like.dtype), like.device)


def target_boxes(people: torch.Tensor) -> torch.Tensor:
    """(P, 4) x0, y0, x1, y1 of (P, 17, 3) people: :func:`box_from_keypoints`' tight box of the
    labelled joints, as corners, at least one pixel wide and high (one labelled joint: a pixel
    around it, inside the anchors that cover it); on the device, no host read."""
    labelled = people[..., 2] > 0
    big = torch.finfo(people.dtype).max
    x, y = people[..., 0], people[..., 1]
    lo = torch.stack([torch.where(labelled, x, big).amin(1),
                      torch.where(labelled, y, big).amin(1)], dim=1)  # fmt: skip
    hi = torch.stack([torch.where(labelled, x, -big).amax(1),
                      torch.where(labelled, y, -big).amax(1)], dim=1)  # fmt: skip
    grow = (1.0 - (hi - lo)).clamp_min(0.0) / 2
    return torch.cat([lo - grow, hi + grow], dim=1)


def oks_pairs(xy: torch.Tensor, people: torch.Tensor, areas: torch.Tensor) -> torch.Tensor:
    """(P, K) OKS of K predicted (K, 17, 2) people against P targets (P, 17, 3) with areas
    (P,): :func:`oks_matrix` (transposed) for people with a labelled joint, in torch."""
    d2 = ((xy[None] - people[:, None, :, :2]) ** 2).sum(-1)  # (P, K, 17)
    e = oks_exponent(d2, _torch_sigmas(xy), areas[:, None, None])
    labelled = (people[..., 2] > 0).to(xy.dtype)[:, None]  # (P, 1, 17)
    return (torch.exp(-e) * labelled).sum(-1) / labelled.sum(-1).clamp_min(1.0)


def normalized_distance(pred_xy: torch.Tensor, people: torch.Tensor,
                        areas: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """(P, 17) ``u = d / (sqrt(area) * 2 sigma)`` per joint: OKS's own scale, so that a joint's
    similarity is ``exp(-u^2 / 2)``; unlike that similarity, ``u`` keeps growing with the error."""
    d = torch.linalg.vector_norm(pred_xy - people[..., :2], dim=-1)
    return d / ((areas[:, None] + AREA_EPS).sqrt() * 2 * _torch_sigmas(pred_xy))


def joint_similarity(pred_xy: torch.Tensor, people: torch.Tensor,
                     areas: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """(P, 17) per-joint similarity ``exp(-e)`` of predicted (P, 17, 2) positions to target
    people (P, 17, 3) with areas (P,), differentiable in ``pred_xy``."""
    dx, dy = pred_xy[..., 0] - people[..., 0], pred_xy[..., 1] - people[..., 1]
    return torch.exp(-oks_exponent(dx**2 + dy**2, _torch_sigmas(pred_xy), areas[:, None]))


def soft_oks(pred_xy: torch.Tensor, people: torch.Tensor, areas: torch.Tensor) -> torch.Tensor:
    """(P,) OKS: :func:`joint_similarity` averaged over each person's labelled joints."""
    labelled = (people[..., 2] > 0).to(pred_xy.dtype)
    return (joint_similarity(pred_xy, people, areas) * labelled).sum(1) / labelled.sum(1)
