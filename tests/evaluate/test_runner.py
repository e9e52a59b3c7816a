"""The evaluation runner end to end on tiny models: outputs, consistency, resume, preflight."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import launch, write_config

from poseguide.cli import main
from poseguide.config import load_config
from poseguide.evaluate.runner import EvaluationError, preflight, run_evaluation
from poseguide.paths import RunPaths
from poseguide.train.runner import run_training

MODELS = [
    {"name": "baseline", "controlnet": "unet"},
    {"name": "stage1", "controlnet": "stage:stage1"},
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run whose stage 1 is trained (stage 2 is not needed here)."""
    root = tmp_path_factory.mktemp("eval")
    write_config(root, train={"stages": [{"name": "stage1", "epochs": 1, "lr": 1e-3}]},
                 evaluate={"models": MODELS, "bootstrap": 50,
                           "compare": [["stage1", "baseline"]]})  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        run_training(load_config("config.yaml"))
    return root


def rows(root: Path) -> list[dict]:
    return [json.loads(x) for x in (root / "runs/t/eval/samples.jsonl").read_text().splitlines()]


def test_evaluation_end_to_end(trained: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(trained)
    assert main(["evaluate", "config.yaml"]) == 0
    printed = capsys.readouterr().out
    assert "baseline" in printed and "stage1" in printed
    eval_dir = trained / "runs/t/eval"
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    samples = rows(trained)
    assert len(samples) == 2 * 4  # two models x four eval rows
    for name in ("baseline", "stage1"):
        mine = [r for r in samples if r["model"] == name]
        m = metrics["models"][name]
        assert m["n"] == 4
        for key in ("clip", "lpips"):
            values = [r[key] for r in mine]
            assert all(np.isfinite(values))
            assert m[key]["mean"] == pytest.approx(np.mean(values), abs=1e-9)
            assert m[key]["ci_low"] <= m[key]["mean"] <= m[key]["ci_high"]
        assert all(0 <= r["clip"] <= 100 and r["lpips"] >= 0 for r in mine)
        people = [v for r in mine for v in r["per_gt_oks"] if v is not None]
        assert m["oks"]["mean"] == pytest.approx(np.mean(people), abs=1e-9)
        assert all(0 <= v <= 1 for v in people) and len(people) >= 4
        for r in mine:  # generated images are mapped back to the original size (64 x 64 here)
            assert r["size"] == [64, 64] and r["seed"] == r["index"]  # evaluate.seed 0 + index
            assert (eval_dir / "images" / name / f"{r['id']}.png").is_file()
    assert {r["seed"] for r in samples if r["model"] == "baseline"} == {
        r["seed"] for r in samples if r["model"] == "stage1"
    }
    from poseguide.evaluate.controls import pose_specific_rows

    for name in ("baseline", "stage1"):  # placement controls, recomputed from the stored rows
        mine, m = [r for r in samples if r["model"] == name], metrics["models"][name]
        detected = np.mean([r["num_dets"] > 0 for r in mine])
        assert m["detection_rate"]["mean"] == pytest.approx(detected)
        count = np.mean([abs(r["num_dets"] - r["num_gt"]) for r in mine])
        assert m["person_count_error"]["mean"] == pytest.approx(count)
        specific = [x["pose_specific"] for x in pose_specific_rows(mine)]
        assert m["pose_specific_oks"]["n"] == len(specific) == 4
        assert m["pose_specific_oks"]["mean"] == pytest.approx(np.mean(specific))
    (paired,) = metrics["comparisons"]
    assert (paired["model"], paired["against"]) == ("stage1", "baseline")
    by = {(r["model"], r["id"]): r["oks"] for r in samples}
    diffs = [by["stage1", i] - by["baseline", i] for (m_, i) in by if m_ == "stage1"]
    assert paired["oks"]["mean"] == pytest.approx(np.mean(diffs)) and paired["oks"]["n"] == 4
    setup = metrics["setup"]
    assert setup["ground_truth"] == "dataset" and "RANDOM" in setup["lpips"]
    assert setup["estimator"] == "yolo11n-pose.pt"
    # The report shows the numbers the per-sample rows average to.
    assert main(["report", "runs/t"]) == 0
    report = (eval_dir / "report.md").read_text()
    assert f"{metrics['models']['stage1']['lpips']['mean']:.3f}" in report
    assert f"{metrics['models']['baseline']['clip']['mean']:.2f}" in report
    assert (eval_dir / "report.html").read_text().count("data:image/png;base64,") >= 3
    assert "Following the pose, or placing a person?" in report
    assert "stage1 − baseline" in report and "Effects, paired by row" in report


def test_resume_skips_done_rows_and_regenerates_a_corrupt_image(
    trained: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import poseguide.evaluate.runner as runner

    monkeypatch.chdir(trained)
    config = load_config("config.yaml")
    run_evaluation(config)  # all done (from the previous test, or now)
    eval_dir = trained / "runs/t/eval"
    before = {r["id"]: r for r in rows(trained) if r["model"] == "stage1"}
    victim = sorted(before)[1]
    image = eval_dir / "images" / "stage1" / f"{victim}.png"
    original_bytes = image.read_bytes()
    image.write_bytes(original_bytes[: len(original_bytes) // 2])  # truncated: corrupt
    lines = (eval_dir / "samples.jsonl").read_text().splitlines()
    kept = [
        x
        for x in lines
        if not (json.loads(x)["model"] == "stage1" and json.loads(x)["id"] == victim)
    ]
    (eval_dir / "samples.jsonl").write_text("\n".join(kept) + "\n")
    counts: dict[str, list[int]] = {"generate_missing": [], "score_rows": []}
    for name in counts:
        real = getattr(runner, name)

        def counting(*a, _real=real, _seen=counts[name], **k):
            _seen.append(_real(*a, **k))
            return _seen[-1]

        monkeypatch.setattr(runner, name, counting)
    run_evaluation(config)
    # Only the corrupt row, and only for stage1, is generated and scored again.
    assert counts == {"generate_missing": [0, 1], "score_rows": [0, 1]}
    # Same seed, same image (up to float noise: the thread count may differ between runs).
    from io import BytesIO

    from PIL import Image

    again = np.asarray(Image.open(image), dtype=np.int16)
    first = np.asarray(Image.open(BytesIO(original_bytes)), dtype=np.int16)
    assert np.abs(again - first).max() <= 2
    after = {r["id"]: r for r in rows(trained) if r["model"] == "stage1"}
    assert after[victim]["clip"] == pytest.approx(before[victim]["clip"], abs=0.5)


def test_missing_things_are_reported_before_generation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    models = [*MODELS, {"name": "hub", "controlnet": "someone/not-here"}]
    write_config(tmp_path, evaluate={"models": models, "estimator": {"weights": "yolov8x-pose.pt"}})
    config = load_config("config.yaml", ["data.eval=null"])
    problems = preflight(config, RunPaths(tmp_path / "runs/t"))
    text = "\n".join(problems)
    assert "no eval split" in text
    assert "model 'stage1': the export" in text and "--stage stage1" in text
    assert "model 'hub'" in text and "someone/not-here" in text
    assert "pose weights" in text and "yolov8x-pose.pt" in text
    with pytest.raises(EvaluationError, match="cannot evaluate"):
        run_evaluation(config)
    assert not (tmp_path / "runs/t/eval/images").exists()  # nothing was generated


@pytest.mark.slow
def test_two_processes_share_the_rows(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(trained)
    single = run_evaluation(load_config("config.yaml"))
    root = tmp_path / "copy"
    shutil.copytree(trained, root, ignore=shutil.ignore_patterns("eval"))
    proc = launch(root, processes=2, command="evaluate")
    assert proc.stdout.count("baseline") == 1  # one summary, from the main process
    # The untrained ControlNet (model "baseline") is built by one process; the other loads it.
    assert (proc.stdout + proc.stderr).count("building the untrained ControlNet") == 1
    shared = json.loads((root / "runs/t/eval/metrics.json").read_text())
    assert len(rows(root)) == 8 and not list((root / "runs/t/eval").glob("samples-*.jsonl"))
    for name in ("baseline", "stage1"):
        for key in ("clip", "lpips", "oks"):
            assert shared["models"][name][key]["mean"] == pytest.approx(
                single["models"][name][key]["mean"], abs=0.05
            ), (name, key)


def test_the_untrained_controlnet_is_built_once_for_all_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes (threads here): the main one builds and saves it, the other waits; a
    failure there stops both instead of leaving one at the barrier."""
    from helpers import run_as_team

    import poseguide.evaluate.runner as models  # where the evaluation builds it
    from poseguide.evaluate.runner import build_untrained_once
    from poseguide.utils.team import SharedWorkError

    monkeypatch.chdir(tmp_path)
    write_config(tmp_path, evaluate={"models": MODELS})
    config = load_config("config.yaml")
    run = RunPaths.of(config)
    real, built = models.untrained_controlnet, []

    def counting(parts, seed):
        built.append(seed)
        return real(parts, seed)

    monkeypatch.setattr(models, "untrained_controlnet", counting)
    assert run_as_team(2, lambda team: build_untrained_once(config, run, team)) == [None, None]
    assert built == [config.run.seed] and (run.eval.untrained / "config.json").is_file()
    run_as_team(2, lambda team: build_untrained_once(config, run, team))
    assert len(built) == 1  # there already
    broken = load_config("config.yaml", ["run.name=u", "model.base=/nowhere"])
    failed = run_as_team(2, lambda team: build_untrained_once(broken, RunPaths.of(broken), team))
    assert isinstance(failed[1], SharedWorkError) and "process 0 of 2" in str(failed[1])
    assert not isinstance(failed[0], SharedWorkError)


@pytest.mark.parametrize("failure", ["oserror", "safetensors"])
def test_a_full_disk_while_saving_the_untrained_controlnet_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, failure: str
) -> None:
    """The reproduction: a full disk during ``evaluate`` gave safetensors' raw traceback and
    status 1 when the untrained ControlNet was saved."""
    import errno

    from diffusers import ControlNetModel
    from safetensors import SafetensorError

    def full_disk(self, folder, *args, **kwargs):
        if failure == "oserror":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise SafetensorError("Error while serializing: I/O error: No space left on device "
                              f'(os error 28) at path "{folder}/.tmpU33suZ"')  # fmt: skip

    monkeypatch.chdir(tmp_path)
    write_config(tmp_path, evaluate={"models": MODELS[:1]})  # baseline: the untrained one
    monkeypatch.setattr(ControlNetModel, "save_pretrained", full_disk)
    assert main(["evaluate", "config.yaml"]) == 2
    err = capsys.readouterr().err  # progress bars, then the error's one line
    folder = RunPaths.of(load_config("config.yaml")).eval.untrained
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(
        f"error: could not write {folder}: No space left on device; what was there before"
    ), err
    assert not folder.exists() and not list(folder.parent.glob(".*.tmp"))
