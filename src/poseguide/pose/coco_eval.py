"""COCO keypoint AP/AR by pycocotools' ``COCOeval`` on poseguide's arrays.

The ground truth and the detections are written as COCO-format dicts (images 1..N, the person
category, COCO-17 keypoints) and scored by ``COCOeval(iouType="keypoints")`` itself, so the
numbers are pycocotools' own (tests compare with it called directly).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

import numpy as np

from poseguide.pose.oks import (
    _as_boxes,
    _as_preds,
    _as_sigmas,
    _as_vector,
    area_from_box,
    box_from_keypoints,
)
from poseguide.pose.skeleton import (
    COCO17_LIMBS,
    COCO17_NAMES,
    COCO17_OKS_SIGMAS,
    KeypointError,
    validate_keypoints,
)

# Detections per image COCOeval keeps for keypoints (params.maxDets).
COCO_KEYPOINT_MAX_DETS = 20
COCO_KEYPOINT_STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
PERSON_CATEGORY_ID = 1


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
