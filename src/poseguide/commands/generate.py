"""``poseguide generate``: images from a prompt and a pose (a skeleton, keypoints or a photo)."""

from __future__ import annotations

import argparse

from poseguide.commands.common import Commands, add_command, add_config_args
from poseguide.config import load_config
from poseguide.generate import run_generate
from poseguide.pose.inputs import POSE_KINDS


def generate(args: argparse.Namespace) -> None:
    config = load_config(args.config, args.overrides)
    output_size = "source" if args.source_size else args.output_size
    paths = run_generate(
        config, args.controlnet, args.prompt, args.pose, args.out, n=args.n, seed=args.seed,
        size=tuple(args.size) if args.size else None,
        output_size=tuple(output_size) if isinstance(output_size, list) else output_size,
        pose_kind=args.pose_kind,
    )  # fmt: skip
    for path in paths:
        print(f"wrote {path}")


def register(commands: Commands) -> None:
    gen = add_command(commands, "generate", generate, "generate images from a prompt and a pose")
    gen.add_argument("--controlnet", required=True, help="ControlNet folder or hub id")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--pose", required=True, help="skeleton image, keypoint JSON or photo")
    gen.add_argument("--pose-kind", default="auto", choices=["auto", *POSE_KINDS])
    gen.add_argument("--out", default="generated", help="output folder")
    gen.add_argument("-n", type=int, default=1, help="number of images (seeds seed..seed+n-1)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--size", type=int, nargs=2, metavar=("W", "H"),
                     help="generation size (default: data.resolution square)")  # fmt: skip
    out_size = gen.add_mutually_exclusive_group()
    out_size.add_argument("--output-size", type=int, nargs=2, metavar=("W", "H"),
                          help="resize the images to this size")  # fmt: skip
    out_size.add_argument("--source-size", action="store_true",
                          help="resize the images to the pose's original size")  # fmt: skip
    add_config_args(gen, required=False)
