"""Checks that everything a command needs can be reached, run before any long work starts.

A :class:`Check` names one thing (a model, a dataset, weights) and how to reach it; running the
checks collects every failure at once, so a user fixes them in one go instead of one per run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from poseguide.config import Config
from poseguide.config.schema import SourceConfig
from poseguide.errors import UserError
from poseguide.objectives import estimator_configs
from poseguide.paths import RunPaths

# Captioned COCO-Pose's size as the thesis gives it, for time estimates when the dataset
# itself cannot be reached.
THESIS_ROWS = {
    ("limingcv/Captioned_COCOPose", "train"): 61_400,
    ("limingcv/Captioned_COCOPose", "validation"): 2_690,
}


@dataclass
class Check:
    what: str  # e.g. "Stable Diffusion base"
    target: str  # the id or path checked
    probe: Callable[[], object] | None  # raises when unreachable; None: nothing to check now
    note: str = ""  # shown when probe is None (e.g. "written by training")


@dataclass
class Result:
    check: Check
    error: str | None  # None: reachable

    @property
    def ok(self) -> bool:
        return self.error is None


def run_checks(checks: list[Check]) -> list[Result]:
    """Run each distinct check once (the same ``what`` and ``target`` count as one)."""
    results, seen = [], set()
    for check in checks:
        if (check.what, check.target) in seen:
            continue
        seen.add((check.what, check.target))
        try:
            if check.probe is not None:
                check.probe()
            results.append(Result(check, None))
        except (OSError, ValueError, UserError) as err:
            results.append(Result(check, str(err)))
    return results


def source_check(what: str, cfg: SourceConfig) -> Check:
    """A dataset source: local files exist, or the hub dataset answers (without downloading)."""

    def probe() -> None:
        if cfg.kind == "synthetic":
            return
        path = Path(cfg.path)
        if cfg.kind in ("manifest", "coco") or path.exists():
            if not path.exists():
                raise FileNotFoundError(f"{path} does not exist")
            return
        from poseguide.utils.offline import is_offline, offline_reason

        if is_offline():
            raise FileNotFoundError(
                f"hub dataset {cfg.path} cannot be reached ({offline_reason()}); download "
                f"its parquet shards (`hf download {cfg.path} --repo-type dataset --local-dir DIR`)"
                " and set the source's path to DIR"
            )
        from huggingface_hub import HfApi

        try:
            HfApi().dataset_info(cfg.path, revision=cfg.revision, timeout=10)
        except Exception as err:
            raise FileNotFoundError(
                f"hub dataset {cfg.path}: {type(err).__name__}: {err}"
            ) from None

    return Check(what, f"{cfg.kind}:{cfg.path}", probe)


def evaluation_checks(config: Config, run: RunPaths, trained_later: bool = False) -> list[Check]:
    """What ``poseguide evaluate`` needs. ``trained_later``: exports of this run's stages will
    be written by the training that runs first (``reproduce``), so they are not checked."""
    from poseguide.models import resolve_pretrained
    from poseguide.pose.weights import resolve_pose_weights

    m, e = config.model, config.evaluate
    checks = [
        Check("Stable Diffusion base", m.base, lambda: resolve_pretrained(m.base, m.revision)),
        Check("evaluation pose weights", e.estimator.weights,
              lambda: resolve_pose_weights(e.estimator.weights)),
        Check("CLIP model", e.clip_model,
              lambda: resolve_pretrained(e.clip_model, what="CLIP model")),
    ]  # fmt: skip
    if config.data.eval is None:
        checks.append(Check("eval split", "data.eval", _fail("no eval split: set data.eval")))
    else:
        checks.append(source_check("eval split", config.data.eval))
    for model in e.models:
        checks += _model_checks(model, run, trained_later)
    if e.lpips_pretrained:
        from poseguide.evaluate.lpips_metric import BACKBONE_WEIGHTS
        from poseguide.evaluate.metrics import ensure_torch_hub_weights

        url = BACKBONE_WEIGHTS[e.lpips_net]
        checks.append(Check("LPIPS backbone", url, lambda: ensure_torch_hub_weights(url, "LPIPS")))
    return checks


def _model_checks(model: Any, run: RunPaths, trained_later: bool) -> list[Check]:
    """One evaluation model: its export (``stage:NAME``) or its folder or hub id."""
    from poseguide.models import ControlNetRef, resolve_pretrained

    ref = ControlNetRef.parse(model.controlnet)
    where, what = ref.location(run.exports), f"model {model.name!r}"
    if ref.kind == "stage":
        if trained_later:
            return [Check(what, where, None, f"written by training ({ref.name})")]
        if not (Path(where) / "config.json").is_file():
            fix = f"train it first (poseguide train CONFIG --stage {ref.name})"
            return [Check(what, where, _fail(f"the export {where} is missing; {fix}"))]
        return []
    if ref.kind == "pretrained":
        return [Check(what, where, lambda: resolve_pretrained(where, what="ControlNet"))]
    return []


def training_checks(config: Config) -> list[Check]:
    """What ``poseguide train`` needs: the base model, the data, stage inits, each stage's pose
    weights (every stage's, before the first step)."""
    from poseguide.models import ControlNetRef, resolve_pretrained
    from poseguide.pose.weights import resolve_pose_weights

    m = config.model
    checks = [
        Check("Stable Diffusion base", m.base, lambda: resolve_pretrained(m.base, m.revision)),
        source_check("train split", config.data.train),
    ]
    for stage in config.train.stages:
        ref = ControlNetRef.parse(stage.init)
        if ref.kind == "pretrained":
            probe = partial(resolve_pretrained, ref.name, what="ControlNet")
            checks.append(Check(f"{stage.name} start", ref.name, probe))
        for role, estimator in estimator_configs(config, stage).items():
            probe = partial(resolve_pose_weights, estimator.weights)
            what = "pose weights" if role == "mask" else f"{role} pose weights"
            checks.append(Check(f"{stage.name} {what}", estimator.weights, probe))
    return checks


def _fail(message: str) -> Callable[[], object]:
    def probe() -> object:
        raise ValueError(message)

    return probe
