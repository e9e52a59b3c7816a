"""Load and freeze the Stable Diffusion parts, build or load the ControlNet, tiny test models.

Every model is loaded with ``from_pretrained`` from a hub id or a local folder, so the code path
that loads SD1.5 on a GPU machine is the one the tests run on tiny models saved to disk. The
special name ``builtin:tiny-sd`` builds (once) a tiny SD-architecture pipeline folder from
configs, with random weights, so everything runs offline on a CPU; ``builtin:sd15-random`` builds
SD1.5's full-size architecture with random weights (~4 GB on disk), for benchmarks.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

TINY_SD = "builtin:tiny-sd"
TINY_SD_VERSION = 1  # bump when the tiny architecture changes; old folders are rebuilt
SD15_RANDOM = "builtin:sd15-random"
SD15_RANDOM_VERSION = 1  # bump when its construction changes; old folders are rebuilt
TINY_CLIP = "builtin:tiny-clip"  # a tiny random CLIP for the offline CLIP-score code path


class ModelNotFoundError(FileNotFoundError):
    """A model id is neither a local folder nor reachable on the hub."""


def cache_root() -> Path:
    """Where poseguide keeps built models: $POSEGUIDE_CACHE or ~/.cache/poseguide."""
    return Path(os.environ.get("POSEGUIDE_CACHE", Path.home() / ".cache" / "poseguide"))


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


# What a diffusers folder needs: configs, tokenizer files and safetensors weights. Hub repos such
# as SD1.5 also hold multi-GB single-file checkpoints and pickled .bin weights, which are never
# downloaded (nor unpickled).
HUB_PATTERNS = ("*.json", "*.txt", "*/*.json", "*/*.txt", "*.safetensors", "*/*.safetensors")
SINGLE_FILE_CHECKPOINTS = ("v1-*", "*pruned*", "*emaonly*")
KNOWN_VARIANTS = ("fp16", "bf16", "non_ema", "ema")


def _ignored(variant: str | None) -> list[str]:
    """Hub files not to download: single-file checkpoints and other weight variants."""
    others = [v for v in KNOWN_VARIANTS if v != variant]
    return [*SINGLE_FILE_CHECKPOINTS, *(f"*.{v}.safetensors" for v in others)]


def resolve_pretrained(
    name: str, revision: str | None = None, what: str = "model", variant: str | None = None
) -> str:
    """Return a local folder for ``name``: a folder as is, a built-in, or a hub snapshot.

    Hub ids come from the local Hugging Face cache when present; otherwise they are downloaded
    with short time-outs. When the hub cannot be reached (offline mode, no network) this fails
    at once with a message saying how to pass a local folder instead.
    """
    if name == TINY_CLIP:
        from poseguide.tiny import build_tiny_clip

        return str(build_tiny_clip())
    if name == TINY_SD:
        from poseguide.tiny import build_tiny_sd

        return str(build_tiny_sd())
    if name == SD15_RANDOM:
        from poseguide.tiny import build_random_sd15

        return str(build_random_sd15())
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelNotFoundError(f"{what} {name!r} is a file; pass a folder (save_pretrained)")
        return str(path)
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(name, revision=revision, local_files_only=True)
    except Exception:
        pass
    howto = (
        f"Download it where there is network (`hf download {name} --local-dir DIR`) "
        f"and pass the folder instead of the id (for example in the config or as an override)."
    )
    if hub_offline():
        raise ModelNotFoundError(
            f"{what} {name!r} is not a local folder and not in the Hugging Face cache, and the "
            f"hub is offline (HF_HUB_OFFLINE=1). {howto}"
        )
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
    try:
        return snapshot_download(
            name, revision=revision, etag_timeout=10,
            allow_patterns=list(HUB_PATTERNS), ignore_patterns=_ignored(variant),
        )  # fmt: skip
    except Exception as err:
        raise ModelNotFoundError(
            f"{what} {name!r} could not be fetched from the Hugging Face hub "
            f"({type(err).__name__}: {str(err).splitlines()[0][:200]}). {howto}"
        ) from None


@dataclass
class SDParts:
    """The frozen Stable Diffusion parts (eval mode, no gradients)."""

    vae: Any  # diffusers AutoencoderKL
    unet: Any  # diffusers UNet2DConditionModel
    text_encoder: Any  # transformers CLIPTextModel
    tokenizer: Any  # transformers CLIPTokenizer
    scheduler: Any  # diffusers DDPMScheduler (training noise schedule)
    source: str  # the folder they came from


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
    for module in (vae, unet, text_encoder):
        freeze(module).to(device)
    return SDParts(vae, unet, text_encoder, tokenizer, scheduler, folder)


def load_tokenizer(base: str, revision: str | None = None) -> Any:
    """The CLIP tokenizer of an SD1.5-layout folder or hub id (its ``tokenizer/`` subfolder)."""
    from transformers import CLIPTokenizer

    folder = resolve_pretrained(base, revision, what="Stable Diffusion base")
    return CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")


def build_controlnet(unet: Any, init: str | None = None, revision: str | None = None) -> Any:
    """A trainable ControlNet: copied from the UNet encoder (``init=None``) or loaded."""
    from diffusers import ControlNetModel

    if init is None:
        controlnet = ControlNetModel.from_unet(unet)
    else:
        folder = resolve_pretrained(init, revision, what="ControlNet")
        try:
            controlnet = ControlNetModel.from_pretrained(folder, torch_dtype=torch.float32)
        except (OSError, ValueError) as err:
            raise ModelNotFoundError(
                f"ControlNet {init!r} ({folder}) could not be loaded: {err}"
            ) from None
    # Master weights stay fp32 whatever the frozen parts use (fp16 ControlNet training diverges).
    if controlnet.dtype != torch.float32:
        controlnet.to(dtype=torch.float32)
    controlnet.to(unet.device)
    controlnet.train()
    controlnet.requires_grad_(True)
    return controlnet


def encode_prompts(parts: SDParts, prompts: list[str], cuts: Any = None) -> torch.Tensor:
    """CLIP text embeddings (B, 77, hidden) for prompts, cut to the tokenizer's length by the one
    caption path (:func:`poseguide.text.encode_captions`; ``cuts`` counts what was cut)."""
    from poseguide.text import encode_captions

    return encode_captions(parts.text_encoder, parts.tokenizer, prompts, cuts)


def _file_digest(path: Path, chunk: int = 1 << 20) -> str:
    """A cheap content digest: size plus the first and last MiB (weights files are large)."""
    import hashlib

    digest = hashlib.sha256(str(path.stat().st_size).encode())
    with path.open("rb") as handle:
        digest.update(handle.read(chunk))
        if path.stat().st_size > chunk:
            handle.seek(-chunk, os.SEEK_END)
            digest.update(handle.read(chunk))
    return digest.hexdigest()[:16]


def model_identity(
    folder: str, subfolders: tuple[str, ...] = ("vae", "text_encoder", "tokenizer")
) -> dict:
    """What identifies the models a cache was built with: config and weights digests per part.

    The folder path itself is not part of it, so a moved or re-downloaded copy of the same
    weights keeps its caches.
    """
    identity: dict = {}
    for sub in subfolders:
        part = Path(folder) / sub
        files = sorted(p for p in part.glob("*") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise ModelNotFoundError(f"{part}: no config or weights to identify the {sub}")
        identity[sub] = {p.name: _file_digest(p) for p in files}
    return identity
