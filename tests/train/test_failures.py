"""Nothing lost, nothing confusing: full disks, damaged checkpoints, interrupted stage ends,
stale temporary folders, up-front checks, file modes (issue 11's training findings)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch
from helpers import metrics, write_config
from safetensors.torch import load_file

from poseguide.cli import main
from poseguide.config import load_config
from poseguide.train import checkpoint as ckpt
from poseguide.train import loop, runner
from poseguide.train.checkpoint import CheckpointError, checkpoint_problem, resolve_checkpoint

ONE_STAGE = {"stages": [{"name": "stage1", "loss": {"kind": "denoising"}, "epochs": 1,
                         "lr": 1e-3}]}  # fmt: skip


def rows(root: Path) -> list[dict]:
    return metrics(root) if (root / "runs/t/metrics.jsonl").is_file() else []


def weights(root: Path, stage: str) -> dict[str, torch.Tensor]:
    return load_file(str(root / f"runs/t/exports/{stage}/diffusion_pytorch_model.safetensors"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run of both stages (12 steps, a checkpoint after every step)."""
    root = tmp_path_factory.mktemp("reference")
    write_config(root)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        runner.run_training(load_config("config.yaml"))
    return root


@pytest.mark.parametrize(
    "failure",
    [
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 8832 vs 8768"),
        OSError(28, "No space left on device"),
    ],
    ids=["torch.save", "os"],
)
def test_a_full_disk_names_stage_step_and_the_intact_checkpoint(tmp_path, monkeypatch, failure):
    monkeypatch.chdir(tmp_path)
    write_config(tmp_path)
    real, calls = torch.save, {"n": 0}

    def fills_up(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 9:  # lr_scheduler + optimizer + rng per checkpoint: in checkpoint 3
            raise failure
        return real(*args, **kwargs)

    monkeypatch.setattr(ckpt.torch, "save", fills_up)
    with pytest.raises(runner.TrainingError) as err:
        runner.run_training(load_config("config.yaml"))
    message = str(err.value)
    assert "could not write the checkpoint of stage1 step 3" in message
    assert "step-00000002) is intact" in message and "\n" not in message
    assert str(failure).split()[0] in message
    assert main(["train", "config.yaml", "--resume", "latest"]) == 0  # continues from step 2


def test_safetensors_failure_is_one_line(tmp_path, monkeypatch, capsys) -> None:
    from safetensors import SafetensorError

    monkeypatch.chdir(tmp_path)
    write_config(tmp_path, train=ONE_STAGE)

    def refuse(*args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(No space left on device)")

    monkeypatch.setattr(ckpt, "save_file", refuse)
    assert main(["train", "config.yaml"]) == 2
    text = capsys.readouterr().err
    err = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "stage1 step 1" in err[0] and "no earlier checkpoint" in err[0]
    assert "Traceback" not in text


def test_a_full_disk_during_the_export_keeps_the_final_checkpoint(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_config(tmp_path, train=ONE_STAGE)
    real = loop.atomic_directory

    def fails(path):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(loop, "atomic_directory", fails)
    with pytest.raises(runner.TrainingError, match="could not write the export of stage1.*"
                       "--resume latest"):  # fmt: skip
        runner.run_training(load_config("config.yaml"))
    monkeypatch.setattr(loop, "atomic_directory", real)
    before = len(rows(tmp_path))
    runner.run_training(load_config("config.yaml"), resume="latest")
    assert len(rows(tmp_path)) == before  # exported from the final checkpoint, not retrained
    assert (tmp_path / "runs/t/exports/stage1/config.json").is_file()


@pytest.mark.parametrize("damage", ["weights", "state"])
def test_a_damaged_newest_checkpoint_is_skipped(tmp_path, monkeypatch, caplog, reference, damage):
    """Kill after step 5, damage checkpoint 5: --resume latest resumes from step 4, names the
    skipped one, and the run ends with the weights of the uninterrupted run."""
    monkeypatch.chdir(tmp_path)
    write_config(tmp_path)
    real, calls = loop.optimizer_step, {"n": 0}

    def killed(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "optimizer_step", killed)
    with pytest.raises(KeyboardInterrupt):
        runner.run_training(load_config("config.yaml"))
    monkeypatch.setattr(loop, "optimizer_step", real)
    newest = tmp_path / "runs/t/checkpoints/step-00000005"
    victim = newest / ("controlnet.safetensors" if damage == "weights" else "state.json")
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    assert checkpoint_problem(newest) is not None
    # A plain train refuses (the run is unfinished); --resume latest skips the damaged one.
    assert main(["train", "config.yaml"]) == 2
    caplog.set_level("WARNING")
    runner.run_training(load_config("config.yaml"), resume="latest")
    assert "skipping checkpoint step-00000005" in caplog.text and victim.name in caplog.text
    for stage in ("stage1", "stage2"):
        ours, theirs = weights(tmp_path, stage), weights(reference, stage)
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs), stage
    assert [r["global_step"] for r in rows(tmp_path)] == list(range(1, 13))


def test_no_intact_checkpoint_says_how_to_start_over(tmp_path) -> None:
    folder = tmp_path / "checkpoints"
    (folder / "step-00000003").mkdir(parents=True)
    (folder / "step-00000003" / "state.json").write_text('{"position": {"stage_index"')
    (folder / "latest").write_text("step-00000003\n")
    with pytest.raises(CheckpointError) as err:
        resolve_checkpoint(folder, "latest")
    assert "state.json is damaged" in str(err.value) and "another run.name" in str(err.value)
    with pytest.raises(CheckpointError, match=r"cannot resume from .*state.json is damaged"):
        resolve_checkpoint(folder, str(folder / "step-00000003"))


def test_killed_between_the_final_checkpoint_and_the_export(tmp_path, monkeypatch, reference):
    """Stage 1's export never written: plain `train` refuses; --resume exports stage 1 from its
    final checkpoint (no step again, no metrics row twice) and trains stage 2."""
    monkeypatch.chdir(tmp_path)
    write_config(tmp_path)
    real = loop.export

    def killed(run, state, stage):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "export", killed)
    with pytest.raises(KeyboardInterrupt):
        runner.run_training(load_config("config.yaml"))
    monkeypatch.setattr(loop, "export", real)
    assert not (tmp_path / "runs/t/exports/stage1").exists() and len(rows(tmp_path)) == 8
    with pytest.raises(runner.TrainingError, match="has checkpoints; continue it with --resume"):
        runner.run_training(load_config("config.yaml"))
    trained = []
    real_train = runner.train_stage

    def spy(run, index, *args):
        trained.append(index)
        return real_train(run, index, *args)

    monkeypatch.setattr(runner, "train_stage", spy)
    runner.run_training(load_config("config.yaml"), resume="latest")
    assert trained == [1]  # stage 1 was exported, not trained again
    assert [r["global_step"] for r in rows(tmp_path)] == list(range(1, 13))
    for stage in ("stage1", "stage2"):
        ours, theirs = weights(tmp_path, stage), weights(reference, stage)
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs), stage


def test_stale_temporaries_are_removed_at_start(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_config(tmp_path, train=ONE_STAGE)
    run = tmp_path / "runs/t"
    stale = [run / "checkpoints/.step-00000007.abcd1234.tmp",
             run / "checkpoints/.step-00000007.deepspeed.tmp",
             run / "exports/.stage1.x8y9.tmp", run / "exports/.stage1.old"]  # fmt: skip
    for folder in stale:
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "big.safetensors").write_bytes(b"x" * 100)
    runner.run_training(load_config("config.yaml"))
    assert not [p for p in stale if p.exists()]


def test_every_check_of_every_stage_runs_before_the_first_step(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_config(tmp_path)
    config = load_config(
        "config.yaml", ["train.stages.stage2.loss.estimator={weights: no-pose.pt}"]
    )
    with pytest.raises(runner.TrainingError, match=r"stage2 pose weights \(no-pose.pt\)"):
        runner.run_training(config)
    assert rows(tmp_path) == [] and not (tmp_path / "runs/t/checkpoints").exists()


def test_weight_files_follow_the_umask(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_config(tmp_path, train=ONE_STAGE)
    old = os.umask(0o027)
    try:
        runner.run_training(load_config("config.yaml"))
    finally:
        os.umask(old)
    run = tmp_path / "runs/t"
    files = [*run.glob("checkpoints/step-*/*"), *run.glob("exports/stage1/*")]
    assert any(p.suffix == ".safetensors" for p in files)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in files if p.is_file()}
    assert set(modes.values()) == {0o640}, modes


@pytest.mark.parametrize("policy", ["skip", "error"])
def test_a_row_damaged_after_the_scan(tmp_path, monkeypatch, capsys, policy) -> None:
    """A row's image corrupted after the row scan, with the same size and mtime (the scan's
    cached verdict still stands): skipped and listed under skip, one line under error."""
    monkeypatch.chdir(tmp_path)
    data = {"on_bad_row": policy, "cache": {"dir": "cache", "enabled": False}}
    write_config(tmp_path, train=ONE_STAGE, data=data)
    config = load_config("config.yaml")
    from poseguide.data.api import checked_source

    checked_source(config, out_dir=tmp_path / "runs/t")  # the scan (cached by file stats)
    image = sorted((tmp_path / "data/train/images").glob("*.png"))[3]
    info = image.stat()
    image.write_bytes(b"\0" * info.st_size)  # same size: the PNG is now garbage
    os.utime(image, ns=(info.st_atime_ns, info.st_mtime_ns))
    if policy == "error":
        assert main(["train", "config.yaml"]) == 2
        err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
        assert len(err) == 1 and "synth-00003" in err[0] and "unreadable_image" in err[0]
        return
    runner.run_training(config)
    listed = json.loads((tmp_path / "runs/t/skipped_during_training.json").read_text())
    assert (
        list(listed) == ["synth-00003"] and listed["synth-00003"]["problem"] == "unreadable_image"
    )
    assert (tmp_path / "runs/t/exports/stage1/config.json").is_file()


def test_a_nan_is_noticed_at_the_next_read_and_never_saved(tmp_path, monkeypatch) -> None:
    """train.check_finite=log (the default): no host read between log steps; a NaN loss at step
    3 is noticed at the next read (step 4, a checkpoint step) and step 4 is not saved."""
    import poseguide.objectives.objective as losses

    monkeypatch.chdir(tmp_path)
    write_config(tmp_path, train={"checkpoint_every": 2, "log_every": 4})
    real, calls = losses.stage_loss, {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        terms = real(*args, **kwargs)
        return {**terms, "loss": terms["loss"] * float("nan")} if calls["n"] == 3 else terms

    monkeypatch.setattr(losses, "stage_loss", poisoned)
    with pytest.raises(runner.TrainingError) as err:
        runner.run_training(load_config("config.yaml"))
    message = str(err.value)
    assert "NaN or Inf at global step 3 (noticed at step 4" in message
    assert "step-00000002) is intact" in message
    folder = tmp_path / "runs/t/checkpoints"
    assert sorted(p.name for p in folder.glob("step-*")) == ["step-00000002"]
    assert rows(tmp_path) == []  # the first log step (4) was never written
