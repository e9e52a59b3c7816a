"""The frozen Stable Diffusion parts: load, freeze, encode prompts."""

from __future__ import annotations

import copy
import logging
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch

from poseguide.models.hub import ModelNotFoundError, resolve_pretrained
from poseguide.text import encode_captions


@dataclass
class SDParts:
    """The frozen Stable Diffusion parts (eval mode, no gradients) and where they came from."""

    vae: Any  # diffusers AutoencoderKL
    unet: Any  # diffusers UNet2DConditionModel
    text_encoder: Any  # transformers CLIPTextModel
    tokenizer: Any  # transformers CLIPTokenizer
    scheduler: Any  # diffusers DDPMScheduler (training noise schedule)
    source: str  # the folder they came from
    revision: str | None = None
    variant: str | None = None
    # The folder's scheduler_config.json as written (e.g. SD1.5's PNDM config): samplers are
    # built from it, as diffusers' pipeline.from_pretrained would.
    scheduler_config: dict = field(default_factory=dict)


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    module.requires_grad_(False)
    module.eval()
    return module


def load_sd_parts(
    base: str,
    revision: str | None = None,
    variant: str | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> SDParts:
    """Load VAE, UNet, text encoder, tokenizer and noise scheduler from an SD1.5-layout folder."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = resolve_pretrained(base, revision, what="Stable Diffusion base", variant=variant)
    kw = {"variant": variant} if variant else {}
    try:
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dtype, **kw)
        unet = UNet2DConditionModel.from_pretrained(
            folder, subfolder="unet", torch_dtype=dtype, **kw
        )
        text_encoder = CLIPTextModel.from_pretrained(
            folder, subfolder="text_encoder", dtype=dtype, **kw
        )
    except (OSError, ValueError) as err:
        raise ModelNotFoundError(
            f"Stable Diffusion base {base!r} ({folder}) could not be loaded: {err}. It must be a "
            "diffusers pipeline folder with vae/, unet/, text_encoder/, tokenizer/ and scheduler/."
        ) from None
    tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    sampler_config = DDPMScheduler.load_config(folder, subfolder="scheduler")
    for module in (vae, unet, text_encoder):
        freeze(module).to(device)
    return SDParts(vae, unet, text_encoder, tokenizer, scheduler, folder, revision, variant,
                   dict(sampler_config))  # fmt: skip


def vae_scale_factor(vae: Any) -> int:
    """Image pixels per latent pixel: the rule diffusers' pipelines use (``vae_scale_factor``,
    2 to the number of the VAE's downsampling blocks), 8 for SD1.5."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def load_tokenizer(base: str, revision: str | None = None) -> Any:
    """The CLIP tokenizer of an SD1.5-layout folder or hub id (its ``tokenizer/`` subfolder)."""
    from transformers import CLIPTokenizer

    folder = resolve_pretrained(base, revision, what="Stable Diffusion base")
    return CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")


def encode_prompts(parts: SDParts, prompts: list[str], cuts: Any = None) -> torch.Tensor:
    """CLIP text embeddings (B, 77, hidden) for prompts, cut to the tokenizer's length by the one
    caption path (:func:`poseguide.text.encode_captions`; ``cuts`` counts what was cut)."""

    return encode_captions(parts.text_encoder, parts.tokenizer, prompts, cuts)


_WIDE_VAES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def wide_range_vae(vae: Any, what: str) -> Any:
    """``vae`` itself unless it is fp16; then a bf16 copy (fp32's range; +50 % of the VAE's fp16
    memory, made once per VAE and shared by its users), or an fp32 copy where the device has no
    bf16. The stage-2 mask and the reward's decode with gradients overflow fp16's range."""
    if vae.dtype != torch.float16:
        return vae
    if vae not in _WIDE_VAES:
        device = vae.device
        bf16 = device.type == "cpu" or (device.type == "cuda" and torch.cuda.is_bf16_supported())
        dtype = torch.bfloat16 if bf16 else torch.float32
        logging.getLogger(__name__).info("%s runs a %s copy of the fp16 VAE (fp16 overflows "
                                         "there)", what, dtype)  # fmt: skip
        _WIDE_VAES[vae] = copy.deepcopy(vae).to(dtype)
    return _WIDE_VAES[vae]
