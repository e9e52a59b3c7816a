"""The hot loop reads nothing from the device between log steps (issue 12): the one host read of
a window of steps is the packed terms/flags vector at a log (or checkpoint) step."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from helpers import write_config

from poseguide.config import load_config
from poseguide.train import loop, runner
from poseguide.utils.syncs import count_host_reads

LOG_EVERY = 4
# Host reads that are no device sync on a GPU: the data pipeline works on CPU tensors (cache
# shard slices, the DataLoader), and a checkpoint copies the weights to the host on purpose.
HOST_SIDE = ("/poseguide/data/", "/torch/utils/data/", "checkpoint.py", "safetensors")


def _device_reads(seen: Counter) -> Counter:
    return Counter({k: n for k, n in seen.items() if not any(h in k for h in HOST_SIDE)})


# The reward stage on tiny random models: every anchor kept and every timestep rewarded, so the
# whole reward path (decode, estimator, matching, OKS) runs in every step.
REWARD = {"kind": "reward", "reward_timestep_max": 999,
          "reward_estimator": {"weights": "yolo11n-pose.pt", "conf": 0.0, "imgsz": 64}}  # fmt: skip


CASES = {"log": ("log", {"kind": "denoising"}), "every_step": ("every_step", {"kind": "denoising"}),
         "reward": ("log", REWARD)}  # fmt: skip


@pytest.mark.parametrize(("check", "loss"), list(CASES.values()), ids=list(CASES))
def test_stage1_reads_the_device_once_per_window(tmp_path: Path, monkeypatch, check, loss) -> None:
    monkeypatch.chdir(tmp_path)
    stages = [{"name": "stage1", "loss": loss, "epochs": 4, "lr": 1e-3}]
    write_config(tmp_path, train={"stages": stages, "log_every": LOG_EVERY,
                                  "checkpoint_every": 1000, "check_finite": check,
                                  "validation": {"every": 0, "num_samples": 0}})  # fmt: skip
    snapshots: list[Counter] = []
    real = loop._step
    with count_host_reads() as reads:

        def step(*args, **kwargs):  # the reads of step n: from its start to step n + 1's start
            snapshots.append(Counter(reads))
            return real(*args, **kwargs)

        monkeypatch.setattr(loop, "_step", step)
        runner.run_training(load_config("config.yaml"))
    assert len(snapshots) == 16  # 8 rows / batch 2 = 4 steps an epoch, 4 epochs
    for n in range(1, len(snapshots) - 1):  # steady state: not the first step, not the last
        device = _device_reads(snapshots[n + 1] - snapshots[n])
        step_no = n + 1
        window_read = 1 if step_no % LOG_EVERY == 0 or check == "every_step" else 0
        finite_read = 1 if check == "every_step" else 0  # before the update, every step
        assert sum(device.values()) == window_read + finite_read, (step_no, dict(device))
        if window_read:
            assert any("tolist" in k and "_merge" in k for k in device), dict(device)
