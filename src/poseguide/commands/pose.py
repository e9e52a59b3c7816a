"""``poseguide pose render|estimate``: a keypoint file as a skeleton image, a photo's poses."""

from __future__ import annotations

import argparse

from poseguide.commands.common import Commands, add_command, add_config_args, add_group
from poseguide.config import load_config
from poseguide.config.schema import RenderConfig
from poseguide.pose.api import estimate_file, render_file
from poseguide.pose.render import RENDER_STYLES


def render(args: argparse.Namespace) -> None:
    print(f"wrote {render_file(args.keypoints, args.out, style=args.style, size=args.size)}")


def estimate(args: argparse.Namespace) -> None:
    config = load_config(args.config, args.overrides)
    print(estimate_file(args.image, args.out, config.pose, render=args.render))


def register(commands: Commands) -> None:
    pose = add_group(commands, "pose", "render and estimate poses", "pose_command")
    draw = add_command(pose, "render", render, "draw a keypoint JSON file as a skeleton image")
    draw.add_argument("keypoints", help="keypoint JSON (COCO layout, see README)")
    draw.add_argument("--out", required=True, help="output PNG")
    draw.add_argument("--style", default=RenderConfig.style, choices=list(RENDER_STYLES))
    draw.add_argument(
        "--size", nargs=2, type=int, metavar=("W", "H"), help="canvas size (default: from the file)"
    )
    find = add_command(pose, "estimate", estimate, "estimate the poses in a photo")
    find.add_argument("image", help="input image")
    find.add_argument("--out", required=True, help="output keypoint JSON")
    find.add_argument("--render", help="also draw the skeleton to this PNG")
    add_config_args(find, required=False)
