"""Row validation with a per-run policy (``data.on_bad_row``).

:func:`scan` loads and checks every row of a source once:

* ``"error"`` (default): stop at the first bad row (in row order) and raise its
  :class:`~poseguide.data.record.RowError`, whose message names the row id or path and the problem.
* ``"skip"``: record every bad row, count them per problem, and write ``skipped_rows.jsonl`` (one
  ``{index, id, problem, detail}`` per line) and ``scan_summary.json`` to the run folder.

Cost: a scan decodes every image in full (truncation only shows when all pixels are read), about
one image decode per row plus the pose image; see the README for measured figures. ``workers``
threads decode in parallel (PIL releases the GIL while decoding). A finished scan can be cached
under ``cache_dir`` as ``scan-<fingerprint>.json``: the fingerprint changes with the rows' content
(files' sizes and mtimes, the dataset's Arrow fingerprint, ``limit``, ``max_image_pixels``), so a
second run over the same data reads the result instead of decoding everything again.

Several processes share a scan (``team``, :mod:`poseguide.utils.team`): process ``r`` of ``w``
checks rows ``r, r + w, ...``, the verdicts are gathered and merged in row order (under
``"error"`` each process stops at its own first bad row and every process raises the first of
them), so the report, its files and the cached scan are the ones a single process writes.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path

from tqdm.auto import tqdm

from poseguide.data.checks import check_sample
from poseguide.data.record import ROW_PROBLEMS, RowError, Sample, Source, SourceError
from poseguide.utils.io import atomic_write_json, atomic_write_text
from poseguide.utils.team import SOLO, Team

log = logging.getLogger(__name__)

POLICIES: tuple[str, ...] = ("error", "skip")
SKIPPED_FILE = "skipped_rows.jsonl"
SUMMARY_FILE = "scan_summary.json"
CACHE_VERSION = 1
SKIP_HINT = " (to skip bad rows and list them instead, set data.on_bad_row=skip)"


@dataclass(frozen=True)
class SkippedRow:
    index: int  # position in the source
    id: str
    problem: str  # one of ROW_PROBLEMS
    detail: str


@dataclass
class ScanReport:
    """The result of :func:`scan`: which rows are usable and why the others are not."""

    source: str  # the source's name
    fingerprint: str
    policy: str
    total: int  # rows scanned
    skipped: list[SkippedRow] = field(default_factory=list)
    seconds: float = 0.0  # time spent scanning (0 when read from the cache)
    cached: bool = False  # read from a previous scan's cache file

    @property
    def valid(self) -> list[int]:
        """Indices of the usable rows, in order."""
        bad = {row.index for row in self.skipped}
        return [i for i in range(self.total) if i not in bad]

    @property
    def counts(self) -> dict[str, int]:
        """Skipped rows per problem (every problem listed, zeros included)."""
        counts = dict.fromkeys(ROW_PROBLEMS, 0)
        for row in self.skipped:
            counts[row.problem] += 1
        return counts

    def summary(self) -> dict:
        return {
            "source": self.source,
            "fingerprint": self.fingerprint,
            "policy": self.policy,
            "total": self.total,
            "valid": self.total - len(self.skipped),
            "skipped": len(self.skipped),
            "counts": self.counts,
            "seconds": round(self.seconds, 3),
            "cached": self.cached,
        }


def load_checked(source: Source, index: int) -> Sample:
    """Load row ``index`` and run the shared checks; raises :class:`RowError` for a bad row."""
    return check_sample(source.load(index))


def _try_row(source: Source, index: int) -> RowError | None:
    try:
        load_checked(source, index)
    except RowError as err:
        return err
    return None


def _results(
    source: Source, indices: Sequence[int], workers: int
) -> Iterator[tuple[int, RowError | None]]:
    """(index, error or None) for each of ``indices``, in order; ``workers`` threads when > 0."""
    if workers <= 0:
        for index in indices:
            yield index, _try_row(source, index)
        return
    # A bounded window of futures keeps memory flat and lets an early stop cancel quickly.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        todo = iter(indices)
        pending = deque((i, pool.submit(_try_row, source, i)) for i in islice(todo, 4 * workers))
        while pending:
            index, future = pending.popleft()
            for more in islice(todo, 1):  # keep the window full
                pending.append((more, pool.submit(_try_row, source, more)))
            yield index, future.result()


def _cache_file(cache_dir: Path, fingerprint: str) -> Path:
    return Path(cache_dir) / f"scan-{fingerprint}.json"


def _read_cache(path: Path, total: int, policy: str) -> ScanReport | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("version") != CACHE_VERSION or data["total"] != total:
            return None
        skipped = [SkippedRow(**row) for row in data["skipped_rows"]]
        return ScanReport(data["source"], data["fingerprint"], policy, total, skipped, cached=True)
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no cache, or an unreadable one: scan again


def _write_outputs(report: ScanReport, out_dir: Path) -> None:
    lines = "".join(json.dumps(asdict(row)) + "\n" for row in report.skipped)
    atomic_write_text(Path(out_dir) / SKIPPED_FILE, lines)
    atomic_write_json(Path(out_dir) / SUMMARY_FILE, report.summary())


@dataclass
class _Share:
    """What one process found in its share of the rows (sent to the others)."""

    skipped: list[SkippedRow]
    first_bad: SkippedRow | None = None  # policy "error": the share's first bad row (it stopped)


def _scan_share(source: Source, policy: str, indices: Sequence[int], progress: bool,
                workers: int, desc: str) -> _Share:  # fmt: skip
    share = _Share([])
    bar = tqdm(total=len(indices), desc=desc, unit="row", disable=not progress)
    rows = _results(source, indices, workers)
    try:
        for index, err in rows:
            bar.update(1)
            if err is None:
                continue
            row = SkippedRow(index, err.row, err.problem, err.detail)
            if policy == "error":
                share.first_bad = row
                break
            share.skipped.append(row)
            bar.set_postfix(skipped=len(share.skipped), refresh=False)
    finally:
        rows.close()  # stops the worker threads' window at once on an early exit
        bar.close()
    return share


def _run(source: Source, policy: str, progress: bool, workers: int, fp: str,
         team: Team) -> ScanReport:  # fmt: skip
    """Every process scans its share of the rows (``rank, rank + world, ...``); the shares are
    merged in row order, so the report is the one a single process makes."""
    report = ScanReport(source.name, fp, policy, len(source))
    start = time.perf_counter()
    desc = f"checking {source.name}"
    if team.world > 1:
        desc += f" (process {team.rank} of {team.world}: rows {team.rank}, "
        desc += f"{team.rank + team.world}, ...)"
    indices = team.share(range(len(source)))
    shares = team.run(lambda: _scan_share(source, policy, indices, progress, workers, desc))
    bad = [s.first_bad for s in shares if s.first_bad is not None]
    if bad:  # the first bad row in row order: each share stopped at its own first
        first = min(bad, key=lambda row: row.index)
        raise RowError(first.id, first.problem, f"{first.detail}{SKIP_HINT}") from None
    report.skipped = sorted((row for s in shares for row in s.skipped), key=lambda r: r.index)
    report.seconds = time.perf_counter() - start
    return report


def _same_data(source: Source, views: list[tuple[str, int, ScanReport | None]]) -> None:
    """Every process must see the same rows (the shares are merged as one dataset)."""
    differ = [rank for rank, (fp, n, _) in enumerate(views) if (fp, n) != views[0][:2]]
    if differ:
        raise SourceError(
            f"{source.name}: process {differ[0]} sees other data than process 0 ("
            f"{views[differ[0]][1]} rows, fingerprint {views[differ[0]][0]}; process 0: "
            f"{views[0][1]} rows, {views[0][0]}); every process needs the same files (on "
            "several machines: one shared filesystem for the data, the cache and the run folder)"
        )


def scan(
    source: Source,
    policy: str = "error",
    out_dir: str | Path | None = None,
    progress: bool = True,
    *,
    cache_dir: str | Path | None = None,
    workers: int = 0,
    team: Team = SOLO,
) -> ScanReport:
    """Check every row of ``source`` under ``policy`` (see the module docstring).

    ``out_dir``: the run folder for ``skipped_rows.jsonl`` and ``scan_summary.json`` (written
    atomically whenever the scan completes). ``cache_dir``: where finished scans are cached by
    fingerprint (None = no cache). ``workers``: decoding threads (0 = this thread). ``team``:
    the processes that share the scan (each checks every ``world``-th row; every process gets
    the whole report, the main process writes the files: the same bytes whatever the number of
    processes, but for the measured ``seconds``).
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    fp = source.fingerprint()
    cache = _cache_file(Path(cache_dir), fp) if cache_dir is not None else None
    report = _read_cache(cache, len(source), policy) if cache is not None and team.is_main else None
    if team.world > 1:  # the main process's reading of the cache holds for every process
        views = team.gather((fp, len(source), report))
        _same_data(source, views)
        report = views[0][2]
    fresh = report is None
    if fresh:
        report = _run(source, policy, progress, workers, fp, team)
    elif policy == "error" and report.skipped:
        first = report.skipped[0]
        raise RowError(first.id, first.problem, f"{first.detail} (cached scan {cache}){SKIP_HINT}")

    def write() -> None:  # the main process's files; a failure there stops every process
        if cache is not None and fresh and team.is_main:
            data = {"version": CACHE_VERSION, **report.summary()}
            data["skipped_rows"] = [asdict(row) for row in report.skipped]
            atomic_write_json(cache, data, indent=None)
        if out_dir is not None and team.is_main:
            _write_outputs(report, Path(out_dir))

    team.run(write)
    if report.skipped and team.is_main:
        counts = ", ".join(f"{k} {v}" for k, v in report.counts.items() if v)
        where = f"; list in {Path(out_dir) / SKIPPED_FILE}" if out_dir is not None else ""
        log.warning(
            "%s: skipped %d of %d rows (%s)%s",
            source.name,
            len(report.skipped),
            report.total,
            counts,
            where,
        )
    return report
