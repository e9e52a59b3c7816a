"""ControlNet references and the one way to build or load a ControlNet.

A reference (config values ``train.stages[].init``, ``evaluate.models[].controlnet``, the app's
model menu, ``--controlnet``) is one of:

* ``unet``: a ControlNet copied from the base UNet's encoder, untrained (its zero convolutions
  leave the UNet unchanged); built seeded, so every caller gets the same one;
* ``previous``: the previous stage's export (training only);
* ``stage:NAME``: this run's export of stage NAME;
* ``originals``: no model at all, the evaluation scores the original images;
* anything else: a folder written by ``ControlNetModel.save_pretrained`` or a hub id.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from poseguide.errors import InputError
from poseguide.models.hub import ModelNotFoundError, resolve_pretrained
from poseguide.models.sd import vae_scale_factor
from poseguide.utils.checksum import folder_problem

UNTRAINED = "unet"
PREVIOUS = "previous"
ORIGINALS = "originals"
STAGE_PREFIX = "stage:"

RefKind = Literal["untrained", "previous", "stage", "originals", "pretrained"]


@dataclass(frozen=True)
class ControlNetRef:
    """A parsed ControlNet reference: ``kind`` and, for ``stage``/``pretrained``, ``name``."""

    kind: RefKind
    name: str = ""

    @classmethod
    def parse(cls, text: str | None) -> ControlNetRef:
        """``None`` or ``"unet"`` -> untrained; see the module docstring for the rest."""
        text = (text or UNTRAINED).strip()
        if text == UNTRAINED:
            return cls("untrained")
        if text == PREVIOUS:
            return cls("previous")
        if text == ORIGINALS:
            return cls("originals")
        if text.startswith(STAGE_PREFIX):
            stage = text[len(STAGE_PREFIX) :]
            if not stage:
                raise InputError(f"{text!r}: name the stage, e.g. 'stage:stage1'")
            return cls("stage", stage)
        return cls("pretrained", text)

    def location(self, exports: Any = None) -> str:
        """Where to load it from: the export folder for ``stage:NAME`` (``exports`` is the run's
        exports folder), the folder or hub id for a pretrained one, the keyword otherwise."""
        if self.kind == "stage":
            if exports is None:
                raise InputError(f"{STAGE_PREFIX}{self.name} needs a run folder to resolve")
            return str(exports / self.name)
        if self.kind == "pretrained":
            return self.name
        return {"untrained": UNTRAINED, "previous": PREVIOUS, "originals": ORIGINALS}[self.kind]


# diffusers' conditioning embedding widths (SD1.5's ControlNets): 3 stride-2 convolutions take
# the 512 px skeleton to the 64 px latent grid.
CONDITIONING_CHANNELS = (16, 32, 96, 256)


def conditioning_channels(latent_factor: int) -> tuple[int, ...]:
    """Conditioning embedding widths whose log2(factor) stride-2 convolutions map the skeleton
    image onto a latent grid ``latent_factor`` times smaller (SD1.5: 8 -> diffusers' default)."""
    downsamplings = int(latent_factor).bit_length() - 1
    if latent_factor < 1 or 2**downsamplings != latent_factor:
        raise ValueError(f"latent factor must be a power of two, got {latent_factor}")
    if downsamplings >= len(CONDITIONING_CHANNELS):
        extra = (CONDITIONING_CHANNELS[-1],) * (downsamplings + 1 - len(CONDITIONING_CHANNELS))
        return CONDITIONING_CHANNELS + extra
    return CONDITIONING_CHANNELS[:downsamplings] + CONDITIONING_CHANNELS[-1:]


def build_controlnet(
    unet: Any, init: str | None = None, revision: str | None = None, latent_factor: int = 8
) -> Any:
    """A trainable fp32 ControlNet on the UNet's device: copied from the UNet's encoder
    (``init=None``; the conditioning embedding, sized for a VAE that downsamples by
    ``latent_factor``, draws from torch's global RNG) or loaded (:func:`load_controlnet`)."""
    from diffusers import ControlNetModel

    if init is None:
        widths = conditioning_channels(latent_factor)
        controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=widths)
    else:
        controlnet = load_controlnet(init, revision=revision)
    # Master weights stay fp32 whatever the frozen parts use (fp16 ControlNet training diverges).
    if controlnet.dtype != torch.float32:
        controlnet.to(dtype=torch.float32)
    controlnet.to(unet.device)
    controlnet.train()
    controlnet.requires_grad_(True)
    return controlnet


def untrained_controlnet(parts: Any, seed: int) -> Any:
    """The ``unet`` reference: a trainable fp32 ControlNet copied from the base UNet's encoder,
    its randomly initialised conditioning embedding seeded with ``seed`` (independent of the
    global RNG), on the parts' device.

    When the frozen UNet is not fp32 (mixed precision), the encoder is copied from an fp32 load
    of the same UNet (same folder, revision and variant), which is freed right after.
    """
    unet = parts.unet
    if unet.dtype != torch.float32:
        from diffusers import UNet2DConditionModel

        kw = {"variant": parts.variant} if parts.variant else {}
        unet = UNet2DConditionModel.from_pretrained(
            parts.source, subfolder="unet", torch_dtype=torch.float32, **kw
        )

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        controlnet = build_controlnet(unet, latent_factor=vae_scale_factor(parts.vae))
    del unet
    return controlnet.to(parts.unet.device)


def load_controlnet(
    name: str, dtype: torch.dtype = torch.float32, revision: str | None = None
) -> Any:
    """A ``ControlNetModel`` from a ``save_pretrained`` folder or a hub id, in ``dtype``."""
    from diffusers import ControlNetModel

    folder = resolve_pretrained(name, revision, what="ControlNet")
    damaged = folder_problem(Path(folder)) if Path(folder).is_dir() else None
    if damaged is not None:  # an export whose files no longer match its checksums.json
        raise ModelNotFoundError(f"ControlNet {name!r}: {damaged}: its files changed after it "
                                 "was written; restore them or train it again")  # fmt: skip
    try:
        return ControlNetModel.from_pretrained(folder, torch_dtype=dtype)
    except (OSError, ValueError) as err:
        raise ModelNotFoundError(
            f"ControlNet {name!r} ({folder}) could not be loaded: {err}. It must be a folder "
            "written by ControlNetModel.save_pretrained (config.json and weights)."
        ) from None


EXPORT_FILES = ("config.json", "diffusion_pytorch_model.safetensors")


def is_export(folder: Path) -> bool:
    """A complete ControlNet export: a visible folder (not one of the ``.NAME.*.tmp`` / ``.old``
    folders an atomic write leaves while it runs or when it is killed) holding ``config.json``
    and the weights."""
    name = folder.name
    if name.startswith(".") or name.endswith(".tmp"):
        return False
    return all((folder / file).is_file() for file in EXPORT_FILES)
