"""``poseguide data inspect|preview|synth`` and ``poseguide cache build``: datasets and their
latent cache."""

from __future__ import annotations

import argparse

from poseguide.commands.common import Commands, add_command, add_config_args, add_group
from poseguide.config import load_config
from poseguide.config.schema import SynthConfig
from poseguide.data.api import build_train_cache
from poseguide.data.inspect import inspect_source, preview_grid
from poseguide.data.record import Source
from poseguide.data.sources import source_from_cli
from poseguide.synth.people import synthesize


def _source(args: argparse.Namespace) -> Source:
    return source_from_cli(
        args.source, kind=args.kind, split=args.split, images_dir=args.images_dir,
        captions=args.captions, limit=args.limit,
    )  # fmt: skip


def inspect(args: argparse.Namespace) -> None:
    print(inspect_source(_source(args), n=args.rows))


def preview(args: argparse.Namespace) -> None:
    print(f"wrote {preview_grid(_source(args), args.out, n=args.rows)}")


def synth(args: argparse.Namespace) -> None:
    size, n = tuple(args.size), args.n
    manifest = synthesize(args.out, n, args.seed, size=size, two_people=args.two_people)
    print(f"wrote {n} samples; manifest: {manifest}")


def cache_build(args: argparse.Namespace) -> None:
    info = build_train_cache(load_config(args.config, args.overrides))
    print(
        f"cache: {info['rows']} rows ({info['skipped']} skipped), {info['captions']} captions, "
        f"{info['mib']} MiB on disk in {info['folder']} ({info['built_shards']} shards built now)"
    )


def register(commands: Commands) -> None:
    data = add_group(commands, "data", "inspect, preview and synthesise datasets", "data_command")
    for name, func, text in (
        ("inspect", inspect, "counts, columns and a few rows of a dataset source"),
        ("preview", preview, "a PNG grid of image | pose | caption for a few rows"),
    ):
        sub = add_command(data, name, func, text)
        sub.add_argument("source", help="manifest .jsonl, COCO person_keypoints .json, HumanSD "
                         "mapping*.json, parquet folder, or hub dataset id")  # fmt: skip
        sub.add_argument(
            "--kind", choices=["hub", "manifest", "coco", "humansd"], help="override the guess"
        )
        sub.add_argument("--split", default="train", help="hub split (default: train)")
        sub.add_argument("--images-dir", help="COCO: the images folder; HumanSD: the base folder")
        sub.add_argument("--captions", help="COCO: captions json or JSONL {image_id, caption}")
        sub.add_argument("--limit", type=int, help="only the first N rows")
        sub.add_argument("--rows", type=int, default=6 if name == "preview" else 3)
        if name == "preview":
            sub.add_argument("--out", required=True, help="output PNG")
    people = add_command(data, "synth", synth, "write N synthetic people as a manifest dataset")
    people.add_argument("--n", type=int, required=True, help="number of samples")
    people.add_argument("--out", required=True, help="output folder")
    people.add_argument("--seed", type=int, default=SynthConfig.seed)
    people.add_argument("--size", type=int, nargs=2, default=list(SynthConfig.size),
                        metavar=("W", "H"))  # fmt: skip
    people.add_argument("--two-people", type=float, default=SynthConfig.two_people,
                        help="fraction with two people")  # fmt: skip
    cache = add_group(commands, "cache", "the latent and text-embedding cache", "cache_command")
    add_config_args(
        add_command(cache, "build", cache_build, "scan the training rows and cache them")
    )
