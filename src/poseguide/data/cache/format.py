"""What a latent-cache folder holds and how it is checked: the key, the manifest, the shards.

A folder's name is a hash of its key (:func:`cache_key`: models, preprocessing, dataset, rows and
any row hook's identity); the manifest records the key, the rows, the captions and each shard's
size and SHA-256. The latents are the VAE posterior's mean and std (:func:`encode_latent_dist`),
sampled by training as ``mean + std * noise`` (:func:`sample_latents`). A row hook
(:class:`RowExtras`) stores more per-row tensors beside the latents (the pseudo ground truth of
:mod:`poseguide.pseudo`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from poseguide.config.schema import DataConfig
from poseguide.data.record import Source
from poseguide.errors import UserError
from poseguide.models import model_identity
from poseguide.utils.device import to_device
from poseguide.utils.io import atomic_write_bytes

CACHE_FORMAT = 2  # 2: shards recorded (size, checksum) in the manifest; VAE dtype in the key
MANIFEST = "manifest.json"


class CacheError(UserError, RuntimeError):
    """A cache is missing, stale, or does not match the run; the message says why and what to do."""


def key_digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def cache_key(cfg: DataConfig, models: dict, dataset: str, rows: list[int],
              vae_dtype: str = "torch.float32", extras: dict | None = None) -> dict:  # fmt: skip
    """Everything the cached tensors depend on; any change means another cache (the VAE's
    compute dtype too: a bf16 encoder gives other latent distributions than an fp32 one).
    ``extras``: a row hook's ``{key: identity}`` (:class:`RowExtras`), absent without one."""
    return {
        **(extras or {}),
        "format": CACHE_FORMAT,
        "models": models,
        "vae_dtype": vae_dtype,
        "resolution": cfg.resolution,
        "resize_mode": cfg.resize_mode,
        "flips": cfg.hflip > 0,
        "dataset": dataset,
        "rows": key_digest(rows),
        "dtype": cfg.cache.dtype,
        "text": cfg.cache.text,
    }


def key_differences(found: dict, expected: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(found) | set(expected)):
        a, b = found.get(k), expected.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += key_differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: cache has {a!r}, run needs {b!r}")
    return out


@torch.no_grad()
def encode_latent_dist(vae: Any, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """VAE posterior (mean, std), each (B, 4, R/8, R/8) float32, of pixels (B, 3, R, R) in [-1,1]"""
    dist = vae.encode(pixels.to(device=vae.device, dtype=vae.dtype)).latent_dist
    return dist.mean.float(), dist.std.float()


def sample_latents(
    mean: torch.Tensor, std: torch.Tensor, generators: list[torch.Generator], scaling_factor: float
) -> torch.Tensor:
    """``(mean + std * noise) * scaling_factor`` with one CPU generator per row (B, 4, h, w)."""
    noise = torch.stack([torch.randn(mean.shape[1:], generator=g) for g in generators])
    return (mean + std * to_device(noise, mean.device, mean.dtype)) * scaling_factor


class RowExtras(Protocol):
    """Per-row tensors stored beside the latents in every latent shard: the cache's one hook.

    ``identity()`` joins the cache key under :attr:`key`; ``rows`` computes one item per
    sample (called per cache batch, so only a batch of images is in memory); ``tensors`` packs
    one shard's items as (N, ...) tensors; ``counts`` summarises a shard's tensors, summed over
    the shards into the manifest under :attr:`summary`.
    """

    key: ClassVar[str]
    summary: ClassVar[str]

    def identity(self) -> dict: ...

    def rows(self, samples: Sequence[Any]) -> list[Any]: ...

    def tensors(self, items: list[Any]) -> dict[str, torch.Tensor]: ...

    def counts(self, tensors: dict[str, torch.Tensor]) -> dict[str, int]: ...


def save_shard(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """Write one shard atomically; returns its manifest record (:func:`shard_record`)."""
    data = safetensors_bytes(
        {k: v.contiguous() for k, v in tensors.items()}, metadata={"poseguide": json.dumps(meta)}
    )
    try:
        atomic_write_bytes(path, data)
    except OSError as err:
        raise CacheError(
            f"could not write the cache shard {path} ({err}); the shards written before it are "
            "kept: free space and run `poseguide cache build CONFIG` again to finish the cache"
        ) from err
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def shard_record(path: Path) -> dict:
    """What the manifest records of a shard: its size and the SHA-256 of its bytes."""
    with path.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    return {"bytes": path.stat().st_size, "sha256": digest}


def damaged_shards(folder: Path, manifest: dict, full: bool = True) -> dict[str, str]:
    """Shards of a complete cache that are missing or damaged -> why. Always: present, the size
    the manifest recorded, a readable header; ``full``: the recorded checksum too."""
    out = {}
    for name, record in manifest.get("shards", {}).items():
        path = folder / name
        if not path.is_file():
            out[name] = "missing"
        elif path.stat().st_size != record["bytes"]:
            out[name] = f"{path.stat().st_size} bytes, {record['bytes']} when it was written"
        elif full and shard_record(path)["sha256"] != record["sha256"]:
            out[name] = "its checksum differs from the one recorded when it was written"
        else:
            try:
                shard_meta(path)
            except Exception as err:  # any failure to parse untrusted bytes
                out[name] = f"unreadable ({err})"
    return out


def damaged_error(folder: Path, damaged: dict[str, str]) -> CacheError:
    listed = "; ".join(f"{name}: {why}" for name, why in sorted(damaged.items()))
    return CacheError(
        f"the cache at {folder} is damaged ({listed}); `poseguide cache build CONFIG` rebuilds "
        "the damaged shards"
    )


def shard_meta(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as handle:
        return json.loads(handle.metadata()["poseguide"])


def cache_folder(root: Path, key: dict) -> Path:
    return root / key_digest(key)


def read_manifest(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):  # none yet, or one cut short: build
        return None


def run_key(source: Source, rows: list[int], cfg: DataConfig, parts: Any,
            extras: RowExtras | None) -> dict:  # fmt: skip
    """The key of the cache of ``rows`` of ``source`` for the loaded SD ``parts``."""
    identity = None if extras is None else {extras.key: extras.identity()}
    return cache_key(cfg, model_identity(parts.source), source.fingerprint(), rows,
                     str(parts.vae.dtype), identity)  # fmt: skip
