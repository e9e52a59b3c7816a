"""Nothing of a finished stage survives into the next (issue 12): its ControlNet, optimizer and
LR scheduler are freed (accelerate's references included), and so are its pose estimators."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

from helpers import write_config

from poseguide.config import load_config
from poseguide.train import loop, runner


def test_a_finished_stage_leaves_nothing_behind(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_config(tmp_path, train={"checkpoint_every": 1000})
    refs: list[dict[str, weakref.ref]] = []
    alive_at_next_start: list[list[str]] = []
    real = loop.start_stage

    def spy(trainer, index, *args):
        gc.collect()
        alive_at_next_start.append([name for r in refs for name, ref in r.items() if ref()])
        state = real(trainer, index, *args)
        model = trainer.accelerator.unwrap_model(state.model)
        refs.append({f"stage{index + 1} controlnet": weakref.ref(model),
                     f"stage{index + 1} optimizer": weakref.ref(state.optimizer.optimizer),
                     f"stage{index + 1} scheduler": weakref.ref(state.scheduler)})  # fmt: skip
        return state

    monkeypatch.setattr(loop, "start_stage", spy)
    estimators = []
    real_end = loop.end_stage

    def end(trainer, state):
        estimators.append(len(trainer.estimators))
        real_end(trainer, state)
        assert trainer.accelerator._models == [] and trainer.accelerator._optimizers == []
        assert trainer.estimators == {}

    monkeypatch.setattr(loop, "end_stage", end)
    runner.run_training(load_config("config.yaml"))
    assert alive_at_next_start == [[], []]  # stage 2 starts with nothing of stage 1 alive
    assert estimators == [0, 1]  # stage 2 loaded its pose estimator, and it was released
    gc.collect()
    assert not [name for r in refs for name, ref in r.items() if ref()]
