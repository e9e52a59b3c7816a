"""The config schema: one dataclass per section, defaults in one place.

Each field's comment is its documentation; ``poseguide config show FILE`` prints the resolved
values. Cross-field checks live in ``__post_init__`` and raise :class:`ConfigError` naming the key;
checks of the whole config as loaded live in :meth:`Config.check_loaded`. Every float is finite
(the loader refuses ``.nan`` and ``.inf``).

The sections live in :mod:`~poseguide.config.schema.sections` (run, pose, data, model,
generation), :mod:`~poseguide.config.schema.training` and
:mod:`~poseguide.config.schema.evaluation`; every name is importable from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from poseguide.config.checks import (  # noqa: F401 - the checks' names the schema's users read
    MAX_SEED,
    NOT_STAGE_INITS,
    PREVIOUS_INIT,
    STAGE_REF_PREFIX,
    UNSUPPORTED_SCHEDULERS,
    UNTRAINED_INIT,
    _invalid,
    lr_scheduler_names,
)
from poseguide.config.schema.evaluation import EvalConfig, EvalModelConfig
from poseguide.config.schema.sections import (
    CacheConfig,
    CocoSelect,
    DataConfig,
    EstimatorConfig,
    GenerateConfig,
    ModelConfig,
    PoseConfig,
    RenderConfig,
    RenderStyle,
    RunConfig,
    SourceConfig,
    SynthConfig,
)
from poseguide.config.schema.training import (
    LossConfig,
    OptimConfig,
    StageConfig,
    TrainConfig,
    ValidationConfig,
)


@dataclass
class Config:
    """The whole poseguide config."""

    run: RunConfig = field(default_factory=RunConfig)
    pose: PoseConfig = field(default_factory=PoseConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)

    def check_loaded(self) -> None:
        """Checks of the config as loaded (``load`` calls this), which configs derived from it in
        code need not pass: training only ``--stage stage2`` builds a config whose first stage
        starts from the previous one, which exists on disk by then."""
        first = self.train.stages[0]
        if first.init is not None and first.init.strip() == PREVIOUS_INIT:
            raise _invalid("train.stages.0.init", f"the first stage ({first.name!r}) has no "
                           f"previous stage to start from; use '{UNTRAINED_INIT}', a ControlNet "
                           "folder or a hub id")  # fmt: skip
        names = [stage.name for stage in self.train.stages]
        for index, stage in enumerate(self.train.stages):
            text = (stage.init or "").strip()
            if text.startswith(STAGE_REF_PREFIX):
                ref = text[len(STAGE_REF_PREFIX) :]
                if ref not in names[:index]:
                    raise _invalid(f"train.stages.{index}.init", f"{text!r}: stage {ref!r} is "
                                   f"not an earlier stage of this run (earlier: "
                                   f"{names[:index] or 'none'})")  # fmt: skip
        for index, stage in enumerate(self.train.stages):
            judge = stage.loss.reward_estimator or self.pose.estimator  # what the reward uses
            if stage.loss.kind == "reward" and judge.backend != "ultralytics":
                key = (f"train.stages.{index}.loss.reward_estimator.backend"
                       if stage.loss.reward_estimator else "pose.estimator.backend")  # fmt: skip
                raise _invalid(key, f"the reward stage ({stage.name!r}) needs differentiable "
                               "keypoints, which only backend 'ultralytics' gives; got "
                               f"{judge.backend!r}")  # fmt: skip


__all__ = [
    "CacheConfig",
    "CocoSelect",
    "Config",
    "DataConfig",
    "EstimatorConfig",
    "EvalConfig",
    "EvalModelConfig",
    "GenerateConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "PoseConfig",
    "RenderConfig",
    "RenderStyle",
    "RunConfig",
    "SourceConfig",
    "StageConfig",
    "SynthConfig",
    "TrainConfig",
    "ValidationConfig",
]
