"""The one caption path: cut quietly, counted, and equal to what diffusers computes itself."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from poseguide.config.schema import GenerateConfig
from poseguide.generate import generate_arrays, pose_condition
from poseguide.models import build_controlnet, load_sd_parts
from poseguide.text import CaptionCuts, count_cuts, encode_captions, tokenize_captions

SHORT = "a person standing on grass"
# The tiny tokenizer reads one token per non-space character: this caption needs 2 + 112.
LONG = "a woman in a long red coat and a black hat walks her dog along a wet cobbled street " * 2
LONG = LONG[:140]
LONG_TOKENS = 2 + len(LONG.replace(" ", ""))
TRUNCATION_WARNINGS = ("truncated because CLIP", "Token indices sequence length")


@pytest.fixture(scope="module")
def pipe(tiny_sd: str):
    from poseguide.generate import load_pipeline

    torch.manual_seed(0)
    parts = load_sd_parts(tiny_sd)
    return load_pipeline(tiny_sd, build_controlnet(parts.unet), GenerateConfig(steps=2))


def test_tokens_are_cut_to_the_limit_and_counted(pipe) -> None:
    tokens = tokenize_captions(pipe.tokenizer, [SHORT, LONG])
    assert tokens.input_ids.shape == (2, 77) and tokens.limit == 77
    assert tokens.lengths == [2 + len(SHORT.replace(" ", "")), LONG_TOKENS]  # start, end tokens
    assert tokens.lengths[1] == len(pipe.tokenizer(LONG, verbose=False).input_ids)
    assert tokens.cut == [0, LONG_TOKENS - 77]
    assert tokens.input_ids[1, -1] == pipe.tokenizer.eos_token_id  # cut, then closed
    cuts = count_cuts(pipe.tokenizer, [SHORT, LONG, LONG, ""])
    assert cuts.summary() == {"limit": 77, "captions": 3, "cut": 1,
                              "tokens_cut_max": LONG_TOKENS - 77,
                              "tokens_cut_mean": float(LONG_TOKENS - 77)}  # fmt: skip
    assert "1 of 3 distinct captions cut to 77 tokens" in cuts.describe()
    assert "none longer" in CaptionCuts(limit=77, seen={"a"}).describe()


def test_embeddings_equal_diffusers_encode_prompt(pipe) -> None:
    ours = encode_captions(pipe.text_encoder, pipe.tokenizer, [SHORT, LONG, ""])
    with torch.no_grad():
        theirs, _ = pipe.encode_prompt([SHORT, LONG, ""], torch.device("cpu"), 1, False)
    assert torch.equal(ours, theirs)


def test_generation_equals_the_pipeline_called_with_strings(pipe, caplog) -> None:
    """poseguide passes embeddings; diffusers given the strings computes the same images (and
    warns about the long prompt, which poseguide does not)."""
    cfg = GenerateConfig(steps=2, guidance_scale=3.0, negative_prompt="blurry")
    pose = pose_condition(np.array([[(32.0, 8.0 + 3 * j, 2.0) for j in range(17)]]), (64, 64))
    caplog.set_level(logging.WARNING)
    cuts = CaptionCuts()
    ours = generate_arrays(pipe, [SHORT, LONG], pose.image, [5, 6], cfg, (64, 64), cuts=cuts)
    assert not [r for r in caplog.records if any(w in r.getMessage() for w in TRUNCATION_WARNINGS)]
    assert cuts.summary()["cut"] == 1 and cuts.cut[LONG] == LONG_TOKENS - 77
    with torch.no_grad():
        theirs = pipe(
            prompt=[SHORT, LONG], negative_prompt=["blurry"] * 2, image=[pose.image] * 2,
            height=64, width=64, num_inference_steps=2, guidance_scale=3.0,
            generator=[torch.Generator("cpu").manual_seed(s) for s in (5, 6)], output_type="np",
        ).images  # fmt: skip
    assert any(w in r.getMessage() for r in caplog.records for w in TRUNCATION_WARNINGS)
    np.testing.assert_allclose(np.stack(ours), theirs, atol=1e-6)
