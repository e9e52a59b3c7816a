#!/usr/bin/env python
"""Wall time of the dataset scan and the latent-cache build shared by 1, 2, ... processes.

    .venv/bin/python bench/shared_cache.py                    # tiny models, 64 rows, 1 and 2
    .venv/bin/python bench/shared_cache.py --rows 256 --size 256 --resolution 128 --procs 1,2,4

What is timed is what ``poseguide train`` does before its first step (``checked_source`` and
``build_cache`` with the launch's :class:`poseguide.utils.team.Team`), each between two barriers,
in processes started by ``torch.distributed.run`` (gloo, the CPU, one thread each). Every count of
processes builds into its own empty folder; the folders are then compared file by file (they are
byte for byte the same, whatever the count). The figures include no process start or model load.
On a 2-core machine, two processes can at best halve the time.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")


def _worker(args: argparse.Namespace) -> None:
    """One process of a launch: scan, then build, each timed between barriers."""
    import torch
    from accelerate import PartialState

    from poseguide.config.schema import CacheConfig, DataConfig, SourceConfig, SynthConfig
    from poseguide.data.cache import build_cache
    from poseguide.data.sources import open_source
    from poseguide.data.validate import scan
    from poseguide.models import load_sd_parts
    from poseguide.utils.team import team_of

    torch.set_num_threads(1)
    state = PartialState(cpu=True)
    team = team_of(state)
    synth = SynthConfig(n=args.rows, seed=0, size=[args.size, args.size])
    source = open_source(SourceConfig(kind="synthetic", path=args.data, synthetic=synth))
    cache = CacheConfig(dir=args.out, shard_size=args.shard_size, batch_size=4)
    cfg = DataConfig(resolution=args.resolution, hflip=0.5, cache=cache)
    parts = load_sd_parts("builtin:tiny-sd")
    times = {}
    state.wait_for_everyone()
    start = time.perf_counter()
    report = scan(source, "skip", progress=False, team=team)
    state.wait_for_everyone()
    times["scan_s"] = time.perf_counter() - start
    start = time.perf_counter()
    info = build_cache(source, report.valid, cfg, parts, "controlnet10", 0, False, team)
    state.wait_for_everyone()
    times["build_s"] = time.perf_counter() - start
    if team.is_main:
        print(json.dumps({"procs": team.world, **times, "folder": str(info.folder)}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(procs: int, args: argparse.Namespace, data: Path, out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs),
           "--master_port", str(_free_port()), __file__, "--worker", "--data", str(data),
           "--out", str(out), "--rows", str(args.rows), "--size", str(args.size),
           "--resolution", str(args.resolution), "--shard-size", str(args.shard_size)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(proc.stdout + proc.stderr)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("{"))
    return json.loads(line)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--size", type=int, default=128, help="synthetic image side (px)")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=8)
    parser.add_argument("--procs", default="1,2", help="process counts, comma-separated")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        from poseguide.config.schema import SynthConfig
        from poseguide.synth.people import ensure_synthetic

        data = Path(tmp) / "data"
        ensure_synthetic(data, SynthConfig(n=args.rows, seed=0, size=[args.size] * 2), False)
        results = [_launch(int(n), args, data, Path(tmp) / f"cache-{n}")
                   for n in args.procs.split(",")]  # fmt: skip
        reference = _files(Path(results[0]["folder"]))
        one = results[0]
        print(f"{args.rows} rows at {args.size} px -> {args.resolution} px, shards of "
              f"{args.shard_size}, tiny models, CPU, one thread per process")  # fmt: skip
        print("procs  scan_s  build_s  scan_ratio  build_ratio  same_bytes")
        for r in results:
            same = _files(Path(r["folder"])) == reference
            print(f"{r['procs']:>5}  {r['scan_s']:6.2f}  {r['build_s']:7.2f}  "
                  f"{one['scan_s'] / r['scan_s']:10.2f}  {one['build_s'] / r['build_s']:11.2f}  "
                  f"{same}")  # fmt: skip


if __name__ == "__main__":
    main()
