"""The field's evaluation sets (issue 20): COCO images selected by people count and size
(``data.eval.select``, HyperHuman's kind of COCO val2014 human subset), and HumanSD's mapping
files (LAION-Human) with their missing downloads counted."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from poseguide.config import ConfigError, load_config
from poseguide.config.schema import CocoSelect, SourceConfig
from poseguide.data.coco import CocoSource
from poseguide.data.humansd import HumanSDSource, read_pose_npz
from poseguide.data.record import RowError, SourceError
from poseguide.data.sources import guess_kind, open_source

# image id -> (width, height) and its non-crowd people's boxes (w, h); "kp": with keypoints
IMAGES = {
    1: ((100, 100), [(50, 40, True)]),  # one person, 20 % of the image
    2: ((100, 100), [(20, 20, True), (10, 10, False)]),  # two, the largest 4 %
    3: ((100, 50), [(30, 30, True), (30, 30, True), (25, 25, False), (40, 40, True)]),  # four
    4: ((80, 80), [(60, 60, False)]),  # nobody with keypoints: never a row
    5: ((100, 100), [(40, 40, True), (90, 90, True)]),  # two (one crowd below), 81 %
}


def write_coco(make) -> tuple:
    person = make.person(0, 100, 100)
    images, annotations = [], []
    for image_id, ((w, h), people) in IMAGES.items():
        make.write(f"images/{image_id}.png", make.pixels(w, h, image_id))
        images.append({"id": image_id, "file_name": f"{image_id}.png", "width": w, "height": h})
        for bw, bh, labelled in people:
            kp = person.copy()
            kp[:, 2] = 2 if labelled else 0
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": 1, "iscrowd": 0, "bbox": [1, 1, bw, bh],
                                "keypoints": kp.reshape(-1).tolist(), "area": bw * bh * 0.5,
                                "num_keypoints": int(labelled) * 17})  # fmt: skip
    annotations.append({"id": 99, "image_id": 5, "category_id": 1, "iscrowd": 1,
                        "bbox": [0, 0, 100, 100], "keypoints": [0] * 51})  # fmt: skip
    path = make.root / "person_keypoints_val2014.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "person"}]}))  # fmt: skip
    captions = make.manifest([{"image_id": i, "caption": f"image {i}"} for i in IMAGES],
                             "captions.jsonl")  # fmt: skip
    return path, make.root / "images", captions


@pytest.mark.parametrize(
    ("select", "ids"),
    [
        (CocoSelect(), ["1", "2", "3", "5"]),  # every image with a labelled person
        (CocoSelect(max_people=3), ["1", "2", "5"]),  # image 3 has four people
        (CocoSelect(max_people=3, min_area_ratio=0.15), ["1", "5"]),  # HumanVerse's filter
        (CocoSelect(min_people=2), ["2", "3", "5"]),  # people without keypoints count
        (CocoSelect(min_area_ratio=0.5), ["5"]),  # 0.81 of image 5; image 3: 1600/5000 = 0.32
    ],
)
def test_select_keeps_images_by_people_count_and_largest_box(make, select, ids) -> None:
    annotations, images, captions = write_coco(make)
    source = CocoSource(annotations, images, captions, select=select)
    assert source.ids() == ids
    info = source.describe()
    assert info["select_dropped"] == 4 - len(ids) and info["images_with_people"] == 4
    assert info["select"]["max_people"] == select.max_people
    assert [source.load(k).caption for k in range(len(source))] == [f"image {i}" for i in ids]


def test_select_is_a_config_key_of_coco_sources(make) -> None:
    annotations, images, captions = write_coco(make)

    def fingerprint(select: CocoSelect | None) -> str:
        return CocoSource(annotations, images, captions, select=select).fingerprint()

    assert fingerprint(None) == fingerprint(CocoSelect())  # the rows of before select existed
    assert fingerprint(None) != fingerprint(CocoSelect(max_people=9))
    cfg = SourceConfig(kind="coco", path=str(annotations), images_dir=str(images),
                       captions=str(captions),
                       select=CocoSelect(max_people=3, min_area_ratio=0.15))  # fmt: skip
    assert open_source(cfg).ids() == ["1", "5"]
    file = make.root / "c.yaml"
    file.write_text(json.dumps({"data": {"eval": {"kind": "coco", "path": str(annotations),
                                                  "images_dir": str(images)}}}))  # fmt: skip
    config = load_config(str(file), ["data.eval.select.max_people=3"])
    assert config.data.eval.select == CocoSelect(max_people=3)
    with pytest.raises(ConfigError, match="select"):
        load_config(None, ["data.train.select.max_people=3"])  # a synthetic source
    with pytest.raises(ConfigError, match="max_people"):
        CocoSelect(min_people=3, max_people=2)


def test_area_ratio_needs_the_image_size(make) -> None:
    annotations, images, captions = write_coco(make)
    data = json.loads(annotations.read_text())
    del data["images"][0]["width"]
    annotations.write_text(json.dumps(data))
    assert len(CocoSource(annotations, images, captions, select=CocoSelect(max_people=3))) == 3
    with pytest.raises(SourceError, match="image id 1 has no width/height"):
        CocoSource(annotations, images, captions, select=CocoSelect(min_area_ratio=0.1))


def _mmpose(keypoints: np.ndarray, score: float = 0.9) -> dict:
    return {"keypoints": keypoints.astype(np.float32), "score": np.float32(score)}


def write_humansd(make) -> tuple[Path, dict]:
    """A LAION-Human-like folder: 4 mapping entries, one image and one pose file missing."""
    base = make.root / "Aesthetics_Human"
    person = make.person(0, 60, 40)[:, :2]
    scores = np.full((17, 1), 0.5)
    scores[3] = 0.01  # below HumanSD's keypoint threshold: unlabelled
    first = np.concatenate([person, scores], axis=1)
    first[4, 0] = 75.0  # outside the 60-px wide image: unlabelled
    faint = np.concatenate([person, np.full((17, 1), 0.01)], axis=1)  # nobody above threshold
    people = np.empty(2, dtype=object)
    people[:] = [_mmpose(first), _mmpose(faint, 0.3)]
    mapping = {}
    for k, key in enumerate(
        ["00000_000000002", "00000_000000001", "00000_000000003", "00000_000000004"]
    ):
        image, pose = f"images/00000/{key[6:]}.jpg", f"pose/00000/{key[6:]}.npz"
        mapping[key] = {"img_path": image, "pose_path": pose, "prompt": f"prompt {k}"}
        if key != "00000_000000003":
            make.write(f"Aesthetics_Human/{image}", make.pixels(60, 40, k), "PNG")
        if key != "00000_000000004":
            (base / pose).parent.mkdir(parents=True, exist_ok=True)
            arr = people if k % 2 == 0 else np.stack([first])  # an object array, or numeric
            np.savez(base / pose, arr)
    path = base / "mapping_file_training.json"
    path.write_text(json.dumps(mapping))
    return path, {"first": first}


def test_humansd_mapping_rows_keypoints_and_missing_files_counted(make, caplog) -> None:
    path, truth = write_humansd(make)
    source = HumanSDSource(path)
    assert source.ids() == ["00000_000000001", "00000_000000002"]  # sorted; 3 and 4 missing
    info = source.describe()
    assert (info["entries"], info["missing_image"], info["missing_pose"]) == (4, 1, 1)
    assert "2 of 4 entries left out" in caplog.text
    expected = truth["first"].copy()
    labelled = expected[:, 2] > 0.02
    labelled[4] = False
    expected[:, :2] *= labelled[:, None]
    expected[:, 2] = 2.0 * labelled
    for k in range(2):
        sample = source.load(k)
        assert sample.caption == f"prompt {1 - k}" and sample.original_size == (60, 40)
        assert sample.keypoints.shape == (1, 17, 3)  # the faint person is dropped
        np.testing.assert_allclose(sample.keypoints[0], expected, atol=1e-5)
        assert sample.keypoints[0, 3, 2] == 0 and sample.keypoints[0, 4, 2] == 0
    cfg = SourceConfig(kind="humansd", path=str(path), limit=1)
    assert open_source(cfg).ids() == ["00000_000000001"]
    assert guess_kind(str(path)) == ("humansd", str(path))


def test_humansd_mapping_errors_name_the_entry(make) -> None:
    path, _ = write_humansd(make)
    data = json.loads(path.read_text())
    del data["00000_000000001"]["prompt"]
    path.write_text(json.dumps(data))
    with pytest.raises(SourceError, match="entry '00000_000000001' lacks prompt"):
        HumanSDSource(path)


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pose_file_that_would_run_code_is_refused(make, tmp_path: Path) -> None:
    """np.load(allow_pickle=True) would run this file's os.system; poseguide's reader refuses
    it, and the row is a bad_keypoints error naming the file."""
    path, _ = write_humansd(make)
    evil = _Evil()
    evil.marker = tmp_path / "ran"
    arr = np.empty(1, dtype=object)
    arr[0] = evil
    np.savez(path.parent / "pose/00000/000000001.npz", arr)
    with pytest.raises(ValueError, match="refused: posix.system|refused: .*system"):
        read_pose_npz(path.parent / "pose/00000/000000001.npz")
    with pytest.raises(RowError, match="row 00000_000000001: bad_keypoints: .*000000001.npz"):
        HumanSDSource(path).load(0)
    assert not evil.marker.exists()


def test_a_checkpoint_from_before_select_existed_still_resumes() -> None:
    """A training checkpoint's config written before ``select`` existed reads it as the default
    (what that run computed): no change; a key the schema no longer knows is still one."""
    from poseguide.config import to_dict
    from poseguide.train.runner import config_changes

    before = to_dict(load_config(None))
    del before["data"]["train"]["select"]
    assert config_changes(before, load_config(None)) == []
    assert config_changes(before, load_config(None, ["train.batch_size=3"])) == ["train.batch_size"]
    before["data"]["train"]["retired_key"] = 1
    assert config_changes(before, load_config(None)) == ["data.train.retired_key"]
