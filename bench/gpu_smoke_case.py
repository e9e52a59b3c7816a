"""One case of ``bench/gpu_smoke.py``, in its own process: a run set up as ``poseguide train``
sets it up, then each stage trained through the training loop itself with marks between its
phases (warm-up, timed, sync-counted, FLOP-counted steps)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from train_step import cpu_sdpa_flops, rss_gib

GIB = 2**30
NO_LIMIT = 10**9  # steps: the LR schedule's length and checkpoint_every, never reached
# Host reads that are no device sync on a GPU (the data pipeline works on CPU tensors); the
# same list as tests/train/test_syncs.py.
HOST_SIDE = ("/poseguide/data/", "/torch/utils/data/")


@dataclasses.dataclass
class Case:
    """One child process: a model, a size and a batch, trained stage 1 then stage 2."""

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
    cap_gib: float | None = None
    deepspeed: bool = False
    rows: int = 0  # synthetic rows, all cached (set by the plan: one epoch covers every step)

    @property
    def total(self) -> int:
        return self.warmup + self.steps + self.sync_steps + int(self.flops)


def overrides(case: Case, args: argparse.Namespace, work: Path) -> list[str]:
    """The tiny preset's overrides for the case (everything under ``work``)."""
    from poseguide.paths import file_stem

    data = work / "data" / file_stem(case.model)  # shared by the cases of one model
    return [
        f"run.name={case.name}", f"run.output_dir={work / 'runs'}", f"run.device={args.device}",
        f"model.base={case.model}", f"data.resolution={case.size}",
        f"data.train.path={data / 'train'}", f"data.eval.path={data / 'eval'}",
        f"data.train.synthetic.n={case.rows}", f"data.cache.dir={work / 'cache'}",
        f"data.num_workers={args.workers}", f"train.batch_size={case.batch}",
        f"train.mixed_precision={args.precision}", f"train.optim.optimizer={case.optimizer}",
        f"train.gradient_checkpointing={str(case.checkpointing).lower()}",
        f"train.log_every={case.log_every}", f"train.checkpoint_every={NO_LIMIT}",
        "train.check_finite=log", "train.validation.num_samples=0",
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


class Phases:
    """Marks in one run of the training loop. Each phase starts at the start of a step (the
    loop's own ``_step``, wrapped), so the window read after a phase's last step falls inside
    that phase; the device is synchronised at the timed phase's two ends only."""

    def __init__(self, case: Case, device: torch.device) -> None:
        w, t, s = case.warmup, case.steps, case.sync_steps
        self.case, self.device, self.done, self.out = case, device, 0, {}
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

    def run(self, steps: Callable[[int], None]) -> dict:
        from poseguide.train import loop

        def wrap(real: Any) -> Any:
            def step(*args: Any, **kwargs: Any) -> Any:
                self.at(self.done)
                self.done += 1
                return real(*args, **kwargs)

            return step

        try:
            with patched(loop, "_step", wrap):
                steps(self.case.total)
            self.at(self.case.total)
        finally:
            self.phase.close()  # after an error too: the sync mode and torch.Tensor restored
        return self.out

    def start_timer(self) -> None:
        from poseguide.utils.device import synchronize

        synchronize(self.device)
        self.t0 = time.perf_counter()

    def stop_timer(self) -> None:
        from poseguide.utils.device import synchronize

        synchronize(self.device)
        self.out["s_per_step"] = (time.perf_counter() - self.t0) / self.case.steps

    def start_syncs(self) -> None:
        from poseguide.train import step
        from poseguide.utils.syncs import count_cuda_syncs, count_host_reads

        self.finite: Counter = Counter()
        enter = self.phase.enter_context
        enter(patched(step.StepWindow, "read", counting(self.finite, "window")))
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

        self.flops = FlopCounterMode(display=False, custom_mapping=cpu_sdpa_flops())
        self.phase.enter_context(self.flops)

    def stop_flops(self) -> None:
        self.phase.close()
        self.out["flops_per_step"] = self.flops.get_total_flops()


def memory(device: torch.device) -> dict:
    out = {"rss_gib": rss_gib()}
    if device.type == "cuda":
        out["alloc_gib"] = torch.cuda.max_memory_allocated(device) / GIB
        out["reserved_gib"] = torch.cuda.max_memory_reserved(device) / GIB
    return out


def measure_stage(run: Any, index: int, case: Case, global_step: int) -> dict:
    """Train stage ``index`` (from the untrained ControlNet) through every phase, then end it
    as training does; an out-of-memory error is recorded, not raised."""
    from poseguide.errors import is_out_of_memory
    from poseguide.train.loop import _run_epochs, end_stage, start_stage
    from poseguide.train.setup import make_loader, steps_per_epoch

    cfg, acc, device = run.config, run.accelerator, run.frozen.device
    stage = cfg.train.stages[index]
    out: dict[str, Any] = {"stage": stage.name, "loss": stage.loss.kind, "oom": None,
                           "global_step": global_step}  # fmt: skip
    if stage.loss.kind == "heatmap":
        out["loss"] += f"/{stage.loss.source}"
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    state = None
    try:
        state = start_stage(run, index, "unet", None, None, global_step, NO_LIMIT)
        data = make_loader(cfg, run.source, run.rows, run.cache, acc.process_index,
                           acc.num_processes)  # fmt: skip
        per_epoch = steps_per_epoch(data[1], cfg)
        out.update(Phases(case, device).run(
            lambda n: _run_epochs(run, stage, state, data, per_epoch, n)))  # fmt: skip
        out["global_step"] = state.position.global_step
    except Exception as err:
        if not is_out_of_memory(err):
            raise
        out["oom"] = str(err).strip().splitlines()[0][:200]
    out.update(memory(device))
    if state is not None:
        end_stage(run, state)
    gc.collect()
    acc.free_memory()
    return out


def child(case: Case, args: argparse.Namespace) -> dict:
    """Set the case's run up as ``poseguide train`` does, then stage 1 and stage 2."""
    from poseguide.config import load_config
    from poseguide.train.runner import _make_run

    result: dict[str, Any] = {"case": dataclasses.asdict(case), "notes": []}
    if torch.cuda.is_available() and case.cap_gib:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, case.cap_gib * GIB / total))
    note = eight_bit_note(case)
    if note:
        result["notes"].append(note)
        result["case"]["optimizer"] = case.optimizer
    t0 = time.perf_counter()
    config = load_config("tiny", overrides(case, args, Path(args.work)))
    run, _ = _make_run(config, None, [0, 1], explicit=True)
    result["setup_s"] = time.perf_counter() - t0
    stages, step = [], 0
    for index in range(len(config.train.stages)):
        stages.append(measure_stage(run, index, case, step))
        step = stages[-1]["global_step"]
    result["stages"] = stages
    run.metrics.close()
    return result
