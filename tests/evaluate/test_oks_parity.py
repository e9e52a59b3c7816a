"""Every OKS row of an evaluation, recomputed with the reference tools called directly.

For real photos with known keypoints (a manifest) and for pseudo ground truth, ``poseguide
evaluate`` writes ``samples.jsonl``. Each row is then recomputed without poseguide:
``ultralytics.YOLO(weights).predict(<the stored image file>)``, pycocotools'
``COCOeval.computeOks`` for the OKS matrix, and COCOeval's own greedy matching rule
(``evaluateImg``: detections by descending score, each taking the unmatched ground-truth person
of highest OKS). The per-person OKS and the row's mean must equal poseguide's to 1e-6.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from helpers import write_config
from PIL import Image
from skimage import data as skdata

from poseguide.config import load_config
from poseguide.evaluate.runner import file_stem, run_evaluation
from poseguide.pose import weights
from poseguide.pseudo import PSEUDO_GT_MIN_SCORE

IMGSZ, CONF, IOU = 640, 0.25, 0.7
SHIFT = (9, 5)  # the "shifted" model's images: the original moved right and down (pixels)


def _hopper() -> Image.Image:
    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    return Image.open(path).convert("RGB")


def _photos() -> dict[str, Image.Image]:
    astronaut = Image.fromarray(skdata.astronaut())
    hopper = _hopper().resize((400, 300), Image.Resampling.BICUBIC)
    pair = Image.new("RGB", (912, 512))  # two people: exercises the greedy matching
    pair.paste(astronaut, (0, 0))
    pair.paste(_hopper().resize((400, 470)), (512, 20))
    return {
        "astronaut": astronaut,
        "hopper wide": hopper,  # an id with a space: stored under a safe file name
        "camera": Image.fromarray(skdata.camera()).resize((333, 517)).convert("RGB"),
        "pair": pair,
        "coffee": Image.fromarray(skdata.coffee()),  # nobody in it
    }


def _predict(model: object, path: Path, imgsz: int = IMGSZ) -> tuple[np.ndarray, np.ndarray]:
    threads = torch.get_num_threads()
    try:
        r = model.predict(str(path), imgsz=imgsz, conf=CONF, iou=IOU, verbose=False)[0]
    finally:
        torch.set_num_threads(threads)
    if r.keypoints is None or len(r.boxes) == 0:
        return np.zeros((0, 17, 3)), np.zeros(0), np.zeros((0, 4))
    return r.keypoints.data.numpy().astype(np.float64), r.boxes.conf.numpy(), r.boxes.xyxy.numpy()


@pytest.fixture(scope="module")
def yolo() -> object:
    from ultralytics import YOLO

    return YOLO(str(weights.resolve_pose_weights(weights.DEFAULT_POSE_WEIGHTS)))


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory, yolo: object) -> Path:
    """An evaluation of two 'models' (the originals, and the originals shifted by SHIFT) on real
    photos, with manifest keypoints (run ``gt``) and with pseudo ground truth (run ``pseudo``)."""
    root = tmp_path_factory.mktemp("oks-parity")
    lines = []
    for k, (row_id, image) in enumerate(_photos().items()):
        path = root / "photos" / f"{k}.png"
        path.parent.mkdir(exist_ok=True)
        image.save(path)
        # Known keypoints: the estimator at another inference size (320), confident joints only;
        # they differ from what the evaluation's estimator (640) finds, as real labels do.
        kpts, _, _ = _predict(yolo, path, imgsz=320)
        kpts[..., 2] = np.where(kpts[..., 2] >= 0.5, 2.0, 0.0)
        row = {"id": row_id, "image": str(path), "caption": f"photo {k}",
               "keypoints": kpts.reshape(-1, 51).round(2).tolist()}  # fmt: skip
        if row_id == "astronaut":
            row["areas"] = [61000.0]  # a known segment area; the others use 0.53 * box area
        lines.append(json.dumps(row))
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    models = [{"name": "originals", "controlnet": "originals"},
              {"name": "shifted", "controlnet": "unet"}]  # fmt: skip
    write_config(root, data={"eval": {"kind": "manifest", "path": "manifest.jsonl"},
                             "cache": {"dir": "cache"}},
                 evaluate={"models": models, "bootstrap": 20, "ground_truth": "dataset",
                           "estimator": {"weights": "yolo11n-pose.pt", "imgsz": IMGSZ,
                                         "conf": CONF, "iou": IOU}})  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        for run, truth in (("gt", "dataset"), ("pseudo", "estimator")):
            overrides = [f"run.name={run}", f"evaluate.ground_truth={truth}"]
            config = load_config("config.yaml", overrides)
            shifted = root / "runs" / run / "eval" / "images" / "shifted"
            shifted.mkdir(parents=True)
            for row_id, image in _photos().items():  # "generated" images, stored beforehand
                moved = np.roll(np.asarray(image), SHIFT[::-1], axis=(0, 1))
                Image.fromarray(moved).save(shifted / f"{file_stem(row_id)}.png")
            run_evaluation(config)
    return root


def _coco_oks(gts: np.ndarray, areas: np.ndarray, preds: np.ndarray, scores: np.ndarray):
    """pycocotools' OKS matrix (detections sorted by descending score x ground truth)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO()
    gt.dataset = {
        "images": [{"id": 1, "width": 1, "height": 1}],
        "categories": [{"id": 1, "name": "person"}],
        "annotations": [
            {"id": g + 1, "image_id": 1, "category_id": 1, "keypoints": gts[g].ravel().tolist(),
             "num_keypoints": int((gts[g, :, 2] > 0).sum()), "area": float(areas[g]),
             "bbox": [0, 0, 1, 1], "iscrowd": 0}
            for g in range(len(gts))
        ],
    }  # fmt: skip
    gt.createIndex()
    dets = [{"image_id": 1, "category_id": 1, "keypoints": p.ravel().tolist(), "score": float(s)}
            for p, s in zip(preds, scores, strict=True)]  # fmt: skip
    evaluator = COCOeval(gt, gt.loadRes(dets), "keypoints")
    evaluator.params.imgIds = [1]
    evaluator._prepare()
    return np.asarray(evaluator.computeOks(1, 1), dtype=np.float64).reshape(len(preds), len(gts))


def _greedy(ious: np.ndarray, threshold: float) -> np.ndarray:
    """COCOeval.evaluateImg's matching at one threshold: the OKS each ground truth receives."""
    received = np.zeros(ious.shape[1])
    taken = np.zeros(ious.shape[1], dtype=bool)
    for d in range(ious.shape[0]):  # rows are already in descending score order
        best, bar = -1, min(threshold, 1 - 1e-10)
        for g in range(ious.shape[1]):
            if taken[g] or ious[d, g] < bar:
                continue
            best, bar = g, ious[d, g]
        if best >= 0:
            taken[best], received[best] = True, ious[d, best]
    return received


def _truth(root: Path, run: str, row_id: str, manifest: dict, yolo: object) -> tuple:
    """Ground truth and areas as the documented protocol defines them, computed directly."""
    if run == "gt":
        gts = np.asarray(manifest[row_id]["keypoints"], dtype=np.float64).reshape(-1, 17, 3)
        if "areas" in manifest[row_id]:
            return gts, np.asarray(manifest[row_id]["areas"], dtype=np.float64)
        areas = []
        for person in gts:  # 0.53 * the box around the labelled keypoints (ultralytics' rule)
            xy = person[person[:, 2] > 0, :2]
            areas.append(0.53 * np.ptp(xy[:, 0]) * np.ptp(xy[:, 1]) if len(xy) else 0.0)
        return gts, np.asarray(areas)
    original = root / "runs" / run / "eval" / "originals" / f"{file_stem(row_id)}.png"
    kpts, _, boxes = _predict(yolo, original)
    kpts[..., 2] = np.where(kpts[..., 2] >= PSEUDO_GT_MIN_SCORE, 2.0, 0.0)
    areas = 0.53 * (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return kpts, areas


@pytest.mark.parametrize("run", ["gt", "pseudo"])
def test_every_row_equals_ultralytics_plus_pycocotools(evaluated, yolo, run) -> None:
    manifest = {
        json.loads(x)["id"]: json.loads(x)
        for x in (evaluated / "manifest.jsonl").read_text().splitlines()
    }
    eval_dir = evaluated / "runs" / run / "eval"
    rows = [json.loads(x) for x in (eval_dir / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * len(manifest)
    scored = 0
    for row in rows:
        what = f"{run}/{row['model']}/{row['id']}"
        image = eval_dir / "images" / row["model"] / f"{file_stem(row['id'])}.png"
        preds, scores, _ = _predict(yolo, image)
        gts, areas = _truth(evaluated, run, row["id"], manifest, yolo)
        np.testing.assert_allclose(np.asarray(row["preds"]).reshape(-1, 17, 3), preds, atol=1e-3,
                                   err_msg=what)  # fmt: skip
        np.testing.assert_allclose(row["scores"], scores, atol=1e-5, err_msg=what)
        scoreable = (gts[..., 2] > 0).any(axis=1)
        if not scoreable.any():
            assert row["oks"] is None and row["num_gt"] == 0, what
            continue
        order = np.argsort(-scores, kind="mergesort")
        ious = _coco_oks(gts, areas, preds[order], scores[order]) if len(preds) else None
        received = _greedy(ious, 0.0) if ious is not None else np.zeros(len(gts))
        expected = [float(v) if s else None for v, s in zip(received, scoreable, strict=True)]
        got = row["per_gt_oks"]
        assert [v is None for v in got] == [v is None for v in expected], what
        np.testing.assert_allclose(
            [v for v in got if v is not None],
            [v for v in expected if v is not None],
            atol=1e-6,
            err_msg=what,
        )
        assert row["oks"] == pytest.approx(received[scoreable].mean(), abs=1e-6), what
        scored += 1
    assert scored >= 6
    # The rows are not trivial: the shifted model scores below 1 and the pair has two people.
    assert any(r["num_gt"] == 2 and r["oks"] > 0 for r in rows)
    assert any(r["model"] == "shifted" and 0 < r["oks"] < 0.999 for r in rows if r["oks"])
