"""Generated images that come out NaN, Inf or black: retried with a float32 VAE, then left out
of the means, counted per model and listed (metrics.json and the report)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write_config
from PIL import Image

from poseguide.config import load_config
from poseguide.config.schema import GenerateConfig
from poseguide.evaluate.report import make_report
from poseguide.evaluate.runner import file_stem, run_evaluation
from poseguide.generate import generate_arrays, image_problem, pipeline_from_parts, pose_condition
from poseguide.models import build_controlnet, load_sd_parts

POSE = np.array([[(32.0, 8.0 + 3 * j, 2.0) for j in range(17)]])


def test_image_problem_names_the_defect() -> None:
    good = np.full((4, 4, 3), 0.5, dtype=np.float32)
    assert image_problem(good) is None
    assert image_problem(np.where(np.eye(4)[..., None] > 0, np.nan, good)) == "NaN"
    assert image_problem(np.where(np.eye(4)[..., None] > 0, np.inf, good)) == "Inf"
    assert image_problem(np.zeros_like(good)) == "black"
    assert image_problem(np.full_like(good, 2 / 255)) is None  # dark, not black


def test_a_low_precision_vae_overflow_is_decoded_again_in_float32(tiny_sd, monkeypatch, caplog):
    """A bf16 VAE that overflows (simulated: its decode gives NaN unless it is float32): the
    image comes back from the float32 retry, equal to what a float32 VAE decodes."""
    from diffusers import AutoencoderKL

    real = AutoencoderKL.decode

    def overflowing(self, z, *args, **kwargs):
        out = real(self, z, *args, **kwargs)
        if self.dtype != torch.float32:
            (out[0] if isinstance(out, tuple) else out.sample).fill_(float("nan"))
        return out

    torch.manual_seed(0)
    parts = load_sd_parts(tiny_sd, dtype=torch.bfloat16)
    controlnet = build_controlnet(parts.unet)
    cfg = GenerateConfig(steps=2, guidance_scale=1.0)
    pipe = pipeline_from_parts(parts, controlnet, cfg)
    pose = pose_condition(POSE, (64, 64)).image
    monkeypatch.setattr(AutoencoderKL, "decode", overflowing)
    caplog.set_level(logging.WARNING, logger="poseguide.generate")
    (image,) = generate_arrays(pipe, "a person", pose, [3], cfg, (64, 64))
    assert image_problem(image) is None and "decoding them again in float32" in caplog.text
    assert parts.vae.dtype == torch.bfloat16  # the pipeline's own VAE is left as it was
    monkeypatch.setattr(AutoencoderKL, "decode", real)
    (plain,) = generate_arrays(pipe, "a person", pose, [3], cfg, (64, 64))  # bf16 decode
    assert np.abs(image - plain).max() < 0.05  # the same latents: bf16 vs fp32 decode only


def test_invalid_images_are_not_scored(tmp_path: Path, monkeypatch, caplog) -> None:
    import poseguide.evaluate.runner as gen  # the evaluation's generate_arrays

    models = [{"name": "baseline", "controlnet": "unet"},
              {"name": "painted", "controlnet": "unet"},
              {"name": "originals", "controlnet": "originals"}]  # fmt: skip
    write_config(tmp_path, evaluate={"models": models, "bootstrap": 20})
    monkeypatch.chdir(tmp_path)
    config = load_config("config.yaml")
    eval_dir = tmp_path / "runs" / "t" / "eval"
    real = gen.generate_arrays

    def second_one_nan(*args, **kwargs):
        images = real(*args, **kwargs)
        images[1] = np.full_like(images[1], np.nan)  # what a VAE gives after an overflow
        return images

    monkeypatch.setattr(gen, "generate_arrays", second_one_nan)
    # "painted": its images were stored by an earlier run, one of them all black.
    (eval_dir / "images" / "painted").mkdir(parents=True)
    ids = [f"synth-{i:05d}" for i in range(4)]
    for k, row_id in enumerate(ids):
        colour = 0 if k == 2 else 90
        Image.new("RGB", (64, 64), (colour,) * 3).save(
            eval_dir / "images" / "painted" / f"{file_stem(row_id)}.png"
        )
    metrics = run_evaluation(config)
    rows = [json.loads(x) for x in (eval_dir / "samples.jsonl").read_text().splitlines()]
    baseline = {r["id"]: r for r in rows if r["model"] == "baseline"}
    nan_id = sorted(baseline, key=lambda i: baseline[i]["index"])[1]
    assert baseline[nan_id]["invalid"] == "NaN" and baseline[nan_id]["clip"] is None
    assert (eval_dir / "images" / "baseline" / f"{file_stem(nan_id)}.invalid").is_file()
    for name, bad, reason in (("baseline", nan_id, "NaN"), ("painted", ids[2], "black")):
        entry = metrics["models"][name]
        assert entry["invalid"] == {"count": 1, "ids": [bad], "reasons": {bad: reason}}
        assert entry["n"] == 3
        valid = [r for r in rows if r["model"] == name and not r.get("invalid")]
        assert len(valid) == 3
        assert entry["clip"]["mean"] == pytest.approx(np.mean([r["clip"] for r in valid]))
        assert entry["lpips"]["mean"] == pytest.approx(np.mean([r["lpips"] for r in valid]))
    assert metrics["models"]["originals"]["invalid"]["count"] == 0
    # A re-run keeps the verdicts (the images are not generated again) and the report lists them.
    again = run_evaluation(config)
    assert again["models"]["baseline"]["invalid"]["ids"] == [nan_id]
    make_report(tmp_path / "runs" / "t")
    report = (eval_dir / "report.md").read_text()
    assert f"`baseline`: 1 invalid image(s), left out: {nan_id} (NaN)" in report
    assert f"`painted`: 1 invalid image(s), left out: {ids[2]} (black)" in report
    assert "Per-sample check FAILED" not in report
