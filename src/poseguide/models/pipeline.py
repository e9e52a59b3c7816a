"""The one way to build a ``StableDiffusionControlNetPipeline``: from SD parts and a ControlNet.

:func:`load_pipeline` loads the parts (:func:`~poseguide.models.sd.load_sd_parts`) and the
ControlNet (:func:`~poseguide.models.controlnet.load_controlnet`) and assembles them with
:func:`pipeline_from_parts`, the function training validation uses on the models in memory; so
every generation (validation, evaluation, CLI, app) runs the same pipeline.
"""

from __future__ import annotations

from typing import Any

import torch

from poseguide.config.schema import GenerateConfig
from poseguide.errors import InputError
from poseguide.models.controlnet import load_controlnet
from poseguide.models.sd import SDParts, load_sd_parts
from poseguide.utils.device import resolve_dtype

# GenerateConfig.scheduler -> diffusers scheduler class, built from the base model's own config.
SCHEDULERS: dict[str, str] = {
    "unipc": "UniPCMultistepScheduler",
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "pndm": "PNDMScheduler",
    "ddpm": "DDPMScheduler",
}


def make_scheduler(name: str, config: Any) -> Any:
    """A fresh scheduler ``name`` (a key of :data:`SCHEDULERS`) from a scheduler config.

    The noise schedule (betas, timesteps, prediction type) comes from ``config``, the base
    model's scheduler config, so every sampler solves the same diffusion the model was trained on.
    """
    import diffusers

    if name not in SCHEDULERS:
        raise InputError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    cls = getattr(diffusers, SCHEDULERS[name])
    extra = {"skip_prk_steps": True} if name == "pndm" else {}  # SD's PNDM skips Runge-Kutta
    return cls.from_config(config, **extra)


def check_controlnet(controlnet: Any) -> None:
    from diffusers import ControlNetModel

    if not isinstance(controlnet, ControlNetModel):
        raise TypeError(
            f"controlnet is a {type(controlnet).__name__}, expected a diffusers ControlNetModel "
            "(unwrap a DDP or compiled model first, e.g. with accelerator.unwrap_model)"
        )


def pipeline_from_parts(
    parts: SDParts, controlnet: Any, cfg: GenerateConfig, progress: bool = False
) -> Any:
    """A pipeline over SD parts and a ControlNet already in memory.

    Nothing is copied, cast or moved: the parts and the ControlNet keep their dtypes and devices
    (mixed dtypes, e.g. fp16 frozen parts and the fp32 training ControlNet, run under autocast in
    :func:`poseguide.generate.generate`). The sampler is a new ``cfg.scheduler`` built from the
    base folder's scheduler config, so the training noise scheduler is never stepped.
    """
    from diffusers import StableDiffusionControlNetPipeline

    check_controlnet(controlnet)
    devices = {m.device for m in (parts.vae, parts.unet, parts.text_encoder, controlnet)}
    if len(devices) > 1:
        raise ValueError(f"the SD parts and the ControlNet are on different devices: {devices}")
    pipe = StableDiffusionControlNetPipeline(
        vae=parts.vae,
        text_encoder=parts.text_encoder,
        tokenizer=parts.tokenizer,
        unet=parts.unet,
        controlnet=controlnet,
        scheduler=make_scheduler(cfg.scheduler, parts.scheduler_config or parts.scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=not progress)
    return pipe


def load_pipeline(
    base: str,
    controlnet: str | Any,
    cfg: GenerateConfig,
    device: torch.device | str = "cpu",
    revision: str | None = None,
    variant: str | None = None,
    controlnet_revision: str | None = None,
    progress: bool = False,
) -> Any:
    """A pipeline on ``device`` in ``cfg.dtype`` (no safety checker) from the base model and a
    ControlNet folder or hub id, or a ``ControlNetModel`` in memory (used as is: not copied,
    cast or moved, so it must already be on ``device``).

    ``revision``/``variant`` are the base's (variant e.g. "fp16"); ``progress`` shows diffusers'
    per-step progress bar.
    """
    device = torch.device(device)
    dtype = resolve_dtype(cfg.dtype, device)
    if isinstance(controlnet, str):
        controlnet = load_controlnet(controlnet, dtype, controlnet_revision).to(device)
    check_controlnet(controlnet)
    if controlnet.device.type != device.type:
        raise ValueError(f"the ControlNet is on {controlnet.device}; the pipeline goes to {device}")
    parts = load_sd_parts(base, revision, variant, dtype=dtype, device=device)
    return pipeline_from_parts(parts, controlnet, cfg, progress)
