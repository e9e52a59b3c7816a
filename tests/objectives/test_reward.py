"""The pose-consistency reward: its formulas against the references, its signal on a real photo
with the real yolo11n-pose, and its place in the stage loss."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from poseguide.config.schema import LossConfig
from poseguide.objectives import denoising_loss, derived_terms, stage_loss
from poseguide.objectives.reward import (
    RewardInputs,
    match_as_evaluation,
    person_losses,
    predicted_clean_latents,
    reward_target,
    reward_terms,
)
from poseguide.pose.oks import box_area_from_keypoints, oks, soft_oks


def _people(rng: np.random.Generator, n: int, size: float = 100.0) -> np.ndarray:
    people = np.zeros((n, 17, 3))
    people[..., :2] = rng.uniform(10, size, (n, 17, 2))
    people[..., 2] = rng.choice([0, 1, 2], (n, 17), p=[0.3, 0.2, 0.5])
    people[:, 0, 2] = 2  # at least one labelled joint each
    return people


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_clean_latents_are_the_schedulers_own(kind: str) -> None:
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear",
                              beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              prediction_type=kind)  # fmt: skip
    g = torch.Generator().manual_seed(0)
    noisy, out = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([0, 150, 999])
    got = predicted_clean_latents(scheduler, noisy, out, t)
    for i in range(3):
        ref = scheduler.step(out[i : i + 1], int(t[i]), noisy[i : i + 1]).pred_original_sample
        torch.testing.assert_close(got[i : i + 1], ref, rtol=1e-5, atol=1e-5)


def test_the_differentiable_oks_is_the_metric() -> None:
    rng = np.random.default_rng(0)
    gt, pred = _people(rng, 5), _people(rng, 5)
    pred[..., :2] = gt[..., :2] + rng.normal(0, 6, (5, 17, 2))  # near, so OKS spans (0, 1)
    areas = rng.uniform(500, 5000, 5)
    got = soft_oks(
        torch.tensor(pred[..., :2], dtype=torch.float32),
        torch.tensor(gt, dtype=torch.float32),
        torch.tensor(areas, dtype=torch.float32),
    )
    want = [oks(pred[p], gt[p], float(areas[p])) for p in range(5)]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    assert min(want) > 0.05 and max(want) < 0.999
    # Its gradient (ascent: OKS is a similarity) moves each predicted joint toward its target.
    xy = torch.tensor(pred[..., :2], dtype=torch.float32, requires_grad=True)
    soft_oks(xy, torch.tensor(gt, dtype=torch.float32), torch.tensor(areas)).sum().backward()
    labelled = gt[..., 2] > 0
    toward = ((gt[..., :2] - pred[..., :2]) * xy.grad.numpy()).sum(-1)
    assert (toward[labelled] > 0).all()


def _predictions(boxes: list, scores: list, keypoints: torch.Tensor, keep: list[int]):
    from poseguide.pose.detections import AnchorPredictions

    kpts = torch.cat([keypoints, torch.ones(*keypoints.shape[:-1], 1)], dim=-1)
    return AnchorPredictions(torch.tensor([boxes]), torch.tensor([scores]), kpts[None],
                             (128, 128), [torch.tensor(keep)])  # fmt: skip


def test_people_take_the_kept_detections_as_the_evaluation_matches() -> None:
    """Kept detections, best score first, each take the unmatched person of highest OKS (not
    the anchor of best box overlap); a person no kept detection overlaps takes the anchor that
    overlaps it best, whatever its score, and is unmatched."""
    rng = np.random.default_rng(7)
    a, b = _people(rng, 2, size=40)
    b[..., :2] += 60  # two people apart
    a[..., 2] = b[..., 2] = 2
    people = torch.tensor(np.stack([a, b]), dtype=torch.float32)
    area = torch.full((2,), 1600.0)

    def box(p: np.ndarray, pad: float = 0) -> list[float]:
        return [p[:, 0].min() - pad, p[:, 1].min() - pad, p[:, 0].max() + pad, p[:, 1].max() + pad]

    xy = people[..., :2]
    keypoints = torch.stack([xy[0] + 30, xy[0] + 1, xy[1], xy[1] + 1])  # anchor 0: a far off
    boxes = [box(a), box(a, 3), box(b), box(b)]
    found = _predictions(boxes, [0.6, 0.8, 0.7, 0.95], keypoints, keep=[3, 1, 0])
    index, matched = match_as_evaluation(found, 0, people, area, min_iou=0.1)
    assert index.tolist() == [1, 3] and matched.tolist() == [True, True]
    # COCOeval's order: the higher-scored detection takes the person first, even far off
    found = _predictions(boxes, [0.9, 0.8, 0.7, 0.95], keypoints, keep=[3, 0, 1])
    index, _ = match_as_evaluation(found, 0, people, area, min_iou=0.1)
    assert index.tolist() == [0, 3]
    # b's kept detection gone, and anchor 0's box moved away from a: b takes its best-overlap
    # anchor (2, not kept), unmatched
    found = _predictions(boxes, [0.9, 0.8, 0.7, 0.95], keypoints, keep=[1])
    index, matched = match_as_evaluation(found, 0, people, area, min_iou=0.1)
    assert index.tolist()[0] == 1 and matched.tolist() == [True, False]
    assert index.tolist()[1] in (2, 3)
    # a kept detection whose box does not overlap the person by min_iou does not match it
    far = [box(a + 100.0)] * 4
    found = _predictions(far, [0.9] * 4, keypoints, keep=[1])
    _, matched = match_as_evaluation(found, 0, people, area, min_iou=0.1)
    assert matched.tolist() == [False, False]


def test_a_joint_far_off_still_gets_a_gradient() -> None:
    """150 px off on a 100 x 200 px person: OKS's exponent is flat there, the normalised
    distance term is not; and a missed person gets a gradient on its anchor's score."""
    from poseguide.config.schema import EstimatorConfig

    person = np.zeros((1, 17, 3))
    person[0, :, 0] = np.linspace(100, 200, 17)
    person[0, :, 1] = np.linspace(100, 300, 17)
    person[0, :, 2] = 2
    target = reward_target(person, np.array([0.53 * 100 * 200]))
    estimator = EstimatorConfig()
    for weight, nonzero in ((0.0, False), (0.1, True)):
        xy = torch.tensor(person[0, :, :2], dtype=torch.float32)
        xy[9] += torch.tensor([150.0, 0.0])  # the left wrist 150 px off
        xy.requires_grad_(True)
        found = _predictions([[100.0, 100.0, 200.0, 300.0]], [0.9], xy[None], keep=[0])
        cfg = LossConfig(kind="reward", reward_distance_weight=weight)
        loss = person_losses(found, 0, target, cfg, (1.0, 1.0), estimator)["loss"].sum()
        (grad,) = torch.autograd.grad(loss, xy)
        assert (float(grad[9].abs().sum()) > 1e-4) is nonzero, (weight, grad[9])
    scores = torch.tensor([[0.05]], requires_grad=True)
    from poseguide.pose.detections import AnchorPredictions

    far = torch.tensor(person[0, :, :2], dtype=torch.float32)[None, None] + 500
    found = AnchorPredictions(torch.tensor([[[600.0, 600.0, 700.0, 800.0]]]), scores,
                              torch.cat([far, torch.ones(1, 1, 17, 1)], -1), (128, 128),
                              [torch.tensor([0])])  # fmt: skip
    out = person_losses(found, 0, target, LossConfig(kind="reward"), (1.0, 1.0), estimator)
    assert out["matched"].tolist() == [False]
    (grad,) = torch.autograd.grad(out["loss"].sum(), scores)
    assert float(grad) < 0  # raising the missed person's score lowers the loss


def test_targets_keep_labelled_people_and_default_their_areas() -> None:
    rng = np.random.default_rng(1)
    people = _people(rng, 3)
    people[1, :, 2] = 0  # nobody labelled: not a target
    target = reward_target(people, None)
    assert len(target.keypoints) == 2
    np.testing.assert_allclose(target.areas, box_area_from_keypoints(people[[0, 2]]))
    assert reward_target(None, None) is None and reward_target(people[[1]], None) is None
    # One labelled joint: the default area is 0, every OKS 0 whatever the prediction (no
    # gradient), so no target; with a real area it is one.
    single = people[[0]].copy()
    single[0, 1:, 2] = 0
    assert reward_target(single, None) is None
    assert len(reward_target(single, np.array([300.0])).keypoints) == 1


class _Anchors:
    """An estimator whose one anchor has the given box and keypoints (score 1)."""

    conf, heatmap_sigma, heatmap_stride, device = 0.25, 2.0, 4, torch.device("cpu")

    def __init__(self, box: list[float], keypoints: torch.Tensor) -> None:
        self.box, self.keypoints = box, keypoints

    def anchors(self, images: torch.Tensor):
        from poseguide.pose.detections import AnchorPredictions

        b = images.shape[0]
        kpts = torch.cat([self.keypoints, torch.ones(17, 1)], dim=-1)
        return AnchorPredictions(torch.tensor([[self.box]] * b), torch.ones(b, 1) * 0.5,
                                 kpts[None, None].expand(b, 1, 17, 3),
                                 (images.shape[-1], images.shape[-2]),
                                 [torch.tensor([0])] * b)  # fmt: skip


@pytest.mark.parametrize("kind", ["oks", "heatmap"])
def test_costs_grow_with_the_error_and_a_missed_person_costs_more(kind: str) -> None:
    """Exact keypoints cost nothing; 40 px off costs more, 80 px off more again (no
    saturation); a person no kept detection overlaps costs the most (its -log(score) term)."""
    target = reward_target(_people(np.random.default_rng(4), 1, size=60), None)
    xy = torch.from_numpy(target.keypoints[0, :, :2]).float()
    images = torch.zeros(1, 3, 128, 128)
    x0, y0 = xy.min(0).values.tolist()
    x1, y1 = xy.max(0).values.tolist()
    costs = {}
    cfg = LossConfig(kind="reward", reward_loss=kind)
    for name, box, keypoints in (("exact", [x0, y0, x1, y1], xy),
                                 ("far", [x0, y0, x1, y1], xy + 40.0),
                                 ("farther", [x0, y0, x1, y1], xy + 80.0),
                                 ("unmatched", [200.0, 200.0, 240.0, 240.0], xy)):  # fmt: skip
        out = reward_terms(images, [target], _Anchors(box, keypoints), cfg)
        costs[name] = float(out["reward"][0])
        assert float(out["unmatched"][0]) == (1.0 if name == "unmatched" else 0.0)
    assert costs["exact"] < 1e-6 < costs["far"] < costs["farther"]
    assert costs["unmatched"] > costs["exact"] + 0.5  # -log(0.5) = 0.69 on top


@pytest.fixture(scope="module")
def astronaut() -> tuple:
    from skimage import data

    from poseguide.pose.yolo import YoloPoseEstimator

    estimator = YoloPoseEstimator(device="cpu")  # the real yolo11n-pose
    image = torch.from_numpy(data.astronaut()).permute(2, 0, 1).float()[None] / 255
    return estimator, image


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["oks", "heatmap"])
def test_the_reward_moves_a_real_photo_toward_its_targets(astronaut: tuple, kind: str) -> None:
    """Targets: the estimator's own keypoints on scikit-image's astronaut shifted by 15 px. A
    few gradient steps on the pixels (fixed-size L2 steps) raise the estimator's OKS against the
    targets, measured by its own detect() and poseguide.pose.oks."""
    estimator, image = astronaut
    found = estimator.detect(image)[0].to_numpy().keypoints[:1]
    targets = found.copy()
    targets[..., 0] += 15.0
    targets[..., 2] = np.where(found[..., 2] > 0.5, 2, 0)
    target = reward_target(targets, None)

    def measured(x: torch.Tensor) -> float:
        with torch.no_grad():
            people = estimator.detect(x)[0].to_numpy().keypoints
        return oks(people[:1], targets, float(target.areas[0]))

    x, before = image.clone(), measured(image)
    first = None
    for _ in range(3):
        x.requires_grad_(True)
        terms = reward_terms(x, [target], estimator, LossConfig(kind="reward", reward_loss=kind))
        first = float(terms["oks"][0]) if first is None else first
        (grad,) = torch.autograd.grad(terms["reward"].sum(), x)
        with torch.no_grad():
            x = (x - 3e-5 * grad / grad.pow(2).mean().sqrt()).clamp(0, 1)
    assert first == pytest.approx(before, abs=1e-6)  # the matched anchor is NMS' detection
    after = measured(x)
    assert after > before + 0.02, (before, after)


class _Scheduler:
    """What the reward reads of a scheduler (alphas_cumprod, prediction_type)."""

    def __init__(self) -> None:
        from diffusers import DDPMScheduler

        self._s = DDPMScheduler(num_train_timesteps=1000)
        self.alphas_cumprod, self.config = self._s.alphas_cumprod, self._s.config


def _reward_inputs(steps: list[int], targets: list, estimator=None, vae=None) -> RewardInputs:
    n = len(steps)
    return RewardInputs(_Scheduler(), torch.randn(n, 4, 8, 8), torch.tensor(steps), steps,
                        targets, estimator, vae)  # fmt: skip


def test_no_rewarded_sample_leaves_the_base_loss_bitwise() -> None:
    rng = np.random.default_rng(2)
    target = reward_target(_people(rng, 1), None)
    g = torch.Generator().manual_seed(4)
    pred, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    base = denoising_loss(pred, eps)["loss"]
    cfg = LossConfig(kind="reward")
    # Every timestep above reward_timestep_max (no estimator or VAE is ever called)...
    out = stage_loss(cfg, pred, eps, reward=_reward_inputs([201, 999], [target, target]))
    assert torch.equal(out["loss"], base) and float(out["rewarded"].sum()) == 0
    # ...or reward_weight 0, or no target people.
    out = stage_loss(replace(cfg, reward_weight=0.0), pred, eps,
                     reward=_reward_inputs([0, 5], [target, target]))  # fmt: skip
    assert torch.equal(out["loss"], base)
    out = stage_loss(cfg, pred, eps, reward=_reward_inputs([0, 5], [None, None]))
    assert torch.equal(out["loss"], base)
    with pytest.raises(ValueError, match="needs reward="):
        stage_loss(cfg, pred, eps)


def test_rewarded_samples_add_the_weighted_reward_and_only_they(tiny_sd: str, astronaut) -> None:
    from poseguide.models import load_sd_parts

    estimator, _ = astronaut
    vae = load_sd_parts(tiny_sd).vae
    rng = np.random.default_rng(3)
    target = reward_target(_people(rng, 1, size=60), None)
    g = torch.Generator().manual_seed(5)
    pred = torch.randn(3, 4, 8, 8, generator=g, requires_grad=True)
    eps = torch.randn(3, 4, 8, 8, generator=g)
    inputs = _reward_inputs([10, 500, 200], [target] * 3, estimator, vae)
    cfg = LossConfig(kind="reward", reward_weight=0.5)
    out = stage_loss(cfg, pred, eps, reward=inputs)
    base = denoising_loss(pred, eps)["loss"]
    assert out["rewarded"].tolist() == [1.0, 0.0, 1.0]  # t <= 200 only
    assert torch.equal(out["loss"][1], base[1])
    reward = out["reward_sum"]
    # ControlNet++'s normalisation: 2 of 3 rewarded, the batch mean adds 0.5 x their mean
    torch.testing.assert_close(out["loss"][[0, 2]], base[[0, 2]] + 0.5 * 1.5 * reward[[0, 2]])
    torch.testing.assert_close(out["loss"].mean(), base.mean() + 0.5 * reward[[0, 2]].mean())
    assert (reward[[0, 2]] > 0).all() and float(reward[1]) == 0
    (grad,) = torch.autograd.grad(out["loss"][0], pred)
    assert grad[0].abs().sum() > 0 and float(grad[1:].abs().sum()) == 0
    logged = derived_terms({k: float(v.mean()) for k, v in out.items() if k != "_debug"})
    assert logged["reward"] == pytest.approx(float(reward[[0, 2]].mean()), rel=1e-6)
    assert logged["rewarded"] == pytest.approx(2 / 3)
    assert "reward_sum" not in logged and "reward_people" not in logged
    assert derived_terms({"reward_sum": 0.0, "rewarded": 0.0})["reward"] is None


def test_an_fp16_vae_decodes_the_reward_in_a_wide_range_copy(tiny_sd: str, astronaut) -> None:
    """fp16 overflows in a decode with gradients: the reward decodes with one bf16 copy of an
    fp16 VAE (the copy the stage-2 mask uses too), and its loss stays finite."""
    from poseguide.models import load_sd_parts
    from poseguide.models.sd import wide_range_vae

    estimator, _ = astronaut
    vae = load_sd_parts(tiny_sd, dtype=torch.float16).vae
    wide = wide_range_vae(vae, "test")
    assert wide is not vae and wide.dtype == torch.bfloat16 and wide_range_vae(vae, "x") is wide
    fp32 = load_sd_parts(tiny_sd).vae
    assert wide_range_vae(fp32, "test") is fp32
    target = reward_target(_people(np.random.default_rng(3), 1, size=60), None)
    pred = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5), requires_grad=True)
    out = stage_loss(LossConfig(kind="reward"), pred, torch.zeros(1, 4, 8, 8),
                     reward=_reward_inputs([10], [target], estimator, vae))  # fmt: skip
    assert bool(torch.isfinite(out["loss"]).all()) and float(out["rewarded"][0]) == 1
    (grad,) = torch.autograd.grad(out["loss"].sum(), pred)
    assert bool(torch.isfinite(grad).all()) and grad.abs().sum() > 0


def test_an_end_to_end_pose_model_is_refused_for_the_reward() -> None:
    """An NMS-free head (YOLO26-style ``end2end``) returns its own top-k, not every anchor: the
    reward says so in one line instead of misreading the output."""
    from types import SimpleNamespace

    from poseguide.errors import InputError
    from poseguide.pose.yolo import YoloPoseEstimator

    estimator = YoloPoseEstimator("yolo26n-pose.pt", device="cpu")
    estimator._network = SimpleNamespace(end2end=True)
    with pytest.raises(InputError, match="end-to-end .* YOLOv8 or YOLO11"):
        estimator.anchors(torch.zeros(1, 3, 64, 64))


@pytest.mark.slow
def test_the_chosen_anchor_is_the_nms_winner_on_real_photos(astronaut: tuple) -> None:
    """Targets: the detection path's own people (ultralytics' NMS on the same network output)
    on real photos; the reward matches each to exactly that detection's anchor, and keypoints
    outside the image keep their unclipped position (ultralytics' scale_coords clips them)."""
    import matplotlib
    from PIL import Image
    from skimage import data
    from ultralytics.utils import ops

    from poseguide.pose.yolo import unclipped_coords

    estimator, _ = astronaut
    hopper = Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
    photos = [data.astronaut(), np.asarray(hopper.convert("RGB")),
              np.stack([data.camera()] * 3, axis=-1), data.coffee()]  # fmt: skip
    for photo in photos:
        image = torch.from_numpy(np.ascontiguousarray(photo)).permute(2, 0, 1).float()[None] / 255
        with torch.no_grad():
            found = estimator.detect(image)[0]
            anchors = estimator.anchors(image)
        people = found.keypoints.clone()
        people[..., 2] = 2.0
        areas = (found.boxes[:, 2:] - found.boxes[:, :2]).prod(1) * 0.53
        index, matched = match_as_evaluation(anchors, 0, people, areas, min_iou=0.1)
        assert matched.all() and len(index) == len(found.scores)
        torch.testing.assert_close(anchors.boxes[0, index], found.boxes, atol=1e-3, rtol=0)
        torch.testing.assert_close(anchors.scores[0, index], found.scores, atol=1e-5, rtol=0)
    shape, coords = (640, 640), torch.tensor([[[-50.0, 700.0, 1.0], [320.0, 320.0, 1.0]]])
    clipped = ops.scale_coords(shape, coords.clone(), (512, 256))
    free = unclipped_coords(shape, coords, (512, 256))
    torch.testing.assert_close(free[0, 1], clipped[0, 1])  # inside: the same mapping
    assert float(free[0, 0, 0]) < 0 and float(clipped[0, 0, 0]) == 0  # outside: not clipped
