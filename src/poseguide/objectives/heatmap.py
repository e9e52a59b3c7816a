"""The stage-2 objective: HumanSD's heatmap-guided loss and its masks (METHOD 3).

Stage 2 weights the squared error element-wise, ``mean((1 + w * H_E) * (pred - target)^2)``, with
``H_E`` from one of two sources (``LossConfig.source``):

* ``predicted_error`` -- HumanSD's released pipeline (:func:`predicted_error_mask`): VAE-decode
  the prediction error, pose heatmaps of that image, threshold into a mask, VAE-encode the mask.
* ``ground_truth`` -- the sample's keypoints drawn directly at latent resolution
  (:func:`ground_truth_mask`, the cheap Stable-Pose style source). Stable-Pose's
  ``alpha * mask + (1 - mask)`` is this loss with ``w = alpha - 1``.

A weight of 0 or an all-zero ``H_E`` gives exactly (bitwise) the stage-1 loss: both losses share
one squared-error and one reduction routine, and the weighted one only multiplies by a weight map
that is then exactly 1.0 (see :func:`heatmap_weighted_loss`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from poseguide.config.schema import LossConfig
from poseguide.models.sd import wide_range_vae
from poseguide.objectives.denoising import Losses, per_sample_mean, squared_error
from poseguide.pose.heatmaps import binary_mask, keypoint_mask, skeleton_mask
from poseguide.pose.skeleton import NUM_COCO17
from poseguide.utils.device import to_device

MASK_SOURCES: tuple[str, ...] = ("predicted_error", "ground_truth")


def _check_mask(h_e: torch.Tensor, pred: torch.Tensor) -> None:
    b, c, h, w = pred.shape
    if h_e.ndim != 4 or h_e.shape[0] != b or h_e.shape[1] not in (1, c) or h_e.shape[2:] != (h, w):
        raise ValueError(
            f"H_E must be (B, {c}, h, w) or (B, 1, h, w) matching pred {tuple(pred.shape)}; "
            f"got {tuple(h_e.shape)}"
        )


def heatmap_weighted_loss(
    pred: torch.Tensor, target: torch.Tensor, h_e: torch.Tensor, weight: float
) -> Losses:
    """Stage-2 loss ``mean((1 + weight * H_E) * (pred - target)^2)`` per sample (METHOD 3.6).

    The weight multiplies the squared error (it is not squared, unlike the thesis' formula), as
    in HumanSD's released code. ``H_E`` is a constant: no gradient flows into it. ``1 + w*H_E``
    can be negative for large ``|H_E|`` (a negative weight pushes that element's error *up*);
    ``neg_weight_frac`` says how often.

    Exactness: with ``weight == 0`` or ``H_E == 0`` (finite values) the weight map is exactly 1.0,
    ``1.0 * x == x`` bitwise, and the product goes through the same contiguous (B, N) reduction
    as :func:`denoising_loss`, so ``loss`` equals the stage-1 loss bitwise.

    Args:
        pred, target: (B, C, h, w), as for :func:`denoising_loss`.
        h_e: the latent weight mask H_E, (B, C, h, w) or (B, 1, h, w) (shared by all channels),
            any real values (the VAE-encoded mask is roughly in [-4, 4]).
        weight: w >= 0 (the thesis: 0.05, HumanSD: 0.1).

    Returns:
        float32 (B,) tensors: ``loss``; ``mse`` (unweighted, the stage-1 loss); ``he_mean``,
        ``he_min``, ``he_max`` over H_E's elements; ``neg_weight_frac``, the fraction of the
        (C, h, w) loss elements whose weight ``1 + w * H_E`` is < 0, in [0, 1].
    """
    _check_mask(h_e, pred)
    sq = squared_error(pred, target)
    h_e = h_e.detach().to(device=sq.device, dtype=torch.float32)
    weight_map = 1.0 + weight * h_e  # (B, 1 or C, h, w); broadcast over channels below
    flat = h_e.reshape(h_e.shape[0], -1)
    return {
        "loss": per_sample_mean(weight_map * sq),
        "mse": per_sample_mean(sq),
        "he_mean": flat.mean(dim=1),
        "he_min": flat.amin(dim=1),
        "he_max": flat.amax(dim=1),
        # Over (1, h, w) this equals the fraction over the channel-broadcast (C, h, w) elements.
        "neg_weight_frac": per_sample_mean((weight_map < 0).float()),
    }


def _resize(mask: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize (B, 1, h', w') to ``size`` = (H, W) with ``mode`` (bicubic as HumanSD)."""
    if tuple(mask.shape[-2:]) == size:
        return mask
    align = None if mode == "nearest" else False
    return F.interpolate(mask, size=size, mode=mode, align_corners=align)


@torch.no_grad()
def predicted_error_mask(
    diff: torch.Tensor,
    vae: Any,
    estimator: Any,
    cfg: LossConfig,
    heatmap_size: tuple[int, int] | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """HumanSD's latent weight mask H_E built from the prediction error (METHOD 3.1-3.5).

    All under ``no_grad``: nothing here is differentiated. The VAE runs in its own dtype (bf16
    or fp16 under mixed precision, the cheap path) on its own device; results come back float32.

    1. ``M = clamp((vae.decode(diff / s).sample + 1) / 2, 0, 1)``, with the latent scale
       s = ``vae.config.scaling_factor``.
    2. ``H = estimator.heatmaps(M, heatmap_size)`` (the estimator's default size when None).
    3. ``H_M = binary_mask(H, cfg.threshold, cfg.polarity, cfg.reduction)``, resized to M's size
       with ``cfg.mask_resize`` (bicubic may overshoot slightly, as in HumanSD) and repeated to
       the VAE's input channels.
    4. ``H_E = vae.encode(H_M).latent_dist.sample(generator) * s``. H_M is fed **unnormalised**
       (values 0..17 for reduction "sum", 0..1 for "max"; not mapped to the VAE's [-1, 1]), as
       HumanSD's released code does.

    Args:
        diff: the prediction error ``eps_theta - eps`` in latent space (B, 4, h, w), any float
            dtype and device (it is detached and cast to the VAE's dtype here).
        vae: the frozen diffusers AutoencoderKL.
        estimator: a :class:`poseguide.pose.estimator.PoseEstimator`; it receives float32
            (B, 3, H, W) images in [0, 1] on the VAE's device, H, W = the decoded size.
        cfg: the stage's loss config (threshold, polarity, reduction, mask_resize).
        heatmap_size: (w, h) of the heatmaps, passed to the estimator.
        generator: draws the VAE posterior sample in step 4; seeding it (and checkpointing its
            state) makes H_E reproducible. It must be on the CPU or on the VAE's device; None
            uses the global RNG.

    Returns:
        float32 tensors: ``h_e`` (B, 4, h, w); ``decoded`` M (B, 3, H, W) in [0, 1];
        ``heatmaps`` H (B, 17, h', w'); ``h_m`` (B, 3, H, W) (a channel-expanded view).
    """
    scale = vae.config.scaling_factor
    vae, autocast = _mask_vae(vae, cfg)
    # Under autocast the inputs stay float32 (autocast casts them per op); else the VAE's dtype.
    in_dtype = torch.float32 if autocast else vae.dtype
    z = (diff.detach().float() / scale).to(device=vae.device, dtype=in_dtype)
    with torch.autocast(vae.device.type, dtype=torch.bfloat16, enabled=autocast):
        decoded = ((vae.decode(z).sample.float() + 1.0) / 2.0).clamp(0.0, 1.0)
    heatmaps = estimator.heatmaps(decoded, heatmap_size).to(decoded.device, torch.float32)
    mask = binary_mask(heatmaps, cfg.threshold, cfg.polarity, cfg.reduction)
    # Resizing one channel and then expanding equals resizing the three identical channels.
    mask = _resize(mask, tuple(decoded.shape[-2:]), cfg.mask_resize)
    h_m = mask.expand(-1, vae.config.in_channels, -1, -1)
    with torch.autocast(vae.device.type, dtype=torch.bfloat16, enabled=autocast):
        posterior = vae.encode(h_m.to(in_dtype)).latent_dist
        h_e = (_posterior_sample(posterior, generator) * scale).float()
    return {"h_e": h_e, "decoded": decoded, "heatmaps": heatmaps, "h_m": h_m}


def mask_detected(heatmaps: torch.Tensor) -> torch.Tensor:
    """(B,) 1.0 where the estimator found anybody in the decoded error image, else 0.0.

    YOLO draws heatmaps only for people it keeps (NMS, conf): where it finds nobody H is 0
    everywhere, H_M is the same for every pixel (17 for "not_detected"/"sum") and H_E carries
    no pose, so stage 2 is stage 1 with a near-constant reweighting on those samples. The
    training log's ``mask_detected`` is the fraction of samples where this did not happen."""
    return (heatmaps.detach().flatten(1).amax(dim=1) > 0).float()


def _mask_vae(vae: Any, cfg: LossConfig) -> tuple[Any, bool]:
    """The VAE for the mask and whether it runs under bf16 autocast.

    ``mask_precision`` "bf16" on an fp32 VAE: bf16 autocast (faster, not exact). An fp16 VAE
    never runs the mask in fp16, whatever ``mask_precision`` says: the decode of
    ``diff / scaling_factor`` and the encode of the unnormalised 0..17 mask overflow fp16's
    range (:func:`poseguide.models.sd.wide_range_vae`)."""

    if vae.dtype != torch.float16:
        return vae, cfg.mask_precision == "bf16" and vae.dtype == torch.float32
    return wide_range_vae(vae, "the stage-2 mask"), False


def _posterior_sample(posterior: Any, generator: Any) -> torch.Tensor:
    """``posterior.sample(generator)`` with the same numbers (diffusers' ``randn_tensor``: one
    CPU draw per row from its generator, in the posterior's dtype), moved to the device without
    blocking the host."""
    if generator is None:
        return posterior.sample()

    mean = posterior.mean
    gens = generator if isinstance(generator, (list, tuple)) else [generator]
    shape = (1, *mean.shape[1:]) if len(gens) > 1 else tuple(mean.shape)
    noise = torch.cat([torch.randn(shape, generator=g, dtype=posterior.parameters.dtype,
                                   device=g.device) for g in gens])  # fmt: skip
    return mean + posterior.std * to_device(noise, mean.device)


def ground_truth_mask(
    keypoints: Sequence[np.ndarray | torch.Tensor | None],
    image_size: tuple[int, int],
    latent_size: tuple[int, int],
    cfg: LossConfig,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """H_E drawn from ground-truth keypoints at latent resolution (METHOD 3.7); no VAE.

    ``cfg.gt_mask`` "skeleton": :func:`~poseguide.pose.heatmaps.skeleton_mask` with limb width and
    joint radius ``cfg.gt_limb_width`` latent pixels, values {0, 1}. "keypoints":
    :func:`~poseguide.pose.heatmaps.keypoint_mask` with sigma ``cfg.gt_sigma`` latent pixels,
    reduced over joints by ``cfg.reduction`` (values [0, 1] for "max", [0, 17] for "sum").
    ``cfg.polarity`` "detected" keeps the mask (high on the pose); "not_detected" takes its
    complement, ``1 - mask`` ("sum" of keypoints: ``17 - mask``, matching :func:`binary_mask`).

    Args:
        keypoints: one entry per sample: a (P, 17, 3) array ``(x, y, v)`` in the pixel
            coordinates of the training image (P may be 0: a picture without people, whose
            mask follows the polarity), or None when the sample has no keypoints at all: its
            row is all zeros, whatever the polarity, so that sample gets exactly the stage-1 loss.
        image_size: (W, H) of the training image the keypoints refer to.
        latent_size: (w, h) of the latents.
        cfg: the stage's loss config.
        device: where to build the mask (the latents' device).

    Returns:
        float32 (B, 1, h, w).
    """
    w, h = latent_size
    rows = []
    for people in keypoints:
        if people is None:
            rows.append(torch.zeros(1, h, w, device=device))
            continue
        if cfg.gt_mask == "skeleton":
            width = cfg.gt_limb_width
            mask = skeleton_mask(people, image_size, latent_size, width, width, device=device)
            full = 1.0
        else:
            mask = keypoint_mask(
                people, image_size, latent_size, cfg.gt_sigma, cfg.reduction, device=device
            )
            full = float(NUM_COCO17) if cfg.reduction == "sum" else 1.0
        rows.append(full - mask if cfg.polarity == "not_detected" else mask)
    return torch.stack(rows).float()


def heatmap_mask(
    cfg: LossConfig,
    pred: torch.Tensor,
    target: torch.Tensor,
    vae: Any,
    estimator: Any,
    keypoints: Sequence[np.ndarray | torch.Tensor | None] | None,
    image_size: tuple[int, int] | None,
    generator: torch.Generator | None,
) -> dict[str, torch.Tensor]:
    """H_E (under ``"h_e"``) and its intermediates, from ``cfg.source``."""
    if cfg.source == "predicted_error":
        if vae is None or estimator is None:
            raise ValueError(
                "loss.source 'predicted_error' needs the VAE and a pose estimator; pass vae= and "
                "estimator= (or use loss.source: ground_truth)"
            )
        # METHOD 3.1: the error eps_theta - eps (pred - target in general), a constant here.
        return predicted_error_mask(
            pred.detach() - target.detach(), vae, estimator, cfg, None, generator
        )
    if cfg.source == "ground_truth":
        if keypoints is None or image_size is None:
            raise ValueError(
                "loss.source 'ground_truth' needs keypoints= (one (P, 17, 3) array or None per "
                "sample) and image_size=(W, H) of the training images"
            )
        if len(keypoints) != pred.shape[0]:
            raise ValueError(f"{len(keypoints)} keypoint entries for a batch of {pred.shape[0]}")
        latent_size = (pred.shape[-1], pred.shape[-2])
        return {"h_e": ground_truth_mask(keypoints, image_size, latent_size, cfg, pred.device)}
    raise ValueError(f"loss.source must be one of {', '.join(map(repr, MASK_SOURCES))}")


def heatmap_loss(
    cfg: LossConfig,
    pred: torch.Tensor,
    target: torch.Tensor,
    vae: Any,
    estimator: Any,
    keypoints: Sequence[np.ndarray | torch.Tensor | None] | None,
    image_size: tuple[int, int] | None,
    generator: torch.Generator | None,
    return_debug: bool = False,
) -> Losses:
    """The stage-2 terms: H_E from ``cfg.source`` (:func:`heatmap_mask`), the weighted loss
    (:func:`heatmap_weighted_loss`), ``mask_detected`` where an estimator drew the heatmaps, and
    the mask's intermediates under ``"_debug"`` when ``return_debug``."""
    debug = heatmap_mask(cfg, pred, target, vae, estimator, keypoints, image_size, generator)
    out = heatmap_weighted_loss(pred, target, debug["h_e"], cfg.weight)
    if "heatmaps" in debug:
        out["mask_detected"] = mask_detected(debug["heatmaps"])
    if return_debug:
        out["_debug"] = debug
    return out
