"""The command line: each command works end to end and bad input is one clear line."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from poseguide.cli import main

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "openpose-reference"


@pytest.mark.parametrize("style", ["controlnet10", "controlnet_aux"])
def test_pose_render_matches_reference(tmp_path: Path, style: str) -> None:
    out = tmp_path / "pose.png"
    assert (
        main(
            [
                "pose",
                "render",
                str(FIXTURES / "two_people.json"),
                "--out",
                str(out),
                "--style",
                style,
            ]
        )
        == 0
    )
    expected = np.asarray(Image.open(FIXTURES / f"two_people.{style}.png").convert("RGB"))
    assert np.array_equal(np.asarray(Image.open(out)), expected)


def test_pose_render_needs_a_size(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = json.loads((FIXTURES / "standing.json").read_text())
    del data["canvas_size"]
    path = tmp_path / "nosize.json"
    path.write_text(json.dumps(data))
    assert main(["pose", "render", str(path), "--out", str(tmp_path / "a.png")]) == 2
    assert "pass the canvas size with --size W H" in capsys.readouterr().err
    assert (
        main(
            ["pose", "render", str(path), "--out", str(tmp_path / "a.png"), "--size", "300", "600"]
        )
        == 0
    )
    assert Image.open(tmp_path / "a.png").size == (300, 600)


def test_pose_render_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"people": [{"keypoints": [1, 2, 3]}]}))
    assert main(["pose", "render", str(path), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "bad.json: person 0: 'keypoints' has 3 values, expected 51" in err
    assert not (tmp_path / "x.png").exists()


def test_pose_estimate_astronaut(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from skimage import data

    photo = tmp_path / "astronaut.jpg"
    Image.fromarray(data.astronaut()).save(photo, quality=95)
    out, drawing = tmp_path / "kp.json", tmp_path / "kp.png"
    assert main(["pose", "estimate", str(photo), "--out", str(out), "--render", str(drawing)]) == 0
    assert "1 person found" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert (result["width"], result["height"]) == (512, 512) and len(result["people"]) == 1
    nose = result["people"][0]["keypoints"][:3]
    assert abs(nose[0] - 222) < 8 and abs(nose[1] - 125) < 8 and nose[2] == 2
    # The drawing is the skeleton rendered from the written keypoints: it round-trips.
    assert main(["pose", "render", str(out), "--out", str(tmp_path / "again.png")]) == 0
    assert np.array_equal(
        np.asarray(Image.open(drawing)), np.asarray(Image.open(tmp_path / "again.png"))
    )


def test_pose_estimate_missing_weights(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    photo = tmp_path / "p.png"
    Image.new("RGB", (64, 64)).save(photo)
    code = main(
        ["pose", "estimate", str(photo), "--out", str(tmp_path / "k.json"),
         "pose.estimator.weights=yolov8x-pose.pt"]
    )  # fmt: skip
    assert code == 2
    assert "yolov8x-pose.pt" in capsys.readouterr().err


def test_pose_estimate_unreadable_image(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    photo = tmp_path / "broken.png"
    photo.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert main(["pose", "estimate", str(photo), "--out", str(tmp_path / "k.json")]) == 2
    assert "broken.png: cannot read the image" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_runs_the_whole_pipeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, caplog
) -> None:
    """The demo's pipeline on a fresh folder, with the fast tiny preset (the default, mini,
    takes about 8 minutes: tests/train/test_science.py checks that it learns): pose toolkit,
    training, evaluation, report; then reused."""
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO)
    assert main(["demo", "--config", "tiny"]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    # The synthetic captions are longer than 77 tokens: cut once, quietly, and counted once.
    logged = [r.getMessage() for r in caplog.records] + captured.err.splitlines()
    assert not [m for m in logged if "truncated because CLIP" in m or "Token indices" in m]
    assert sum("training captions:" in m for m in logged) == 1
    assert json.loads((tmp_path / "runs/tiny/captions.json").read_text())["cut"] > 0
    run = tmp_path / "runs" / "tiny"
    assert "1 person(s) found" in printed and "Report: runs/tiny/eval/report.html" in printed
    phases = re.search(r"demo wall time (\d+) s \(pose toolkit (\d+) s, data \+ training "
                       r"(\d+) s, evaluation (\d+) s, report (\d+) s\)", printed)  # fmt: skip
    assert phases, printed[-500:]
    total, *parts = map(int, phases.groups())
    assert sum(parts) <= total + len(parts)  # the phases are parts of the whole (rounded)
    for name in (
        "summary.png",
        "pose_controlnet10.png",
        "pose_controlnet_aux.png",
        "keypoints.json",
    ):
        assert (run / "pose_demo" / name).is_file(), name
    for stage in ("stage1", "stage2"):
        assert (run / "exports" / stage / "diffusion_pytorch_model.safetensors").is_file()
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert set(metrics["models"]) == {"baseline", "stage1", "stage2", "originals"}
    # The real images score what the metrics give at best: LPIPS 0 and a clearly positive OKS.
    assert metrics["models"]["originals"]["lpips"]["mean"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["models"]["originals"]["oks"]["mean"] > 0.5
    for line in ("baseline", "stage1", "stage2", "originals"):
        assert any(row.startswith(line) for row in printed.splitlines())
    # Running it again reuses everything: no training step, no generation.
    stamp = (run / "metrics.jsonl").stat().st_mtime_ns
    assert main(["demo", "--config", "tiny"]) == 0
    assert (run / "metrics.jsonl").stat().st_mtime_ns == stamp


def test_the_demo_runs_the_mini_world_by_default() -> None:
    from poseguide.cli import build_parser

    args = build_parser().parse_args(["demo"])
    assert args.config == "mini"
