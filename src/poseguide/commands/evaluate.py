"""``poseguide evaluate CONFIG`` and ``poseguide report RUN``: score every configured model on
the eval split, then write the report."""

from __future__ import annotations

import argparse

from poseguide.commands.common import Commands, add_command, add_config_args
from poseguide.config import load_config
from poseguide.evaluate.report import make_report
from poseguide.evaluate.report.tables import SELECTIONS
from poseguide.evaluate.runner import run_evaluation


def evaluate(args: argparse.Namespace) -> None:
    metrics = run_evaluation(load_config(args.config, args.overrides), limit=args.limit)
    if not metrics:  # not the main process
        return
    print(f"{'model':<12} {'CLIP':>8} {'LPIPS':>8} {'OKS':>8}")
    for name, m in metrics["models"].items():
        values = [m[k]["mean"] for k in ("clip", "lpips", "oks")]
        print(f"{name:<12} " + " ".join("     n/a" if v is None else f"{v:8.3f}" for v in values))


def report(args: argparse.Namespace) -> None:
    paths = make_report(args.run_dir, samples=args.samples, n=args.n, select=args.select)
    print(f"wrote {paths['md']} and {paths['html']}")


def register(commands: Commands) -> None:
    parser = add_command(commands, "evaluate", evaluate,
                         "generate and score every configured model on the eval split")  # fmt: skip
    add_config_args(parser)
    parser.add_argument("--limit", type=int, help="only the first N eval rows")
    written = add_command(commands, "report", report,
                          "write report.md and report.html of an evaluation")  # fmt: skip
    written.add_argument("run_dir", help="the run folder (holding eval/metrics.json)")
    written.add_argument("--samples", nargs="+", metavar="ID", help="eval rows for the image grid")
    written.add_argument("--n", type=int, default=4, help="rows in the image grid (default 4)")
    written.add_argument("--select", default="spread", choices=list(SELECTIONS),
                         help="how grid rows are chosen without --samples (default: spread, the "
                         "rows where the models' OKS differ most)")  # fmt: skip
