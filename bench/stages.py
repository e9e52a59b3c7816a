#!/usr/bin/env python
"""Stage 1 then stage 2 in one process vs each stage run alone: peak memory and step time.

    .venv/bin/python bench/stages.py                               # SD1.5 architecture @ 256 px
    .venv/bin/python bench/stages.py --model tiny --size 64 --steps 20
    .venv/bin/python bench/stages.py --device cuda --precision bf16 --size 512 --steps 20

Three child processes run ``poseguide.train.runner.run_training`` (what ``poseguide train``
runs: frozen parts, data, cache, each stage's ControlNet, optimizer, checkpoints, export) on
synthetic rows: stage 1 alone, stage 2 (HumanSD's predicted_error mask) alone, and stage 1 then
stage 2. For each stage it records the peak resident memory while the stage ran (VmHWM, reset at
the stage's start through /proc/self/clear_refs; on CUDA also max_memory_allocated) and the
median seconds per step after the first. Targets (issue 12): the sequence's peak within 5 % of
the larger of the two stages alone, and its stage 2 as fast as stage 2 alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import MODELS, RESULT, log  # bench/train_step.py
from train_step import make_config as bench_config

SCENARIOS = {"stage1": ["stage1"], "stage2": ["stage2"], "both": ["stage1", "stage2"]}


def vm_hwm_gib() -> float:
    """Peak resident memory since the last reset (Linux /proc/self/status VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20  # KiB
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def reset_peak(device: torch.device) -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def stage_configs(names: list[str]) -> list[Any]:
    from poseguide.config.schema import LossConfig, StageConfig

    loss = {"stage1": LossConfig(kind="denoising"),
            "stage2": LossConfig(kind="heatmap", source="predicted_error")}  # fmt: skip
    # Each stage starts from the UNet: stage 2 alone then matches stage 2 after stage 1.
    return [StageConfig(name=n, loss=loss[n], lr=1e-5, init="unet", epochs=10**6)
            for n in names]  # fmt: skip


def child(scenario: str, args: argparse.Namespace) -> dict:
    """One scenario in this process: per stage, its peak memory and step times."""
    from poseguide.config.schema import ValidationConfig
    from poseguide.train import loop, runner
    from poseguide.utils.device import synchronize

    out: dict[str, Any] = {"scenario": scenario, "stages": {}}
    with tempfile.TemporaryDirectory(prefix="poseguide-stages-") as tmp:
        config = bench_config(Path(tmp), MODELS[args.model], args.size, args)
        stages = [dataclasses.replace(s, max_steps=args.steps)
                  for s in stage_configs(SCENARIOS[scenario])]  # fmt: skip
        train = dataclasses.replace(
            config.train,
            stages=stages,
            checkpoint_every=10**6,
            validation=ValidationConfig(every=0, num_samples=0),
        )
        config = dataclasses.replace(config, train=train)
        real_stage, real_step = loop.train_stage, loop._step
        current: dict[str, Any] = {}

        def timed_step(run: Any, stage: Any, *a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            result = real_step(run, stage, *a, **kw)
            synchronize(run.frozen.device)
            current["times"].append(time.perf_counter() - t0)
            return result

        def measured_stage(run: Any, index: int, *a: Any, **kw: Any) -> Any:
            device, name = run.frozen.device, run.config.train.stages[index].name
            out.setdefault("before_stages_gib", vm_hwm_gib())
            reset_peak(device)
            current.clear()
            current["times"] = []
            t0 = time.perf_counter()
            result = real_stage(run, index, *a, **kw)
            record = {"wall_s": time.perf_counter() - t0, "peak_gib": vm_hwm_gib(),
                      "times": current["times"]}  # fmt: skip
            if device.type == "cuda":
                record["cuda_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            out["stages"][name] = record
            log(f"[{scenario}] {name}: peak {record['peak_gib']:.2f} GiB, steps "
                + ", ".join(f"{t:.2f}" for t in record["times"]))  # fmt: skip
            return result

        loop.train_stage, loop._step = measured_stage, timed_step
        runner.train_stage = measured_stage  # the runner's own reference
        try:
            runner.run_training(config)
        finally:
            loop.train_stage = runner.train_stage = real_stage
            loop._step = real_step
    return out


def run_child(scenario: str) -> dict:
    here = str(Path(__file__).resolve())
    cmd = [sys.executable, here, *sys.argv[1:], "--child", scenario]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith(RESULT)]
    if done.returncode or not lines:
        raise SystemExit(f"the {scenario} run failed (exit {done.returncode})")
    return json.loads(lines[-1][len(RESULT) :])


def steady(times: list[float]) -> float:
    return statistics.median(times[1:] or times)


def report(results: dict[str, dict], args: argparse.Namespace) -> None:
    dev = args.device + (f", {torch.get_num_threads()} threads" if args.device == "cpu" else "")
    print(f"\n{args.model} @ {args.size} px, batch {args.batch}, precision {args.precision}, "
          f"{dev}; {args.steps} steps per stage (median after the first)")  # fmt: skip
    print(f"{'run':<8}{'stage':<8}{'peak GiB':>10}{'s/step':>9}{'wall s':>9}")
    for scenario, r in results.items():
        for name, s in r["stages"].items():
            cuda = f"  (CUDA {s['cuda_peak_gib']:.2f} GiB)" if "cuda_peak_gib" in s else ""
            print(f"{scenario:<8}{name:<8}{s['peak_gib']:>10.2f}{steady(s['times']):>9.3f}"
                  f"{s['wall_s']:>9.1f}{cuda}")  # fmt: skip
    alone = max(results["stage1"]["stages"]["stage1"]["peak_gib"],
                results["stage2"]["stages"]["stage2"]["peak_gib"])  # fmt: skip
    both = max(s["peak_gib"] for s in results["both"]["stages"].values())
    speed = (steady(results["both"]["stages"]["stage2"]["times"])
             / steady(results["stage2"]["stages"]["stage2"]["times"]))  # fmt: skip
    first = (steady(results["both"]["stages"]["stage1"]["times"])
             / steady(results["stage1"]["stages"]["stage1"]["times"]))  # fmt: skip
    print(f"\npeak, stage 1 then 2 / larger stage alone: {both / alone:.3f} "
          f"({both:.2f} / {alone:.2f} GiB; target <= 1.05)")  # fmt: skip
    print(f"stage-2 step after stage 1 / stage 2 alone: {speed:.3f} (target ~1.00; stage 1 "
          f"in the sequence / alone: {first:.3f}, the noise level)")  # fmt: skip


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="sd15", choices=sorted(MODELS))
    p.add_argument("--size", type=int, default=256, help="training size in px")
    p.add_argument("--steps", type=int, default=4, help="optimizer steps per stage")
    p.add_argument("--rows", type=int, default=4, help="synthetic rows (all cached)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--device", default="cpu", help="run.device: cpu, cuda, auto, ...")
    p.add_argument("--precision", default="no", choices=["no", "bf16", "fp16"])
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--json", help="also write the results to this JSON file")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(RESULT + json.dumps(child(args.child, args)), flush=True)
        return
    results = {}
    for scenario in SCENARIOS:
        log(f"running {scenario}")
        results[scenario] = run_child(scenario)
    report(results, args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
