"""The stage planner on its own: which stages a train runs, resumes, exports or skips."""

from __future__ import annotations

from poseguide.train.plan import ResumePoint, plan_stages

NAMES = ("stage1", "stage2", "stage3")
ALL = (0, 1, 2)


def actions(plan) -> list[str]:
    return [p.action + ("+export" if p.export_checkpoint else "") for p in plan]


def test_a_fresh_run_trains_every_stage() -> None:
    assert actions(plan_stages(NAMES, ALL, False, set(), None)) == ["train"] * 3


def test_finished_stages_are_skipped_unless_asked_for_by_name() -> None:
    finished = {"stage1"}
    assert actions(plan_stages(NAMES, ALL, False, finished, None)) == ["skip", "train", "train"]
    assert actions(plan_stages(NAMES, [0], True, finished, None)) == ["train", "skip", "skip"]
    assert actions(plan_stages(NAMES, [1], True, finished, None)) == ["skip", "train", "skip"]


def test_a_resume_continues_its_stage_and_starts_the_later_ones_fresh() -> None:
    inside = ResumePoint(stage_index=1, stage_done=False)
    plan = plan_stages(NAMES, ALL, False, {"stage1"}, inside)
    assert actions(plan) == ["skip", "resume", "train"]
    # The checkpoint's earlier stages were trained, whatever their markers say.
    assert actions(plan_stages(NAMES, ALL, False, set(), inside)) == ["skip", "resume", "train"]


def test_a_done_checkpoint_without_its_export_is_exported_not_retrained() -> None:
    done = ResumePoint(stage_index=0, stage_done=True)
    assert actions(plan_stages(NAMES, ALL, False, set(), done)) == ["skip+export", "train", "train"]
    # Exported already (the marker exists): nothing to export; by name it trains again.
    assert actions(plan_stages(NAMES, ALL, False, {"stage1"}, done)) == ["skip", "train", "train"]
    assert actions(plan_stages(NAMES, [0], True, set(), done)) == ["train+export", "skip", "skip"]


def test_the_plan_names_every_stage_in_order() -> None:
    plan = plan_stages(NAMES, ALL, False, set(), None)
    assert [(p.index, p.name) for p in plan] == list(enumerate(NAMES))
