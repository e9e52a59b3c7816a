"""Preprocessing, the Dataset, the collate function and the sharded resumable sampler."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from poseguide.config.schema import DataConfig
from poseguide.data.dataset import PoseDataset, ShardedSampler, collate
from poseguide.data.manifest import ManifestSource
from poseguide.data.preprocess import augment_choices, image_to_tensor, prepare
from poseguide.data.record import RowError, Sample
from poseguide.pose.render import render_skeleton
from poseguide.pose.transforms import place_image


def figure(width: int, height: int, seed: int) -> np.ndarray:
    """(1, 17, 3) keypoints of one spread-out person inside the image."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0.15, 0.85, (17, 2)) * [width, height]
    return np.concatenate([xy, np.full((17, 1), 2.0)], axis=1)[None]


def write_rows(root: Path, n: int, size: tuple[int, int] = (96, 64)) -> Path:
    rows = []
    for i in range(n):
        kps = figure(*size, i)
        image = np.random.default_rng(i).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(image).save(root / f"{i}.png")
        Image.fromarray(render_skeleton(kps, size)).save(root / f"{i}.pose.png")
        rows.append({"id": f"r{i}", "image": f"{i}.png", "pose_image": f"{i}.pose.png",
                     "caption": f"person number {i}",
                     "keypoints": kps.reshape(1, -1).tolist()})  # fmt: skip
    path = root / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def mask(image: Image.Image | np.ndarray) -> np.ndarray:
    return np.asarray(image).max(axis=2) > 40


@pytest.mark.parametrize("mode", ["stretch", "crop", "pad"])
@pytest.mark.parametrize("flip", [False, True])
def test_pose_stays_aligned_with_keypoints(tmp_path: Path, mode: str, flip: bool) -> None:
    size = (300, 200)
    kps = figure(*size, 3)
    sample = Sample(
        "s", Image.new("RGB", size), "a caption", Image.fromarray(render_skeleton(kps, size)), kps
    )
    cfg = DataConfig(resolution=128, resize_mode=mode)
    item = prepare(sample, 0, cfg, "controlnet10", seed=0, epoch=0, flip=flip)
    redrawn = render_skeleton(item.keypoints, (128, 128))
    if flip:  # the flipped pose is re-rendered; compare with the mirrored source pose image
        reference = place_image(sample.pose_image, item.placement).transpose(
            Image.Transpose.FLIP_LEFT_RIGHT
        )
    else:
        reference = item.pose
    a, b = mask(redrawn), mask(reference)
    assert (a & b).sum() / (a | b).sum() > 0.6
    for x, y, v in item.keypoints[0]:
        if v > 0:
            assert a[int(y), int(x)] and b[int(y), int(x)], (x, y)


def test_flip_swaps_skeleton_colours() -> None:
    size = (128, 128)
    kps = figure(*size, 5)
    sample = Sample("s", Image.new("RGB", size), "c", None, kps)
    item = prepare(sample, 0, DataConfig(resolution=128), "controlnet10", 0, 0, flip=True)
    # The new left shoulder is the mirrored right shoulder, and the pose is drawn from the
    # flipped keypoints: left/right colours follow the joints, not the mirror image.
    np.testing.assert_allclose(item.keypoints[0, 5, :2], [128 - kps[0, 6, 0], kps[0, 6, 1]])
    assert np.array_equal(np.asarray(item.pose), render_skeleton(item.keypoints, size))
    mirrored = np.asarray(
        Image.fromarray(render_skeleton(kps, size)).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    )
    assert not np.array_equal(np.asarray(item.pose), mirrored)


def test_flip_without_keypoints_is_a_named_error() -> None:
    sample = Sample("row7", Image.new("RGB", (64, 64)), "c", Image.new("RGB", (64, 64)), None)
    with pytest.raises(RowError, match="row row7: bad_keypoints: data.hflip > 0 needs keypoints"):
        prepare(sample, 0, DataConfig(resolution=64, hflip=1.0), "controlnet10", 0, 0)


def test_augment_choices_are_stable_and_have_the_right_rates() -> None:
    cfg = DataConfig(hflip=0.5, caption_dropout=0.1)
    draws = [augment_choices(cfg, 0, 0, i) for i in range(4000)]
    assert draws == [augment_choices(cfg, 0, 0, i) for i in range(4000)]
    flips, drops = np.array(draws).T
    assert 0.46 < flips.mean() < 0.54 and 0.08 < drops.mean() < 0.12
    assert draws != [augment_choices(cfg, 0, 1, i) for i in range(4000)]  # epochs differ
    assert not any(augment_choices(DataConfig(), 0, 0, i) != (False, False) for i in range(200))


def test_dataset_batches_have_the_documented_layout(tmp_path: Path) -> None:
    source = ManifestSource(write_rows(tmp_path, 6))
    cfg = DataConfig(resolution=64, caption_dropout=0.5)
    dataset = PoseDataset(source, range(6), cfg, "controlnet10", seed=1)
    loader = DataLoader(dataset, batch_size=3, collate_fn=collate, num_workers=2)
    batch = next(iter(loader))
    assert batch["pixel_values"].shape == (3, 3, 64, 64) and batch["conditioning"].shape == (
        3,
        3,
        64,
        64,
    )
    assert batch["pixel_values"].min() >= -1 and batch["pixel_values"].max() <= 1
    assert batch["conditioning"].min() >= 0 and batch["conditioning"].max() <= 1
    assert batch["index"].tolist() == [0, 1, 2] and batch["ids"] == ["r0", "r1", "r2"]
    assert all(c in ("", f"person number {i}") for i, c in enumerate(batch["captions"]))
    assert batch["keypoints"][0].shape == (1, 17, 3)
    # pixel_values are the resized image mapped to [-1, 1]
    expected = image_to_tensor(
        Image.open(tmp_path / "1.png").convert("RGB").resize((64, 64), Image.Resampling.BICUBIC)
    )
    torch.testing.assert_close(batch["pixel_values"][1], expected)


def test_sampler_shards_cover_the_epoch_and_resume_mid_epoch() -> None:
    size = 10
    single = ShardedSampler(size, seed=3)
    single.set_epoch(2)
    order = list(single)
    assert sorted(order) == list(range(size))
    shards = [ShardedSampler(size, seed=3, rank=r, world=3) for r in range(3)]
    for s in shards:
        s.set_epoch(2)
    taken = [list(s) for s in shards]
    assert all(len(t) == 4 for t in taken)  # ceil(10 / 3), padded by wrapping around
    assert set().union(*map(set, taken)) == set(range(size))
    interleaved = [taken[r][k] for k in range(4) for r in range(3)]
    assert interleaved[:size] == order  # position k goes to process k % world
    shards[1].set_epoch(2, start=2)
    assert list(shards[1]) == taken[1][2:] and len(shards[1]) == 2
    other = ShardedSampler(size, seed=3)
    other.set_epoch(3)
    assert list(other) != order
    with pytest.raises(ValueError, match="empty dataset"):
        ShardedSampler(0, seed=0)


def test_dataset_uses_cached_latents_when_given(tmp_path: Path) -> None:
    source = ManifestSource(write_rows(tmp_path, 2))

    class FakeCache:
        def latents(self, index: int, flipped: bool) -> tuple[torch.Tensor, torch.Tensor]:
            return torch.full((4, 8, 8), float(index)), torch.ones(4, 8, 8)

        def text(self, caption: str) -> torch.Tensor:
            return torch.zeros(77, 32)

    dataset = PoseDataset(
        source, [1], replace(DataConfig(), resolution=64), "controlnet10", 0, FakeCache()
    )
    batch = collate([dataset[0]])
    assert "pixel_values" not in batch and float(batch["latent_mean"].mean()) == 1.0
    assert batch["text_emb"].shape == (1, 77, 32)
