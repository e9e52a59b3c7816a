"""The config's training section: the optimizer, validation and the stages with their losses
(:mod:`poseguide.config.schema`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from poseguide.config.checks import (
    MAX_BATCH,
    MAX_SIDE,
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
from poseguide.config.schema.sections import EstimatorConfig


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
