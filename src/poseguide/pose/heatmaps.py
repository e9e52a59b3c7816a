"""Keypoint heatmaps and the pose masks built from them (METHOD 3).

Conventions (see :mod:`poseguide.pose.skeleton`): keypoints are ``(x, y, v)`` with x before y in
continuous pixel coordinates, pixel ``(i, j)`` covers ``[i, i+1) x [j, j+1)``, so its centre is
``(i + 0.5, j + 0.5)``. Sizes are given as ``(width, height)``; tensors are laid out
``(..., h, w)``.

A keypoint at image coordinates ``(x, y)`` of a ``W x H`` image maps to ``(x * w / W, y * h / H)``
on a ``w x h`` grid: the two images cover the same area, corner to corner. Every function here
evaluates at pixel centres, so the maximum of a Gaussian lands on the pixel that contains the
keypoint (a keypoint exactly on a pixel border is equally close to two centres).

Three mask sources feed the stage-2 loss:

* :func:`binary_mask` thresholds estimator heatmaps, as HumanSD's released code does;
* :func:`skeleton_mask` draws the ground-truth skeleton directly at latent resolution (the cheap
  Stable-Pose style source, METHOD 3.7);
* :func:`keypoint_mask` reduces ground-truth Gaussian heatmaps over joints.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from poseguide.pose.skeleton import COCO17_LIMBS, NUM_COCO17, KeypointError, as_people
from poseguide.utils.device import to_device

# "not_detected" is what HumanSD's code computes, `where(H > threshold, 0, 1)`: 1 where a joint is
# NOT detected. "detected" is the stated intent (1 on pose regions). See METHOD 3.4.
MASK_POLARITIES: tuple[str, ...] = ("not_detected", "detected")
# "sum" counts joints per pixel (0..J, HumanSD); "max" is a plain 0/1 union.
MASK_REDUCTIONS: tuple[str, ...] = ("sum", "max")
# HumanSD's detection threshold on heatmap values.
DEFAULT_MASK_THRESHOLD = 0.05

Size = tuple[int, int]


def _check_size(size: Sequence[int], name: str) -> Size:
    if len(size) != 2 or any(int(s) != s or s <= 0 for s in size):
        raise ValueError(f"{name} must be (width, height) with positive integers, got {size!r}")
    return int(size[0]), int(size[1])


def _check_choice(value: str, valid: tuple[str, ...], name: str) -> None:
    if value not in valid:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, valid))}; got {value!r}")


def _people_array(people: np.ndarray | torch.Tensor | list, num_joints: int) -> np.ndarray:
    if isinstance(people, torch.Tensor):
        people = people.detach().cpu().numpy()
    return as_people(people, num_joints)


def _people_tensor(
    people: np.ndarray | torch.Tensor | list,
    num_joints: int,
    device: torch.device | str | None,
    keep_grad: bool = False,
) -> torch.Tensor:
    """(P, J, 3) keypoints as a tensor on ``device``, in float64 where the device has it (the
    precision of the numpy path, so both give the same maps). A tensor stays on its device:
    no copy to the host (the stage-2 loss' keypoints come from the estimator on the GPU).
    ``keep_grad`` keeps a tensor's dtype and autograd graph (the pose reward)."""
    if not isinstance(people, torch.Tensor):
        people = torch.as_tensor(as_people(people, num_joints))
    target = torch.device(device) if device is not None else people.device
    if keep_grad:
        people = people.to(device=target)
    else:
        dtype = torch.float32 if target.type == "mps" else torch.float64  # MPS has no float64
        people = people.detach().to(device=target, dtype=dtype)
    if people.ndim == 2:
        people = people[None]
    if people.ndim != 3 or tuple(people.shape[1:]) != (num_joints, 3):
        raise KeypointError(
            f"keypoints have shape {tuple(people.shape)}; expected (P, {num_joints}, 3)"
        )
    return people


def _to_grid(people: np.ndarray, image_size: Size, grid_size: Size) -> np.ndarray:
    """(P, J, 2) keypoint positions rescaled from image to grid coordinates."""
    scale = np.array([grid_size[0] / image_size[0], grid_size[1] / image_size[1]])
    return people[..., :2] * scale


def gaussian_heatmaps(
    people: np.ndarray | torch.Tensor | list,
    image_size: Sequence[int],
    heatmap_size: Sequence[int],
    sigma: float,
    min_score: float = 0.0,
    scale_by_score: bool = False,
    num_joints: int = NUM_COCO17,
    device: torch.device | str | None = None,
    keep_grad: bool = False,
) -> torch.Tensor:
    """One Gaussian per present joint, several people combined by maximum.

    Args:
        people: (P, J, 3) keypoints ``(x, y, v)`` in the pixel coordinates of an image of
            ``image_size``; a single person (J, 3) is accepted. P may be 0.
        image_size: (W, H) of the image the keypoints refer to.
        heatmap_size: (w, h) of the output grid.
        sigma: standard deviation in heatmap pixels (> 0).
        min_score: a joint is present when its third value is > ``min_score``.
        scale_by_score: peak height is the joint's third value (an estimator confidence) instead
            of 1.
        num_joints: J (17 for COCO-17).
        device: where to build the maps (default CPU).
        keep_grad: a tensor ``people`` keeps its autograd graph: the maps are differentiable
            in the coordinates (the pose reward's ``heatmap`` loss).

    Returns:
        float32 tensor (J, h, w); values in [0, 1] (in [0, max score] with ``scale_by_score``).
        Channel j is ``max_p peak_p * exp(-d^2 / (2 sigma^2))``, d the distance from the pixel
        centre to person p's joint j in heatmap pixels; all zeros for an absent joint.
    """
    image_size = _check_size(image_size, "image_size")
    w, h = _check_size(heatmap_size, "heatmap_size")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0 (heatmap pixels), got {sigma!r}")
    people = _people_tensor(people, num_joints, device, keep_grad)
    device = people.device
    if people.shape[0] == 0:
        return torch.zeros(num_joints, h, w, device=device)
    # Grid coordinates, rounded as the numpy path rounds them; Python scales (no host-to-device
    # copy, so no sync).
    centre = torch.stack([people[..., 0] * (w / image_size[0]),
                          people[..., 1] * (h / image_size[1])], dim=-1).float()  # fmt: skip
    score = people[..., 2].float()
    peak = (score if scale_by_score else torch.ones_like(score)) * (score > min_score)
    xs = torch.arange(w, dtype=torch.float32, device=device) + 0.5
    ys = torch.arange(h, dtype=torch.float32, device=device) + 0.5
    # The 2-D Gaussian is separable: (P, J, 1, w) * (P, J, h, 1).
    gx = torch.exp(-((xs - centre[..., 0:1]) ** 2) / (2.0 * sigma**2))
    gy = torch.exp(-((ys - centre[..., 1:2]) ** 2) / (2.0 * sigma**2))
    maps = gy[..., :, None] * gx[..., None, :] * peak[..., None, None]
    return maps.amax(dim=0)


def batch_heatmaps(
    people_list: Sequence[np.ndarray | torch.Tensor | list],
    image_size: Sequence[int] | Sequence[Sequence[int]],
    heatmap_size: Sequence[int],
    sigma: float,
    min_score: float = 0.0,
    scale_by_score: bool = False,
    num_joints: int = NUM_COCO17,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """:func:`gaussian_heatmaps` for a batch: one (P_b, J, 3) array per image -> (B, J, h, w).

    ``image_size`` is one (W, H) for all images or a list with one (W, H) per image.
    """
    sizes = _per_image_sizes(image_size, len(people_list))
    w, h = _check_size(heatmap_size, "heatmap_size")
    if not people_list:
        return torch.zeros(0, num_joints, h, w, device=device)
    maps = [
        gaussian_heatmaps(p, s, (w, h), sigma, min_score, scale_by_score, num_joints, device)
        for p, s in zip(people_list, sizes, strict=True)
    ]
    return torch.stack(maps)


def default_heatmap_size(sizes: Sequence[Size], stride: int) -> Size:
    """(w, h) of the heatmaps of images of ``sizes`` when none is asked for: their one size
    divided by ``stride`` (at least 1); images of several sizes need an explicit size."""
    if len(set(sizes)) > 1:
        raise ValueError(f"images have different sizes {sorted(set(sizes))}; pass "
                         "heatmap_size=(w, h)")  # fmt: skip
    w, h = sizes[0] if sizes else (0, 0)
    return max(w // stride, 1), max(h // stride, 1)


def _per_image_sizes(image_size: Sequence, count: int) -> list[Size]:
    if len(image_size) == 2 and all(np.isscalar(s) for s in image_size):
        return [_check_size(image_size, "image_size")] * count
    if len(image_size) != count:
        raise ValueError(
            f"image_size has {len(image_size)} entries for {count} images; give one (W, H) "
            "for all images or one per image"
        )
    return [_check_size(s, f"image_size[{i}]") for i, s in enumerate(image_size)]


def binary_mask(
    heatmaps: torch.Tensor,
    threshold: float = DEFAULT_MASK_THRESHOLD,
    polarity: str = "not_detected",
    reduction: str = "sum",
) -> torch.Tensor:
    """Threshold per-joint heatmaps into a one-channel mask (METHOD 3.4).

    Args:
        heatmaps: (B, J, h, w) joint heatmaps.
        threshold: a joint is detected at a pixel where its heatmap is > ``threshold``.
        polarity: ``"not_detected"`` (default, HumanSD's released code
            ``where(H > threshold, 0, 1)``): 1 where the joint is NOT detected;
            ``"detected"``: 1 where it is (the pose regions). See ``MASK_POLARITIES``.
        reduction: over joints, ``"sum"`` (values 0..J, HumanSD) or ``"max"`` (0/1). See
            ``MASK_REDUCTIONS``.

    Returns:
        (B, 1, h, w) tensor of the heatmaps' floating dtype (float32 for integer input).
    """
    _check_choice(polarity, MASK_POLARITIES, "polarity")
    _check_choice(reduction, MASK_REDUCTIONS, "reduction")
    if heatmaps.ndim != 4:
        raise ValueError(
            f"heatmaps must have shape (B, J, h, w), got {tuple(heatmaps.shape)}; "
            "add a batch dimension with heatmaps[None]"
        )
    dtype = heatmaps.dtype if heatmaps.is_floating_point() else torch.float32
    per_joint = heatmaps > threshold
    if polarity == "not_detected":
        per_joint = ~per_joint
    return _reduce_joints(per_joint.to(dtype), reduction, dim=1)


def _reduce_joints(maps: torch.Tensor, reduction: str, dim: int) -> torch.Tensor:
    """Sum or max over the joint axis ``dim``, keeping it as size 1."""
    if reduction == "sum":
        return maps.sum(dim=dim, keepdim=True)
    return maps.amax(dim=dim, keepdim=True)


def keypoint_mask(
    people: np.ndarray | torch.Tensor | list,
    image_size: Sequence[int],
    mask_size: Sequence[int],
    sigma: float,
    reduction: str = "max",
    min_score: float = 0.0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Soft mask from ground-truth Gaussian heatmaps: (1, h, w).

    :func:`gaussian_heatmaps` (peak 1, ``sigma`` in mask pixels) reduced over the joints by
    ``"max"`` (values in [0, 1]) or ``"sum"`` (values in [0, J]).
    """
    _check_choice(reduction, MASK_REDUCTIONS, "reduction")
    maps = gaussian_heatmaps(people, image_size, mask_size, sigma, min_score, device=device)
    return _reduce_joints(maps, reduction, dim=0)


def skeleton_mask(
    people: np.ndarray | torch.Tensor | list,
    image_size: Sequence[int],
    mask_size: Sequence[int],
    limb_width: float = 1.0,
    joint_radius: float = 1.0,
    min_score: float = 0.0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The region covered by the COCO-17 skeleton, drawn directly on a ``mask_size`` grid.

    A pixel is 1 when its centre lies within ``limb_width / 2`` of a limb segment
    (``COCO17_LIMBS``, both joints present) or within ``joint_radius`` of a present joint;
    distances are in mask pixels. A joint is present when its third value is > ``min_score``.
    With a 512-px image and a 64-px mask, ``limb_width=1`` matches the OpenPose drawing's width
    (``stickwidth = 4`` image pixels on each side). This is the cheap "ground truth" mask source of
    METHOD 3.7: no VAE and no estimator.

    Args:
        people: (P, 17, 3) keypoints in the pixel coordinates of an image of ``image_size``.
        image_size: (W, H) of that image.
        mask_size: (w, h) of the mask, e.g. the latent size (64, 64).

    Returns:
        float32 tensor (1, h, w) with values in {0, 1}.
    """
    image_size = _check_size(image_size, "image_size")
    w, h = _check_size(mask_size, "mask_size")
    if limb_width < 0 or joint_radius < 0:
        raise ValueError(
            f"limb_width and joint_radius must be >= 0, got {limb_width!r}, {joint_radius!r}"
        )
    arr = _people_array(people, NUM_COCO17)
    xs = torch.arange(w, dtype=torch.float32, device=device) + 0.5
    ys = torch.arange(h, dtype=torch.float32, device=device) + 0.5
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (h, w, 2), x first
    mask = torch.zeros(h, w, dtype=torch.bool, device=device)
    limbs = np.asarray(COCO17_LIMBS)
    device = grid.device
    for person in arr:  # P is small; pixels and limbs are vectorised
        # What is present and which limbs are drawn is decided on the host (the keypoints are
        # host data): no device-side boolean indexing, so no sync; copies do not block.
        present = person[:, 2] > min_score
        if not present.any():
            continue
        xy = _to_grid(person, image_size, (w, h)).astype(np.float32)
        joints = to_device(torch.from_numpy(xy[present]), device)
        mask |= ((grid[None] - joints[:, None, None]).norm(dim=-1) <= joint_radius).any(dim=0)
        drawn = limbs[present[limbs[:, 0]] & present[limbs[:, 1]]]
        if len(drawn):
            ends = to_device(torch.from_numpy(np.stack([xy[drawn[:, 0]], xy[drawn[:, 1]]])), device)
            d_limb = _segment_distance(grid, ends[0], ends[1])
            mask |= (d_limb <= limb_width / 2.0).any(dim=0)
    return mask[None].float()


def _segment_distance(points: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance from points (h, w, 2) to L segments a-b (L, 2) -> (L, h, w)."""
    ab = (b - a)[:, None, None]  # (L, 1, 1, 2)
    ap = points[None] - a[:, None, None]  # (L, h, w, 2)
    length2 = (ab**2).sum(-1).clamp_min(1e-12)  # a zero-length limb is a point
    t = ((ap * ab).sum(-1) / length2).clamp(0.0, 1.0)
    return (ap - t[..., None] * ab).norm(dim=-1)
