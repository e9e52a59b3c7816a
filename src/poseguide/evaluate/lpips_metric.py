"""LPIPS between a generated image and its original (METHOD.md section 6), loaded lazily.

The ``lpips`` package ships only its small linear heads; the backbone (AlexNet by default, VGG16
or SqueezeNet 1.1) comes with torchvision's ImageNet weights, which torchvision downloads to
``$TORCH_HOME/hub/checkpoints``. :class:`LpipsMetric` looks for that file first and fails at once
when it is missing offline (no hanging download). ``pretrained=False`` builds a seeded random
backbone instead: the code path runs offline, but the numbers are not a perceptual metric.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from poseguide.errors import InputError
from poseguide.evaluate.metrics import MetricUnavailableError, ensure_torch_hub_weights
from poseguide.utils.device import resolve_device

log = logging.getLogger(__name__)

# torchvision's ImageNet weights that lpips' backbones load (lpips calls e.g.
# ``tv.alexnet(pretrained=True)``, which means ``AlexNet_Weights.IMAGENET1K_V1``).
BACKBONE_WEIGHTS = {
    "alex": "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    "vgg": "https://download.pytorch.org/models/vgg16-397923af.pth",
    "squeeze": "https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth",
}
BACKBONE_NAMES = {"alex": "AlexNet", "vgg": "VGG16", "squeeze": "SqueezeNet 1.1"}


def image_to_lpips_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image as a float (3, H, W) tensor in [-1, 1], LPIPS' input range."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(array / 127.5 - 1.0).permute(2, 0, 1).contiguous()


class LpipsMetric:
    """LPIPS v0.1 distance (lower = more similar) of generated images to their originals.

    Args:
        net: backbone, ``"alex"`` (the LPIPS default and METHOD's), ``"vgg"`` or ``"squeeze"``.
        pretrained: True: torchvision's ImageNet backbone weights (must be in the torch hub
            cache offline, see :func:`poseguide.evaluate.metrics.ensure_torch_hub_weights`).
            False: a random backbone seeded with ``seed``, for offline plumbing only.
        device: where it runs; None picks the available accelerator, else the CPU.
        batch_size: image pairs per forward pass.

    The model is built on first use. Both images of a pair must have the same size (the caller
    resizes the generated image back to the original's size first).
    """

    def __init__(
        self,
        net: str = "alex",
        pretrained: bool = True,
        device: torch.device | str | None = None,
        batch_size: int = 8,
        seed: int = 0,
    ) -> None:
        if net not in BACKBONE_WEIGHTS:
            raise InputError(f"LPIPS net must be one of {sorted(BACKBONE_WEIGHTS)}, got {net!r}")
        self.net, self.pretrained, self.seed = net, pretrained, seed
        self.device = resolve_device(None) if device is None else torch.device(device)
        self.batch_size = batch_size
        self._model: Any = None

    @property
    def model(self) -> Any:
        """The ``lpips.LPIPS`` module, built on first access."""
        if self._model is None:
            self._model = self._build()
        return self._model

    def _build(self) -> Any:
        import lpips

        what = f"LPIPS {BACKBONE_NAMES[self.net]} backbone (torchvision ImageNet weights)"
        weights = None
        if self.pretrained:
            weights = ensure_torch_hub_weights(
                BACKBONE_WEIGHTS[self.net],
                what,
                "Or set evaluate.lpips_pretrained=false for a random backbone (it runs, but is "
                "not a meaningful perceptual metric).",
            )
        # lpips still passes torchvision's deprecated ``pretrained=`` argument.
        with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
            warnings.simplefilter("ignore", UserWarning)
            torch.manual_seed(self.seed)  # a reproducible random backbone (pnet_rand)
            try:
                model = lpips.LPIPS(net=self.net, pnet_rand=not self.pretrained, verbose=False)
            except Exception as err:  # a truncated or foreign file: unpickling, key errors
                if weights is None:
                    raise
                raise MetricUnavailableError(
                    f"{what}: {weights} could not be loaded ({type(err).__name__}: {err}); "
                    f"replace it with {BACKBONE_WEIGHTS[self.net]}"
                ) from None
        log.info("LPIPS: %s", self.describe())
        return model.to(self.device).eval().requires_grad_(False)

    def describe(self) -> str:
        """Which network gives the numbers, for the report."""
        backbone = BACKBONE_NAMES[self.net]
        if self.pretrained:
            weights = "ImageNet weights (torchvision)"
        else:
            weights = f"RANDOM weights (seed {self.seed}; plumbing only, not a meaningful metric)"
        return f"LPIPS v0.1, {backbone} backbone with {weights}, lpips linear heads"

    def __call__(self, generated: Image.Image, original: Image.Image) -> float:
        """LPIPS of one pair (a float >= 0; 0 for identical images)."""
        return float(self.scores([generated], [original])[0])

    @torch.no_grad()
    def scores(
        self, generated: Sequence[Image.Image], originals: Sequence[Image.Image]
    ) -> np.ndarray:
        """(N,) float64 LPIPS of each generated image against its original."""
        if len(generated) != len(originals):
            raise ValueError(f"{len(generated)} generated images but {len(originals)} originals")
        for i, (gen, orig) in enumerate(zip(generated, originals, strict=True)):
            if gen.size != orig.size:
                raise ValueError(
                    f"LPIPS pair {i}: the generated image is {gen.size[0]}x{gen.size[1]} but the "
                    f"original is {orig.size[0]}x{orig.size[1]}; resize the generated image to "
                    "the original's size first (generate(..., output_sizes=...))"
                )
        out = np.empty(len(generated), dtype=np.float64)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(originals):  # same-size pairs share a forward pass
            groups.setdefault(image.size, []).append(i)
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                a = torch.stack([image_to_lpips_tensor(generated[i]) for i in chunk])
                b = torch.stack([image_to_lpips_tensor(originals[i]) for i in chunk])
                d = self.model(a.to(self.device), b.to(self.device), normalize=False)
                out[chunk] = d.reshape(len(chunk)).double().cpu().numpy()
        return out
