"""An exact cache of VAE latent distributions and text embeddings.

The VAE and text encoder are frozen and the thesis uses no augmentation, so each image's latent
*distribution* (mean and std of ``vae.encode(x).latent_dist``) and each caption's embedding can be
computed once. Training then samples ``mean + std * noise`` every step, which is exactly what
encoding every step gives (``DiagonalGaussianDistribution.sample`` draws the same way).

Layout of one cache folder (``data.cache.dir/<key hash>/``)::

    manifest.json              the key (models, preprocessing, dataset), rows, shard list, sizes
    latents-00000.safetensors  mean, std (and mean_flip, std_flip when flips are on) per row
    text-00000.safetensors     one embedding per unique caption ("" always included)

The folder name is a hash of the key, so a different model, resolution, resize mode or dataset
content gets its own folder. Shards are written atomically and the manifest last: a build that is
interrupted resumes at the first missing shard and ends identical to an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from poseguide.config.schema import DataConfig
from poseguide.data.preprocess import image_to_tensor, prepare
from poseguide.data.record import Source
from poseguide.errors import UserError
from poseguide.utils.device import DTYPES, to_device
from poseguide.utils.io import atomic_write_bytes, atomic_write_json

log = logging.getLogger(__name__)

CACHE_FORMAT = 2  # 2: shards recorded (size, checksum) in the manifest; VAE dtype in the key
MANIFEST = "manifest.json"


class CacheError(UserError, RuntimeError):
    """A cache is missing, stale, or does not match the run; the message says why and what to do."""


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def cache_key(cfg: DataConfig, models: dict, dataset: str, rows: list[int],
              vae_dtype: str = "torch.float32") -> dict:  # fmt: skip
    """Everything the cached tensors depend on; any change means another cache (the VAE's
    compute dtype too: a bf16 encoder gives other latent distributions than an fp32 one)."""
    return {
        "format": CACHE_FORMAT,
        "models": models,
        "vae_dtype": vae_dtype,
        "resolution": cfg.resolution,
        "resize_mode": cfg.resize_mode,
        "flips": cfg.hflip > 0,
        "dataset": dataset,
        "rows": _digest(rows),
        "dtype": cfg.cache.dtype,
        "text": cfg.cache.text,
    }


def _differences(found: dict, expected: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(found) | set(expected)):
        a, b = found.get(k), expected.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
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


@dataclass
class CacheInfo:
    folder: Path
    rows: int
    captions: int
    bytes: int
    built_shards: int  # shards computed by this call (0 when everything was there)


class LatentCache:
    """Read access to a complete cache folder (memory-mapped safetensors shards)."""

    def __init__(self, folder: Path, manifest: dict) -> None:
        self.folder, self.manifest = Path(folder), manifest
        self.dtype = DTYPES[manifest["key"]["dtype"]]
        size = manifest["shard_size"]
        self._where = {row: (pos // size, pos % size) for pos, row in enumerate(manifest["rows"])}
        self._captions = {c: i for i, c in enumerate(manifest.get("captions", []))}
        self._handles: dict[str, Any] = {}

    def __getstate__(self) -> dict:  # DataLoader workers reopen their own file handles
        return {**self.__dict__, "_handles": {}}

    @classmethod
    def open(cls, folder: str | Path, expected_key: dict | None = None) -> LatentCache:
        folder = Path(folder)
        path = folder / MANIFEST
        if not path.is_file():
            raise CacheError(f"no cache at {folder}; build it with `poseguide cache build CONFIG`")
        manifest = json.loads(path.read_text())
        if not manifest.get("complete"):
            raise CacheError(
                f"the cache at {folder} is incomplete; `poseguide cache build CONFIG` finishes it"
            )
        if expected_key is not None and manifest["key"] != expected_key:
            reasons = "; ".join(_differences(manifest["key"], expected_key))
            raise CacheError(
                f"the cache at {folder} does not match this run ({reasons}). Rebuild it with "
                "`poseguide cache build CONFIG` or set data.cache.enabled=false"
            )
        damaged = damaged_shards(folder, manifest, full=False)
        if damaged:
            raise _damaged_error(folder, damaged)
        return cls(folder, manifest)

    @property
    def captions(self) -> list[str]:
        """The distinct captions whose embeddings are cached (empty when text is not cached)."""
        return list(self._captions) if self.manifest["key"]["text"] else []

    def _handle(self, name: str) -> Any:
        if name not in self._handles:
            try:
                self._handles[name] = safe_open(str(self.folder / name), framework="pt")
            except Exception as err:  # a shard damaged after the cache was opened
                raise _damaged_error(self.folder, {name: str(err)}) from None
        return self._handles[name]

    def _slice(self, name: str, tensor: str, offset: int) -> torch.Tensor:
        try:
            return self._handle(name).get_slice(tensor)[offset : offset + 1][0]
        except CacheError:
            raise
        except Exception as err:
            raise _damaged_error(self.folder, {name: str(err)}) from None

    def latents(self, index: int, flipped: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) float32 for source row ``index``, each (4, R/8, R/8)."""
        if index not in self._where:
            raise CacheError(f"row {index} is not in the cache at {self.folder}")
        shard, offset = self._where[index]
        name, suffix = f"latents-{shard:05d}.safetensors", "_flip" if flipped else ""
        mean = self._slice(name, "mean" + suffix, offset)
        std = self._slice(name, "std" + suffix, offset)
        return mean.float(), std.float()

    def text(self, caption: str) -> torch.Tensor | None:
        """The cached (77, D) float32 embedding of ``caption``; None when text is not cached."""
        if not self.manifest["key"]["text"]:
            return None
        if caption not in self._captions:
            raise CacheError(f"caption {caption[:60]!r} is not in the cache at {self.folder}")
        pos = self._captions[caption]
        shard, offset = divmod(pos, self.manifest["shard_size"])
        return self._slice(f"text-{shard:05d}.safetensors", "emb", offset).float()


def _save_shard(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
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
                _shard_meta(path)
            except Exception as err:  # any failure to parse untrusted bytes
                out[name] = f"unreadable ({err})"
    return out


def _damaged_error(folder: Path, damaged: dict[str, str]) -> CacheError:
    listed = "; ".join(f"{name}: {why}" for name, why in sorted(damaged.items()))
    return CacheError(
        f"the cache at {folder} is damaged ({listed}); `poseguide cache build CONFIG` rebuilds "
        "the damaged shards"
    )


def _shard_meta(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as handle:
        return json.loads(handle.metadata()["poseguide"])


def _encode_rows(
    source: Source, chunk: list[int], cfg: DataConfig, parts: Any, style: str, seed: int
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Latent distributions of ``chunk`` rows (and of their mirror images when flips are on)."""
    variants = (False, True) if cfg.hflip > 0 else (False,)
    out: dict[str, list[torch.Tensor]] = {}
    captions: list[str] = []
    for start in range(0, len(chunk), cfg.cache.batch_size):
        rows = chunk[start : start + cfg.cache.batch_size]
        samples = [source.load(i) for i in rows]
        captions += [s.caption for s in samples]
        for flip in variants:
            pixels = torch.stack(
                [image_to_tensor(prepare(s, i, cfg, style, seed, 0, flip=flip).image)
                 for s, i in zip(samples, rows, strict=True)]
            )  # fmt: skip
            mean, std = encode_latent_dist(parts.vae, pixels)
            suffix = "_flip" if flip else ""
            out.setdefault("mean" + suffix, []).append(mean.cpu())
            out.setdefault("std" + suffix, []).append(std.cpu())
    dtype = DTYPES[cfg.cache.dtype]
    return {k: torch.cat(v).to(dtype) for k, v in out.items()}, captions


def _cache_folder(root: Path, key: dict) -> Path:
    return root / _digest(key)


def _reusable(path: Path, rebuild: set[str], **expected: Any) -> bool:
    """A shard already on disk that holds what ``expected`` says and is not known damaged."""
    if path.name in rebuild or not path.is_file():
        return False
    try:
        meta = _shard_meta(path)
        load_file(str(path))  # the whole shard reads (an interrupted write may be cut short)
    except Exception:  # any failure to parse a damaged file: build the shard again
        return False
    return all(meta.get(k) == v for k, v in expected.items())


def _build_text(folder: Path, captions: list[str], cfg: DataConfig, parts: Any,
                rebuild: set[str]) -> int:  # fmt: skip
    """Write the text shards for ``captions`` (already unique and ordered); returns shards built."""
    from poseguide.models import encode_prompts

    size, built = cfg.cache.shard_size, 0
    for s in range(math.ceil(len(captions) / size)):
        path = folder / f"text-{s:05d}.safetensors"
        chunk = captions[s * size : (s + 1) * size]
        if _reusable(path, rebuild, captions=chunk):
            continue
        embs = [encode_prompts(parts, chunk[i : i + cfg.cache.batch_size]).cpu()
                for i in range(0, len(chunk), cfg.cache.batch_size)]  # fmt: skip
        _save_shard(path, {"emb": torch.cat(embs).to(DTYPES[cfg.cache.dtype])}, {"captions": chunk})
        built += 1
    return built


def build_cache(
    source: Source,
    rows: list[int],
    cfg: DataConfig,
    parts: Any,
    style: str,
    seed: int,
    progress: bool = True,
) -> CacheInfo:
    """Build (or finish, or just find) the cache of ``rows`` of ``source`` for these models.

    ``parts`` are the loaded SD parts (:class:`poseguide.models.SDParts`); only the VAE, the text
    encoder and the tokenizer are used. Returns where it is and how big it is.
    """
    from tqdm.auto import tqdm

    from poseguide.models import model_identity

    key = cache_key(cfg, model_identity(parts.source), source.fingerprint(), rows,
                    str(parts.vae.dtype))  # fmt: skip
    folder = _cache_folder(Path(cfg.cache.dir), key)
    rebuild = _damaged_to_rebuild(folder, key)
    if rebuild is None:  # complete and intact
        return _info(folder, json.loads((folder / MANIFEST).read_text()), 0)
    folder.mkdir(parents=True, exist_ok=True)
    size, built, captions = cfg.cache.shard_size, 0, []
    with tqdm(total=len(rows), desc="caching latents", unit="img", disable=not progress) as bar:
        for s in range(math.ceil(len(rows) / size)):
            path, chunk = folder / f"latents-{s:05d}.safetensors", rows[s * size : (s + 1) * size]
            if not _reusable(path, rebuild, rows=chunk, key=_digest(key)):
                tensors, caps = _encode_rows(source, chunk, cfg, parts, style, seed)
                _save_shard(path, tensors, {"rows": chunk, "captions": caps, "key": _digest(key)})
                built += 1
            captions += _shard_meta(path)["captions"]
            bar.update(len(chunk))
    unique = sorted(set(captions) | {""}) if cfg.cache.text else []
    built += _build_text(folder, unique, cfg, parts, rebuild) if unique else 0
    shards = sorted(p.name for p in folder.glob("*.safetensors") if not p.name.startswith("."))
    manifest = {"key": key, "rows": rows, "shard_size": size, "captions": unique,
                "shards": {name: shard_record(folder / name) for name in shards},
                "complete": True}  # fmt: skip
    atomic_write_json(folder / MANIFEST, manifest, indent=None)
    info = _info(folder, manifest, built)
    log.info("cache %s: %d rows, %d captions, %.1f MiB (%d shard(s) built now)", folder,
             info.rows, info.captions, info.bytes / 2**20, built)  # fmt: skip
    return info


def _damaged_to_rebuild(folder: Path, key: dict) -> set[str] | None:
    """None when ``folder`` holds a complete cache whose shards all match their recorded sizes
    and checksums; else the names of the damaged shards (empty: a build to start or finish)."""
    path = folder / MANIFEST
    if not path.is_file():
        return set()
    manifest = json.loads(path.read_text())
    if not manifest.get("complete") or manifest.get("key") != key:
        return set()
    damaged = damaged_shards(folder, manifest, full=True)
    if not damaged:
        return None
    log.warning("cache %s: %d damaged shard(s) (%s); rebuilding them", folder, len(damaged),
                "; ".join(f"{n}: {why}" for n, why in sorted(damaged.items())))  # fmt: skip
    return set(damaged)


def _info(folder: Path, manifest: dict, built: int) -> CacheInfo:
    total = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    return CacheInfo(folder, len(manifest["rows"]), len(manifest["captions"]), total, built)


def find_cache(source: Source, rows: list[int], cfg: DataConfig, parts: Any) -> LatentCache:
    """Open the complete cache matching this run, or raise :class:`CacheError` saying why not."""
    from poseguide.models import model_identity

    key = cache_key(cfg, model_identity(parts.source), source.fingerprint(), rows,
                    str(parts.vae.dtype))  # fmt: skip
    root = Path(cfg.cache.dir)
    if (root / MANIFEST).is_file():  # data.cache.dir points at one cache folder: check it
        return LatentCache.open(root, key)
    return LatentCache.open(_cache_folder(root, key), key)
