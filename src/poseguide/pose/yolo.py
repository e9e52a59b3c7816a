"""Ultralytics YOLO-pose as a :class:`~poseguide.pose.estimator.PoseEstimator`: everything that
knows ultralytics' layout (its predict path, its letterbox, its network as a torch module, its
per-anchor head) lives here.

Ultralytics reads numpy arrays as BGR (OpenCV order); the adapter flips poseguide's RGB arrays
for it. uint8 images take ultralytics' own predict path (exact parity with ``YOLO.predict``);
float tensors take the torch path (:meth:`YoloPoseEstimator.detect`), which stays on their device.

Ultralytics code and the YOLO weights are AGPL-3.0 licensed.
"""

from __future__ import annotations

import copy
import logging
import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from poseguide.config.schema import EstimatorConfig
from poseguide.errors import InputError
from poseguide.pose.detections import AnchorPredictions, Detections, TensorDetections
from poseguide.pose.heatmaps import batch_heatmaps, default_heatmap_size
from poseguide.pose.image_inputs import Images, split_inputs
from poseguide.pose.weights import resolve_pose_weights

logger = logging.getLogger(__name__)

# YOLO's backbone downsamples 32x: its input sides must be multiples of this.
YOLO_STRIDE = 32
# Ultralytics' letterbox fill value (grey 114 of 255).
LETTERBOX_FILL = 114 / 255


def letterbox_params(height: int, width: int, imgsz: int, stride: int = YOLO_STRIDE) -> dict:
    """Ultralytics' own letterbox geometry for an image of ``height`` x ``width``.

    The numbers come from ``ultralytics.data.augment.LetterBox.get_params`` as its predictor
    uses it (``auto=True``: the long side scaled to ``imgsz``, up or down, the other side padded
    to the next multiple of ``stride``, centred): ``new_unpad`` (w, h) and the ``top``,
    ``bottom``, ``left``, ``right`` padding in pixels.
    """
    from numpy.lib.stride_tricks import as_strided
    from ultralytics.data.augment import LetterBox

    # get_params reads only the image's shape: a zero-stride view allocates nothing.
    shape_only = as_strided(np.zeros(1, dtype=np.uint8), (height, width, 3), (0, 0, 0))
    return LetterBox(imgsz, auto=True, stride=stride).get_params({"img": shape_only})


def letterbox(batch: torch.Tensor, imgsz: int, stride: int = YOLO_STRIDE) -> torch.Tensor:
    """The torch twin of ultralytics' letterbox for a float (B, 3, H, W) batch in [0, 1].

    Same geometry (:func:`letterbox_params`), bilinear resizing without antialiasing (what
    OpenCV's ``INTER_LINEAR`` computes, minus its rounding to uint8), ultralytics' grey (114)
    padding, clamped to [0, 1] (ultralytics divides a tensor with values above 1 by 255).
    """
    h, w = batch.shape[-2:]
    p = letterbox_params(h, w, imgsz, stride)
    new_w, new_h = p["new_unpad"]
    if (new_w, new_h) != (w, h):
        batch = F.interpolate(batch, size=(new_h, new_w), mode="bilinear", align_corners=False)
    if p["left"] or p["right"] or p["top"] or p["bottom"]:
        pads = (p["left"], p["right"], p["top"], p["bottom"])
        batch = F.pad(batch, pads, value=LETTERBOX_FILL)
    return batch.clamp(0.0, 1.0)


def ultralytics_device(device: torch.device) -> str:
    """``device`` as ultralytics' ``device=`` argument: "cpu", "mps" or a CUDA index ("0")."""
    if device.type == "cuda":
        return str(device.index if device.index is not None else torch.cuda.current_device())
    return device.type if device.type in ("cpu", "mps") else str(device)


def _default_device() -> torch.device:
    if torch.accelerator.is_available():
        return torch.accelerator.current_accelerator()
    return torch.device("cpu")


class YoloPoseEstimator:
    """Ultralytics YOLO-pose (YOLOv8/YOLO11 ``*-pose.pt``) as a :class:`PoseEstimator`.

    Two input paths, one network:

    * **uint8 images** (PIL images, uint8 numpy arrays and tensors) go through ultralytics' own
      ``YOLO.predict`` (its LetterBox with OpenCV resizing, its NMS and its mapping back), so
      keypoints, scores and boxes are what ``YOLO(weights).predict(image, imgsz=..., conf=...,
      iou=...)`` gives a user. Photos, pseudo ground truth and evaluation take this path.
    * **float tensors** in [0, 1] (the stage-2 loss' decoded images, on the training device)
      stay tensors: :func:`letterbox` (ultralytics' geometry, bilinear resizing in float), the
      same network (ultralytics' ``AutoBackend``, Conv+BN fused), ultralytics' own
      ``non_max_suppression``, ``scale_boxes`` and ``scale_coords``. It differs from the uint8
      path only in that the resized image is not rounded to uint8 (see the README for the
      measured difference).

    YOLO-pose regresses keypoints instead of predicting heatmaps, so :meth:`heatmaps` draws them:
    one Gaussian per joint at the predicted keypoint (sigma ``heatmap_sigma`` heatmap pixels,
    peak = the keypoint's confidence, people combined by maximum, see
    :func:`poseguide.pose.heatmaps.gaussian_heatmaps`). A joint the model is unsure of gives a
    low peak, so HumanSD's threshold (0.05) treats it as not detected.

    Args:
        weights: a path or a name resolved by :func:`resolve_pose_weights`.
        device: where the model runs; None picks the available accelerator, else the CPU.
        conf: minimum person detection score.
        iou: non-maximum suppression IoU threshold.
        imgsz: inference size (ultralytics' ``imgsz``, default 640 as ultralytics): the long side
            is scaled to it and the short side padded to a multiple of 32. The model is not
            scale invariant: keypoints move with imgsz.
        heatmap_sigma: Gaussian sigma in heatmap pixels.
        heatmap_stride: default heatmap size is the image size divided by this.
        batch_size: images per forward pass.

    The model is loaded on first use.
    """

    def __init__(
        self,
        weights: str | os.PathLike = EstimatorConfig.weights,
        device: torch.device | str | None = None,
        conf: float = EstimatorConfig.conf,
        iou: float = EstimatorConfig.iou,
        imgsz: int = EstimatorConfig.imgsz,
        heatmap_sigma: float = EstimatorConfig.heatmap_sigma,
        heatmap_stride: int = EstimatorConfig.heatmap_stride,
        batch_size: int = 16,
        max_det: int = EstimatorConfig.max_det,
    ) -> None:
        if imgsz is None or imgsz < YOLO_STRIDE or imgsz % YOLO_STRIDE:
            raise ValueError(f"imgsz must be a multiple of {YOLO_STRIDE}, got {imgsz}")
        self.weights = weights
        self.device = torch.device(device) if device is not None else _default_device()
        self.conf, self.iou, self.imgsz, self.max_det = conf, iou, imgsz, max_det
        self.heatmap_sigma, self.heatmap_stride = heatmap_sigma, heatmap_stride
        self.batch_size = batch_size
        self._model: Any = None
        self._network: Any = None

    @property
    def model(self) -> Any:
        """The ``ultralytics.YOLO`` model, loaded on first access."""
        if self._model is None:
            from ultralytics import YOLO

            path = resolve_pose_weights(self.weights)
            logger.info("loading pose estimator %s on %s", path, self.device)
            model = YOLO(str(path), task="pose")
            if model.task != "pose":
                raise InputError(
                    f"{path} is a YOLO {model.task!r} model, not a pose model; pass *-pose.pt"
                )
            self._model = model
        return self._model

    @property
    def network(self) -> Any:
        """The frozen network of the torch path: ultralytics' ``AutoBackend`` over a copy of the
        model, built as its predictor builds it (Conv+BN fused, eval mode, no parameter
        gradients; gradients still flow to the input)."""
        if self._network is None:
            from ultralytics.nn.autobackend import AutoBackend

            net = AutoBackend(copy.deepcopy(self.model.model), device=self.device, verbose=False)
            self._network = net.eval()
        return self._network

    def estimate_people(self, images: Images) -> list[Detections]:
        """Detect people: one :class:`Detections` per image, in input order."""
        items = split_inputs(images)
        out: list[Detections | None] = [None] * len(items)
        groups: dict[tuple, list[int]] = {}
        for i, item in enumerate(items):  # same-kind, same-size images share a forward pass
            kind = "uint8" if isinstance(item, np.ndarray) else str(item.device)
            size = item.shape[:2] if isinstance(item, np.ndarray) else tuple(item.shape[-2:])
            groups.setdefault((kind, *size), []).append(i)
        for (kind, *_), indices in groups.items():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                if kind == "uint8":
                    found = self._predict_uint8([items[i] for i in chunk])
                else:
                    batch = torch.stack([items[i] for i in chunk]).to(self.device)
                    found = [d.to_numpy() for d in self.detect(batch)]
                for i, det in zip(chunk, found, strict=True):
                    out[i] = det
        return out  # type: ignore[return-value]

    def estimate(self, images: Images) -> list[np.ndarray]:
        """One (P, 17, 3) array of ``(x, y, score)`` per image."""
        return [d.keypoints for d in self.estimate_people(images)]

    def heatmaps(self, images: Images, heatmap_size: tuple[int, int] | None = None) -> torch.Tensor:
        """Gaussian heatmaps at the estimated keypoints, peak = keypoint confidence.

        Args:
            images: see the module docstring.
            heatmap_size: (w, h); default (W, H) // ``heatmap_stride`` (images must then share
                one size).

        Returns:
            float32 (B, 17, h, w) in [0, 1], on the input tensor's device (CPU for PIL/numpy).
        """
        if isinstance(images, torch.Tensor) and images.dtype != torch.uint8:
            return self._tensor_heatmaps(images, heatmap_size)
        detections = self.estimate_people(images)
        sizes = [d.image_size for d in detections]
        heatmap_size = self._heatmap_size(sizes, heatmap_size)
        return batch_heatmaps([d.keypoints for d in detections], sizes, heatmap_size,
                              self.heatmap_sigma, scale_by_score=True)  # fmt: skip

    def _heatmap_size(self, sizes: list[tuple[int, int]], size: tuple[int, int] | None) -> tuple:
        return size if size is not None else default_heatmap_size(sizes, self.heatmap_stride)

    def _tensor_heatmaps(self, images: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
        """The torch path end to end on the images' device (the stage-2 loss): no copy of the
        images or of the keypoints to the host."""
        batch = (images[None] if images.ndim == 3 else images).to(self.device)
        found = []
        for start in range(0, len(batch), self.batch_size):
            found += self.detect(batch[start : start + self.batch_size])
        sizes = [d.image_size for d in found]
        size = self._heatmap_size(sizes, size)
        people = [d.keypoints.detach() for d in found]
        return batch_heatmaps(people, sizes, size, self.heatmap_sigma, scale_by_score=True,
                              device=images.device)  # fmt: skip

    def _predict_uint8(self, arrays: list[np.ndarray]) -> list[Detections]:
        """Ultralytics' own predict on (H, W, 3) uint8 RGB arrays of one size."""
        bgr = [np.ascontiguousarray(a[..., ::-1]) for a in arrays]  # ultralytics reads BGR
        # ultralytics' select_device() sets torch's thread count on every predict call; keep ours.
        threads = torch.get_num_threads()
        try:
            results = self.model.predict(
                bgr, imgsz=self.imgsz, conf=self.conf, iou=self.iou, max_det=self.max_det,
                device=ultralytics_device(self.device), batch=len(bgr), verbose=False,
            )  # fmt: skip
        finally:
            torch.set_num_threads(threads)
        h, w = arrays[0].shape[:2]
        out = []
        for r in results:
            if r.keypoints is None or len(r.boxes) == 0:
                out.append(Detections.empty((w, h)))
                continue
            out.append(
                Detections(
                    r.keypoints.data.cpu().numpy().astype(np.float64),
                    r.boxes.conf.cpu().numpy().astype(np.float64),
                    r.boxes.xyxy.cpu().numpy().astype(np.float64),
                    (w, h),
                )
            )
        return out

    def detect(self, batch: torch.Tensor) -> list[TensorDetections]:
        """The torch path on a float (B, 3, H, W) batch in [0, 1] on :attr:`device`.

        Differentiable in the input up to NMS: the returned keypoints and boxes carry gradients
        when ``batch`` does (the selection by NMS does not). Returns one
        :class:`TensorDetections` per image, people sorted by score, coordinates in the
        batch's pixels.
        """
        from ultralytics.utils import ops
        from ultralytics.utils.nms import non_max_suppression

        net = self.network
        h, w = batch.shape[-2:]
        x = letterbox(batch.float(), self.imgsz, int(net.stride))
        preds = net(x)
        found = non_max_suppression(
            preds, self.conf, self.iou, max_det=self.max_det, nc=len(net.names),
            end2end=bool(getattr(net, "end2end", False)),
        )  # fmt: skip
        kpt_shape = tuple(net.kpt_shape)
        out = []
        for pred in found:
            boxes = ops.scale_boxes(x.shape[2:], pred[:, :4].clone(), (h, w))
            kpts = pred[:, 6:].reshape(len(pred), *kpt_shape).clone()
            kpts = ops.scale_coords(x.shape[2:], kpts, (h, w))
            out.append(TensorDetections(kpts, pred[:, 4], boxes, (int(w), int(h))))
        return out

    def anchors(self, batch: torch.Tensor) -> AnchorPredictions:
        """Every anchor's prediction before NMS (the pose reward's path): the network on the
        letterboxed float (B, 3, H, W) batch in [0, 1], boxes and keypoints mapped back to the
        batch's pixels with ultralytics' ``scale_boxes``/``scale_coords``. Differentiable in
        ``batch``; the network's weights stay frozen."""
        from ultralytics.utils import ops

        net = self.network
        if getattr(net, "end2end", False):  # its head returns the top-k after its own selection
            raise InputError(
                f"{self.weights}: an end-to-end (NMS-free) pose model has no per-anchor output "
                "for the reward; use a YOLOv8 or YOLO11 pose model (e.g. yolo11n-pose.pt)"
            )
        from ultralytics.utils.nms import non_max_suppression

        h, w = batch.shape[-2:]
        x = letterbox(batch.float(), self.imgsz, int(net.stride))
        preds = net(x)
        preds = preds[0] if isinstance(preds, (list, tuple)) else preds  # (B, 4 + nc + K*3, A)
        nc = len(net.names)
        # Which anchors the detection path keeps: ultralytics' own NMS on the detached output.
        _, keep = non_max_suppression(preds.detach(), self.conf, self.iou, max_det=self.max_det,
                                      nc=nc, return_idxs=True)  # fmt: skip
        preds = preds.transpose(1, 2)
        boxes = ops.scale_boxes(x.shape[2:], ops.xywh2xyxy(preds[..., :4]), (h, w))
        kpts = preds[..., 4 + nc :].reshape(*preds.shape[:2], *tuple(net.kpt_shape))
        kpts = unclipped_coords(x.shape[2:], kpts, (h, w))  # gradients outside the image too
        return AnchorPredictions(boxes, preds[..., 4 : 4 + nc].amax(-1), kpts, (int(w), int(h)),
                                 [k.long() for k in keep])  # fmt: skip


def unclipped_coords(letterboxed: Any, coords: torch.Tensor, original: Any) -> torch.Tensor:
    """ultralytics' ``scale_coords`` (letterboxed pixels -> the original's) without its in-place
    clip to the image: a joint predicted outside the image keeps its position and gradient."""
    (h1, w1), (h0, w0) = tuple(letterboxed)[:2], tuple(original)[:2]
    gain = min(h1 / h0, w1 / w0)
    new_h, new_w = (max(round(v * gain), 1) for v in (h0, w0))  # LetterBox rounds each side
    pad_x, pad_y = round((w1 - new_w) / 2 - 0.1), round((h1 - new_h) / 2 - 0.1)
    x = (coords[..., 0] - pad_x) / (new_w / w0)
    y = (coords[..., 1] - pad_y) / (new_h / h0)
    return torch.cat([torch.stack([x, y], dim=-1), coords[..., 2:]], dim=-1)
