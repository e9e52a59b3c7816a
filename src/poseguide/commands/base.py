"""``poseguide base train|ship``: the mini world's base, trained from scratch and shipped."""

from __future__ import annotations

import argparse
from pathlib import Path

from poseguide.base.builtin import MINI_SD, PRESET, SHIPPED, build_into_cache, ship
from poseguide.base.config import load_base_config
from poseguide.base.train import train_base
from poseguide.commands.common import Commands, add_command, add_group


def train(args: argparse.Namespace) -> None:
    if args.config == MINI_SD:  # the built-in itself: trained into the cache it is read from
        print(f"{MINI_SD}: {build_into_cache(load_base_config(PRESET, args.overrides))}")
        return
    train_base(load_base_config(args.config, args.overrides), resume=args.resume)


def ship_base(args: argparse.Namespace) -> None:
    folder = ship(Path(args.pipeline), Path(args.dest) if args.dest else SHIPPED)
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    print(f"shipped {args.pipeline} as {folder} ({size / 2**20:.1f} MiB, fp16)")


def register(commands: Commands) -> None:
    base = add_group(commands, "base", "train the mini world's base from scratch", "base_command")
    parser = add_command(base, "train", train, "train a small SD base on synthetic people")
    parser.add_argument(
        "config",
        help="base config path or preset (configs/base/NAME.yaml)"
        ", or builtin:mini-sd to build the built-in into its cache",
    )
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. unet.steps=100")
    parser.add_argument(
        "--resume",
        metavar="latest|PATH",
        help="continue from the latest checkpoint, or a checkpoint folder",
    )
    shipped = add_command(
        base, "ship", ship_base, "write a trained base as the package's fp16 copy"
    )
    shipped.add_argument("pipeline", help="the trained run's pipeline/ folder")
    shipped.add_argument("--dest", help="target folder (default: the package's assets/mini-sd)")
