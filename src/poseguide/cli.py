"""``poseguide <command>``: parses arguments and calls the library; no logic of its own."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

log = logging.getLogger("poseguide")

# Errors meant for people: printed as one line, exit status 2, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, OSError)


def _config_show(args: argparse.Namespace) -> None:
    from poseguide.config import dump_yaml, load_config, save_config

    config = load_config(args.config, args.overrides)
    if args.save:
        save_config(config, args.save)
        log.info("wrote %s", args.save)
    sys.stdout.write(dump_yaml(config))


def _config_validate(args: argparse.Namespace) -> None:
    from poseguide.config import load_config

    load_config(args.config, args.overrides)
    print(f"{args.config}: valid")


def _pose_render(args: argparse.Namespace) -> None:
    from poseguide.pose.api import render_file

    out = render_file(args.keypoints, args.out, style=args.style, size=args.size)
    print(f"wrote {out}")


def _pose_estimate(args: argparse.Namespace) -> None:
    from poseguide.config import load_config
    from poseguide.pose.api import estimate_file

    config = load_config(args.config, args.overrides)
    summary = estimate_file(args.image, args.out, config.pose, render=args.render)
    print(summary)


def _demo(args: argparse.Namespace) -> None:
    from poseguide.config import load_config
    from poseguide.demo import run_demo

    config = load_config(args.config, args.overrides)
    run_demo(config, out_dir=args.out)


def _add(
    subparsers: argparse._SubParsersAction, name: str, func: Callable, help: str
) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help, description=help)
    parser.set_defaults(func=func)
    return parser


def _add_config_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    if required:
        parser.add_argument("config", help="YAML config path or preset name (configs/NAME.yaml)")
    else:
        parser.add_argument("--config", default=None, help="YAML config path or preset name")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. run.seed=1")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="poseguide", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    config = commands.add_parser("config", help="show or validate a config").add_subparsers(
        dest="config_command", required=True, metavar="ACTION"
    )
    show = _add(config, "show", _config_show, "print the resolved config (defaults included)")
    _add_config_args(show)
    show.add_argument("--save", help="also write the resolved config to this YAML file")
    _add_config_args(_add(config, "validate", _config_validate, "check a config and exit"))

    pose = commands.add_parser("pose", help="render and estimate poses").add_subparsers(
        dest="pose_command", required=True, metavar="ACTION"
    )
    render = _add(pose, "render", _pose_render, "draw a keypoint JSON file as a skeleton image")
    render.add_argument("keypoints", help="keypoint JSON (COCO layout, see README)")
    render.add_argument("--out", required=True, help="output PNG")
    render.add_argument(
        "--style", default="controlnet10", choices=["controlnet10", "controlnet_aux"]
    )
    render.add_argument(
        "--size", nargs=2, type=int, metavar=("W", "H"), help="canvas size (default: from the file)"
    )
    estimate = _add(pose, "estimate", _pose_estimate, "estimate the poses in a photo")
    estimate.add_argument("image", help="input image")
    estimate.add_argument("--out", required=True, help="output keypoint JSON")
    estimate.add_argument("--render", help="also draw the skeleton to this PNG")
    _add_config_args(estimate, required=False)

    demo = _add(commands, "demo", _demo, "the offline end-to-end demo (see README)")
    demo.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    _add_config_args(demo, required=False)
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
    except USER_ERRORS as err:
        if args.verbose:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
