"""``poseguide <command>``: parses arguments and calls the library; no logic of its own.

Each command is a module of :mod:`poseguide.commands` that owns its arguments and its handler;
this module builds the parser from that registry, runs the handler, and turns a user error into
one line (everything else keeps its traceback).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import torch.distributed as dist

from poseguide.commands import COMMANDS
from poseguide.errors import OOM_HINT, Interrupted, UserError, classify

log = logging.getLogger("poseguide")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="poseguide", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(commands)
    return parser


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse; ``key=value`` words anywhere on the line are config overrides."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    stray = [word for word in extra if word.startswith("-") or "=" not in word]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        return _fail(err, args.verbose)
    _end_process_group()
    return 0


def _end_process_group() -> None:
    """After a command launched in several processes (accelerate launch, torchrun): destroy the
    process group before the interpreter exits (else gloo/NCCL may abort at exit)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _fail(err: Exception, verbose: bool) -> int:
    """One line for what the user can fix (:func:`poseguide.errors.classify`); otherwise the
    traceback, after a hint for an out-of-memory error."""
    kind = classify(err)
    if kind == "oom":
        log.error("%s", OOM_HINT)
        raise err
    if kind != "user" or verbose:
        raise err
    prefix = "" if isinstance(err, Interrupted) else "error: "
    print(f"{prefix}{err}", file=sys.stderr)
    return err.exit_status if isinstance(err, UserError) else 2


if __name__ == "__main__":
    sys.exit(main())
