"""``poseguide explain-loss CONFIG --sample ID``: what a stage's loss weighs or rewards for one
sample, drawn by the training step's own code."""

from __future__ import annotations

import argparse

from poseguide.commands.common import Commands, add_command, add_config_args
from poseguide.config import load_config
from poseguide.train.explain import explain_loss


def explain(args: argparse.Namespace) -> None:
    config = load_config(args.config, args.overrides)
    summary = explain_loss(
        config, args.sample, args.timestep, args.out, args.stage, args.controlnet
    )
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v}" for k, v in summary.items()))


def register(commands: Commands) -> None:
    what = "what a stage's loss weighs (Fig. 4.2) or rewards for one sample"
    parser = add_command(commands, "explain-loss", explain, what)
    add_config_args(parser)
    parser.add_argument("--sample", required=True, help="row id of a training sample")
    parser.add_argument("--timestep", type=int, default=500, help="diffusion timestep")
    parser.add_argument("--stage", help="stage name (default: the first heatmap or reward stage)")
    parser.add_argument("--controlnet", help="ControlNet folder or id (default: the run's)")
    parser.add_argument("--out", default="explain_loss.png", help="output PNG")
