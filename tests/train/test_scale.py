"""Settings for runs at scale, checked on the CPU: torch.compile and channels-last plumbing, the
process-group time-out, the text encoder off the device when the text cache covers it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import cli_env, free_port, write_config

from poseguide.config import load_config
from poseguide.train import runner, setup

ONE_STAGE = {"stages": [{"name": "stage1", "loss": {"kind": "denoising"}, "epochs": 1,
                         "lr": 1e-3}]}  # fmt: skip


def test_compile_and_channels_last_train_and_export(tmp_path: Path, monkeypatch) -> None:
    """train.compile wraps the ControlNet and the UNet in torch.compile (here its "eager"
    backend, the same wrapping without a compiler run); checkpoints, exports and validation see
    the plain ControlNet."""
    monkeypatch.chdir(tmp_path)
    real = torch.compile
    compiled = []

    def eager(module, **kwargs):
        compiled.append(type(module).__name__)
        return real(module, backend="eager")

    monkeypatch.setattr(torch, "compile", eager)
    train = {**ONE_STAGE, "compile": True, "channels_last": True,
             "validation": {"every": 0, "num_samples": 2}}  # fmt: skip
    write_config(tmp_path, train=train)
    result = runner.run_training(load_config("config.yaml"))
    assert sorted(compiled) == ["ControlNetModel", "UNet2DConditionModel"]
    from diffusers import ControlNetModel

    export = ControlNetModel.from_pretrained(result["exports"]["stage1"])
    assert not any(k.startswith("_orig_mod") for k in export.state_dict())
    assert (tmp_path / "runs/t/validation/stage1-step-00000004.png").is_file()


def test_the_process_group_gets_the_configured_time_out(tmp_path: Path, monkeypatch) -> None:
    seen = {}
    import accelerate

    real = accelerate.Accelerator.__init__

    def spy(self, *args, kwargs_handlers=None, **kwargs):
        seen["handlers"] = kwargs_handlers
        return real(self, *args, kwargs_handlers=kwargs_handlers, **kwargs)

    monkeypatch.setattr(accelerate.Accelerator, "__init__", spy)
    setup.make_accelerator(load_config("tiny", ["train.process_timeout_s=5400"]))
    (group,) = seen["handlers"]
    assert group.timeout.total_seconds() == 5400


def test_the_text_encoder_leaves_the_device_when_the_cache_covers_the_captions(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write_config(tmp_path, train=ONE_STAGE)
    run, _ = runner._make_run(load_config("config.yaml"), None, [0], explicit=False)
    assert run.cache.captions and run.frozen.text_encoder_offloaded
    assert run.frozen.parts.text_encoder.device == torch.device("cpu")
    no_text = load_config("config.yaml", ["data.cache.text=false", "run.name=u"])
    run, _ = runner._make_run(no_text, None, [0], explicit=False)
    assert not run.frozen.text_encoder_offloaded  # each step encodes its captions


SHARED_CHECK = """
import os, sys
from pathlib import Path
from accelerate import Accelerator
from poseguide.train.setup import TrainingError, check_shared

acc = Accelerator(cpu=True)
# Two "nodes" without a shared filesystem: each process works in its own folder, so the same
# relative path names different folders.
# Each process writes its outcome to its own file (two processes' prints can interleave).
out = Path(sys.argv[1]).parent / f"rank-{acc.process_index}.txt"
os.chdir(sys.argv[1] if acc.is_main_process or sys.argv[2] == "shared" else sys.argv[1] + "-b")
try:
    check_shared(acc, Path("runs/t"), Path("cache"))
    out.write_text(f"rank {acc.process_index}: shared")
except TrainingError as err:
    out.write_text(f"rank {acc.process_index}: {err}")
acc.wait_for_everyone()
acc.end_training()
"""


@pytest.mark.parametrize("layout", ["shared", "separate"])
def test_processes_without_a_shared_run_folder_stop_together(tmp_path: Path, layout: str) -> None:
    script = tmp_path / "check.py"
    script.write_text(SHARED_CHECK)
    for folder in (tmp_path / "node", tmp_path / "node-b"):
        folder.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_port", str(free_port()), str(script), str(tmp_path / "node"), layout],
        env=cli_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [(tmp_path / f"rank-{rank}.txt").read_text() for rank in (0, 1)]
    if layout == "shared":
        assert lines == ["rank 0: shared", "rank 1: shared"]
    else:  # both raise (rank 0 too), naming the process and both folders
        assert len(lines) == 2 and all("process 1 does not see" in x for x in lines), lines
        assert "runs/t, cache" in lines[0] and "shared filesystem" in lines[0]
    assert not list((tmp_path / "node").rglob(".shared-check-*"))  # the tokens are removed


def test_training_from_the_cache_decodes_no_image(tmp_path: Path, monkeypatch) -> None:
    """With the latent cache, no training step decodes an image (stage 2's ground-truth masks
    need only the keypoints and the size); the scan and the cache build decode each image once."""
    from poseguide.data import checks

    monkeypatch.chdir(tmp_path)
    real, decoded = checks.read_image, {"image": 0, "pose image": 0}

    def counting(src, max_pixels, what="image"):
        decoded[what] += 1
        return real(src, max_pixels, what)

    stages = [{"name": "stage1", "loss": {"kind": "denoising"}, "epochs": 1, "lr": 1e-3},
              {"name": "stage2", "epochs": 1, "lr": 1e-3,
               "loss": {"kind": "heatmap", "source": "ground_truth"}}]  # fmt: skip
    write_config(tmp_path, train={"stages": stages}, data={"hflip": 0.5})
    monkeypatch.setattr(checks, "read_image", counting)
    real_train, during = runner.train_stage, []

    def counted_stage(*args, **kwargs):
        before = dict(decoded)
        out = real_train(*args, **kwargs)
        during.append({k: decoded[k] - before[k] for k in decoded})
        return out

    monkeypatch.setattr(runner, "train_stage", counted_stage)
    runner.run_training(load_config("config.yaml"))
    # 8 rows: 4 steps of 2 per stage; each item reads its pose image, no item its image.
    assert during == [{"image": 0, "pose image": 8}] * 2
