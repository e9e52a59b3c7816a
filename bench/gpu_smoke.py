#!/usr/bin/env python
"""GPU smoke test: both training stages on one GPU, timed, counted and capped, in one script.

    bash bench/gpu_smoke.sh                  # one H100/H200, no network: ~5 min (estimate)
    bash bench/gpu_smoke.sh --cpu            # tiny preset only, 64 px, ~30 s (the test runs it)
    bash bench/gpu_smoke.sh --json out.json  # also keep every figure as JSON

Each case runs in its own process (peak memories and memory caps do not mix) that sets a run
up exactly as ``poseguide train`` does (``poseguide.train.runner._make_run`` on the tiny preset,
``configs/tiny.yaml``, with overrides) and then trains each stage through the training loop
itself (``poseguide.train.loop.start_stage`` and ``_run_epochs``: DataLoader, the one
``optimizer_step``, the ``StepWindow`` read at log steps, metrics, ``end_stage``). Per stage
(stage 1: denoising loss; stage 2: heatmap loss with ``predicted_error`` masks) it prints:

* s/step and samples/s over the timed steps (the device synchronised around them only);
* model FLOPs per sample of one step (``torch.utils.flop_counter.FlopCounterMode``: matmuls,
  convolutions, attention; stage 2 includes the mask's VAE decode/encode and YOLO-pose) and MFU
  against the card's peak dense bf16 TFLOP/s (H100 SXM / H200: 989; unknown card: n/a unless
  ``--peak-tflops``);
* peak memory allocated and reserved (reset per stage);
* host syncs per steady-state step: CUDA's sync debug mode (``count_cuda_syncs``) and the host
  reads by caller (``count_host_reads``; on the CPU the reads themselves, the data pipeline's
  host-tensor reads left out), and the finiteness reads (``train.check_finite=log``: the loss is
  checked on the device every step and read with the window at log steps).

GPU cases: the tiny preset (64 px, batch 4); ``builtin:sd15-random`` (SD1.5's architecture,
random weights, built offline) at 512 px, batch 8; the same capped at 12 GiB
(``torch.cuda.set_per_process_memory_fraction``) with gradient checkpointing and 8-bit AdamW
(bitsandbytes; plain AdamW with a note when it is missing) at batch 1 and 8, stage 1 then stage
2 in one process (an OOM there is a printed result); DeepSpeed ZeRO-2 through ``accelerate
launch --num_processes 1`` when deepspeed imports. Stage 2 starts from the untrained ControlNet
(the same network as stage 1's export: nothing is exported). Targets are printed next to the
figures with PASS/FAIL words; the script exits 0 whatever they say.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from gpu_smoke_case import GIB, Case, child
from train_step import MODELS, RESULT, log

REPO = Path(__file__).resolve().parents[1]
# Dense bf16 tensor-core TFLOP/s from NVIDIA's data sheets (the sparse figures halved); the
# first name found in torch.cuda.get_device_name() wins, so specific names come first.
PEAK_BF16_TFLOPS = (
    ("H200 NVL", 835.0), ("H200", 989.0), ("GH200", 989.0), ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0), ("H100", 989.0), ("A100", 312.0), ("L40S", 362.0),
)  # fmt: skip
TARGETS = {"cap_b1_gib": 11.0, "mfu": 0.35, "stage2_ratio": 1.9}


def plan(args: argparse.Namespace, deepspeed: bool) -> list[Case]:
    """The cases to run: ``--cpu``: the tiny preset alone; else all (``--only`` picks some)."""
    b, big, px = args.batch, args.sd15, args.size
    capped = {"size": px, "warmup": 1, "steps": 2, "flops": False, "checkpointing": True,
              "optimizer": "adamw8bit", "cap_gib": args.cap_gib}  # fmt: skip
    cases = [
        Case("tiny", MODELS["tiny"], 64, 4, warmup=10, steps=20, sync_steps=20, log_every=10),
        Case(f"sd15-b{b}", big, px, b, warmup=5, steps=10, sync_steps=10, log_every=5),
        Case("cap12-b1", big, batch=1, **capped),
        Case(f"cap12-b{b}", big, batch=b, **capped),
    ]
    if deepspeed:
        cases.append(Case(f"zero2-b{b}", big, px, b, warmup=5, steps=5, sync_steps=5,
                          flops=False, deepspeed=True))  # fmt: skip
    if args.cpu:
        cases = [Case("tiny", MODELS["tiny"], 64, 4, warmup=2, steps=4, sync_steps=4, log_every=2)]
    for case in cases:  # one epoch covers every step; the cases of a model share the data
        case.rows = max(c.batch * c.total for c in cases if c.model == case.model)
    return cases


def deepspeed_note() -> str | None:
    """None when deepspeed imports, else why not."""
    try:
        import deepspeed  # noqa: F401
    except Exception as err:  # ImportError, or a broken install failing in its own way
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return None


# --- the parent: run the cases, print the figures and the targets ------------------------------


def child_command(case: Case, args: argparse.Namespace) -> list[str]:
    argv = [str(Path(__file__).resolve()), *sys.argv[1:], "--work", args.work, "--child", case.name]
    if not case.deepspeed:
        return [sys.executable, *argv]
    ds = REPO / "configs" / "accelerate" / "deepspeed_zero2.yaml"
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ds),
            "--num_processes", "1", *argv]  # fmt: skip


def run_case(case: Case, args: argparse.Namespace) -> dict:
    """The case's child process; its failure (exit status, time-out) is a result too."""
    logfile = Path(args.work) / f"{case.name}.log"
    t0 = time.perf_counter()
    with logfile.open("w") as err:  # its own session: a time-out ends accelerate's workers too
        proc = subprocess.Popen(child_command(case, args), stdout=subprocess.PIPE, stderr=err,
                                text=True, start_new_session=True)  # fmt: skip
        try:
            stdout, _ = proc.communicate(timeout=args.case_timeout)
            failure = f"failed (exit {proc.returncode})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, failure = proc.communicate()[0], f"timed out after {args.case_timeout} s"
    lines = [ln for ln in stdout.splitlines() if ln.startswith(RESULT)]
    result = json.loads(lines[-1][len(RESULT) :]) if lines and proc.returncode == 0 else None
    if result is None:
        text = logfile.read_text(errors="replace").splitlines()
        tail = [ln for ln in text if ln.strip() and "%|" not in ln][-25:]  # no progress bars
        result = {"case": dataclasses.asdict(case), "stages": [], "notes": [],
                  "failure": failure, "log_tail": tail}  # fmt: skip
    result["wall_s"] = time.perf_counter() - t0
    return result


def peak_tflops(args: argparse.Namespace) -> tuple[str, float | None]:
    if not torch.cuda.is_available() or args.device == "cpu":
        return "cpu", args.peak_tflops
    name = torch.cuda.get_device_name(0)
    table = next((v for key, v in PEAK_BF16_TFLOPS if key in name), None)
    return name, args.peak_tflops or table


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


def derived(stage: dict, case: dict, peak: float | None) -> dict:
    """samples/s, FLOPs per sample, MFU and syncs per step of one stage's figures."""
    s, flops = stage.get("s_per_step"), stage.get("flops_per_step")
    out = {"samples_s": case["batch"] / s if s else None,
           "gflop_sample": flops / case["batch"] / 1e9 if flops else None,
           "mfu": flops / s / (peak * 1e12) if flops and s and peak else None}  # fmt: skip
    n = stage.get("sync_steps")
    syncs = stage.get("syncs") if stage.get("syncs") is not None else stage.get("device_reads")
    out["syncs_step"] = syncs / n if n else None
    return out


HEADER = (f"{'stage':<8}{'loss':<26}{'s/step':>9}{'samples/s':>10}{'GFLOP/sample':>13}"
          f"{'MFU':>7}{'alloc GiB':>10}{'resv GiB':>9}{'syncs/step':>11}{'finite reads':>13}"
          f"{'rss GiB':>8}  oom")  # fmt: skip


def print_case(result: dict, peak: float | None) -> None:
    c = result["case"]
    what = [c["model"], f"{c['size']} px", f"batch {c['batch']}", c["optimizer"],
            f"log_every {c['log_every']}"]  # fmt: skip
    what += ["gradient checkpointing"] * c["checkpointing"] + ["DeepSpeed ZeRO-2"] * c["deepspeed"]
    what += [f"capped at {c['cap_gib']:g} GiB"] if c["cap_gib"] else []
    setup = f", set-up {result['setup_s']:.0f} s" if "setup_s" in result else ""
    print(f"\n== {c['name']}: {', '.join(what)} (wall {result['wall_s']:.0f} s{setup})")
    for note in result["notes"]:
        print(f"   note: {note}")
    if result.get("failure"):
        print(f"   {result['failure']}; the end of its log:")
        print("\n".join(f"   | {line}" for line in result["log_tail"]))
        return
    print(HEADER)
    for st in result["stages"]:
        d = derived(st, c, peak)
        finite = (f"{st['window_reads'] + st['every_step_reads']}/{st['sync_steps']}"
                  if st.get("sync_steps") else "n/a")  # fmt: skip
        print(f"{st['stage']:<8}{st['loss']:<26}{fmt(st.get('s_per_step'), '.4f'):>9}"
              f"{fmt(d['samples_s'], '.2f'):>10}{fmt(d['gflop_sample'], '.1f'):>13}"
              f"{fmt(d['mfu'] and 100 * d['mfu'], '.1f'):>7}"
              f"{fmt(st.get('alloc_gib'), '.2f'):>10}{fmt(st.get('reserved_gib'), '.2f'):>9}"
              f"{fmt(d['syncs_step'], '.3f'):>11}{finite:>13}{st['rss_gib']:>8.2f}  "
              f"{'OOM: ' + st['oom'] if st['oom'] else 'no'}")  # fmt: skip
    for st in result["stages"]:
        for read in st.get("top_reads", []):
            print(f"   {st['stage']} host read of a device value: {read}")
        for sync in st.get("top_syncs", []):
            print(f"   {st['stage']} CUDA sync at: {sync}")


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def cap_target(results: list[dict]) -> str:
    r = next((r for r in results if r["case"]["cap_gib"] and r["case"]["batch"] == 1), None)
    what = f"capped batch 1 peak allocated <= {TARGETS['cap_b1_gib']:g} GiB in both stages:"
    if r is None or not r["stages"]:
        return f"{what} n/a ({'not run' if r is None else r['failure']})"
    if "alloc_gib" not in r["stages"][0]:
        return f"{what} n/a (not on a CUDA device: nothing was capped)"
    peaks = [(s["stage"], s.get("alloc_gib"), s["oom"]) for s in r["stages"]]
    ok = all(a is not None and a <= TARGETS["cap_b1_gib"] and not oom for _, a, oom in peaks)
    shown = ", ".join(f"{n} {fmt(a, '.2f')} GiB{' (OOM)' if oom else ''}" for n, a, oom in peaks)
    return f"{what} {shown} -> {verdict(ok)}"


def main_targets(results: list[dict], peak: float | None) -> list[str]:
    """The uncapped SD1.5 case: stage-1 MFU and the stage-2 / stage-1 step ratio."""
    r = next((r for r in results if r["case"]["name"].startswith("sd15-")), None)
    if r is None:
        return ["SD1.5 MFU and stage-2 / stage-1 targets: n/a (no uncapped SD1.5 case ran)"]
    stages = {s["stage"]: s for s in r["stages"]}
    s1, s2 = stages.get("stage1", {}), stages.get("stage2", {})
    batch = r["case"]["batch"]
    mfu = derived(s1, r["case"], peak)["mfu"] if s1 else None
    t1, t2 = s1.get("s_per_step"), s2.get("s_per_step")
    ratio = t2 / t1 if t1 and t2 else None
    mfu_ok = None if mfu is None else mfu >= TARGETS["mfu"]
    ratio_ok = None if ratio is None else ratio <= TARGETS["stage2_ratio"]
    return [
        f"batch {batch} stage-1 MFU >= {100 * TARGETS['mfu']:.0f} %: "
        f"{'n/a' if mfu is None else f'{100 * mfu:.1f} %'} -> {verdict(mfu_ok)}",
        f"batch {batch} stage-2 step <= {TARGETS['stage2_ratio']}x stage 1: "
        f"{'n/a' if ratio is None else f'{ratio:.2f}x'} -> {verdict(ratio_ok)}",
    ]


def sync_targets(results: list[dict]) -> list[str]:
    lines = []
    for r in results:
        for s in r["stages"]:
            per_step = derived(s, r["case"], None)["syncs_step"]
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


def print_targets(results: list[dict], peak: float | None) -> None:
    print("\nTargets (printed, never enforced: the exit status stays 0)")
    for line in [cap_target(results), *main_targets(results, peak), *sync_targets(results)]:
        print(f"  {line}")
    for r in results:
        if r["case"]["cap_gib"] and r["stages"] and "alloc_gib" in r["stages"][0]:
            print(f"  {r['case']['name']}: " + ", ".join(
                f"{s['stage']} peak allocated {fmt(s.get('alloc_gib'), '.2f')} GiB, "
                f"{'OOM' if s['oom'] else 'no OOM'}" for s in r["stages"]))  # fmt: skip


def versions() -> str:
    from importlib import metadata

    names = ("torch", "diffusers", "transformers", "accelerate", "ultralytics", "bitsandbytes",
             "deepspeed")  # fmt: skip
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} -")
    return ", ".join(found)


def print_header(args: argparse.Namespace, name: str, peak: float | None, ds: str | None) -> None:
    print(f"poseguide GPU smoke: {name}; Python {sys.version.split()[0]}; {versions()}")
    if torch.cuda.is_available() and not args.cpu:
        total = torch.cuda.get_device_properties(0).total_memory / GIB
        print(f"{total:.1f} GiB; CUDA {torch.version.cuda}; bf16 matmul measured here "
              f"{matmul_tflops():.0f} TFLOP/s")  # fmt: skip
        torch.cuda.empty_cache()
    where = "--peak-tflops" if args.peak_tflops else "the card table"
    print(f"MFU against {fmt(peak, '.0f')} dense bf16 TFLOP/s ({where})" if peak else
          "MFU: n/a (no peak known for this device; pass --peak-tflops)")  # fmt: skip
    if not args.cpu and ds:
        print(f"DeepSpeed case skipped: deepspeed does not import ({ds})")
    print(
        f"precision {args.precision}; syncs/step: CUDA sync debug mode on a GPU, host reads "
        "of device values on the CPU; finite reads: finiteness reads / steps counted"
    )


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu", action="store_true", help="the tiny preset only, on the CPU")
    p.add_argument("--batch", type=int, default=8, help="the SD1.5 cases' batch (default 8)")
    p.add_argument("--sd15", default=MODELS["sd15"], help="the SD1.5 cases' model.base")
    p.add_argument("--size", type=int, default=512, help="the SD1.5 cases' resolution in px")
    p.add_argument("--cap-gib", type=float, default=12.0, help="the capped cases' GPU memory")
    p.add_argument("--peak-tflops", type=float, help="the card's dense bf16 peak, for MFU")
    p.add_argument("--precision", choices=["no", "bf16", "fp16"],
                   help="train.mixed_precision (default: bf16 on a GPU, no on a CPU)")  # fmt: skip
    p.add_argument("--workers", type=int, help="data.num_workers (default: 4 as in the thesis "
                   "preset; 0 with --cpu)")  # fmt: skip
    p.add_argument("--threads", type=int, help="torch intra-op threads (default with --cpu: 1; "
                   "two threads on two busy cores run small ops many times slower)")  # fmt: skip
    p.add_argument("--only", help="comma list of case names (tiny, sd15-b8, cap12-b1, ...)")
    p.add_argument("--work", help="folder for data, cache, runs and logs (default: a new "
                   "temporary folder, removed at the end)")  # fmt: skip
    p.add_argument("--json", help="also write every figure to this JSON file")
    p.add_argument("--case-timeout", type=int, default=300, help="seconds per case")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.device = "cpu" if args.cpu else "auto"
    args.precision = args.precision or ("no" if args.cpu else "bf16")
    args.threads = args.threads or (1 if args.cpu else None)
    args.workers = (0 if args.cpu else 4) if args.workers is None else args.workers
    return args


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        case = next(c for c in plan(args, deepspeed=True) if c.name == args.child)
        result = child(case, args)
        if int(os.environ.get("RANK", "0")) == 0:
            print(RESULT + json.dumps(result), flush=True)
        return
    start = time.perf_counter()
    ds = None if args.cpu else deepspeed_note()
    cases = [c for c in plan(args, deepspeed=ds is None)
             if not args.only or c.name in args.only.split(",")]  # fmt: skip
    with contextlib.ExitStack() as stack:
        if args.work is None:
            args.work = stack.enter_context(tempfile.TemporaryDirectory(prefix="gpu-smoke-"))
        Path(args.work).mkdir(parents=True, exist_ok=True)
        name, peak = peak_tflops(args)
        print_header(args, name, peak, ds)
        results = []
        for case in cases:
            log(f"[{case.name}] running ({len(results) + 1}/{len(cases)})")
            results.append(run_case(case, args))
            print_case(results[-1], peak)
        print_targets(results, peak)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "peak_tflops": peak,
                                               "results": results}, indent=2))  # fmt: skip
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)
    main()
