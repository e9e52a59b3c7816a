"""``poseguide train``: run the configured stages in order, resume, export.

Per-process seeding: process ``rank`` seeds Python, NumPy and torch with ``run.seed + rank``
(accelerate's ``set_seed``). Everything that shapes a row's training signal (its latent sample,
noise, timestep, flip and caption dropout, the stage-2 mask sample, the epoch's data order) is
instead derived from ``(run.seed, stage, epoch, row index)``, so it does not depend on the number
of processes or on where a run was resumed.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from poseguide.config import Config, save_config, to_dict
from poseguide.config.core import ConfigError, from_dict
from poseguide.data.api import checked_source, data_change, data_identity
from poseguide.data.cache import build_cache, find_cache
from poseguide.models.controlnet import STAGE_PREFIX
from poseguide.paths import RunPaths
from poseguide.preflight import run_checks, training_checks
from poseguide.pseudo import pseudo_shards
from poseguide.text import count_cuts
from poseguide.train.checkpoint import (
    LATEST,
    CheckpointError,
    Loaded,
    has_checkpoints,
    load_checkpoint,
    resolve_checkpoint,
)
from poseguide.train.loop import Run, is_deepspeed, train_stage
from poseguide.train.monitor import MetricsLog, plot_curves, read_metrics
from poseguide.train.plan import ResumePoint, plan_stages
from poseguide.train.setup import TrainingError, check_shared, load_frozen, make_accelerator
from poseguide.train.step import Trainer
from poseguide.train.validation import make_validator
from poseguide.utils.checksum import write_checksums
from poseguide.utils.io import atomic_directory, atomic_write_json, remove_stale_temporaries
from poseguide.utils.lock import team_lock
from poseguide.utils.team import Team, team_of

log = logging.getLogger(__name__)

STAGE_MARKER = "poseguide_stage.json"
# Config keys that may change between a checkpoint and its resumption (they do not change what
# is computed; "evaluate", an evaluation protocol included, is read only after training).
RESUME_FREE = {"run.name", "run.output_dir", "run.device", "data.num_workers", "data.cache.dir",
               "data.cache.batch_size", "train.checkpoint_every", "train.keep_checkpoints",
               "train.log_every", "train.tensorboard", "train.validation", "generate", "evaluate",
               "pose.render.min_score", "train.check_finite", "train.process_timeout_s",
               "train.compile", "pose.render.max_canvas_pixels"}  # fmt: skip


# Keys that --allow-config-change lets differ from the checkpoint's config (a lower learning
# rate after a divergence, another precision, a longer or shorter stage): the run continues from
# the checkpoint with the new values (a new learning rate rescales the LR schedule from there on).
ADJUSTABLE = ("train.stages.*.lr", "train.stages.*.max_steps", "train.stages.*.epochs",
              "train.mixed_precision")  # fmt: skip


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys of nested config data; a list of named entries (``train.stages``) is keyed
    by name (``train.stages.stage1.lr``), any other list by position."""
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    if isinstance(d, list) and d and all(isinstance(v, dict) for v in d):
        names = [v.get("name") for v in d]
        keys = names if all(isinstance(n, str) for n in names) and len(set(names)) == len(d) \
            else [str(i) for i in range(len(d))]  # fmt: skip
        out = {}
        for key, v in zip(keys, d, strict=True):
            out.update(_flatten(v, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: d}


def _adjustable(key: str) -> bool:
    parts = key.split(".")
    return any(len(p.split(".")) == len(parts) and all(a in ("*", b) for a, b in
               zip(p.split("."), parts, strict=True)) for p in ADJUSTABLE)  # fmt: skip


def _drop(data: Any, dotted: str) -> bool:
    """Remove the entry at ``dotted`` (dict keys, list positions) in place; False if absent."""
    *path, last = dotted.split(".")
    for part in path:
        data = data[int(part)] if isinstance(data, list) and part.isdigit() else data.get(part) \
            if isinstance(data, dict) else None  # fmt: skip
    if isinstance(data, dict) and last in data:
        del data[last]
        return True
    return False


def _as_schema_reads_it(before: dict) -> dict[str, Any]:
    """A checkpoint's config, flattened, as the current schema reads it: a key added since it
    was written takes its default, which is what that run computed (a new key's default keeps
    the behaviour from before it existed); a key removed since stays, as written, so that it
    still counts as a change. A config the schema cannot read stays as written."""
    data = copy.deepcopy(before)
    for _ in range(1000):  # one retired key per try
        try:
            filled = _flatten(to_dict(from_dict(Config, data)))
            break
        except ConfigError as err:
            if not str(err).startswith("unknown key") or not err.key or not _drop(data, err.key):
                return _flatten(before)
    else:
        return _flatten(before)
    return {**_flatten(before), **filled}


def config_changes(before: dict, config: Config) -> list[str]:
    """The dotted keys whose values differ between a checkpoint's config and ``config``, less
    those that do not change what is computed (:data:`RESUME_FREE`)."""
    old, new = _as_schema_reads_it(before), _flatten(to_dict(config))
    return [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)
            and not any(k == f or k.startswith(f + ".") for f in RESUME_FREE)]  # fmt: skip


def check_resumable(loaded: Loaded, config: Config, world: int, deepspeed: bool = False,
                    allow_config_change: bool = False) -> None:  # fmt: skip
    """Refuse a resume that could not continue the same run exactly (``allow_config_change``:
    the :data:`ADJUSTABLE` keys may differ; each one that does is logged)."""
    if loaded.world_size != world:
        raise TrainingError(
            f"{loaded.path} was written by {loaded.world_size} process(es); resume it with the "
            f"same number (got {world}), or the data order would change"
        )
    if loaded.deepspeed != deepspeed:
        if loaded.deepspeed:
            how = (
                "under DeepSpeed (its optimizer state is DeepSpeed's, in deepspeed/): resume "
                "it with the same `accelerate launch --config_file` DeepSpeed config"
            )
        else:
            how = (
                "without DeepSpeed (its optimizer state is optimizer.pt): resume it without "
                "the DeepSpeed config, or start a new run.name under DeepSpeed"
            )
        raise TrainingError(f"{loaded.path} was written {how}")
    old, new = _flatten(loaded.config), _flatten(to_dict(config))
    changed = config_changes(loaded.config, config)
    fixed = [k for k in changed if not (allow_config_change and _adjustable(k))]
    if fixed:
        details = "; ".join(f"{k}: {_short(old.get(k))} -> {_short(new.get(k))}"
                            for k in fixed[:8])  # fmt: skip
        more = f" and {len(fixed) - 8} more" if len(fixed) > 8 else ""
        allowed = all(_adjustable(k) for k in fixed)
        how = ("add --allow-config-change to continue with the new values" if allowed else
               "resume with the original config or start a new run.name")  # fmt: skip
        raise TrainingError(f"the config changed since {loaded.path} was written "
                            f"({details}{more}); {how}")  # fmt: skip
    for key in changed:
        log.warning("--allow-config-change: %s %s -> %s from %s on", key, _short(old.get(key)),
                    _short(new.get(key)), loaded.path.name)  # fmt: skip


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_same_data(loaded: Loaded, identity: dict, accept: bool = False) -> None:
    """Refuse to resume on other training data than the checkpoint's (``accept``: log the
    change and go on); checkpoints written before the data was recorded pass."""
    if loaded.data is None:
        return
    change = data_change(loaded.data, identity)
    if change is None:
        return
    if not accept:
        raise TrainingError(
            f"the training data changed since {loaded.path} was written ({change}); resume "
            "with the data it was trained on, or add --accept-data-change to continue on this "
            "data (the rest of the run draws from the new rows)"
        )
    log.warning("--accept-data-change: %s; continuing from %s on this data", change,
                loaded.path.name)  # fmt: skip


def _stage_indices(config: Config, names: list[str] | None) -> list[int]:
    all_names = [s.name for s in config.train.stages]
    if not names:
        return list(range(len(all_names)))
    unknown = [n for n in names if n not in all_names]
    if unknown:
        raise TrainingError(f"unknown stage(s) {unknown}; the config has {all_names}")
    return sorted(all_names.index(n) for n in names)


def _finished(run: Run, name: str) -> dict | None:
    marker = run.paths.export(name) / STAGE_MARKER
    return json.loads(marker.read_text()) if marker.is_file() else None


def _open_cache(config: Config, team: Team, source: Any, rows: list[int], parts: Any,
                paths: RunPaths) -> Any:  # fmt: skip
    """Build (every process its share of the shards) or find the cache, then open it; with a
    reward stage, say (log, ``reward_targets.json``) how many rows take pseudo ground truth."""
    if not config.data.cache.enabled:
        return None

    pseudo = pseudo_shards(config)
    build_cache(source, rows, config.data, parts, config.pose.render, config.run.seed,
                progress=team.is_main, team=team, extras=pseudo)  # fmt: skip
    cache = find_cache(source, rows, config.data, parts, pseudo)
    if pseudo is not None and team.is_main:
        found = cache.manifest.get(pseudo.summary, {})
        drawn = {st.loss.reward_condition for st in config.train.stages
                 if st.loss.kind == "reward"}  # fmt: skip
        names = {"targets": "drawn from the pseudo targets", "source": "the dataset's pose image"}
        condition = names[drawn.pop()] if len(drawn) == 1 else "per stage"
        targets = {"rows": len(rows), "dataset_keypoints": len(rows) - found.get("rows", 0),
                   "pseudo_ground_truth": found.get("rows", 0), "estimator": pseudo.config.weights,
                   "pseudo_people": found.get("people", 0),
                   "pseudo_rows_condition": condition}  # fmt: skip
        log.info("reward targets: %d row(s) with the dataset's keypoints, %d with pseudo ground "
                 "truth (%d people found by pose.estimator %s on the original images; their "
                 "condition: %s)", targets["dataset_keypoints"], targets["pseudo_ground_truth"],
                 targets["pseudo_people"], pseudo.config.weights, condition)  # fmt: skip
        atomic_write_json(paths.reward_targets, targets)
    return cache


@dataclass(frozen=True)
class ResumeRules:
    """What a resume may differ in: the :data:`ADJUSTABLE` config keys, the training data."""

    allow_config_change: bool = False
    accept_data_change: bool = False


def _make_run(
    config: Config, resume: str | None, selected: list[int], explicit: bool,
    held: contextlib.ExitStack | None = None, rules: ResumeRules = ResumeRules(),
) -> tuple[Run, Loaded | None]:  # fmt: skip
    """The run, its data and cache, and the checkpoint to resume from; the run folder's lock
    is taken first, nothing is removed or written before. The lock is held until ``held``
    closes; without ``held`` (the bench and probes that set a run up as training does), for as
    long as the returned run exists (``Run.lock``)."""
    from accelerate.utils import set_seed

    own = held is None
    held = contextlib.ExitStack() if held is None else held

    acc = make_accelerator(config)
    set_seed(config.run.seed + acc.process_index)
    paths = RunPaths.of(config)
    held.enter_context(team_lock(paths.root, "train", team_of(acc)))
    if acc.is_main_process:  # what killed writes left behind (a whole checkpoint each)
        for folder in (paths.checkpoints, paths.exports):
            remove_stale_temporaries(folder)
    check_shared(acc, paths.root, Path(config.data.cache.dir))
    loaded = None
    if resume is not None:
        loaded = load_checkpoint(resolve_checkpoint(paths.checkpoints, resume))
        check_resumable(loaded, config, acc.num_processes, is_deepspeed(acc),
                        rules.allow_config_change)  # fmt: skip
    elif not explicit:
        _refuse_a_second_start(config, paths, selected)
    _check_up_front(config, selected)
    if acc.is_main_process:
        save_config(config, paths.config)
    # The scan and the cache build are shared: every process does its share of the rows, so no
    # process waits at a barrier for the whole job (poseguide.utils.team).
    team = team_of(acc)
    source, report = checked_source(config, out_dir=paths.root, progress=team.is_main, team=team)
    identity = data_identity(source, report)
    if loaded is not None:
        check_same_data(loaded, identity, rules.accept_data_change)
    frozen = load_frozen(config, acc.device)
    cache = _open_cache(config, team, source, report.valid, frozen.parts, paths)
    metrics = MetricsLog(paths, config.train.tensorboard, enabled=acc.is_main_process)
    if loaded is not None:
        metrics.truncate_after(loaded.position.global_step)
    validator = _validator(config, acc, frozen, paths, source, report.valid)
    run = Run(Trainer(config, acc, frozen), paths, source, report.valid, cache, metrics,
              validator=validator, data=identity)  # fmt: skip
    if own:
        run.lock = held
    if cache is not None and cache.captions:  # every training caption was tokenised once
        run.trainer.captions = count_cuts(frozen.parts.tokenizer, cache.captions)
        _report_captions(run)
        # Every step's text embedding comes from the cache: the text encoder is not needed on
        # the device (validation moves it there and back).
        frozen.offload_text_encoder()
    return run, loaded


def _refuse_a_second_start(config: Config, paths: RunPaths, selected: list[int]) -> None:
    """A folder that has checkpoints is continued with --resume, never trained from step 0
    again (stages already finished are no reason: they are skipped)."""
    names = [config.train.stages[i].name for i in selected]
    pending = [n for n in names if not (paths.export(n) / STAGE_MARKER).is_file()]
    if not pending or not has_checkpoints(paths.checkpoints):
        return
    what = "an unfinished run" if not _latest_done(paths) else "checkpoints"
    raise TrainingError(
        f"{paths.root} has {what}; continue it with --resume latest (finished stages are "
        "skipped; a stage whose export is missing is exported from its final checkpoint) or "
        "choose another run.name"
    )


def _check_up_front(config: Config, selected: list[int]) -> None:
    """Everything every selected stage needs (models, data, pose weights), before any step."""
    from dataclasses import replace

    stages = [config.train.stages[i] for i in selected]
    subset = replace(config, train=replace(config.train, stages=stages))
    problems = [r for r in run_checks(training_checks(subset)) if not r.ok]
    if problems:
        listed = "; ".join(f"{r.check.what} ({r.check.target}): {r.error}" for r in problems)
        raise TrainingError(f"cannot train: {listed}")


def _report_captions(run: Run) -> None:
    """Log once how many training captions the text encoder's limit cuts; keep it for the
    report (``<run>/captions.json``)."""
    captions = run.trainer.captions
    if run.accelerator.is_main_process and captions.seen:
        log.info("%s", captions.describe("training captions"))
        atomic_write_json(run.paths.captions, captions.summary())


def _latest_done(paths: RunPaths) -> bool:
    try:
        state = load_checkpoint(resolve_checkpoint(paths.checkpoints, LATEST))
    except CheckpointError:
        return False
    return state.position.stage_done


def _validator(config: Config, acc: Any, frozen: Any, paths: RunPaths, source: Any,
               rows: list[int]) -> Any:  # fmt: skip

    return make_validator(config, acc, frozen, paths, source, rows)


def _mark_finished(run: Run, name: str, global_step: int) -> None:
    if run.accelerator.is_main_process:
        atomic_write_json(run.paths.export(name) / STAGE_MARKER,
                          {"stage": name, "global_step": global_step})  # fmt: skip
    run.accelerator.wait_for_everyone()


def run_training(
    config: Config, stages: list[str] | None = None, resume: str | None = None,
    rules: ResumeRules = ResumeRules(),
) -> dict[str, Any]:  # fmt: skip
    """Train the selected stages (default: all, skipping finished ones) and export each;
    ``rules``: what a resume may differ in.

    Returns ``{"run_dir", "exports": {stage: folder}, "global_step"}``.
    """
    selected = _stage_indices(config, stages)
    with contextlib.ExitStack() as held:
        run, loaded = _make_run(config, resume, selected, bool(stages), held, rules)
        return _run_stages(run, loaded, selected, stages)


def _run_stages(run: Run, loaded: Loaded | None, selected: list[int],
                stages: list[str] | None) -> dict[str, Any]:  # fmt: skip
    names = [stage.name for stage in run.config.train.stages]
    finished = {name for name in names if _finished(run, name) is not None}
    point = None if loaded is None else ResumePoint(loaded.position.stage_index,
                                                    loaded.position.stage_done)  # fmt: skip
    exports: dict[str, str] = {}
    global_step = 0
    run.trainer.stop.install()
    try:
        for item in plan_stages(names, selected, bool(stages), finished, point):
            if item.export_checkpoint:
                _export_from_checkpoint(run, loaded)
            if item.action == "skip":
                done = _finished(run, item.name)
                if done is not None:
                    global_step = done["global_step"]
                    exports[item.name] = str(run.paths.export(item.name))
                    if item.index in selected:
                        log.info("%s already finished (%s); --stage %s trains it again",
                                 item.name, run.paths.export(item.name), item.name)  # fmt: skip
                continue
            resumed = loaded if item.action == "resume" else None
            exports[item.name], global_step = _train(run, item.index, resumed, global_step)
        if run.cache is None or not run.cache.captions:  # counted as the steps encoded them
            _report_captions(run)
    finally:
        run.trainer.stop.restore()
        run.metrics.close()
    return {"run_dir": str(run.paths.root), "exports": exports, "global_step": global_step}


def _train(run: Run, index: int, loaded: Loaded | None, global_step: int) -> tuple[str, int]:
    """Train one stage to its end (from ``loaded`` when resuming inside it), mark it finished,
    plot its curves; returns its export folder and the global step at its end."""
    stages = run.config.train.stages
    init = stages[index].init or ("unet" if index == 0 else "previous")
    previous = run.paths.export(stages[index - 1].name) if index else None
    if init.strip().startswith(STAGE_PREFIX):  # an earlier stage's export: a branching arm
        previous, init = run.paths.export(init.strip()[len(STAGE_PREFIX) :]), "previous"
    if loaded is None:  # a fresh start of this stage: no metrics rows from an earlier attempt
        run.metrics.truncate_after(global_step)
    export, global_step = train_stage(run, index, init, previous, loaded, global_step)
    _mark_finished(run, stages[index].name, global_step)
    if run.accelerator.is_main_process:
        metrics = read_metrics(run.paths.metrics)
        plot_curves(metrics, run.paths.curves(stages[index].name), stage=stages[index].name)
        plot_curves(metrics, run.paths.curves())
    return str(export), global_step


def _export_from_checkpoint(run: Run, loaded: Loaded) -> dict:
    """A stage whose final checkpoint was written but not its export (the run was killed in
    between): export the checkpoint's weights, mark the stage finished; nothing is retrained."""
    pos = loaded.position
    acc = run.accelerator
    if acc.is_main_process:
        log.info("%s: exporting its final checkpoint %s (the export was missing)",
                 pos.stage_name, loaded.path.name)  # fmt: skip
        controlnet = loaded.build_controlnet(torch.device("cpu"))
        loaded.ema_weights_into(controlnet)  # the stage kept an EMA: that is its export
        with atomic_directory(run.paths.export(pos.stage_name)) as tmp:
            controlnet.save_pretrained(tmp, safe_serialization=True)
            write_checksums(tmp)
    acc.wait_for_everyone()
    _mark_finished(run, pos.stage_name, pos.global_step)
    return {"stage": pos.stage_name, "global_step": pos.global_step}


def train_or_resume(config: Config) -> dict[str, Any]:
    """Train every unfinished stage, continuing an interrupted run from its latest checkpoint."""
    paths = RunPaths.of(config)
    return run_training(config, resume=LATEST if has_checkpoints(paths.checkpoints) else None)
