"""``poseguide train CONFIG``: train the config's stages, resumable."""

from __future__ import annotations

import argparse
import os

from poseguide.commands.common import Commands, add_command, add_config_args
from poseguide.config import load_config
from poseguide.train.runner import ResumeRules, run_training


def train(args: argparse.Namespace) -> None:
    rules = ResumeRules(args.allow_config_change, args.accept_data_change)
    result = run_training(load_config(args.config, args.overrides), args.stage, args.resume, rules)
    if os.environ.get("RANK", "0") != "0":  # one summary per launch, not per process
        return
    print(f"finished at step {result['global_step']}; run folder {result['run_dir']}")
    for stage, folder in result["exports"].items():
        print(f"  {stage}: {folder}")


def register(commands: Commands) -> None:
    parser = add_command(
        commands, "train", train, "train the config's stages (stage 1, stage 2, ...)"
    )
    add_config_args(parser)
    parser.add_argument(
        "--stage", action="append", metavar="NAME",
        help="run only this stage (repeatable); default: all unfinished stages",
    )  # fmt: skip
    parser.add_argument(
        "--resume", metavar="latest|PATH",
        help="continue from the latest checkpoint of the run, or from a checkpoint folder",
    )  # fmt: skip
    parser.add_argument(
        "--allow-config-change", action="store_true",
        help="with --resume: let a stage's lr, max_steps or epochs, or train.mixed_precision, "
        "differ from the checkpoint's config (after a divergence, for example)",
    )  # fmt: skip
    parser.add_argument(
        "--accept-data-change", action="store_true",
        help="with --resume: continue although the training rows changed since the checkpoint",
    )  # fmt: skip
