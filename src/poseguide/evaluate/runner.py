"""``poseguide evaluate``: generate one image per eval row with every model, score them, aggregate.

Protocol (as the thesis): every model gets the same prompt, pose and seed for a row (seed =
``evaluate.seed + row index``); images are generated at ``data.resolution`` and mapped back to the
original image size (:func:`poseguide.pose.transforms.restore_image`); then

* OKS: the evaluation estimator's people in the generated image against the ground truth,
  matched greedily by detection score as COCOeval does, an unmatched person scoring 0;
* LPIPS: the generated image against the original;
* CLIP score: the generated image against the caption.

Everything is stored under ``<run>/eval/`` (see ``docs/evaluation-format.md``): a re-run skips
generated images and scored rows, regenerates a corrupt image, and continues an interrupted run.
Several processes (``accelerate launch``) share the rows: process r takes rows r, r + world, ...
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from poseguide.config import Config, to_dict
from poseguide.config.protocols import protocol_report
from poseguide.data.api import checked_source
from poseguide.data.preprocess import prepare
from poseguide.errors import UserError
from poseguide.evaluate.aggregate import _plain, aggregate
from poseguide.evaluate.checks import evaluation_checks
from poseguide.evaluate.clip import ClipScorer
from poseguide.evaluate.controls import paired_effect
from poseguide.evaluate.lpips_metric import LpipsMetric
from poseguide.evaluate.metrics import sample_oks
from poseguide.generate import generate_arrays, image_problem, load_pipeline, to_pil
from poseguide.models import load_sd_parts, load_tokenizer, untrained_controlnet
from poseguide.models.controlnet import ControlNetRef
from poseguide.paths import EvalPaths, RunPaths, file_stem  # noqa: F401 - file_stem re-exported
from poseguide.pose.api import estimator_from_config
from poseguide.pose.skeleton import NUM_COCO17
from poseguide.pose.transforms import restore_image
from poseguide.preflight import run_checks
from poseguide.pseudo import stored_pseudo
from poseguide.text import count_cuts
from poseguide.utils.device import wants_cpu
from poseguide.utils.images import ImageReadError, read_image
from poseguide.utils.io import (
    atomic_directory,
    atomic_save_image,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    write_error,
    writing,
)
from poseguide.utils.lock import team_lock
from poseguide.utils.team import Team, team_of

log = logging.getLogger(__name__)


class EvaluationError(UserError, RuntimeError):
    """The evaluation cannot start or go on; the message lists every problem found."""


def controlnet_ref(ref: str, paths: RunPaths) -> str:
    """An evaluation model's reference as a loadable location (``stage:NAME`` -> the export)."""
    return ControlNetRef.parse(ref).location(paths.exports)


def preflight(config: Config, run: RunPaths) -> list[str]:
    """Every problem that would stop the evaluation, found before any generation starts."""

    results = run_checks(evaluation_checks(config, run))
    return [f"{r.check.what}: {r.error}" for r in results if not r.ok]


@dataclass
class Row:
    """One eval row, prepared for generation (the original image is loaded when scoring)."""

    index: int
    id: str
    caption: str
    seed: int
    pose: Any  # PIL, training resolution
    placement: Any  # poseguide.pose.transforms.Placement
    gt: np.ndarray | None  # (P, 17, 3) in original pixels
    areas: np.ndarray | None


def _prepare_rows(config: Config, source: Any, indices: list[int], paths: EvalPaths) -> list[Row]:
    plain = replace(config.data, hflip=0.0, caption_dropout=0.0)
    rows = []
    for index in indices:
        sample = source.load(index)
        item = prepare(sample, index, plain, config.pose.render, config.run.seed, 0)
        if not paths.pose(sample.id).is_file():
            atomic_save_image(paths.pose(sample.id), item.pose)
        if not paths.original(sample.id).is_file():
            atomic_save_image(paths.original(sample.id), sample.image)
        rows.append(Row(index, sample.id, sample.caption, config.evaluate.seed + index, item.pose,
                        item.placement, sample.keypoints, sample.areas))  # fmt: skip
    return rows


def _ground_truth_kind(config: Config, rows: list[Row]) -> str:
    kind = config.evaluate.ground_truth
    if kind == "auto":
        kind = "dataset" if rows and all(r.gt is not None for r in rows) else "estimator"
    if kind == "dataset" and any(r.gt is None for r in rows):
        missing = next(r.id for r in rows if r.gt is None)
        raise EvaluationError(
            f"evaluate.ground_truth=dataset, but row {missing} has no keypoints; use a source "
            "with keypoints (COCO, a manifest with keypoints) or evaluate.ground_truth=estimator"
        )
    return kind


def _pseudo_ground_truth(rows: list[Row], estimator: Any, paths: EvalPaths, rank: int = 0) -> None:
    """Pseudo ground truth from the estimator on the original images (kept in the eval
    folder), by :mod:`poseguide.pseudo`'s rule."""

    found = stored_pseudo(paths.pseudo_ground_truth(rank), [row.id for row in rows],
                          lambda i: read_image(paths.original(i)), estimator)  # fmt: skip
    for row in rows:
        row.gt, row.areas = found[row.id]


def _readable(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        read_image(path, what="stored image")
        return True
    except ImageReadError as err:
        log.warning("%s; generating it again", err)
        return False


def _controlnet_folder(config: Config, ref: str, paths: EvalPaths) -> str:
    """A loadable ControlNet for ``ref``; ``unet`` is built once from the base UNet (seeded)."""
    if ControlNetRef.parse(ref).kind != "untrained":
        return ref
    folder = paths.untrained
    if not (folder / "config.json").is_file():
        log.info("building the untrained ControlNet (model unet) in %s", folder)
        parts = load_sd_parts(config.model.base, config.model.revision, config.model.variant)
        with writing(folder), atomic_directory(folder) as tmp:
            untrained_controlnet(parts, config.run.seed).save_pretrained(tmp)
    return str(folder)


def build_untrained_once(config: Config, run: RunPaths, team: Team) -> None:
    """Several processes: the main one builds and saves the untrained ControlNet (when a model
    needs it and it is not there yet), the others wait, then each loads the saved folder, so
    the base UNet is not loaded and copied by every process at once. A failure on the main
    process stops the others too (:meth:`Team.run`), instead of leaving them at the barrier."""
    refs = [controlnet_ref(m.controlnet, run) for m in config.evaluate.models]
    untrained = [ref for ref in refs if ControlNetRef.parse(ref).kind == "untrained"]
    if untrained:
        main = team.is_main
        team.run(lambda: _controlnet_folder(config, untrained[0], run.eval) if main else None)


def generate_missing(config: Config, model: Any, rows: list[Row], paths: EvalPaths,
                     run: RunPaths, device: Any) -> int:  # fmt: skip
    """Generate the rows whose image for ``model`` is missing or corrupt; returns how many."""

    todo = [r for r in rows if not _readable(paths.image(model.name, r.id))]
    if not todo:
        return 0
    if ControlNetRef.parse(model.controlnet).kind == "originals":
        for row in todo:
            original = paths.original(row.id).read_bytes()
            atomic_write_bytes(paths.image(model.name, row.id), original)
        return len(todo)
    ref = _controlnet_folder(config, controlnet_ref(model.controlnet, run), paths)
    m = config.model
    pipe = load_pipeline(m.base, ref, config.generate, device, m.revision, m.variant)
    size = (config.data.resolution,) * 2
    step = config.generate.batch_size
    from tqdm.auto import tqdm

    for start in tqdm(range(0, len(todo), step), desc=f"generating ({model.name})", unit="batch"):
        batch = todo[start : start + step]
        arrays = generate_arrays(pipe, [r.caption for r in batch], [r.pose for r in batch],
                                 [r.seed for r in batch], config.generate, size=size)  # fmt: skip
        for row, array in zip(batch, arrays, strict=True):
            _store_generated(paths, model.name, row, array)
    del pipe
    return len(todo)


def _store_generated(paths: EvalPaths, model: str, row: Row, array: np.ndarray) -> None:
    """The image, mapped back to the original size; a sidecar when it is NaN, Inf or black."""

    problem = image_problem(array)
    sidecar = paths.invalid(model, row.id)
    if problem:  # written first: an interrupted run never leaves a bad image unmarked
        atomic_write_text(sidecar, problem + "\n")
    else:
        sidecar.unlink(missing_ok=True)
    atomic_save_image(paths.image(model, row.id), restore_image(to_pil(array), row.placement))


def invalid_reason(paths: EvalPaths, model: str, row_id: str, image: Any) -> str | None:
    """Why a stored generated image cannot be scored: its sidecar's reason (NaN, Inf, black),
    or "black" for an all-black image without one; None for a usable image."""
    sidecar = paths.invalid(model, row_id)
    if sidecar.is_file():
        return sidecar.read_text().strip() or "invalid"
    return "black" if image.getextrema() in (((0, 0),) * 3, (0, 0)) else None


@dataclass
class Scorers:
    estimator: Any
    lpips: Any
    clip: Any


def make_scorers(config: Config, device: Any) -> Scorers:
    e = config.evaluate
    return Scorers(
        estimator_from_config(replace(e.estimator, device=str(device))),
        LpipsMetric(e.lpips_net, e.lpips_pretrained, device=device),
        ClipScorer(e.clip_model, device=device),
    )


def read_samples(paths: EvalPaths) -> dict[tuple[str, str], dict]:
    """Scored rows from ``samples.jsonl`` and per-process files; a torn last line is ignored."""
    done: dict[tuple[str, str], dict] = {}
    for path in [paths.samples, *sorted(paths.root.glob("samples-*.jsonl"))]:
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                done[(record["model"], record["id"])] = record
    return done


def score_rows(config: Config, model: str, rows: list[Row], scorers: Scorers, paths: EvalPaths,
               out: Path, done: dict, model_ref: str = "") -> int:  # fmt: skip
    """Score this model's generated images of ``rows`` not yet in ``done``; append to ``out``.

    An image that came out NaN, Inf or black (:func:`invalid_reason`) is not scored: its row
    says why (``"invalid"``) and has no metric values, so the means leave it out.
    """
    from tqdm.auto import tqdm

    todo = [r for r in rows if (model, r.id) not in done]
    step = max(1, config.generate.batch_size)
    for start in tqdm(range(0, len(todo), step), desc=f"scoring ({model})", unit="batch"):
        batch = todo[start : start + step]
        generated = [read_image(paths.image(model, r.id), what="generated image") for r in batch]
        originals = ControlNetRef.parse(model_ref).kind == "originals"
        reasons = [None if originals else invalid_reason(paths, model, r.id, im)
                   for r, im in zip(batch, generated, strict=True)]  # fmt: skip
        keep = [k for k, reason in enumerate(reasons) if reason is None]
        scored = _score(config, scorers, [batch[k] for k in keep], [generated[k] for k in keep],
                        paths)  # fmt: skip
        with _appending(out) as handle:
            for k, row in enumerate(batch):
                if reasons[k] is None:
                    record = _record(model, row, generated[k].size, *scored[keep.index(k)])
                else:
                    record = _invalid_record(model, row, generated[k].size, reasons[k])
                handle.write(json.dumps(record) + "\n")
                done[(model, row.id)] = record
    return len(todo)


@contextlib.contextmanager
def _appending(path: Path) -> Iterator[Any]:
    """``path`` opened for appending rows; a failed write names the file (the rows already
    written stay, and a torn last line is ignored when the rows are read again)."""

    try:
        with path.open("a", encoding="utf-8") as handle:
            yield handle
    except OSError as err:
        raise write_error(path, err) from err


def _score(config: Config, scorers: Scorers, rows: list[Row], generated: list,
           paths: EvalPaths) -> list[tuple]:  # fmt: skip
    """(clip, lpips, oks dict) of each usable generated image."""

    if not rows:
        return []
    originals = [read_image(paths.original(r.id), what="original image") for r in rows]
    lpips = scorers.lpips.scores(generated, originals)
    clip = scorers.clip.scores(generated, [r.caption for r in rows])
    found = scorers.estimator.estimate_people(generated)
    return [(clip[k], lpips[k], sample_oks(found[k], r.gt, r.areas, config.evaluate.min_oks))
            for k, r in enumerate(rows)]  # fmt: skip


def _invalid_record(model: str, row: Row, size: tuple, reason: str) -> dict:
    """A row whose generated image is NaN, Inf or black: listed, not scored (no metric)."""
    return {
        "model": model, "id": row.id, "index": row.index, "seed": row.seed,
        "caption": row.caption, "size": list(size), "invalid": reason, "clip": None,
        "lpips": None, "oks": None, "per_gt_oks": [], "num_gt": 0, "num_dets": 0, "preds": [],
        "scores": [], "gt": [], "areas": None,
    }  # fmt: skip


def _record(model: str, row: Row, size: tuple, clip: float, lpips: float, oks: dict) -> dict:
    finite = oks["num_gt"] > 0
    return {
        "model": model, "id": row.id, "index": row.index, "seed": row.seed,
        "caption": row.caption, "size": list(size), "clip": float(clip), "lpips": float(lpips),
        "oks": float(oks["mean_oks"]) if finite else None,
        "per_gt_oks": [None if np.isnan(v) else float(v) for v in oks["per_gt_oks"]],
        "num_gt": oks["num_gt"], "num_dets": oks["num_dets"],
        "preds": np.round(oks["preds"].reshape(-1, 3 * NUM_COCO17), 3).tolist(),
        "scores": [round(float(s), 5) for s in oks["scores"]],
        "gt": oks["gts"].reshape(-1, 3 * NUM_COCO17).tolist(),
        "areas": None if row.areas is None else [float(a) for a in row.areas],
    }  # fmt: skip


def _caption_cuts(config: Config, scorers: Scorers, records: list[dict]) -> dict:
    """How many eval captions the generation's text encoder and the CLIP score cut (logged)."""

    captions = sorted({r["caption"] for r in records})
    out = {}
    for what, cuts in (
        ("generation", count_cuts(load_tokenizer(config.model.base, config.model.revision),
                                  captions)),
        ("clip_score", scorers.clip.caption_cuts(captions)),
    ):  # fmt: skip
        log.info("%s", cuts.describe(f"eval captions ({what.replace('_', ' ')})"))
        out[what] = cuts.summary()
    return out


def _setup(config: Config, run: RunPaths, scorers: Scorers, gt_kind: str, rows: int) -> dict:
    e = config.evaluate
    fid = {"feature": e.fid_feature, "kid_subset_size": e.kid_subset_size} if e.fid else None
    gt = "dataset" if gt_kind == "dataset" else "estimator (pseudo ground truth)"
    return {
        "base_model": config.model.base,
        "models": {m.name: controlnet_ref(m.controlnet, run) for m in e.models},
        "generate": to_dict(config.generate),
        "resolution": config.data.resolution,
        "seed": e.seed,
        "seeds": f"row index + {e.seed}, the same for every model",
        "estimator": str(e.estimator.weights),
        "lpips": scorers.lpips.describe(),
        "clip": scorers.clip.describe(),
        "ground_truth": gt,
        "min_oks": e.min_oks,
        "matching": "greedy by detection score, as COCOeval; unmatched ground truth scores 0",
        "eval_source": f"{config.data.eval.kind}:{config.data.eval.path}",
        "rows": rows,
        "limit": e.limit,
        "bootstrap": e.bootstrap,
        "confidence": e.confidence,
        "coco": {
            "area": e.coco_area,
            "batch": e.coco_batch,
            "cap_variant": e.cap_variant,
            "files": "coco/<model>/ground_truth.json + results.json",
        },
        "fid": fid,
        "fid_clip": f"Fréchet distance of {e.clip_model}'s image embeddings"
        if e.fid_clip
        else None,
        "protocol": protocol_report(to_dict(config)),
        "config": to_dict(config),
    }


def _finish(config: Config, run: RunPaths, scorers: Scorers, gt_kind: str) -> dict:
    """Merge the per-process rows into samples.jsonl and write metrics.json (main process)."""

    paths = run.eval
    done = read_samples(paths)
    order = {m.name: k for k, m in enumerate(config.evaluate.models)}
    records = sorted(done.values(), key=lambda r: (order.get(r["model"], 99), r["index"]))
    atomic_write_text(paths.samples, "".join(json.dumps(r) + "\n" for r in records))
    for part in paths.root.glob("samples-*.jsonl"):
        part.unlink()
    models = {}
    for model in config.evaluate.models:
        mine = [r for r in records if r["model"] == model.name]
        models[model.name] = {"controlnet": model.controlnet,
                              "resolved": controlnet_ref(model.controlnet, run),
                              **aggregate(config, mine, paths, model.name,
                                          scorers.clip)}  # fmt: skip
    rows = len({r["id"] for r in records})
    setup = _setup(config, run, scorers, gt_kind, rows)
    setup["captions"] = _caption_cuts(config, scorers, records)
    e = config.evaluate
    stats = {"n": e.bootstrap, "confidence": e.confidence, "seed": e.seed}
    comparisons = [paired_effect(records, a, b, **stats) for a, b in e.compare]
    metrics = _plain({"models": models, "comparisons": comparisons, "setup": setup})
    atomic_write_json(paths.metrics, metrics)
    return metrics


def run_evaluation(config: Config, limit: int | None = None) -> dict:
    """Evaluate every configured model on the eval split; returns what metrics.json holds."""
    from accelerate import PartialState

    state = PartialState(cpu=wants_cpu(config.run.device))
    team = team_of(state)
    run = RunPaths.of(config)
    with team_lock(run.root, "evaluate", team):  # nothing is written before it is held
        return _evaluate(config, limit, state, team, run)


def _evaluate(config: Config, limit: int | None, state: Any, team: Team, run: RunPaths) -> dict:
    paths = run.eval
    problems = preflight(config, run)
    if problems:
        raise EvaluationError("cannot evaluate:\n  - " + "\n  - ".join(problems))
    source, report = checked_source(config, config.data.eval, out_dir=paths.root,
                                    progress=team.is_main, team=team)  # fmt: skip
    build_untrained_once(config, run, team)
    indices = report.valid[: limit or config.evaluate.limit or None]
    rows = _prepare_rows(config, source, indices[state.process_index :: state.num_processes], paths)
    gt_kind = _ground_truth_kind(config, rows)
    scorers = make_scorers(config, state.device)
    if gt_kind == "estimator":
        _pseudo_ground_truth(rows, scorers.estimator, paths, state.process_index)
    for model in config.evaluate.models:
        generate_missing(config, model, rows, paths, run, state.device)
    done, out = read_samples(paths), paths.samples_part(state.process_index)
    for model in config.evaluate.models:
        score_rows(config, model.name, rows, scorers, paths, out, done, model.controlnet)
    state.wait_for_everyone()
    metrics = _finish(config, run, scorers, gt_kind) if state.is_main_process else {}
    state.wait_for_everyone()
    return metrics
