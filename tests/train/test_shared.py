"""The scan and the latent cache shared by two processes are the ones a single process makes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import launch, write_config

from poseguide.config.schema import SynthConfig
from poseguide.synth.people import ensure_synthetic

ONE_STAGE = {"batch_size": 2, "checkpoint_every": 1000,
             "stages": [{"name": "stage1", "loss": {"kind": "denoising"}, "epochs": 1,
                         "lr": 1e-3}]}  # fmt: skip
SYNTH = {"n": 10, "seed": 0, "size": [64, 64]}
DATA = {
    "train": {"kind": "synthetic", "path": "data/train", "synthetic": SYNTH},
    "on_bad_row": "skip",
    "hflip": 0.5,  # the mirrored latents are cached too
    "cache": {"dir": "cache", "shard_size": 3, "batch_size": 2},
}


def _contents(root: Path) -> dict[str, object]:
    """Every file of the cache folder and the scan's outputs; the scan's JSON files without
    their measured ``seconds`` (wall time, different on every run)."""
    out: dict[str, object] = {}
    files = [*sorted((root / "cache").rglob("*")), *(root / "runs/t").glob("s*_*.json*")]
    for path in files:
        if not path.is_file():
            continue
        name = str(path.relative_to(root))
        if path.suffix == ".json" and (path.parent.name == "scans" or "summary" in path.name):
            data = json.loads(path.read_text())
            assert data.pop("seconds") >= 0
            out[name] = data
        else:
            out[name] = path.read_bytes()
    return out


@pytest.mark.slow
def test_two_processes_build_the_cache_and_the_scan_of_one(tmp_path: Path) -> None:
    """``poseguide train`` under torchrun with 2 gloo processes: each scans every other row
    and encodes its share of the shards; the cache folder (manifest and every shard), the
    cached scan and the run's scan report are those of a one-process run, byte for byte."""
    # One dataset with two bad rows, copied with its file times (they are in the fingerprint).
    data = tmp_path / "data"
    ensure_synthetic(data / "train", SynthConfig(**SYNTH), progress=False)
    (data / "train/images/00002.png").write_bytes(b"not an image")
    (data / "train/poses/00007.png").write_bytes(b"")
    single, double = tmp_path / "single", tmp_path / "double"
    for root in (single, double):
        shutil.copytree(data, root / "data")
        write_config(root, data=DATA, train=ONE_STAGE)
    launch(single)
    two = launch(double, processes=2)
    log = two.stdout + two.stderr
    assert "(process 0 of 2: rows 0, 2, ...)" in log and "caching latents (process 0 of 2)" in log
    a, b = _contents(single), _contents(double)
    assert sorted(a) == sorted(b)
    folder = next(p for p in (single / "cache").iterdir() if p.name != "scans")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert len(manifest["rows"]) == 8 and len(manifest["shards"]) == 3 + 3  # latents, text
    summary = a["runs/t/scan_summary.json"]
    assert summary["skipped"] == 2 and summary["counts"]["unreadable_image"] == 1
    assert summary["counts"]["zero_size"] == 1
    for name in a:
        assert a[name] == b[name], name
