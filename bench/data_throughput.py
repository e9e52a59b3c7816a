#!/usr/bin/env python
"""Samples per second of the training input path: latents read from the cache vs computed.

    .venv/bin/python bench/data_throughput.py                 # tiny and SD1.5-size VAE, 256/512 px
    .venv/bin/python bench/data_throughput.py --models tiny --sizes 64,256 --samples 48

What is timed is what the trainer does for every batch before the ControlNet runs:

* data: the DataLoader the trainer builds (``poseguide.train.setup.make_loader``: PoseDataset +
  ShardedSampler + collate, ``data.num_workers`` = 0), i.e. decode the image and pose PNGs,
  resize, tensors; with the cache also read the latent (mean, std) and the text embedding;
* inputs: ``poseguide.train.step.make_inputs`` with the trainer's per-row generators: with the
  cache ``sample_latents`` on the cached (mean, std) and the cached text embedding; on the fly
  ``encode_latent_dist`` (the VAE encoder) and ``encode_prompts`` (the text encoder) first.

Models: ``tiny`` (``builtin:tiny-sd``) and ``sd15`` (``builtin:sd15-random``: SD1.5's VAE and
text encoder architecture with random weights, built once, ~4 GB on disk). Data: synthetic people
(``poseguide.synth.people.synthesize``) at a COCO-like 640x480, resized to each size; caches are
built with ``build_cache`` in a temporary folder (its speed is printed too). On this 2-core CPU
the default run takes about 4 minutes, most of it SD1.5-size VAE encodes (the first run also
builds ``builtin:sd15-random``, ~30 s). Add ``--threads 1`` when other processes share the CPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")

import torch

from poseguide.config import Config
from poseguide.config.schema import (
    CacheConfig,
    DataConfig,
    ModelConfig,
    RunConfig,
    SourceConfig,
    TrainConfig,
)

MODELS = {"tiny": "builtin:tiny-sd", "sd15": "builtin:sd15-random"}


@dataclass
class Timing:
    """Median seconds per sample of the two parts of the input path."""

    data: float
    inputs: float

    @property
    def total(self) -> float:
        return self.data + self.inputs


def make_config(base: str, manifest: Path, size: int, cache_dir: Path, cached: bool,
                batch: int) -> Config:  # fmt: skip
    data = DataConfig(
        train=SourceConfig(kind="manifest", path=str(manifest)),
        resolution=size,
        cache=CacheConfig(enabled=cached, dir=str(cache_dir)),
    )
    return Config(
        run=RunConfig(seed=0, device="cpu"),
        data=data,
        model=ModelConfig(base=base),
        train=TrainConfig(batch_size=batch),
    )


def batches(config: Config, source: object, rows: list[int], cache: object):
    """The trainer's loader, epoch after epoch, as the loop sets it up."""
    from poseguide.train.setup import make_loader

    dataset, sampler, loader = make_loader(config, source, rows, cache, 0, 1)
    epoch = 0
    while True:
        dataset.set_epoch(epoch)
        sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def time_path(config: Config, parts: object, source: object, rows: list[int], cache: object,
              samples: int, warmup: int) -> Timing:  # fmt: skip
    """Median per-sample seconds of (loader, make_inputs) after ``warmup`` batches."""
    from poseguide.train.step import make_inputs, row_generators

    it = batches(config, source, rows, cache)
    per_batch = config.train.batch_size
    steps = max(1, -(-samples // per_batch))
    data, inputs = [], []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        batch = next(it)
        t1 = time.perf_counter()
        gens = row_generators(config.run.seed, 0, batch["index"])
        make_inputs(parts, batch, gens, torch.device("cpu"), torch.float32)
        t2 = time.perf_counter()
        if i >= warmup:
            data.append((t1 - t0) / per_batch)
            inputs.append((t2 - t1) / per_batch)
    return Timing(statistics.median(data), statistics.median(inputs))


def unused_image_cost(manifest: Path, rows: list[int], size: int) -> float:
    """Median seconds to decode and resize the picture, which the cached path does and drops."""
    import json

    from poseguide.data.checks import open_image
    from poseguide.pose.transforms import place_image, plan_resize

    lines = manifest.read_text().splitlines()
    times = []
    for row in rows:
        t0 = time.perf_counter()
        path = manifest.parent / json.loads(lines[row])["image"]
        image = open_image(path, str(row), 10**9)
        place_image(image, plan_resize(image.size, (size, size), "stretch"))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_model(name: str, args: argparse.Namespace, manifest: Path, work: Path) -> list[dict]:
    from poseguide.data.cache import build_cache, find_cache
    from poseguide.data.sources import open_source
    from poseguide.models import load_sd_parts

    parts = load_sd_parts(MODELS[name], device="cpu")
    rows = list(range(args.rows))
    slow = name != "tiny"
    out = []
    for size in args.sizes:
        cfg = make_config(MODELS[name], manifest, size, work / "cache", True, args.batch)
        source = open_source(cfg.data.train)
        t0 = time.perf_counter()
        info = build_cache(source, rows, cfg.data, parts, "controlnet10", 0, progress=False)
        build = (time.perf_counter() - t0) / len(rows)
        cache = find_cache(source, rows, cfg.data, parts)
        cached = time_path(cfg, parts, source, rows, cache, args.samples, args.warmup)
        fly_cfg = make_config(MODELS[name], manifest, size, work / "cache", False, args.batch)
        fly_n, fly_warm = (args.slow_samples, 1) if slow else (args.samples, args.warmup)
        fly = time_path(fly_cfg, parts, source, rows, None, fly_n, fly_warm)
        out.append({"model": name, "size": size, "cached": cached, "fly": fly, "build": build,
                    "unused": unused_image_cost(manifest, rows, size),
                    "mib_per_row": info.bytes / 2**20 / len(rows)})  # fmt: skip
        print(f"  {name} {size}px: cached {cached.total * 1e3:.1f} ms, on the fly "
              f"{fly.total * 1e3:.1f} ms per sample", flush=True)  # fmt: skip
    return out


def print_tables(results: list[dict], args: argparse.Namespace) -> None:
    print(f"\nInput path per sample (batch {args.batch}, CPU, {torch.get_num_threads()} threads;"
          " medians)")  # fmt: skip
    head = f"{'model':<6}{'px':>5}  {'path':<8}{'data ms':>10}{'inputs ms':>11}{'total ms':>10}"
    print(head + f"{'samples/s':>11}")
    for r in results:
        for label in ("cached", "fly"):
            t = r[label]
            name = "cache" if label == "cached" else "on-fly"
            print(f"{r['model']:<6}{r['size']:>5}  {name:<8}{t.data * 1e3:>10.1f}"
                  f"{t.inputs * 1e3:>11.1f}{t.total * 1e3:>10.1f}{1 / t.total:>11.1f}")  # fmt: skip
    print("\nCache speed-up (on-the-fly time / cached time) and cache facts")
    print(f"{'model':<6}{'px':>5}{'speed-up':>10}{'build s/row':>13}{'MiB/row':>9}"
          f"{'unused img ms':>15}{'share of cached':>17}")  # fmt: skip
    for r in results:
        ratio = r["fly"].total / r["cached"].total
        share = r["unused"] / r["cached"].total
        print(f"{r['model']:<6}{r['size']:>5}{ratio:>9.1f}x{r['build']:>13.3f}"
              f"{r['mib_per_row']:>9.3f}{r['unused'] * 1e3:>15.1f}{share:>16.0%}")  # fmt: skip
    print("\nunused img: decoding and resizing the picture, which PoseDataset does on the cached"
          " path too\nand then drops (the latents come from the cache).")  # fmt: skip


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    p.add_argument("--models", default="tiny,sd15", help="comma list of: tiny, sd15")
    p.add_argument("--sizes", type=ints, default=[256, 512], help="training sizes in px")
    p.add_argument("--rows", type=int, default=8, help="synthetic rows (all cached)")
    p.add_argument("--samples", type=int, default=32, help="timed samples per cheap path")
    p.add_argument("--slow-samples", type=int, default=3,
                   help="timed samples for SD1.5-size on-the-fly encoding (1 warm-up)")  # fmt: skip
    p.add_argument("--warmup", type=int, default=4, help="untimed batches first")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's choice, one per core). Use 1 "
                        "when other processes share the CPU: with 2 threads on 2 busy cores, "
                        "small ops run up to ~30x slower")  # fmt: skip
    p.add_argument("--batch", type=int, default=1, help="batch size")
    p.add_argument("--image-size", type=ints, default=[640, 480], help="synthetic W,H")
    args = p.parse_args()
    args.models = [m for m in args.models.split(",") if m]
    unknown = set(args.models) - set(MODELS)
    if unknown:
        p.error(f"unknown models {sorted(unknown)}; choose from {sorted(MODELS)}")
    return args


def main() -> None:
    from poseguide.synth.people import synthesize

    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="poseguide-bench-") as tmp:
        work = Path(tmp)
        manifest = synthesize(work / "data", args.rows, seed=0,
                              size=tuple(args.image_size), progress=False)  # fmt: skip
        results = []
        for name in args.models:
            results += bench_model(name, args, manifest, work)
    print_tables(results, args)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
