"""Evaluation metrics as functions: per-sample OKS, bootstrap intervals, FID/KID.

LPIPS and the CLIP score, which need a model, live in :mod:`poseguide.evaluate.lpips_metric`
and :mod:`poseguide.evaluate.clip`; they load lazily behind small classes so tests can pass tiny
models. Weights that come from torch hub URLs (the LPIPS backbones, FID's Inception) are looked
up in ``$TORCH_HOME/hub/checkpoints`` first and never downloaded when the environment says
offline (:func:`ensure_torch_hub_weights`), so a missing file fails at once with a message that
says where to put it.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch
from PIL import Image

from poseguide.errors import UserError
from poseguide.pose.coco_eval import coco_keypoint_ap
from poseguide.pose.detections import Detections
from poseguide.pose.oks import box_area_from_keypoints, match_greedy, mean_oks
from poseguide.pose.skeleton import validate_keypoints
from poseguide.utils.device import resolve_device
from poseguide.utils.io import writing
from poseguide.utils.offline import is_offline, offline_reason

log = logging.getLogger(__name__)

# Per-socket-operation time-out for weight downloads: a firewall that drops packets would
# otherwise make urllib wait for the OS's TCP time-out (minutes).
DOWNLOAD_TIMEOUT_S = 20.0
# torch-fidelity's Inception-v3 (TF FID weights converted to PyTorch), the network behind
# torchmetrics' FrechetInceptionDistance/KernelInceptionDistance with an integer ``feature``.
FID_INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
    "weights-inception-2015-12-05-6726825d.pth"
)
FID_FEATURES = (64, 192, 768, 2048)
AREA_FROM_BOX = "0.53 * box of the labelled ground-truth keypoints"


class MetricUnavailableError(UserError, FileNotFoundError):
    """A metric's weights or package are missing; the message says where to put the weights
    or which setting turns the metric off."""


# ---------------------------------------------------------------------------------------------
# Weights from torch hub URLs
# ---------------------------------------------------------------------------------------------


def torch_hub_checkpoint(url: str) -> Path:
    """Where torch hub keeps the file of ``url``: ``$TORCH_HOME/hub/checkpoints/<file name>``
    (TORCH_HOME defaults to ``~/.cache/torch``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def ensure_torch_hub_weights(url: str, what: str, alternative: str = "") -> Path:
    """Return the torch hub cache file of ``url``, downloading it only when allowed.

    The file is used when present. Offline (``HF_HUB_OFFLINE`` or ``YOLO_OFFLINE`` set) a
    missing file raises :class:`MetricUnavailableError` at once; online it is downloaded with a
    short time-out, and a failure raises the same error. The message names the path to put the
    file at, and ``alternative`` (e.g. a config switch) is appended.
    """
    path = torch_hub_checkpoint(url)
    if path.is_file():
        return path
    howto = (
        f"Download {url} where there is network and put it at {path} "
        f"($TORCH_HOME/hub/checkpoints/{path.name}; TORCH_HOME defaults to ~/.cache/torch)."
    )
    tail = f" {alternative}" if alternative else ""
    if is_offline():
        raise MetricUnavailableError(
            f"{what}: {path} is missing and downloads are off ({offline_reason()}). {howto}{tail}"
        )
    with writing(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
    digest = re.search(torch.hub.HASH_REGEX, path.name)
    log.info("downloading %s to %s", url, path)
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            torch.hub.download_url_to_file(
                url, str(path), hash_prefix=digest.group(1) if digest else None, progress=False
            )
    except Exception as err:  # URLError, time-outs, hash mismatch
        raise MetricUnavailableError(
            f"{what}: could not download {url} ({type(err).__name__}: {err}). {howto}{tail}"
        ) from None
    return path


# ---------------------------------------------------------------------------------------------
# OKS
# ---------------------------------------------------------------------------------------------


def sample_oks(
    detections: Detections,
    gt_keypoints: np.ndarray,
    gt_areas: np.ndarray | Sequence[float] | None = None,
    min_oks: float = 0.0,
) -> dict:
    """OKS of the people detected in one generated image against its ground truth.

    Predictions are matched to ground-truth people greedily, highest detection score first
    (:func:`poseguide.pose.oks.match_greedy`, as COCOeval); an unmatched person scores 0.

    Args:
        detections: the estimator's output on the generated image, in the ground truth's pixel
            coordinates (the generated image resized back to the original's size).
        gt_keypoints: (G, 17, 3) ground truth, COCO visibility 0/1/2 (only v > 0 counts).
        gt_areas: (G,) person areas in pixels^2. None: ``0.53 * w * h`` of the box around each
            person's labelled keypoints (ultralytics' rule; a person with a single labelled
            joint then has area 0 and scores ~0, so pass real areas when known).
        min_oks: smallest OKS that counts as a match.

    Returns:
        dict with ``per_gt_oks`` (G,) (0 unmatched, NaN for a person without labelled joints),
        ``mean_oks`` over the scoreable people (NaN when none), ``num_gt`` (scoreable people),
        ``num_matched``, ``num_dets``, ``pred_index`` (G,) (-1 unmatched), ``area_source``, and
        what :func:`aggregate_oks` needs over a whole set: ``preds`` (D, 17, 3), ``scores``
        (D,), ``gts`` (G, 17, 3) and ``areas`` (G,).
    """
    gts = validate_keypoints(gt_keypoints, where="ground-truth keypoints")
    source = "given"
    if gt_areas is None:  # NaN for people without labelled joints, who are not scored anyway
        gt_areas = np.nan_to_num(box_area_from_keypoints(gts), nan=0.0)
        source = AREA_FROM_BOX
    areas = np.atleast_1d(np.asarray(gt_areas, dtype=np.float64))
    preds = np.asarray(detections.keypoints, dtype=np.float64)
    scores = np.asarray(detections.scores, dtype=np.float64)
    match = match_greedy(preds, scores, gts, areas, min_oks)
    scoreable = (gts[..., 2] > 0).any(axis=1)
    return {
        "per_gt_oks": match.oks,
        "mean_oks": float(match.oks[scoreable].mean()) if scoreable.any() else float("nan"),
        "num_gt": int(scoreable.sum()),
        "num_matched": int((match.pred_index >= 0).sum()),
        "num_dets": len(scores),
        "pred_index": match.pred_index,
        "area_source": source,
        "min_oks": float(min_oks),
        "preds": preds,
        "scores": scores,
        "gts": gts,
        "areas": areas,
    }


def aggregate_oks(samples: Sequence[dict], joint_threshold: float = 0.5,
                  coco_areas: Sequence[np.ndarray] | None = None,
                  coco_batch: int | None = None, cap_variant: str = "humansd",
                  salient: int | None = None) -> dict:  # fmt: skip
    """Mean OKS over all ground-truth people, per-joint accuracy, COCO keypoint AP/AR and CAP.

    ``samples`` are :func:`sample_oks` results (all with the same ``min_oks``). ``coco_areas``
    replaces the samples' areas in COCO AP and CAP (a protocol's ground-truth area rule);
    ``coco_batch`` averages them over batches of that many images
    (:func:`poseguide.pose.coco_eval.coco_keypoint_ap`). Returns ``{"oks":
    poseguide.pose.oks.mean_oks(...), "coco": coco_keypoint_ap(...), "cap": the same with
    similarity "cosine"}``, and with ``salient`` ``"coco_clean"``: AP/AR of the ``salient``
    largest people per image (HyperHuman's AP_clean / AR_clean with 3).
    """
    thresholds = {s["min_oks"] for s in samples}
    if len(thresholds) > 1:
        raise ValueError(f"samples were matched with different min_oks values: {thresholds}")
    min_oks = thresholds.pop() if thresholds else 0.0
    per_image = [(s["preds"], s["scores"], s["gts"], s["areas"]) for s in samples]
    sets = ([s["gts"] for s in samples], [s["preds"] for s in samples],
            [s["scores"] for s in samples])  # fmt: skip
    areas = list(coco_areas) if coco_areas is not None else [s["areas"] for s in samples]
    cap = coco_keypoint_ap(*sets, areas_per_image=areas, batch=coco_batch, similarity="cosine",
                           cap_variant=cap_variant)  # fmt: skip
    out = {
        "oks": mean_oks(per_image, min_oks=min_oks, joint_threshold=joint_threshold),
        "coco": coco_keypoint_ap(*sets, areas_per_image=areas, batch=coco_batch),
        "cap": cap,
    }
    if salient is not None:
        out["coco_clean"] = coco_keypoint_ap(*sets, areas_per_image=areas, batch=coco_batch,
                                             salient=salient)  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------------
# Aggregates
# ---------------------------------------------------------------------------------------------

_BOOTSTRAP_CHUNK = 1 << 22  # resampled values held at once (32 MiB of float64)


def _finite(values: Iterable[float]) -> tuple[np.ndarray, int]:
    arr = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=float)
    arr = arr.reshape(-1)
    nan = np.isnan(arr)
    if np.isinf(arr).any():
        raise ValueError("values contain +-inf; only NaN (a missing value) is allowed")
    return arr[~nan], int(nan.sum())


def bootstrap_ci(
    values: Iterable[float], n: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean.

    Draws ``n`` resamples (with replacement, the size of the data) from a NumPy generator seeded
    with ``seed``, so the interval is the same for the same inputs. NaNs are dropped first
    (:func:`summarize` reports how many). Returns ``(low, high)``: NaNs when there is no finite
    value or ``n`` is 0; ``(v, v)`` for a single value.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n < 0:
        raise ValueError(f"n (resamples) must be >= 0, got {n}")
    data, _ = _finite(values)
    if n == 0 or data.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.empty(n)
    rows = max(1, _BOOTSTRAP_CHUNK // data.size)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        means[start:stop] = data[rng.integers(0, data.size, size=(stop - start, data.size))].mean(1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def summarize(
    values: Iterable[float], n: int = 1000, confidence: float = 0.95, seed: int = 0
) -> dict:
    """Mean and bootstrap interval of per-sample values, NaNs left out and counted.

    Returns ``{"mean", "ci_low", "ci_high", "n", "n_nan", "confidence"}`` where ``n`` counts
    the values used (``mean`` is NaN when there is none).
    """
    data, n_nan = _finite(values)
    low, high = bootstrap_ci(data, n, confidence, seed)
    return {
        "mean": float(data.mean()) if data.size else float("nan"),
        "ci_low": low,
        "ci_high": high,
        "n": int(data.size),
        "n_nan": n_nan,
        "confidence": float(confidence),
    }


# ---------------------------------------------------------------------------------------------
# FID / KID
# ---------------------------------------------------------------------------------------------

FeatureExtractor = Callable[[torch.Tensor], torch.Tensor]


def inception_extractor(
    feature: int = 2048, device: torch.device | str | None = None
) -> torch.nn.Module:
    """torchmetrics' FID Inception-v3 (torch-fidelity weights) giving ``feature``-d features.

    Input: uint8 (B, 3, H, W) RGB of any size (resized to 299 inside). Fails at once with
    :class:`MetricUnavailableError` when the weights are missing offline or the packages are
    not installed.
    """
    if feature not in FID_FEATURES:
        raise ValueError(f"feature must be one of {FID_FEATURES}, got {feature}")
    weights = ensure_torch_hub_weights(
        FID_INCEPTION_URL, "FID/KID Inception-v3 weights", "Or set evaluate.fid=false."
    )
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3
        from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE
    except ImportError as err:
        raise MetricUnavailableError(
            f"FID/KID need torchmetrics ({err}): pip install torchmetrics torch-fidelity, "
            "or set evaluate.fid=false."
        ) from None
    if not _TORCH_FIDELITY_AVAILABLE:
        raise MetricUnavailableError(
            "FID/KID need torch-fidelity: pip install torch-fidelity, or set evaluate.fid=false."
        )
    model = NoTrainInceptionV3(
        name="inception-v3-compat",
        features_list=[str(feature)],
        feature_extractor_weights_path=str(weights),
    )
    return model.to(resolve_device(device) if device is None else torch.device(device)).eval()


class _Precomputed(torch.nn.Module):
    """Identity 'feature extractor': lets torchmetrics' FID/KID take features directly."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@torch.no_grad()
def _features(
    extractor: FeatureExtractor, images: Sequence[Image.Image], device: torch.device, batch: int
) -> torch.Tensor:
    """(N, D) float64 features; same-size images share a forward pass."""
    arrays = [np.asarray(im.convert("RGB")) for im in images]
    out: list[torch.Tensor | None] = [None] * len(arrays)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, a in enumerate(arrays):
        groups.setdefault(a.shape, []).append(i)
    for indices in groups.values():
        for start in range(0, len(indices), batch):
            chunk = indices[start : start + batch]
            x = torch.from_numpy(np.stack([arrays[i] for i in chunk])).permute(0, 3, 1, 2)
            feats = extractor(x.contiguous().to(device)).reshape(len(chunk), -1)
            for i, f in zip(chunk, feats.double().cpu(), strict=True):
                out[i] = f
    return torch.stack(out)  # type: ignore[arg-type]


def frechet_distance(f_real: torch.Tensor, f_fake: torch.Tensor) -> float:
    """torchmetrics' Fréchet distance between two (N, D) feature sets (FID's formula on any
    features: FID_CLIP passes CLIP image embeddings)."""
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
    except ImportError as err:
        raise MetricUnavailableError(
            f"FID needs torchmetrics ({err}): pip install torchmetrics, or set evaluate.fid=false "
            "and evaluate.fid_clip=false."
        ) from None

    fid = FrechetInceptionDistance(feature=_Precomputed(f_real.shape[1]))
    fid.update(f_real.double(), real=True)
    fid.update(f_fake.double(), real=False)
    return float(fid.compute())


def _fid_kid_values(f_real: torch.Tensor, f_fake: torch.Tensor, subsets: int, subset: int,
                    seed: int) -> tuple[float, float, float]:  # fmt: skip
    """(FID, KID mean, KID std) of precomputed features, by torchmetrics."""
    from torchmetrics.image.kid import KernelInceptionDistance

    dim = f_real.shape[1]
    with warnings.catch_warnings():  # "KID will save all extracted features in buffer"
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(feature=_Precomputed(dim), subsets=subsets,
                                      subset_size=subset)  # fmt: skip
    kid.update(f_real, real=True)
    kid.update(f_fake, real=False)
    with torch.random.fork_rng(devices=[]):  # KID draws its subsets from torch's global RNG
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    return frechet_distance(f_real, f_fake), float(kid_mean), float(kid_std)


def fid_clip(real: Sequence[Image.Image], fake: Sequence[Image.Image], scorer: Any) -> float:
    """FID_CLIP (HyperHuman's table): the Fréchet distance of the CLIP image embeddings of real
    and generated images, ``scorer`` a :class:`poseguide.evaluate.clip.ClipScorer` (its
    projection's output, not unit-normalised). At least 2 of each."""
    if min(len(real), len(fake)) < 2:
        raise ValueError(f"FID_CLIP needs at least 2 real and 2 fake images, got "
                         f"{len(real)}/{len(fake)}")  # fmt: skip
    f_real = scorer.image_embeddings(real, unit=False)
    return frechet_distance(f_real, scorer.image_embeddings(fake, unit=False))


def fid_kid(
    real: Sequence[Image.Image],
    fake: Sequence[Image.Image],
    feature: int = 2048,
    device: torch.device | str | None = None,
    extractor: FeatureExtractor | None = None,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
    batch_size: int = 16,
    seed: int = 0,
) -> dict:
    """FID and KID (torchmetrics) between real and generated images.

    Args:
        real, fake: RGB images, at least 2 of each (any sizes).
        feature: Inception feature layer (64, 192, 768 or 2048) when ``extractor`` is None.
        extractor: a callable uint8 (B, 3, H, W) -> (B, D) features, replacing the Inception
            (tests pass a tiny one). Default :func:`inception_extractor`, whose weights cannot be
            downloaded offline (see there).
        kid_subset_size: KID subset size, capped at the number of images.

    Returns:
        ``{"fid", "kid_mean", "kid_std", "n_real", "n_fake", "feature"}``.
    """
    if min(len(real), len(fake)) < 2:
        raise ValueError(
            f"FID needs at least 2 real and 2 fake images, got {len(real)}/{len(fake)}"
        )
    dev = resolve_device(None) if device is None else torch.device(device)
    name = f"inception-{feature}" if extractor is None else type(extractor).__name__
    extractor = extractor if extractor is not None else inception_extractor(feature, dev)
    try:
        import torchmetrics.image.fid
        import torchmetrics.image.kid  # noqa: F401
    except ImportError as err:
        raise MetricUnavailableError(
            f"FID/KID need torchmetrics ({err}): pip install torchmetrics, "
            "or set evaluate.fid=false."
        ) from None
    f_real = _features(extractor, real, dev, batch_size)
    f_fake = _features(extractor, fake, dev, batch_size)
    subset = min(kid_subset_size, len(real), len(fake))
    fid, kid_mean, kid_std = _fid_kid_values(f_real, f_fake, kid_subsets, subset, seed)
    return {
        "fid": fid,
        "kid_mean": float(kid_mean),
        "kid_std": float(kid_std),
        "n_real": len(real),
        "n_fake": len(fake),
        "feature": name,
    }
