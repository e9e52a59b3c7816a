"""The torch Dataset, its sampler and collate function for training.

Batches are dicts with fixed keys (B = batch size, R = ``data.resolution``, D = text width):

=================  =============================  ===============================================
key                shape / type                   meaning
=================  =============================  ===============================================
``index``          (B,) int64                     row index in the source (seeds per-row noise)
``rows``           list[int]                      the same indices as Python ints (no tensor reads)
``ids``            list[str]                      row ids
``captions``       list[str]                      captions ("" when dropped)
``conditioning``   (B, 3, R, R) float32 in [0,1]  the skeleton image (ControlNet input)
``pixel_values``   (B, 3, R, R) float32 [-1, 1]   the image (absent when latents are cached)
``latent_mean``    (B, 4, R/8, R/8) float32       cached VAE posterior mean (cache only)
``latent_std``     (B, 4, R/8, R/8) float32       cached VAE posterior std (cache only)
``text_emb``       (B, 77, D) float32             cached text embedding (cache only)
``keypoints``      list[(P, 17, 3) | None]        ground truth in training pixels
``areas``          list[(P,) | None]              the people's areas in training pixels^2
``pseudo_keypoints`` list[(P, 17, 3) | None]      a row without keypoints: pseudo ground truth
                                                 (cache, reward stages; training pixels)
``pseudo_areas``   list[(P,) | None]              their areas in training pixels^2
``flipped``        (B,) bool                      whether the row was mirrored
=================  =============================  ===============================================

Sharding: every epoch has one permutation of the rows (seeded by ``(seed, epoch)``); process
``rank`` of ``world`` takes positions ``rank, rank + world, ...``, padded by wrapping around so
that all processes take the same number of steps. The sampler can start mid-epoch, which is how
a resumed run continues at the exact next sample.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from poseguide.config.schema import DataConfig
from poseguide.data.preprocess import image_to_tensor, prepare
from poseguide.data.record import RowError, Source
from poseguide.errors import InputError
from poseguide.pose.render import render_skeleton
from poseguide.pose.skeleton import flip_keypoints
from poseguide.pose.transforms import place_keypoints
from poseguide.pseudo import cached_pseudo

# The epoch's data order draws from its own stream of (run.seed, epoch key): a number no other
# per-row stream uses, so the order is independent of the rows' noise and flips.
log = logging.getLogger(__name__)

ORDER_STREAM = 7919


class LatentLookup(Protocol):
    """What the dataset needs from a latent cache."""

    def latents(self, index: int, flipped: bool) -> tuple[torch.Tensor, torch.Tensor]: ...

    def text(self, caption: str) -> torch.Tensor | None: ...

    def pseudo(self, index: int) -> tuple[np.ndarray, np.ndarray] | None: ...


def placed(people: tuple[np.ndarray, np.ndarray], placement: Any) -> tuple[np.ndarray, ...]:
    """Pseudo ground truth ((P, 17, 3) keypoints, (P,) areas in the original image's pixels)
    moved onto the training canvas like the image (areas scale with both axes)."""

    sx, sy = placement.scale
    return place_keypoints(people[0], placement), people[1] * sx * sy


def training_item(index: int, row_id: str, caption: str, conditioning: torch.Tensor,
                  keypoints: np.ndarray | None, areas: np.ndarray | None = None,
                  flipped: bool = False, replaced: list[dict] | None = None,
                  **cached: torch.Tensor) -> dict[str, Any]:  # fmt: skip
    """One dataset item, the layout :func:`collate` stacks into the batch of the module
    docstring: the one place that layout is written (the dataset, the dry-run probe's stand-in
    batch). ``cached``: ``latent_mean``/``latent_std`` (4, R/8, R/8) and ``text_emb`` (77, D)
    for the cached path, or ``pixel_values`` (3, R, R) in [-1, 1]; the pseudo ground truth is
    filled in by the dataset when the cache holds it."""
    unknown = set(cached) - {"latent_mean", "latent_std", "text_emb", "pixel_values"}
    if unknown:
        raise TypeError(f"training_item: unknown keys {sorted(unknown)}")
    return {"index": index, "id": row_id, "caption": caption, "conditioning": conditioning,
            "keypoints": keypoints, "areas": areas, "flipped": flipped,
            "replaced": list(replaced or []), "pseudo_keypoints": None, "pseudo_areas": None,
            **cached}  # fmt: skip


class PoseDataset(Dataset):
    """Training examples from a source: prepared images, or cached latents when available (the
    image is then not decoded at all: keypoints, caption, pose image and the size from the
    image's header are what an item needs besides the cache).

    ``rows`` are the usable row indices of the source (after validation); item ``i`` is row
    ``rows[i]``. Call :meth:`set_epoch` before each epoch (it changes the flip/dropout draws).
    """

    def __init__(
        self,
        source: Source,
        rows: Sequence[int],
        cfg: DataConfig,
        style: Any,
        seed: int,
        cache: LatentLookup | None = None,
        condition_from_pseudo: bool = False,
    ) -> None:
        self.source, self.rows, self.cfg = source, list(rows), cfg
        self.style, self.seed, self.cache = style, seed, cache
        # A reward stage's rows with pseudo targets: draw the condition from those keypoints,
        # so that the condition and the reward's targets are the same pose by construction.
        self.condition_from_pseudo = condition_from_pseudo
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        index, sample, replaced = self._load(i)
        item = prepare(sample, index, self.cfg, self.style, self.seed, self.epoch)
        out = training_item(index, item.id, item.caption, image_to_tensor(item.pose, low=0.0),
                            item.keypoints, item.areas, item.flipped, replaced)  # fmt: skip
        own = item.keypoints is not None or self.cache is None
        found = None if own else cached_pseudo(self.cache, index)
        if found is not None:  # only the reward reads them: keypoints stay None
            people, areas = placed(found, item.placement)
            if item.flipped:  # the image was mirrored: so are its people
                people = flip_keypoints(people, self.cfg.resolution)
            out["pseudo_keypoints"], out["pseudo_areas"] = people, areas
            if self.condition_from_pseudo:
                size = (self.cfg.resolution, self.cfg.resolution)
                drawn = Image.fromarray(render_skeleton(people, size, self.style))
                out["conditioning"] = image_to_tensor(drawn, low=0.0)
        if self.cache is None:
            out["pixel_values"] = image_to_tensor(item.image, low=-1.0)
        else:
            out["latent_mean"], out["latent_std"] = self.cache.latents(index, item.flipped)
            text = self.cache.text(item.caption)
            if text is not None:
                out["text_emb"] = text
        return out

    def _load(self, i: int) -> tuple[int, Any, list[dict]]:
        """Row ``rows[i]``; under ``data.on_bad_row=skip`` a row that fails now (its file changed
        after the scan) is replaced by the next row that loads, and reported (``replaced``)."""
        replaced: list[dict] = []
        for k in range(len(self.rows)):
            index = self.rows[(i + k) % len(self.rows)]
            try:
                # Cached latents stand for the image: only its size is read (from the header).
                return index, self.source.load(index, image=self.cache is None), replaced
            except RowError as err:
                if self.cfg.on_bad_row != "skip":
                    raise
                log.warning("%s; skipped (data.on_bad_row=skip), the next row takes its place", err)
                replaced.append({"row": err.row, "problem": err.problem, "detail": err.detail})
        raise RowError(
            str(self.rows[i]), "unreadable_image", "no row of the dataset loads any more"
        )


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack a list of dataset items into the batch layout of the module docstring."""
    batch: dict[str, Any] = {
        "index": torch.tensor([it["index"] for it in items], dtype=torch.int64),
        "rows": [int(it["index"]) for it in items],
        "ids": [it["id"] for it in items],
        "captions": [it["caption"] for it in items],
        "keypoints": [it["keypoints"] for it in items],
        "areas": [it.get("areas") for it in items],
        "pseudo_keypoints": [it.get("pseudo_keypoints") for it in items],
        "pseudo_areas": [it.get("pseudo_areas") for it in items],
        "flipped": torch.tensor([it["flipped"] for it in items], dtype=torch.bool),
        "replaced": [r for it in items for r in it.get("replaced", [])],
    }
    for key in ("conditioning", "pixel_values", "latent_mean", "latent_std", "text_emb"):
        if key in items[0]:
            batch[key] = torch.stack([it[key] for it in items])
    return batch


class ShardedSampler(Sampler[int]):
    """Epoch-seeded permutation, sharded across processes, startable mid-epoch.

    ``start`` counts samples already taken by this process in the current epoch.
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world: int = 1, shuffle: bool = True):
        if size <= 0:
            raise InputError(
                "cannot sample from an empty dataset (every row skipped or none given)"
            )
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in [0, {world})")
        self.size, self.seed, self.rank, self.world, self.shuffle = size, seed, rank, world, shuffle
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    @property
    def per_process(self) -> int:
        return math.ceil(self.size / self.world)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """This process's positions for ``epoch`` (before ``start`` is applied)."""
        order = np.arange(self.size)
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch, ORDER_STREAM]).permutation(self.size)
        padded = np.resize(order, self.per_process * self.world)  # wrap to equal shares
        return padded[self.rank :: self.world]

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_order(self.epoch)[self.start :].tolist())

    def __len__(self) -> int:
        return self.per_process - self.start
