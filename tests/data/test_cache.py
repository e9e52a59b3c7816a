"""The latent/text cache is exact, refuses stale contents, and resumes an interrupted build."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from poseguide.config.schema import CacheConfig, DataConfig
from poseguide.data.cache import (
    CacheError,
    LatentCache,
    build_cache,
    encode_latent_dist,
    find_cache,
    sample_latents,
)
from poseguide.data.cache import build as cache_mod
from poseguide.data.manifest import ManifestSource
from poseguide.data.preprocess import image_to_tensor, prepare, sample_torch_generator
from poseguide.models import encode_prompts, load_sd_parts
from poseguide.pseudo import PseudoShards, cached_pseudo

from .test_pipeline import write_rows


@pytest.fixture(scope="module")
def parts(tiny_sd: str):
    return load_sd_parts(tiny_sd)


def config(tmp_path: Path, **kw: object) -> DataConfig:
    cache = CacheConfig(dir=str(tmp_path / "cache"), shard_size=2, batch_size=2)
    return replace(DataConfig(resolution=64, cache=cache), **kw)


def test_cached_batch_equals_the_batch_computed_on_the_fly(tmp_path: Path, parts) -> None:
    source = ManifestSource(write_rows(tmp_path, 5))
    cfg = config(tmp_path, hflip=0.5)
    info = build_cache(source, list(range(5)), cfg, parts, "controlnet10", seed=0, progress=False)
    assert info.rows == 5 and info.captions == 6 and info.bytes > 0  # 5 captions + ""
    cache = find_cache(source, list(range(5)), cfg, parts)
    scaling = parts.vae.config.scaling_factor
    for flip in (False, True):
        rows = [0, 3, 4]
        pixels = torch.stack(
            [
                image_to_tensor(
                    prepare(source.load(i), i, cfg, "controlnet10", 0, 0, flip=flip).image
                )
                for i in rows
            ]
        )
        mean, std = encode_latent_dist(parts.vae, pixels)
        cached = [cache.latents(i, flip) for i in rows]
        torch.testing.assert_close(torch.stack([c[0] for c in cached]), mean, rtol=0, atol=1e-5)
        torch.testing.assert_close(torch.stack([c[1] for c in cached]), std, rtol=0, atol=1e-5)

        def gens(rows: list[int] = rows) -> list[torch.Generator]:
            return [sample_torch_generator(0, 1, i) for i in rows]

        on_the_fly = sample_latents(mean, std, gens(), scaling)
        from_cache = sample_latents(
            torch.stack([c[0] for c in cached]),
            torch.stack([c[1] for c in cached]),
            gens(),
            scaling,
        )
        torch.testing.assert_close(from_cache, on_the_fly, rtol=0, atol=1e-5)
        # and it is what the VAE's own sampling gives with the same noise
        generator = sample_torch_generator(0, 1, rows[0])
        dist = parts.vae.encode(pixels[:1]).latent_dist
        torch.testing.assert_close(
            dist.sample(generator) * scaling, on_the_fly[:1], rtol=0, atol=1e-6
        )
    caption = source.load(2).caption
    torch.testing.assert_close(
        cache.text(caption), encode_prompts(parts, [caption])[0], rtol=0, atol=1e-6
    )
    torch.testing.assert_close(cache.text(""), encode_prompts(parts, [""])[0], rtol=0, atol=1e-5)


def test_a_second_build_reuses_the_cache(tmp_path: Path, parts) -> None:
    source = ManifestSource(write_rows(tmp_path, 3))
    cfg = config(tmp_path)
    first = build_cache(source, [0, 1, 2], cfg, parts, "controlnet10", 0, progress=False)
    again = build_cache(source, [0, 1, 2], cfg, parts, "controlnet10", 0, progress=False)
    assert first.built_shards == 2 + 2  # latent shards of 2+1 rows, text shards of 3+1 captions
    assert again.built_shards == 0 and again.folder == first.folder


def test_stale_or_mismatched_cache_is_refused(tmp_path: Path, parts) -> None:
    manifest = write_rows(tmp_path, 3)
    cfg = config(tmp_path)
    info = build_cache(
        ManifestSource(manifest), [0, 1, 2], cfg, parts, "controlnet10", 0, progress=False
    )
    # The dataset changed after the build: no cache matches it any more.
    lines = manifest.read_text().splitlines()
    lines[1] = lines[1].replace("person number 1", "someone else")
    manifest.write_text("\n".join(lines) + "\n")
    with pytest.raises(CacheError, match="no cache at"):
        find_cache(ManifestSource(manifest), [0, 1, 2], cfg, parts)
    # Pointing data.cache.dir at that one folder: refused, naming what differs.
    pinned = replace(cfg, cache=replace(cfg.cache, dir=str(info.folder)))
    with pytest.raises(CacheError, match=r"dataset: cache has '\w+', run needs '\w+'"):
        find_cache(ManifestSource(manifest), [0, 1, 2], pinned, parts)
    with pytest.raises(CacheError, match="resolution: cache has 64, run needs 128"):
        find_cache(ManifestSource(manifest), [0, 1, 2], replace(pinned, resolution=128), parts)


def test_interrupted_build_resumes_to_the_same_files(tmp_path: Path, parts, monkeypatch) -> None:
    source = ManifestSource(write_rows(tmp_path, 5))
    clean = config(tmp_path / "clean")
    build_cache(source, list(range(5)), clean, parts, "controlnet10", 0, progress=False)

    interrupted = config(tmp_path / "interrupted")
    real, calls = cache_mod._encode_rows, {"n": 0}

    def dies_on_the_second_shard(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(cache_mod, "_encode_rows", dies_on_the_second_shard)
    with pytest.raises(KeyboardInterrupt):
        build_cache(source, list(range(5)), interrupted, parts, "controlnet10", 0, progress=False)
    folder = next(Path(interrupted.cache.dir).iterdir())
    assert sorted(p.name for p in folder.iterdir()) == ["latents-00000.safetensors"]
    with pytest.raises(CacheError, match="no cache at"):
        LatentCache.open(folder)
    monkeypatch.setattr(cache_mod, "_encode_rows", real)
    info = build_cache(
        source, list(range(5)), interrupted, parts, "controlnet10", 0, progress=False
    )
    assert info.built_shards == 2 + 3  # the two missing latent shards and the three text shards
    a = {p.name: p.read_bytes() for p in next(Path(clean.cache.dir).iterdir()).iterdir()}
    b = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert a == b
    assert json.loads(b["manifest.json"])["complete"] is True


def test_damaged_shards_are_found_and_rebuilt(tmp_path: Path, parts, caplog) -> None:
    """A truncated shard: opening the cache (what training does) is a one-line error saying
    to run `cache build`; a shard of the right size with other bytes fails the checksum;
    `cache build` rebuilds exactly the damaged shards, byte for byte as before."""
    source = ManifestSource(write_rows(tmp_path, 5))
    cfg, rows = config(tmp_path), list(range(5))
    first = build_cache(source, rows, cfg, parts, "controlnet10", seed=0, progress=False)
    manifest = json.loads((first.folder / "manifest.json").read_text())
    assert set(manifest["shards"]) == {p.name for p in first.folder.glob("*.safetensors")}
    shard = first.folder / "latents-00001.safetensors"
    original = shard.read_bytes()
    shard.write_bytes(original[: len(original) // 2])  # truncated
    with pytest.raises(CacheError) as err:
        find_cache(source, rows, cfg, parts)
    assert "latents-00001.safetensors" in str(err.value) and "cache build" in str(err.value)
    assert "\n" not in str(err.value)
    caplog.set_level("WARNING")
    again = build_cache(source, rows, cfg, parts, "controlnet10", seed=0, progress=False)
    assert again.built_shards == 1 and "1 damaged shard(s)" in caplog.text
    assert shard.read_bytes() == original
    # The same size, other bytes: only the checksum can tell (a build checks it).
    flipped = bytearray(original)
    flipped[-10] ^= 0xFF
    shard.write_bytes(bytes(flipped))
    again = build_cache(source, rows, cfg, parts, "controlnet10", seed=0, progress=False)
    assert again.built_shards == 1 and shard.read_bytes() == original
    # A shard damaged after the cache was opened: the read says what to do.
    cache = find_cache(source, rows, cfg, parts)
    text_shard = next(first.folder.glob("text-*.safetensors"))
    text_shard.write_bytes(b"\0" * 16)
    with pytest.raises(CacheError, match=r"text-00000.safetensors.*cache build"):
        cache.text(source.load(0).caption)


def test_the_cache_key_holds_the_vae_dtype(tmp_path: Path, parts, tiny_sd) -> None:
    source = ManifestSource(write_rows(tmp_path, 2))
    cfg, rows = config(tmp_path), [0, 1]
    fp32 = build_cache(source, rows, cfg, parts, "controlnet10", seed=0, progress=False)
    bf16 = load_sd_parts(tiny_sd, dtype=torch.bfloat16)
    other = build_cache(source, rows, cfg, bf16, "controlnet10", seed=0, progress=False)
    assert other.folder != fp32.folder and other.built_shards > 0


class _Decoding:
    """A source that always decodes the image, whatever ``load`` is asked for."""

    def __init__(self, source: ManifestSource) -> None:
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def load(self, index: int, image: bool = True):
        return self.source.load(index)


def test_the_dataset_decodes_no_image_when_the_cache_holds_the_latents(
    tmp_path: Path, parts, monkeypatch
) -> None:
    """With the cache on, an item reads only the image's header (its size): the same item,
    bit for bit, as from a decoded image; without the cache the image is decoded."""
    from poseguide.data import checks
    from poseguide.data.dataset import PoseDataset

    source = ManifestSource(write_rows(tmp_path, 4, size=(96, 64)))
    cfg, rows = config(tmp_path, hflip=0.5, resize_mode="crop"), list(range(4))
    build_cache(source, rows, cfg, parts, "controlnet10", seed=0, progress=False)
    cache = find_cache(source, rows, cfg, parts)
    real, decoded = checks.read_image, []

    def counting(src, *args, **kwargs):
        decoded.append(Path(src).name)
        return real(src, *args, **kwargs)

    monkeypatch.setattr(checks, "read_image", counting)
    cached = PoseDataset(source, rows, cfg, "controlnet10", seed=0, cache=cache)
    reference = PoseDataset(_Decoding(source), rows, cfg, "controlnet10", seed=0, cache=cache)
    for epoch in (0, 1):  # other flips
        for dataset in (cached, reference):
            dataset.set_epoch(epoch)
        for i in rows:
            decoded.clear()
            item = cached[i]
            assert decoded == [f"{i}.pose.png"]  # the pose image only
            expected = reference[i]
            assert "pixel_values" not in item and item.keys() == expected.keys()
            for key, value in expected.items():
                if isinstance(value, torch.Tensor):
                    assert torch.equal(item[key], value), key
                elif key == "keypoints":
                    assert (item[key] == value).all()
                else:
                    assert item[key] == value, key
    decoded.clear()
    item = PoseDataset(source, rows, cfg, "controlnet10", seed=0)[2]
    assert "pixel_values" in item and decoded == ["2.png", "2.pose.png"]


def _folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture
def one_thread(monkeypatch):
    """Threads standing in for processes share what real processes each have their own of:
    torch's intra-op pool (two Python threads in it at once can run an op on fewer threads,
    summing in another order) and the fast tokenizer, which is not thread-safe (its padding
    state is per tokenizer: concurrent calls fail or pad wrongly). So: one intra-op thread, and
    the text encoded by one thread at a time."""
    import threading

    threads, real, lock = torch.get_num_threads(), cache_mod.encode_prompts, threading.Lock()

    def one_at_a_time(*args, **kwargs):
        with lock:
            return real(*args, **kwargs)

    monkeypatch.setattr(cache_mod, "encode_prompts", one_at_a_time)  # the build's text encoder
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_build_shared_by_processes_is_the_one_a_single_process_makes(
    tmp_path: Path, parts, monkeypatch, one_thread
) -> None:
    """Processes (threads here) build their shares of the shards: the folder is byte for byte
    the single process's. One that fails stops them all (its error, the others name it); the
    next shared build finishes the holes it left; a damaged shard is rebuilt by its owner.
    (Real processes: tests/train/test_shared.py.)"""
    from helpers import run_as_team

    from poseguide.data.record import RowError
    from poseguide.utils.team import SharedWorkError

    source = ManifestSource(write_rows(tmp_path, 7))
    rows = list(range(7))

    def build(where: str, world: int) -> list:
        cfg = config(tmp_path / where, hflip=0.5)
        args = (source, rows, cfg, parts, "controlnet10", 0, False)
        if world == 1:
            return [build_cache(*args)]
        return run_as_team(world, lambda team: build_cache(*args, team=team))

    (clean,) = build("one", 1)
    expected = _folder_bytes(clean.folder)
    assert len([n for n in expected if n.startswith("latents")]) == 4
    shared = build("three", 3)
    assert {info.folder.name for info in shared} == {clean.folder.name}
    assert [info.built_shards for info in shared] == [clean.built_shards] * 3
    assert _folder_bytes(shared[0].folder) == expected

    real = cache_mod._encode_rows

    def damaged_after_the_scan(source, chunk, *args):
        if 2 in chunk:
            raise RowError("r2", "unreadable_image", "changed since the scan")
        return real(source, chunk, *args)

    monkeypatch.setattr(cache_mod, "_encode_rows", damaged_after_the_scan)
    failed = build("two", 2)  # process 1 encodes latents-00001 (rows 2, 3) and -00003
    assert isinstance(failed[1], RowError)
    assert isinstance(failed[0], SharedWorkError) and "process 1 of 2: row r2" in str(failed[0])
    folder = tmp_path / "two" / "cache" / clean.folder.name
    kept = ["latents-00000.safetensors", "latents-00002.safetensors"]  # process 0's
    assert sorted(p.name for p in folder.iterdir()) == kept
    monkeypatch.setattr(cache_mod, "_encode_rows", real)
    finished = build("two", 2)
    assert finished[0].built_shards == len(expected) - 3  # all but those two and the manifest
    assert _folder_bytes(folder) == expected
    shard = folder / "latents-00002.safetensors"
    shard.write_bytes(b"\0" * len(expected[shard.name]))
    repaired = build("two", 2)
    assert [info.built_shards for info in repaired] == [1, 1]
    assert _folder_bytes(folder) == expected


def test_a_manifest_that_cannot_be_written_stops_every_process(
    tmp_path: Path, parts, monkeypatch, one_thread
) -> None:
    from helpers import run_as_team

    from poseguide.utils.io import WriteError
    from poseguide.utils.team import SharedWorkError

    source = ManifestSource(write_rows(tmp_path, 2))
    cfg = config(tmp_path)

    def full_disk(path, *args, **kwargs):
        raise WriteError(f"could not write {path}: No space left on device")

    monkeypatch.setattr(cache_mod, "atomic_write_json", full_disk)
    out = run_as_team(2, lambda team: build_cache(source, [0, 1], cfg, parts, "controlnet10", 0,
                                                  False, team))  # fmt: skip
    assert isinstance(out[0], WriteError) and isinstance(out[1], SharedWorkError)
    assert "process 0 of 2: could not write" in str(out[1])


def test_cache_build_from_the_cli_is_one_process(tmp_path: Path, monkeypatch, capsys) -> None:
    """``poseguide cache build`` (no process group) builds the cache that training then finds."""
    from helpers import write_config

    from poseguide.cli import main
    from poseguide.config import load_config
    from poseguide.train import runner

    monkeypatch.chdir(tmp_path)
    write_config(tmp_path, data={"cache": {"dir": "cache", "shard_size": 3}})
    assert main(["cache", "build", "config.yaml"]) == 0
    assert "cache: 8 rows (0 skipped), 9 captions" in capsys.readouterr().out
    assert main(["cache", "build", "config.yaml"]) == 0
    assert "(0 shards built now)" in capsys.readouterr().out
    run, _ = runner._make_run(load_config("config.yaml"), None, [0], explicit=False)
    assert len(run.cache.manifest["shards"]) == 3 + 3


def _rows_without_keypoints(root: Path) -> Path:
    """Three rows: r0 with keypoints; r1 scikit-image's astronaut (one person) and r2 flat grey
    (nobody), both
    without keypoints (only a pose image), so a reward stage needs pseudo ground truth."""
    from PIL import Image
    from skimage import data

    write_rows(root, 1, size=(96, 64))
    rows = [json.loads((root / "m.jsonl").read_text())]
    photo = Image.fromarray(data.astronaut()).resize((256, 256), Image.Resampling.BILINEAR)
    for i, image in ((1, photo), (2, Image.new("RGB", (120, 80), (128, 128, 128)))):
        image.save(root / f"{i}.png")
        Image.new("RGB", image.size).save(root / f"{i}.pose.png")
        rows.append({"id": f"r{i}", "image": f"{i}.png", "pose_image": f"{i}.pose.png",
                     "caption": f"row {i}"})  # fmt: skip
    path = root / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_pseudo_ground_truth_is_the_estimators_on_the_original_image(tmp_path: Path,
                                                                     parts) -> None:  # fmt: skip
    """With a reward stage the cache stores, for each row without keypoints, the people
    ultralytics' own ``YOLO.predict`` finds on the original image (joints >= 0.5 labelled,
    areas 0.53 * box); rows with keypoints get none; the estimator is part of the key; the
    dataset places the pseudo keypoints like the image and marks them."""
    import numpy as np
    from PIL import Image
    from ultralytics import YOLO

    from poseguide.config.schema import EstimatorConfig
    from poseguide.data.dataset import PoseDataset, collate
    from poseguide.pose.transforms import place_keypoints
    from poseguide.pose.weights import resolve_pose_weights

    source = ManifestSource(_rows_without_keypoints(tmp_path))
    cfg, rows, estimator = config(tmp_path, resize_mode="crop"), [0, 1, 2], EstimatorConfig()
    plain = build_cache(source, rows, cfg, parts, "controlnet10", seed=0, progress=False)
    info = build_cache(source, rows, cfg, parts, "controlnet10", seed=0, progress=False,
                       extras=PseudoShards(estimator))  # fmt: skip
    assert info.folder != plain.folder  # the pseudo ground truth is part of the key
    cache = find_cache(source, rows, cfg, parts, PseudoShards(estimator))
    assert cache.holds(PseudoShards.key)
    assert not find_cache(source, rows, cfg, parts).holds(PseudoShards.key)
    assert cache.manifest["pseudo"] == {"rows": 2, "people": 1}
    assert cached_pseudo(cache, 0) is None  # the row's own keypoints are the target
    keypoints, areas = cached_pseudo(cache, 1)
    assert keypoints.shape == (1, 17, 3) and cached_pseudo(cache, 2)[0].shape == (0, 17, 3)

    model = YOLO(str(resolve_pose_weights(estimator.weights)))
    ref = model.predict(Image.open(tmp_path / "1.png"), imgsz=640, conf=0.25, iou=0.7,
                        verbose=False)[0]  # fmt: skip
    expected = ref.keypoints.data.numpy().astype(np.float64)
    assert np.abs(keypoints[..., :2] - expected[..., :2]).max() < 0.5
    assert (keypoints[..., 2] == np.where(expected[..., 2] >= 0.5, 2, 0)).all()
    x0, y0, x1, y1 = ref.boxes.xyxy.numpy()[0]
    assert areas[0] == pytest.approx(0.53 * (x1 - x0) * (y1 - y0), rel=1e-3)

    other = build_cache(source, rows, cfg, parts, "controlnet10", seed=0, progress=False,
                        extras=PseudoShards(replace(estimator, conf=0.5)))  # fmt: skip
    assert other.folder not in (info.folder, plain.folder)

    dataset = PoseDataset(source, rows, cfg, "controlnet10", seed=0, cache=cache)
    batch = collate([dataset[i] for i in range(3)])
    # Only the reward reads them: the rows' own keypoints stay None for every other loss.
    assert batch["keypoints"][0] is not None and batch["keypoints"][1:] == [None, None]
    assert batch["pseudo_keypoints"][0] is None
    placement = prepare(source.load(1), 1, cfg, "controlnet10", seed=0, epoch=0).placement
    assert np.array_equal(batch["pseudo_keypoints"][1], place_keypoints(keypoints, placement))
    scale = placement.scale[0] * placement.scale[1]
    assert batch["pseudo_areas"][1] == pytest.approx(areas * scale)
    assert batch["pseudo_keypoints"][2].shape == (0, 17, 3)
    from poseguide.objectives.reward import batch_targets

    targets = batch_targets(batch, "reward")
    assert [t is not None and t.pseudo for t in targets[:2]] == [False, True]
    assert targets[2] is None  # nobody found: the row is not rewarded

    # A reward stage draws a pseudo row's condition from its targets: the same pose by
    # construction; rows with their own keypoints keep their condition.
    from poseguide.pose.render import render_skeleton

    drawn = PoseDataset(source, rows, cfg, "controlnet10", seed=0, cache=cache,
                        condition_from_pseudo=True)  # fmt: skip
    redrawn = collate([drawn[i] for i in range(3)])
    size = (cfg.resolution, cfg.resolution)
    want = render_skeleton(batch["pseudo_keypoints"][1], size, "controlnet10")
    got = (redrawn["conditioning"][1].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert np.array_equal(got, want)
    assert not torch.equal(redrawn["conditioning"][1], batch["conditioning"][1])
    assert torch.equal(redrawn["conditioning"][0], batch["conditioning"][0])

    # explain-loss computes a row's pseudo ground truth by the cache's own rule.
    from poseguide.config import Config
    from poseguide.config.schema import LossConfig, StageConfig, TrainConfig
    from poseguide.train.explain import _pseudo

    run = Config(data=cfg, train=TrainConfig(stages=[StageConfig(loss=LossConfig(kind="reward"))]))
    explained = _pseudo(run, source, 1, cfg)
    assert np.array_equal(explained[0], batch["pseudo_keypoints"][1])
    assert explained[1] == pytest.approx(batch["pseudo_areas"][1])


def test_a_reward_without_keypoints_or_cache_names_the_row(tiny_sd: str) -> None:
    from poseguide.objectives.reward import batch_targets
    from poseguide.train.setup import TrainingError

    batch = {"ids": ["a", "b"], "keypoints": [None, None], "areas": [None, None]}
    with pytest.raises(TrainingError, match="row a: no keypoints .*data.cache.enabled=true"):
        batch_targets(batch, "reward")
