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

The package: :mod:`~poseguide.evaluate.report.data` (reading an evaluation, the consistency
check), :mod:`~poseguide.evaluate.report.tables`, :mod:`~poseguide.evaluate.report.setup` (the
set-up section), :mod:`~poseguide.evaluate.report.figures`,
:mod:`~poseguide.evaluate.report.render` (markdown and HTML) and
:mod:`~poseguide.evaluate.report.blocks` (the document, :func:`make_report`).
"""

from poseguide.evaluate.report.blocks import FILES, build_blocks, make_report, select_samples
from poseguide.evaluate.report.data import (
    CONSISTENCY_TOL,
    EvalNotFoundError,
    EvalRun,
    ReportError,
    check_consistency,
    load_eval,
)
from poseguide.evaluate.report.figures import grid_figure, joints_figure, oks_histogram_figure
from poseguide.evaluate.report.render import CSS, Block, Cell, Table, render_html, render_markdown
from poseguide.evaluate.report.setup import judge_note
from poseguide.evaluate.report.tables import THESIS_TABLE_4_1, main_table, thesis_table

__all__ = ["CONSISTENCY_TOL", "CSS", "FILES", "THESIS_TABLE_4_1", "Block", "Cell",
           "EvalNotFoundError", "EvalRun", "ReportError", "Table", "build_blocks",
           "check_consistency", "grid_figure", "joints_figure", "judge_note", "load_eval",
           "main_table", "make_report", "oks_histogram_figure", "render_html", "render_markdown",
           "select_samples", "thesis_table"]  # fmt: skip
