"""Training end to end on tiny models: stages, frozen parts, exports, failures, learning."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch
from helpers import metrics, write_config
from safetensors.torch import load_file

from poseguide.cli import main
from poseguide.config import load_config
from poseguide.models import load_sd_parts
from poseguide.train import checkpoint as ckpt
from poseguide.train import runner
from poseguide.train.checkpoint import load_checkpoint, resolve_checkpoint


def export_weights(root: Path, stage: str) -> dict[str, torch.Tensor]:
    return load_file(
        str(root / "runs" / "t" / "exports" / stage / "diffusion_pytorch_model.safetensors")
    )


def test_stage1_then_stage2_from_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    write_config(
        tmp_path, train={"tensorboard": True, "validation": {"every": 4, "num_samples": 2}}
    )
    frozen = {}
    real_load = runner.load_frozen

    def spy(config, device):
        loaded = real_load(config, device)
        frozen["parts"] = loaded.parts
        return loaded

    monkeypatch.setattr(runner, "load_frozen", spy)
    assert main(["train", "config.yaml"]) == 0
    assert "finished at step 12" in capsys.readouterr().out
    run = tmp_path / "runs" / "t"
    rows = metrics(tmp_path)
    assert [r["global_step"] for r in rows] == list(range(1, 13))
    assert {r["stage"] for r in rows[:8]} == {"stage1"} and {r["stage"] for r in rows[8:]} == {
        "stage2"
    }
    assert all("he_mean" in r and "neg_weight_frac" in r for r in rows[8:])
    assert all(r["loss"] == r["mse"] for r in rows[:8])  # stage 1 is the plain loss
    # Rotation keeps the newest three step checkpoints and a pointer to the latest.
    kept = sorted(p.name for p in (run / "checkpoints").glob("step-*"))
    assert kept == ["step-00000010", "step-00000011", "step-00000012"]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-00000012"
    for name in ("curves.png", "curves-stage1.png", "curves-stage2.png", "config.yaml"):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    grids = sorted(p.name for p in (run / "validation").glob("*.png"))
    assert grids == [
        "stage1-step-00000004.png",
        "stage1-step-00000008.png",
        "stage2-step-00000012.png",
    ]
    # Only the ControlNet changed: the frozen parts equal a fresh load, bit for bit.
    config = load_config("config.yaml")
    fresh = load_sd_parts(config.model.base)
    for name in ("unet", "vae", "text_encoder"):
        trained, reference = (
            getattr(frozen["parts"], name).state_dict(),
            getattr(fresh, name).state_dict(),
        )
        assert all(torch.equal(trained[k], reference[k]) for k in reference), name
    # Stage 2 started from stage 1's export and moved away from it.
    s1, s2 = export_weights(tmp_path, "stage1"), export_weights(tmp_path, "stage2")
    assert any(not torch.equal(s1[k], s2[k]) for k in s1)
    # A second `train` skips finished stages.
    assert main(["train", "config.yaml"]) == 0
    assert len(metrics(tmp_path)) == 12


def test_export_loads_in_the_diffusers_pipeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    write_config(tmp_path, train={"stages": [{"name": "stage1", "epochs": 1, "lr": 1e-3}]})
    assert main(["train", "config.yaml"]) == 0
    config = load_config("config.yaml")
    controlnet = ControlNetModel.from_pretrained(tmp_path / "runs/t/exports/stage1")
    folder = load_sd_parts(config.model.base).source
    pipe = StableDiffusionControlNetPipeline.from_pretrained(
        folder, controlnet=controlnet, safety_checker=None
    )
    pose = (
        Image.open(next((tmp_path / "data" / "train" / "poses").glob("*.png")))
        .convert("RGB")
        .resize((64, 64))
    )
    out = pipe("a person", image=pose, num_inference_steps=2, height=64, width=64,
               generator=torch.Generator().manual_seed(0), output_type="np").images  # fmt: skip
    assert out.shape == (1, 64, 64, 3) and torch.isfinite(torch.from_numpy(out)).all()


def test_stage2_alone_needs_stage1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    write_config(tmp_path)
    assert main(["train", "config.yaml", "--stage", "stage2"]) == 2
    err = capsys.readouterr().err
    assert "stage 'stage2' starts from the previous stage's export, which is missing" in err
    assert main(["train", "config.yaml", "--stage", "nope"]) == 2
    assert "unknown stage(s) ['nope']" in capsys.readouterr().err


def test_nan_loss_stops_before_the_update(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import poseguide.objectives.objective as losses

    monkeypatch.chdir(tmp_path)
    write_config(tmp_path, train={"check_finite": "every_step"})
    real, calls = losses.stage_loss, {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        terms = real(*args, **kwargs)
        if calls["n"] == 3:
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(losses, "stage_loss", poisoned)
    with pytest.raises(
        runner.TrainingError, match=r"stage 'stage1', step 3 \(global 3\): the loss is nan"
    ):
        runner.run_training(load_config("config.yaml"))
    latest = load_checkpoint(resolve_checkpoint(tmp_path / "runs/t/checkpoints", "latest"))
    assert latest.position.global_step == 2 and not latest.position.stage_done
    monkeypatch.setattr(losses, "stage_loss", real)
    result = runner.run_training(load_config("config.yaml"), resume="latest")
    assert result["global_step"] == 12


def test_full_disk_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write_config(tmp_path)
    real, calls = ckpt.save_file, {"n": 0}

    def disk_fills_up(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(ckpt, "save_file", disk_fills_up)
    with pytest.raises(
        runner.TrainingError, match=r"stage1 step 4 .*No space left.*step-00000003\) is intact"
    ):
        runner.run_training(load_config("config.yaml"))
    folder = tmp_path / "runs/t/checkpoints"
    assert (folder / "latest").read_text().strip() == "step-00000003"
    assert sorted(p.name for p in folder.iterdir()) == [
        "latest",
        "step-00000001",
        "step-00000002",
        "step-00000003",
    ]
    assert load_checkpoint(folder / "step-00000003").position.global_step == 3


def test_unfinished_run_needs_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_config(tmp_path)
    import poseguide.objectives.objective as losses

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    real = losses.stage_loss
    calls = {"n": 0}

    def once(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            boom()
        return real(*args, **kwargs)

    monkeypatch.setattr(losses, "stage_loss", once)
    with pytest.raises(KeyboardInterrupt):
        runner.run_training(load_config("config.yaml"))
    monkeypatch.setattr(losses, "stage_loss", real)
    with pytest.raises(
        runner.TrainingError, match="has an unfinished run; continue it with --resume latest"
    ):
        runner.run_training(load_config("config.yaml"))
    with pytest.raises(
        runner.TrainingError, match=r"the config changed since .*train.batch_size: 2 -> 4"
    ):
        runner.run_training(load_config("config.yaml", ["train.batch_size=4"]), resume="latest")


def test_it_learns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    stages = [{"name": "stage1", "loss": {"kind": "denoising"}, "epochs": 200, "lr": 1e-3}]
    write_config(tmp_path, train={"batch_size": 4, "checkpoint_every": 1000, "stages": stages,
                                  "optim": {"weight_decay": 0.0}},
                 data={"train": {"kind": "synthetic", "path": "data/train", "limit": 4,
                                 "synthetic": {"n": 4, "seed": 0, "size": [64, 64]}}})  # fmt: skip
    runner.run_training(load_config("config.yaml"))
    losses = [r["loss"] for r in metrics(tmp_path)]
    assert len(losses) == 200
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last <= 0.7 * first, (first, last)


def test_arms_branch_from_an_earlier_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``init: stage:NAME`` starts from that stage's export, not from the previous stage's."""
    monkeypatch.chdir(tmp_path)
    stages = [
        {"name": "stage1", "loss": {"kind": "denoising"}, "epochs": 1, "lr": 1e-3},
        {"name": "far", "loss": {"kind": "denoising"}, "epochs": 1, "lr": 0.5},
        {"name": "arm", "init": "stage:stage1", "loss": {"kind": "denoising"}, "epochs": 1,
         "lr": 1e-12},
    ]  # fmt: skip
    write_config(tmp_path, train={"stages": stages, "batch_size": 4})
    assert main(["train", "config.yaml"]) == 0
    stage1, far, arm = (export_weights(tmp_path, s) for s in ("stage1", "far", "arm"))
    moved = [k for k in stage1 if not torch.allclose(stage1[k], far[k], atol=1e-4)]
    assert moved  # the big-lr stage moved away from stage 1
    for key in stage1:  # the arm took a negligible step from stage 1's export
        torch.testing.assert_close(arm[key], stage1[key], atol=1e-6, rtol=0)
