"""What the report reads: ``<run>/eval/metrics.json`` and ``samples.jsonl``, and the check
that the per-sample rows average to the reported means."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from poseguide.errors import UserError
from poseguide.paths import RunPaths

log = logging.getLogger(__name__)

CONSISTENCY_TOL = 1e-6


class ReportError(UserError):
    """The evaluation output cannot be reported on; the message names the file and what to do."""


class EvalNotFoundError(ReportError, FileNotFoundError):
    """``<run>/eval/metrics.json`` does not exist."""


@dataclass
class EvalRun:
    """What the report reads: ``metrics.json`` and the rows of ``samples.jsonl`` ([] if absent)."""

    run_dir: Path
    eval_dir: Path
    metrics: dict
    samples: list[dict]

    @property
    def models(self) -> list[str]:
        return list(self.metrics["models"])

    @property
    def setup(self) -> dict:
        return self.metrics.get("setup") or {}

    def entry(self, model: str) -> dict:
        return self.metrics["models"].get(model) or {}

    def rows_of(self, model: str) -> list[dict]:
        return [row for row in self.samples if row["model"] == model]

    def by_id(self) -> dict[str, dict[str, dict]]:
        table: dict[str, dict[str, dict]] = {}
        for row in self.samples:
            table.setdefault(str(row["id"]), {})[row["model"]] = row
        return table

    def ids(self) -> list[str]:
        """Sample ids in ``samples.jsonl`` order (else the pose files' names, sorted)."""
        ids = list(dict.fromkeys(str(row["id"]) for row in self.samples))
        if not ids and (self.eval_dir / "poses").is_dir():
            ids = sorted(p.stem for p in (self.eval_dir / "poses").glob("*.png"))
        return ids


def _read_samples(path: Path) -> list[dict]:
    if not path.is_file():
        log.warning("%s is missing: no per-sample check, histograms or row values", path)
        return []
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise ReportError(f"{path}:{number}: not valid JSON ({exc}); re-run evaluate") from exc
        if not isinstance(row, dict) or "model" not in row or "id" not in row:
            raise ReportError(f"{path}:{number}: a row needs the keys 'model' and 'id'")
        rows.append(row)
    return rows


def load_eval(run_dir: str | Path) -> EvalRun:
    """Read ``<run_dir>/eval/metrics.json`` and ``samples.jsonl``."""
    run_dir = Path(run_dir)
    paths = RunPaths(run_dir).eval
    eval_dir, path = paths.root, paths.metrics
    if not path.is_file():
        raise EvalNotFoundError(
            f"{path}: not found; the report reads the output of `poseguide evaluate CONFIG` "
            "(run it for this run first, or pass the run folder that holds eval/)"
        )
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ReportError(f"{path}: cannot be read as JSON ({exc}); re-run evaluate") from exc
    if not isinstance(metrics, dict) or not isinstance(metrics.get("models"), dict):
        raise ReportError(f"{path}: no 'models' section; re-run evaluate")
    if not metrics["models"]:
        raise ReportError(f"{path}: 'models' is empty; evaluate at least one model")
    return EvalRun(run_dir, eval_dir, metrics, _read_samples(paths.samples))


def as_number(value: Any) -> float:
    """A float, NaN for None or anything that is not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def finite_mean(values: Any) -> float:
    finite = [v for v in map(as_number, values) if math.isfinite(v)]
    return math.fsum(finite) / len(finite) if finite else math.nan


def metric_summary(entry: dict, key: str) -> dict[str, float]:
    """``entry[key]`` as mean/low/high/std/nan; a bare number is a mean; missing gives NaNs."""
    value = entry.get(key) if isinstance(entry, dict) else None
    if not isinstance(value, dict):
        value = {"mean": value}
    nan = as_number(value.get("nan", value.get("n_nan")))
    return {
        "mean": as_number(value.get("mean")),
        "low": as_number(value.get("ci_low")),
        "high": as_number(value.get("ci_high")),
        "std": as_number(value.get("std")),
        "nan": int(nan) if math.isfinite(nan) else 0,
    }


def check_consistency(run: EvalRun, tol: float = CONSISTENCY_TOL) -> list[str]:
    """Where the per-sample rows do not average to ``metrics.json``'s means (logged too).

    CLIP score and LPIPS: mean of the rows' finite values. OKS: mean of all finite
    ``per_gt_oks`` entries, as ``metrics.json`` averages over ground-truth people.
    """
    problems: list[str] = []
    if not run.samples:
        return problems
    for model in run.models:
        rows = run.rows_of(model)
        if not rows:
            problems.append(f"{model}: no rows in samples.jsonl")
            continue
        recomputed = {key: finite_mean(r.get(key) for r in rows) for key in ("clip", "lpips")}
        if all("per_gt_oks" in r for r in rows):
            recomputed["oks"] = finite_mean(v for r in rows for v in r["per_gt_oks"] or [])
        for key, value in recomputed.items():
            reported = metric_summary(run.entry(model), key)["mean"]
            if math.isnan(value) and math.isnan(reported):
                continue
            if not abs(value - reported) <= tol:  # also true when just one of them is NaN
                problems.append(
                    f"{model} {key}: metrics.json has {reported:.6g}, "
                    f"the samples.jsonl rows average to {value:.6g}"
                )
    for problem in problems:
        log.warning("report: %s", problem)
    return problems
