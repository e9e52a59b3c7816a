"""An exact cache of VAE latent distributions and text embeddings.

The VAE and text encoder are frozen and the thesis uses no augmentation, so each image's latent
*distribution* (mean and std of ``vae.encode(x).latent_dist``) and each caption's embedding can be
computed once. Training then samples ``mean + std * noise`` every step, which is exactly what
encoding every step gives (``DiagonalGaussianDistribution.sample`` draws the same way).

Layout of one cache folder (``data.cache.dir/<key hash>/``)::

    manifest.json              the key (models, preprocessing, dataset), rows, shard list, sizes
    latents-00000.safetensors  mean, std (and mean_flip, std_flip when flips are on) per row
    text-00000.safetensors     one embedding per unique caption ("" always included)

With a reward stage in the config, each latent shard also holds the rows' *pseudo ground
truth* (``pseudo_people``, ``pseudo_keypoints``, ``pseudo_areas``): for every row without
keypoints of its own, the people ``pose.estimator`` finds on the original image
(:func:`poseguide.pose.api.pseudo_ground_truth`, original-image pixels), and the estimator's
identity is part of the key.

The folder name is a hash of the key, so a different model, resolution, resize mode or dataset
content gets its own folder. Shards are written atomically and the manifest last: a build that is
interrupted builds only the missing shards when run again and ends identical to an uninterrupted
one; a shard whose size or checksum differs from the manifest's record is built again.

Several processes share a build (``team``, :mod:`poseguide.utils.team`). Shard boundaries depend
only on the rows and ``shard_size``, and each shard is encoded whole by one process, in the same
VAE batches, so the folder is byte for byte the one a single process builds. Each phase is split
``rank, rank + world, ...`` and ends with one gather: (0) the main process reads the manifest,
every process gets its reading; (1) check the shards a complete manifest lists; (2) find which
latent shards on disk are reusable; (3) encode the missing ones (shared afresh, so a resumed
build is balanced too); (4)-(5) the same for the text shards of the captions gathered in (3);
then the main process writes the manifest from the gathered records, and a last gather lets every
process open it. No process reads another's shards while building; every phase waits for its
slowest share (about ``1/world`` of the work), not for the whole build.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load
from safetensors.torch import save as safetensors_bytes

from poseguide.config.schema import DataConfig
from poseguide.data.preprocess import image_to_tensor, prepare
from poseguide.data.record import Source
from poseguide.errors import UserError
from poseguide.utils.device import DTYPES, to_device
from poseguide.utils.io import atomic_write_bytes, atomic_write_json
from poseguide.utils.team import SOLO, Team

log = logging.getLogger(__name__)

CACHE_FORMAT = 2  # 2: shards recorded (size, checksum) in the manifest; VAE dtype in the key
MANIFEST = "manifest.json"


class CacheError(UserError, RuntimeError):
    """A cache is missing, stale, or does not match the run; the message says why and what to do."""


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def cache_key(cfg: DataConfig, models: dict, dataset: str, rows: list[int],
              vae_dtype: str = "torch.float32", pseudo: dict | None = None) -> dict:  # fmt: skip
    """Everything the cached tensors depend on; any change means another cache (the VAE's
    compute dtype too: a bf16 encoder gives other latent distributions than an fp32 one).
    ``pseudo``: the identity of the estimator whose pseudo ground truth the shards hold
    (:func:`poseguide.pose.api.estimator_identity`), absent without a reward stage."""
    extra = {} if pseudo is None else {"pseudo_ground_truth": pseudo}
    return {
        **extra,
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

    @property
    def has_pseudo(self) -> bool:
        """Whether the shards hold pseudo ground truth (the config has a reward stage)."""
        return "pseudo_ground_truth" in self.manifest["key"]

    def pseudo(self, index: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Row ``index``'s pseudo ground truth, (P, 17, 3) keypoints and (P,) areas in the
        original image's pixels; None when the row has keypoints of its own or the cache holds
        no pseudo ground truth."""
        if not self.has_pseudo:
            return None
        shard, offset = self._where[index]
        name = f"latents-{shard:05d}.safetensors"
        people = int(self._slice(name, "pseudo_people", offset))
        if people < 0:
            return None
        keypoints = self._slice(name, "pseudo_keypoints", offset)[:people]
        areas = self._slice(name, "pseudo_areas", offset)[:people]
        return keypoints.double().numpy(), areas.double().numpy()


def _save_shard(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> dict:
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


def _encode_rows(source: Source, chunk: list[int], cfg: DataConfig, parts: Any, style: Any,
                 seed: int, estimator: Any = None) -> tuple[dict, list[str]]:  # fmt: skip
    """Latent distributions of ``chunk`` rows (and of their mirror images when flips are on);
    with an ``estimator``, the pseudo ground truth of the rows without keypoints too."""
    variants = (False, True) if cfg.hflip > 0 else (False,)
    out: dict[str, list[torch.Tensor]] = {}
    captions: list[str] = []
    people: list[tuple[np.ndarray, np.ndarray] | None] = []
    for start in range(0, len(chunk), cfg.cache.batch_size):
        rows = chunk[start : start + cfg.cache.batch_size]
        samples = [source.load(i) for i in rows]
        captions += [s.caption for s in samples]
        if estimator is not None:
            people += pseudo_rows(estimator, samples)
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
    tensors = {k: torch.cat(v).to(dtype) for k, v in out.items()}
    if estimator is not None:
        tensors.update(_pseudo_tensors(people))
    return tensors, captions


def pseudo_rows(estimator: Any, samples: list) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """Per sample: None when it has keypoints of its own, else the estimator's pseudo ground
    truth on its original image (uint8, ultralytics' own preprocessing)."""
    from poseguide.pose.api import pseudo_ground_truth

    todo = [k for k, s in enumerate(samples) if s.keypoints is None]
    found = estimator.estimate_people([np.asarray(samples[k].image) for k in todo]) if todo else []
    out: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(samples)
    for k, detections in zip(todo, found, strict=True):
        out[k] = pseudo_ground_truth(detections)
    return out


def _pseudo_counts(people: torch.Tensor) -> dict[str, int]:
    """A shard's rows with pseudo ground truth and their people (``pseudo_people``: -1 for a
    row with keypoints of its own)."""
    return {"rows": int((people >= 0).sum()), "people": int(people.clamp_min(0).sum())}


def _pseudo_tensors(people: list[tuple[np.ndarray, np.ndarray] | None]) -> dict[str, torch.Tensor]:
    """A shard's pseudo ground truth: ``pseudo_people`` (N,) int32 (-1: the row has keypoints
    of its own), ``pseudo_keypoints`` (N, P, 17, 3) and ``pseudo_areas`` (N, P) float32,
    zero-padded to the shard's most people (at least 1)."""
    most = max([1] + [len(p[0]) for p in people if p is not None])
    count = torch.full((len(people),), -1, dtype=torch.int32)
    keypoints = torch.zeros(len(people), most, 17, 3)
    areas = torch.zeros(len(people), most)
    for k, found in enumerate(people):
        if found is not None:
            n = len(found[0])
            count[k] = n
            keypoints[k, :n] = torch.from_numpy(found[0].reshape(n, 17, 3))
            areas[k, :n] = torch.from_numpy(found[1])
    return {"pseudo_people": count, "pseudo_keypoints": keypoints, "pseudo_areas": areas}


def _cache_folder(root: Path, key: dict) -> Path:
    return root / _digest(key)


def _reusable(path: Path, rebuild: set[str], **expected: Any) -> tuple[dict, dict] | None:
    """(record, metadata) of a shard already on disk that holds what ``expected`` says and is
    not known damaged; None when it must be built. The file is read once."""
    if path.name in rebuild or not path.is_file():
        return None
    try:
        data = path.read_bytes()
        load(data)  # the whole shard parses (an interrupted write may be cut short)
        size = int.from_bytes(data[:8], "little")
        meta = json.loads(json.loads(data[8 : 8 + size])["__metadata__"]["poseguide"])
    except Exception:  # any failure to parse a damaged file: build the shard again
        return None
    if any(meta.get(k) != v for k, v in expected.items()):
        return None
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}, meta


@dataclass
class _Plan:
    """Where and how :func:`_build_shards` works: the folder, the shards known to be damaged,
    the processes sharing the work and whether this one shows a progress bar."""

    folder: Path
    rebuild: set[str]  # known damaged: built again even when they parse
    team: Team
    progress: bool


def _build_shards(plan: _Plan, shards: dict[str, list], expected: Any, make: Any,
                  what: str) -> tuple[dict[str, tuple[dict, dict]], int]:  # fmt: skip
    """Have every shard of ``shards`` (name -> chunk) in the folder, shared by the team: each
    process checks its share of what is on disk (``expected(chunk)``: the metadata a reusable
    shard holds), then builds its share of the missing ones (``make(chunk) -> (tensors,
    metadata)``). Returns name -> (record, metadata) of every shard, and how many were built."""
    team, names = plan.team, list(shards)

    def check() -> dict[str, tuple[dict, dict]]:
        plan.folder.mkdir(parents=True, exist_ok=True)
        found = {n: _reusable(plan.folder / n, plan.rebuild, **expected(shards[n]))
                 for n in team.share(names)}  # fmt: skip
        return {n: got for n, got in found.items() if got is not None}

    kept = {n: got for part in team.run(check) for n, got in part.items()}
    todo = [n for n in names if n not in kept]  # shared afresh: balanced whatever was kept
    mine = team.share(todo)

    def build() -> dict[str, tuple[dict, dict]]:
        from tqdm.auto import tqdm

        out = {}
        desc = what if team.world == 1 else f"{what} (process {team.rank} of {team.world})"
        total = sum(len(shards[n]) for n in mine)
        with tqdm(total=total, desc=desc, unit="row", disable=not plan.progress) as bar:
            for name in mine:
                tensors, meta = make(shards[name])
                out[name] = _save_shard(plan.folder / name, tensors, meta), meta
                bar.update(len(shards[name]))
        return out

    made = {n: got for part in team.run(build) for n, got in part.items()}
    return {**kept, **made}, len(todo)


def _chunks(prefix: str, items: list, size: int) -> dict[str, list]:
    return {f"{prefix}-{s:05d}.safetensors": items[s * size : (s + 1) * size]
            for s in range(math.ceil(len(items) / size))}  # fmt: skip


def build_cache(
    source: Source,
    rows: list[int],
    cfg: DataConfig,
    parts: Any,
    style: Any,
    seed: int,
    progress: bool = True,
    team: Team = SOLO,
    pseudo: Any = None,
) -> CacheInfo:
    """Build (or finish, or just find) the cache of ``rows`` of ``source`` for these models.

    ``parts`` are the loaded SD parts (:class:`poseguide.models.SDParts`); only the VAE, the text
    encoder and the tokenizer are used. ``team``: the processes sharing the build (every process
    calls this; each encodes its share of the shards); the folder is byte for byte the one a
    single process builds. ``pseudo``: the :class:`poseguide.config.schema.EstimatorConfig` of
    the pseudo ground truth to store (a reward stage's), or None. Returns where it is and how big
    it is (``built_shards``: by all).
    """
    from poseguide.models import encode_prompts

    key = _key(source, rows, cfg, parts, pseudo)
    folder = _cache_folder(Path(cfg.cache.dir), key)
    digest, size = _digest(key), cfg.cache.shard_size
    found = team.gather(_manifest(folder) if team.is_main else None)[0]  # one view for all
    rebuild = _damaged_to_rebuild(folder, key, found, team)
    if rebuild is None:  # complete and intact
        return _info(folder, found, 0)
    plan = _Plan(folder, rebuild, team, progress)

    estimator = None  # its weights load on its first use
    if pseudo is not None:
        from poseguide.pose.api import estimator_from_config

        estimator = estimator_from_config(pseudo)

    def latents(chunk: list[int]) -> tuple[dict, dict]:
        tensors, caps = _encode_rows(source, chunk, cfg, parts, style, seed, estimator)
        meta = {"rows": chunk, "captions": caps, "key": digest}
        if estimator is not None:
            meta["pseudo"] = _pseudo_counts(tensors["pseudo_people"])
        return tensors, meta

    def text(chunk: list[str]) -> tuple[dict, dict]:
        embs = [encode_prompts(parts, chunk[i : i + cfg.cache.batch_size]).cpu()
                for i in range(0, len(chunk), cfg.cache.batch_size)]  # fmt: skip
        return {"emb": torch.cat(embs).to(DTYPES[cfg.cache.dtype])}, {"captions": chunk}

    shards = _chunks("latents", rows, size)
    done, built = _build_shards(plan, shards, lambda c: {"rows": c, "key": digest}, latents,
                                "caching latents")  # fmt: skip
    captions = {c for name in shards for c in done[name][1]["captions"]}
    unique = sorted(captions | {""}) if cfg.cache.text else []
    texts, built_text = _build_shards(plan, _chunks("text", unique, size),
                                      lambda c: {"captions": c}, text, "caching text")  # fmt: skip
    records = {name: got[0] for name, got in sorted({**done, **texts}.items())}
    manifest = {"key": key, "rows": rows, "shard_size": size, "captions": unique,
                "shards": records, "complete": True}  # fmt: skip
    if pseudo is not None:  # how many rows take pseudo ground truth, for the run's log
        metas = [done[name][1].get("pseudo", {}) for name in shards]
        manifest["pseudo"] = {k: sum(m.get(k, 0) for m in metas) for k in ("rows", "people")}
    main = team.is_main  # then every process can open it; a failure to write it stops all
    team.run(lambda: atomic_write_json(folder / MANIFEST, manifest, indent=None) if main else None)
    info = _info(folder, manifest, built + built_text)
    if team.is_main:
        log.info("cache %s: %d rows, %d captions, %.1f MiB (%d shard(s) built now)", folder,
                 info.rows, info.captions, info.bytes / 2**20, info.built_shards)  # fmt: skip
    return info


def _manifest(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):  # none yet, or one cut short: build
        return None


def _damaged_to_rebuild(folder: Path, key: dict, manifest: dict | None,
                        team: Team) -> set[str] | None:  # fmt: skip
    """None when ``manifest`` is a complete cache for ``key`` whose shards all match their
    recorded sizes and checksums (each process checks its share); else the names of the damaged
    shards (empty: a build to start or finish)."""
    if manifest is None or not manifest.get("complete") or manifest.get("key") != key:
        return set()
    names = team.share(sorted(manifest.get("shards", {})))
    mine = {"shards": {n: manifest["shards"][n] for n in names}}
    parts = team.run(lambda: damaged_shards(folder, mine, full=True))
    damaged = {name: why for part in parts for name, why in part.items()}
    if not damaged:
        return None
    if team.is_main:
        log.warning("cache %s: %d damaged shard(s) (%s); rebuilding them", folder, len(damaged),
                    "; ".join(f"{n}: {why}" for n, why in sorted(damaged.items())))  # fmt: skip
    return set(damaged)


def _info(folder: Path, manifest: dict, built: int) -> CacheInfo:
    total = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    return CacheInfo(folder, len(manifest["rows"]), len(manifest["captions"]), total, built)


def _key(source: Source, rows: list[int], cfg: DataConfig, parts: Any, pseudo: Any) -> dict:
    from poseguide.models import model_identity

    identity = None
    if pseudo is not None:
        from poseguide.pose.api import estimator_identity

        identity = estimator_identity(pseudo)
    return cache_key(cfg, model_identity(parts.source), source.fingerprint(), rows,
                     str(parts.vae.dtype), identity)  # fmt: skip


def find_cache(source: Source, rows: list[int], cfg: DataConfig, parts: Any,
               pseudo: Any = None) -> LatentCache:  # fmt: skip
    """Open the complete cache matching this run, or raise :class:`CacheError` saying why not
    (``pseudo``: as :func:`build_cache`'s)."""
    key = _key(source, rows, cfg, parts, pseudo)
    root = Path(cfg.cache.dir)
    if (root / MANIFEST).is_file():  # data.cache.dir points at one cache folder: check it
        return LatentCache.open(root, key)
    return LatentCache.open(_cache_folder(root, key), key)
