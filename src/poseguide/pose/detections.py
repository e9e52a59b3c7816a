"""What a pose estimator returns: people as arrays (:class:`Detections`) or as tensors.

Keypoints are COCO-17 ``(x, y, score)`` in the pixel coordinates of the image the estimator was
given (x before y, continuous coordinates, see :mod:`poseguide.pose.skeleton`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from poseguide.pose.skeleton import NUM_COCO17


@dataclass(frozen=True)
class Detections:
    """The people found in one image, sorted by detection score (highest first).

    Attributes:
        keypoints: (P, 17, 3) float64 ``(x, y, score)`` in the image's pixel coordinates, COCO-17
            order, score in [0, 1].
        scores: (P,) person detection scores in [0, 1].
        boxes: (P, 4) float64 boxes ``(x0, y0, x1, y1)`` in the image's pixel coordinates.
        image_size: (W, H) of the image.
    """

    keypoints: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray
    image_size: tuple[int, int]

    @classmethod
    def empty(cls, image_size: tuple[int, int]) -> Detections:
        return cls(np.zeros((0, NUM_COCO17, 3)), np.zeros(0), np.zeros((0, 4)), image_size)

    def __len__(self) -> int:
        return len(self.scores)


@dataclass(frozen=True)
class AnchorPredictions:
    """Every anchor's box, person score and keypoints, before NMS (tensors with gradients), and
    which anchors the detection path's NMS keeps."""

    boxes: torch.Tensor  # (B, A, 4) x0, y0, x1, y1 in the input's pixels
    scores: torch.Tensor  # (B, A)
    keypoints: torch.Tensor  # (B, A, 17, 3) x, y, confidence (not clipped to the image)
    image_size: tuple[int, int]
    keep: list[torch.Tensor] | None = None  # per image, the kept anchors, best score first


@dataclass(frozen=True)
class TensorDetections:
    """:class:`Detections` as tensors on the estimator's device (the torch path)."""

    keypoints: torch.Tensor  # (P, 17, 3) x, y, score
    scores: torch.Tensor  # (P,)
    boxes: torch.Tensor  # (P, 4) x0, y0, x1, y1
    image_size: tuple[int, int]

    def to_numpy(self) -> Detections:
        def arr(t: torch.Tensor) -> np.ndarray:
            return t.detach().cpu().double().numpy()

        return Detections(arr(self.keypoints), arr(self.scores), arr(self.boxes), self.image_size)
