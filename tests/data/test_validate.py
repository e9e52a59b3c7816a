"""Every bad-row class: its named RowError under `error`, skipped and counted under `skip`."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from datasets import Image as ImageFeature
from datasets import Value
from PIL import Image, ImageFile

from poseguide.data.checks import check_sample, open_image
from poseguide.data.coco import CocoSource
from poseguide.data.hub import HubSource
from poseguide.data.manifest import ManifestSource
from poseguide.data.record import ROW_PROBLEMS, RowError, Sample
from poseguide.data.validate import SKIPPED_FILE, SUMMARY_FILE, load_checked, scan
from poseguide.utils.images import DEFAULT_MAX_IMAGE_PIXELS

LIMIT = 4096  # max_image_pixels in these tests: 64 x 64


def good_row(make, name: str = "good") -> dict:
    make.write(f"{name}.png", make.pixels(32, 24, 0))
    make.write(f"{name}_pose.png", make.pixels(32, 24, 1))
    return {"id": name, "image": f"{name}.png", "pose_image": f"{name}_pose.png", "caption": "ok"}


def bad_row(make, case: str) -> dict:
    """A manifest row with one problem; writes the files it needs."""
    row = {"id": f"bad-{case}", "image": "bad.png", "pose_image": "good_pose.png", "caption": "c"}
    png = make.encode(make.pixels(32, 24, 2), "PNG")
    jpeg = make.encode(make.pixels(32, 24, 2), "JPEG")
    image_bytes = {
        "not_an_image": b"this is not an image",
        "corrupt_png": png[:60] + bytes(b ^ 0x55 for b in png[60:120]) + png[120:],
        "truncated_png": png[: len(png) - 20],  # cut inside the compressed data
        "truncated_jpeg": jpeg[: len(jpeg) // 2],
        "empty_file": b"",
        "zero_width": make.png_header(0, 24),
        "over_limit": make.encode(make.pixels(80, 60, 3), "PNG"),
        "bomb_header": make.png_header(30000, 30000),
    }
    if case in image_bytes:
        make.write("bad.png", image_bytes[case])
    elif case == "missing_file":
        row["image"] = "nowhere/missing.png"
    elif case == "missing_pose_file":
        make.write("bad.png", png)
        row["pose_image"] = "missing_pose.png"
    elif case == "pose_size":
        make.write("bad.png", make.encode(make.pixels(30, 24, 2), "PNG"))
    else:
        make.write("bad.png", png)
        row.update(
            {
                "empty_caption": {"caption": ""},
                "blank_caption": {"caption": "  \n"},
                "number_caption": {"caption": 42},
                "no_caption": {"caption": None},
                "keypoints_shape": {"keypoints": [[1.0] * 50]},
                "keypoints_nan": {"keypoints": [[float("nan")] + [1.0] * 50]},
                "keypoints_visibility": {"keypoints": [[1.0, 1.0, 3.0] * 17]},
                "areas_mismatch": {"keypoints": [[1.0, 1.0, 2.0] * 17], "areas": [1.0, 2.0]},
                "no_pose": {"pose_image": None},
            }[case]
        )
    return row


CASES = {
    "missing_file": "missing_file",
    "missing_pose_file": "missing_file",
    "no_pose": "missing_file",
    "not_an_image": "unreadable_image",
    "corrupt_png": "unreadable_image",
    "truncated_png": "unreadable_image",
    "truncated_jpeg": "unreadable_image",
    "empty_file": "zero_size",
    "zero_width": "zero_size",
    "over_limit": "too_many_pixels",
    "bomb_header": "too_many_pixels",
    "pose_size": "pose_size_mismatch",
    "empty_caption": "bad_caption",
    "blank_caption": "bad_caption",
    "number_caption": "bad_caption",
    "no_caption": "bad_caption",
    "keypoints_shape": "bad_keypoints",
    "keypoints_nan": "bad_keypoints",
    "keypoints_visibility": "bad_keypoints",
    "areas_mismatch": "bad_keypoints",
}


def test_every_problem_is_covered() -> None:
    assert set(CASES.values()) == set(ROW_PROBLEMS)


@pytest.mark.parametrize(("case", "problem"), CASES.items())
def test_manifest_bad_rows(make, tmp_path: Path, case: str, problem: str) -> None:
    rows = [good_row(make), bad_row(make, case), good_row(make, "good2")]
    source = ManifestSource(make.manifest(rows), max_image_pixels=LIMIT)
    with pytest.raises(RowError) as info:
        scan(source, "error", progress=False)
    assert info.value.problem == problem and info.value.row == f"bad-{case}"
    assert f"row bad-{case}: {problem}: " in str(info.value)
    assert "data.on_bad_row=skip" in str(info.value)

    out = tmp_path / "run"
    report = scan(source, "skip", out, progress=False)
    assert report.valid == [0, 2] and report.total == 3
    assert report.counts[problem] == 1 and sum(report.counts.values()) == 1
    lines = (out / SKIPPED_FILE).read_text().splitlines()
    assert len(lines) == 1
    skipped = json.loads(lines[0])
    assert skipped["index"] == 1 and skipped["id"] == f"bad-{case}"
    assert skipped["problem"] == problem and skipped["detail"]
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["skipped"] == 1 and summary["valid"] == 2 and summary["counts"][problem] == 1


def test_messages_name_the_path(make) -> None:
    rows = [bad_row(make, "missing_file")]
    with pytest.raises(RowError, match=r"row bad-missing_file: missing_file: image .*missing.png"):
        load_checked(ManifestSource(make.manifest(rows)), 0)
    rows = [bad_row(make, "over_limit")]
    with pytest.raises(RowError, match=r"80x60 = 4800 pixels, over the limit of 4096"):
        load_checked(ManifestSource(make.manifest(rows), max_image_pixels=LIMIT), 0)


def test_hub_bad_rows(make, tmp_path: Path) -> None:
    good = make.encode(make.pixels(20, 16, 0))
    pose = make.encode(make.pixels(20, 16, 1))
    cells = [
        (good, pose, "fine"),
        (b"garbage", pose, "corrupt image"),
        (good[:-20], pose, "truncated image"),
        (good, make.encode(make.pixels(16, 16, 1)), "pose of another size"),
        (good, pose, "   "),
        (make.encode(make.pixels(80, 60, 1)), pose, "too big"),
    ]
    columns = {
        "image": [{"bytes": i, "path": None} for i, _, _ in cells],
        "control_pose": [{"bytes": p, "path": None} for _, p, _ in cells],
        "caption": [c for _, _, c in cells],
    }
    features = {"image": ImageFeature(), "control_pose": ImageFeature(), "caption": Value("string")}
    folder = make.hub("hub", "train", [columns], features)
    source = HubSource(str(folder), cache_dir=str(tmp_path / "hf"), max_image_pixels=LIMIT)
    with pytest.raises(RowError, match=r"row train-1: unreadable_image: column 'image'"):
        scan(source, "error", progress=False)
    report = scan(source, "skip", tmp_path / "run", progress=False)
    assert report.valid == [0]
    assert [(s.id, s.problem) for s in report.skipped] == [
        ("train-1", "unreadable_image"),
        ("train-2", "unreadable_image"),
        ("train-3", "pose_size_mismatch"),
        ("train-4", "bad_caption"),
        ("train-5", "too_many_pixels"),
    ]


def test_coco_bad_rows(make, tmp_path: Path) -> None:
    make.write("images/1.png", make.pixels(20, 16, 0))
    make.write("images/2.png", make.pixels(20, 16, 0))  # the json says 30 x 16
    people = [[5.0, 5.0, 2.0] * 17, [5.0, 5.0, 2.0] * 16]  # the second has 48 values
    images = [(1, 20), (2, 30), (3, 20), (4, 20), (5, 20)]
    data = {
        "images": [{"id": i, "file_name": f"{i}.png", "width": w, "height": 16} for i, w in images],
        "annotations": [
            {"id": 10 + i, "image_id": i, "keypoints": people[i == 5], "num_keypoints": 17}
            for i, _ in images
        ],
    }
    make.write("images/4.png", make.pixels(20, 16, 0))
    make.write("images/5.png", make.pixels(20, 16, 0))
    (tmp_path / "kp.json").write_text(json.dumps(data))
    make.manifest([{"image_id": i, "caption": "c"} for i in (1, 2, 3, 5)], "caps.jsonl")
    source = CocoSource(tmp_path / "kp.json", tmp_path / "images", tmp_path / "caps.jsonl")
    with pytest.raises(RowError, match=r"row 2: pose_size_mismatch: .*2.png is 20x16 but kp.json"):
        scan(source, "error", progress=False)
    report = scan(source, "skip", tmp_path / "run", progress=False)
    assert report.valid == [0]
    assert [(s.id, s.problem) for s in report.skipped] == [
        ("2", "pose_size_mismatch"),
        ("3", "missing_file"),
        ("4", "bad_caption"),
        ("5", "bad_keypoints"),
    ]


def many_rows(make, n: int = 8) -> ManifestSource:
    rows = [good_row(make, f"g{i}") for i in range(n)]
    rows[3] = bad_row(make, "missing_file")
    rows[6] = {**good_row(make, "g6"), "caption": ""}
    return ManifestSource(make.manifest(rows))


def test_threads_give_the_same_report(make) -> None:
    source = many_rows(make)
    serial = scan(source, "skip", progress=False)
    threaded = scan(source, "skip", progress=False, workers=3)
    assert serial.skipped == threaded.skipped and serial.valid == [0, 1, 2, 4, 5, 7]
    with pytest.raises(RowError, match="row bad-missing_file"):  # the first bad row, in order
        scan(source, "error", progress=False, workers=3)


def test_scan_cache(make, tmp_path: Path, monkeypatch) -> None:
    source = many_rows(make)
    cache = tmp_path / "scans"
    first = scan(source, "skip", progress=False, cache_dir=cache)
    assert not first.cached and (cache / f"scan-{source.fingerprint()}.json").is_file()

    def no_decoding(index):
        raise AssertionError("a cached scan must not load rows")

    monkeypatch.setattr(source, "load", no_decoding)
    second = scan(source, "skip", tmp_path / "run", progress=False, cache_dir=cache)
    assert second.cached and second.skipped == first.skipped
    assert json.loads((tmp_path / "run" / SUMMARY_FILE).read_text())["cached"] is True
    with pytest.raises(RowError, match=r"missing_file: .*\(cached scan"):
        scan(source, "error", progress=False, cache_dir=cache)
    monkeypatch.undo()

    make.write("g0.png", make.pixels(32, 24, 5))  # new content: a new fingerprint, a new scan
    changed = ManifestSource(source.path)
    assert changed.fingerprint() != source.fingerprint()
    assert not scan(changed, "skip", progress=False, cache_dir=cache).cached


def test_load_checked_checks_any_source() -> None:
    class Loose:
        name = "loose"

        def __len__(self):
            return 1

        def load(self, index):
            image = Image.new("RGB", (8, 8))
            return Sample(id="x", image=image, caption="c", pose_image=Image.new("RGB", (4, 8)))

    with pytest.raises(
        RowError, match="pose_size_mismatch: pose image is 4x8 but the image is 8x8"
    ):
        load_checked(Loose(), 0)


def test_open_image_details(make) -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    rgba = Image.new("RGBA", (6, 4), (10, 20, 30, 0))
    buffer = io.BytesIO()
    rgba.save(buffer, "PNG")
    image = open_image(buffer.getvalue(), "r", 100)
    assert image.mode == "RGB" and image.size == (6, 4)
    assert np.asarray(image)[0, 0].tolist() == [10, 20, 30]
    with pytest.raises(RowError, match="r: too_many_pixels: column 'x' is 6x4 = 24 pixels"):
        open_image(buffer.getvalue(), "r", 23, what="column 'x'")
    sample = Sample(id="k", image=image, caption="c", keypoints=[[1.0, 2.0, 2.0] * 17])
    assert check_sample(sample).keypoints.shape == (1, 17, 3)


def test_pixel_limit_is_checked_from_the_header(make) -> None:
    """A 90-megapixel header (over PIL's warning limit) is refused before any decoding, and
    PIL's DecompressionBombWarning does not leak out."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RowError, match="10000x9000 = 90000000 pixels, over the limit"):
            open_image(make.png_header(10000, 9000), "r", DEFAULT_MAX_IMAGE_PIXELS)


def _files(folder: Path) -> dict[str, object]:
    """The scan's files; the summary without its measured ``seconds``."""
    summary = json.loads((folder / SUMMARY_FILE).read_text())
    summary.pop("seconds")
    return {SKIPPED_FILE: (folder / SKIPPED_FILE).read_bytes(), SUMMARY_FILE: summary}


def test_a_scan_shared_by_processes_is_the_one_a_single_process_makes(make, tmp_path) -> None:
    """Three processes (threads here) each scan every third row: every one gets the whole
    report, the files are the single process's; under ``error`` all raise the first bad row."""
    from helpers import run_as_team

    cases = ["not_an_image", "missing_file", "empty_caption", "pose_size", "keypoints_nan"]
    rows = [good_row(make)]
    for k, case in enumerate(cases):
        row = bad_row(make, case)
        if row["image"] == "bad.png":  # each bad row its own file
            (make.root / "bad.png").rename(make.root / f"bad{k}.png")
            row["image"] = f"bad{k}.png"
        rows += [row, good_row(make, f"good{k}")]
    source = ManifestSource(make.manifest(rows), max_image_pixels=LIMIT)
    single = scan(source, "skip", tmp_path / "one", progress=False, workers=2)
    assert len(single.skipped) == len(cases)

    def shared(team, policy="skip", out="three", cache=None):
        return scan(source, policy, tmp_path / out, progress=False, workers=2, team=team,
                    cache_dir=cache)  # fmt: skip

    reports = run_as_team(3, shared)
    for report in reports:
        assert report.skipped == single.skipped and report.valid == single.valid
    assert _files(tmp_path / "three") == _files(tmp_path / "one")
    with pytest.raises(RowError) as first:
        scan(source, "error", progress=False)
    errors = run_as_team(3, lambda team: shared(team, "error"))
    assert [str(e) for e in errors] == [str(first.value)] * 3
    # A cached scan: the main process reads it, every process gets it.
    built = run_as_team(2, lambda team: shared(team, out="cached", cache=tmp_path / "scans"))
    again = run_as_team(2, lambda team: shared(team, out="cached", cache=tmp_path / "scans"))
    assert [r.cached for r in built + again] == [False, False, True, True]
    assert all(r.skipped == single.skipped for r in again)


def test_processes_that_see_other_data_are_told_so(make) -> None:
    from helpers import run_as_team

    from poseguide.data.record import SourceError

    first = ManifestSource(make.manifest([good_row(make), good_row(make, "b")], "one.jsonl"))
    other = ManifestSource(make.manifest([good_row(make)], "two.jsonl"))
    errors = run_as_team(2, lambda team: scan([first, other][team.rank], "skip", progress=False,
                                              team=team))  # fmt: skip
    assert all(isinstance(e, SourceError) for e in errors)
    assert "process 1 sees other data than process 0 (1 rows" in str(errors[0])
