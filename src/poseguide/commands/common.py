"""What every command module shares: adding a command with its handler, and the config
arguments (a YAML path or preset, then dotted overrides)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

Commands = argparse._SubParsersAction


def add_command(
    commands: Commands, name: str, func: Callable, help: str
) -> argparse.ArgumentParser:
    """A sub-command ``name`` whose parsed arguments go to ``func``."""
    parser = commands.add_parser(name, help=help, description=help)
    parser.set_defaults(func=func)
    return parser


def add_group(commands: Commands, name: str, help: str, dest: str) -> Commands:
    """A command with actions of its own (``poseguide pose render``)."""
    group = commands.add_parser(name, help=help, description=help)
    return group.add_subparsers(dest=dest, required=True, metavar="ACTION")


def add_config_args(parser: argparse.ArgumentParser, required: bool = True,
                    default: str | None = None) -> None:  # fmt: skip
    """``config`` (positional) or ``--config`` (with ``default``), then dotted overrides."""
    if required:
        parser.add_argument("config", help="YAML config path or preset name (configs/NAME.yaml)")
    else:
        what = "YAML config path or preset name" + (f" (default: {default})" if default else "")
        parser.add_argument("--config", default=default, help=what)
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. run.seed=1")
