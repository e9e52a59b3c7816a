"""The one caption path: tokenise, cut to the text encoder's limit, count what was cut, encode.

Every caption poseguide feeds a text model goes through :func:`tokenize_captions`: the latent
cache's text embeddings, training without the cache, validation, generation, evaluation and the
CLIP score. A caption longer than the limit (77 tokens for SD1.5's CLIP text encoder, start and
end tokens included) is cut there, quietly; how many captions were cut, and by how many tokens,
is counted (:class:`CaptionCuts`) and reported once per run instead of per batch. Pipelines get
embeddings (``prompt_embeds``), never strings, so diffusers neither cuts nor warns.

:func:`encode_captions` computes what diffusers' ``StableDiffusionPipeline.encode_prompt`` computes
for SD1.5 (ids padded to the limit, the text encoder's last hidden state, an attention mask only
when the text encoder's config asks for one); a test checks that they are equal.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

log = logging.getLogger(__name__)


def caption_limit(tokenizer: Any, text_config: Any = None) -> int:
    """Tokens a caption may have: the tokenizer's ``model_max_length``, at most the text model's
    ``max_position_embeddings`` when its config is given (77 for OpenAI's CLIP)."""
    limit = int(tokenizer.model_max_length)
    positions = getattr(text_config, "max_position_embeddings", None)
    return min(limit, int(positions)) if positions else limit


@dataclass(frozen=True)
class CaptionTokens:
    """Captions tokenised and cut: ``input_ids`` and ``attention_mask`` (B, L) int64 on the CPU;
    ``lengths`` (B,) the full token counts before the cut (start and end tokens included)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    lengths: list[int]
    limit: int

    @property
    def cut(self) -> list[int]:
        """Tokens dropped from each caption (0 when it fitted)."""
        return [max(0, n - self.limit) for n in self.lengths]


def tokenize_captions(
    tokenizer: Any, captions: Sequence[str], limit: int | None = None, padding: str = "max_length"
) -> CaptionTokens:
    """Tokenise ``captions``, cut each to ``limit`` tokens (default: the tokenizer's length).

    ``padding``: "max_length" pads to ``limit`` (what SD's text encoder is trained with);
    "longest" pads to the longest caption of the batch. No warning is logged for a long caption.
    """
    limit = int(tokenizer.model_max_length) if limit is None else int(limit)
    captions = list(captions)
    full = tokenizer(captions, verbose=False)["input_ids"]  # verbose=False: no length warning
    tokens = tokenizer(captions, padding=padding, max_length=limit, truncation=True,
                       return_tensors="pt")  # fmt: skip
    return CaptionTokens(
        tokens["input_ids"], tokens["attention_mask"], [len(ids) for ids in full], limit
    )


@torch.no_grad()
def encode_captions(
    text_encoder: Any, tokenizer: Any, captions: Sequence[str], cuts: CaptionCuts | None = None
) -> torch.Tensor:
    """SD text embeddings (B, L, D) of ``captions`` in the text encoder's dtype and device.

    As diffusers' ``encode_prompt`` for SD1.5: ids padded to the tokenizer's length, the last
    hidden state, the attention mask passed only when ``text_encoder.config.use_attention_mask``.
    ``cuts`` (optional) records which captions were cut.
    """
    tokens = tokenize_captions(tokenizer, captions)
    if cuts is not None:
        cuts.add(captions, tokens)
    device = text_encoder.device
    mask = None
    if getattr(text_encoder.config, "use_attention_mask", False):
        mask = tokens.attention_mask.to(device)
    return text_encoder(tokens.input_ids.to(device), attention_mask=mask)[0]


@dataclass
class CaptionCuts:
    """Which distinct captions were cut to the limit, and by how many tokens."""

    limit: int | None = None
    cut: dict[str, int] = field(default_factory=dict)  # caption -> tokens dropped (> 0 only)
    seen: set[str] = field(default_factory=set)

    def add(self, captions: Sequence[str], tokens: CaptionTokens) -> None:
        self.limit = tokens.limit
        for caption, dropped in zip(captions, tokens.cut, strict=True):
            self.seen.add(caption)
            if dropped:
                self.cut[caption] = dropped

    def summary(self) -> dict:
        """``{"limit", "captions", "cut", "tokens_cut_max", "tokens_cut_mean"}`` (distinct
        captions; the mean is over the cut ones)."""
        dropped = list(self.cut.values())
        return {
            "limit": self.limit,
            "captions": len(self.seen),
            "cut": len(dropped),
            "tokens_cut_max": max(dropped, default=0),
            "tokens_cut_mean": round(sum(dropped) / len(dropped), 2) if dropped else 0.0,
        }

    def describe(self, what: str = "captions") -> str:
        s = self.summary()
        if not s["cut"]:
            return f"{what}: {s['captions']} distinct, none longer than {s['limit']} tokens"
        return (
            f"{what}: {s['cut']} of {s['captions']} distinct captions cut to {s['limit']} tokens "
            f"(by {s['tokens_cut_mean']:.1f} tokens on average, at most {s['tokens_cut_max']})"
        )


def count_cuts(tokenizer: Any, captions: Sequence[str], limit: int | None = None) -> CaptionCuts:
    """:class:`CaptionCuts` of ``captions`` (distinct ones tokenised once)."""
    distinct = sorted(set(captions))
    cuts = CaptionCuts(limit=limit or int(tokenizer.model_max_length))
    for start in range(0, len(distinct), 1024):
        chunk = distinct[start : start + 1024]
        cuts.add(chunk, tokenize_captions(tokenizer, chunk, limit))
    return cuts
