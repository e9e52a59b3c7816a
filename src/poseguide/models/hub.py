"""Where a model comes from: a local folder, a built-in, or a Hugging Face hub snapshot.

Every model is loaded with ``from_pretrained`` from a folder this module resolves, so the code
path that loads SD1.5 on a GPU machine is the one the tests run on tiny models saved to disk.
Built-ins (:data:`BUILTINS`): ``builtin:tiny-sd`` builds (once) a tiny SD-architecture pipeline
folder with random weights, so everything runs offline on a CPU; ``builtin:sd15-random`` SD1.5's
full-size architecture with random weights (~4 GB on disk), for benchmarks;
``builtin:tiny-clip`` a tiny random CLIP for the offline CLIP-score code path;
``builtin:mini-sd`` the mini world's base trained from scratch on synthetic people (shipped, or
trained on first use: :mod:`poseguide.base.builtin`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from poseguide.errors import NotFoundError
from poseguide.models.tiny import build_random_sd15, build_tiny_clip, build_tiny_sd
from poseguide.utils.offline import is_offline, offline_reason

log = logging.getLogger(__name__)

TINY_SD = "builtin:tiny-sd"
SD15_RANDOM = "builtin:sd15-random"
TINY_CLIP = "builtin:tiny-clip"  # a tiny random CLIP for the offline CLIP-score code path
MINI_SD = "builtin:mini-sd"  # the mini world's base, trained here (poseguide.base.builtin)
BUILTINS = (TINY_SD, SD15_RANDOM, TINY_CLIP, MINI_SD)


class ModelNotFoundError(NotFoundError):
    """A model id is neither a local folder nor reachable on the hub."""


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
    if name in BUILTINS:
        from poseguide.base.builtin import mini_sd  # base/ trains through models/: lazy

        builders = {TINY_SD: build_tiny_sd, SD15_RANDOM: build_random_sd15,
                    TINY_CLIP: build_tiny_clip, MINI_SD: mini_sd}  # fmt: skip
        return str(builders[name]())
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
    if is_offline():
        raise ModelNotFoundError(
            f"{what} {name!r} is not a local folder and not in the Hugging Face cache, and the "
            f"hub is {offline_reason()}. {howto}"
        )
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


def file_digest(path: Path, chunk: int = 1 << 20) -> str:
    """A cheap content digest: size plus the first and last MiB (weights files are large)."""
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
        identity[sub] = {p.name: file_digest(p) for p in files}
    return identity
