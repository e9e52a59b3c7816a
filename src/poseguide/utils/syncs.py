"""Counting host reads of tensors: the places a GPU run waits for the device.

On CUDA, torch's own sync debug mode (``torch.cuda.set_sync_debug_mode``) reports every
synchronising call; :func:`count_cuda_syncs` counts its warnings. On the CPU nothing waits, so
:func:`count_host_reads` counts what would: every ``Tensor.item``/``bool``/``float``/``int`` (the
``aten._local_scalar_dense`` op), ``tolist``, ``numpy`` and ``cpu`` call, with the code that
made it, so a test can assert how many reads a training step makes and where.
"""

from __future__ import annotations

import contextlib
import traceback
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

READ_METHODS = ("tolist", "numpy", "cpu")


def _caller() -> str:
    """``file.py:line function`` of the innermost frame outside torch's core and this module
    (torch's data loading counts as a caller: its reads are of host tensors)."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        name = frame.filename.replace("\\", "/")
        core = "/torch/" in name and "/torch/utils/data/" not in name
        if not core and Path(name).name != "syncs.py":
            return f"{frame.filename}:{frame.lineno} {frame.name}"
    return "<torch>"


class _ScalarReads(TorchDispatchMode):
    def __init__(self, seen: Counter) -> None:
        super().__init__()
        self.seen = seen

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.__name__.startswith("_local_scalar_dense"):
            self.seen[f"item {_caller()}"] += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def count_host_reads() -> Iterator[Counter]:
    """Count host reads inside the block: ``Counter({"item|tolist|numpy|cpu <caller>": n})``."""
    seen: Counter = Counter()
    originals = {name: getattr(torch.Tensor, name) for name in READ_METHODS}

    def wrap(name: str):
        def read(self: torch.Tensor, *args, **kwargs):
            seen[f"{name} {_caller()}"] += 1
            return originals[name](self, *args, **kwargs)

        return read

    try:
        for name in READ_METHODS:
            setattr(torch.Tensor, name, wrap(name))
        with _ScalarReads(seen):
            yield seen
    finally:
        for name, method in originals.items():
            setattr(torch.Tensor, name, method)


@contextlib.contextmanager
def count_cuda_syncs() -> Iterator[list[str]]:
    """The synchronising CUDA calls inside the block, from torch's sync debug mode: one
    ``"message (file.py:line)"`` each, the line being the Python code that made the call."""
    found: list[str] = []
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield found
        finally:
            torch.cuda.set_sync_debug_mode(previous)
            found += [f"{w.message} ({w.filename}:{w.lineno})" for w in caught
                      if "synchroniz" in str(w.message)]  # fmt: skip
