"""The evaluation report: ``report.md`` and a self-contained ``report.html`` from ``<run>/eval/``.

Reads what ``poseguide evaluate`` writes (docs/evaluation-format.md). Every number in the tables
comes from ``metrics.json``; the per-sample rows of ``samples.jsonl`` feed the figures and a
consistency check: their means must equal ``metrics.json``'s (CLIP score and LPIPS average the
rows, OKS averages the ``per_gt_oks`` entries, i.e. ground-truth people). A disagreement beyond
``CONSISTENCY_TOL`` is logged as a warning and listed in the report.

Contents: set-up summary; the main table in the thesis' Table 4.1 layout; COCO keypoint AP/AR
(and FID/KID when computed); the thesis' published numbers as a separate reference; the
qualitative grid (thesis Fig. 4.3-4.6); per-model OKS histograms; per-joint keypoint accuracy;
the training curves when the run has them.

Files, in ``out_dir`` (default ``<run>/eval``), each written atomically so that a re-run replaces
them whole: see ``FILES``. The training curves are copied from ``<run>/curves.png`` or, when only
``<run>/metrics.jsonl`` exists, plotted from it.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from poseguide.evaluate.report_data import (  # noqa: F401 - part of the report API
    CONSISTENCY_TOL,
    EvalNotFoundError,
    EvalRun,
    ReportError,
    _finite_mean,
    _summary,
    check_consistency,
    load_eval,
)
from poseguide.evaluate.report_figures import (
    OKS_BINS,
    _num,
    grid_figure,
    joints_figure,
    oks_histogram_figure,
)
from poseguide.evaluate.report_render import (  # noqa: F401 - part of the report API
    CSS,
    Block,
    Cell,
    Table,
    render_html,
    render_markdown,
)
from poseguide.paths import RunPaths
from poseguide.train.monitor import plot_curves, read_metrics
from poseguide.utils.io import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

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
FILES = {
    "md": "report.md",
    "html": "report.html",
    "grid": "report_grid.png",
    "oks_hist": "report_oks_hist.png",
    "joints": "report_joints.png",
    "curves": "report_curves.png",
}


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
    """One row per label; ``values[row][column]`` are :func:`_summary` dicts; ``columns`` are
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
    values = [[_summary(run.entry(m), key) for key, *_ in MAIN_COLUMNS] for m in run.models]
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
    values = [[_summary(run.entry(m), key) for key, *_ in PLACEMENT_COLUMNS] for m in run.models]
    return ranked_table(run.models, [c[1:] for c in PLACEMENT_COLUMNS], values)


def comparisons_table(run: EvalRun) -> Table | None:
    """``model − against | ΔOKS | Δ pose-specific OKS``: the paired per-row differences with
    their intervals (``evaluate.compare``); None when none was configured."""
    found = run.metrics.get("comparisons") or []
    if not found:
        return None
    labels = [f"{c['model']} − {c['against']}" for c in found]
    values = [[_summary(c, "oks"), _summary(c, "pose_specific_oks")] for c in found]
    columns = [("Δ OKS", None, 3), ("Δ pose-specific OKS", None, 3)]
    header, rows = ranked_table(labels, columns, values)
    return ["Paired difference", *header[1:]], rows


def coco_table(run: EvalRun) -> Table:
    """Rows, ground-truth people, COCO keypoint AP/AP50/AP75/AR, and FID/KID when present."""
    columns: list[tuple[str, str | None, int]] = [("rows", None, 0), ("GT people", None, 0)]
    columns += [(key, "max", 3) for key in COCO_KEYS]
    extra = [
        (k, t, d)
        for k, t, d in (("fid", "FID", 2), ("kid", "KID", 4))
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
        row = [_summary({"v": rows}, "v"), _summary({"v": people}, "v")]
        row += [_summary(entry.get("coco") or {}, key) for key in COCO_KEYS]
        row += [_summary(entry, key) for key, _, _ in extra]
        values.append(row)
    return ranked_table(run.models, columns, values)


def thesis_table() -> Table:
    rows = THESIS_TABLE_4_1["rows"]
    values = [[_summary({"v": v}, "v") for v in row[1:]] for row in rows]
    return ranked_table([row[0] for row in rows], [c[1:] for c in MAIN_COLUMNS], values)


# ---------------------------------------------------------------------------------------------
# Sample selection and figures
# ---------------------------------------------------------------------------------------------


def select_samples(
    run: EvalRun, samples: Sequence[str] | None = None, n: int = 4, select: str = "spread"
) -> tuple[list[str], str]:
    """The sample ids of the qualitative grid, and a sentence saying how they were chosen.

    ``samples`` (ids) wins when given; unknown ids are an error. Otherwise ``n`` ids by
    ``select``: "spread" (default) the rows where the models' per-sample OKS differ most
    (max - min over the models with a value; rows with fewer than two values come last; ties
    keep file order), "first" the first ``n`` rows, "even" ``n`` rows evenly spaced over the file.
    """
    ids = run.ids()
    if samples:
        unknown = [s for s in samples if s not in ids]
        if unknown:
            known = ", ".join(ids[:8]) + (" ..." if len(ids) > 8 else "")
            raise ReportError(f"{run.eval_dir}: unknown sample id(s) {unknown}; known: {known}")
        return list(dict.fromkeys(samples)), "chosen by id"
    if select not in SELECTIONS:
        raise ReportError(f"select={select!r}: use one of {', '.join(SELECTIONS)}")
    if n < 0:
        raise ReportError(f"n={n}: the number of grid samples must be >= 0")
    n = min(n, len(ids))
    if select == "even":
        picks = [ids[round(i * (len(ids) - 1) / max(n - 1, 1))] for i in range(n)]
        return picks, f"{n} eval rows evenly spaced over the {len(ids)}"
    if select == "first" or not run.samples:  # without per-sample OKS there is no spread
        return ids[:n], f"the first {n} eval rows"
    by_id = run.by_id()

    def spread(sample: str) -> float:
        oks = [
            v
            for v in (_num(r.get("oks")) for r in by_id.get(sample, {}).values())
            if math.isfinite(v)
        ]
        return max(oks) - min(oks) if len(oks) >= 2 else -1.0

    order = sorted(range(len(ids)), key=lambda k: (-spread(ids[k]), k))
    picks = [ids[k] for k in order[:n]]
    return picks, f"the {n} eval rows where the models' OKS differ most (largest first)"


def _curves(run: EvalRun, out: Path) -> bytes | None:
    """``<run>/curves.png`` copied to ``out``, else plotted from ``<run>/metrics.jsonl``."""
    paths = RunPaths(run.run_dir)
    existing = paths.curves()
    if existing.is_file():
        atomic_write_bytes(out, existing.read_bytes())
        return out.read_bytes()
    try:
        written = plot_curves(read_metrics(paths.metrics), out)
    except (KeyError, TypeError, ValueError) as exc:
        log.warning("%s: cannot plot the training curves (%s)", paths.metrics, exc)
        return None
    return written.read_bytes() if written else None


# ---------------------------------------------------------------------------------------------
# The document
# ---------------------------------------------------------------------------------------------


def _setup_items(run: EvalRun) -> list[str]:
    s = run.setup

    def get(key: str) -> str:
        return "not recorded" if s.get(key) in (None, "") else str(s[key])

    items = [f"Base model: {get('base_model')}"]
    for model in run.models:
        entry = run.entry(model)
        given, resolved = entry.get("controlnet", "not recorded"), entry.get("resolved")
        where = f" (loaded from {resolved})" if resolved and resolved != given else ""
        items.append(f"ControlNet of `{model}`: {given}{where}")
    seed, limit = s.get("seed"), s.get("limit") if "limit" in s else "not recorded"
    seeds = (
        "not recorded"
        if seed is None
        else f"eval row i uses seed {seed} + i, the same for every model"
    )
    confidence = _num(s.get("confidence"))
    ci = (
        "not recorded"
        if not math.isfinite(confidence)
        else (f"{100 * confidence:g}% percentile bootstrap, {get('bootstrap')} resamples")
    )
    generate = s.get("generate") if isinstance(s.get("generate"), dict) else {}
    return [
        *items,
        f"Seeds: {seeds}",
        "Generation: " + (", ".join(f"{k}={v}" for k, v in generate.items()) or "not recorded"),
        f"Resolution: {get('resolution')}",
        f"Pose estimator (OKS): {get('estimator')}; {_judge_note(s)}",
        f"LPIPS: {get('lpips')}",
        f"CLIP score: {get('clip')}",
        f"OKS ground truth: {get('ground_truth')}; matching: {get('matching')}; "
        f"min OKS: {get('min_oks')}",
        f"Eval rows: {get('rows')} from {get('eval_source')} (limit: {limit or 'none'})",
        f"Captions cut to the text encoders' limits: {_caption_cuts(run)}",
        f"Reward-stage targets (training): {_reward_targets(run)}",
        f"Confidence intervals: {ci}",
    ]


def _judge_note(setup: dict) -> str:
    """Whether the evaluation's estimator is the one a reward stage trained against (same
    weights and input size): then the OKS measures what the reward optimised, not an
    independent judge."""
    config = setup.get("config") if isinstance(setup.get("config"), dict) else {}
    judge = (config.get("evaluate") or {}).get("estimator") or {}
    default = (config.get("pose") or {}).get("estimator") or {}
    stages = (config.get("train") or {}).get("stages") or []
    rewarded = [(st.get("loss") or {}).get("reward_estimator") or default
                for st in stages if (st.get("loss") or {}).get("kind") == "reward"]  # fmt: skip
    if not rewarded or not judge:
        return "no reward stage trained against a pose estimator"
    same = [
        r
        for r in rewarded
        if (r.get("weights"), r.get("imgsz")) == (judge.get("weights"), judge.get("imgsz"))
    ]
    where = f"{judge.get('weights')} at imgsz {judge.get('imgsz')}"
    if same:
        return (f"NOT an independent judge: the reward stage trained against the same model "
                f"and input size ({where})")  # fmt: skip
    others = ", ".join(sorted({f"{r.get('weights')} at imgsz {r.get('imgsz')}" for r in rewarded}))
    return f"judge {where}; the reward trained against {others}"


def _reward_targets(run: EvalRun) -> str:
    """Where a reward stage's targets came from (``<run>/reward_targets.json``)."""
    path = RunPaths(run.run_dir).reward_targets
    try:
        t = json.loads(path.read_text())
        condition = t.get("pseudo_rows_condition", "the dataset's pose image")
        return (f"{t['dataset_keypoints']} of {t['rows']} rows with the dataset's keypoints, "
                f"{t['pseudo_ground_truth']} with pseudo ground truth ({t['pseudo_people']} "
                f"people found by {t['estimator']} on the original images; their condition: "
                f"{condition})")  # fmt: skip
    except FileNotFoundError:
        return "none (no reward stage)"
    except (OSError, ValueError, KeyError, TypeError):
        return f"unreadable ({path})"


def _caption_cuts(run: EvalRun) -> str:
    """How many captions were cut (training: ``<run>/captions.json``; eval: metrics.json)."""
    parts = []
    train = RunPaths(run.run_dir).captions
    found = {"training": json.loads(train.read_text())} if train.is_file() else {}
    found.update((run.setup.get("captions") or {}).items())
    for what, c in found.items():
        if not isinstance(c, dict) or "cut" not in c:
            continue
        text = f"{what.replace('_', ' ')} {c['cut']} of {c.get('captions')} (limit {c.get('limit')}"
        text += f", at most {c.get('tokens_cut_max')} tokens cut)" if c["cut"] else ")"
        parts.append(text)
    return "; ".join(parts) or "not recorded"


# (FILES key, heading, caption, text when there is no figure), after the qualitative grid.
FIGURE_SECTIONS = (
    (
        "oks_hist",
        "OKS per sample",
        f"per-sample OKS (mean over the row's people), {OKS_BINS} equal bins from 0 to 1",
        "No per-sample OKS: samples.jsonl is missing.",
    ),
    (
        "joints",
        "Per-joint keypoint accuracy",
        "per-joint keypoint accuracy: labelled joints a matched person "
        "got within the similarity threshold",
        "No model has per-joint accuracy in metrics.json.",
    ),
    (
        "curves",
        "Training curves",
        "training loss and learning rate",
        "None: the run folder has neither curves.png nor metrics.jsonl.",
    ),
)


def _image_block(key: str, data: bytes | None, caption: str, absent: str) -> Block:
    return ("img", FILES[key], data, caption) if data else ("p", absent)


def _results_blocks(run: EvalRun, problems: list[str]) -> list[Block]:
    confidence = _num(run.setup.get("confidence"))
    level = f"{100 * confidence:g}% " if math.isfinite(confidence) else ""
    if not run.samples:
        check = "Per-sample check: not possible, `samples.jsonl` is missing."
    elif problems:
        check = "Per-sample check FAILED (the table shows `metrics.json`); the rows disagree:"
    else:
        check = (
            f"The rows of `samples.jsonl` average to these numbers (within {CONSISTENCY_TOL:g})."
        )
    explain = (
        f"Each cell: mean [low, high], the mean and its {level}bootstrap confidence interval. "
        "CLIP score and LPIPS average over generated images, OKS over ground-truth people. "
        "↑ higher is better, ↓ lower is better; the best value of each column is in bold; "
        "n/a: no value."
    )
    blocks = [
        ("h2", "Results (thesis Table 4.1 layout)"),
        ("p", explain),
        ("table", main_table(run)),
        ("p", check),
    ]
    blocks += [("ul", problems)] if problems else []
    placement = placement_table(run)
    if placement is not None:
        blocks += [("h2", "Following the pose, or placing a person?"), ("p", PLACEMENT_TEXT),
                   ("table", placement)]  # fmt: skip
    comparisons = comparisons_table(run)
    if comparisons is not None:
        blocks += [("h2", "Effects, paired by row"), ("p", COMPARISON_TEXT),
                   ("table", comparisons)]  # fmt: skip
    return blocks + _invalid_blocks(run)


COMPARISON_TEXT = (
    "Each line: the first model minus the second on the same rows (same prompt, pose and seed); "
    "mean of the per-row differences [bootstrap interval]. An interval that excludes 0 is an "
    "effect at that confidence; an arm against its control (the same extra steps of the plain "
    "denoising loss) isolates what the arm's loss adds."
)
PLACEMENT_TEXT = (
    "OKS rewards a person of the right size in the right place as well as the right pose. "
    "Pose-specific OKS: per row, OKS against the requested pose minus OKS against the next eval "
    "row's pose moved onto it (same centre and size); about 0 for a model that only places a "
    "person. Detected: rows where the estimator finds anybody. Person-count error: "
    "|detected people - ground-truth people|. Each cell: mean [95% bootstrap interval]."
)


def _invalid_blocks(run: EvalRun) -> list[Block]:
    """Generated images that came out NaN, Inf or black (after a float32-VAE retry): not scored,
    not in the means; counted and listed per model."""
    items = []
    for model in run.models:
        invalid = run.entry(model).get("invalid") or {}
        if invalid.get("count"):
            reasons = invalid.get("reasons") or {}
            listed = ", ".join(f"{i} ({reasons.get(i, '?')})" for i in invalid.get("ids", []))
            items.append(f"`{model}`: {invalid['count']} invalid image(s), left out: {listed}")
    if not items:
        return [("p", "Invalid images (NaN, Inf or black even with a float32 VAE): none.")]
    return [("p", "Invalid images (NaN, Inf or black even with a float32 VAE), not scored:"),
            ("ul", items)]  # fmt: skip


def build_blocks(
    run: EvalRun,
    figures: dict[str, bytes | None],
    problems: list[str],
    selection: tuple[list[str], str],
    grid_notes: list[str],
) -> list[Block]:
    """The report as a list of blocks, rendered to Markdown and HTML alike."""
    ids, how = selection
    thesis = f"From {THESIS_TABLE_4_1['source']}. {THESIS_TABLE_4_1['notes']}"
    grid_text = (
        f"Columns: pose, then {', '.join(run.models)}. Samples: {how}: "
        f"{', '.join(ids) or 'none'}. Row text: the caption, then each model's OKS, "
        "LPIPS and CLIP score on that sample."
    )
    blocks: list[Block] = [
        ("h1", f"Evaluation report: {run.run_dir.resolve().name}"),
        ("p", "Numbers from `eval/metrics.json`, written by `poseguide evaluate`."),
        ("h2", "Set-up"),
        ("ul", _setup_items(run)),
        *_results_blocks(run, problems),
        ("h2", "Keypoints: COCO AP/AR"),
        ("table", coco_table(run)),
        ("h2", "Reference: the thesis' published numbers (not this run)"),
        ("p", thesis),
        ("table", thesis_table()),
        ("h2", "Qualitative samples (thesis Fig. 4.3-4.6)"),
        ("p", grid_text),
        *([("ul", grid_notes)] if grid_notes else []),
        _image_block("grid", figures.get("grid"), "pose | models", "No samples to show."),
    ]
    for key, heading, caption, absent in FIGURE_SECTIONS:
        blocks += [("h2", heading), _image_block(key, figures.get(key), caption, absent)]
    return blocks


def make_report(
    run_dir: str | Path,
    samples: list[str] | None = None,
    n: int = 4,
    out_dir: str | Path | None = None,
    select: str = "spread",
) -> dict[str, Path]:
    """Write the report of ``<run_dir>/eval/`` to ``out_dir`` (default ``<run_dir>/eval``).

    ``samples`` picks the qualitative grid's rows by id; otherwise ``n`` rows by ``select``
    (:func:`select_samples`). Returns the written files by key of ``FILES`` (a figure without
    data, e.g. no training curves, is left out). Raises :class:`EvalNotFoundError` (a
    ``UserError`` and ``FileNotFoundError``) naming the path when metrics.json is missing.
    """
    run = load_eval(run_dir)
    out = Path(out_dir) if out_dir is not None else run.eval_dir
    problems = check_consistency(run)
    selection = select_samples(run, samples, n, select)
    grid, grid_notes = grid_figure(run, selection[0])
    figures = {"grid": grid, "oks_hist": oks_histogram_figure(run), "joints": joints_figure(run)}
    written: dict[str, Path] = {}
    for key, data in figures.items():
        if data is not None:
            written[key] = atomic_write_bytes(out / FILES[key], data)
    figures["curves"] = _curves(run, out / FILES["curves"])
    if figures["curves"] is not None:
        written["curves"] = out / FILES["curves"]
    blocks = build_blocks(run, figures, problems, selection, grid_notes)
    written["md"] = atomic_write_text(out / FILES["md"], render_markdown(blocks))
    written["html"] = atomic_write_text(out / FILES["html"], render_html(blocks, blocks[0][1]))
    log.info("report: %s, %s", written["md"], written["html"])
    return written
