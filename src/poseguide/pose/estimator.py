"""The pose estimator interface and its factory.

Every estimator returns COCO-17 keypoints ``(x, y, score)`` in the pixel coordinates of the image
it was given (x before y, continuous coordinates, see :mod:`poseguide.pose.skeleton`) and can turn
them into per-joint heatmaps for the stage-2 loss (METHOD 3.3). The images it accepts are listed
in :mod:`poseguide.pose.image_inputs`; results are :mod:`poseguide.pose.detections`; where the
weights come from is :mod:`poseguide.pose.weights`; the backends are ultralytics YOLO-pose
(:mod:`poseguide.pose.yolo`) and mmpose's bottom-up models such as HigherHRNet
(:mod:`poseguide.pose.mmpose`, installed separately).
"""

from __future__ import annotations

import os
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from poseguide.config.schema import EstimatorConfig
from poseguide.pose.detections import Detections
from poseguide.pose.image_inputs import Images
from poseguide.pose.weights import DEFAULT_POSE_WEIGHTS
from poseguide.pose.yolo import YoloPoseEstimator

POSE_BACKENDS: tuple[str, ...] = ("ultralytics", "mmpose")


@runtime_checkable
class PoseEstimator(Protocol):
    """What poseguide needs from a pose estimator: evaluation, pseudo ground truth, stage-2 loss."""

    def estimate_people(self, images: Images) -> list[Detections]:
        """One :class:`Detections` per image."""
        ...

    def estimate(self, images: Images) -> list[np.ndarray]:
        """One (P, 17, 3) keypoint array per image (``estimate_people(...)[i].keypoints``)."""
        ...

    def heatmaps(self, images: Images, heatmap_size: tuple[int, int] | None = None) -> torch.Tensor:
        """(B, 17, h, w) joint heatmaps; ``heatmap_size`` is (w, h)."""
        ...


def build_pose_estimator(
    backend: str = EstimatorConfig.backend,
    weights: str | os.PathLike = DEFAULT_POSE_WEIGHTS,
    device: torch.device | str | None = None,
    **kwargs: Any,
) -> PoseEstimator:
    """Build a pose estimator by backend name (``POSE_BACKENDS``); ``kwargs`` go to its class."""
    mmpose_config = kwargs.pop("mmpose_config", None)
    if backend == "ultralytics":
        return YoloPoseEstimator(weights=weights, device=device, **kwargs)
    if backend == "mmpose":
        from poseguide.pose.mmpose import MMPoseBottomUpEstimator

        return MMPoseBottomUpEstimator(mmpose_config, weights, device, **kwargs)
    raise ValueError(
        f"unknown pose estimator backend {backend!r}; choose one of "
        f"{', '.join(map(repr, POSE_BACKENDS))}"
    )
