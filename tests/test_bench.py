"""The GPU smoke script's CPU mode runs on any machine, so the script cannot rot: both stages of
the tiny preset, with figures that parse and make sense."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ("stage", "loss", "s_step", "samples_s", "gflop_sample", "mfu", "alloc", "reserved",
           "syncs_step", "finite_reads", "rss", "oom")  # fmt: skip


def _rows(stdout: str) -> dict[str, dict[str, str]]:
    """The per-stage table rows of the printout, by stage name."""
    rows = {}
    for line in stdout.splitlines():
        if line.startswith(("stage1 ", "stage2 ")):
            rows[line.split()[0]] = dict(zip(COLUMNS, line.split(), strict=True))
    return rows


@pytest.mark.slow  # ~20-35 s on 2 cores
def test_gpu_smoke_cpu_mode_prints_both_stages(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    out = tmp_path / "smoke.json"
    done = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_smoke.sh"), "--cpu", "--work", str(tmp_path / "work"),
         "--json", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = _rows(done.stdout)
    assert set(rows) == {"stage1", "stage2"}, done.stdout
    assert rows["stage1"]["loss"] == "denoising"
    assert rows["stage2"]["loss"] == "heatmap/predicted_error"
    for row in rows.values():
        assert float(row["s_step"]) > 0 and float(row["samples_s"]) > 0
        assert float(row["gflop_sample"]) > 0
        assert row["mfu"] == "n/a" and row["alloc"] == "n/a"  # no peak, no CUDA memory on a CPU
        assert row["oom"] == "no"
        # log_every 2 in --cpu mode: the window's one read every other step, finiteness in it
        assert float(row["syncs_step"]) <= 0.5
        reads, steps = map(int, row["finite_reads"].split("/"))
        assert steps > 0 and 0 < reads <= steps
    # stage 2 also runs the mask's VAE decode, pose network and VAE encode
    assert float(rows["stage2"]["gflop_sample"]) > float(rows["stage1"]["gflop_sample"])
    assert "Targets" in done.stdout and "PASS" in done.stdout
    saved = json.loads(out.read_text())
    assert [s["stage"] for s in saved["results"][0]["stages"]] == ["stage1", "stage2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smoke.json", "work"]
