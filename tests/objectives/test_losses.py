"""Tests for poseguide.objectives: stage-1 / stage-2 losses, the H_E pipelines, targets."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from poseguide.config.schema import LossConfig
from poseguide.objectives import (
    denoising_loss,
    denoising_target,
    ground_truth_mask,
    heatmap_weighted_loss,
    predicted_error_mask,
    stage_loss,
)
from poseguide.pose.skeleton import COCO17_NAMES, NUM_COCO17

LEFT_SHOULDER = COCO17_NAMES.index("left_shoulder")
LEFT_ELBOW = COCO17_NAMES.index("left_elbow")


def _pair(shape=(3, 4, 8, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- weighted loss


def test_weight_zero_gives_exactly_stage1():
    pred, target = _pair()
    h_e = _randn(3, 4, 8, 8, seed=100) * 3
    stage1 = denoising_loss(pred, target)
    out = heatmap_weighted_loss(pred, target, h_e, 0.0)
    assert torch.equal(out["loss"], stage1["loss"])
    assert torch.equal(out["mse"], stage1["mse"])
    assert out["neg_weight_frac"].eq(0).all()


@pytest.mark.parametrize("channels", [1, 4])
def test_zero_mask_gives_exactly_stage1(channels):
    pred, target = _pair(seed=1)
    out = heatmap_weighted_loss(pred, target, torch.zeros(3, channels, 8, 8), 0.37)
    assert torch.equal(out["loss"], denoising_loss(pred, target)["loss"])


def test_one_latent_pixel_mask_weights_exactly_that_pixel():
    pred, target = _pair(shape=(1, 4, 8, 8), seed=2)
    w = 0.5
    h_e = torch.zeros(1, 4, 8, 8)
    h_e[0, :, 3, 5] = 1.0
    out = heatmap_weighted_loss(pred, target, h_e, w)
    sq = (pred - target) ** 2
    n = sq.numel()
    expected = sq.sum() / n + w * sq[0, :, 3, 5].sum() / n
    torch.testing.assert_close(out["loss"], expected.reshape(1), rtol=1e-6, atol=0)
    torch.testing.assert_close(out["mse"], (sq.sum() / n).reshape(1), rtol=1e-6, atol=0)


def test_known_values_with_negative_weight():
    # errors 1, 2, -1, 3 -> squared 1, 4, 1, 9; H_E 0, 2, -4, -2; w = 0.5 -> weights 1, 2, -1, 0
    pred = torch.tensor([1.0, 2.0, -1.0, 3.0]).reshape(1, 1, 1, 4)
    target = torch.zeros(1, 1, 1, 4)
    h_e = torch.tensor([0.0, 2.0, -4.0, -2.0]).reshape(1, 1, 1, 4)
    out = heatmap_weighted_loss(pred, target, h_e, 0.5)
    assert out["loss"].item() == (1 + 8 - 1 + 0) / 4
    assert out["mse"].item() == 15 / 4
    assert out["neg_weight_frac"].item() == 0.25  # a zero weight is not negative
    assert out["he_mean"].item() == -1.0
    assert out["he_min"].item() == -4.0 and out["he_max"].item() == 2.0
    assert all(v.dtype == torch.float32 and v.shape == (1,) for v in out.values())


def test_one_channel_mask_broadcasts_over_channels():
    pred, target = _pair(seed=3)
    h_e = _randn(3, 1, 8, 8, seed=101)
    out1 = heatmap_weighted_loss(pred, target, h_e, 0.3)
    out4 = heatmap_weighted_loss(pred, target, h_e.expand(-1, 4, -1, -1), 0.3)
    torch.testing.assert_close(out1["loss"], out4["loss"])
    torch.testing.assert_close(out1["neg_weight_frac"], out4["neg_weight_frac"])


def test_losses_are_per_sample():
    pred, target = _pair(seed=4)
    h_e = _randn(3, 4, 8, 8, seed=102)
    base = heatmap_weighted_loss(pred, target, h_e, 0.2)
    pred2, h_e2 = pred.clone(), h_e.clone()
    pred2[1] += 1.0
    h_e2[1] *= -2.0
    changed = heatmap_weighted_loss(pred2, target, h_e2, 0.2)
    for key in base:
        assert torch.equal(base[key][[0, 2]], changed[key][[0, 2]]), key
    assert not torch.equal(base["loss"][1], changed["loss"][1])
    for i in range(3):
        alone = heatmap_weighted_loss(pred[i : i + 1], target[i : i + 1], h_e[i : i + 1], 0.2)
        torch.testing.assert_close(alone["loss"], base["loss"][i : i + 1], rtol=1e-6, atol=0)


def test_low_precision_pred_is_reduced_in_float32():
    pred, target = _pair(seed=5)
    out = denoising_loss(pred.bfloat16(), target)
    assert out["loss"].dtype == torch.float32
    expected = ((pred.bfloat16().float() - target) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(out["loss"], expected)


def test_mask_shape_is_checked():
    pred, target = _pair()
    with pytest.raises(ValueError, match="H_E must be"):
        heatmap_weighted_loss(pred, target, torch.zeros(3, 4, 4, 4), 0.1)


# --------------------------------------------------------------------------- targets


def _scheduler(prediction_type):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)


def test_targets_follow_prediction_type():
    latents, noise = _pair(seed=6)
    t = torch.tensor([0, 500, 999])
    assert denoising_target(_scheduler("epsilon"), latents, noise, t) is noise
    assert denoising_target(_scheduler("sample"), latents, noise, t) is latents
    sched = _scheduler("v_prediction")
    v = denoising_target(sched, latents, noise, t)
    assert torch.equal(v, sched.get_velocity(latents, noise, t))
    a = sched.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    torch.testing.assert_close(v, a.sqrt() * noise - (1 - a).sqrt() * latents)


def test_unknown_prediction_type_is_a_clear_error():
    sched = _scheduler("epsilon")
    sched.register_to_config(prediction_type="flow")
    latents, noise = _pair()
    with pytest.raises(ValueError, match="prediction_type 'flow'"):
        denoising_target(sched, latents, noise, torch.zeros(3, dtype=torch.long))


# --------------------------------------------------------------------------- predicted error

BLOB = (slice(0, 2), slice(0, 2))  # heatmap pixels where joints 0 and 1 are "detected"


class StubEstimator:
    """Joints 0 and 1 detected (heat 1) on a fixed 2x2 block, all others nowhere."""

    stride = 4

    def __init__(self):
        self.inputs: list[torch.Tensor] = []

    def heatmaps(self, images, heatmap_size=None):
        self.inputs.append(images.detach().clone())
        b, _, h, w = images.shape
        maps = torch.zeros(b, NUM_COCO17, h // self.stride, w // self.stride, device=images.device)
        maps[:, :2, BLOB[0], BLOB[1]] = 1.0
        return maps


@pytest.fixture(scope="module")
def vae(tiny_sd):
    from poseguide.models import load_sd_parts

    return load_sd_parts(tiny_sd).vae


def _heatmap_cfg(**kw):
    return LossConfig(kind="heatmap", source="predicted_error", **kw)


def test_predicted_error_pipeline_shapes_and_inputs(vae):
    diff = _randn(2, 4, 8, 8, seed=103)
    est = StubEstimator()
    g = torch.Generator().manual_seed(0)
    out = predicted_error_mask(diff, vae, est, _heatmap_cfg(), generator=g)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)  # the VAE's downsampling, 8
    size = (8 * factor, 8 * factor)
    assert out["h_e"].shape == diff.shape and out["h_e"].dtype == torch.float32
    assert out["decoded"].shape == (2, 3, *size)
    assert out["h_m"].shape == (2, 3, *size)
    assert out["heatmaps"].shape == (2, NUM_COCO17, 16, 16)
    (seen,) = est.inputs
    assert seen.shape == (2, 3, *size) and seen.dtype == torch.float32
    assert seen.min() >= 0 and seen.max() <= 1
    s = vae.config.scaling_factor
    with torch.no_grad():
        expected = ((vae.decode(diff / s).sample + 1) / 2).clamp(0, 1)
        torch.testing.assert_close(seen, expected)
        posterior = vae.encode(out["h_m"].contiguous()).latent_dist
        again = posterior.sample(generator=torch.Generator().manual_seed(0)) * s
    torch.testing.assert_close(out["h_e"], again)


def test_same_generator_seed_same_h_e(vae):
    diff = _randn(1, 4, 8, 8, seed=104)
    cfg = _heatmap_cfg()

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return predicted_error_mask(diff, vae, StubEstimator(), cfg, generator=g)["h_e"]

    assert torch.equal(run(7), run(7))
    assert not torch.equal(run(7), run(8))


@pytest.mark.parametrize(
    ("polarity", "reduction", "inside", "outside"),
    [
        ("not_detected", "sum", NUM_COCO17 - 2, NUM_COCO17),  # HumanSD as released
        ("detected", "sum", 2, 0),
        ("detected", "max", 1, 0),
        ("not_detected", "max", 1, 1),  # some joint is undetected everywhere
    ],
)
def test_polarity_and_reduction_shape_h_m(vae, polarity, reduction, inside, outside):
    cfg = _heatmap_cfg(polarity=polarity, reduction=reduction, mask_resize="nearest")
    diff = _randn(1, 4, 8, 8, seed=105)
    out = predicted_error_mask(diff, vae, StubEstimator(), cfg, generator=_gen())
    h_m = out["h_m"]
    block = 2 * StubEstimator.stride  # the 2x2 heatmap block in image pixels
    expected = torch.full_like(h_m, float(outside))
    expected[..., :block, :block] = float(inside)
    assert torch.equal(h_m, expected)


def test_bicubic_resize_is_the_default(vae):
    import torch.nn.functional as F

    diff = _randn(1, 4, 8, 8, seed=106)
    out = predicted_error_mask(diff, vae, StubEstimator(), _heatmap_cfg(), generator=_gen())
    h_m = out["h_m"]
    low = torch.full((1, 1, 16, 16), float(NUM_COCO17))
    low[..., BLOB[0], BLOB[1]] = NUM_COCO17 - 2
    expected = F.interpolate(low, size=(64, 64), mode="bicubic", align_corners=False)
    assert torch.equal(h_m, expected.expand(-1, 3, -1, -1))
    assert h_m[0, 0, 0, 0] == NUM_COCO17 - 2 and h_m[0, 0, -1, -1] == NUM_COCO17


def test_no_gradient_through_the_mask_and_analytic_gradient(vae):
    w = 0.5
    pred0, target = _pair(shape=(2, 4, 8, 8), seed=9)
    pred = pred0.clone().requires_grad_(True)
    g = torch.Generator().manual_seed(1)
    out = stage_loss(
        _heatmap_cfg(weight=w), pred, target, vae=vae, estimator=StubEstimator(),
        generator=g, return_debug=True,
    )  # fmt: skip
    h_e = out["_debug"]["h_e"]
    assert not h_e.requires_grad and not out["_debug"]["decoded"].requires_grad
    assert out["loss"].requires_grad
    out["loss"].sum().backward()
    n = pred[0].numel()
    expected = (2.0 / n) * (1 + w * h_e) * (pred0 - target)
    torch.testing.assert_close(pred.grad, expected)
    # The mask was built from pred - target, the prediction error.
    with torch.no_grad():
        s = vae.config.scaling_factor
        m = ((vae.decode((pred0 - target) / s).sample + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(out["_debug"]["decoded"], m)


def test_predicted_error_with_weight_zero_is_stage1(vae):
    pred, target = _pair(shape=(2, 4, 8, 8), seed=10)
    out = stage_loss(
        _heatmap_cfg(weight=0.0), pred, target, vae=vae, estimator=StubEstimator(),
        generator=_gen(),
    )  # fmt: skip
    assert torch.equal(out["loss"], denoising_loss(pred, target)["loss"])
    assert "_debug" not in out


def test_low_precision_vae_gives_float32_mask(tiny_sd):
    from diffusers import AutoencoderKL

    vae16 = AutoencoderKL.from_pretrained(tiny_sd, subfolder="vae", torch_dtype=torch.bfloat16)
    diff = _randn(1, 4, 8, 8, seed=107)
    out = predicted_error_mask(diff, vae16, StubEstimator(), _heatmap_cfg(), generator=_gen())
    assert all(v.dtype == torch.float32 for v in out.values())
    assert torch.isfinite(out["h_e"]).all()


def test_predicted_error_needs_vae_and_estimator():
    pred, target = _pair()
    with pytest.raises(ValueError, match="estimator="):
        stage_loss(_heatmap_cfg(), pred, target)


# --------------------------------------------------------------------------- ground truth

IMAGE = (64, 64)  # (W, H); latents are 8x8


def _arm_person():
    person = np.zeros((1, NUM_COCO17, 3))
    person[0, LEFT_SHOULDER] = (12.0, 20.0, 2)  # latent (1.5, 2.5): pixel (1, 2)
    person[0, LEFT_ELBOW] = (52.0, 20.0, 2)  # latent (6.5, 2.5): pixel (6, 2)
    return person


def test_ground_truth_skeleton_covers_the_limb():
    cfg = LossConfig(kind="heatmap", source="ground_truth", polarity="detected")
    mask = ground_truth_mask([_arm_person()], IMAGE, (8, 8), cfg)
    assert mask.shape == (1, 1, 8, 8) and mask.dtype == torch.float32
    assert mask[0, 0, 2, 1:7].eq(1).all()  # both joints and the limb's midpoint (latent x = 4)
    assert mask[0, 0, 6].eq(0).all() and mask[0, 0, 4, 4] == 0  # away from the arm
    inverted = ground_truth_mask([_arm_person()], IMAGE, (8, 8), LossConfig(source="ground_truth"))
    assert torch.equal(inverted, 1 - mask)


def test_ground_truth_keypoint_mask():
    cfg = LossConfig(kind="heatmap", source="ground_truth", gt_mask="keypoints", gt_sigma=1.0)
    mask = ground_truth_mask([_arm_person()], IMAGE, (8, 8), cfg)
    # not_detected + sum: 17 minus the Gaussians; the joint pixel centres are 0 from the joint
    assert mask[0, 0, 2, 1].item() == pytest.approx(NUM_COCO17 - 1, abs=1e-4)
    assert mask[0, 0, 7, 7].item() == pytest.approx(NUM_COCO17, abs=1e-3)


def test_ground_truth_none_gives_zero_mask_and_stage1_loss():
    pred, target = _pair(shape=(2, 4, 8, 8), seed=11)
    cfg = LossConfig(kind="heatmap", source="ground_truth", weight=4.0)
    mask = ground_truth_mask([None, _arm_person()], IMAGE, (8, 8), cfg)
    assert mask[0].eq(0).all() and mask[1].sum() > 0
    out = stage_loss(cfg, pred, target, keypoints=[None, _arm_person()], image_size=IMAGE)
    stage1 = denoising_loss(pred, target)["loss"]
    assert torch.equal(out["loss"][0], stage1[0])
    assert not torch.equal(out["loss"][1], stage1[1])


def test_ground_truth_needs_keypoints():
    pred, target = _pair()
    with pytest.raises(ValueError, match="keypoints="):
        stage_loss(LossConfig(kind="heatmap", source="ground_truth"), pred, target)


def test_stage_loss_denoising_is_denoising_loss():
    pred, target = _pair(seed=12)
    out = stage_loss(LossConfig(kind="denoising"), pred, target)
    assert torch.equal(out["loss"], denoising_loss(pred, target)["loss"])


def test_bf16_mask_precision_is_close_but_not_exact(vae):
    diff = _randn(2, 4, 8, 8, seed=108)

    def run(precision):
        g = torch.Generator().manual_seed(3)
        return predicted_error_mask(
            diff, vae, StubEstimator(), _heatmap_cfg(mask_precision=precision), generator=g
        )

    exact, fast = run("model"), run("bf16")
    assert torch.equal(exact["h_m"], fast["h_m"])  # the stub's heatmaps: the same binary mask
    assert fast["h_e"].dtype == torch.float32 and not torch.equal(exact["h_e"], fast["h_e"])
    rel = (fast["h_e"] - exact["h_e"]).norm() / exact["h_e"].norm()
    assert rel < 0.05


def test_each_term_is_reduced_as_it_declares() -> None:
    from poseguide.objectives import reduce_terms, term_reduction

    assert term_reduction("he_min") == "min" and term_reduction("he_max") == "max"
    assert term_reduction("loss") == term_reduction("neg_weight_frac") == "mean"
    terms = {"loss": torch.tensor([1.0, 3.0]), "he_min": torch.tensor([-1.0, -4.0]),
             "he_max": torch.tensor([2.0, 5.0])}  # fmt: skip
    assert {k: v.item() for k, v in reduce_terms(terms).items()} == {
        "loss": 2.0,
        "he_min": -4.0,
        "he_max": 5.0,
    }


def test_a_step_logs_the_true_extremes_over_micro_batches_and_processes() -> None:
    """Two micro-batches here, and a second process whose values arrive through gather: the
    logged he_min/he_max are the extremes of all samples, the loss the mean of all samples."""
    from poseguide.train.monitor import step_terms

    class TwoProcesses:
        device = torch.device("cpu")

        def gather(self, local: torch.Tensor) -> torch.Tensor:
            other = torch.tensor([[10.0, -9.0, 1.0]])  # loss, he_min, he_max of process 1
            return torch.cat([local, other])

    micro = [
        {"loss": torch.tensor([1.0, 2.0]), "he_min": torch.tensor([-1.0, -3.0]),
         "he_max": torch.tensor([4.0, 0.5]), "_debug": {}},
        {"loss": torch.tensor([3.0, 6.0]), "he_min": torch.tensor([-2.0, 0.0]),
         "he_max": torch.tensor([7.0, 1.0]), "_debug": {}},
    ]  # fmt: skip
    logged = step_terms(micro, TwoProcesses())
    assert logged == {"loss": (3.0 + 10.0) / 2, "he_min": -9.0, "he_max": 7.0}


def test_the_posterior_sample_is_diffusers_own(vae) -> None:
    """The stage-2 mask's posterior sample draws on the CPU generators and reaches the device
    without blocking; the numbers are those of DiagonalGaussianDistribution.sample."""
    from poseguide.objectives.heatmap import _posterior_sample

    posterior = vae.encode(_randn(2, 3, 64, 64, seed=7).clamp(-1, 1)).latent_dist
    for gens in ([_gen(1), _gen(2)], _gen(3)):
        ours = _posterior_sample(posterior, gens)
        theirs = posterior.sample(
            generator=[_gen(1), _gen(2)] if isinstance(gens, list) else _gen(3)
        )
        assert torch.equal(ours, theirs)


def test_tensor_heatmaps_equal_the_numpy_path() -> None:
    """The estimator's heatmaps of a float tensor (the stage-2 loss) are built on the tensor's
    device from the detections' tensors; they equal the maps of the same keypoints as numpy."""
    from skimage import data as skdata

    from poseguide.pose.heatmaps import batch_heatmaps
    from poseguide.pose.yolo import YoloPoseEstimator

    est = YoloPoseEstimator(device="cpu", imgsz=320)
    image = torch.from_numpy(skdata.astronaut().copy()).permute(2, 0, 1).float()[None] / 255
    maps = est.heatmaps(image)
    (found,) = est.detect(image)
    numpy_maps = batch_heatmaps([found.to_numpy().keypoints], [(512, 512)], (128, 128),
                                est.heatmap_sigma, scale_by_score=True)  # fmt: skip
    assert maps.shape == (1, 17, 128, 128) and maps.max() > 0.5
    assert torch.equal(maps, numpy_maps)


def test_an_fp16_vae_never_runs_the_mask_in_fp16(tiny_sd) -> None:
    """train.mixed_precision=fp16: the mask's encode of the unnormalised 0..17 image overflows
    fp16 (here provoked with a scaled first convolution); the mask path runs under bf16 autocast
    and gives what the fp32 VAE gives, to bf16 precision."""
    from diffusers import AutoencoderKL

    vae32 = AutoencoderKL.from_pretrained(tiny_sd, subfolder="vae")
    with torch.no_grad():
        vae32.encoder.conv_in.weight.mul_(3e4)
    vae16 = copy.deepcopy(vae32).half()
    cfg = _heatmap_cfg(reduction="sum")  # H_M up to 17 on undetected pixels
    diff = _randn(1, 4, 8, 8, seed=109)
    ref = predicted_error_mask(diff, vae32, StubEstimator(), cfg, generator=_gen())
    with torch.no_grad():  # what running the fp16 VAE as it is would give
        raw = vae16.encoder.conv_in(ref["h_m"].half().contiguous())
    assert not torch.isfinite(raw).all()
    out = predicted_error_mask(diff, vae16, StubEstimator(), cfg, generator=_gen())
    assert torch.isfinite(out["h_e"]).all() and out["h_e"].dtype == torch.float32
    rel = (out["h_e"] - ref["h_e"]).norm() / ref["h_e"].norm()
    assert rel < 0.05, rel


def test_the_log_says_how_often_the_mask_saw_anybody(vae):
    class Nobody(StubEstimator):
        def heatmaps(self, images, heatmap_size=None):
            return super().heatmaps(images, heatmap_size) * 0.0

    pred, target = _pair(shape=(2, 4, 8, 8), seed=11)
    seen = stage_loss(_heatmap_cfg(), pred, target, vae=vae, estimator=StubEstimator(),
                      generator=_gen())  # fmt: skip
    assert torch.equal(seen["mask_detected"], torch.ones(2))
    empty = stage_loss(_heatmap_cfg(), pred, target, vae=vae, estimator=Nobody(),
                       generator=_gen())  # fmt: skip
    assert torch.equal(empty["mask_detected"], torch.zeros(2))
    gt = stage_loss(LossConfig(kind="heatmap", source="ground_truth"), pred, target,
                    keypoints=[None, None], image_size=(64, 64))  # fmt: skip
    assert "mask_detected" not in gt  # no estimator: nothing to report
