"""Checks that everything a command needs can be reached, run before any long work starts.

A :class:`Check` names one thing (a model, a dataset, weights) and how to reach it; running the
checks collects every failure at once, so a user fixes them in one go instead of one per run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from poseguide.config import Config
from poseguide.config.schema import SourceConfig
from poseguide.errors import UserError
from poseguide.models import ControlNetRef, resolve_pretrained
from poseguide.objectives import estimator_configs
from poseguide.pose.weights import resolve_pose_weights
from poseguide.utils.offline import is_offline, offline_reason

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
        if cfg.kind in ("manifest", "coco", "humansd") or path.exists():
            if not path.exists():
                raise FileNotFoundError(f"{path} does not exist")
            return

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


def training_checks(config: Config) -> list[Check]:
    """What ``poseguide train`` needs: the base model, the data, stage inits, each stage's pose
    weights (every stage's, before the first step)."""

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


def failing(message: str) -> Callable[[], object]:
    def probe() -> object:
        raise ValueError(message)

    return probe
