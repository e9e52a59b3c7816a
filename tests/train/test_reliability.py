"""One run folder, one writer (issue 21): the lock, checkpoints and exports verified by SHA-256,
resume that notices a changed dataset or config key, divergence advice that works."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers import REPO, cli_env, metrics, start_cli, write_config
from safetensors.torch import load_file

from poseguide.cli import main
from poseguide.config import load_config
from poseguide.models.controlnet import load_controlnet
from poseguide.models.hub import ModelNotFoundError
from poseguide.train import loop, runner
from poseguide.train.checkpoint import checkpoint_problem
from poseguide.utils.checksum import CHECKSUMS_FILE
from poseguide.utils.lock import LOCK_FILE, RunBusyError, is_held, run_lock

HOLD = """
import sys, time
from poseguide.utils.lock import run_lock
with run_lock(sys.argv[1], "train"):
    print("held", flush=True)
    time.sleep(120)
"""


def errors(capsys: pytest.CaptureFixture) -> list[str]:
    """The error lines the CLI printed (progress bars share stderr)."""
    return [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]


def _holder(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], env=cli_env(),
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_held_lock_names_its_holder_and_a_dead_ones_is_taken_over(tmp_path, caplog) -> None:
    folder = tmp_path / "runs" / "t"
    proc = _holder(folder)
    try:
        with pytest.raises(RunBusyError) as err, run_lock(folder, "evaluate"):
            pass
        assert f"PID {proc.pid} on" in str(err.value) and "poseguide train" in str(err.value)
        assert "another run.name" in str(err.value)
    finally:
        proc.kill()  # SIGKILL: the file still names it, the kernel released the lock
        proc.wait()
    assert f'"pid": {proc.pid}' in (folder / LOCK_FILE).read_text()
    caplog.set_level("WARNING")
    with run_lock(folder, "train"):
        assert f"took over the lock of PID {proc.pid}" in caplog.text
        with run_lock(folder, "evaluate"):  # the same process asks again (the demo): counted
            assert is_held(folder)
        assert is_held(folder)
        assert json.loads((folder / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert not is_held(folder) and (folder / LOCK_FILE).read_text() == ""  # a clean release


def test_train_and_evaluate_stop_at_a_held_lock_before_touching_anything(tmp_path, capsys):
    """A second command exits 2 with the lock line; the "stale" temporaries of the live run
    and its metrics are left alone."""
    write_config(tmp_path)
    folder = tmp_path / "runs/t"
    stale = folder / "checkpoints" / ".step-00000009.abc.tmp"
    stale.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text('{"global_step": 1}\n')
    proc = _holder(folder)
    try:
        os.chdir(tmp_path)
        for command in (["train", "config.yaml"], ["train", "config.yaml", "--resume", "latest"],
                        ["evaluate", "config.yaml"]):  # fmt: skip
            capsys.readouterr()
            assert main(command) == 2, command
            err = errors(capsys)
            assert len(err) == 1 and f"is in use by PID {proc.pid}" in err[0], err
    finally:
        os.chdir(REPO)
        proc.kill()
        proc.wait()
    assert stale.is_dir() and (folder / "metrics.jsonl").read_text() == '{"global_step": 1}\n'


def test_two_trains_racing_for_one_folder(tmp_path) -> None:
    """The stress test: two `poseguide train` on one folder; the one that comes second exits 2
    with the lock line (also with --resume latest); the first trains on, and its metrics have
    each step once."""
    write_config(tmp_path, train={"checkpoint_every": 4})
    first = start_cli("train", "config.yaml", cwd=tmp_path)
    lock = tmp_path / "runs/t" / LOCK_FILE
    deadline = time.monotonic() + 120
    while not (lock.is_file() and lock.read_text().strip()) and time.monotonic() < deadline:
        assert first.poll() is None, first.stdout.read()
        time.sleep(0.02)
    again = (("train", "config.yaml"), ("train", "config.yaml", "--resume", "latest"))
    seconds = [start_cli(*args, cwd=tmp_path) for args in again]
    for second in seconds:
        out, _ = second.communicate(timeout=120)
        assert second.returncode == 2, out
        assert f"is in use by PID {first.pid}" in out, out
    out, _ = first.communicate(timeout=300)
    assert first.returncode == 0, out
    rows = metrics(tmp_path)
    steps = [r["global_step"] for r in rows]
    assert steps == sorted(set(steps)) and steps[-1] == 12


def _killed_after(tmp_path: Path, monkeypatch, steps: int) -> None:
    """Train the default two-stage tiny run, stopped by a KeyboardInterrupt after ``steps``."""
    monkeypatch.chdir(tmp_path)
    real, calls = loop.optimizer_step, {"n": 0}

    def killed(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == steps + 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "optimizer_step", killed)
    with pytest.raises(KeyboardInterrupt):
        runner.run_training(load_config("config.yaml"))
    monkeypatch.setattr(loop, "optimizer_step", real)


def _flip(path: Path, offset: int, count: int) -> None:
    data = bytearray(path.read_bytes())
    for i in range(offset, offset + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(("victim", "count"), [("controlnet.safetensors", 64),
                                                ("optimizer.pt", 4096)])  # fmt: skip
def test_a_bit_flip_in_the_newest_checkpoint_is_noticed_and_skipped(
    tmp_path, monkeypatch, caplog, victim, count
) -> None:
    """Same size, same header, flipped bytes in the middle: the SHA-256 catches it, the resume
    takes the checkpoint before and ends where an uninterrupted run ends."""
    write_config(tmp_path)
    _killed_after(tmp_path, monkeypatch, 5)
    newest = tmp_path / "runs/t/checkpoints/step-00000005"
    file = newest / victim
    _flip(file, file.stat().st_size // 2 - count // 2, count)
    assert "does not match the SHA-256" in checkpoint_problem(newest)
    caplog.set_level("WARNING")
    runner.run_training(load_config("config.yaml"), resume="latest")
    assert (
        f"skipping checkpoint step-00000005: runs/t/checkpoints/step-00000005/{victim} does "
        "not match the SHA-256" in caplog.text
    )
    assert "resuming from step-00000004" in caplog.text
    assert [r["global_step"] for r in metrics(tmp_path)] == list(range(1, 13))


def test_an_export_that_changed_after_it_was_written_is_refused(tmp_path, monkeypatch) -> None:
    write_config(tmp_path, train={"stages": [{"name": "stage1", "loss": {"kind": "denoising"},
                                              "epochs": 1, "lr": 1e-3}]})  # fmt: skip
    monkeypatch.chdir(tmp_path)
    runner.run_training(load_config("config.yaml"))
    export = tmp_path / "runs/t/exports/stage1"
    recorded = json.loads((export / CHECKSUMS_FILE).read_text())
    weights = export / "diffusion_pytorch_model.safetensors"
    assert recorded[weights.name]["bytes"] == weights.stat().st_size
    load_controlnet(str(export))  # intact: loads
    _flip(weights, weights.stat().st_size - 100, 8)
    with pytest.raises(ModelNotFoundError, match="does not match the SHA-256.*changed after"):
        load_controlnet(str(export))


def test_resume_refuses_changed_data_in_one_line_unless_accepted(tmp_path, monkeypatch, capsys):
    """The manifest edited in place (2 rows gone; then a caption changed): refused with what
    changed; --accept-data-change continues on the new rows."""
    from poseguide.config.schema import SynthConfig
    from poseguide.synth.people import ensure_synthetic

    manifest = ensure_synthetic(tmp_path / "people", SynthConfig(n=8, seed=0, size=[64, 64]))
    data = {"kind": "manifest", "path": str(manifest)}
    write_config(tmp_path)
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    config["data"]["train"] = data
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    _killed_after(tmp_path, monkeypatch, 3)
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join(lines[:-2]) + "\n")
    assert main(["train", "config.yaml", "--resume", "latest"]) == 2
    err = errors(capsys)
    assert len(err) == 1 and "the training data changed since" in err[0], err
    assert "8 -> 6 rows" in err[0] and "--accept-data-change" in err[0]
    entry = json.loads(lines[0])
    manifest.write_text("\n".join([json.dumps({**entry, "caption": "someone else"}), *lines[1:]])
                        + "\n")  # fmt: skip
    assert main(["train", "config.yaml", "--resume", "latest"]) == 2
    assert "the same rows with changed content" in capsys.readouterr().err
    assert main(["train", "config.yaml", "--resume", "latest", "--accept-data-change"]) == 0
    assert (tmp_path / "runs/t/exports/stage2/config.json").is_file()


def test_a_config_change_names_the_key_and_lr_may_change_deliberately(tmp_path, monkeypatch,
                                                                       capsys) -> None:  # fmt: skip
    """The refusal names train.stages.stage1.lr (not the whole stage list); with
    --allow-config-change the run goes on at the new learning rate; other keys stay refused."""
    write_config(tmp_path)
    _killed_after(tmp_path, monkeypatch, 2)
    lower = "train.stages.stage1.lr=0.0001"
    assert main(["train", "config.yaml", lower, "--resume", "latest"]) == 2
    (err,) = errors(capsys)
    assert "(train.stages.stage1.lr: 0.001 -> 0.0001)" in err and len(err) < 400, err
    assert "--allow-config-change" in err
    assert main(["train", "config.yaml", "train.batch_size=1", "--resume", "latest",
                 "--allow-config-change"]) == 2  # fmt: skip
    assert "train.batch_size: 2 -> 1" in capsys.readouterr().err
    assert main(["train", "config.yaml", lower, "--resume", "latest",
                 "--allow-config-change"]) == 0  # fmt: skip
    rows = metrics(tmp_path)
    by_step = {r["global_step"]: r for r in rows if r["stage"] == "stage1"}
    assert by_step[2]["lr"] == pytest.approx(1e-3) and by_step[3]["lr"] == pytest.approx(1e-4)


def test_divergence_advice_follows_what_exists(tmp_path, monkeypatch) -> None:
    """No checkpoint yet: train again with a lower lr; with one: the --allow-config-change
    resume, which then works."""
    import poseguide.objectives.objective as losses

    write_config(tmp_path, train={"check_finite": "every_step", "checkpoint_every": 2})
    monkeypatch.chdir(tmp_path)
    real, calls = losses.stage_loss, {"n": 0, "bad": 1}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        terms = real(*args, **kwargs)
        bad = calls["n"] == calls["bad"]
        return {**terms, "loss": terms["loss"] * float("nan")} if bad else terms

    monkeypatch.setattr(losses, "stage_loss", poisoned)
    advice = r"No checkpoint was written: train again with a lower learning rate \(train.stages"
    with pytest.raises(runner.TrainingError, match=advice + r".stage1.lr=0.0001\)"):
        runner.run_training(load_config("config.yaml"))
    shutil.rmtree(tmp_path / "runs")
    calls.update(n=0, bad=4)
    with pytest.raises(runner.TrainingError) as err:
        runner.run_training(load_config("config.yaml"))
    assert "--resume latest --allow-config-change" in str(err.value)
    monkeypatch.setattr(losses, "stage_loss", real)
    config = load_config("config.yaml", ["train.stages.stage1.lr=0.0001"])
    runner.run_training(config, resume="latest", rules=runner.ResumeRules(True))
    ours = load_file(str(tmp_path / "runs/t/exports/stage2/diffusion_pytorch_model.safetensors"))
    assert all(torch.isfinite(v).all() for v in ours.values())


def test_a_launch_takes_the_lock_once_and_every_process_stops_when_it_cannot(tmp_path) -> None:
    """Rank 0 takes it, rank 1 waits for that; held elsewhere, rank 0 raises the lock line and
    rank 1 a SharedWorkError naming process 0 (no process is left at a collective)."""
    from helpers import run_as_team

    from poseguide.utils.lock import team_lock
    from poseguide.utils.team import SharedWorkError

    folder = tmp_path / "run"

    def work(team):
        with team_lock(folder, "train", team):
            return is_held(folder) if team.is_main else "waited"

    assert run_as_team(2, work, timeout=60) == [True, "waited"]
    proc = _holder(folder)
    try:
        first, second = run_as_team(2, work, timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert isinstance(first, RunBusyError) and f"PID {proc.pid}" in str(first)
    assert isinstance(second, SharedWorkError) and "process 0 of 2" in str(second)


def test_base_train_takes_its_folder_lock(tmp_path) -> None:
    from poseguide.base.builtin import PRESET
    from poseguide.base.config import load_base_config
    from poseguide.base.train import BasePaths, train_base

    config = load_base_config(PRESET, [f"output_dir={tmp_path}", "vae.steps=1", "unet.steps=1"])
    root = BasePaths.of(config).root
    proc = _holder(root)
    try:
        with pytest.raises(RunBusyError, match="poseguide train"):
            train_base(config, progress=False)
    finally:
        proc.kill()
        proc.wait()
    assert sorted(p.name for p in root.iterdir()) == [LOCK_FILE]  # nothing written before it
