"""``poseguide config show|validate``: the resolved config, or a check of it."""

from __future__ import annotations

import argparse
import logging
import sys

from poseguide.commands.common import Commands, add_command, add_config_args, add_group
from poseguide.config import dump_yaml, load_config, save_config

log = logging.getLogger("poseguide")


def show(args: argparse.Namespace) -> None:
    config = load_config(args.config, args.overrides)
    if args.save:
        save_config(config, args.save)
        log.info("wrote %s", args.save)
    sys.stdout.write(dump_yaml(config))


def validate(args: argparse.Namespace) -> None:
    load_config(args.config, args.overrides)
    print(f"{args.config}: valid")


def register(commands: Commands) -> None:
    config = add_group(commands, "config", "show or validate a config", "config_command")
    parser = add_command(config, "show", show, "print the resolved config (defaults included)")
    add_config_args(parser)
    parser.add_argument("--save", help="also write the resolved config to this YAML file")
    add_config_args(add_command(config, "validate", validate, "check a config and exit"))
