"""Every path of a run folder, derived once from the config; and where built models are kept.

A run folder ``run.output_dir / run.name`` holds::

    config.yaml                the resolved config of the run
    metrics.jsonl              training metrics, one line per logged step
    captions.json              how many training captions were cut to the text encoder's limit
    reward_targets.json        a reward stage's targets: rows with keypoints, with pseudo ones
    skipped_during_training.json  rows that failed to load after the scan (on_bad_row=skip)
    curves.png, curves-<stage>.png
    tensorboard/               with train.tensorboard=true
    checkpoints/step-XXXXXXXX/, checkpoints/latest
    exports/<stage>/           each stage's ControlNet (diffusers save_pretrained)
    validation/                validation grids
    pose_demo/                 the demo's pose toolkit figures
    eval/                      the evaluation (EvalPaths)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from poseguide.config import Config


def cache_root() -> Path:
    """Where poseguide keeps built models: $POSEGUIDE_CACHE or ~/.cache/poseguide."""
    return Path(os.environ.get("POSEGUIDE_CACHE", Path.home() / ".cache" / "poseguide"))


def file_stem(name: str) -> str:
    """The file name (without extension) a row id is stored under: unsafe characters -> _."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


@dataclass(frozen=True)
class EvalPaths:
    """The evaluation's files (``<run>/eval/``, see ``docs/evaluation-format.md``)."""

    root: Path

    @property
    def samples(self) -> Path:
        return self.root / "samples.jsonl"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    def samples_part(self, rank: int) -> Path:
        """One process's rows before they are merged into ``samples.jsonl``."""
        return self.root / f"samples-{rank}.jsonl"

    def pseudo_ground_truth(self, rank: int) -> Path:
        return self.root / f"pseudo_ground_truth-{rank}.json"

    def image(self, model: str, row_id: str) -> Path:
        return self.root / "images" / model / f"{file_stem(row_id)}.png"

    def invalid(self, model: str, row_id: str) -> Path:
        """Beside an image that came out NaN, Inf or black: why (one word)."""
        return self.root / "images" / model / f"{file_stem(row_id)}.invalid"

    def pose(self, row_id: str) -> Path:
        return self.root / "poses" / f"{file_stem(row_id)}.png"

    def original(self, row_id: str) -> Path:
        return self.root / "originals" / f"{file_stem(row_id)}.png"

    def coco_ground_truth(self, model: str) -> Path:
        """The COCO-format ground truth that ``model``'s COCO AP and CAP scored."""
        return self.root / "coco" / model / "ground_truth.json"

    def coco_results(self, model: str) -> Path:
        """``model``'s detections as a COCO results file (``COCO.loadRes`` reads it)."""
        return self.root / "coco" / model / "results.json"

    @property
    def untrained(self) -> Path:
        """The untrained ControlNet evaluated as model ``unet``, built once per run."""
        return self.root / "models" / "untrained"


@dataclass(frozen=True)
class RunPaths:
    """Every path of one run folder."""

    root: Path

    @classmethod
    def of(cls, config: Config) -> RunPaths:
        return cls(Path(config.run.output_dir) / config.run.name)

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def captions(self) -> Path:
        return self.root / "captions.json"

    @property
    def reward_targets(self) -> Path:
        return self.root / "reward_targets.json"

    @property
    def skipped_during_training(self) -> Path:
        """Rows that passed the scan but failed to load later (data.on_bad_row=skip)."""
        return self.root / "skipped_during_training.json"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    def curves(self, stage: str | None = None) -> Path:
        return self.root / (f"curves-{stage}.png" if stage else "curves.png")

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def exports(self) -> Path:
        return self.root / "exports"

    def export(self, stage: str) -> Path:
        return self.exports / stage

    @property
    def validation(self) -> Path:
        return self.root / "validation"

    @property
    def pose_demo(self) -> Path:
        return self.root / "pose_demo"

    @property
    def eval(self) -> EvalPaths:
        return EvalPaths(self.root / "eval")
