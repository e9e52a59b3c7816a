"""explain-loss draws the H_E that the training loss used for the same row and timestep."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import write_config
from PIL import Image
from safetensors.torch import load_file

import poseguide.objectives.objective as losses
from poseguide.cli import main
from poseguide.config import load_config
from poseguide.train.runner import run_training


def test_explain_loss_shows_the_mask_the_loss_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write_config(tmp_path, train={"batch_size": 1, "checkpoint_every": 1000})
    seen: list[dict] = []
    real = losses.stage_loss

    def record(cfg, pred, target, **kwargs):
        terms = real(cfg, pred, target, **{**kwargs, "return_debug": True})
        seen.append({"kind": cfg.kind, "h_e": terms["_debug"].get("h_e"), "loss": terms["loss"]})
        return terms

    monkeypatch.setattr(losses, "stage_loss", record)
    timesteps: list[int] = []
    import poseguide.train.step as step

    real_inputs = step.make_inputs

    def inputs_spy(*args, **kwargs):
        out = real_inputs(*args, **kwargs)
        timesteps.append(int(out.timesteps[0]))
        return out

    monkeypatch.setattr(step, "make_inputs", inputs_spy)
    run_training(load_config("config.yaml"))
    monkeypatch.setattr(losses, "stage_loss", real)
    first_stage2 = next(i for i, s in enumerate(seen) if s["kind"] == "heatmap")
    rows = [line for line in (tmp_path / "data/train/manifest.jsonl").read_text().splitlines()]
    # Stage 2's first step used stage 1's export on the first row of epoch 0's order.
    from poseguide.data.dataset import ShardedSampler
    from poseguide.train.step import epoch_key

    sampler = ShardedSampler(len(rows), seed=3)
    sampler.set_epoch(epoch_key(1, 0))
    row = next(iter(sampler))
    sample_id = f"synth-{row:05d}"
    out = tmp_path / "fig.png"
    code = main(["explain-loss", "config.yaml", "--sample", sample_id, "--timestep",
                 str(timesteps[first_stage2]), "--controlnet", "runs/t/exports/stage1",
                 "--out", str(out)])  # fmt: skip
    assert code == 0
    assert Image.open(out).size[0] > 500
    shown = load_file(str(out.with_suffix(".safetensors")))
    expected = seen[first_stage2]["h_e"][0]
    assert shown["h_e"].shape == expected.shape == (4, 8, 8)
    torch.testing.assert_close(shown["h_e"], expected.float(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(shown["weight"], 1 + 0.05 * expected.float(), rtol=1e-4, atol=1e-4)
    for key in ("decoded", "heatmaps", "h_m"):
        assert key in shown


def test_explain_loss_names_a_missing_sample(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    write_config(tmp_path)
    assert main(["explain-loss", "config.yaml", "--sample", "nope"]) == 2
    assert "sample 'nope' is not in" in capsys.readouterr().err
