"""The pose-consistency reward: a ControlNet++-style stage through a differentiable pose estimator.

For a training sample whose timestep is at most ``reward_timestep_max`` (ControlNet++'s
"efficient reward": at small t one denoising step already shows the image):

1. ``x0_hat``, the clean latents the model's output implies, by the scheduler's own formula for
   its ``prediction_type`` (diffusers' ``DDPMScheduler.step`` ``pred_original_sample``):
   epsilon ``(z_t - sqrt(1 - a_t) eps_theta) / sqrt(a_t)``, v_prediction
   ``sqrt(a_t) z_t - sqrt(1 - a_t) v_theta``, sample: the output itself.
2. The image ``clamp((vae.decode(x0_hat / s).sample + 1) / 2, 0, 1)``, decoded *with* gradients
   (frozen weights, activations kept; the decoder is gradient-checkpointed when
   ``train.gradient_checkpointing`` is on), resized to ``reward_resolution`` if set.
3. The YOLO-pose network on that image (:meth:`poseguide.pose.yolo.YoloPoseEstimator.anchors`:
   every anchor's box, score and keypoints before NMS, keypoints not clipped to the image, and
   which anchors ultralytics' NMS keeps; frozen, gradients reach its input only).
4. Matching as the evaluation matches (:func:`match_as_evaluation`): the kept detections,
   greedily by score, each take the unmatched target person of highest OKS (COCOeval's rule),
   counting only above ``reward_min_iou`` box overlap; the gradient flows through the kept
   anchor. A person left unmatched takes the anchor overlapping it best, whatever its score.
5. Per person (:func:`person_losses`): ``1 - OKS`` (``reward_loss: oks``, pycocotools'
   formula, COCO sigmas, the person's area) or the heatmap MSE over its worst case
   (``heatmap``), plus ``reward_distance_weight`` x the mean Huber of the OKS-normalised joint
   distances (which does not saturate: a limb 150 px off still gets a gradient), plus, for an
   unmatched person, ``reward_presence_weight`` x ``-log(score)``. A sample's reward loss is
   the mean over its target people; the targets are the row's keypoints, from which the
   condition is drawn (``data.pose_image: render``), or pseudo ground truth (see the README).

The stage's loss (:func:`poseguide.objectives.stage_loss`) is ``base + reward_weight * (B / n)
* reward`` for the n rewarded samples of a (micro-)batch of B and the base loss (``base_loss``:
denoising or heatmap) alone for the others, so the batch mean is ``mean(base) + reward_weight *
mean(reward over the rewarded samples)``: ControlNet++'s ``(mask * r).sum() / mask.sum()``
weighted by its ``--grad_scale`` (default 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from poseguide.errors import TrainingError
from poseguide.models.sd import wide_range_vae
from poseguide.pose.heatmaps import gaussian_heatmaps
from poseguide.pose.oks import (
    box_area_from_keypoints,
    joint_similarity,
    normalized_distance,
    oks_pairs,
    soft_oks,
    target_boxes,
)
from poseguide.pose.skeleton import NUM_COCO17
from poseguide.utils.device import to_device

REWARD_LOSSES: tuple[str, ...] = ("oks", "heatmap")


@dataclass(frozen=True)
class RewardTarget:
    """One sample's target people at training resolution: (P, 17, 3) keypoints with at least
    one labelled joint each, their areas, and whether they are pseudo ground truth."""

    keypoints: np.ndarray
    areas: np.ndarray
    pseudo: bool = False


def reward_target(keypoints: np.ndarray | None, areas: np.ndarray | None,
                  pseudo: bool = False) -> RewardTarget | None:  # fmt: skip
    """The sample's target people, or None when it has none. A target has a labelled joint
    and an area > 0: without areas, ``0.53 * w * h`` of the labelled joints' box stands in
    (poseguide's stand-in for ultralytics' rule, which takes the annotated box; the evaluation
    uses the same stand-in for keypoints without areas), 0 for one joint or joints on a line;
    OKS is then 0 whatever the prediction (no gradient), so such a person is no target."""
    if keypoints is None or len(keypoints) == 0:
        return None
    people = np.asarray(keypoints, dtype=np.float64).reshape(-1, NUM_COCO17, 3)
    if areas is None:
        areas = box_area_from_keypoints(people)
    areas = np.asarray(areas, dtype=np.float64).reshape(-1)
    kept = (people[..., 2] > 0).any(axis=1) & (areas > 0)
    if not kept.any():
        return None
    return RewardTarget(people[kept], areas[kept], pseudo)


def batch_targets(batch: dict, stage: str) -> list[RewardTarget | None]:
    """One reward target per row of a collated batch: ``reward_targets`` when the batch carries
    them, else each row's keypoints, else its pseudo ground truth (the cache's, see
    :mod:`poseguide.pseudo`); a row with neither stops training with one line."""
    if batch.get("reward_targets") is not None:
        return batch["reward_targets"]
    return [_row_target(batch, i, stage) for i in range(len(batch["keypoints"]))]


def _row_target(batch: dict, i: int, stage: str) -> RewardTarget | None:
    keypoints, areas = batch["keypoints"][i], batch.get("areas")
    if keypoints is not None:
        return reward_target(keypoints, areas[i] if areas else None)
    pseudo = batch.get("pseudo_keypoints")
    if pseudo and pseudo[i] is not None:
        return reward_target(pseudo[i], batch["pseudo_areas"][i], pseudo=True)
    raise TrainingError(
        f"row {batch['ids'][i]}: no keypoints for stage {stage!r}'s reward; rows without "
        "keypoints take pseudo ground truth stored with the latent cache: set "
        "data.cache.enabled=true (or use a source with keypoints)"
    )


def predicted_clean_latents(scheduler: Any, noisy: torch.Tensor, output: torch.Tensor,
                            timesteps: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """x0_hat (B, C, h, w) float32 from z_t, the model output and t, as the scheduler's
    ``step`` computes its ``pred_original_sample`` (no clipping: SD1.5's ``clip_sample`` is
    off)."""
    alphas = scheduler.alphas_cumprod.to(device=output.device, dtype=torch.float32)[timesteps]
    a = alphas.view(-1, *([1] * (output.ndim - 1)))
    z, out = noisy.float(), output.float()
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return (z - (1 - a).sqrt() * out) / a.sqrt()
    if kind == "v_prediction":
        return a.sqrt() * z - (1 - a).sqrt() * out
    if kind == "sample":
        return out
    raise ValueError(f"prediction_type {kind!r}: expected epsilon, v_prediction or sample")


def decode(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) float32 images in [0, 1], differentiable in ``latents``."""
    z = (latents / vae.config.scaling_factor).to(vae.dtype)
    return ((vae.decode(z).sample.float() + 1.0) / 2.0).clamp(0.0, 1.0)


def match_as_evaluation(anchors: Any, b: int, people: torch.Tensor, areas: torch.Tensor,
                        min_iou: float) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(anchor index, matched) per target person of image ``b``, chosen as the evaluation
    chooses: the anchors ultralytics' NMS keeps (``anchors.keep``), best score first, each take
    the unmatched person of highest OKS (COCOeval's rule, as
    :func:`poseguide.pose.oks.match_greedy`: OKS > 0, the last person among equal bests), a
    detection taking only people its box overlaps by ``min_iou``. A person left unmatched gets
    the anchor whose box overlaps its box best, whatever its score, so that its keypoints and
    score still get a gradient. All on the device: no host read."""
    from torchvision.ops import box_iou

    iou_all = box_iou(target_boxes(people).to(anchors.boxes.dtype), anchors.boxes[b].detach())
    index = iou_all.argmax(dim=1)  # (P,) the fallback: best overlap, any score
    kept = anchors.keep[b] if anchors.keep is not None else None
    if kept is None or kept.numel() == 0:
        return index, torch.zeros(len(people), dtype=torch.bool, device=index.device)
    kept = kept.to(index.device)
    kept = kept[anchors.scores[b, kept].detach().argsort(descending=True, stable=True)]
    # float64 as pycocotools: a far prediction's OKS stays > 0 (float32 underflows to 0)
    xy = anchors.keypoints[b, kept, :, :2].detach().double()  # (K, 17, 2)
    similarity = oks_pairs(xy, people.double(), areas.double())  # (P, K)
    similarity = torch.where(iou_all[:, kept] >= min_iou, similarity, torch.zeros_like(similarity))
    assigned = _greedy(similarity)
    matched = assigned >= 0
    index = torch.where(matched, kept[assigned.clamp_min(0)], index)
    return index, matched


def _greedy(similarity: torch.Tensor) -> torch.Tensor:
    """(P,) the detection (column, in score order) each person takes, -1 for none: column by
    column, the untaken person of highest similarity > 0, the last one among equal bests."""
    people = similarity.shape[0]
    rows = torch.arange(people, device=similarity.device)
    assigned = torch.full((people,), -1, dtype=torch.long, device=similarity.device)
    for k in range(similarity.shape[1]):  # the column count is a shape: no host read
        column = torch.where(assigned >= 0, torch.full_like(similarity[:, k], -1.0),
                             similarity[:, k])  # fmt: skip
        best = people - 1 - column.flip(0).argmax()
        take = (rows == best) & (column.amax() > 0)
        assigned = torch.where(take, torch.full_like(assigned, k), assigned)
    return assigned


def _heatmaps(xy: torch.Tensor, labelled: torch.Tensor, size: tuple[int, int],
              heatmap: tuple[int, int], sigma: float) -> torch.Tensor:  # fmt: skip
    """(P, 17, h, w) Gaussian maps at ``xy`` (P, 17, 2) for the labelled joints."""

    people = torch.cat([xy, labelled[..., None].to(xy.dtype)], dim=-1)
    return torch.stack([gaussian_heatmaps(p, size, heatmap, sigma, device=xy.device,
                                          keep_grad=True) for p in people])  # fmt: skip


def person_losses(anchors: Any, b: int, target: RewardTarget, cfg: Any,
                  scale: tuple[float, float], estimator: Any) -> dict:  # fmt: skip
    """Loss, OKS and matched flag per target person of sample ``b`` of ``anchors``
    (:class:`poseguide.pose.detections.AnchorPredictions` on an image ``scale`` = (x, y) times
    the training resolution), for the stage's loss config ``cfg``.

    Per person: the pose term (``oks``: 1 - OKS; ``heatmap``: the heatmap MSE divided by its
    worst case, in [0, 1]), plus ``reward_distance_weight`` times the mean Huber of the
    normalised joint distances (:func:`normalized_distance`: its gradient does not vanish for
    a limb far off), plus, for a person the detections miss, ``reward_presence_weight`` times
    ``-log(score)`` of its anchor (so a missing person is taught to appear)."""
    device = anchors.keypoints.device
    people = to_device(torch.from_numpy(target.keypoints.astype(np.float32)), device)
    areas = to_device(torch.from_numpy(target.areas.astype(np.float32)), device)
    factor = torch.tensor(scale, dtype=people.dtype, device=device)
    scaled = torch.cat([people[..., :2] * factor, people[..., 2:]], dim=-1)
    index, matched = match_as_evaluation(anchors, b, scaled, areas * scale[0] * scale[1],
                                         cfg.reward_min_iou)  # fmt: skip
    pred_xy = anchors.keypoints[b, index, :, :2] / factor  # back to training pixels
    labelled = (people[..., 2] > 0).to(pred_xy.dtype)
    oks = soft_oks(pred_xy, people, areas)
    if cfg.reward_loss == "oks":
        pose = 1.0 - oks
    else:
        pose = _heatmap_term(pred_xy, people, labelled, anchors.image_size, scale, estimator)
    huber = F.huber_loss(normalized_distance(pred_xy, people, areas),
                         torch.zeros_like(labelled), reduction="none", delta=1.0)  # fmt: skip
    distance = (huber * labelled).sum(1) / labelled.sum(1)
    presence = -torch.log(anchors.scores[b, index].clamp_min(1e-4))
    loss = pose + cfg.reward_distance_weight * distance
    loss = loss + torch.where(
        matched, torch.zeros_like(loss), cfg.reward_presence_weight * presence
    )
    return {"loss": loss, "oks": torch.where(matched, oks, torch.zeros_like(oks)),
            "matched": matched, "keypoints": pred_xy, "people": people, "areas": areas}  # fmt: skip


def _heatmap_term(pred_xy: torch.Tensor, people: torch.Tensor, labelled: torch.Tensor,
                  image_size: tuple[int, int], scale: tuple[float, float],
                  estimator: Any) -> torch.Tensor:  # fmt: skip
    """(P,) the heatmap MSE over labelled joints divided by its worst case (maps that overlap
    nowhere: the two maps' energies; a predicted map is at most a whole Gaussian), in [0, 1]."""
    w, h = image_size
    size = (round(w / scale[0]), round(h / scale[1]))
    stride, sigma = estimator.heatmap_stride, estimator.heatmap_sigma
    grid = (max(size[0] // stride, 1), max(size[1] // stride, 1))
    mask = labelled > 0
    want = _heatmaps(people[..., :2], mask, size, grid, sigma)
    got = _heatmaps(pred_xy, mask, size, grid, sigma)
    centre = torch.tensor([size[0] / 2, size[1] / 2], device=pred_xy.device)
    whole = _heatmaps(centre.expand_as(people[..., :2]), mask, size, grid, sigma)
    per_joint = ((got - want) ** 2).mean(dim=(-1, -2))
    worst = ((whole**2) + want**2).mean(dim=(-1, -2)).clamp_min(1e-12)
    return ((per_joint / worst).clamp(max=1.0) * labelled).sum(1) / labelled.sum(1)


def reward_terms(images: torch.Tensor, targets: list[RewardTarget], estimator: Any, cfg: Any,
                 details: list | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
    """Per-sample (B,) reward loss, mean OKS and unmatched-person count for decoded images
    (B, 3, H, W) in [0, 1] with one :class:`RewardTarget` each (differentiable in ``images``).
    ``details``, a list, receives per sample the matched keypoints (P, 17, 2), the per-joint
    similarity (P, 17; NaN on unlabelled joints) and the matched flags (``explain-loss``)."""
    if cfg.reward_loss not in REWARD_LOSSES:
        raise ValueError(f"reward_loss {cfg.reward_loss!r}: expected one of {REWARD_LOSSES}")
    resolution, scale = cfg.reward_resolution, (1.0, 1.0)
    if resolution is not None and resolution != images.shape[-1]:
        h, w = images.shape[-2:]
        size = (resolution, max(round(h * resolution / w), 1))  # (width, height)
        scale = (size[0] / w, size[1] / h)
        images = F.interpolate(images, size=size[::-1], mode="bilinear", antialias=True,
                               align_corners=False)  # fmt: skip
    anchors = estimator.anchors(images.to(estimator.device))
    device = anchors.boxes.device
    out: dict[str, list[torch.Tensor]] = {"reward": [], "oks": [], "unmatched": [], "people": []}
    for b, target in enumerate(targets):
        per = person_losses(anchors, b, target, cfg, scale, estimator)
        out["reward"].append(per["loss"].mean())
        out["oks"].append(per["oks"].mean())
        out["unmatched"].append((~per["matched"]).float().sum())
        out["people"].append(torch.full((), float(len(target.keypoints)), device=device))
        if details is not None:
            details.append(_details(per))
    return {k: torch.stack(v).to(images.device) for k, v in out.items()}


def _details(per: dict) -> dict:
    """What ``explain-loss`` shows of one sample: matched keypoints, per-joint similarity."""
    xy, people = per["keypoints"].detach(), per["people"]
    similarity = joint_similarity(xy, people, per["areas"])
    labelled = people[..., 2] > 0
    joint = torch.where(labelled & per["matched"][:, None], similarity,
                        torch.zeros_like(similarity))  # fmt: skip
    joint = torch.where(labelled, joint, torch.full_like(similarity, float("nan")))
    return {"keypoints": xy.cpu(), "joint_oks": joint.cpu(), "matched": per["matched"].cpu()}


@dataclass
class RewardInputs:
    """What the reward needs from the step besides the prediction: the scheduler, z_t, the
    timesteps (on the device and as Python ints, read without a sync), one target per sample
    (None: no target people), the reward's estimator and the VAE."""

    scheduler: Any
    noisy: torch.Tensor  # z_t (B, C, h, w)
    timesteps: torch.Tensor  # (B,) on the device
    steps: list[int]  # the same timesteps on the host
    targets: list[RewardTarget | None]
    estimator: Any
    vae: Any


def reward_inputs(parts: Any, inputs: Any, batch: dict, stage: str,
                  estimator: Any) -> RewardInputs:  # fmt: skip
    """The reward's inputs for one step: the frozen ``parts``' scheduler and VAE, the step's
    ``inputs`` (z_t, timesteps), the batch's targets (:func:`batch_targets`) and the
    reward's ``estimator``."""
    return RewardInputs(parts.scheduler, inputs.noisy, inputs.timesteps, inputs.steps,
                        batch_targets(batch, stage), estimator, parts.vae)  # fmt: skip


# Logged reward terms are per-sample sums over the rewarded samples (0 elsewhere), reduced as
# means like every term; the logged value is their ratio to the mean of the weight term, which
# is the mean over the rewarded samples (people) whatever the batch, micro-batch and process
# split.
REWARD_RATIOS: dict[str, tuple[str, str]] = {
    "reward": ("reward_sum", "rewarded"),
    "reward_oks": ("reward_oks_sum", "rewarded"),
    "unmatched_fraction": ("unmatched", "reward_people"),
    "reward_pseudo_fraction": ("reward_pseudo", "rewarded"),  # targets from pseudo ground truth
}


def rewarded_rows(cfg: Any, inputs: RewardInputs) -> list[int]:
    """The samples the reward applies to: t <= ``reward_timestep_max`` and target people."""
    if cfg.reward_weight == 0:
        return []
    return [i for i, (t, target) in enumerate(zip(inputs.steps, inputs.targets, strict=True))
            if t <= cfg.reward_timestep_max and target is not None]  # fmt: skip


def add_reward(cfg: Any, base: dict, pred: torch.Tensor, inputs: RewardInputs,
               debug: bool = False) -> dict:  # fmt: skip
    """The base loss terms plus the reward: ``loss = base + reward_weight * (B / n) * reward``
    on the n rewarded samples of the B (so the batch mean adds ``reward_weight`` times their
    mean reward, ControlNet++'s normalisation), the base loss unchanged (bitwise) on the
    others."""
    batch = pred.shape[0]
    zeros = torch.zeros(batch, device=pred.device)
    terms = dict.fromkeys(("reward_sum", "reward_oks_sum", "rewarded", "unmatched",
                           "reward_people", "reward_pseudo"), zeros)  # fmt: skip
    rows = rewarded_rows(cfg, inputs)
    out = {**base, **terms}
    if debug:
        out["_debug"] = {**base.get("_debug", {}), "reward_rows": rows}
    if not rows:
        return out
    index = to_device(torch.tensor(rows), pred.device)
    x0 = predicted_clean_latents(inputs.scheduler, inputs.noisy[index], pred[index],
                                 inputs.timesteps[index])  # fmt: skip
    images = decode(wide_range_vae(inputs.vae, "the reward's decode"), x0)
    targets = [inputs.targets[i] for i in rows]
    details: list | None = [] if debug else None
    per = reward_terms(images, targets, inputs.estimator, cfg, details)
    chosen = torch.zeros(batch, dtype=torch.bool, device=pred.device).index_fill(0, index, True)
    spread = {k: zeros.index_put((index,), v.to(zeros.dtype)) for k, v in per.items()}
    # ControlNet++'s normalisation ((mask * r).sum() / mask.sum()): the batch mean of these
    # per-sample losses is mean(base) + reward_weight * (the mean reward of the rewarded rows).
    scale = cfg.reward_weight * batch / len(rows)
    out["loss"] = torch.where(chosen, base["loss"] + scale * spread["reward"], base["loss"])
    pseudo = [float(inputs.targets[i].pseudo) for i in rows]
    out.update(reward_sum=spread["reward"].detach(), reward_oks_sum=spread["oks"].detach(),
               rewarded=chosen.float(), unmatched=spread["unmatched"],
               reward_people=spread["people"],
               reward_pseudo=zeros.index_put((index,), to_device(torch.tensor(pseudo),
                                                                  pred.device)))  # fmt: skip
    if debug:
        with torch.no_grad():  # what the noisy input z_t looks like
            noisy = decode(wide_range_vae(inputs.vae, "the reward's decode"),
                           inputs.noisy[index].float())  # fmt: skip
        out["_debug"].update(reward_images=images.detach(), reward_noisy=noisy,
                             reward_targets=targets, reward_details=details)  # fmt: skip
    return out
