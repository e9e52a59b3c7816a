"""CLIP score of generated images against their captions (METHOD.md section 6), loaded lazily.

``CLIP score = 100 * max(cos(image_embedding, text_embedding), 0)``, the torchmetrics definition,
computed here with ``CLIPModel.get_image_features`` / ``get_text_features`` (torchmetrics'
``CLIPScore`` with a local model crashed on transformers 5.24). Captions are truncated to the
model's text length (77 tokens for OpenAI's CLIP) by the one caption path
(:func:`poseguide.text.tokenize_captions`), never rejected.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from poseguide.models import ModelNotFoundError, resolve_pretrained
from poseguide.text import CaptionCuts, count_cuts, tokenize_captions
from poseguide.utils.device import resolve_device

log = logging.getLogger(__name__)

DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"


def _embedding(output: Any) -> torch.Tensor:
    """The projected embedding from ``get_*_features``: a tensor in older transformers, a
    ``BaseModelOutputWithPooling`` whose ``pooler_output`` holds it in transformers 5."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class ClipScorer:
    """CLIP score of (image, caption) pairs.

    Args:
        model: a hub id or a folder holding a ``CLIPModel``, its tokenizer and image processor
            (``save_pretrained`` of each, or of a ``CLIPProcessor``), resolved with
            :func:`poseguide.models.resolve_pretrained` (offline: a local folder or the HF cache).
        device: where it runs; None picks the available accelerator, else the CPU.
        batch_size: pairs per forward pass.

    The model loads on first use; :meth:`from_parts` wraps models already in memory.
    """

    def __init__(
        self,
        model: str = DEFAULT_CLIP_MODEL,
        device: torch.device | str | None = None,
        batch_size: int = 16,
        revision: str | None = None,
    ) -> None:
        self.name, self.revision = model, revision
        self.device = resolve_device(None) if device is None else torch.device(device)
        self.batch_size = batch_size
        self._parts: tuple[Any, Any, Any] | None = None
        self.folder: str | None = None

    @classmethod
    def from_parts(
        cls,
        model: Any,
        tokenizer: Any,
        image_processor: Any,
        name: str = "in-memory CLIP",
        batch_size: int = 16,
    ) -> ClipScorer:
        """A scorer over a ``CLIPModel``, tokenizer and image processor already built."""
        scorer = cls(name, device=model.device, batch_size=batch_size)
        scorer._parts = (model.eval().requires_grad_(False), tokenizer, image_processor)
        return scorer

    def _load(self) -> tuple[Any, Any, Any]:
        if self._parts is None:
            from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

            folder = resolve_pretrained(self.name, self.revision, what="CLIP model")
            try:
                model = CLIPModel.from_pretrained(folder, dtype=torch.float32)
                tokenizer = AutoTokenizer.from_pretrained(folder)
                processor = AutoImageProcessor.from_pretrained(folder)
            except (OSError, ValueError) as err:
                raise ModelNotFoundError(
                    f"CLIP model {self.name!r} ({folder}) could not be loaded: {err}. The folder "
                    "needs a CLIPModel (config.json + weights), its tokenizer files and "
                    "preprocessor_config.json (save_pretrained of CLIPModel and CLIPProcessor)."
                ) from None
            self.folder = folder
            model = model.to(self.device).eval().requires_grad_(False)
            self._parts = (model, tokenizer, processor)
            log.info("CLIP score: %s", self.describe())
        return self._parts

    @property
    def model(self) -> Any:
        """The ``CLIPModel`` (loaded on first access)."""
        return self._load()[0]

    @property
    def max_length(self) -> int:
        """Captions are cut to this many tokens: the smaller of the tokenizer's length and the
        text model's positions (77 for OpenAI's CLIP)."""
        model, tokenizer, _ = self._load()
        return min(
            int(tokenizer.model_max_length), int(model.config.text_config.max_position_embeddings)
        )

    def describe(self) -> str:
        """Which model gives the numbers, for the report."""
        where = f" ({self.folder})" if self.folder and self.folder != self.name else ""
        length = f"{self.max_length} tokens" if self._parts else "the model's text length"
        return f"CLIP score 100*max(cos, 0) with {self.name}{where}, captions cut to {length}"

    def caption_cuts(self, captions: Sequence[str]) -> CaptionCuts:
        """Which of ``captions`` this scorer cuts, and by how many tokens."""
        _, tokenizer, _ = self._load()
        return count_cuts(tokenizer, captions, self.max_length)

    @torch.no_grad()
    def image_embeddings(self, images: Sequence[Image.Image], unit: bool = True) -> torch.Tensor:
        """(N, D) float32 image embeddings (CPU): the projection's output, unit length unless
        ``unit`` is False (FID_CLIP takes them as they are)."""
        model, _, processor = self._load()
        out = []
        for start in range(0, len(images), self.batch_size):
            batch = [im.convert("RGB") for im in images[start : start + self.batch_size]]
            pixels = processor(images=batch, return_tensors="pt")["pixel_values"]
            emb = _embedding(model.get_image_features(pixel_values=pixels.to(self.device)))
            emb = emb.float()
            out.append((torch.nn.functional.normalize(emb, dim=-1) if unit else emb).cpu())
        return torch.cat(out) if out else torch.zeros(0, model.config.projection_dim)

    @torch.no_grad()
    def text_embeddings(self, captions: Sequence[str]) -> torch.Tensor:
        """(N, D) float32 unit-length caption embeddings (CPU), captions truncated."""
        model, tokenizer, _ = self._load()
        out = []
        for start in range(0, len(captions), self.batch_size):
            chunk = list(captions[start : start + self.batch_size])
            tokens = tokenize_captions(tokenizer, chunk, self.max_length, padding="longest")
            emb = _embedding(
                model.get_text_features(
                    input_ids=tokens.input_ids.to(self.device),
                    attention_mask=tokens.attention_mask.to(self.device),
                )
            )
            out.append(torch.nn.functional.normalize(emb.float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, model.config.projection_dim)

    def scores(self, images: Sequence[Image.Image], captions: Sequence[str]) -> np.ndarray:
        """(N,) float64 CLIP scores in [0, 100], one per (image, caption) pair."""
        if len(images) != len(captions):
            raise ValueError(f"{len(images)} images but {len(captions)} captions")
        cos = (self.image_embeddings(images) * self.text_embeddings(captions)).sum(dim=-1)
        return (100.0 * cos.clamp(min=0.0)).double().numpy()

    def __call__(self, image: Image.Image, caption: str) -> float:
        return float(self.scores([image], [caption])[0])
