"""Building a latent cache, shared by the processes of a launch (the phases are listed in
:mod:`poseguide.data.cache`): VAE encoding of the rows, the text embeddings, a row hook's
tensors, shards written atomically and the manifest last."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load
from tqdm.auto import tqdm

from poseguide.config.schema import DataConfig
from poseguide.data.cache.format import (
    MANIFEST,
    RowExtras,
    cache_folder,
    damaged_shards,
    encode_latent_dist,
    key_digest,
    read_manifest,
    run_key,
    save_shard,
)
from poseguide.data.preprocess import image_to_tensor, prepare
from poseguide.data.record import Source
from poseguide.models import encode_prompts
from poseguide.utils.device import DTYPES
from poseguide.utils.io import atomic_write_json
from poseguide.utils.team import SOLO, Team

log = logging.getLogger(__name__)


@dataclass
class CacheInfo:
    folder: Path
    rows: int
    captions: int
    bytes: int
    built_shards: int  # shards computed by this call (0 when everything was there)


def _encode_rows(source: Source, chunk: list[int], cfg: DataConfig, parts: Any, style: Any,
                 seed: int, extras: RowExtras | None = None) -> tuple[dict, list[str]]:  # fmt: skip
    """Latent distributions of ``chunk`` rows (and of their mirror images when flips are on);
    with a row hook, its tensors of the rows too."""
    variants = (False, True) if cfg.hflip > 0 else (False,)
    out: dict[str, list[torch.Tensor]] = {}
    captions: list[str] = []
    items: list[Any] = []
    for start in range(0, len(chunk), cfg.cache.batch_size):
        rows = chunk[start : start + cfg.cache.batch_size]
        samples = [source.load(i) for i in rows]
        captions += [s.caption for s in samples]
        if extras is not None:
            items += extras.rows(samples)
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
    if extras is not None:
        tensors.update(extras.tensors(items))
    return tensors, captions


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

        out = {}
        desc = what if team.world == 1 else f"{what} (process {team.rank} of {team.world})"
        total = sum(len(shards[n]) for n in mine)
        with tqdm(total=total, desc=desc, unit="row", disable=not plan.progress) as bar:
            for name in mine:
                tensors, meta = make(shards[name])
                out[name] = save_shard(plan.folder / name, tensors, meta), meta
                bar.update(len(shards[name]))
        return out

    made = {n: got for part in team.run(build) for n, got in part.items()}
    return {**kept, **made}, len(todo)


def _chunks(prefix: str, items: list, size: int) -> dict[str, list]:
    return {f"{prefix}-{s:05d}.safetensors": items[s * size : (s + 1) * size]
            for s in range(math.ceil(len(items) / size))}  # fmt: skip


def build_cache(
    source: Source, rows: list[int], cfg: DataConfig, parts: Any, style: Any, seed: int,
    progress: bool = True, team: Team = SOLO, extras: RowExtras | None = None,
) -> CacheInfo:  # fmt: skip
    """Build (or finish, or just find) the cache of ``rows`` of ``source`` for these models.

    ``parts`` are the loaded SD parts (:class:`poseguide.models.SDParts`); only the VAE, the text
    encoder and the tokenizer are used. ``team``: the processes sharing the build (every process
    calls this; each encodes its share of the shards); the folder is byte for byte the one a
    single process builds. ``extras``: a row hook whose tensors the latent shards hold too
    (:class:`~poseguide.pseudo.PseudoShards`: a reward stage's pseudo ground truth), or None.
    Returns where it is and how big it is (``built_shards``: by all).
    """
    key = run_key(source, rows, cfg, parts, extras)
    folder = cache_folder(Path(cfg.cache.dir), key)
    digest, size = key_digest(key), cfg.cache.shard_size
    found = team.gather(read_manifest(folder) if team.is_main else None)[0]  # one view for all
    rebuild = _damaged_to_rebuild(folder, key, found, team)
    if rebuild is None:  # complete and intact
        return _info(folder, found, 0)
    plan = _Plan(folder, rebuild, team, progress)

    def latents(chunk: list[int]) -> tuple[dict, dict]:
        tensors, caps = _encode_rows(source, chunk, cfg, parts, style, seed, extras)
        meta = {"rows": chunk, "captions": caps, "key": digest}
        if extras is not None:
            meta[extras.summary] = extras.counts(tensors)
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
    if extras is not None:  # the hook's counts over all shards (pseudo: rows and people)
        manifest[extras.summary] = _summed([done[n][1].get(extras.summary, {}) for n in shards])
    main = team.is_main  # then every process can open it; a failure to write it stops all
    team.run(lambda: atomic_write_json(folder / MANIFEST, manifest, indent=None) if main else None)
    info = _info(folder, manifest, built + built_text)
    if team.is_main:
        log.info("cache %s: %d rows, %d captions, %.1f MiB (%d shard(s) built now)", folder,
                 info.rows, info.captions, info.bytes / 2**20, info.built_shards)  # fmt: skip
    return info


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


def _summed(counts: list[dict[str, int]]) -> dict[str, int]:
    """Per-shard counts summed by name."""
    return {k: sum(c.get(k, 0) for c in counts) for k in sorted({k for c in counts for k in c})}
