"""Keypoint JSON files: read, write, and an error that names the file, person and joint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from poseguide.pose.io import parse_pose, read_pose, write_pose
from poseguide.pose.skeleton import KeypointError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "openpose-reference"


def flat(seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    kps = np.concatenate([rng.uniform(0, 200, (17, 2)), np.full((17, 1), 2.0)], axis=1)
    return kps.reshape(-1).round(3).tolist()


def test_round_trip(tmp_path: Path) -> None:
    people = np.array([flat(0), flat(1)]).reshape(2, 17, 3)
    people[1, 4, 2] = 0
    path = write_pose(
        tmp_path / "k.json", people, size=(320, 240), scores=np.array([0.9, 0.4]), image="a.png"
    )
    loaded = read_pose(path)
    np.testing.assert_allclose(loaded.people, people, atol=1e-3)
    assert loaded.size == (320, 240) and loaded.scores == [0.9, 0.4]
    raw = json.loads(path.read_text())
    assert raw["image"] == "a.png" and raw["people"][1]["num_keypoints"] == 16
    x, y, w, h = raw["people"][0]["bbox"]
    assert y == pytest.approx(people[0, :, 1].min(), abs=1e-3)
    assert h == pytest.approx(np.ptp(people[0, :, 1]), abs=1e-3)
    assert x == pytest.approx(people[0, :, 0].min(), abs=1e-3)
    assert w == pytest.approx(np.ptp(people[0, :, 0]), abs=1e-3)


@pytest.mark.parametrize(
    "data",
    [
        {"people": [{"keypoints": flat()}]},
        {"annotations": [{"keypoints": flat()}]},
        {"people_coco17": [{"keypoints": flat()}], "canvas_size": [512, 512]},
        [{"keypoints": flat()}],
        {"keypoints": flat()},
    ],
)
def test_accepted_layouts(data: object) -> None:
    pose = parse_pose(data)
    assert pose.people.shape == (1, 17, 3)


def test_reference_fixtures_parse() -> None:
    pose = read_pose(FIXTURES / "two_people.json")
    assert pose.people.shape == (2, 17, 3) and pose.size == (512, 512)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"people": [{"keypoints": flat()[:-1]}]},
            "person 0: 'keypoints' has 50 values, expected 51",
        ),
        (
            {"people": [{"kp": flat()}]},
            "person 0: each person must be a mapping with a 'keypoints'",
        ),
        (
            {"people": [{"keypoints": flat()}, {"keypoints": ["a"] * 51}]},
            "person 1: 'keypoints' must contain only numbers",
        ),
        ({"people": "x"}, "'people' must be a list"),
        ({"persons": []}, "no people found"),
        ({"people": [{"keypoints": flat()}], "width": 0, "height": 3}, "size must be positive"),
    ],
)
def test_malformed_files_give_named_errors(data: object, message: str) -> None:
    with pytest.raises(KeypointError, match=message):
        parse_pose(data, "pose.json")


def test_bad_visibility_names_joint(tmp_path: Path) -> None:
    values = flat()
    values[3 * 7 + 2] = 5  # left_elbow visibility
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"people": [{"keypoints": values}]}))
    with pytest.raises(KeypointError, match=r"bad.json: person 0, joint 7 \(left_elbow\)"):
        read_pose(path)


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="keypoint file not found"):
        read_pose(tmp_path / "none.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(KeypointError, match="broken.json: not valid JSON"):
        read_pose(tmp_path / "broken.json")


def test_deeply_nested_json_is_one_line_everywhere_pose_json_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A pose JSON nested 100000 deep was a RecursionError traceback in ``pose render``,
    ``generate``, dataset keypoint cells and the app."""
    from poseguide.cli import main
    from poseguide.data.checks import parse_keypoints
    from poseguide.data.record import RowError

    deep = "[" * 100_000 + "]" * 100_000
    path = tmp_path / "deep.json"
    path.write_text(deep)
    with pytest.raises(KeypointError, match=r"deep.json: not a keypoint file: .*nested too deeply"):
        read_pose(path)
    capsys.readouterr()
    out = str(tmp_path / "o.png")
    assert main(["pose", "render", str(path), "--out", out]) == 2
    generate = ["generate", "--controlnet", "unused", "--prompt", "p", "--pose", str(path)]
    assert main([*generate, "--out", str(tmp_path / "gen")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all(f"{path}: not a keypoint file" in line for line in lines)
    with pytest.raises(RowError, match="nested too deeply"):  # a dataset's keypoints cell
        parse_keypoints(deep, "row 3")


def test_a_keypoint_file_over_the_size_limit_is_refused_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import poseguide.pose.io as pose_io

    monkeypatch.setattr(pose_io, "MAX_POSE_JSON_BYTES", 1000)
    path = write_pose(tmp_path / "p.json", np.zeros((1, 17, 3)), size=(64, 64))
    assert read_pose(path).size == (64, 64)  # under the limit: read
    path.write_text(path.read_text() + " " * 1000)  # valid JSON, but over the limit
    with pytest.raises(KeypointError, match=r"p.json: over 1,000 bytes"):
        read_pose(path)
