"""The config's evaluation section: the models compared and how they are scored
(:mod:`poseguide.config.schema`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from poseguide.config.checks import (
    MAX_COUNT,
    STAGE_REF_PREFIX,
    UNTRAINED_INIT,
    _count,
    _folder_name,
    _invalid,
    _positive,
    _seed,
    _unit_interval,
)
from poseguide.config.schema.sections import EstimatorConfig


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
    fid_feature: Literal[64, 192, 768, 2048] = 2048  # Inception layer (HumanSD: 64)
    kid_subset_size: int = 1000  # KID subset size (HumanSD 1000, Stable-Pose 200), capped at n
    fid_clip: bool = False  # also FID_CLIP: FID on clip_model's image embeddings (HyperHuman)
    # The field's evaluation protocols (poseguide.config.protocols): "humansd" and "hyperhuman"
    # set the sampler, steps, CFG, seed, negative prompt and metric variants as those papers
    # did, unless the config sets a key itself; "thesis" changes nothing.
    protocol: Literal["thesis", "humansd", "hyperhuman"] = "thesis"
    # COCO AP/AR and CAP: the ground-truth areas ("dataset": the row's areas, else 0.53 x the
    # keypoint box; "keypoint_box": w x h of the labelled keypoints' box, HumanSD's rule), and
    # the aggregation (null: one COCOeval over the set; N: the mean over consecutive batches of
    # N images, as HumanSD (10) and Stable-Pose (4) did, for comparability only)
    coco_area: Literal["dataset", "keypoint_box"] = "dataset"
    coco_batch: int | None = None
    cap_variant: Literal["humansd", "corrected"] = "humansd"  # CAP as released, or fixed
    coco_salient: int | None = None  # also AP/AR of the N largest people per image (AP_clean)
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
        _count("kid_subset_size", self.kid_subset_size, MAX_COUNT)
        if self.coco_batch is not None:
            _count("coco_batch", self.coco_batch, MAX_COUNT)
        if self.coco_salient is not None:
            _count("coco_salient", self.coco_salient, MAX_COUNT)
        if not 0 < self.confidence < 1:
            raise _invalid("confidence", f"must be in (0, 1), got {self.confidence!r}")
        for pair in self.compare:
            unknown = [name for name in pair if name not in names]
            if unknown or len(pair) != 2 or pair[0] == pair[1]:
                raise _invalid("compare", f"{list(pair)}: name two different models of "
                               f"evaluate.models ({names})")  # fmt: skip
