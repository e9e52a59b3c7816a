"""The images a pose estimator accepts, coerced to what its two paths read.

Images may be PIL images (any mode, converted to RGB as ultralytics converts them), numpy
``uint8`` arrays ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)`` in **RGB** order, float torch tensors
``(3, H, W)`` or ``(B, 3, H, W)`` in ``[0, 1]`` RGB on any device, or a list of these.
:func:`split_inputs` sorts them into uint8 arrays (an estimator's exact-parity path) and float
tensors (its torch path, which stays on their device); :func:`as_image_tensors` makes every one
a float tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

ImageInput = Image.Image | np.ndarray | torch.Tensor
Images = ImageInput | Sequence[ImageInput]


def _uint8_rgb(image: Image.Image | np.ndarray, i: int) -> np.ndarray:
    """A PIL image or a numpy uint8 image as a (H, W, 3) uint8 RGB array.

    PIL images are converted as ultralytics converts them (``convert("RGB")``; 16-bit grey is
    shifted to 8 bits, as ultralytics and OpenCV do); numpy arrays may be grey (H, W), RGB or
    RGBA (the alpha channel is dropped, as ``convert("RGB")`` and ``cv2.imread`` do).
    """
    if isinstance(image, Image.Image):
        if image.mode.startswith("I;16"):
            image = Image.fromarray((np.asarray(image) >> 8).astype(np.uint8))
        return np.asarray(image.convert("RGB"))
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4) or not all(image.shape):
        raise ValueError(
            f"image {i}: numpy images must be (H, W), (H, W, 3) or (H, W, 4), got shape "
            f"{image.shape}"
        )
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return image[..., :3]


def as_image_tensors(images: Images) -> list[torch.Tensor]:
    """Convert the accepted image inputs to a list of float (3, H, W) RGB tensors in [0, 1].

    Tensors keep their device (a batch is split into views, not copied); numpy and PIL images
    become CPU tensors. ``uint8`` inputs are divided by 255; float inputs (numpy or torch) must
    already be in [0, 1].
    """
    out: list[torch.Tensor] = []
    for i, image in enumerate(_as_list(images)):
        if isinstance(image, np.ndarray) and image.dtype != np.uint8:
            if image.ndim not in (3, 4) or image.shape[-1] != 3:
                raise ValueError(
                    f"image {i}: float numpy images must be (H, W, 3) or (B, H, W, 3) RGB in "
                    f"[0, 1], got shape {image.shape}"
                )
            image = torch.from_numpy(np.ascontiguousarray(image)).movedim(-1, -3)
        elif isinstance(image, (Image.Image, np.ndarray)):
            image = torch.from_numpy(_uint8_rgb(image, i).copy()).movedim(-1, -3)
        out.extend(_check_tensor(image, i))
    return out


def _as_list(images: Images) -> list[ImageInput]:
    if isinstance(images, (Image.Image, np.ndarray, torch.Tensor)):
        return [images]
    return list(images)


def _check_tensor(image: Any, i: int) -> list[torch.Tensor]:
    """A (3, H, W) or (B, 3, H, W) tensor as a list of float (3, H, W) views in [0, 1]."""
    if not isinstance(image, torch.Tensor):
        raise TypeError(
            f"image {i} is a {type(image).__name__}; expected a PIL image, a numpy (H, W, 3) "
            "uint8 RGB array or a float (3, H, W) / (B, 3, H, W) tensor in [0, 1]"
        )
    if image.ndim not in (3, 4) or image.shape[-3] != 3:
        raise ValueError(
            f"image {i}: tensors must be (3, H, W) or (B, 3, H, W) RGB, got shape "
            f"{tuple(image.shape)}"
        )
    image = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
    return list(image.unbind(0)) if image.ndim == 4 else [image]


def split_inputs(images: Images) -> list[np.ndarray | torch.Tensor]:
    """Each image as a uint8 (H, W, 3) RGB array (the ultralytics path) or a float (3, H, W)
    tensor (the torch path): PIL images, uint8 numpy arrays and uint8 tensors are uint8."""
    out: list[np.ndarray | torch.Tensor] = []
    for i, image in enumerate(_as_list(images)):
        if isinstance(image, Image.Image) or (
            isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim in (2, 3)
        ):
            out.append(_uint8_rgb(image, i))
        elif isinstance(image, torch.Tensor) and image.dtype == torch.uint8:
            arrays = image.reshape(-1, *image.shape[-3:]) if image.ndim == 4 else [image]
            if image.ndim not in (3, 4) or image.shape[-3] != 3:
                _check_tensor(image, i)  # raises the shape message
            out.extend(a.movedim(0, -1).cpu().numpy() for a in arrays)
        elif isinstance(image, np.ndarray) and image.dtype == np.uint8:
            out.extend(_uint8_rgb(a, i) for a in image)  # (B, H, W, 3)
        else:
            out.extend(as_image_tensors([image]) if isinstance(image, np.ndarray)
                       else _check_tensor(image, i))  # fmt: skip
    return out
