"""The reward stage in the training loop: gradients reach the ControlNet only, the CLI trains,
exports and evaluates it, and a SIGKILL during it resumes bitwise."""

from __future__ import annotations

import json
import random
import signal
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers import metrics, run_cli, start_cli, wait_for_step, write_config
from safetensors.torch import load_file

from poseguide.cli import main
from poseguide.config import load_config

# On tiny random models no anchor is confident: keep every anchor (conf 0) and reward every
# timestep, so that the whole path runs and carries gradients.
REWARD = {"kind": "reward", "reward_timestep_max": 999,
          "reward_estimator": {"weights": "yolo11n-pose.pt", "conf": 0.0, "imgsz": 64}}  # fmt: skip
STAGES = [
    {"name": "stage1", "loss": {"kind": "denoising"}, "epochs": 1, "lr": 1e-3},
    {"name": "stage3", "loss": REWARD, "epochs": 1, "lr": 1e-3},
]


def reward_config(root: Path, **train: object) -> Path:
    return write_config(root, train={"stages": STAGES, **train},
                        evaluate={"models": [{"name": "stage1", "controlnet": "stage:stage1"},
                                             {"name": "stage3", "controlnet": "stage:stage3"}],
                                  "limit": 2, "bootstrap": 20})  # fmt: skip


def export(root: Path, stage: str) -> dict[str, torch.Tensor]:
    return load_file(str(root / "runs/t/exports" / stage / "diffusion_pytorch_model.safetensors"))


def _grads(config, weight: float) -> tuple[dict, list, object]:
    """One reward-stage batch through the training step's own code, backward: the ControlNet's
    gradients, every frozen module's parameters, and the trainer."""
    from poseguide.data.api import checked_source
    from poseguide.data.dataset import PoseDataset, collate
    from poseguide.models.controlnet import untrained_controlnet
    from poseguide.train.setup import make_trainer
    from poseguide.train.step import loss_terms

    stage = config.train.stages[1]
    stage = replace(stage, loss=replace(stage.loss, reward_weight=weight))
    trainer = make_trainer(config)
    source, report = checked_source(config, progress=False)
    data = PoseDataset(source, report.valid, config.data, config.pose.render.style, 3)
    batch = collate([data[0], data[1]])
    controlnet = untrained_controlnet(trainer.frozen.parts, seed=0).train()
    terms = loss_terms(trainer, controlnet, batch, stage, key=1, timestep=50)
    terms["loss"].mean().backward()
    parts = trainer.frozen.parts
    frozen = [*parts.unet.parameters(), *parts.vae.parameters(),
              *parts.text_encoder.parameters(),
              *trainer.objective(stage).reward_estimator.network.parameters()]  # fmt: skip
    assert float(terms["rewarded"].sum()) == (2 if weight else 0)
    grads = {n: p.grad.clone() for n, p in controlnet.named_parameters() if p.grad is not None}
    return grads, frozen, trainer


def test_gradients_reach_the_controlnet_and_nothing_else(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(reward_config(tmp_path))
    with_reward, frozen, _ = _grads(config, 0.5)
    assert frozen and all(p.grad is None and not p.requires_grad for p in frozen)
    without, _, _ = _grads(config, 0.0)
    assert any(g.abs().sum() > 0 for g in with_reward.values())
    # The reward's own gradient reaches the ControlNet: it changes the ControlNet's gradients.
    changed = [n for n in with_reward if not torch.equal(with_reward[n], without[n])]
    assert changed, "the reward term added no gradient to the ControlNet"
    # With train.gradient_checkpointing the decode is checkpointed too: the same gradients.
    config = load_config(reward_config(tmp_path, gradient_checkpointing=True))
    checkpointed, _, trainer = _grads(config, 0.5)
    assert trainer.frozen.parts.vae.decoder.gradient_checkpointing
    for name, grad in with_reward.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-4, atol=1e-6)


def test_a_reward_stage_trains_exports_and_evaluates_from_the_cli(tmp_path: Path, monkeypatch,
                                                                 capsys) -> None:  # fmt: skip
    from diffusers import ControlNetModel

    import poseguide.objectives.objective as objective  # where a stage's estimators are built
    from poseguide.models import load_sd_parts
    from poseguide.train import runner

    monkeypatch.chdir(tmp_path)
    reward_config(tmp_path)
    frozen, estimators = {}, []
    real_load, real_estimator = runner.load_frozen, objective.estimator_from_config

    def spy(config, device):
        frozen["parts"] = real_load(config, device)
        return frozen["parts"]

    def spy_estimator(cfg):
        estimators.append(real_estimator(cfg))
        return estimators[-1]

    monkeypatch.setattr(runner, "load_frozen", spy)
    monkeypatch.setattr(objective, "estimator_from_config", spy_estimator)
    assert main(["train", "config.yaml"]) == 0
    assert "finished at step 8" in capsys.readouterr().out
    rows = metrics(tmp_path)
    reward_rows = [r for r in rows if r["stage"] == "stage3"]
    assert len(reward_rows) == 4
    for r in reward_rows:  # every sample rewarded (t <= 999); the loss is mse + 1.0 reward
        assert r["rewarded"] == 1.0 and r["reward"] > 0 and 0 <= r["reward_oks"] <= 1
        # 1 - OKS, plus 0.1 x the mean Huber of the normalised joint distances (and -log(score)
        # for people the random tiny model misses)
        assert r["reward"] >= 1.0 - r["reward_oks"] - 1e-5
        assert 0.0 <= r["unmatched_fraction"] <= 1.0 and r["reward_pseudo_fraction"] == 0.0
        assert r["loss"] == pytest.approx(r["mse"] + 1.0 * r["reward"], rel=1e-5)
    assert all("reward" not in r for r in rows if r["stage"] == "stage1")
    targets = json.loads((tmp_path / "runs/t/reward_targets.json").read_text())
    assert targets["dataset_keypoints"] == 8 and targets["pseudo_ground_truth"] == 0

    # The frozen UNet, VAE, text encoder and the reward's estimator are bitwise unchanged.
    config = load_config("config.yaml")
    fresh = load_sd_parts(config.model.base)
    for name in ("unet", "vae", "text_encoder"):
        trained = getattr(frozen["parts"].parts, name).state_dict()
        reference = getattr(fresh, name).state_dict()
        assert all(torch.equal(trained[k], reference[k]) for k in reference), name
    used = [e for e in estimators if e._network is not None]
    assert used, "the reward's estimator network never ran"
    reference = real_estimator(config.train.stages[1].loss.reward_estimator).network.state_dict()
    for estimator in used:
        state = estimator.network.state_dict()
        assert all(torch.equal(state[k], reference[k]) for k in reference)
        assert all(p.grad is None for p in estimator.network.parameters())
    s1, s3 = export(tmp_path, "stage1"), export(tmp_path, "stage3")
    assert any(not torch.equal(s1[k], s3[k]) for k in s1)
    ControlNetModel.from_pretrained(tmp_path / "runs/t/exports/stage3")  # diffusers loads it

    assert main(["evaluate", "config.yaml"]) == 0
    scores = json.loads((tmp_path / "runs/t/eval/metrics.json").read_text())
    assert {"stage1", "stage3"} <= set(scores["models"])
    assert main(["report", "runs/t"]) == 0
    report = (tmp_path / "runs/t/eval/report.md").read_text()
    assert "| stage3 |" in report.replace("**", "")
    assert "8 of 8 rows with the dataset's keypoints, 0 with pseudo ground truth" in report


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run of both stages."""
    root = tmp_path_factory.mktemp("reward-reference")
    reward_config(root)
    run_cli(root)
    return root


@pytest.mark.slow
def test_sigkill_in_the_reward_stage_then_resume_is_bitwise(reference: Path,
                                                           tmp_path: Path) -> None:  # fmt: skip
    reward_config(tmp_path)
    kill_after = random.Random("sigkill-reward").randint(1, 3)  # fixed: a rerun repeats it
    proc = start_cli("train", "config.yaml", cwd=tmp_path)
    print(f"killing at stage3 step {kill_after}")
    wait_for_step(tmp_path, proc, "stage3", kill_after)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL  # killed mid-stage, not finished
    assert not (tmp_path / "runs/t/exports/stage3").exists()
    run_cli(tmp_path, "--resume", "latest")
    ours, theirs = export(tmp_path, "stage3"), export(reference, "stage3")
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    rows = metrics(tmp_path)
    assert [r["global_step"] for r in rows] == list(range(1, 9))  # no step logged twice


def test_explain_loss_shows_the_reward_training_computed(tmp_path: Path, monkeypatch) -> None:
    """explain-loss on a reward stage, for the row and timestep of the stage's first training
    step and the ControlNet that step started from (stage 1's export), gives the reward and
    OKS that training computed, and draws the decoded prediction with both skeletons."""
    from PIL import Image

    import poseguide.objectives.objective as losses
    from poseguide.data.dataset import ShardedSampler
    from poseguide.train.runner import run_training
    from poseguide.train.step import epoch_key

    monkeypatch.chdir(tmp_path)
    reward_config(tmp_path, batch_size=1, checkpoint_every=1000)
    seen = []
    real_loss = losses.stage_loss

    def record(cfg, pred, target, **kwargs):
        terms = real_loss(cfg, pred, target, **kwargs)
        if cfg.kind == "reward":  # (its base loss is a nested call, not recorded)
            kept = {k: v.detach().clone() for k, v in terms.items() if k != "_debug"}
            seen.append((kwargs["reward"].steps[0], kept))
        return terms

    monkeypatch.setattr(losses, "stage_loss", record)
    run_training(load_config("config.yaml"))
    monkeypatch.setattr(losses, "stage_loss", real_loss)
    timestep, trained = seen[0]
    sampler = ShardedSampler(8, seed=3)
    sampler.set_epoch(epoch_key(1, 0))
    sample_id = f"synth-{next(iter(sampler)):05d}"
    out = tmp_path / "fig.png"
    assert main(["explain-loss", "config.yaml", "--sample", sample_id, "--timestep",
                 str(timestep), "--controlnet", "runs/t/exports/stage1",
                 "--out", str(out)]) == 0  # fmt: skip
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["rewarded"] and summary["pseudo_ground_truth"] is False
    assert summary["reward"] == pytest.approx(float(trained["reward_sum"][0]), rel=1e-4)
    assert summary["reward_oks"] == pytest.approx(float(trained["reward_oks_sum"][0]), rel=1e-4)
    assert summary["loss"] == pytest.approx(float(trained["loss"][0]), rel=1e-4)
    joints = [v for person in summary["joint_oks"] for v in person if v is not None]
    assert joints and all(0 <= v <= 1 for v in joints)
    assert Image.open(out).size[0] > 500
    shown = load_file(str(out.with_suffix(".safetensors")))
    for key in ("reward_images", "reward_noisy"):
        assert shown[key].shape == (3, 64, 64), key
