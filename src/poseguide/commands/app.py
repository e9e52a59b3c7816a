"""``poseguide app``: the web UI (the ``app`` extra; Gradio is imported only when it starts)."""

from __future__ import annotations

import argparse

import poseguide.app as app
from poseguide.commands.common import Commands, add_command, add_config_args
from poseguide.config import load_config


def serve(args: argparse.Namespace) -> None:
    limits = app.AppLimits.from_options(args.max_upload_mb, args.max_pixels)
    config = load_config(args.config, args.overrides)
    app.launch(config, args.host, args.port, controlnet=args.controlnet, limits=limits)


def register(commands: Commands) -> None:
    what = (
        "the web UI: a pose from a photo, a skeleton image or dragged joints, a prompt -> "
        "images (needs the app extra)"
    )
    parser = add_command(commands, "app", serve, what)
    add_config_args(parser, required=False, default="tiny")
    parser.add_argument("--controlnet", help="default model: ControlNet folder or hub id (default: "
                        "the run's stage2 or stage1 export, else an untrained one)")  # fmt: skip
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to serve on (default: this machine only)"
    )
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--max-upload-mb", type=float, help="largest upload (default 20)")
    parser.add_argument(
        "--max-pixels", type=int, help="largest image in pixels (default 4096*4096)"
    )
