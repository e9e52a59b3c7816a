"""Which stages a ``poseguide train`` runs, and how: a pure function of the config's stage names,
the selection, the finished markers and the checkpoint being resumed (tested on its own).

Per stage, in order:

* ``skip``: not selected, finished (and not asked for by name), or before the checkpoint's stage;
* ``resume``: the checkpoint's stage, continued from it;
* ``train``: a fresh start (from its init), including a finished stage asked for by ``--stage``.

``export_checkpoint`` marks the checkpoint's stage when its final checkpoint was written but not
its export (a kill in between): its weights are exported first and the stage counts as finished;
the stages after it start fresh.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Action = Literal["train", "resume", "skip"]


@dataclass(frozen=True)
class StagePlan:
    """One stage's part in a run."""

    index: int
    name: str
    action: Action
    export_checkpoint: bool = False  # export the final checkpoint's weights first


@dataclass(frozen=True)
class ResumePoint:
    """Where the checkpoint being resumed stands: its stage and whether that stage was done."""

    stage_index: int
    stage_done: bool


def plan_stages(names: Sequence[str], selected: Sequence[int], by_name: bool,
                finished: set[str], resume: ResumePoint | None) -> list[StagePlan]:  # fmt: skip
    """The plan of every stage of ``names``: ``selected`` indices (all unless ``by_name``:
    ``--stage NAME`` given), ``finished`` the stages whose export is marked finished."""
    plan = []
    for index, name in enumerate(names):
        done, export_first = name in finished, False
        if resume is not None and resume.stage_index == index and resume.stage_done:
            export_first, done = not done, True
            resume = None  # the stages after it start fresh
        resuming = resume is not None and resume.stage_index == index
        skip = index not in selected or (done and not by_name and not resuming)
        if resume is not None and resume.stage_index > index:
            skip = True  # before the checkpoint's stage: it was trained already
        action: Action = "skip" if skip else "resume" if resuming else "train"
        plan.append(StagePlan(index, name, action, export_first))
    return plan
