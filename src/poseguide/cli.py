"""``poseguide <command>``: parses arguments and calls the library; no logic of its own."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from poseguide.config.schema import RenderConfig, SynthConfig
from poseguide.errors import OOM_HINT
from poseguide.pose.inputs import POSE_KINDS
from poseguide.pose.render import RENDER_STYLES

log = logging.getLogger("poseguide")


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


def _data_inspect(args: argparse.Namespace) -> None:
    from poseguide.data.inspect import inspect_source

    print(inspect_source(_cli_source(args), n=args.rows))


def _data_preview(args: argparse.Namespace) -> None:
    from poseguide.data.inspect import preview_grid

    print(f"wrote {preview_grid(_cli_source(args), args.out, n=args.rows)}")


def _cli_source(args: argparse.Namespace):  # a Source
    from poseguide.data.sources import source_from_cli

    return source_from_cli(
        args.source, kind=args.kind, split=args.split, images_dir=args.images_dir,
        captions=args.captions, limit=args.limit,
    )  # fmt: skip


def _data_synth(args: argparse.Namespace) -> None:
    from poseguide.synth.people import synthesize

    manifest = synthesize(
        args.out, args.n, args.seed, size=tuple(args.size), two_people=args.two_people
    )
    print(f"wrote {args.n} samples; manifest: {manifest}")


def _cache_build(args: argparse.Namespace) -> None:
    from poseguide.config import load_config
    from poseguide.data.api import build_train_cache

    info = build_train_cache(load_config(args.config, args.overrides))
    print(
        f"cache: {info['rows']} rows ({info['skipped']} skipped), {info['captions']} captions, "
        f"{info['mib']} MiB on disk in {info['folder']} ({info['built_shards']} shards built now)"
    )


def _train(args: argparse.Namespace) -> None:
    from poseguide.config import load_config
    from poseguide.train.runner import ResumeRules, run_training

    rules = ResumeRules(args.allow_config_change, args.accept_data_change)
    result = run_training(load_config(args.config, args.overrides), args.stage, args.resume, rules)
    if os.environ.get("RANK", "0") != "0":  # one summary per launch, not per process
        return
    print(f"finished at step {result['global_step']}; run folder {result['run_dir']}")
    for stage, folder in result["exports"].items():
        print(f"  {stage}: {folder}")


def _base_train(args: argparse.Namespace) -> None:
    from poseguide.base.builtin import MINI_SD, PRESET, build_into_cache
    from poseguide.base.config import load_base_config
    from poseguide.base.train import train_base

    if args.config == MINI_SD:  # the built-in itself: trained into the cache it is read from
        print(f"{MINI_SD}: {build_into_cache(load_base_config(PRESET, args.overrides))}")
        return
    train_base(load_base_config(args.config, args.overrides), resume=args.resume)


def _base_ship(args: argparse.Namespace) -> None:
    from poseguide.base.builtin import SHIPPED, ship

    folder = ship(Path(args.pipeline), Path(args.dest) if args.dest else SHIPPED)
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    print(f"shipped {args.pipeline} as {folder} ({size / 2**20:.1f} MiB, fp16)")


def _explain_loss(args: argparse.Namespace) -> None:
    from poseguide.config import load_config
    from poseguide.train.explain import explain_loss

    config = load_config(args.config, args.overrides)
    summary = explain_loss(
        config, args.sample, args.timestep, args.out, args.stage, args.controlnet
    )
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v}" for k, v in summary.items()))


def _generate(args: argparse.Namespace) -> None:
    from poseguide.config import load_config
    from poseguide.generate import run_generate

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


def _evaluate(args: argparse.Namespace) -> None:
    from poseguide.config import load_config
    from poseguide.evaluate.runner import run_evaluation

    metrics = run_evaluation(load_config(args.config, args.overrides), limit=args.limit)
    if not metrics:  # not the main process
        return
    print(f"{'model':<12} {'CLIP':>8} {'LPIPS':>8} {'OKS':>8}")
    for name, m in metrics["models"].items():
        values = [m[k]["mean"] for k in ("clip", "lpips", "oks")]
        print(f"{name:<12} " + " ".join("     n/a" if v is None else f"{v:8.3f}" for v in values))


def _report(args: argparse.Namespace) -> None:
    from poseguide.evaluate.report import make_report

    paths = make_report(args.run_dir, samples=args.samples, n=args.n, select=args.select)
    print(f"wrote {paths['md']} and {paths['html']}")


def _reproduce(args: argparse.Namespace) -> None:
    from poseguide.config import load_config
    from poseguide.reproduce import dry_run, run_reproduce

    config = load_config(args.config, args.overrides)
    if args.dry_run:
        dry_run(config, args.probe_model, args.probe_steps)
    else:
        run_reproduce(config)


def _demo(args: argparse.Namespace) -> None:
    from poseguide.config import load_config
    from poseguide.demo import run_demo

    run_demo(load_config(args.config, args.overrides))


def _app(args: argparse.Namespace) -> None:
    from poseguide.app import AppLimits, launch
    from poseguide.config import load_config

    limits = AppLimits.from_options(args.max_upload_mb, args.max_pixels)
    config = load_config(args.config, args.overrides)
    launch(config, args.host, args.port, controlnet=args.controlnet, limits=limits)


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
    groups = (_config_commands, _pose_commands, _data_commands, _train_commands,
              _generate_command, _evaluate_commands, _reproduce_command, _app_command)  # fmt: skip
    for add in groups:
        add(commands)
    return parser


def _config_commands(commands: argparse._SubParsersAction) -> None:
    config = commands.add_parser("config", help="show or validate a config").add_subparsers(
        dest="config_command", required=True, metavar="ACTION"
    )
    show = _add(config, "show", _config_show, "print the resolved config (defaults included)")
    _add_config_args(show)
    show.add_argument("--save", help="also write the resolved config to this YAML file")
    _add_config_args(_add(config, "validate", _config_validate, "check a config and exit"))


def _pose_commands(commands: argparse._SubParsersAction) -> None:
    pose = commands.add_parser("pose", help="render and estimate poses").add_subparsers(
        dest="pose_command", required=True, metavar="ACTION"
    )
    render = _add(pose, "render", _pose_render, "draw a keypoint JSON file as a skeleton image")
    render.add_argument("keypoints", help="keypoint JSON (COCO layout, see README)")
    render.add_argument("--out", required=True, help="output PNG")
    render.add_argument("--style", default=RenderConfig.style, choices=list(RENDER_STYLES))
    render.add_argument(
        "--size", nargs=2, type=int, metavar=("W", "H"), help="canvas size (default: from the file)"
    )
    estimate = _add(pose, "estimate", _pose_estimate, "estimate the poses in a photo")
    estimate.add_argument("image", help="input image")
    estimate.add_argument("--out", required=True, help="output keypoint JSON")
    estimate.add_argument("--render", help="also draw the skeleton to this PNG")
    _add_config_args(estimate, required=False)


def _data_commands(commands: argparse._SubParsersAction) -> None:
    data = commands.add_parser("data", help="inspect, preview and synthesise datasets")
    data = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    for name, func, text in (
        ("inspect", _data_inspect, "counts, columns and a few rows of a dataset source"),
        ("preview", _data_preview, "a PNG grid of image | pose | caption for a few rows"),
    ):
        sub = _add(data, name, func, text)
        sub.add_argument("source", help="manifest .jsonl, COCO person_keypoints .json, parquet "
                         "folder, or hub dataset id")  # fmt: skip
        sub.add_argument("--kind", choices=["hub", "manifest", "coco"], help="override the guess")
        sub.add_argument("--split", default="train", help="hub split (default: train)")
        sub.add_argument("--images-dir", help="COCO: the images folder")
        sub.add_argument("--captions", help="COCO: captions json or JSONL {image_id, caption}")
        sub.add_argument("--limit", type=int, help="only the first N rows")
        sub.add_argument("--rows", type=int, default=6 if name == "preview" else 3)
        if name == "preview":
            sub.add_argument("--out", required=True, help="output PNG")
    synth = _add(data, "synth", _data_synth, "write N synthetic people as a manifest dataset")
    synth.add_argument("--n", type=int, required=True, help="number of samples")
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument("--seed", type=int, default=SynthConfig.seed)
    synth.add_argument("--size", type=int, nargs=2, default=list(SynthConfig.size),
                       metavar=("W", "H"))  # fmt: skip
    synth.add_argument("--two-people", type=float, default=SynthConfig.two_people,
                       help="fraction with two people")  # fmt: skip
    cache = commands.add_parser("cache", help="the latent and text-embedding cache")
    cache = cache.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    _add_config_args(_add(cache, "build", _cache_build, "scan the training rows and cache them"))


def _train_commands(commands: argparse._SubParsersAction) -> None:
    train = _add(commands, "train", _train, "train the config's stages (stage 1, stage 2, ...)")
    _add_config_args(train)
    train.add_argument(
        "--stage", action="append", metavar="NAME",
        help="run only this stage (repeatable); default: all unfinished stages",
    )  # fmt: skip
    train.add_argument(
        "--resume", metavar="latest|PATH",
        help="continue from the latest checkpoint of the run, or from a checkpoint folder",
    )  # fmt: skip
    train.add_argument(
        "--allow-config-change", action="store_true",
        help="with --resume: let a stage's lr, max_steps or epochs, or train.mixed_precision, "
        "differ from the checkpoint's config (after a divergence, for example)",
    )  # fmt: skip
    train.add_argument(
        "--accept-data-change", action="store_true",
        help="with --resume: continue although the training rows changed since the checkpoint",
    )  # fmt: skip
    base = commands.add_parser("base", help="train the mini world's base from scratch")
    base = base.add_subparsers(dest="base_command", required=True, metavar="ACTION")
    base_train = _add(base, "train", _base_train, "train a small SD base on synthetic people")
    base_train.add_argument(
        "config",
        help="base config path or preset (configs/base/NAME.yaml)"
        ", or builtin:mini-sd to build the built-in into its cache",
    )
    base_train.add_argument("overrides", nargs="*", help="dotted overrides, e.g. unet.steps=100")
    base_train.add_argument(
        "--resume",
        metavar="latest|PATH",
        help="continue from the latest checkpoint, or a checkpoint folder",
    )
    ship = _add(base, "ship", _base_ship, "write a trained base as the package's fp16 copy")
    ship.add_argument("pipeline", help="the trained run's pipeline/ folder")
    ship.add_argument("--dest", help="target folder (default: the package's assets/mini-sd)")
    explain = _add(commands, "explain-loss", _explain_loss,
                   "what a stage's loss weighs (Fig. 4.2) or rewards for one sample")  # fmt: skip
    _add_config_args(explain)
    explain.add_argument("--sample", required=True, help="row id of a training sample")
    explain.add_argument("--timestep", type=int, default=500, help="diffusion timestep")
    explain.add_argument("--stage", help="stage name (default: the first heatmap or reward stage)")
    explain.add_argument("--controlnet", help="ControlNet folder or id (default: the run's)")
    explain.add_argument("--out", default="explain_loss.png", help="output PNG")


def _generate_command(commands: argparse._SubParsersAction) -> None:
    gen = _add(commands, "generate", _generate, "generate images from a prompt and a pose")
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
    _add_config_args(gen, required=False)


def _evaluate_commands(commands: argparse._SubParsersAction) -> None:
    evaluate = _add(commands, "evaluate", _evaluate,
                    "generate and score every configured model on the eval split")  # fmt: skip
    _add_config_args(evaluate)
    evaluate.add_argument("--limit", type=int, help="only the first N eval rows")
    report = _add(commands, "report", _report, "write report.md and report.html of an evaluation")
    report.add_argument("run_dir", help="the run folder (holding eval/metrics.json)")
    report.add_argument("--samples", nargs="+", metavar="ID", help="eval rows for the image grid")
    report.add_argument("--n", type=int, default=4, help="rows in the image grid (default 4)")
    report.add_argument("--select", default="spread", choices=["spread", "first", "even"],
                        help="how grid rows are chosen without --samples (default: spread, the "
                        "rows where the models' OKS differ most)")  # fmt: skip


def _reproduce_command(commands: argparse._SubParsersAction) -> None:
    what = "the thesis end to end: train every stage, evaluate, report (resumable)"
    repro = _add(commands, "reproduce", _reproduce, what)
    repro.add_argument("--config", default="thesis", help="config path or preset (default: thesis)")
    repro.add_argument("overrides", nargs="*", help="dotted overrides, e.g. run.name=mine")
    plan = "check that everything can be reached and print the timed plan"
    repro.add_argument("--dry-run", action="store_true", help=plan)
    repro.add_argument("--probe-model", help="model for the timing probe (default: the base "
                       "model, or builtin:sd15-random when it cannot be reached)")  # fmt: skip
    repro.add_argument("--probe-steps", type=int, default=2, help="timed steps per stage")
    demo = _add(commands, "demo", _demo, "the offline end-to-end demo (see README)")
    demo.add_argument(
        "--config", default="mini", help="config path or preset (default: mini, the mini world)"
    )
    demo.add_argument("overrides", nargs="*", help="dotted overrides, e.g. run.seed=1")


def _app_command(commands: argparse._SubParsersAction) -> None:
    app = _add(commands, "app", _app, "the web UI: a pose from a photo, a skeleton image or "
               "dragged joints, a prompt -> images (needs the app extra)")  # fmt: skip
    app.add_argument("--config", default="tiny", help="config path or preset (default: tiny)")
    app.add_argument("--controlnet", help="default model: ControlNet folder or hub id (default: "
                     "the run's stage2 or stage1 export, else an untrained one)")  # fmt: skip
    app.add_argument("--host", default="127.0.0.1",
                     help="address to serve on (default 127.0.0.1: this machine only)")  # fmt: skip
    app.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    app.add_argument("--max-upload-mb", type=float, help="largest upload (default 20)")
    app.add_argument("--max-pixels", type=int, help="largest image in pixels (default 4096*4096)")
    app.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.resolution=512")


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
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _fail(err: Exception, verbose: bool) -> int:
    """One line for what the user can fix (:func:`poseguide.errors.classify`); otherwise the
    traceback, after a hint for an out-of-memory error."""
    from poseguide.errors import Interrupted, UserError, classify

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
