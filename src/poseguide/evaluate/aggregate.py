"""One model's aggregates from its per-sample rows (``samples.jsonl``): the means with
bootstrap intervals, set-level OKS, COCO keypoint AP/AR, per-joint accuracy, FID/KID; invalid
images (NaN, Inf, black) counted and left out. See ``docs/evaluation-format.md``."""

from __future__ import annotations

from typing import Any

import numpy as np

from poseguide.config import Config
from poseguide.evaluate.clip import ClipScorer
from poseguide.evaluate.controls import placement_summary
from poseguide.evaluate.metrics import aggregate_oks, fid_clip, fid_kid, sample_oks, summarize
from poseguide.paths import EvalPaths
from poseguide.pose.coco_eval import coco_detections, coco_gt_dataset
from poseguide.pose.detections import Detections
from poseguide.pose.oks import box_from_keypoints
from poseguide.pose.skeleton import COCO17_NAMES, NUM_COCO17
from poseguide.utils.images import read_image
from poseguide.utils.io import atomic_write_json


def _oks_inputs(record: dict, min_oks: float) -> dict:
    """Re-match one stored row (for set-level OKS, per-joint accuracy and COCO AP)."""

    preds = np.asarray(record["preds"], dtype=np.float64).reshape(-1, NUM_COCO17, 3)
    scores = np.asarray(record["scores"], dtype=np.float64)
    found = Detections(preds, scores, np.zeros((len(scores), 4)), tuple(record["size"]))
    gt = np.asarray(record["gt"], dtype=np.float64).reshape(-1, NUM_COCO17, 3)
    return sample_oks(found, gt, record["areas"], min_oks)


def aggregate(config: Config, records: list[dict], paths: EvalPaths, model: str,
              clip: ClipScorer | None = None) -> dict:  # fmt: skip
    """One model's aggregates from its per-sample rows (see docs/evaluation-format.md);
    ``clip``: the evaluation's CLIP scorer, for FID_CLIP (default: one of evaluate.clip_model)."""

    e = config.evaluate
    stats = {"n": e.bootstrap, "confidence": e.confidence, "seed": e.seed}
    invalid = {r["id"]: r["invalid"] for r in records if r.get("invalid")}
    records = [r for r in records if not r.get("invalid")]  # NaN, Inf, black: not in the means
    people = [v for r in records for v in r["per_gt_oks"] if v is not None]
    inputs = [_oks_inputs(r, e.min_oks) for r in records]
    areas = _coco_areas(e.coco_area, inputs)
    sets = aggregate_oks(inputs, coco_areas=areas, coco_batch=e.coco_batch,
                         cap_variant=e.cap_variant, salient=e.coco_salient)  # fmt: skip
    _write_coco_files(paths, model, inputs, areas)
    per_sample = [r["oks"] for r in records if r["oks"] is not None]
    counts, edges = np.histogram(per_sample, bins=20, range=(0.0, 1.0))
    joints = sets["oks"]["per_joint_accuracy"]
    out = {
        "n": len(records),
        "invalid": {"count": len(invalid), "ids": sorted(invalid), "reasons": invalid},
        "clip": summarize([r["clip"] for r in records], **stats),
        "lpips": summarize([r["lpips"] for r in records], **stats),
        "oks": summarize(people, **stats),
        "coco": _plain(sets["coco"]),
        "cap": _plain(sets["cap"]),
        "coco_clean": _plain(sets.get("coco_clean")),
        "per_joint_accuracy": [None if np.isnan(v) else float(v) for v in joints],
        "joint_names": list(COCO17_NAMES),
        "oks_histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
        "fid": None,
        "kid": None,
        "fid_clip": None,
        **placement_summary(records, **stats),
    }
    out["pce"] = out["person_count_error"]  # HumanSD's PCE: mean |detected - ground-truth people|
    if e.fid or e.fid_clip:  # both read the same images: once
        real, fake = _real_and_fake(records, paths, model)
        if e.fid:
            out.update(_fid(real, fake, e.fid_feature, e.kid_subset_size))
        if e.fid_clip:
            out["fid_clip"] = fid_clip(real, fake, clip or ClipScorer(e.clip_model))
    return out


def _coco_areas(rule: str, inputs: list[dict]) -> list[np.ndarray]:
    """The ground-truth areas COCO AP and CAP use: the rows' own ("dataset"), or w x h of the
    labelled keypoints' box ("keypoint_box", HumanSD's rule; 0 for a person without one)."""
    if rule == "dataset":
        return [s["areas"] for s in inputs]
    boxes = [box_from_keypoints(s["gts"]).reshape(-1, 4) for s in inputs]
    return [np.nan_to_num(b[:, 2] * b[:, 3], nan=0.0) for b in boxes]


def _write_coco_files(paths: EvalPaths, model: str, inputs: list[dict],
                      areas: list[np.ndarray]) -> None:  # fmt: skip
    """The COCO-format ground truth and results that COCO AP and CAP scored (images 1..N in
    row order), so that COCOeval can be rerun on them as they are."""
    dataset, _ = coco_gt_dataset([s["gts"] for s in inputs], areas)
    detections = coco_detections([s["preds"] for s in inputs], [s["scores"] for s in inputs])
    atomic_write_json(paths.coco_ground_truth(model), dataset, indent=None)
    atomic_write_json(paths.coco_results(model), detections, indent=None)


def _plain(value: Any) -> Any:
    """JSON-safe: NaN -> None, numpy scalars -> Python."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if np.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _real_and_fake(records: list[dict], paths: EvalPaths, model: str) -> tuple[list, list]:
    """The rows' original images and ``model``'s generated ones, in row order."""
    real = [read_image(paths.original(r["id"]), what="original image") for r in records]
    fake = [read_image(paths.image(model, r["id"]), what="generated image") for r in records]
    return real, fake


def _fid(real: list, fake: list, feature: int, subset: int) -> dict:
    result = fid_kid(real, fake, feature=feature, kid_subset_size=subset)
    return {
        "fid": result.get("fid"),
        # mean and std over the KID subsets (the report shows "mean ± std")
        "kid": {
            "mean": result["kid_mean"],
            "std": result["kid_std"],
            "subset_size": min(subset, len(real)),
            "feature": feature,
        },
    }
