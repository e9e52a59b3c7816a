"""What a user sees of a run: JSONL metrics, optional TensorBoard, loss/LR curves.

``<run>/metrics.jsonl`` gets one line per logged optimizer step (main process only)::

    {"stage": "stage2", "step": 12, "global_step": 112, "epoch": 0, "loss": 0.081,
     "mse": 0.079, "lr": 5e-07, "samples_per_s": 1.7, "he_mean": -0.4, "he_min": -3.1,
     "he_max": 3.3, "neg_weight_frac": 0.0}

A resumed run first drops the lines after its checkpoint's step, so the file always describes
one uninterrupted run. What is logged comes from the log window (:class:`StepWindow`): the steps
since the last read stay on the device and are read to the host once per log, checkpoint or
validation step, in one collective.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from poseguide.objectives.terms import derived_terms, local_terms, reduce_terms
from poseguide.paths import RunPaths
from poseguide.utils.images import figure_to_image, pyplot
from poseguide.utils.io import atomic_save_image, atomic_write_text


class MetricsLog:
    """Append-only JSONL metrics with an optional TensorBoard mirror (main process only)."""

    def __init__(self, paths: RunPaths, tensorboard: bool, enabled: bool = True) -> None:
        self.path = paths.metrics
        self.enabled = enabled
        self.writer = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(paths.tensorboard))

    def truncate_after(self, global_step: int) -> None:
        """Drop lines logged after ``global_step`` (they will be recomputed on resume); the file
        is left untouched when there is nothing to drop."""
        if not self.enabled or not self.path.is_file():
            return
        lines = [line for line in self.path.read_text().splitlines() if line.strip()]
        kept = [line for line in lines if json.loads(line)["global_step"] <= global_step]
        if len(kept) != len(lines):
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "global_step", "epoch"):
                    self.writer.add_scalar(f"{record['stage']}/{key}", value, record["global_step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _smooth(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_curves(metrics: list[dict], out: Path, stage: str | None = None) -> Path | None:
    """Loss and learning-rate curves per stage (the thesis' Fig. 4.1) as one PNG."""

    rows = [m for m in metrics if stage is None or m["stage"] == stage]
    if not rows:
        return None
    stages = list(dict.fromkeys(m["stage"] for m in rows))
    fig, axes = pyplot().subplots(1, 2, figsize=(10, 3.6))
    for name in stages:
        part = [m for m in rows if m["stage"] == name]
        steps = [m["global_step"] for m in part]
        losses = [m["loss"] for m in part]
        window = max(1, int(math.sqrt(len(losses))))
        axes[0].plot(steps, losses, alpha=0.25)
        axes[0].plot(steps, _smooth(losses, window), label=f"{name} (mean of {window})")
        axes[1].plot(steps, [m["lr"] for m in part], label=name)
    axes[0].set(title="training loss", xlabel="optimizer step", ylabel="loss")
    axes[1].set(title="learning rate", xlabel="optimizer step", ylabel="lr")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return atomic_save_image(out, figure_to_image(fig, dpi=100))


@dataclass
class WindowRead:
    """What one host read of a window of steps tells: the last step's terms (reduced over the
    processes), the first step whose loss was not finite (None: all were), a stop request."""

    terms: dict[str, float]
    first_bad: int | None
    stop: bool


def _merge(keys: list[str], local: torch.Tensor, acc: Any) -> list[float]:
    """``local`` (one value per key) gathered from every process, each key reduced as declared
    (``_first_bad``: the minimum, ``_stop``: the maximum), read to the host: one collective and
    one host sync."""

    every = acc.gather(local.to(acc.device)[None]).reshape(-1, len(keys))  # (processes, keys)
    columns = {k: every[:, j] for j, k in enumerate(keys)}
    merged = reduce_terms({k: v for k, v in columns.items() if not k.startswith("_")})
    merged["_first_bad"] = columns["_first_bad"].amin() if "_first_bad" in columns else None
    merged["_stop"] = columns["_stop"].amax() if "_stop" in columns else None
    return torch.stack([merged[k] for k in keys]).tolist()


def step_terms(micro: list[dict[str, torch.Tensor]], acc: Any) -> dict[str, float]:
    """The logged terms of one optimizer step, reduced over its batch, the micro-batches and
    the processes as its loss declares, in one collective."""
    terms = local_terms(micro)
    keys = list(terms)
    values = _merge(keys, torch.stack([terms[k] for k in keys]), acc)
    return derived_terms(dict(zip(keys, values, strict=True)))


class StepWindow:
    """The steps since the last host read: kept on the device, read once (:meth:`read`) at log,
    checkpoint and validation steps, so the steady state has no host sync in between."""

    def __init__(self) -> None:
        self.last: dict[str, torch.Tensor] = {}
        self.finite: list[torch.Tensor] = []
        self.first_step = 0  # global step of the window's first step

    def add(self, result: Any, global_step: int) -> None:
        """Keep one step's result (its ``terms`` and ``finite`` flag) on the device."""
        if not self.finite:
            self.first_step = global_step
        self.last, self.finite = result.terms, [*self.finite, result.finite]

    def read(self, trainer: Any) -> WindowRead:
        """One collective and one host read for the whole window (every process calls it)."""
        keys = [*self.last, "_first_bad", "_stop"]
        device = trainer.accelerator.device
        finite = torch.stack(self.finite).to(device)
        steps = torch.arange(len(self.finite), device=device, dtype=torch.float32)
        first_bad = torch.where(finite, float(len(self.finite)), steps).amin()
        stop = torch.full((), float(trainer.stop.requested), device=device)  # no copy
        local = torch.stack([*(self.last[k].to(device) for k in self.last), first_bad, stop])
        values = dict(zip(keys, _merge(keys, local, trainer.accelerator), strict=True))
        bad = int(values.pop("_first_bad"))
        stop_any = values.pop("_stop") > 0
        read = WindowRead(derived_terms(values),
                          self.first_step + bad if bad < len(self.finite) else None,
                          stop_any)  # fmt: skip
        self.finite = []
        return read
