"""DeepSpeed ZeRO-1 and ZeRO-2 end to end on the CPU: two gloo processes started by
``accelerate launch`` with the shipped configs/accelerate/deepspeed_zero*.yaml, DeepSpeed's CPU
accelerator (it JIT-compiles its shared-memory op once per session, ~1 minute).

One DeepSpeed run of both stages is checked against the same run under DDP (same samples, noise,
LR schedule and clipping reach the same updates), resumed from its own checkpoints inside stage
1 and stage 2 (identical exports), and run in bf16 (exports hold the fp32 master weights)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import helpers
import pytest
import torch
from helpers import REPO, cli_env, free_port, metrics, write_config
from safetensors.torch import load_file

from poseguide.train.checkpoint import LATEST, CheckpointError, load_checkpoint
from poseguide.train.runner import check_resumable
from poseguide.train.setup import TrainingError

STAGES = ("stage1", "stage2")
# 8 rows, 2 processes x 1: 4 steps an epoch, stage 1 8 steps, stage 2 4; a warmup and decay so
# that the LR schedule DeepSpeed's optimizer sees is checked too.
TRAIN = {
    "batch_size": 1,
    "checkpoint_every": 1,
    "keep_checkpoints": 100,
    "stages": [
        {"name": "stage1", "loss": {"kind": "denoising"}, "epochs": 2, "lr": 1e-3,
         "lr_scheduler": "cosine", "warmup_steps": 3},
        {"name": "stage2", "loss": {"kind": "heatmap", "source": "predicted_error"},
         "epochs": 1, "lr": 1e-3},
    ],
}  # fmt: skip


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The CLI's environment, DeepSpeed's compiled ops kept in a temporary folder of this
    module (compiled once, nothing written to the home folder)."""
    return {**cli_env(), "TORCH_EXTENSIONS_DIR": str(tmp_path_factory.mktemp("torch-ext"))}


def launch(root: Path, env: dict[str, str], zero: int | None, *args: str) -> str:
    """``poseguide train config.yaml ARGS`` in two processes: DeepSpeed ZeRO-``zero`` through
    ``accelerate launch``, or DDP through torchrun (:func:`helpers.launch`) when ``zero`` is
    None."""
    if zero is None:
        proc = helpers.launch(root, *args, processes=2, env=env)
        return proc.stdout + proc.stderr
    launcher = ["-m", "accelerate.commands.launch", "--config_file",
                str(REPO / f"configs/accelerate/deepspeed_zero{zero}.yaml"),
                "--num_processes", "2", "--main_process_port", str(free_port())]  # fmt: skip
    proc = subprocess.run([sys.executable, *launcher, "-m", "poseguide", "train", "config.yaml",
                           *args], cwd=root, env=env, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr[-6000:]
    return proc.stdout + proc.stderr


def exported(root: Path, stage: str) -> dict[str, torch.Tensor]:
    return load_file(str(root / "runs/t/exports" / stage / "diffusion_pytorch_model.safetensors"))


def fresh(root: Path, **train: object) -> Path:
    root.mkdir()
    write_config(root, train={**TRAIN, **train})
    return root


@pytest.fixture(scope="module")
def zero2(tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]) -> Path:
    root = fresh(tmp_path_factory.mktemp("zero2") / "run")
    launch(root, env, zero=2)
    return root


@pytest.mark.slow
def test_zero2_trains_what_ddp_trains(zero2: Path, tmp_path: Path, env: dict[str, str]) -> None:
    ddp = fresh(tmp_path / "ddp")
    launch(ddp, env, zero=None)
    rows = metrics(zero2), metrics(ddp)
    assert [r["global_step"] for r in rows[0]] == list(range(1, 13))
    for a, b in zip(*rows, strict=True):
        assert (a["stage"], a["step"]) == (b["stage"], b["step"])
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-12), (a, b)
        assert abs(a["loss"] - b["loss"]) < 1e-5 and abs(a["mse"] - b["mse"]) < 1e-5, (a, b)
    assert len({r["lr"] for r in rows[0] if r["stage"] == "stage1"}) > 3  # warmup, then cosine
    for stage in STAGES:  # both fp32; Adam's sqrt(v) turns float noise into lr-sized steps
        a, b = exported(zero2, stage), exported(ddp, stage)
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].dtype == torch.float32
            rel = float((a[k] - b[k]).norm() / b[k].norm().clamp_min(1e-12))
            assert rel < 1e-3, f"{stage}: {k} differs by {rel:.2e} (relative norm)"
    # Each checkpoint holds DeepSpeed's optimizer partitions (one per process), no optimizer.pt.
    checkpoint = zero2 / "runs/t/checkpoints/step-00000012"
    assert not (checkpoint / "optimizer.pt").exists()
    parts = sorted(p.name for p in (checkpoint / "deepspeed/state").glob("*optim_states.pt"))
    assert parts == [f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)]


def _as_if_killed_after(run: Path, step: int) -> None:
    """The run folder as a kill right after checkpoint ``step`` leaves it."""
    folder = run / "runs/t"
    for checkpoint in (folder / "checkpoints").glob("step-*"):
        if int(checkpoint.name.split("-")[1]) > step:
            shutil.rmtree(checkpoint)
    (folder / "checkpoints" / LATEST).write_text(f"step-{step:08d}\n")
    for stage in STAGES:  # exports after the step (stage 1's ends at step 8)
        if step < (8 if stage == "stage1" else 12):
            shutil.rmtree(folder / "exports" / stage, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("step", [5, 10], ids=["in-stage1", "in-stage2"])
def test_zero2_resumes_from_its_checkpoints_exactly(
    zero2: Path, tmp_path: Path, env: dict[str, str], step: int
) -> None:
    run = tmp_path / "run"
    shutil.copytree(zero2, run)
    _as_if_killed_after(run, step)
    launch(run, env, 2, "--resume", "latest")
    for stage in STAGES:
        a, b = exported(zero2, stage), exported(run, stage)
        assert all(torch.equal(a[k], b[k]) for k in a), f"{stage} differs after resume at {step}"
    assert [r["global_step"] for r in metrics(run)] == list(range(1, 13))


@pytest.mark.slow
def test_zero1_bf16_exports_fp32_master_weights(tmp_path: Path, env: dict[str, str]) -> None:
    from diffusers import ControlNetModel

    root = fresh(tmp_path / "run", mixed_precision="bf16")
    launch(root, env, 1)
    for stage in STAGES:
        weights = exported(root, stage)
        assert {v.dtype for v in weights.values()} == {torch.float32}
        # DeepSpeed's bf16 module holds bf16 copies; the masters are not bf16 numbers.
        off_grid = sum(int((v != v.bfloat16().float()).sum()) for v in weights.values())
        assert off_grid > 0.9 * sum(v.numel() for v in weights.values())
        model = ControlNetModel.from_pretrained(root / "runs/t/exports" / stage)
        assert model.dtype == torch.float32
        saved = load_file(str(next((root / "runs/t/checkpoints").glob("step-*"))
                              / "controlnet.safetensors"))  # fmt: skip
        assert {v.dtype for v in saved.values()} == {torch.float32}


def test_a_checkpoint_resumes_only_under_the_engine_that_wrote_it(tmp_path: Path) -> None:
    from poseguide.config import load_config
    from poseguide.train.checkpoint import Loaded, Position

    config = load_config("tiny")
    loaded = Loaded(tmp_path, Position(0, "stage1"), 1, {}, {})
    (tmp_path / "deepspeed").mkdir()
    with pytest.raises(TrainingError, match="written under DeepSpeed .* same `accelerate launch"):
        check_resumable(loaded, config, 1, deepspeed=False)
    (tmp_path / "deepspeed").rmdir()
    with pytest.raises(TrainingError, match="written without DeepSpeed"):
        check_resumable(loaded, config, 1, deepspeed=True)


@pytest.mark.slow
def test_deepspeed_files_that_pickle_other_objects_are_refused(zero2: Path, tmp_path: Path) -> None:
    """DeepSpeed unpickles its own files; a checkpoint whose DeepSpeed folder pickles anything
    but DeepSpeed's optimizer-state classes is refused before that."""
    checkpoint = tmp_path / "step-00000012"
    shutil.copytree(zero2 / "runs/t/checkpoints/step-00000012", checkpoint)
    assert load_checkpoint(checkpoint).deepspeed
    torch.save({"x": Path("anything")}, checkpoint / "deepspeed/state/extra.pt")
    with pytest.raises(CheckpointError, match=r"extra.pt pickles pathlib.*refusing to unpickle"):
        load_checkpoint(checkpoint)
