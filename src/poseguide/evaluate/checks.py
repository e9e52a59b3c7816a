"""What ``poseguide evaluate`` needs, checked before any generation starts: the base, the
evaluation's pose weights and CLIP model, the eval split, every model's export or folder, and the
LPIPS backbone (:mod:`poseguide.preflight`'s checks, run by its :func:`run_checks`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from poseguide.config import Config
from poseguide.evaluate.lpips_metric import BACKBONE_WEIGHTS
from poseguide.evaluate.metrics import ensure_torch_hub_weights
from poseguide.models import ControlNetRef, resolve_pretrained
from poseguide.paths import RunPaths
from poseguide.pose.weights import resolve_pose_weights
from poseguide.preflight import Check, failing, source_check


def evaluation_checks(config: Config, run: RunPaths, trained_later: bool = False) -> list[Check]:
    """What ``poseguide evaluate`` needs. ``trained_later``: exports of this run's stages will
    be written by the training that runs first (``reproduce``), so they are not checked."""

    m, e = config.model, config.evaluate
    checks = [
        Check("Stable Diffusion base", m.base, lambda: resolve_pretrained(m.base, m.revision)),
        Check("evaluation pose weights", e.estimator.weights,
              lambda: resolve_pose_weights(e.estimator.weights)),
        Check("CLIP model", e.clip_model,
              lambda: resolve_pretrained(e.clip_model, what="CLIP model")),
    ]  # fmt: skip
    if config.data.eval is None:
        checks.append(Check("eval split", "data.eval", failing("no eval split: set data.eval")))
    else:
        checks.append(source_check("eval split", config.data.eval))
    for model in e.models:
        checks += _model_checks(model, run, trained_later)
    if e.lpips_pretrained:
        url = BACKBONE_WEIGHTS[e.lpips_net]
        checks.append(Check("LPIPS backbone", url, lambda: ensure_torch_hub_weights(url, "LPIPS")))
    return checks


def _model_checks(model: Any, run: RunPaths, trained_later: bool) -> list[Check]:
    """One evaluation model: its export (``stage:NAME``) or its folder or hub id."""

    ref = ControlNetRef.parse(model.controlnet)
    where, what = ref.location(run.exports), f"model {model.name!r}"
    if ref.kind == "stage":
        if trained_later:
            return [Check(what, where, None, f"written by training ({ref.name})")]
        if not (Path(where) / "config.json").is_file():
            fix = f"train it first (poseguide train CONFIG --stage {ref.name})"
            return [Check(what, where, failing(f"the export {where} is missing; {fix}"))]
        return []
    if ref.kind == "pretrained":
        return [Check(what, where, lambda: resolve_pretrained(where, what="ControlNet"))]
    return []
