"""`poseguide reproduce --dry-run` offline: every unreachable item named, a timed plan printed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from poseguide.cli import main
from poseguide.config import load_config
from poseguide.reproduce import Probe, plan


def test_dry_run_offline_reports_what_is_unreachable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    code = main(["reproduce", "--dry-run", "--probe-model", "builtin:tiny-sd", "--probe-steps", "1",
                 "data.resolution=64", "generate.steps=2", "train.mixed_precision=no"])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    unreachable = re.findall(r"\[UNREACHABLE\] ([^:]+): (\S+)", out)
    assert ("Stable Diffusion base", "stable-diffusion-v1-5/stable-diffusion-v1-5") in unreachable
    assert ("train split", "hub:limingcv/Captioned_COCOPose") in unreachable
    assert ("eval split", "hub:limingcv/Captioned_COCOPose") in unreachable
    assert ("model 'baseline'", "lllyasviel/sd-controlnet-openpose") in unreachable
    assert ("CLIP model", "openai/clip-vit-large-patch14") in unreachable
    assert ("evaluation pose weights", "yolov8x-pose.pt") in unreachable
    assert len(unreachable) == len(set(unreachable))  # each item once
    # Every failure says how to fix it; this run's exports are written by training, not missing.
    assert out.count("hf download") >= 4 and "pass the folder instead of the id" in out
    assert "model 'stage1': runs/thesis/exports/stage1 (written by training (stage1))" in out
    # The plan: one line per stage and the evaluation, with counts from the thesis' dataset size.
    assert re.search(r"train stage1 \(denoising\)\s+245,600 steps\s+[\d.]+s\s+\d", out)
    assert re.search(r"train stage2 \(heatmap\)\s+122,800 steps", out)
    assert re.search(r"evaluate \(generation\)\s+8,070 images", out)
    assert "item(s) unreachable: fix them before `poseguide reproduce`" in out


def test_plan_arithmetic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the plan synthesises the tiny preset's data (runs/data/...)
    config = load_config("tiny", ["train.batch_size=2", "train.grad_accum=2"])
    measured = Probe("m", "cpu", {"stage1": 0.5, "stage2": 2.0}, 3.0)
    rows = {r["step"]: r for r in plan(config, measured)}
    # 32 synthetic rows / (2 x 2) = 8 steps an epoch; stage1 8 epochs, stage2 2 epochs.
    assert rows["train stage1 (denoising)"]["count"] == 64
    assert rows["train stage1 (denoising)"]["total"] == pytest.approx(32.0)
    assert rows["train stage2 (heatmap)"]["total"] == pytest.approx(16 * 2.0)
    assert rows["evaluate (generation)"]["count"] == 8 * 4  # 8 eval rows x 4 models


def test_the_probe_times_the_step_training_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dry-run's timing calls training's own optimizer step on a state built by training's
    own start_stage, with the config's optimizer, gradient checkpointing and autocast."""
    import poseguide.reproduce as reproduce
    import poseguide.train.step as step
    from poseguide.reproduce import probe

    monkeypatch.chdir(tmp_path)
    calls: list[tuple[str, bool, str]] = []
    real_step = step.optimizer_step

    def spy_step(trainer, stage, state, batches, key):
        checkpointing = state.model.is_gradient_checkpointing
        calls.append((stage.name, checkpointing, type(state.optimizer.optimizer).__name__))
        return real_step(trainer, stage, state, batches, key)

    monkeypatch.setattr(reproduce, "optimizer_step", spy_step)  # the step the probe calls
    overrides = ["data.resolution=64", "generate.steps=2", "train.gradient_checkpointing=true",
                 "train.batch_size=1"]  # fmt: skip
    measured = probe(load_config("tiny", overrides), "builtin:tiny-sd", steps=2, warmup=1)
    assert calls == [("stage1", True, "AdamW")] * 3 + [("stage2", True, "AdamW")] * 3
    assert set(measured.step_seconds) == {"stage1", "stage2"}


def test_a_reward_stage_is_timed_rewarded_and_not_then_weighed_by_its_share(monkeypatch) -> None:
    """The plan's reward-stage step: the step with every sample rewarded and with none, weighed
    by the share of timesteps <= reward_timestep_max (201 of 1000 by default)."""
    from types import SimpleNamespace

    import poseguide.reproduce as reproduce
    from poseguide.config.schema import LossConfig, StageConfig

    stage = StageConfig(name="stage3", loss=LossConfig(kind="reward"))
    scheduler = SimpleNamespace(config=SimpleNamespace(num_train_timesteps=1000))
    config = SimpleNamespace(train=SimpleNamespace(stages=[stage]))
    parts = SimpleNamespace(scheduler=scheduler)
    trainer = SimpleNamespace(config=config, frozen=SimpleNamespace(parts=parts))
    timed = []

    def fake(trainer, index, batch, steps, warmup, stage=None):
        timed.append(stage.loss)
        return 10.0 if stage.loss.reward_weight else 2.0

    monkeypatch.setattr(reproduce, "_time_stage", fake)
    seconds = reproduce._stage_seconds(trainer, 0, {}, 2, 1)
    assert seconds == pytest.approx(0.201 * 10.0 + 0.799 * 2.0)
    kinds = [(loss.reward_timestep_max, loss.reward_weight) for loss in timed]
    assert kinds == [(999, 1.0), (200, 0.0)]  # the default reward_weight, then none
