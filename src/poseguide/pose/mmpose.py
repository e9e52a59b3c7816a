"""mmpose's bottom-up estimators (HigherHRNet, the detector HumanSD, Stable-Pose and HyperHuman
scored with) as a :class:`~poseguide.pose.estimator.PoseEstimator`, from a config and a
checkpoint the user supplies, offline.

mmpose is not a dependency (its mmcv is a source archive on the registry); README "The field's
protocols" gives the install recipe measured here. mmpose 0.x's API is used
(``init_pose_model``, ``inference_bottom_up_pose_model``): 0.29.0 ships the HigherHRNet configs,
mmpose 1.x neither ships them nor keeps that API, and is refused with that message.

* Images: as every estimator takes them (:mod:`poseguide.pose.image_inputs`), handed to mmpose
  as BGR arrays, the layout its loader expects of an array (``cv2.imread``'s).
* Checkpoint: read by poseguide with ``torch.load(weights_only=True)``, numpy arrays and
  scalars allowed (openmmlab checkpoints keep some in ``meta``), nothing else unpickled; its
  ``state_dict`` is loaded strictly.
* People: mmpose's grouped people after its pose NMS at ``iou`` (mmpose's ``pose_nms_thr``;
  HumanSD scored with 1, no suppression), those with a score >= ``conf``, best first, at most
  ``max_det``; the box is the extent of the joints scored >= ``conf``.
* Heatmaps: the network's own (HumanSD averaged HigherHRNet's heatmaps), resized to the
  requested size, per image, clipped to [0, 1].
"""

from __future__ import annotations

import logging
import os
import pickle
from typing import Any

import numpy as np
import torch

from poseguide.errors import UserError
from poseguide.pose.detections import Detections
from poseguide.pose.heatmaps import default_heatmap_size
from poseguide.pose.image_inputs import Images, as_image_tensors, split_inputs
from poseguide.pose.skeleton import NUM_COCO17
from poseguide.pose.weights import resolve_pose_weights

logger = logging.getLogger(__name__)

INSTALL_HINT = (
    "mmpose is not installed: see README 'The field's protocols' for the offline recipe "
    "(mmpose 0.29.0 with mmcv 1.7.0 built without ops), or use pose backend 'ultralytics'"
)
# numpy types an openmmlab checkpoint's meta may hold (torch.load(weights_only=True) refuses
# them unless allowed; they build arrays and scalars only)
_NUMPY_GLOBALS = ("_reconstruct", "scalar")


class MMPoseUnavailableError(UserError):
    """mmpose cannot be imported (it is an optional, separately installed backend)."""


def _apis() -> Any:
    """``mmpose.apis`` of mmpose 0.x, or a one-line error with the recipe."""
    try:
        if not hasattr(np, "int"):  # mmpose 0.29's bottom-up pipeline uses np.int / np.float
            np.int, np.float = int, float  # type: ignore[attr-defined]
        import mmpose.apis as apis
    except ImportError as err:
        raise MMPoseUnavailableError(f"{INSTALL_HINT} ({err})") from None
    if not hasattr(apis, "inference_bottom_up_pose_model"):
        import mmpose

        raise MMPoseUnavailableError(
            f"mmpose {getattr(mmpose, '__version__', '?')} has neither the HigherHRNet configs "
            "nor the 0.x bottom-up API poseguide calls; install mmpose 0.29.0 (README 'The "
            "field's protocols')"
        )
    return apis


def load_checkpoint_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of an mmpose checkpoint, unpickling tensors, numpy arrays and plain
    containers only (``weights_only=True`` with numpy's array builders allowed)."""
    try:
        import numpy._core.multiarray as multiarray  # numpy 2
    except ImportError:  # numpy 1
        import numpy.core.multiarray as multiarray
    # by both module names: checkpoints pickled under numpy 1 name numpy.core.multiarray
    allowed: list[Any] = [
        (getattr(multiarray, name), f"{module}.{name}")
        for name in _NUMPY_GLOBALS
        for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    ]
    allowed += [np.ndarray, np.dtype, *{type(np.dtype(t)) for t in "?bhilqefdBHILQFDUO"}]
    try:
        with torch.serialization.safe_globals(allowed):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"{path}: refused to load: it holds more than tensors and numpy arrays ({first})"
        ) from None
    state = data.get("state_dict", data) if isinstance(data, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: not an mmpose checkpoint (expected a state_dict of tensors)")
    return {k.removeprefix("module."): v for k, v in state.items()}


class MMPoseBottomUpEstimator:
    """A bottom-up mmpose model (HigherHRNet) as a pose estimator; loads on first use.

    Args:
        config: the mmpose config file (e.g. ``higherhrnet_w48_coco_512x512.py``).
        weights: its checkpoint (``.pth``), or None for random weights (tests only).
        device: where it runs; None = the CPU.
        conf: minimum person score kept.
        iou: mmpose's pose NMS threshold (``pose_nms_thr``; HumanSD: 1.0, no suppression).
        max_det: at most this many people per image.
        heatmap_stride: default heatmap size = the image size / this.
    """

    def __init__(self, config: str | os.PathLike | Any, weights: str | os.PathLike | None = None,
                 device: torch.device | str | None = None, conf: float = 0.25, iou: float = 0.9,
                 max_det: int = 300, heatmap_stride: int = 4, **_: Any) -> None:  # fmt: skip
        # a path, or an mmcv/mmengine Config object already loaded (tests lower thresholds)
        self.config = str(config) if isinstance(config, (str, os.PathLike)) else config
        self.weights = weights
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.conf, self.iou, self.max_det = conf, iou, max_det
        self.heatmap_stride = heatmap_stride
        self._model: Any = None
        self._api: Any = None

    @property
    def model(self) -> Any:
        """The mmpose model, built from the config with the checkpoint's weights."""
        if self._model is None:
            self._api = _apis()
            model = self._api.init_pose_model(self.config, None, device=str(self.device))
            if self.weights is not None:
                path = resolve_pose_weights(self.weights, download=False)
                model.load_state_dict(load_checkpoint_state(path), strict=True)
            logger.info("mmpose bottom-up estimator %s (%s)", self.config,
                        self.weights or "random weights")  # fmt: skip
            self._model = model.eval()
        return self._model

    def _infer(self, bgr: np.ndarray, heatmap: bool) -> tuple[list[dict], np.ndarray | None]:
        """mmpose on one BGR image: people as {keypoints (17, 3), score}, and the (17, H, W)
        heatmaps when asked."""
        model = self.model
        people, outputs = self._api.inference_bottom_up_pose_model(
            model, bgr, pose_nms_thr=self.iou, return_heatmap=heatmap
        )
        maps = np.asarray(outputs[0]["heatmap"])[0] if heatmap else None
        return [{"keypoints": p["keypoints"], "score": p["score"]} for p in people], maps

    def _detections(self, people: list[dict], size: tuple[int, int]) -> Detections:
        kept = sorted((p for p in people if float(p["score"]) >= self.conf),
                      key=lambda p: -float(p["score"]))[: self.max_det]  # fmt: skip
        if not kept:
            return Detections.empty(size)
        keypoints = np.stack([np.asarray(p["keypoints"], dtype=np.float64) for p in kept])
        if keypoints.shape[1:] != (NUM_COCO17, 3):
            raise ValueError(f"mmpose returned keypoints of shape {keypoints.shape[1:]}, "
                             f"expected ({NUM_COCO17}, 3): a COCO-17 model is needed")  # fmt: skip
        boxes = np.zeros((len(kept), 4))
        for k, person in enumerate(keypoints):
            sure = person[person[:, 2] >= self.conf, :2]
            sure = sure if len(sure) else person[:, :2]
            boxes[k] = [*sure.min(0), *sure.max(0)]
        scores = np.asarray([float(p["score"]) for p in kept])
        return Detections(keypoints, np.clip(scores, 0.0, 1.0), boxes, size)

    def estimate_people(self, images: Images) -> list[Detections]:
        """One :class:`Detections` per image, in input order."""
        out = []
        for image in _uint8_arrays(images):
            people, _ = self._infer(np.ascontiguousarray(image[..., ::-1]), heatmap=False)
            out.append(self._detections(people, (image.shape[1], image.shape[0])))
        return out

    def estimate(self, images: Images) -> list[np.ndarray]:
        """One (P, 17, 3) array of ``(x, y, score)`` per image."""
        return [d.keypoints for d in self.estimate_people(images)]

    def heatmaps(self, images: Images, heatmap_size: tuple[int, int] | None = None) -> torch.Tensor:
        """float32 (B, 17, h, w) network heatmaps in [0, 1]; ``heatmap_size`` is (w, h),
        default each image's size / ``heatmap_stride`` (images must then share one size)."""
        arrays = _uint8_arrays(images)
        if heatmap_size is None:
            sizes = [(a.shape[1], a.shape[0]) for a in arrays]
            heatmap_size = default_heatmap_size(sizes, self.heatmap_stride)
        maps = []
        for image in arrays:
            _, found = self._infer(np.ascontiguousarray(image[..., ::-1]), heatmap=True)
            grid = torch.from_numpy(np.asarray(found, dtype=np.float32))[None]
            size = (heatmap_size[1], heatmap_size[0])
            maps.append(torch.nn.functional.interpolate(grid, size=size, mode="bilinear",
                                                        align_corners=False)[0])  # fmt: skip
        return torch.stack(maps).clamp(0.0, 1.0)


def _uint8_arrays(images: Images) -> list[np.ndarray]:
    """(H, W, 3) uint8 RGB arrays of any accepted input (float tensors rounded to uint8)."""
    out = []
    for item in split_inputs(images):
        if isinstance(item, np.ndarray):
            out.append(item)
        else:
            (tensor,) = as_image_tensors(item)
            pixels = (tensor.detach().clamp(0, 1) * 255).round().to(torch.uint8)
            out.append(pixels.permute(1, 2, 0).cpu().numpy())
    return out
