"""The report's set-up section: what was evaluated, how, and the caveats beside the numbers
(the judge, the reward's targets, captions cut to the text encoder's limit)."""

from __future__ import annotations

import json
import math

from poseguide.evaluate.report.data import EvalRun, as_number
from poseguide.paths import RunPaths


def setup_items(run: EvalRun) -> list[str]:
    s = run.setup

    def get(key: str) -> str:
        return "not recorded" if s.get(key) in (None, "") else str(s[key])

    items = [f"Base model: {get('base_model')}"]
    for model in run.models:
        entry = run.entry(model)
        given, resolved = entry.get("controlnet", "not recorded"), entry.get("resolved")
        where = f" (loaded from {resolved})" if resolved and resolved != given else ""
        items.append(f"ControlNet of `{model}`: {given}{where}")
    seed, limit = s.get("seed"), s.get("limit") if "limit" in s else "not recorded"
    seeds = (
        "not recorded"
        if seed is None
        else f"eval row i uses seed {seed} + i, the same for every model"
    )
    confidence = as_number(s.get("confidence"))
    ci = (
        "not recorded"
        if not math.isfinite(confidence)
        else (f"{100 * confidence:g}% percentile bootstrap, {get('bootstrap')} resamples")
    )
    generate = s.get("generate") if isinstance(s.get("generate"), dict) else {}
    return [
        *items,
        f"Seeds: {seeds}",
        "Generation: " + (", ".join(f"{k}={v}" for k, v in generate.items()) or "not recorded"),
        f"Resolution: {get('resolution')}",
        f"Pose estimator (OKS): {get('estimator')}; {judge_note(s)}",
        f"LPIPS: {get('lpips')}",
        f"CLIP score: {get('clip')}",
        f"OKS ground truth: {get('ground_truth')}; matching: {get('matching')}; "
        f"min OKS: {get('min_oks')}",
        f"Eval rows: {get('rows')} from {get('eval_source')} (limit: {limit or 'none'})",
        f"Captions cut to the text encoders' limits: {_caption_cuts(run)}",
        f"Reward-stage targets (training): {_reward_targets(run)}",
        f"Confidence intervals: {ci}",
    ]


def judge_note(setup: dict) -> str:
    """Whether the evaluation's estimator is the one a reward stage trained against (same
    weights and input size): then the OKS measures what the reward optimised, not an
    independent judge."""
    config = setup.get("config") if isinstance(setup.get("config"), dict) else {}
    judge = (config.get("evaluate") or {}).get("estimator") or {}
    default = (config.get("pose") or {}).get("estimator") or {}
    stages = (config.get("train") or {}).get("stages") or []
    rewarded = [(st.get("loss") or {}).get("reward_estimator") or default
                for st in stages if (st.get("loss") or {}).get("kind") == "reward"]  # fmt: skip
    if not rewarded or not judge:
        return "no reward stage trained against a pose estimator"
    same = [
        r
        for r in rewarded
        if (r.get("weights"), r.get("imgsz")) == (judge.get("weights"), judge.get("imgsz"))
    ]
    where = f"{judge.get('weights')} at imgsz {judge.get('imgsz')}"
    if same:
        return (f"NOT an independent judge: the reward stage trained against the same model "
                f"and input size ({where})")  # fmt: skip
    others = ", ".join(sorted({f"{r.get('weights')} at imgsz {r.get('imgsz')}" for r in rewarded}))
    return f"judge {where}; the reward trained against {others}"


def _reward_targets(run: EvalRun) -> str:
    """Where a reward stage's targets came from (``<run>/reward_targets.json``)."""
    path = RunPaths(run.run_dir).reward_targets
    try:
        t = json.loads(path.read_text())
        condition = t.get("pseudo_rows_condition", "the dataset's pose image")
        return (f"{t['dataset_keypoints']} of {t['rows']} rows with the dataset's keypoints, "
                f"{t['pseudo_ground_truth']} with pseudo ground truth ({t['pseudo_people']} "
                f"people found by {t['estimator']} on the original images; their condition: "
                f"{condition})")  # fmt: skip
    except FileNotFoundError:
        return "none (no reward stage)"
    except (OSError, ValueError, KeyError, TypeError):
        return f"unreadable ({path})"


def _caption_cuts(run: EvalRun) -> str:
    """How many captions were cut (training: ``<run>/captions.json``; eval: metrics.json)."""
    parts = []
    train = RunPaths(run.run_dir).captions
    found = {"training": json.loads(train.read_text())} if train.is_file() else {}
    found.update((run.setup.get("captions") or {}).items())
    for what, c in found.items():
        if not isinstance(c, dict) or "cut" not in c:
            continue
        text = f"{what.replace('_', ' ')} {c['cut']} of {c.get('captions')} (limit {c.get('limit')}"
        text += f", at most {c.get('tokens_cut_max')} tokens cut)" if c["cut"] else ")"
        parts.append(text)
    return "; ".join(parts) or "not recorded"
