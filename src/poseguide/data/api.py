"""Config-level data tasks shared by the CLI, the trainer and the demo."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from poseguide.config import Config
from poseguide.config.schema import SourceConfig
from poseguide.data.cache import build_cache
from poseguide.data.record import Source
from poseguide.data.sources import open_source
from poseguide.data.validate import ScanReport, scan
from poseguide.models import load_sd_parts
from poseguide.paths import RunPaths
from poseguide.pseudo import pseudo_shards
from poseguide.utils.device import resolve_device
from poseguide.utils.team import SOLO, Team

log = logging.getLogger(__name__)


def checked_source(
    config: Config, which: SourceConfig | None = None, out_dir: Path | None = None,
    progress: bool = True, team: Team = SOLO,
) -> tuple[Source, ScanReport]:  # fmt: skip
    """Open a source (default ``data.train``) and scan its rows under ``data.on_bad_row``.

    Skipped rows are listed in ``out_dir`` (default: the run folder); the scan result is cached
    beside the latent caches so a second run over the same data does not decode it again.
    ``team``: the processes sharing the scan (each checks its share of the rows; all get the
    whole report).
    """
    cfg = config.data
    source = open_first_on_main(which or cfg.train, cfg.max_image_pixels, team)
    report = scan(
        source,
        cfg.on_bad_row,
        out_dir=out_dir or RunPaths.of(config).root,
        progress=progress,
        cache_dir=Path(cfg.cache.dir) / "scans",
        workers=cfg.num_workers,
        team=team,
    )
    if report.skipped and team.is_main:
        log.warning(
            "%s: skipped %d of %d rows (%s); the list is in %s",
            source.name, len(report.skipped), report.total,
            ", ".join(f"{k}: {v}" for k, v in report.counts.items() if v),
            out_dir or RunPaths.of(config).root,
        )  # fmt: skip
    return source, report


def data_identity(source: Source, report: ScanReport) -> dict:
    """What a checkpoint records of the rows it was trained on: the source, the scan's content
    fingerprint (the files' bytes or sizes and times, the dataset's Arrow fingerprint), how many
    rows are used and a hash of their ids in order."""
    ids = source.ids()
    used = "\n".join(str(ids[i]) for i in report.valid)
    return {"source": source.name, "fingerprint": report.fingerprint, "rows": len(report.valid),
            "ids_sha256": hashlib.sha256(used.encode()).hexdigest()[:16]}  # fmt: skip


def data_change(before: dict, now: dict) -> str | None:
    """What differs between two :func:`data_identity` records, in words (None: nothing)."""
    changes = []
    if before.get("source") != now.get("source"):
        changes.append(f"source {before.get('source')!r} -> {now.get('source')!r}")
    if before.get("rows") != now.get("rows"):
        changes.append(f"{before.get('rows')} -> {now.get('rows')} rows")
    elif before.get("ids_sha256") != now.get("ids_sha256"):
        changes.append(f"the same number of rows ({now.get('rows')}) with other ids or order")
    if not changes and before.get("fingerprint") != now.get("fingerprint"):
        changes.append("the same rows with changed content (captions, images, keypoints or "
                       f"their files: fingerprint {before.get('fingerprint')} -> "
                       f"{now.get('fingerprint')})")  # fmt: skip
    return "; ".join(changes) or None


def open_first_on_main(which: SourceConfig, max_image_pixels: int, team: Team = SOLO) -> Source:
    """Open a source on the main process, then on the others: what opening writes (a synthetic
    set, ``datasets``' Arrow files) is written once, and every process then sees the same files
    (the same fingerprint). An error on any process stops every process."""
    opened: list[Source] = []

    def open_if(here: bool) -> None:
        if here:
            opened.append(open_source(which, max_image_pixels))

    team.run(lambda: open_if(team.is_main))
    team.run(lambda: open_if(not team.is_main))
    return opened[0]


def build_train_cache(config: Config, progress: bool = True) -> dict:
    """``poseguide cache build``: scan the training rows and cache their latents and captions."""

    source, report = checked_source(config, progress=progress)
    parts = load_sd_parts(
        config.model.base, config.model.revision, config.model.variant,
        device=resolve_device(config.run.device),
    )  # fmt: skip
    info = build_cache(
        source,
        report.valid,
        config.data,
        parts,
        config.pose.render,
        config.run.seed,
        progress,
        extras=pseudo_shards(config),
    )
    return {
        "folder": str(info.folder),
        "rows": info.rows,
        "skipped": len(report.skipped),
        "captions": info.captions,
        "mib": round(info.bytes / 2**20, 2),
        "built_shards": info.built_shards,
    }
