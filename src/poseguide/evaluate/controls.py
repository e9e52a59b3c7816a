"""Is a model following the pose, or only putting a person of the right size in the right place?

OKS against the requested pose rewards both. The control (:func:`moved_pose`): another held-out
row's pose, moved onto the target's centre and scaled to its size. A model that only places a
person scores about as well against that moved pose as against the true one; a model that
follows the pose scores clearly better against the true one. The **pose-specific OKS** of a row
is ``OKS(generated, target) - OKS(generated, other pose moved onto the target)``; its mean and
bootstrap interval come from the paired per-row differences.

Also here: the detection rate (images where the estimator finds anybody) and the person-count
error ``|detected people - ground-truth people|``, both per row with bootstrap intervals.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from poseguide.evaluate.metrics import summarize
from poseguide.pose.oks import box_area_from_keypoints, box_from_keypoints, match_greedy
from poseguide.pose.skeleton import NUM_COCO17


def _frame(person: np.ndarray) -> tuple[np.ndarray, float] | None:
    """Centre (x, y) and size (the square root of the box area) of a person's labelled joints."""
    box = box_from_keypoints(person)  # (x, y, w, h)
    if not np.isfinite(box).all():
        return None
    size = float(np.sqrt(max(box[2], 1e-6) * max(box[3], 1e-6)))
    return np.array([box[0] + box[2] / 2, box[1] + box[3] / 2]), size


def moved_pose(other: np.ndarray, target: np.ndarray) -> np.ndarray | None:
    """``other`` (17, 3) translated and scaled so its joints' box has ``target``'s centre and
    size (the square root of the box area); None when either has no labelled joint."""
    a, b = _frame(other), _frame(target)
    if a is None or b is None:
        return None
    moved = np.array(other, dtype=np.float64)
    labelled = moved[:, 2] > 0
    moved[labelled, :2] = (moved[labelled, :2] - a[0]) * (b[1] / a[1]) + b[0]
    return moved


def _first_person(record: dict) -> np.ndarray | None:
    gt = np.asarray(record["gt"], dtype=np.float64).reshape(-1, NUM_COCO17, 3)
    return gt[0] if len(gt) and (gt[0][:, 2] > 0).any() else None


def _oks_one(record: dict, person: np.ndarray, area: float) -> float:
    preds = np.asarray(record["preds"], dtype=np.float64).reshape(-1, NUM_COCO17, 3)
    scores = np.asarray(record["scores"], dtype=np.float64)
    return float(match_greedy(preds, scores, person[None], np.array([area])).oks[0])


def pose_specific_rows(records: Sequence[dict]) -> list[dict]:
    """Per row (in row-index order): OKS of its first person against the truth and against the
    next row's first person moved onto it (the last row takes the first row's), and their
    difference. Rows without a labelled person on either side are left out."""
    ordered = sorted(records, key=lambda r: r["index"])
    out = []
    for k, record in enumerate(ordered):
        target = _first_person(record)
        other = _first_person(ordered[(k + 1) % len(ordered)]) if len(ordered) > 1 else None
        if target is None or other is None:
            continue
        moved = moved_pose(other, target)
        if moved is None:
            continue
        areas = record.get("areas")
        area = float(areas[0]) if areas else float(box_area_from_keypoints(target))
        true, control = _oks_one(record, target, area), _oks_one(record, moved, area)
        out.append({"id": record["id"], "oks": true, "oks_moved": control,
                    "pose_specific": true - control})  # fmt: skip
    return out


def placement_summary(records: Sequence[dict], **stats: float) -> dict:
    """Pose-specific OKS, the moved-pose OKS, detection rate and person-count error, each a
    :func:`~poseguide.evaluate.metrics.summarize` dict (mean, bootstrap interval, n)."""

    rows = pose_specific_rows(records)
    detected = [float(r["num_dets"] > 0) for r in records]
    count_error = [float(abs(r["num_dets"] - r["num_gt"])) for r in records]
    return {
        "pose_specific_oks": summarize([r["pose_specific"] for r in rows], **stats),
        "moved_pose_oks": summarize([r["oks_moved"] for r in rows], **stats),
        "detection_rate": summarize(detected, **stats),
        "person_count_error": summarize(count_error, **stats),
    }


def paired_effect(records: Sequence[dict], model: str, against: str, **stats: float) -> dict:
    """``model`` minus ``against`` on the rows both scored (the same prompt, pose and seed):
    the mean and bootstrap interval of the per-row differences of OKS and of pose-specific OKS
    (an interval that excludes 0 is an effect at that confidence)."""

    def by_id(name: str, key: str, rows: Sequence[dict]) -> dict[str, float]:
        return {r["id"]: r[key] for r in rows if r.get("model", name) == name
                and r.get(key) is not None}  # fmt: skip

    mine = [r for r in records if r["model"] == model and not r.get("invalid")]
    theirs = [r for r in records if r["model"] == against and not r.get("invalid")]
    out = {"model": model, "against": against}
    for key, a, b in (
        ("oks", by_id(model, "oks", mine), by_id(against, "oks", theirs)),
        ("pose_specific_oks", by_id(model, "pose_specific", pose_specific_rows(mine)),
         by_id(against, "pose_specific", pose_specific_rows(theirs))),
    ):  # fmt: skip
        shared = sorted(set(a) & set(b))
        out[key] = summarize([a[i] - b[i] for i in shared], **stats)
    return out
