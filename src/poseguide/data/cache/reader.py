"""Reading a complete latent cache: :func:`find_cache` opens the one matching a run,
:class:`LatentCache` reads a row's latent distribution, a caption's embedding or any per-row
tensor a row hook stored (memory-mapped safetensors shards)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from poseguide.config.schema import DataConfig
from poseguide.data.cache.format import (
    MANIFEST,
    CacheError,
    RowExtras,
    cache_folder,
    damaged_error,
    damaged_shards,
    key_differences,
    run_key,
)
from poseguide.data.record import Source
from poseguide.utils.device import DTYPES


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
            reasons = "; ".join(key_differences(manifest["key"], expected_key))
            raise CacheError(
                f"the cache at {folder} does not match this run ({reasons}). Rebuild it with "
                "`poseguide cache build CONFIG` or set data.cache.enabled=false"
            )
        damaged = damaged_shards(folder, manifest, full=False)
        if damaged:
            raise damaged_error(folder, damaged)
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
                raise damaged_error(self.folder, {name: str(err)}) from None
        return self._handles[name]

    def _slice(self, name: str, tensor: str, offset: int) -> torch.Tensor:
        try:
            return self._handle(name).get_slice(tensor)[offset : offset + 1][0]
        except CacheError:
            raise
        except Exception as err:
            raise damaged_error(self.folder, {name: str(err)}) from None

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

    def holds(self, key: str) -> bool:
        """Whether the shards hold a row hook's tensors (its entry is in the cache key)."""
        return key in self.manifest["key"]

    def row_tensor(self, index: int, name: str) -> torch.Tensor:
        """Row ``index``'s slice of the latent-shard tensor ``name`` (a row hook's, as stored)."""
        if index not in self._where:
            raise CacheError(f"row {index} is not in the cache at {self.folder}")
        shard, offset = self._where[index]
        return self._slice(f"latents-{shard:05d}.safetensors", name, offset)


def find_cache(source: Source, rows: list[int], cfg: DataConfig, parts: Any,
               extras: RowExtras | None = None) -> LatentCache:  # fmt: skip
    """Open the complete cache matching this run, or raise :class:`CacheError` saying why not
    (``extras``: as :func:`~poseguide.data.cache.build_cache`'s)."""
    key = run_key(source, rows, cfg, parts, extras)
    root = Path(cfg.cache.dir)
    if (root / MANIFEST).is_file():  # data.cache.dir points at one cache folder: check it
        return LatentCache.open(root, key)
    return LatentCache.open(cache_folder(root, key), key)
