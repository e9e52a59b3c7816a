"""Pseudo ground truth: the people a pose estimator finds on a row's original image, the targets
of rows that have no keypoints of their own.

The reward stage's targets (stored in the latent cache's shards) and evaluation's OKS targets
under ``evaluate.ground_truth: estimator`` (stored in the evaluation folder) both come from here,
so the whole concept lives in this one module:

* the rule: :func:`pseudo_ground_truth` (a joint counts where the estimator is at least
  :data:`PSEUDO_GT_MIN_SCORE` sure; areas ``0.53 x`` the detected box);
* which estimator gives it (:func:`pseudo_estimator_config`) and what its output depends on
  (:func:`estimator_identity`, part of the keys of the caches that store it);
* computing it: :func:`find_pseudo` on images, :func:`pseudo_rows` on dataset samples (only the
  rows without keypoints);
* storing and reading it: in the latent cache's shards (:class:`PseudoShards`, the cache's row
  hook, and :func:`cached_pseudo`), or in a JSON file (:func:`stored_pseudo`, evaluation's).

Keypoints are (P, 17, 3) float64 ``(x, y, v)`` with v = 2 for a labelled joint and 0 otherwise,
areas (P,) float64, both in the original image's pixels.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from poseguide.config.schema import Config, EstimatorConfig
from poseguide.models.hub import file_digest
from poseguide.pose.api import detections_to_coco, estimator_from_config
from poseguide.pose.detections import Detections
from poseguide.pose.oks import area_from_box
from poseguide.pose.skeleton import NUM_COCO17
from poseguide.pose.weights import resolve_pose_weights
from poseguide.utils.io import atomic_write_json

PSEUDO_GT_MIN_SCORE = 0.5  # estimator joints at least this confident count as pseudo ground truth

Pseudo = tuple[np.ndarray, np.ndarray]  # (P, 17, 3) keypoints, (P,) areas


def pseudo_ground_truth(detections: Detections) -> Pseudo:
    """Pseudo ground truth from the estimator's people on an original image: (P, 17, 3)
    keypoints, a joint labelled (v = 2) where the estimator is at least
    ``PSEUDO_GT_MIN_SCORE`` sure, and (P,) areas ``0.53 *`` the detected box's area
    (ultralytics' rule when only a box is known), in the image's pixels. Evaluation's OKS and
    the reward stage's targets both take this rule."""
    boxes = np.asarray(detections.boxes, dtype=np.float64).reshape(-1, 4)
    areas = area_from_box(np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1))
    return detections_to_coco(detections, PSEUDO_GT_MIN_SCORE), np.asarray(areas).reshape(-1)


def estimator_identity(cfg: EstimatorConfig) -> dict:
    """What an estimator's pseudo ground truth depends on: its weights' digest and the inference
    settings (a key of the caches that store its output)."""
    path = resolve_pose_weights(cfg.weights)
    return {"backend": cfg.backend, "weights": file_digest(path), "imgsz": cfg.imgsz,
            "conf": cfg.conf, "iou": cfg.iou, "max_det": cfg.max_det,
            "mmpose_config": cfg.mmpose_config, "min_score": PSEUDO_GT_MIN_SCORE}  # fmt: skip


def pseudo_estimator_config(config: Config) -> EstimatorConfig | None:
    """The estimator that gives a reward stage's pseudo ground truth (``pose.estimator``, the
    one ``poseguide pose estimate`` uses) when some stage has a reward; None otherwise."""
    rewarded = any(stage.loss.kind == "reward" for stage in config.train.stages)
    return config.pose.estimator if rewarded else None


def find_pseudo(estimator: Any, images: Sequence[Any]) -> list[Pseudo]:
    """Pseudo ground truth of each image (uint8 arrays or PIL images: ultralytics' own
    preprocessing, as ``poseguide pose estimate``)."""
    if not images:
        return []
    return [pseudo_ground_truth(d) for d in estimator.estimate_people(list(images))]


def pseudo_rows(estimator: Any, samples: Sequence[Any]) -> list[Pseudo | None]:
    """Per dataset sample: None when it has keypoints of its own, else the estimator's pseudo
    ground truth on its original image."""
    todo = [k for k, s in enumerate(samples) if s.keypoints is None]
    out: list[Pseudo | None] = [None] * len(samples)
    found = find_pseudo(estimator, [np.asarray(samples[k].image) for k in todo])
    for k, people in zip(todo, found, strict=True):
        out[k] = people
    return out


@dataclass
class PseudoShards:
    """Pseudo ground truth stored beside the latents in each latent-cache shard: the cache's
    row hook (:class:`poseguide.data.cache.RowExtras`).

    A shard holds ``pseudo_people`` (N,) int32 (-1: the row has keypoints of its own),
    ``pseudo_keypoints`` (N, P, 17, 3) and ``pseudo_areas`` (N, P) float32, zero-padded to the
    shard's most people (at least 1). The estimator's identity is part of the cache key, so
    another estimator builds another cache; its weights load on first use.
    """

    config: EstimatorConfig
    key: ClassVar[str] = "pseudo_ground_truth"  # the cache key's entry
    summary: ClassVar[str] = "pseudo"  # the manifest's entry: rows and people, summed
    _estimator: Any = field(default=None, repr=False)

    def identity(self) -> dict:
        return estimator_identity(self.config)

    def rows(self, samples: Sequence[Any]) -> list[Pseudo | None]:
        if self._estimator is None:
            self._estimator = estimator_from_config(self.config)
        return pseudo_rows(self._estimator, samples)

    def tensors(self, people: list[Pseudo | None]) -> dict[str, torch.Tensor]:
        most = max([1] + [len(p[0]) for p in people if p is not None])
        count = torch.full((len(people),), -1, dtype=torch.int32)
        keypoints = torch.zeros(len(people), most, NUM_COCO17, 3)
        areas = torch.zeros(len(people), most)
        for k, found in enumerate(people):
            if found is not None:
                n = len(found[0])
                count[k] = n
                keypoints[k, :n] = torch.from_numpy(found[0].reshape(n, NUM_COCO17, 3))
                areas[k, :n] = torch.from_numpy(found[1])
        return {"pseudo_people": count, "pseudo_keypoints": keypoints, "pseudo_areas": areas}

    def counts(self, tensors: dict[str, torch.Tensor]) -> dict[str, int]:
        """A shard's rows with pseudo ground truth and their people."""
        people = tensors["pseudo_people"]
        return {"rows": int((people >= 0).sum()), "people": int(people.clamp_min(0).sum())}


def pseudo_shards(config: Config) -> PseudoShards | None:
    """The latent cache's pseudo-ground-truth hook for ``config``: None without a reward stage."""
    estimator = pseudo_estimator_config(config)
    return None if estimator is None else PseudoShards(estimator)


def cached_pseudo(cache: Any, index: int) -> Pseudo | None:
    """Row ``index``'s pseudo ground truth from a :class:`poseguide.data.cache.LatentCache`;
    None when the row has keypoints of its own or the cache holds no pseudo ground truth."""
    if not cache.holds(PseudoShards.key):
        return None
    people = int(cache.row_tensor(index, "pseudo_people"))
    if people < 0:
        return None
    keypoints = cache.row_tensor(index, "pseudo_keypoints")[:people]
    areas = cache.row_tensor(index, "pseudo_areas")[:people]
    return keypoints.double().numpy(), areas.double().numpy()


def stored_pseudo(store: Path, ids: Sequence[str], image_of: Callable[[str], Any],
                  estimator: Any) -> dict[str, Pseudo]:  # fmt: skip
    """Pseudo ground truth of images by id, kept in the JSON file ``store``
    (``{id: {"keypoints": ..., "areas": ...}}``): ids the store lacks are computed, one image
    (``image_of(id)``) at a time, and the store is rewritten atomically."""
    known = json.loads(store.read_text()) if store.is_file() else {}
    out: dict[str, Pseudo] = {}
    for i in ids:
        if not isinstance(known.get(i), dict):  # missing, or an older format
            keypoints, areas = find_pseudo(estimator, [image_of(i)])[0]
            known[i] = {"keypoints": keypoints.tolist(), "areas": areas.tolist()}
        entry = known[i]
        out[i] = (np.asarray(entry["keypoints"], dtype=np.float64).reshape(-1, NUM_COCO17, 3),
                  np.asarray(entry["areas"], dtype=np.float64))  # fmt: skip
    atomic_write_json(store, known, indent=None)
    return out
