"""How the per-sample loss terms are reduced and logged: over a batch, over gradient-accumulation
micro-batches and over processes (the loop's one reduction rule), and the terms as the user reads
them (the reward's ratios)."""

from __future__ import annotations

import torch

from poseguide.objectives.reward import REWARD_RATIOS

# How each logged term is reduced over a batch, over gradient-accumulation micro-batches and
# over processes: the extremes of H_E are extremes, everything else is a mean (every sample, and
# every process's batch, counts the same).
MEAN, MIN, MAX = "mean", "min", "max"
TERM_REDUCTIONS: dict[str, str] = {"he_min": MIN, "he_max": MAX}


def derived_terms(values: dict[str, float]) -> dict[str, float | None]:
    """Logged terms as the user reads them: each ratio term of
    :data:`~poseguide.objectives.reward.REWARD_RATIOS` (a mean over the rewarded samples) from
    its two reduced parts, which are dropped; None when nothing was rewarded."""
    out: dict[str, float | None] = dict(values)
    for name, (part, weight) in REWARD_RATIOS.items():
        if part in values and weight in values:
            out[name] = values[part] / values[weight] if values[weight] > 0 else None
            out.pop(part)
    out.pop("reward_people", None)
    return out


def term_reduction(name: str) -> str:
    """How the term ``name`` is reduced: ``"mean"`` (default), ``"min"`` or ``"max"``."""
    return TERM_REDUCTIONS.get(name, MEAN)


def reduce_terms(values: dict[str, torch.Tensor], dim: int = 0) -> dict[str, torch.Tensor]:
    """Reduce each term's tensor along ``dim`` as :func:`term_reduction` says (on its device).

    Per-sample (B,) terms -> scalars; or terms stacked over micro-batches or processes."""
    ops = {MEAN: torch.mean, MIN: torch.amin, MAX: torch.amax}
    return {k: ops[term_reduction(k)](v.detach().float(), dim=dim) for k, v in values.items()}


def local_terms(micro: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One step's terms on this process: each reduced over its batch and the micro-batches as
    its loss declares (mean, min or max); 0-dim tensors, still on the device."""
    keys = [k for k, v in micro[0].items() if isinstance(v, torch.Tensor) and not k.startswith("_")]
    per_micro = [reduce_terms({k: terms[k] for k in keys}) for terms in micro]
    return reduce_terms({k: torch.stack([m[k] for m in per_micro]) for k in keys})
