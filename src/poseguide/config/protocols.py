"""The field's evaluation protocols as config presets (``evaluate.protocol``).

A protocol sets the config keys its paper fixed (sampler, steps, CFG, seed, negative prompt,
metric variants, aggregation) unless the config sets that key itself, in a file or an override:
every setting stays overridable, and the resolved config written into the run folder holds the
values used. What a protocol fixes that is not a config key of poseguide (the image size the
paper generated at, its detector) is listed in ``expected`` and ``differences`` and shown in the
report's set-up beside what this evaluation actually did.

Sources: HumanSD (Ju et al., ICCV 2023) ``scripts/pose2img_metrics.py`` and
``utils/metrics/metrics.yaml`` of its release (DDIM 50, eta 0, CFG 9, seed 42, batch 10, the
negative prompt below, HigherHRNet-W48 with ``pose_nms_thr=1``, FID at Inception feature 64,
KID subset 1000, CLIP ``openai/clip-vit-base-patch16``, COCO evaluation per batch of 10 with the
keypoints' box as the ground-truth box); HyperHuman (Liu et al., ICLR 2024), section 5 and its
appendix (COCO val2014's human subset, 512 x 512 centre crop, DDIM 50, CFG 7.5, AP/AR over the
set, FID and KID at feature 2048).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

PROTOCOL_KEY = "evaluate.protocol"

# HumanSD's fixed negative prompt (its pose2img_metrics.py; ControlNet's demo default too).
HUMANSD_NEGATIVE_PROMPT = ("longbody, lowres, bad anatomy, bad hands, missing fingers, extra "
                           "digit, fewer digits, cropped, worst quality, low quality")  # fmt: skip


@dataclass(frozen=True)
class Protocol:
    name: str
    source: str  # the paper and code it follows
    settings: dict[str, Any] = field(default_factory=dict)  # dotted config key -> value
    expected: dict[str, Any] = field(default_factory=dict)  # key -> the paper's value (checked)
    differences: tuple[str, ...] = ()  # what poseguide does otherwise, said in the report


PROTOCOLS: dict[str, Protocol] = {
    "thesis": Protocol(
        "thesis",
        "the thesis' Table 4.1: mean OKS (YOLOv8x-pose), LPIPS, CLIP score",
    ),
    "humansd": Protocol(
        "humansd",
        "HumanSD (ICCV 2023), scripts/pose2img_metrics.py + utils/metrics/ of its release; "
        "Stable-Pose (NeurIPS 2024) and GRPose (AAAI 2025) report the same metrics",
        settings={
            "generate.scheduler": "ddim",
            "generate.steps": 50,
            "generate.guidance_scale": 9.0,
            "generate.negative_prompt": HUMANSD_NEGATIVE_PROMPT,
            "generate.batch_size": 10,
            "evaluate.seed": 42,
            "evaluate.fid": True,
            "evaluate.fid_feature": 64,
            "evaluate.kid_subset_size": 1000,
            "evaluate.clip_model": "openai/clip-vit-base-patch16",
            "evaluate.coco_area": "keypoint_box",
            "evaluate.coco_batch": 10,
            "evaluate.cap_variant": "humansd",
        },
        expected={"data.resolution": 512},
        differences=(
            "detector: HumanSD scores with bottom-up HigherHRNet-W48 (mmpose, pose_nms_thr=1); "
            "poseguide's AP, CAP and PCE use evaluate.estimator: with YOLO-pose (the default) "
            "they are not the papers' numbers; backend mmpose runs HigherHRNet from your "
            "checkpoint",
            "seeds: HumanSD seeds once (seed_everything(42)) and draws every batch's noise from "
            "that stream; poseguide seeds each row (evaluate.seed + row index), so an image "
            "does not depend on the batch it falls in",
            "ground-truth box: HumanSD takes min/max over all 17 keypoint entries, unlabelled "
            "(0, 0) ones included; poseguide takes the labelled joints' box",
            "FID/KID: HumanSD's quality script scores the saved 4-panel image (HumanSD issue "
            "#32); poseguide scores the generated image alone",
            "Stable-Pose's README uses CFG 7.5, COCO batches of 4 and KID subset 200: set "
            "generate.guidance_scale, evaluate.coco_batch and evaluate.kid_subset_size",
        ),
    ),
    "hyperhuman": Protocol(
        "hyperhuman",
        "HyperHuman (ICLR 2024), section 5: COCO val2014's human subset",
        settings={
            "generate.scheduler": "ddim",
            "generate.steps": 50,
            "generate.guidance_scale": 7.5,
            "evaluate.fid": True,
            "evaluate.fid_feature": 2048,
            "evaluate.kid_subset_size": 1000,
            "evaluate.coco_area": "dataset",
            "evaluate.coco_batch": None,
            "evaluate.coco_salient": 3,
            "evaluate.fid_clip": True,
        },
        expected={"data.resolution": 512, "data.resize_mode": "crop"},
        differences=(
            "detector: HyperHuman scores with HigherHRNet (mmpose); poseguide's AP/AR use "
            "evaluate.estimator: with YOLO-pose (the default) they are not the paper's "
            "numbers; backend mmpose runs HigherHRNet from your checkpoint",
            "AP_clean / AR_clean: the paper scores 'the three most salient persons' without a "
            "rule; poseguide keeps the three largest by area and ignores the others (COCO crowd "
            "regions)",
            "FID_CLIP: the Fréchet distance of evaluate.clip_model's image embeddings (the "
            "paper does not name its CLIP model for it)",
            "COCO val2014's human subset (8,236 images in the paper) cannot be rebuilt: the "
            "paper names no detector or threshold; data.eval.select: {max_people: 3, "
            "min_area_ratio: 0.15} applies HyperHuman's HumanVerse filter to COCO's "
            "annotations instead",
        ),
    ),
}


def _get(data: dict, dotted: str) -> tuple[bool, Any]:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _set_missing(data: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    node.setdefault(last, value)


def requested_protocol(data: dict, overrides: Sequence[str]) -> str:
    """The protocol a config asks for: the last ``evaluate.protocol=`` override, else the file's
    ``evaluate.protocol``, else "thesis"."""
    chosen = [o.split("=", 1)[1].strip() for o in overrides
              if o.split("=", 1)[0].strip() == PROTOCOL_KEY]  # fmt: skip
    if chosen:
        return chosen[-1]
    found, value = _get(data, PROTOCOL_KEY)
    return str(value) if found and value is not None else "thesis"


def with_protocol(data: dict, overrides: Sequence[str] = ()) -> dict:
    """``data`` (a config as read from YAML) with its protocol's settings filled in where the
    file does not set them; overrides are applied later and win over both. An unknown protocol
    is left for the schema to refuse with its one-line message."""
    protocol = PROTOCOLS.get(requested_protocol(data, overrides))
    if protocol is None or not protocol.settings:
        return data
    out = copy.copy(data)  # keeps the file sources of a ConfigData
    for section in {key.split(".")[0] for key in protocol.settings}:
        if isinstance(out.get(section), dict):
            out[section] = copy.deepcopy(out[section])
    for dotted, value in protocol.settings.items():
        _set_missing(out, dotted, value)
    return out


def protocol_report(config_dict: dict) -> dict:
    """For the report's set-up: the protocol, its source, each setting with the value used and
    whether it follows the protocol, the paper's expectations checked, and the differences."""
    name = config_dict.get("evaluate", {}).get("protocol", "thesis")
    protocol = PROTOCOLS[name]
    rows = []
    for dotted, value in {**protocol.settings, **protocol.expected}.items():
        _, used = _get(config_dict, dotted)
        rows.append({"key": dotted, "protocol": value, "used": used, "follows": used == value})
    return {"name": name, "source": protocol.source, "settings": rows,
            "differences": list(protocol.differences)}  # fmt: skip
