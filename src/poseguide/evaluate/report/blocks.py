"""The report as a document: its blocks in order (:func:`build_blocks`) and the files
:func:`make_report` writes (``FILES``, each atomically, so a re-run replaces them whole)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

from poseguide.evaluate.report.data import (
    CONSISTENCY_TOL,
    EvalRun,
    ReportError,
    as_number,
    check_consistency,
    load_eval,
)
from poseguide.evaluate.report.figures import (
    OKS_BINS,
    grid_figure,
    joints_figure,
    oks_histogram_figure,
)
from poseguide.evaluate.report.published import PUBLISHED
from poseguide.evaluate.report.render import Block, render_html, render_markdown
from poseguide.evaluate.report.setup import setup_items
from poseguide.evaluate.report.tables import (
    SELECTIONS,
    THESIS_TABLE_4_1,
    coco_table,
    comparisons_table,
    main_table,
    placement_table,
    published_table,
    thesis_table,
)
from poseguide.paths import RunPaths
from poseguide.train.monitor import plot_curves, read_metrics
from poseguide.utils.io import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

FILES = {
    "md": "report.md",
    "html": "report.html",
    "grid": "report_grid.png",
    "oks_hist": "report_oks_hist.png",
    "joints": "report_joints.png",
    "curves": "report_curves.png",
}


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
            for v in (as_number(r.get("oks")) for r in by_id.get(sample, {}).values())
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
    confidence = as_number(run.setup.get("confidence"))
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


def _protocol_blocks(run: EvalRun) -> list[Block]:
    """The evaluation protocol's settings (each marked as following it or not), what poseguide
    does differently, and its published figures beside this run's rows."""
    found = run.setup.get("protocol")
    if not isinstance(found, dict) or found.get("name") in (None, "thesis"):
        return []
    name = found["name"]
    rows = [f"`{r['key']}`: {r['used']!r}" + ("" if r["follows"] else
            f" (the protocol: {r['protocol']!r}; this run differs)")
            for r in found.get("settings", [])]  # fmt: skip
    blocks: list[Block] = [
        ("h2", f"Protocol: {name}"),
        ("p", f"Follows {found.get('source')}. Its settings, as this evaluation used them:"),
        ("ul", rows),
        ("p", "Where poseguide differs from the protocol:"),
        ("ul", list(found.get("differences") or [])),
    ]
    table = published_table(run, name)
    if table is not None:
        source = PUBLISHED[name]
        blocks += [
            ("h3", f"Published figures beside this run ({source['source']})"),
            ("p", "Rows marked published are the paper's numbers, copied, not measured here; "
             "they were scored with the paper's detector (HigherHRNet), this run's with "
             f"poseguide's estimator. {source['notes']}"),
            ("table", table),
        ]  # fmt: skip
    return blocks


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
        ("ul", setup_items(run)),
        *_results_blocks(run, problems),
        ("h2", "Keypoints: COCO AP/AR"),
        ("table", coco_table(run)),
        ("h2", "Reference: the thesis' published numbers (not this run)"),
        ("p", thesis),
        ("table", thesis_table()),
        *_protocol_blocks(run),
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
