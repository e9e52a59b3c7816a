"""Device selection that follows the hardware: never a hard-coded "cuda"."""

from __future__ import annotations

import functools
import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from poseguide.errors import InputError

log = logging.getLogger(__name__)


def resolve_device(name: str | None = "auto") -> torch.device:
    """``"auto"`` (or None) picks CUDA, then Apple MPS, then the CPU; anything else is parsed."""
    if name in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        warn_if_cuda_unusable()
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise InputError(f"unknown device {name!r}: {err}") from None


def wants_cpu(name: str | None) -> bool:
    """Whether accelerate should run on the CPU for ``run.device``.

    ``"auto"`` without CUDA counts as the CPU: accelerate only sets up several CPU processes
    (gloo) when told to use the CPU, otherwise each launched process would run everything alone.
    """
    if name in (None, "auto") and not torch.cuda.is_available():
        warn_if_cuda_unusable()
        return True
    return name == "cpu"


def _gpu_present() -> bool:
    """An NVIDIA driver or device node is on this machine."""
    return (Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidia0").exists()
            or shutil.which("nvidia-smi") is not None)  # fmt: skip


@functools.cache
def warn_if_cuda_unusable() -> str | None:
    """``run.device: auto`` falls back to the CPU: say so loudly (once) when this torch was
    built with CUDA and a GPU seems present but cannot be used (a driver older than the CUDA
    build needs, a hidden device...), with torch's own reason. Returns the reason."""
    if torch.version.cuda is None or not _gpu_present():
        return None
    try:
        torch.cuda.init()
        reason = "torch.cuda.is_available() is False"
    except Exception as err:  # torch's reason: old driver, no device visible, ...
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
    log.warning(
        "device 'auto' runs on the CPU although this machine has an NVIDIA GPU and torch was "
        "built for CUDA %s: %s. Fix the driver or install a torch build for it, or set "
        "run.device: cpu to silence this", torch.version.cuda, reason,
    )  # fmt: skip
    return reason


# The one map from config names to torch dtypes: data.cache.dtype, generate.dtype, and
# train.mixed_precision's names for the frozen parts' dtype.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
MIXED_PRECISION_DTYPES: dict[str, torch.dtype] = {
    "no": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """A dtype name of :data:`DTYPES`; ``"auto"`` = float16 on CUDA, else float32."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise InputError(f"unknown dtype {name!r}; choose auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (for timing); nothing to wait for on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def to_device(x: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> Any:
    """``x`` on ``device`` without blocking the host: a CPU tensor goes through pinned memory
    with ``non_blocking=True`` on CUDA (a plain copy from pageable memory waits for the copy to
    finish); elsewhere, or already there, a plain ``.to``."""
    if device.type == "cuda" and x.device.type == "cpu":
        if not x.is_pinned():
            x = x.pin_memory()
        x = x.to(device, non_blocking=True)
    else:
        x = x.to(device)
    return x if dtype is None else x.to(dtype)
