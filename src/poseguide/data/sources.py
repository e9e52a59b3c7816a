"""Dataset sources: build one from the config or from a command-line argument.

These kinds of source yield the same :class:`~poseguide.data.record.Sample` (see each module):

* ``hub`` (:class:`HubSource`, :mod:`poseguide.data.hub`): ``limingcv/Captioned_COCOPose`` by
  name, or a local folder of its parquet shards;
* ``manifest`` (:class:`ManifestSource`, :mod:`poseguide.data.manifest`): a JSONL file;
* ``coco`` (:class:`CocoSource`, :mod:`poseguide.data.coco`): a ``person_keypoints_*.json``,
  its images folder and captions;
* ``humansd`` (:class:`HumanSDSource`, :mod:`poseguide.data.humansd`): HumanSD's mapping JSON
  and pose ``.npz`` files (LAION-Human);

and ``synthetic`` writes a manifest with :func:`poseguide.synth.people.ensure_synthetic` and opens
it. Every source decodes lazily (building one reads no image) and raises
:class:`~poseguide.data.record.RowError` from ``load`` for a bad row, after the shared checks of
:mod:`poseguide.data.checks`. Rows without a pose image have ``pose_image=None``: the skeleton is
rendered from the keypoints by preprocessing (one renderer, one style setting for all sources).
"""

from __future__ import annotations

from pathlib import Path

from poseguide.config.schema import SourceConfig
from poseguide.data.checks import check_sample, open_image
from poseguide.data.coco import KEYPOINTS_PREFIX, CocoSource
from poseguide.data.hub import HUB_ID, HubSource
from poseguide.data.humansd import HumanSDSource
from poseguide.data.manifest import ManifestSource
from poseguide.data.record import Source, SourceError
from poseguide.synth.people import ensure_synthetic
from poseguide.utils.images import DEFAULT_MAX_IMAGE_PIXELS

__all__ = [
    "CocoSource",
    "HubSource",
    "HumanSDSource",
    "ManifestSource",
    "SourceError",
    "check_sample",
    "guess_kind",
    "open_image",
    "open_source",
    "source_from_cli",
]

MANIFEST_NAME = "manifest.jsonl"  # the file looked for when a folder is given
HUMANSD_PREFIX = "mapping"  # HumanSD's mapping_file_training.json, mapping_validation.json


def open_source(
    cfg: SourceConfig,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    *,
    hf_cache_dir: str | None = None,
) -> Source:
    """The source described by ``cfg`` (``data.train`` or ``data.eval``), limited to
    ``cfg.limit`` rows. ``hf_cache_dir`` is where ``datasets`` keeps its Arrow files (hub only;
    None = its default cache)."""
    common = {"max_image_pixels": max_image_pixels, "limit": cfg.limit}
    if cfg.kind == "hub":
        return HubSource(cfg.path, cfg.split, cfg.revision, cache_dir=hf_cache_dir, **common)
    if cfg.kind == "manifest":
        return ManifestSource(cfg.path, **common)
    if cfg.kind == "coco":
        return CocoSource(cfg.path, cfg.images_dir, cfg.captions, select=cfg.select, **common)
    if cfg.kind == "humansd":
        return HumanSDSource(cfg.path, cfg.images_dir, **common)
    if cfg.kind == "synthetic":
        return ManifestSource(ensure_synthetic(cfg.path, cfg.synthetic), **common)
    raise SourceError(f"unknown source kind {cfg.kind!r}")


def guess_kind(spec: str) -> tuple[str, str]:
    """(kind, path) for a command-line source: a ``.jsonl`` manifest (or a folder holding
    ``manifest.jsonl``), a HumanSD ``mapping*.json``, a COCO ``.json``, a folder of parquet
    shards, or a hub id."""
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix == ".jsonl":
            return "manifest", str(path)
        if path.suffix == ".json":
            return ("humansd" if path.name.startswith(HUMANSD_PREFIX) else "coco"), str(path)
        raise SourceError(f"{path}: expected a .jsonl manifest, a COCO .json keypoints file or "
                          f"a HumanSD {HUMANSD_PREFIX}*.json")  # fmt: skip
    if path.is_dir():
        if (path / MANIFEST_NAME).is_file():
            return "manifest", str(path / MANIFEST_NAME)
        if next(path.rglob("*.parquet"), None) is not None:
            return "hub", str(path)
        raise SourceError(
            f"{path}: a folder source must hold {MANIFEST_NAME} or parquet shards (data/*.parquet)"
        )
    if HUB_ID.match(spec):
        return "hub", spec
    raise SourceError(f"source not found: {spec} (a path, or a hub dataset id owner/name)")


def guess_images_dir(annotations: Path) -> Path | None:
    """COCO's layout: ``annotations/person_keypoints_val2017.json`` -> ``val2017/`` beside
    ``annotations/`` (or inside it)."""
    if not annotations.name.startswith(KEYPOINTS_PREFIX):
        return None
    split = annotations.stem[len(KEYPOINTS_PREFIX) :]
    for candidate in (annotations.parent.parent / split, annotations.parent / split):
        if candidate.is_dir():
            return candidate
    return None


def source_from_cli(
    spec: str,
    *,
    kind: str | None = None,
    split: str = "train",
    revision: str | None = None,
    images_dir: str | None = None,
    captions: str | None = None,
    limit: int | None = None,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    hf_cache_dir: str | None = None,
) -> Source:
    """A source from a command-line argument; the kind is guessed (:func:`guess_kind`) unless
    given. For COCO, ``images_dir`` defaults to COCO's layout (:func:`guess_images_dir`)."""
    if kind is None:
        kind, spec = guess_kind(spec)
    elif kind == "manifest" and Path(spec).is_dir():
        spec = str(Path(spec) / MANIFEST_NAME)
    if kind == "coco" and images_dir is None:
        found = guess_images_dir(Path(spec))
        if found is None:
            raise SourceError(f"{spec}: pass the COCO images folder (images_dir / --images-dir)")
        images_dir = str(found)
    cfg = SourceConfig(
        kind=kind,
        path=spec,
        split=split,
        revision=revision,
        images_dir=images_dir,
        captions=captions,
        limit=limit,
    )
    return open_source(cfg, max_image_pixels, hf_cache_dir=hf_cache_dir)
