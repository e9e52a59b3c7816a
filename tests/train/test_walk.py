"""The shape of one training step (issue 17): followed from the loop, the step enters each
module of the training code (``poseguide.train.*``, ``poseguide.objectives.*``) at most twice,
for every loss kind: the step asks the stage's objective once and never works out again what
the loss needs or which estimators it uses."""

from __future__ import annotations

import collections
import sys

import pytest
from helpers import write_config

from poseguide.config import load_config
from poseguide.train import loop, runner
from poseguide.train.setup import make_loader
from poseguide.train.step import epoch_key

STAGES = [
    {"name": "stage1", "loss": {"kind": "denoising"}, "epochs": 1, "lr": 1e-3},
    {"name": "stage2", "loss": {"kind": "heatmap", "source": "predicted_error"}, "epochs": 1,
     "lr": 1e-3},
    {"name": "stage3", "loss": {"kind": "reward", "reward_timestep_max": 999,
     "reward_estimator": {"weights": "yolo11n-pose.pt", "conf": 0.0, "imgsz": 64}},
     "epochs": 1, "lr": 1e-3},
]  # fmt: skip
ROOMS = ("poseguide.train", "poseguide.objectives")


def _entries(step) -> tuple[collections.Counter, list[tuple[str, str, str]]]:
    """How often each poseguide module is entered from another poseguide module during
    ``step()``, and the calls that entered (caller module, module, function)."""
    entries: collections.Counter = collections.Counter()
    calls: list[tuple[str, str, str]] = []

    def profile(frame, event, arg) -> None:
        if event != "call" or frame.f_back is None:
            return
        here = frame.f_globals.get("__name__", "")
        caller = frame.f_back.f_globals.get("__name__", "")
        if here.startswith("poseguide") and caller.startswith("poseguide") and here != caller:
            entries[here] += 1
            calls.append((caller, here, frame.f_code.co_name))

    sys.setprofile(profile)
    try:
        step()
    finally:
        sys.setprofile(None)
    return entries, calls


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("walk")
    write_config(root, train={"stages": STAGES})
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        config = load_config("config.yaml")
        made, _ = runner._make_run(config, None, [0, 1, 2], explicit=True)
        yield made


@pytest.mark.parametrize("index", [0, 1, 2], ids=[s["loss"]["kind"] for s in STAGES])
def test_one_step_enters_each_training_module_at_most_twice(run, index: int) -> None:
    stage = run.config.train.stages[index]
    state = loop.start_stage(run.trainer, index, "unet", None, None, 0, 10)
    dataset, _, loader = make_loader(run.config, run.source, run.rows, run.cache, 0, 1, stage)
    key = epoch_key(index, 0)
    dataset.set_epoch(key)
    batch = next(iter(loader))
    try:
        loop._step(run, stage, state, iter([batch]), key)  # the objective is built on its first
        entries, calls = _entries(lambda: loop._step(run, stage, state, iter([batch]), key))
    finally:
        loop.end_stage(run.trainer, state)
    rooms = {m: n for m, n in entries.items() if m.startswith(ROOMS)}
    assert "poseguide.objectives.objective" in rooms  # the walk did reach the objective
    assert rooms["poseguide.train.step"] == 1, calls
    too_often = {m: n for m, n in rooms.items() if n > 2 and not _leaf(m, calls)}
    assert not too_often, (too_often, [c for c in calls if c[1] in too_often])


def _leaf(module: str, calls: list[tuple[str, str, str]]) -> bool:
    """Whether every entry into ``module`` calls one of the loss' shared arithmetic primitives
    (squared error, per-sample mean), which return without calling back into poseguide."""
    primitives = {"squared_error", "per_sample_mean", "denoising_target"}
    return all(fn in primitives for _, m, fn in calls if m == module)
