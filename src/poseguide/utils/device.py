"""Device selection that follows the hardware: never a hard-coded "cuda"."""

from __future__ import annotations

import torch


def resolve_device(name: str | None = "auto") -> torch.device:
    """``"auto"`` (or None) picks CUDA, then Apple MPS, then the CPU; anything else is parsed."""
    if name in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"unknown device {name!r}: {err}") from None


def wants_cpu(name: str | None) -> bool:
    """Whether accelerate should run on the CPU for ``run.device``.

    ``"auto"`` without CUDA counts as the CPU: accelerate only sets up several CPU processes
    (gloo) when told to use the CPU, otherwise each launched process would run everything alone.
    """
    return name == "cpu" or (name in (None, "auto") and not torch.cuda.is_available())
