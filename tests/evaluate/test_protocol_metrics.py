"""A model's COCO AP, CAP and PCE from its stored rows (issue 20): the COCO files written
beside metrics.json give the same AP when pycocotools' COCOeval is run on them directly, and
a protocol's area rule and per-batch aggregation reach the numbers."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from poseguide.config import load_config
from poseguide.evaluate.aggregate import aggregate
from poseguide.paths import EvalPaths
from poseguide.pose.coco_eval import coco_keypoint_ap
from poseguide.pose.oks import box_from_keypoints
from poseguide.pose.skeleton import NUM_COCO17


def _records(n: int = 12, seed: int = 0) -> list[dict]:
    """Stored evaluation rows (the runner's layout) of a model that roughly follows the pose."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        people = 1 + i % 2
        gt = np.zeros((people, NUM_COCO17, 3))
        gt[..., 0] = rng.uniform(10, 110, size=(people, NUM_COCO17))
        gt[..., 1] = rng.uniform(10, 230, size=(people, NUM_COCO17))
        gt[..., 2] = np.where(rng.random((people, NUM_COCO17)) < 0.85, 2, 0)
        found = i % 4  # 0..3 people detected: over- and under-counting
        preds = gt[:1].repeat(found, 0) + rng.normal(0, 3 + i, size=(found, NUM_COCO17, 3))
        preds[..., 2] = 1.0
        out.append({
            "model": "m", "id": f"r{i}", "index": i, "seed": i, "size": [128, 256],
            "clip": 30.0, "lpips": 0.5, "oks": 0.5, "per_gt_oks": [0.5] * people,
            "num_gt": people, "num_dets": found,
            "preds": preds.reshape(-1, 3 * NUM_COCO17).tolist(),
            "scores": rng.uniform(0.3, 1, size=found).tolist(),
            "gt": gt.reshape(-1, 3 * NUM_COCO17).tolist(),
            "areas": (rng.uniform(2000, 9000, size=people)).tolist(),
        })  # fmt: skip
    return out


def _cocoeval_on_files(paths: EvalPaths) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(paths.coco_ground_truth("m")))
        dt = gt.loadRes(str(paths.coco_results("m")))
        evaluator = COCOeval(gt, dt, iouType="keypoints")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


@pytest.mark.parametrize("protocol", ["thesis", "humansd"])
def test_coco_ap_cap_and_pce_from_the_stored_rows(tmp_path: Path, protocol: str) -> None:
    config = load_config(None, [f"evaluate.protocol={protocol}", "evaluate.fid=false",
                                "evaluate.bootstrap=20"])  # fmt: skip
    records = _records()
    paths = EvalPaths(tmp_path)
    out = aggregate(config, records, paths, "m")
    stats = _cocoeval_on_files(paths)
    gts = [np.asarray(r["gt"]).reshape(-1, NUM_COCO17, 3) for r in records]
    preds = [np.asarray(r["preds"]).reshape(-1, NUM_COCO17, 3) for r in records]
    scores = [np.asarray(r["scores"]) for r in records]
    if protocol == "thesis":  # the rows' areas, one COCOeval over the set: the files' AP
        assert out["coco"]["AP"] == pytest.approx(stats[0], abs=1e-6)
        assert out["coco"]["AR"] == pytest.approx(stats[5], abs=1e-6)
        areas = [r["areas"] for r in records]
        assert "batch" not in out["coco"]
    else:  # HumanSD: w x h of the keypoint box, batches of 10 averaged
        boxes = [box_from_keypoints(g) for g in gts]
        areas = [b[:, 2] * b[:, 3] for b in boxes]
        ours = coco_keypoint_ap(gts, preds, scores, areas_per_image=areas, batch=10)
        assert out["coco"]["batch"] == 10 and out["coco"]["num_batches"] == 2
        assert out["coco"]["AP"] == pytest.approx(ours["AP"], abs=1e-12)
        whole = coco_keypoint_ap(gts, preds, scores, areas_per_image=areas)
        assert whole["AP"] == pytest.approx(stats[0], abs=1e-6)  # the files hold those areas
    assert 0 < out["coco"]["AP"] < 1
    cap = coco_keypoint_ap(gts, preds, scores, areas_per_image=areas, similarity="cosine",
                           batch=config.evaluate.coco_batch)  # fmt: skip
    assert out["cap"]["AP"] == pytest.approx(cap["AP"], abs=1e-12)
    assert out["cap"]["similarity"] == "cosine" and out["cap"]["AP"] != out["coco"]["AP"]
    count = np.mean([abs(r["num_dets"] - r["num_gt"]) for r in records])
    assert out["pce"]["mean"] == pytest.approx(count) and count > 0


def test_hyperhuman_adds_ap_clean(tmp_path: Path) -> None:
    config = load_config(None, ["evaluate.protocol=hyperhuman", "evaluate.fid=false",
                                "evaluate.fid_clip=false", "evaluate.bootstrap=20"])  # fmt: skip
    records = _records()
    out = aggregate(config, records, EvalPaths(tmp_path), "m")
    gts = [np.asarray(r["gt"]).reshape(-1, NUM_COCO17, 3) for r in records]
    preds = [np.asarray(r["preds"]).reshape(-1, NUM_COCO17, 3) for r in records]
    scores = [np.asarray(r["scores"]) for r in records]
    clean = coco_keypoint_ap(gts, preds, scores, areas_per_image=[r["areas"] for r in records],
                             salient=3)  # fmt: skip
    assert out["coco_clean"]["salient"] == 3
    assert out["coco_clean"]["AP"] == pytest.approx(clean["AP"], abs=1e-12)
    assert load_config(None).evaluate.coco_salient is None
    assert aggregate(load_config(None, ["evaluate.fid=false"]), records, EvalPaths(tmp_path),
                     "m")["coco_clean"] is None  # fmt: skip


def test_fid_clip_is_written_when_asked(tmp_path: Path) -> None:
    """evaluate.fid_clip (set by the hyperhuman preset) adds FID_CLIP to a model's metrics:
    0 for images identical to the originals, above 0 for others."""
    from PIL import Image

    assert load_config(None, ["evaluate.protocol=hyperhuman"]).evaluate.fid_clip
    assert not load_config(None).evaluate.fid_clip
    config = load_config(None, ["evaluate.fid_clip=true", "evaluate.clip_model=builtin:tiny-clip",
                                "evaluate.bootstrap=20"])  # fmt: skip
    records, paths = _records(6), EvalPaths(tmp_path)
    rng = np.random.default_rng(0)
    for r in records:
        original = rng.integers(0, 256, (48, 32, 3), dtype=np.uint8)
        for path, pixels in ((paths.original(r["id"]), original),
                             (paths.image("same", r["id"]), original),
                             (paths.image("other", r["id"]), original // 4)):  # fmt: skip
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
    same = aggregate(config, [dict(r, model="same") for r in records], paths, "same")
    other = aggregate(config, [dict(r, model="other") for r in records], paths, "other")
    assert abs(same["fid_clip"]) < 1e-6 and other["fid_clip"] > 1e-3 and other["fid"] is None
