"""``poseguide reproduce`` and ``poseguide demo``: the thesis end to end (resumable, with a timed
dry run), and the offline mini world."""

from __future__ import annotations

import argparse

from poseguide.commands.common import Commands, add_command, add_config_args
from poseguide.config import load_config
from poseguide.demo import run_demo
from poseguide.reproduce import dry_run, run_reproduce


def reproduce(args: argparse.Namespace) -> None:
    config = load_config(args.config, args.overrides)
    if args.dry_run:
        dry_run(config, args.probe_model, args.probe_steps)
    else:
        run_reproduce(config)


def demo(args: argparse.Namespace) -> None:
    run_demo(load_config(args.config, args.overrides))


def register(commands: Commands) -> None:
    what = "the thesis end to end: train every stage, evaluate, report (resumable)"
    repro = add_command(commands, "reproduce", reproduce, what)
    add_config_args(repro, required=False, default="thesis")
    plan = "check that everything can be reached and print the timed plan"
    repro.add_argument("--dry-run", action="store_true", help=plan)
    repro.add_argument("--probe-model", help="model for the timing probe (default: the base "
                       "model, or builtin:sd15-random when it cannot be reached)")  # fmt: skip
    repro.add_argument("--probe-steps", type=int, default=2, help="timed steps per stage")
    offline = add_command(commands, "demo", demo, "the offline end-to-end demo (see README)")
    add_config_args(offline, required=False, default="mini")
