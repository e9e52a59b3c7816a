"""One model's aggregates from its per-sample rows (``samples.jsonl``): the means with
bootstrap intervals, set-level OKS, COCO keypoint AP/AR, per-joint accuracy, FID/KID; invalid
images (NaN, Inf, black) counted and left out. See ``docs/evaluation-format.md``."""

from __future__ import annotations

from typing import Any

import numpy as np

from poseguide.config import Config
from poseguide.evaluate.controls import placement_summary
from poseguide.evaluate.metrics import aggregate_oks, fid_kid, sample_oks, summarize
from poseguide.paths import EvalPaths
from poseguide.pose.detections import Detections
from poseguide.pose.skeleton import COCO17_NAMES, NUM_COCO17
from poseguide.utils.images import read_image


def _oks_inputs(record: dict, min_oks: float) -> dict:
    """Re-match one stored row (for set-level OKS, per-joint accuracy and COCO AP)."""

    preds = np.asarray(record["preds"], dtype=np.float64).reshape(-1, NUM_COCO17, 3)
    scores = np.asarray(record["scores"], dtype=np.float64)
    found = Detections(preds, scores, np.zeros((len(scores), 4)), tuple(record["size"]))
    gt = np.asarray(record["gt"], dtype=np.float64).reshape(-1, NUM_COCO17, 3)
    return sample_oks(found, gt, record["areas"], min_oks)


def aggregate(config: Config, records: list[dict], paths: EvalPaths, model: str) -> dict:
    """One model's aggregates from its per-sample rows (see docs/evaluation-format.md)."""

    e = config.evaluate
    stats = {"n": e.bootstrap, "confidence": e.confidence, "seed": e.seed}
    invalid = {r["id"]: r["invalid"] for r in records if r.get("invalid")}
    records = [r for r in records if not r.get("invalid")]  # NaN, Inf, black: not in the means
    people = [v for r in records for v in r["per_gt_oks"] if v is not None]
    sets = aggregate_oks([_oks_inputs(r, e.min_oks) for r in records])
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
        "per_joint_accuracy": [None if np.isnan(v) else float(v) for v in joints],
        "joint_names": list(COCO17_NAMES),
        "oks_histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
        "fid": None,
        "kid": None,
        **placement_summary(records, **stats),
    }
    if e.fid:
        out.update(_fid(records, paths, model))
    return out


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


def _fid(records: list[dict], paths: EvalPaths, model: str) -> dict:
    real = [read_image(paths.original(r["id"]), what="original image") for r in records]
    fake = [read_image(paths.image(model, r["id"]), what="generated image") for r in records]
    result = fid_kid(real, fake, kid_subset_size=min(1000, len(records)))
    return {
        "fid": result.get("fid"),
        "kid": {k: v for k, v in result.items() if k.startswith("kid")},
    }
