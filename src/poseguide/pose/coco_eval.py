"""COCO keypoint AP/AR by pycocotools' ``COCOeval`` on poseguide's arrays, and CAP.

The ground truth and the detections are written as COCO-format dicts (images 1..N, the person
category, COCO-17 keypoints) and scored by ``COCOeval(iouType="keypoints")`` itself, so the
numbers are pycocotools' own (tests compare with it called directly). The same dicts are what
the evaluation writes to disk (``coco_files``), so anyone can rerun COCOeval on them.

**CAP** (HumanSD, ICCV 2023): the same AP/AR with a cosine similarity of the keypoint vectors in
place of OKS: over the ground truth's labelled joints, each coordinate divided by its joint's
sigma, min-max normalised per axis, L2-normalised per axis, x and y concatenated, cosine of the
two vectors. The matching, thresholds (0.50:0.95) and accumulation are COCOeval's own: only
``computeOks`` is replaced. HumanSD's released code (``utils/metrics/coco_similarity.py``) takes
the detection's normalised y from its normalised x (``yd = xd / ...``); ``variant="humansd"``
keeps that, for numbers comparable with the papers that ran that code, ``"corrected"`` uses the
detection's own y. A degenerate axis (all labelled joints on one line) divides by zero: NaN in
``"humansd"`` (which COCOeval's ``<`` test lets match, as in the released code), 0 in
``"corrected"``.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Sequence
from typing import Any

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


def coco_gt_dataset(gts_per_image, areas_per_image=None, boxes_per_image=None) -> tuple[dict, int]:
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


def most_salient(dataset: dict, keep: int) -> dict:
    """``dataset`` with only the ``keep`` largest people (by area) of each image scored: the
    others become crowd regions (``iscrowd`` 1), which COCOeval ignores, so a detection on
    one of them is neither a true nor a false positive. HyperHuman's AP_clean / AR_clean
    score "the three most salient persons"; the largest area is poseguide's reading of
    salient (the paper gives no rule)."""
    out = copy.deepcopy(dataset)
    by_image: dict[int, list[dict]] = {}
    for ann in out["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    for people in by_image.values():
        ranked = sorted(people, key=lambda a: (-a["area"], a["id"]))
        for ann in ranked[keep:]:
            ann["iscrowd"] = 1
    return out


def coco_detections(preds_per_image, scores_per_image) -> list[dict]:
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


SIMILARITIES = ("oks", "cosine")
CAP_VARIANTS = ("humansd", "corrected")


def _unit(v: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return v / np.sqrt((v**2).sum())


def _min_max(v: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return (v - v.min()) / (v.max() - v.min())


def keypoint_cosine_similarity(det: np.ndarray, gt: np.ndarray,
                               sigmas: np.ndarray = COCO17_OKS_SIGMAS,
                               variant: str = "humansd") -> float:  # fmt: skip
    """CAP's similarity of one detection (17, 3) and one ground-truth person (17, 3) (see the
    module docstring); the ground truth's labelled joints (v > 0) are compared."""
    if variant not in CAP_VARIANTS:
        raise ValueError(f"variant must be one of {CAP_VARIANTS}, got {variant!r}")
    sig = _as_sigmas(sigmas)
    labelled = gt[:, 2] > 0
    if not labelled.any():
        return float("nan") if variant == "humansd" else 0.0
    xg, yg = (_unit(_min_max(gt[labelled, k] / sig[labelled])) for k in (0, 1))
    xd, yd = (_min_max(det[labelled, k] / sig[labelled]) for k in (0, 1))
    xd_unit = _unit(xd)
    yd = xd_unit / np.sqrt((yd**2).sum()) if variant == "humansd" else _unit(yd)
    g, d = np.concatenate([xg, yg]), np.concatenate([xd_unit, yd])
    with np.errstate(divide="ignore", invalid="ignore"):
        value = float(np.sum(g * d) / (np.linalg.norm(g) * np.linalg.norm(d)))
    return value if variant == "humansd" or np.isfinite(value) else 0.0


def _cosine_eval(coco_gt: Any, coco_dt: Any, variant: str) -> Any:
    """pycocotools' COCOeval with CAP's similarity in place of OKS (``computeOks``: detections
    sorted by score and cut to ``maxDets`` exactly as COCOeval's own)."""
    from pycocotools.cocoeval import COCOeval

    class CosineEval(COCOeval):
        def computeOks(self, imgId: int, catId: int) -> Any:  # COCOeval's name
            gts, dts = self._gts[imgId, catId], self._dts[imgId, catId]
            order = np.argsort([-d["score"] for d in dts], kind="mergesort")
            dts = [dts[i] for i in order][: self.params.maxDets[-1]]
            if not gts or not dts:
                return []
            sig = self.params.kpt_oks_sigmas
            as_array = [np.asarray(x["keypoints"], dtype=np.float64).reshape(-1, 3)
                        for x in (*dts, *gts)]  # fmt: skip
            d_arr, g_arr = as_array[: len(dts)], as_array[len(dts) :]
            return np.array([[keypoint_cosine_similarity(d, g, sig, variant) for g in g_arr]
                             for d in d_arr])  # fmt: skip

    return CosineEval(coco_gt, coco_dt, iouType="keypoints")


def cocoeval_stats(
    dataset: dict,
    detections: list[dict],
    sigmas: np.ndarray = COCO17_OKS_SIGMAS,
    similarity: str = "oks",
    cap_variant: str = "humansd",
) -> dict[str, float]:
    """pycocotools' ten keypoint stats (``COCO_KEYPOINT_STAT_NAMES``; NaN where it reports -1)
    of ``detections`` against the ground truth ``dataset`` (:func:`coco_gt_dataset`,
    :func:`coco_detections`), with OKS or CAP's cosine ``similarity``."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(dataset)
        coco_gt.createIndex()
        if detections:
            coco_dt = coco_gt.loadRes(copy.deepcopy(detections))
        else:  # loadRes cannot take an empty list
            coco_dt = COCO()
            coco_dt.dataset = {**dataset, "annotations": []}
            coco_dt.createIndex()
        if similarity == "oks":
            evaluator = COCOeval(coco_gt, coco_dt, iouType="keypoints")
        else:
            evaluator = _cosine_eval(coco_gt, coco_dt, cap_variant)
        evaluator.params.kpt_oks_sigmas = _as_sigmas(sigmas)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = zip(COCO_KEYPOINT_STAT_NAMES, evaluator.stats, strict=True)
    return {name: float(value) if value > -1 else float("nan") for name, value in stats}


def coco_keypoint_ap(
    gts_per_image: Sequence[np.ndarray],
    preds_per_image: Sequence[np.ndarray],
    scores_per_image: Sequence[np.ndarray],
    areas_per_image: Sequence[np.ndarray | None] | None = None,
    boxes_per_image: Sequence[np.ndarray | None] | None = None,
    sigmas: np.ndarray = COCO17_OKS_SIGMAS,
    similarity: str = "oks",
    cap_variant: str = "humansd",
    batch: int | None = None,
    salient: int | None = None,
) -> dict:
    """COCO keypoint AP/AR by pycocotools ``COCOeval(iouType="keypoints")`` (or CAP).

    Args:
        gts_per_image: per image, (G, 17, 3) ground truth with visibility 0/1/2.
        preds_per_image: per image, (D, 17, 3) predictions; scores_per_image: per image (D,).
        areas_per_image: per image (G,) areas; default ``0.53 * box w * h``.
        boxes_per_image: per image (G, 4) xywh; default the box of the labelled joints. People
            without labelled joints and without a box are left out.
        similarity: "oks" (COCO's AP) or "cosine" (CAP, ``cap_variant``: module docstring).
        batch: None scores the whole set at once; N scores consecutive batches of N images
            and averages each stat over the batches where it is defined (HumanSD's and
            Stable-Pose's aggregation: the figures then depend on N; ``num_batches`` says how
            many were averaged).
        salient: score only each image's ``salient`` largest people (:func:`most_salient`).

    Returns:
        dict with ``AP, AP50, AP75, APm, APl, AR, AR50, AR75, ARm, ARl`` (pycocotools' ``stats``;
        NaN where pycocotools reports -1, i.e. no person in that area range), ``num_images``,
        ``num_gt`` (people with a labelled joint), ``num_dets`` and ``valid``. When no person has
        a labelled joint every metric is NaN, ``valid`` is False and ``reason`` says why.
        COCOeval keeps the 20 highest-scoring detections per image.
    """
    n = len(gts_per_image)
    for name, seq in (("preds_per_image", preds_per_image), ("scores_per_image", scores_per_image)):
        if len(seq) != n:
            raise KeypointError(f"{name} has {len(seq)} images; gts_per_image has {n}")
    if batch is not None and batch < 1:
        raise ValueError(f"batch must be None or >= 1, got {batch}")
    dataset, num_gt = coco_gt_dataset(gts_per_image, areas_per_image, boxes_per_image)
    if salient is not None:
        dataset = most_salient(dataset, salient)
    detections = coco_detections(preds_per_image, scores_per_image)
    result: dict[str, Any] = {"num_images": n, "num_gt": num_gt, "num_dets": len(detections),
                              "valid": True, "similarity": similarity}  # fmt: skip
    if num_gt == 0:
        result.update(dict.fromkeys(COCO_KEYPOINT_STAT_NAMES, float("nan")))
        result["valid"] = False
        result["reason"] = "no ground-truth person has a labelled keypoint; AP/AR are undefined"
        return result
    parts = [(dataset, detections)] if batch is None else _batches(dataset, detections, batch)
    stats, scored = _mean_stats(parts, sigmas, similarity, cap_variant)
    result.update(stats)
    if batch is not None:
        result.update(batch=batch, num_batches=scored)
    if salient is not None:
        result["salient"] = salient
    return result


def _mean_stats(parts: list[tuple[dict, list[dict]]], sigmas: np.ndarray, similarity: str,
                cap_variant: str) -> tuple[dict[str, float], int]:  # fmt: skip
    """Each stat's mean over the parts that have a scoreable person (where it is defined), and
    the number of parts scored."""
    rows = [cocoeval_stats(d, dets, sigmas, similarity, cap_variant) for d, dets in parts
            if any(a["num_keypoints"] > 0 for a in d["annotations"])]  # fmt: skip
    out = {}
    for name in COCO_KEYPOINT_STAT_NAMES:
        values = [r[name] for r in rows if np.isfinite(r[name])]
        out[name] = float(np.mean(values)) if values else float("nan")
    return out, len(rows)


def _batches(dataset: dict, detections: list[dict], batch: int) -> list[tuple[dict, list[dict]]]:
    """The set cut into consecutive batches of ``batch`` images (image ids 1..N in order)."""
    ids = [im["id"] for im in dataset["images"]]
    out = []
    for start in range(0, len(ids), batch):
        keep = set(ids[start : start + batch])
        images = [im for im in dataset["images"] if im["id"] in keep]
        people = [a for a in dataset["annotations"] if a["image_id"] in keep]
        part = {**dataset, "images": images, "annotations": people}
        out.append((part, [d for d in detections if d["image_id"] in keep]))
    return out
