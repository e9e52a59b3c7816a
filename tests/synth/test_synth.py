"""The synthetic people dataset: determinism, manifest contents, captions, reuse, and whether a
real pose estimator sees the drawn people where the ground truth says they are."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import poseguide.synth.people as synth
from poseguide.config.schema import SynthConfig
from poseguide.pose.render import render_skeleton
from poseguide.pose.skeleton import COCO17_NAMES, NUM_COCO17, validate_keypoints
from poseguide.synth.draw import COLORS
from poseguide.synth.poses import POSE_FAMILIES, mirror_pose, sample_pose

SIZE = (160, 128)  # (width, height): not square, so x and y mix-ups show


def read_manifest(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.*"))}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    return synth.synthesize(out, n=12, seed=3, size=SIZE, two_people=0.5, progress=False)


@pytest.fixture(scope="module")
def rows(dataset) -> list[dict]:
    return read_manifest(dataset)


# ------------------------------------------------------------------------------- files


def test_manifest_rows_point_at_files_of_the_right_size(dataset, rows) -> None:
    assert dataset.name == "manifest.jsonl" and len(rows) == 12
    for i, row in enumerate(rows):
        assert set(row) == {"id", "image", "pose_image", "caption", "keypoints", "areas",
                            "width", "height"}  # fmt: skip
        assert row["id"] == f"synth-{i:05d}" and row["image"] == f"images/{i:05d}.png"
        assert row["pose_image"] == f"poses/{i:05d}.png"
        assert (row["width"], row["height"]) == SIZE
        for key in ("image", "pose_image"):
            with Image.open(dataset.parent / row[key]) as image:
                assert image.mode == "RGB" and image.size == SIZE
    info = json.loads((dataset.parent / "synth_info.json").read_text())
    assert info == {"n": 12, "seed": 3, "size": list(SIZE), "two_people": 0.5,
                    "version": synth.SYNTH_VERSION}  # fmt: skip


def test_same_seed_gives_byte_identical_files(dataset, tmp_path) -> None:
    again = synth.synthesize(tmp_path, n=12, seed=3, size=SIZE, two_people=0.5, progress=False)
    assert folder_bytes(again.parent) == folder_bytes(dataset.parent)


def test_sample_does_not_depend_on_n_and_seeds_differ(tmp_path) -> None:
    five = synth.synthesize(tmp_path / "a", n=5, seed=8, size=SIZE, progress=False)
    ten = synth.synthesize(tmp_path / "b", n=10, seed=8, size=SIZE, progress=False)
    other = synth.synthesize(tmp_path / "c", n=5, seed=9, size=SIZE, progress=False)
    assert read_manifest(ten)[:5] == read_manifest(five)
    for i in range(5):
        name = f"images/{i:05d}.png"
        assert (ten.parent / name).read_bytes() == (five.parent / name).read_bytes()
        assert (other.parent / name).read_bytes() != (five.parent / name).read_bytes()
    assert read_manifest(other) != read_manifest(five)


def test_negative_and_large_seeds_work() -> None:
    a, b = synth.make_sample(-1, 0, SIZE), synth.make_sample(2**40, 0, SIZE)
    assert a.caption and b.caption and not np.array_equal(a.image, b.image)


# ------------------------------------------------------------------------------- keypoints


def test_keypoints_are_valid_and_visible_joints_lie_inside(rows) -> None:
    for row in rows:
        assert all(len(person) == 3 * NUM_COCO17 for person in row["keypoints"])
        kps = validate_keypoints(row["keypoints"], where=row["id"])
        v = kps[..., 2]
        assert set(np.unique(v)) <= {0.0, 2.0}
        visible = kps[v > 0]
        assert (visible[:, 0] >= 0).all() and (visible[:, 0] < SIZE[0]).all()
        assert (visible[:, 1] >= 0).all() and (visible[:, 1] < SIZE[1]).all()
        assert (kps[v == 0] == 0).all()  # COCO: unlabelled joints are (0, 0, 0)
        body = kps[:, 5:, 2]  # shoulders down: never turned away, only ever cut off
        assert (body > 0).sum() >= 0.5 * body.size


def test_left_joints_are_on_the_image_right_when_facing_the_camera() -> None:
    pose = sample_pose(np.random.default_rng(0), "arms_out")
    assert mirror_pose(mirror_pose(pose)) == pose
    for index in range(40):
        sample = synth.make_sample(5, index, (256, 256), two_people=0.0)
        person = sample.people[0]
        if abs(person.pose.yaw) < 20 and sample.keypoints[0, 5:7, 2].all():
            left, right = sample.keypoints[0, [5, 6], 0]
            assert left > right, f"sample {index}: left shoulder at {left}, right at {right}"


def test_pose_image_is_render_skeleton_of_the_manifest_keypoints(dataset, rows) -> None:
    for row in rows:
        pose = np.asarray(Image.open(dataset.parent / row["pose_image"]))
        expected = render_skeleton(np.asarray(row["keypoints"], dtype=float), SIZE)
        np.testing.assert_array_equal(pose, expected, err_msg=row["id"])


def test_one_and_two_people_both_occur(rows) -> None:
    counts = {len(row["keypoints"]) for row in rows}
    assert counts == {1, 2}
    assert all(len(synth.make_sample(1, i, SIZE, 0.0).people) == 1 for i in range(6))
    assert all(len(synth.make_sample(1, i, SIZE, 1.0).people) == 2 for i in range(6))


def test_all_pose_families_can_be_drawn() -> None:
    rng = np.random.default_rng(0)
    for family in POSE_FAMILIES:
        for _ in range(3):
            pose = sample_pose(rng, family)
            assert pose.family == family


# ------------------------------------------------------------------------------- captions


def nearest_color(rgb: np.ndarray) -> str:
    names = list(COLORS)
    distances = [np.linalg.norm(rgb - np.array(COLORS[k])) for k in names]
    return names[int(np.argmin(distances))]


def test_captions_name_the_colours_that_are_drawn(rows) -> None:
    assert all(row["caption"].strip() for row in rows)
    assert [row["caption"] for row in rows] == [
        synth.make_sample(3, i, SIZE, 0.5).caption for i in range(len(rows))
    ]
    matches, total = 0, 0
    for index in range(30):
        sample = synth.make_sample(11, index, (256, 256), two_people=0.3)
        text = sample.caption
        assert text.strip() and "{" not in text and "  " not in text
        if len(sample.people) == 1:
            assert "two people" not in text and "next to" not in text
        for person, outfit in zip(sample.people, sample.outfits, strict=True):
            assert outfit.top_color in text
            assert outfit.bottom == "dress" or outfit.bottom_color in text
            centre = (person.points["neck"] + person.points["pelvis"]) / 2
            x, y = int(centre[0]), int(centre[1])
            pixel = sample.image[y - 1 : y + 2, x - 1 : x + 2].reshape(-1, 3).mean(axis=0)
            matches += nearest_color(pixel) == outfit.top_color
            total += 1
    # An arm or a nearer person can cover the middle of the chest now and then.
    assert matches >= 0.85 * total, f"torso colour matched the caption in {matches}/{total}"


def test_captions_vary() -> None:
    captions = [synth.make_sample(2, i, SIZE).caption for i in range(20)]
    assert len(set(captions)) == 20
    assert len({c.split()[0] for c in captions}) >= 3


# ------------------------------------------------------------------------------- areas


def test_areas_are_the_silhouette_sizes(rows) -> None:
    for index in range(8):
        sample = synth.make_sample(4, index, (256, 256), two_people=0.5)
        np.testing.assert_array_equal(sample.areas, sample.masks.sum(axis=(1, 2)))
        for person, area in zip(sample.people, sample.areas, strict=True):
            # A silhouette covers about a fifth of its height squared (a real body ~0.16-0.2).
            assert 0.1 < area / person.scale**2 < 0.35
    for row in rows:
        assert all(a > 0 for a in row["areas"]) and len(row["areas"]) == len(row["keypoints"])


# ------------------------------------------------------------------------------- reuse


def test_ensure_synthetic_reuses_and_regenerates(tmp_path, monkeypatch) -> None:
    cfg = SynthConfig(n=4, seed=1, size=(96, 64), two_people=0.3)
    manifest = synth.ensure_synthetic(tmp_path, cfg, progress=False)
    first = folder_bytes(tmp_path)

    def fail(*args, **kwargs):
        raise AssertionError("a matching set must be reused")

    with monkeypatch.context() as patch:
        patch.setattr(synth, "synthesize", fail)
        assert synth.ensure_synthetic(tmp_path, cfg, progress=False) == manifest
    assert folder_bytes(tmp_path) == first

    smaller = SynthConfig(n=2, seed=2, size=(96, 64), two_people=0.3)
    synth.ensure_synthetic(tmp_path, smaller, progress=False)
    rows = read_manifest(manifest)
    assert len(rows) == 2 and rows != read_manifest_from(first)
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["00000.png", "00001.png"]

    (tmp_path / "images" / "00001.png").unlink()  # a damaged set is regenerated too
    synth.ensure_synthetic(tmp_path, smaller, progress=False)
    assert (tmp_path / "images" / "00001.png").is_file()


def read_manifest_from(files: dict[str, bytes]) -> list[dict]:
    return [json.loads(line) for line in files["manifest.jsonl"].decode().splitlines()]


def test_interrupted_run_leaves_no_manifest(tmp_path, monkeypatch) -> None:
    synth.synthesize(tmp_path, n=3, seed=0, size=(64, 64), progress=False)
    real = synth.make_sample

    def crash(seed, index, *args, **kwargs):
        if index == 2:
            raise KeyboardInterrupt
        return real(seed, index, *args, **kwargs)

    monkeypatch.setattr(synth, "make_sample", crash)
    with pytest.raises(KeyboardInterrupt):
        synth.synthesize(tmp_path, n=3, seed=5, size=(64, 64), progress=False)
    assert not (tmp_path / "manifest.jsonl").exists()
    assert not (tmp_path / "synth_info.json").exists()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n": 0}, "n must be at least 1"),
        ({"size": (16, 64)}, "at least 32x32"),
        ({"two_people": 1.5}, r"two_people must be a probability in \[0, 1\]"),
    ],
)
def test_bad_parameters_are_named(tmp_path, kwargs, match) -> None:
    args = {"n": 2, "seed": 0, "size": (64, 64), "two_people": 0.3, "progress": False} | kwargs
    with pytest.raises(ValueError, match=match):
        synth.synthesize(tmp_path, **args)


# ------------------------------------------------------------------------------- estimator

# Measured with yolo11n-pose on this generator (seeds 0 and 1, 40 images each, 30% with two
# people): every person found at 256 and 512 px, mean OKS 0.90-0.92. The thresholds leave margin.
MIN_DETECTION_RATE = 0.85
MIN_MEAN_OKS = 0.8


def test_a_real_pose_estimator_finds_the_people() -> None:
    from poseguide.pose.oks import mean_oks
    from poseguide.pose.yolo import YoloPoseEstimator

    samples = [synth.make_sample(21, i, (256, 256), two_people=0.0) for i in range(12)]
    detections = YoloPoseEstimator(device="cpu").estimate_people([s.image for s in samples])
    result = mean_oks(
        [
            (d.keypoints, d.scores, s.keypoints, s.areas)
            for d, s in zip(detections, samples, strict=True)
        ]
    )
    rate = result["num_matched"] / result["num_gt"]
    assert rate >= MIN_DETECTION_RATE, f"found {result['num_matched']}/{result['num_gt']}"
    assert result["mean_oks"] > MIN_MEAN_OKS, result["per_gt_oks"]
    shoulders = [COCO17_NAMES.index(k) for k in ("left_shoulder", "right_shoulder")]
    assert all(result["per_joint_accuracy"][j] > 0.8 for j in shoulders)
