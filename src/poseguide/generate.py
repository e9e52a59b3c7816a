"""The one generation path: SD1.5 + a pose ControlNet, a prompt and a pose -> images.

Training validation, evaluation, ``poseguide generate`` and the demo UI all call :func:`generate`
on a pipeline from :func:`poseguide.models.load_pipeline` (models from folders or hub ids) or
:func:`poseguide.models.pipeline_from_parts` (models already in memory, e.g. the ControlNet being
trained); both are re-exported here.

Reproducibility: image ``i`` is drawn with its own generator seeded with ``seeds[i]``, so the image
for a (prompt, pose, seed) triple does not depend on the batch it was generated in nor on the
batch size. The generators live on the CPU, which also makes the starting noise the same on every
device (a CUDA generator draws different numbers from a CPU one for the same seed).

Poses (skeleton images, keypoints, photos) become ControlNet conditions in
:mod:`poseguide.pose.inputs`; its names are re-exported here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from poseguide.config.schema import GenerateConfig
from poseguide.errors import InputError
from poseguide.models import (  # noqa: F401 - re-exported: the generation API
    SCHEDULERS,
    load_pipeline,
    make_scheduler,
    pipeline_from_parts,
)
from poseguide.pose.api import estimator_from_config
from poseguide.pose.estimator import PoseEstimator
from poseguide.pose.inputs import (  # noqa: F401 - re-exported: the generation API
    DEFAULT_SIZE,
    POSE_KINDS,
    NoPersonFoundError,
    PoseCondition,
    PoseInput,
    guess_image_kind,
    pose_condition,
    pose_from_path,
)
from poseguide.pose.io import write_pose
from poseguide.pose.render import canvas_limit, check_canvas_size
from poseguide.text import CaptionCuts, encode_captions
from poseguide.utils.device import resolve_device
from poseguide.utils.io import atomic_save_image, atomic_write_json

log = logging.getLogger(__name__)

# A generated image whose brightest value is below this (of 1.0) is reported as black.
BLACK_LEVEL = 1.0 / 255.0

# ---------------------------------------------------------------------------------------------
# Pipelines
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------


def _broadcast(name: str, value: Any, n: int) -> list:
    """``value`` as a list of ``n``: a single item (or a list of one) is repeated."""
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(items) == 1:
        return items * n
    if len(items) != n:
        raise ValueError(f"{name}: got {len(items)}, expected 1 or {n} (one per seed)")
    return items


@contextlib.contextmanager
def _inference_mode(pipe: Any) -> Iterator[None]:
    """Eval mode (each model's train/eval mode restored afterwards) and, when the models' dtypes
    differ (fp16 frozen parts beside the fp32 training ControlNet), autocast to the lower one."""
    modules = [pipe.vae, pipe.text_encoder, pipe.unet, pipe.controlnet]
    training = [m.training for m in modules]
    low = [m.dtype for m in modules if m.dtype != torch.float32]
    mixed = len({m.dtype for m in modules}) > 1
    dtype = pipe.unet.dtype if pipe.unet.dtype in low else (low[0] if low else torch.float32)
    autocast = torch.autocast(pipe.device.type, dtype=dtype) if mixed else contextlib.nullcontext()
    try:
        for module in modules:
            module.eval()
        with torch.no_grad(), autocast:
            yield
    finally:
        for module, mode in zip(modules, training, strict=True):
            module.train(mode)


def image_problem(image: np.ndarray) -> str | None:
    """Why a generated float (H, W, 3) image in [0, 1] is unusable: "NaN", "Inf", "black" (every
    value below one 8-bit level), or None when it is fine."""
    if np.isnan(image).any():
        return "NaN"
    if not np.isfinite(image).all():
        return "Inf"
    return "black" if image.max() < BLACK_LEVEL else None


def _call_pipe(pipe: Any, prompts: Sequence[str], poses: Sequence[Image.Image],
               seeds: Sequence[int], cfg: GenerateConfig, size: tuple[int, int],
               cuts: CaptionCuts | None = None, output_type: str = "np") -> Any:  # fmt: skip
    """One diffusers call for one batch, with embeddings from the one caption path."""
    embeds, negative = _prompt_embeddings(pipe, prompts, cfg, cuts)
    return pipe(
        prompt_embeds=embeds,
        negative_prompt_embeds=negative,
        image=list(poses),
        height=size[1],
        width=size[0],
        num_inference_steps=cfg.steps,
        guidance_scale=cfg.guidance_scale,
        generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
        controlnet_conditioning_scale=cfg.conditioning_scale,
        output_type=output_type,
    ).images


def _redo_with_fp32_vae(pipe: Any, prompts: Sequence[str], poses: Sequence[Image.Image],
                        seeds: Sequence[int], cfg: GenerateConfig,
                        size: tuple[int, int]) -> list[np.ndarray]:  # fmt: skip
    """The same images (same seeds, so the same latents) decoded by a float32 copy of the VAE:
    a float16 VAE overflows into NaN or black images, a float32 one does not."""
    import copy

    latents = _call_pipe(pipe, prompts, poses, seeds, cfg, size, output_type="latent")
    vae = copy.deepcopy(pipe.vae).to(torch.float32)
    with torch.autocast(latents.device.type, enabled=False):
        decoded = vae.decode(latents.float() / vae.config.scaling_factor).sample
    images = pipe.image_processor.postprocess(decoded, output_type="np")
    return [np.asarray(image, dtype=np.float32) for image in images]


def _retry_invalid(images: list[np.ndarray], pipe: Any, prompts: Sequence[str],
                   poses: Sequence[Image.Image], seeds: Sequence[int], cfg: GenerateConfig,
                   size: tuple[int, int]) -> None:  # fmt: skip
    """Regenerate (once, VAE in float32) the images of one batch that came out NaN, Inf or
    black; warn about each that is still invalid (its caller decides what to do with it)."""
    bad = [j for j, image in enumerate(images) if image_problem(image)]
    if bad and pipe.vae.dtype != torch.float32:
        log.warning("%d image(s) came out %s with the %s VAE; decoding them again in float32",
                    len(bad), image_problem(images[bad[0]]), pipe.vae.dtype)  # fmt: skip
        redone = _redo_with_fp32_vae(pipe, [prompts[j] for j in bad], [poses[j] for j in bad],
                                     [seeds[j] for j in bad], cfg, size)  # fmt: skip
        for j, image in zip(bad, redone, strict=True):
            images[j] = image
    for j in bad:
        if image_problem(images[j]):
            log.warning(
                "the image for prompt %r, seed %d is %s even with a float32 VAE: not a "
                "usable image",
                prompts[j][:80],
                seeds[j],
                image_problem(images[j]),
            )


def generate_arrays(
    pipe: Any,
    prompts: str | Sequence[str],
    poses: Image.Image | Sequence[Image.Image],
    seeds: Sequence[int],
    cfg: GenerateConfig,
    size: tuple[int, int] = DEFAULT_SIZE,
    progress: bool = False,
    cuts: CaptionCuts | None = None,
) -> list[np.ndarray]:
    """One image per seed as float32 (H, W, 3) RGB arrays in [0, 1] (NaN where the VAE failed).

    ``prompts`` and ``poses`` (skeleton images, resized to ``size`` (W, H) if needed) are single
    items or one per seed. Images are generated ``cfg.batch_size`` at a time; image ``i`` uses
    a CPU generator seeded with ``seeds[i]``, so it does not depend on the batch it is in.
    Prompts go to the pipeline as embeddings from the one caption path
    (:func:`poseguide.text.encode_captions`): a long prompt is cut to the text encoder's limit
    without a warning; ``cuts`` (optional) counts which prompts were cut. An image that comes out
    NaN, Inf or black (:func:`image_problem`; a float16 VAE can overflow) is decoded once more
    with a float32 copy of the VAE; one still invalid is returned as it is, with a warning.
    """
    seeds = [int(s) for s in seeds]
    n = len(seeds)
    if n == 0:
        return []
    prompts, poses = _broadcast("prompts", prompts, n), _broadcast("poses", poses, n)
    width, height = int(size[0]), int(size[1])
    factor = pipe.vae_scale_factor
    if width <= 0 or height <= 0 or width % factor or height % factor:
        raise InputError(
            f"size {width}x{height}: both sides must be positive multiples of {factor}"
        )
    poses = [p.convert("RGB") for p in poses]
    poses = [
        p if p.size == (width, height) else p.resize((width, height), Image.Resampling.BICUBIC)
        for p in poses
    ]
    from tqdm.auto import tqdm

    out: list[np.ndarray] = []
    with _inference_mode(pipe), tqdm(total=n, desc="generating", disable=not progress) as bar:
        for start in range(0, n, cfg.batch_size):
            batch = slice(start, start + cfg.batch_size)
            args = (prompts[batch], poses[batch], seeds[batch], cfg, (width, height))
            images = [np.asarray(im, dtype=np.float32) for im in _call_pipe(pipe, *args, cuts)]
            _retry_invalid(images, pipe, *args)
            out.extend(images)
            bar.update(len(images))
    return out


def _prompt_embeddings(
    pipe: Any, prompts: Sequence[str], cfg: GenerateConfig, cuts: CaptionCuts | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(prompt, negative prompt) embeddings as diffusers' ``encode_prompt`` would compute them;
    the negative ones only when classifier-free guidance is on (guidance scale > 1)."""
    embeds = encode_captions(pipe.text_encoder, pipe.tokenizer, prompts, cuts)
    if cfg.guidance_scale <= 1.0:
        return embeds, None
    negative = [cfg.negative_prompt or ""] * len(prompts)
    return embeds, encode_captions(pipe.text_encoder, pipe.tokenizer, negative)


def to_pil(image: np.ndarray) -> Image.Image:
    """A float (H, W, 3) array in [0, 1] as an RGB image, rounded as diffusers does; NaN -> 0."""
    array = np.nan_to_num(np.clip(image, 0.0, 1.0), nan=0.0)
    return Image.fromarray((array * 255).round().astype(np.uint8))


def generate(
    pipe: Any,
    prompts: str | Sequence[str],
    poses: Image.Image | Sequence[Image.Image],
    seeds: Sequence[int],
    cfg: GenerateConfig,
    size: tuple[int, int] = DEFAULT_SIZE,
    output_sizes: tuple[int, int] | Sequence[tuple[int, int]] | None = None,
    progress: bool = False,
    cuts: CaptionCuts | None = None,
) -> list[Image.Image]:
    """Generate one RGB image per seed: the one path for validation, evaluation, CLI and UI.

    Args:
        pipe: from :func:`load_pipeline` or :func:`pipeline_from_parts`.
        prompts: one prompt, or one per seed.
        poses: skeleton images (:func:`pose_condition`), one, or one per seed.
        seeds: one image per seed; several seeds give several images of a prompt.
        cfg: steps, guidance, conditioning scale, negative prompt, batch size.
        size: (W, H) generation size, multiples of the VAE's factor (8).
        output_sizes: (W, H), one or one per image: the generated images are resized to it
            (bicubic), e.g. back to the original image size for evaluation. None: ``size``.
        progress: show a progress bar over the images.
        cuts: counts the prompts cut to the text encoder's limit (see :mod:`poseguide.text`).
    """
    arrays = generate_arrays(pipe, prompts, poses, seeds, cfg, size, progress, cuts)
    images = [to_pil(a) for a in arrays]
    if output_sizes is None:
        return images
    if len(output_sizes) == 2 and all(isinstance(v, (int, np.integer)) for v in output_sizes):
        output_sizes = [output_sizes]
    sizes = _broadcast("output_sizes", output_sizes, len(images))
    return [
        im if im.size == tuple(s) else im.resize(tuple(s), Image.Resampling.BICUBIC)
        for im, s in zip(images, sizes, strict=True)
    ]


def run_generate(
    config: Any,
    controlnet: str,
    prompt: str,
    pose: str | Path,
    out_dir: str | Path,
    n: int = 1,
    seed: int = 0,
    size: tuple[int, int] | None = None,
    output_size: tuple[int, int] | Literal["source"] | None = None,
    pose_kind: str = "auto",
    estimator: PoseEstimator | None = None,
) -> list[Path]:
    """``poseguide generate``: ``n`` images of ``prompt`` in the pose of a file, written to disk.

    ``pose`` is a keypoint JSON, a skeleton image or a photo (``pose_kind`` overrides the guess,
    see :func:`pose_from_path`). Image ``i`` uses seed ``seed + i``, so ``image_7.png`` comes out
    the same when generated alone with ``seed=7``. ``size`` is the generation size (W, H),
    default ``config.data.resolution`` square; ``output_size`` a size to resize the images to, or
    ``"source"`` for the pose file's own size. Writes ``out_dir/pose.png`` (the ControlNet input),
    ``pose.json`` (its keypoints, when rendered from keypoints or a photo), ``image_{seed}.png``
    and ``generate.json`` (the settings). Returns the image paths.
    """

    if n < 1:
        raise InputError(f"n: must be at least 1, got {n}")
    size = tuple(size) if size else (config.data.resolution, config.data.resolution)
    pose_input = pose_from_path(pose, pose_kind)
    if pose_input.kind == "photo" and estimator is None:
        estimator = estimator_from_config(config.pose.estimator)
    render = config.pose.render
    cond = pose_condition(pose_input, size, render, estimator, render.min_score)
    target = (cond.source_size or size) if output_size == "source" else output_size
    if target is not None:  # checked before the pipeline loads: nothing is allocated yet
        what = f"{pose_input.source}: canvas (--source-size)" if output_size == "source" else ""
        target = check_canvas_size(target, canvas_limit(render), what or "output size")
    device = resolve_device(config.run.device)
    model = config.model
    pipe = load_pipeline(
        model.base, controlnet, config.generate, device, model.revision, model.variant
    )
    seeds = [seed + i for i in range(n)]
    cuts = CaptionCuts()
    images = generate(pipe, prompt, cond.image, seeds, config.generate, size, target, True, cuts)
    if cuts.cut.get(prompt):
        log.info("the prompt is cut to %d tokens (%d tokens dropped)", cuts.limit, cuts.cut[prompt])
    record = {
        "prompt": prompt, "seeds": seeds,
        "pose": {"source": pose_input.source, "kind": pose_input.kind}, "size": list(size),
        "output_size": list(target) if target else list(size), "base": model.base,
        "controlnet": controlnet, "generate": dataclasses.asdict(config.generate),
        "device": str(device),
    }  # fmt: skip
    return _write_generated(Path(out_dir), cond, images, seeds, record)


def _write_generated(out: Path, cond: PoseCondition, images: list[Image.Image], seeds: list[int],
                     record: dict) -> list[Path]:  # fmt: skip
    """``pose.png``, ``pose.json`` (keypoints, when there are some), ``image_{seed}.png`` and
    ``generate.json`` in ``out``; returns the image paths."""

    atomic_save_image(out / "pose.png", cond.image)
    if cond.people is not None:
        write_pose(out / "pose.json", cond.people, size=tuple(record["size"]))
    paths = [
        atomic_save_image(out / f"image_{s}.png", im) for s, im in zip(seeds, images, strict=True)
    ]
    atomic_write_json(out / "generate.json", record)
    return paths
