"""Checks that everything a command needs can be reached, run before any long work starts.

A :class:`Check` names one thing (a model, a dataset, weights) and how to reach it; running the
checks collects every failure at once, so a user fixes them in one go instead of one per run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from poseguide.config import Config
from poseguide.config.schema import SourceConfig
from poseguide.errors import UserError

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
        from poseguide.data.hub import _offline

        if _offline():
            raise FileNotFoundError(
                f"hub dataset {cfg.path} cannot be reached offline (HF_HUB_OFFLINE=1); download "
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


def evaluation_checks(config: Config, run_dir: Path, trained_later: bool = False) -> list[Check]:
    """What ``poseguide evaluate`` needs. ``trained_later``: exports of this run's stages will
    be written by the training that runs first (``reproduce``), so they are not checked."""
    from poseguide.evaluate.runner import ORIGINALS, UNTRAINED, controlnet_ref
    from poseguide.models import resolve_pretrained
    from poseguide.pose.estimator import resolve_pose_weights

    m, e = config.model, config.evaluate
    checks = [
        Check("Stable Diffusion base", m.base, lambda: resolve_pretrained(m.base, m.revision)),
        Check(
            "evaluation pose weights",
            e.estimator.weights,
            lambda: resolve_pose_weights(e.estimator.weights),
        ),
        Check(
            "CLIP model", e.clip_model, lambda: resolve_pretrained(e.clip_model, what="CLIP model")
        ),
    ]
    if config.data.eval is None:
        checks.append(Check("eval split", "data.eval", _fail("no eval split: set data.eval")))
    else:
        checks.append(source_check("eval split", config.data.eval))
    for model in e.models:
        ref = controlnet_ref(model.controlnet, run_dir)
        what = f"model {model.name!r}"
        if model.controlnet.startswith("stage:"):
            stage = model.controlnet.split(":", 1)[1]
            if trained_later:
                checks.append(Check(what, ref, None, f"written by training ({stage})"))
            elif not (Path(ref) / "config.json").is_file():
                checks.append(
                    Check(
                        what,
                        ref,
                        _fail(
                            f"the export {ref} is missing; train it "
                            f"first (poseguide train CONFIG --stage {stage})"
                        ),
                    )
                )
        elif ref not in (UNTRAINED, ORIGINALS):
            checks.append(Check(what, ref, lambda r=ref: resolve_pretrained(r, what="ControlNet")))
    if e.lpips_pretrained:
        from poseguide.evaluate.lpips_metric import BACKBONE_WEIGHTS
        from poseguide.evaluate.metrics import ensure_torch_hub_weights

        url = BACKBONE_WEIGHTS[e.lpips_net]
        checks.append(Check("LPIPS backbone", url, lambda: ensure_torch_hub_weights(url, "LPIPS")))
    return checks


def training_checks(config: Config) -> list[Check]:
    """What ``poseguide train`` needs: the base model, the data, stage inits, stage-2 weights."""
    from poseguide.models import resolve_pretrained
    from poseguide.pose.estimator import resolve_pose_weights

    m = config.model
    checks = [
        Check("Stable Diffusion base", m.base, lambda: resolve_pretrained(m.base, m.revision)),
        source_check("train split", config.data.train),
    ]
    for stage in config.train.stages:
        if stage.init not in (None, "unet", "previous"):
            checks.append(
                Check(
                    f"{stage.name} start",
                    stage.init,
                    lambda i=stage.init: resolve_pretrained(i, what="ControlNet"),
                )
            )
        if stage.loss.kind == "heatmap" and stage.loss.source == "predicted_error":
            weights = (stage.loss.estimator or config.pose.estimator).weights
            checks.append(
                Check(
                    f"{stage.name} pose weights", weights, lambda w=weights: resolve_pose_weights(w)
                )
            )
    return checks


def _fail(message: str) -> Callable[[], object]:
    def probe() -> object:
        raise ValueError(message)

    return probe
