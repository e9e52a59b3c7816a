"""The report's tables: the main table in the thesis' Table 4.1 layout, placement and paired
comparisons, COCO keypoint AP/AR (and FID/KID when computed), the thesis' published numbers."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from poseguide.evaluate.report.data import EvalRun, metric_summary
from poseguide.evaluate.report.published import PUBLISHED
from poseguide.evaluate.report.render import Cell, Table

# The thesis' published results, shown as a reference block (never mixed with this run's).
THESIS_TABLE_4_1: dict[str, Any] = {
    "source": "the thesis poseguide reproduces, Table 4.1",
    "notes": (
        "Trained on one 12 GB RTX 3060 (stage 1: 31 h, stage 2: 28 h). OKS with YOLOv8x-pose, "
        "LPIPS, and CLIP score with a CLIP model the thesis does not name. Published as single "
        "numbers, without confidence intervals."
    ),
    "rows": [  # (label, CLIP score, LPIPS, OKS), in the thesis' order
        ("Stage 1 (standard loss)", 32.35, 0.776, 0.685),
        ("Baseline (lllyasviel/sd-controlnet-openpose)", 31.38, 0.796, 0.719),
        ("Stage 2 (heatmap-guided loss)", 31.98, 0.766, 0.786),
    ],
}
# (metrics.json key, column title, better: "max" | "min" | None, decimals): Table 4.1's columns.
MAIN_COLUMNS = (
    ("clip", "CLIP score ↑", "max", 2),
    ("lpips", "LPIPS ↓", "min", 3),
    ("oks", "OKS ↑", "max", 3),
)
COCO_KEYS = ("AP", "AP50", "AP75", "AR")
SELECTIONS = ("spread", "first", "even")


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------


def _metric_cell(s: dict[str, float], decimals: int, best: float) -> Cell:
    """``mean [low, high]`` (the CI when known; ``mean ± std`` for KID); the mean bold if best."""
    mean = s["mean"]
    if not math.isfinite(mean):
        return [("n/a", False)]
    cell = [(f"{mean:.{decimals}f}", mean == best)]
    if math.isfinite(s["low"]) and math.isfinite(s["high"]):
        cell.append((f" [{s['low']:.{decimals}f}, {s['high']:.{decimals}f}]", False))
    elif math.isfinite(s["std"]):
        cell.append((f" ± {s['std']:.{decimals}f}", False))
    if s["nan"]:
        cell.append((f" ({s['nan']} NaN left out)", False))
    return cell


def ranked_table(
    labels: Sequence[str], columns: Sequence[tuple[str, str | None, int]], values: list[list[dict]]
) -> Table:
    """One row per label; ``values[row][column]`` are :func:`metric_summary` dicts; ``columns`` are
    ``(title, better, decimals)``. The best finite mean per column (``better`` "max"/"min") is
    bold, ties included; NaN/None shows as ``n/a`` and never wins."""
    best = []
    for j, (_, better, _) in enumerate(columns):
        finite = [row[j]["mean"] for row in values if math.isfinite(row[j]["mean"])]
        best.append((max if better == "max" else min)(finite) if better and finite else math.nan)
    rows = [
        [[(label, False)]] + [_metric_cell(v, columns[j][2], best[j]) for j, v in enumerate(row)]
        for label, row in zip(labels, values, strict=True)
    ]
    return ["Model", *(title for title, _, _ in columns)], rows


def main_table(run: EvalRun) -> Table:
    """The thesis' Table 4.1 layout: ``Model | CLIP score ↑ | LPIPS ↓ | OKS ↑``."""
    values = [[metric_summary(run.entry(m), key) for key, *_ in MAIN_COLUMNS] for m in run.models]
    return ranked_table(run.models, [c[1:] for c in MAIN_COLUMNS], values)


# (metrics.json key, column title, better, decimals): is the model following the pose, or only
# placing a person? (poseguide.evaluate.controls)
PLACEMENT_COLUMNS = (
    ("pose_specific_oks", "pose-specific OKS ↑", "max", 3),
    ("moved_pose_oks", "OKS vs another pose moved there", None, 3),
    ("detection_rate", "detected ↑", "max", 2),
    ("person_count_error", "person-count error ↓", "min", 2),
)


def placement_table(run: EvalRun) -> Table | None:
    """``Model | pose-specific OKS | OKS vs a moved pose | detected | person-count error``;
    None when no model has these figures (metrics written before they existed)."""
    if not any(run.entry(m).get("pose_specific_oks") for m in run.models):
        return None
    values = [[metric_summary(run.entry(m), key) for key, *_ in PLACEMENT_COLUMNS]
              for m in run.models]  # fmt: skip
    return ranked_table(run.models, [c[1:] for c in PLACEMENT_COLUMNS], values)


def comparisons_table(run: EvalRun) -> Table | None:
    """``model − against | ΔOKS | Δ pose-specific OKS``: the paired per-row differences with
    their intervals (``evaluate.compare``); None when none was configured."""
    found = run.metrics.get("comparisons") or []
    if not found:
        return None
    labels = [f"{c['model']} − {c['against']}" for c in found]
    values = [[metric_summary(c, "oks"), metric_summary(c, "pose_specific_oks")] for c in found]
    columns = [("Δ OKS", None, 3), ("Δ pose-specific OKS", None, 3)]
    header, rows = ranked_table(labels, columns, values)
    return ["Paired difference", *header[1:]], rows


def coco_table(run: EvalRun) -> Table:
    """Rows, ground-truth people, COCO keypoint AP/AP50/AP75/AR, CAP, PCE, and AP_clean /
    AR_clean and FID/KID when present."""
    columns: list[tuple[str, str | None, int]] = [("rows", None, 0), ("GT people", None, 0)]
    columns += [(key, "max", 3) for key in COCO_KEYS]
    columns += [("CAP", "max", 3), ("PCE", "min", 2)]
    clean = any(run.entry(m).get("coco_clean") for m in run.models)
    columns += [("AP_clean", "max", 3), ("AR_clean", "max", 3)] if clean else []
    extra = [
        (k, t, d)
        for k, t, d in (("fid", "FID", 2), ("kid", "KID", 4), ("fid_clip", "FID_CLIP", 2))
        if any(run.entry(m).get(k) is not None for m in run.models)
    ]
    columns += [(title, "min", decimals) for _, title, decimals in extra]
    values = []
    for model in run.models:
        entry = run.entry(model)
        rows = entry.get("n")
        if rows is None and isinstance(entry.get("clip"), dict):
            rows = entry["clip"].get("n")
        people = entry["oks"].get("n") if isinstance(entry.get("oks"), dict) else None
        row = [metric_summary({"v": rows}, "v"), metric_summary({"v": people}, "v")]
        row += [metric_summary(entry.get("coco") or {}, key) for key in COCO_KEYS]
        row += [metric_summary(entry.get("cap") or {}, "AP"), metric_summary(entry, "pce")]
        if clean:
            row += [metric_summary(entry.get("coco_clean") or {}, k) for k in ("AP", "AR")]
        row += [metric_summary(entry, key) for key, _, _ in extra]
        values.append(row)
    return ranked_table(run.models, columns, values)


def thesis_table() -> Table:
    rows = THESIS_TABLE_4_1["rows"]
    values = [[metric_summary({"v": v}, "v") for v in row[1:]] for row in rows]
    return ranked_table([row[0] for row in rows], [c[1:] for c in MAIN_COLUMNS], values)


def _scaled(value: Any, scale: float) -> dict[str, float]:
    """A metrics.json value (a number or a summary dict) in a published table's unit."""
    s = metric_summary({"v": value}, "v")
    return {k: (v * scale if k in ("mean", "low", "high", "std") else v) for k, v in s.items()}


def published_table(run: EvalRun, protocol: str) -> Table | None:
    """This run's models in the protocol's columns and units, then the paper's published rows
    (labelled "published"), no best value marked; None for a protocol without published
    figures here."""
    found = PUBLISHED.get(protocol)
    if found is None:
        return None
    columns = found["columns"]
    values, labels = [], []
    for model in run.models:
        entry = run.entry(model)
        row = []
        for path, _, scale, _ in columns:
            node: Any = entry
            for part in path:
                node = node.get(part) if isinstance(node, dict) else None
            row.append(_scaled(node, scale))
        values.append(row)
        labels.append(f"{model} (this run)")
    for label, *numbers in found["rows"]:
        values.append([_scaled(v, 1.0) for v in numbers])
        labels.append(f"{label} (published)")
    # Nothing in bold: a measured row and a published one are not the same measurement.
    return ranked_table(labels, [(title, None, d) for _, title, _, d in columns], values)
