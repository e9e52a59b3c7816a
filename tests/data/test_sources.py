"""Each source round-trips generated data into the same Sample record."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
from datasets import Image as ImageFeature
from datasets import List, Value
from PIL import Image

from poseguide.config.schema import SourceConfig
from poseguide.data import hub
from poseguide.data.record import RowError, SourceError
from poseguide.data.sources import (
    CocoSource,
    HubSource,
    ManifestSource,
    guess_kind,
    open_source,
    source_from_cli,
)

HUB_FEATURES = {"image": ImageFeature(), "control_pose": ImageFeature(), "caption": Value("string")}


def assert_pixels(image, expected: np.ndarray) -> None:
    assert image.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(image), expected)


# --- manifest -------------------------------------------------------------------------------


def write_manifest(make) -> tuple[Path, dict]:
    arrays = {k: make.pixels(40 + 4 * k, 30 + 2 * k, k) for k in range(3)}
    poses = {k: make.pixels(40 + 4 * k, 30 + 2 * k, 100 + k) for k in range(3)}
    people = {k: np.stack([make.person(k, 40, 30), make.person(k + 9, 40, 30)]) for k in range(3)}
    for k in range(3):
        make.write(f"images/{k}.png", arrays[k])
        make.write(f"poses/{k}.png", poses[k])
    rows = [
        {"id": "a", "image": "images/0.png", "caption": "a person", "pose_image": "poses/0.png"},
        {
            "id": "b",
            "image": "images/1.png",
            "caption": "two people",
            "keypoints": people[1].reshape(2, -1).tolist(),  # flat COCO lists
            "areas": [100.0, 250.5],
            "extra": "ignored",
        },
        {
            "id": 7,  # integer ids are accepted and become strings
            "image": str(make.root / "images/2.png"),  # absolute paths too
            "caption": "both",
            "pose_image": "poses/2.png",
            "keypoints": people[2].tolist(),  # 17 [x, y, v] triples per person
            "width": 48,
            "height": 34,
        },
    ]
    return make.manifest(rows), {"arrays": arrays, "poses": poses, "people": people}


def test_manifest_round_trip(make) -> None:
    path, truth = write_manifest(make)
    source = ManifestSource(path)
    assert len(source) == 3 and source.ids() == ["a", "b", "7"]
    a, b, c = (source.load(i) for i in range(3))
    assert_pixels(a.image, truth["arrays"][0])
    assert_pixels(a.pose_image, truth["poses"][0])
    assert a.keypoints is None and a.areas is None and a.caption == "a person"
    assert a.original_size == (40, 30) and a.meta["path"] == str(make.root / "images/0.png")
    assert b.pose_image is None  # rendered later from the keypoints
    np.testing.assert_allclose(b.keypoints, truth["people"][1])
    np.testing.assert_allclose(b.areas, [100.0, 250.5])
    assert b.keypoints.shape == (2, 17, 3) and b.original_size == (44, 32)
    assert c.id == "7" and c.original_size == (48, 34)
    assert_pixels(c.pose_image, truth["poses"][2])
    np.testing.assert_allclose(c.keypoints, truth["people"][2])
    info = source.describe()
    assert info["rows"] == 3 and info["with_pose_image"] == 2 and info["with_keypoints"] == 2


def test_manifest_limit_and_fingerprint(make) -> None:
    path, truth = write_manifest(make)
    first = ManifestSource(path).fingerprint()
    assert ManifestSource(path).fingerprint() == first
    limited = ManifestSource(path, limit=2)
    assert len(limited) == 2 and limited.ids() == ["a", "b"]
    assert limited.fingerprint() != first
    assert ManifestSource(path, max_image_pixels=10_000).fingerprint() != first
    time.sleep(0.01)
    make.write("images/1.png", truth["arrays"][0][:, :-1])  # an image edited in place
    assert ManifestSource(path).fingerprint() != first


@pytest.mark.parametrize(
    ("lines", "match"),
    [
        (
            '{"id": "a", "image": "x.png", "caption": "c"}\n{"id": "b", "image": \n',
            r":2: not valid",
        ),
        ('{"id": "a", "image": "x.png"}\n\n{"id": "a", "image": "y.png"}\n', r":3: duplicate id"),
        ('["a", "x.png"]\n', r":1: expected a JSON object"),
        ('{"image": "x.png", "caption": "c"}\n', r":1: 'id' must be"),
        ('{"id": "a", "caption": "c"}\n', r":1: 'image' \(required\)"),
    ],
)
def test_manifest_structure_errors_name_the_line(tmp_path: Path, lines: str, match: str) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text(lines)
    with pytest.raises(SourceError, match=match):
        ManifestSource(path)


def test_manifest_duplicate_names_first_line(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text('{"id": "a", "image": "x.png"}\n{"id": "a", "image": "y.png"}\n')
    with pytest.raises(SourceError, match=r"m.jsonl:2: duplicate id 'a' \(first used on line 1\)"):
        ManifestSource(path)


# --- hub parquet ----------------------------------------------------------------------------


def hub_rows(make, start: int, n: int, size=(36, 28)) -> tuple[dict, list, list]:
    images = [make.pixels(*size, start + k) for k in range(n)]
    poses = [make.pixels(*size, 500 + start + k) for k in range(n)]
    columns = {
        "image": [{"bytes": make.encode(a, "PNG"), "path": None} for a in images],
        "control_pose": [{"bytes": make.encode(a, "PNG"), "path": None} for a in poses],
        "caption": [f"caption {start + k}" for k in range(n)],
    }
    return columns, images, poses


def test_hub_folder_round_trip(make, tmp_path: Path) -> None:
    shard0, img0, pose0 = hub_rows(make, 0, 3)
    shard1, img1, pose1 = hub_rows(make, 3, 2)
    folder = make.hub("cocopose", "train", [shard0, shard1], HUB_FEATURES)
    val, val_img, _ = hub_rows(make, 10, 2, size=(20, 24))
    make.hub("cocopose", "validation", [val], HUB_FEATURES)
    cache = str(tmp_path / "hf-cache")

    source = HubSource(str(folder), "train", cache_dir=cache)
    assert len(source) == 5 and source.ids() == [f"train-{i}" for i in range(5)]
    assert source.roles == {"image": "image", "caption": "caption", "pose_image": "control_pose"}
    for i, (image, pose) in enumerate(zip(img0 + img1, pose0 + pose1, strict=True)):
        sample = source.load(i)
        assert sample.caption == f"caption {i}" and sample.original_size == (36, 28)
        assert_pixels(sample.image, image)
        assert_pixels(sample.pose_image, pose)
        assert sample.keypoints is None and sample.meta["index"] == i
    info = source.describe()
    assert info["columns"] == {"image": "image", "control_pose": "image", "caption": "string"}

    validation = HubSource(str(folder), "validation", cache_dir=cache, limit=1)
    assert len(validation) == 1 and validation.ids() == ["validation-0"]
    assert_pixels(validation.load(0).image, val_img[0])
    with pytest.raises(IndexError):
        validation.load(1)
    assert validation.fingerprint() != source.fingerprint()


def test_hub_keypoint_and_id_columns(make, tmp_path: Path) -> None:
    images = [make.pixels(30, 20, k) for k in range(2)]
    people = [make.person(k, 30, 20)[None].repeat(k + 1, axis=0) for k in range(2)]
    columns = {
        "image_id": [397133, 37777],
        "image": [{"bytes": make.encode(a, "JPEG"), "path": None} for a in images],
        "text": ["one", "two"],
        "keypoints": [p.reshape(len(p), -1).tolist() for p in people],
        "area": [[50.0], [60.0, 70.0]],
    }
    features = {
        "image_id": Value("int64"),
        "image": ImageFeature(),
        "text": Value("string"),
        "keypoints": List(List(Value("float32"))),
        "area": List(Value("float32")),
    }
    folder = make.hub("kp", "train", [columns], features)
    source = HubSource(str(folder), cache_dir=str(tmp_path / "hf-cache"))
    assert source.ids() == ["397133", "37777"]
    assert source.roles["keypoints"] == "keypoints" and "pose_image" not in source.roles
    second = source.load(1)
    assert second.pose_image is None and second.caption == "two"
    np.testing.assert_allclose(second.keypoints, people[1], atol=1e-3)
    np.testing.assert_allclose(second.areas, [60.0, 70.0])
    expected = np.asarray(Image.open(io.BytesIO(make.encode(images[1], "JPEG"))))
    assert_pixels(second.image, expected)


def test_hub_missing_column_lists_columns(make, tmp_path: Path) -> None:
    columns, _, _ = hub_rows(make, 0, 1)
    columns["description"] = columns.pop("caption")
    features = dict(HUB_FEATURES)
    features["description"] = features.pop("caption")
    folder = make.hub("nocap", "train", [columns], features)
    with pytest.raises(SourceError, match=r"caption: one of .*columns found: \['image', "):
        HubSource(str(folder), cache_dir=str(tmp_path / "hf-cache"))
    renamed = HubSource(
        str(folder), cache_dir=str(tmp_path / "hf-cache"), columns={"caption": "description"}
    )
    assert renamed.load(0).caption == "caption 0"


def test_hub_folder_without_split_lists_what_it_found(make) -> None:
    columns, _, _ = hub_rows(make, 0, 1)
    folder = make.hub("onlytrain", "train", [columns], HUB_FEATURES)
    with pytest.raises(SourceError, match=r"no parquet shards for split 'validation'.*train-"):
        HubSource(str(folder), "validation")


def test_hub_id_offline_fails_fast_with_a_hint(tmp_path: Path, no_network: list[str]) -> None:
    with pytest.raises(SourceError, match=r"local-dir DIR.*data.train.path=DIR"):
        HubSource("limingcv/Captioned_COCOPose", "train", cache_dir=str(tmp_path / "hf"))
    assert no_network == []  # offline: it fails before any connection attempt


def test_hub_id_unreachable_fails_fast(
    monkeypatch, tmp_path: Path, no_network: list[str], online: None
) -> None:
    """Online mode without a network: one probe, no retries inside load_dataset."""
    import datasets
    from huggingface_hub import HfApi

    def unreachable(self, *args, **kwargs):
        raise ConnectionError("Name or service not known")

    def never(*args, **kwargs):
        raise AssertionError("load_dataset must not be reached")

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(HfApi, "dataset_info", unreachable)
    monkeypatch.setattr(datasets, "load_dataset", never)
    with pytest.raises(SourceError, match=r"cannot reach the Hugging Face hub.*HF_HUB_OFFLINE=1"):
        hub.load_hub_dataset("owner/name", "train", None, str(tmp_path))
    assert no_network == []  # the one probe is the stub above


def test_hub_path_that_is_neither(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="neither a folder of parquet shards nor a hub"):
        HubSource(str(tmp_path / "a" / "b" / "c"))


# --- COCO -----------------------------------------------------------------------------------


def write_coco(make, captions_format: str = "json") -> dict:
    sizes = {1: (40, 30), 2: (32, 32), 3: (50, 20)}
    arrays = {i: make.pixels(*sizes[i], i) for i in sizes}
    for i, array in arrays.items():
        make.write(f"coco/val2017/{i:012d}.jpg", array, "PNG")  # lossless, for exact pixels
    kp = {k: make.person(k, 40, 30) for k in range(4)}

    def ann(aid, image_id, keypoints, crowd=0, area=10.0, category=1):
        flat = keypoints.reshape(-1).tolist()
        num = int((keypoints[:, 2] > 0).sum())
        return {
            "id": aid,
            "image_id": image_id,
            "category_id": category,
            "iscrowd": crowd,
            "keypoints": flat,
            "num_keypoints": num,
            "area": area,
        }

    no_kp = kp[3].copy()
    no_kp[:, 2] = 0
    data = {
        "images": [
            {"id": i, "file_name": f"{i:012d}.jpg", "width": w, "height": h}
            for i, (w, h) in sizes.items()
        ],
        "annotations": [
            ann(10, 1, kp[0], area=120.0),
            ann(5, 1, kp[1], area=80.0),  # smaller id: first person of image 1
            ann(7, 1, kp[2], crowd=1),  # crowd: dropped
            ann(11, 2, no_kp),  # no labelled joint: image 2 has no people
            ann(12, 3, kp[2], area=33.0),
            ann(13, 3, kp[0], category=2),  # not a person
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "dog"}],
    }
    annotations = make.root / "coco/annotations/person_keypoints_val2017.json"
    annotations.parent.mkdir(parents=True, exist_ok=True)
    annotations.write_text(json.dumps(data))
    captions = [(30, 1, "second caption"), (20, 1, "first caption"), (40, 3, "image three")]
    if captions_format == "json":
        caption_data = {
            "annotations": [{"id": a, "image_id": i, "caption": c} for a, i, c in captions]
        }
        (annotations.parent / "captions_val2017.json").write_text(json.dumps(caption_data))
    else:
        lines = [{"image_id": str(i), "caption": c} for _, i, c in captions]
        make.manifest(lines, "coco/captions.jsonl")
    return {"annotations": annotations, "arrays": arrays, "kp": kp}


def test_coco_round_trip(make) -> None:
    truth = write_coco(make)
    source = CocoSource(truth["annotations"], make.root / "coco/val2017")  # captions found beside
    assert source.ids() == ["1", "3"]
    one, three = source.load(0), source.load(1)
    assert one.caption == "first caption"  # the smallest caption annotation id
    np.testing.assert_allclose(one.keypoints, np.stack([truth["kp"][1], truth["kp"][0]]))
    np.testing.assert_allclose(one.areas, [80.0, 120.0])
    assert one.meta["annotation_ids"] == [5, 10] and one.pose_image is None
    assert_pixels(one.image, truth["arrays"][1])
    assert one.original_size == (40, 30)
    assert three.caption == "image three" and three.original_size == (50, 20)
    np.testing.assert_allclose(three.keypoints, truth["kp"][2][None])
    info = source.describe()
    assert info["crowd_dropped"] == 1 and info["no_keypoints_dropped"] == 1
    assert info["people"] == 3 and info["images_in_file"] == 3


def test_coco_captions_jsonl(make) -> None:
    truth = write_coco(make, captions_format="jsonl")
    source = CocoSource(
        truth["annotations"], make.root / "coco/val2017", make.root / "coco/captions.jsonl"
    )
    assert source.load(0).caption == "second caption"  # the first line for the image wins


def test_coco_captions_from_an_image_field(make) -> None:
    """Human-Art's layout: each image entry carries its own caption (``description``)."""
    truth = write_coco(make, captions_format="jsonl")
    data = json.loads(truth["annotations"].read_text())
    for img in data["images"]:
        if img["id"] == 1:
            img["description"] = "a dancer, watercolour"
    truth["annotations"].write_text(json.dumps(data))
    source = CocoSource(truth["annotations"], make.root / "coco/val2017", "image:description")
    assert source.ids() == ["1", "3"]
    assert source.load(0).caption == "a dancer, watercolour"
    with pytest.raises(RowError, match="no caption for image id 3") as err:
        source.load(1)  # image 3 has no description: a row error naming it
    assert err.value.problem == "bad_caption"
    assert "images[].description" in source.describe()["captions"]


def test_coco_without_captions_says_what_to_pass(make) -> None:
    truth = write_coco(make, captions_format="jsonl")
    with pytest.raises(SourceError, match="no captions given"):
        CocoSource(truth["annotations"], make.root / "coco/val2017")


# --- building sources -----------------------------------------------------------------------


def test_open_source_and_source_from_cli(make, tmp_path: Path) -> None:
    manifest, _ = write_manifest(make)
    truth = write_coco(make)
    columns, _, _ = hub_rows(make, 0, 2)
    folder = make.hub("cocopose", "train", [columns], HUB_FEATURES)
    cache = str(tmp_path / "hf-cache")

    assert guess_kind(str(manifest)) == ("manifest", str(manifest))
    assert guess_kind(str(make.root)) == ("manifest", str(manifest))  # a folder with manifest.jsonl
    assert guess_kind(str(truth["annotations"]))[0] == "coco"
    assert guess_kind(str(folder)) == ("hub", str(folder))
    assert guess_kind("limingcv/Captioned_COCOPose") == ("hub", "limingcv/Captioned_COCOPose")

    assert isinstance(source_from_cli(str(manifest), limit=2), ManifestSource)
    coco = source_from_cli(str(truth["annotations"]))  # images folder from COCO's layout
    assert isinstance(coco, CocoSource) and coco.images_dir == make.root / "coco/val2017"
    hub_source = source_from_cli(str(folder), hf_cache_dir=cache)
    assert isinstance(hub_source, HubSource) and len(hub_source) == 2

    cfg = SourceConfig(kind="coco", path=str(truth["annotations"]), images_dir=str(coco.images_dir))
    assert open_source(cfg, 10_000).ids() == ["1", "3"]
    cfg = SourceConfig(kind="manifest", path=str(manifest), limit=1)
    assert len(open_source(cfg)) == 1
    cfg = SourceConfig(kind="hub", path=str(folder), split="train", limit=1)
    assert len(open_source(cfg, hf_cache_dir=cache)) == 1
    with pytest.raises(SourceError, match="source not found"):
        guess_kind(str(tmp_path / "nothing.jsonl"))


def test_sources_pickle_for_dataloader_workers(make, tmp_path: Path) -> None:
    import pickle

    manifest, _ = write_manifest(make)
    truth = write_coco(make)
    columns, _, _ = hub_rows(make, 0, 2)
    folder = make.hub("cocopose", "train", [columns], HUB_FEATURES)
    sources = [
        ManifestSource(manifest),
        CocoSource(truth["annotations"], make.root / "coco/val2017"),
        HubSource(str(folder), cache_dir=str(tmp_path / "hf-cache")),
    ]
    for source in sources:
        copy = pickle.loads(pickle.dumps(source))
        assert copy.ids() == source.ids() and copy.fingerprint() == source.fingerprint()
        np.testing.assert_array_equal(np.asarray(copy.load(1).image), source.load(1).image)


def test_every_source_loads_a_row_without_its_pixels(make, tmp_path: Path, monkeypatch) -> None:
    """``load(i, image=False)``: the same row, the image's size from its header and no pixel
    decoded; a missing or oversized image is still the same row error."""
    from poseguide.data import checks

    manifest, _ = write_manifest(make)
    truth = write_coco(make)
    columns, _, _ = hub_rows(make, 0, 2)
    folder = make.hub("cocopose", "train", [columns], HUB_FEATURES)
    sources = [
        ManifestSource(manifest),
        CocoSource(truth["annotations"], make.root / "coco/val2017"),
        HubSource(str(folder), cache_dir=str(tmp_path / "hf-cache")),
    ]
    for source in sources:
        for i in range(2):
            full, header = source.load(i), source.load(i, image=False)
            assert header.image is None and header.original_size == full.original_size
            assert header.caption == full.caption and header.id == full.id
            if full.keypoints is None:
                assert header.keypoints is None
            else:
                np.testing.assert_array_equal(header.keypoints, full.keypoints)
            if full.pose_image is not None:  # the conditioning still needs the pose image
                assert_pixels(header.pose_image, np.asarray(full.pose_image))
    real, decoded = checks.read_image, []

    def counting(src, max_pixels, what="image"):
        decoded.append(what)
        return real(src, max_pixels, what)

    monkeypatch.setattr(checks, "read_image", counting)
    for source in sources:
        source.load(0, image=False)
    assert decoded == ["pose image", "column 'control_pose'"]  # manifest row a; hub row 0
    small = ManifestSource(manifest, max_image_pixels=100)
    with pytest.raises(RowError, match="too_many_pixels"):
        small.load(0, image=False)
    (make.root / "images/0.png").unlink()
    with pytest.raises(RowError, match="missing_file"):
        sources[0].load(0, image=False)
