"""Generation with the tiny pipeline: poses from keypoints, skeleton images and photos; seeds."""

from __future__ import annotations

import json
import logging
import typing
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import seeded
from PIL import Image

from poseguide.config.schema import (
    Config,
    DataConfig,
    GenerateConfig,
    ModelConfig,
    PoseConfig,
    RunConfig,
)
from poseguide.generate import (
    SCHEDULERS,
    NoPersonFoundError,
    PoseInput,
    generate,
    generate_arrays,
    guess_image_kind,
    load_pipeline,
    make_scheduler,
    pipeline_from_parts,
    pose_condition,
    pose_from_path,
    run_generate,
)
from poseguide.models import ModelNotFoundError, build_controlnet, load_sd_parts
from poseguide.pose.api import detections_to_coco, estimator_from_config
from poseguide.pose.io import write_pose
from poseguide.pose.render import render_skeleton
from poseguide.pose.skeleton import KeypointError

SIZE = (64, 64)  # generation size: 8x8 latents
STEPS = 3
# The ControlNet layers that start at zero: the pose embedding's output and the residual convs.
ZERO_INIT = ("controlnet_cond_embedding.conv_out", "controlnet_down_blocks", "controlnet_mid_block")
PROMPT = "a person standing on grass"


def a_person(canvas: tuple[int, int] = (128, 96)) -> np.ndarray:
    """(1, 17, 3) COCO-17 keypoints of a standing person filling ``canvas``, all visible."""
    w, h = canvas
    xy = [
        (0.50, 0.10), (0.53, 0.08), (0.47, 0.08), (0.56, 0.10), (0.44, 0.10),  # head
        (0.62, 0.25), (0.38, 0.25), (0.68, 0.42), (0.32, 0.42), (0.70, 0.58), (0.30, 0.58),
        (0.58, 0.55), (0.42, 0.55), (0.60, 0.73), (0.40, 0.73), (0.61, 0.92), (0.39, 0.92),
    ]  # fmt: skip
    return np.array([[(round(x * w), round(y * h), 2.0) for x, y in xy]])  # whole pixels


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models gain nothing from threads, and two OpenMP threads on a 2-core machine that
    another test process is also using run ~100x slower (each waits for the busy core)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def parts(tiny_sd: str):
    return load_sd_parts(tiny_sd)


@pytest.fixture(scope="module")
def controlnet(parts):
    """A 'training' ControlNet: fp32, train mode, trainable, with its zero convolutions set to
    random values so that the pose changes the image (untrained, it has no effect at all)."""
    with seeded(0):  # the pose embedding's other layers start random
        controlnet = build_controlnet(parts.unet)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in controlnet.named_parameters():
            if name.startswith(ZERO_INIT):
                p.copy_(torch.randn(p.shape, generator=generator))
    return controlnet


@pytest.fixture(scope="module")
def controlnet_dir(controlnet, tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("controlnet") / "cn"
    controlnet.save_pretrained(folder, safe_serialization=True)
    return str(folder)


@pytest.fixture(scope="module")
def cfg() -> GenerateConfig:
    return GenerateConfig(steps=STEPS, batch_size=4)


@pytest.fixture(scope="module")
def pipe(tiny_sd: str, controlnet_dir: str, cfg: GenerateConfig):
    return load_pipeline(tiny_sd, controlnet_dir, cfg, "cpu")


@pytest.fixture(scope="module")
def estimator():
    return estimator_from_config(PoseConfig().estimator)


@pytest.fixture(scope="module")
def photo_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from skimage import data

    path = tmp_path_factory.mktemp("photo") / "astronaut.png"
    Image.fromarray(data.astronaut()).save(path)
    return path


def test_keypoint_json_is_scaled_rendered_and_generated(pipe, cfg, tmp_path: Path) -> None:
    people = a_person((128, 96))
    write_pose(tmp_path / "pose.json", people, size=(128, 96))
    pose = pose_from_path(tmp_path / "pose.json")
    assert pose.kind == "keypoints" and pose.canvas == (128, 96)

    cond = pose_condition(pose, SIZE)
    expected = people.copy()
    expected[..., 0] *= 64 / 128
    expected[..., 1] *= 64 / 96
    np.testing.assert_allclose(cond.people, expected)
    assert np.array_equal(np.asarray(cond.image), render_skeleton(expected, SIZE))
    assert cond.source_size == (128, 96)
    # the same pose given as a mapping or an array
    as_dict = json.loads((tmp_path / "pose.json").read_text())
    assert np.array_equal(np.asarray(pose_condition(as_dict, SIZE).image), np.asarray(cond.image))
    from_array = pose_condition(PoseInput.keypoints(people, canvas=(128, 96)), SIZE)
    assert np.array_equal(np.asarray(from_array.image), np.asarray(cond.image))

    images = generate(pipe, PROMPT, cond.image, [0, 1], cfg, SIZE, cond.source_size)
    assert [(im.size, im.mode) for im in images] == [((128, 96), "RGB")] * 2


def test_skeleton_image_is_used_as_is(pipe, cfg, tmp_path: Path) -> None:
    skeleton = Image.fromarray(render_skeleton(a_person(SIZE), SIZE))
    cond = pose_condition(skeleton, SIZE)
    assert np.array_equal(np.asarray(cond.image), np.asarray(skeleton)) and cond.people is None

    big = Image.fromarray(render_skeleton(a_person((128, 128)), (128, 128)))
    big.save(tmp_path / "skeleton.png")
    pose = pose_from_path(tmp_path / "skeleton.png")
    assert pose.kind == "skeleton"
    cond = pose_condition(pose, SIZE)
    assert cond.image.size == SIZE and cond.source_size == (128, 128)

    (image,) = generate(pipe, PROMPT, cond.image, [0], cfg, SIZE, output_sizes=[(100, 80)])
    assert image.size == (100, 80)


def test_photo_pose_is_estimated_and_rendered(pipe, cfg, estimator, photo_path: Path) -> None:
    pose = pose_from_path(photo_path)
    assert pose.kind == "photo"
    cond = pose_condition(pose, SIZE, estimator=estimator, min_score=0.3)

    (found,) = estimator.estimate_people([Image.open(photo_path).convert("RGB")])
    expected = detections_to_coco(found, 0.3)
    expected[..., :2] *= 64 / 512
    assert cond.people.shape == (1, 17, 3)
    np.testing.assert_allclose(cond.people, expected)
    assert np.array_equal(np.asarray(cond.image), render_skeleton(expected, SIZE))
    assert cond.source_size == (512, 512)

    (image,) = generate(pipe, PROMPT, cond.image, [0], cfg, SIZE, cond.source_size)
    assert image.size == (512, 512)  # back at the photo's size, as evaluation needs


def test_same_seed_same_image_other_seed_or_pose_differs(pipe, cfg) -> None:
    pose_a = pose_condition(a_person(SIZE), SIZE).image
    pose_b = pose_condition(a_person((32, 32)), SIZE).image  # smaller, in a corner
    first, again, other_seed = generate_arrays(pipe, PROMPT, pose_a, [3, 3, 4], cfg, SIZE)
    (other_pose,) = generate_arrays(pipe, PROMPT, pose_b, [3], cfg, SIZE)
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other_seed).max() > 0.05
    # The tiny random UNet's latents are mostly the starting noise, so a pose moves the image
    # only a little, yet far above float noise (1e-6); with conditioning scale 0 not at all.
    assert np.abs(first - other_pose).max() > 1e-4
    unconditioned = replace(cfg, conditioning_scale=0.0)
    a, b = generate_arrays(pipe, PROMPT, [pose_a, pose_b], [3, 3], unconditioned, SIZE)
    np.testing.assert_array_equal(a, b)


def test_an_image_does_not_depend_on_its_batch(pipe, cfg) -> None:
    prompts = [PROMPT, "a dancer", "a person in a red coat"]
    poses = [pose_condition(a_person((64 + 16 * i, 64)), SIZE).image for i in range(3)]
    batched = generate_arrays(pipe, prompts, poses, [7, 8, 9], cfg, SIZE)  # one call of 3
    alone = [
        generate_arrays(pipe, prompt, pose, [seed], cfg, SIZE)[0]
        for prompt, pose, seed in zip(prompts, poses, [7, 8, 9], strict=True)
    ]
    for b, a in zip(batched, alone, strict=True):
        np.testing.assert_allclose(b, a, atol=1e-4)


def test_pipeline_from_parts_matches_the_loaded_pipeline(parts, controlnet, pipe, cfg) -> None:
    pose = pose_condition(a_person(SIZE), SIZE).image
    from_parts = pipeline_from_parts(parts, controlnet, cfg)
    assert from_parts.scheduler is not parts.scheduler  # the training schedule is not stepped
    assert type(from_parts.scheduler) is type(pipe.scheduler)
    a = generate_arrays(from_parts, PROMPT, pose, [11, 12], cfg, SIZE)
    b = generate_arrays(pipe, PROMPT, pose, [11, 12], cfg, SIZE)
    np.testing.assert_allclose(np.stack(a), np.stack(b), atol=1e-5)


@pytest.mark.parametrize("how", ["parts", "load_pipeline"])
def test_the_training_controlnet_is_left_unchanged(how, tiny_sd, controlnet, cfg) -> None:
    """Validation with bf16 frozen parts and the fp32 training ControlNet (autocast bridges
    them): its dtype, weights, train mode and trainability are as before."""
    before = {k: v.clone() for k, v in controlnet.state_dict().items()}
    assert controlnet.training and controlnet.dtype == torch.float32
    bf16 = GenerateConfig(steps=2, batch_size=2, dtype="bfloat16")
    if how == "parts":
        pipe = pipeline_from_parts(load_sd_parts(tiny_sd, dtype=torch.bfloat16), controlnet, bf16)
    else:
        pipe = load_pipeline(tiny_sd, controlnet, bf16, "cpu")
    assert pipe.unet.dtype == torch.bfloat16 and pipe.controlnet is controlnet
    images = generate_arrays(
        pipe, PROMPT, pose_condition(a_person(SIZE), SIZE).image, [0], bf16, SIZE
    )
    assert np.isfinite(images[0]).all()
    assert controlnet.dtype == torch.float32 and controlnet.training
    assert all(p.requires_grad for p in controlnet.parameters())
    for name, tensor in controlnet.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_schedulers_switch_by_name(tiny_sd, controlnet_dir, pipe, cfg) -> None:
    names = typing.get_args(typing.get_type_hints(GenerateConfig)["scheduler"])
    assert set(names) == set(SCHEDULERS)  # every config value has a class
    for name, class_name in SCHEDULERS.items():
        scheduler = make_scheduler(name, pipe.scheduler.config)
        assert type(scheduler).__name__ == class_name
        assert scheduler.config.beta_schedule == "scaled_linear"  # the base model's schedule
    with pytest.raises(ValueError, match="unknown scheduler 'heun'.*unipc"):
        make_scheduler("heun", pipe.scheduler.config)

    euler_a = GenerateConfig(steps=STEPS, scheduler="euler_a")
    other = load_pipeline(tiny_sd, controlnet_dir, euler_a, "cpu")
    assert type(other.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    pose = pose_condition(a_person(SIZE), SIZE).image
    first, again = generate_arrays(other, PROMPT, pose, [5, 5], euler_a, SIZE)
    np.testing.assert_array_equal(first, again)  # the ancestral noise comes from the seed too
    (unipc,) = generate_arrays(pipe, PROMPT, pose, [5], cfg, SIZE)
    assert np.abs(first - unipc).max() > 1e-3


def test_pose_kind_is_guessed_and_can_be_overridden(photo_path: Path, tmp_path: Path) -> None:
    for style in ("controlnet10", "controlnet_aux"):
        for size in ((512, 512), (64, 64), (300, 200)):
            skeleton = Image.fromarray(render_skeleton(a_person(size), size, style))
            assert guess_image_kind(skeleton) == "skeleton", (style, size)
    skeleton.save(tmp_path / "skeleton.jpg", quality=75)  # JPEG noise around the limbs
    assert pose_from_path(tmp_path / "skeleton.jpg").kind == "skeleton"
    assert guess_image_kind(Image.new("RGB", (64, 64))) == "skeleton"  # nobody in it
    assert pose_from_path(photo_path).kind == "photo"
    write_pose(tmp_path / "pose.json", a_person())
    assert pose_from_path(tmp_path / "pose.json").kind == "keypoints"
    assert pose_from_path(tmp_path / "skeleton.jpg", kind="photo").kind == "photo"
    assert pose_from_path(photo_path, kind="skeleton").kind == "skeleton"


def test_errors_name_the_problem(pipe, cfg, estimator, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="pose file not found: .*missing.json"):
        pose_from_path(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(KeypointError, match="bad.json: not valid JSON"):
        pose_from_path(tmp_path / "bad.json")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.png: cannot read the image"):
        pose_from_path(tmp_path / "broken.png")
    with pytest.raises(ValueError, match="unknown pose kind 'video'"):
        pose_from_path(tmp_path / "bad.json", kind="video")
    Image.new("RGB", (128, 128), (120, 140, 160)).save(tmp_path / "wall.png")
    with pytest.raises(NoPersonFoundError, match="wall.png: no person found"):
        pose_condition(
            pose_from_path(tmp_path / "wall.png", kind="photo"), SIZE, estimator=estimator
        )
    pose = pose_condition(a_person(SIZE), SIZE).image
    with pytest.raises(ValueError, match="multiples of 8"):
        generate(pipe, PROMPT, pose, [0], cfg, size=(60, 64))
    with pytest.raises(ValueError, match="prompts: got 2, expected 1 or 3"):
        generate(pipe, ["a", "b"], pose, [0, 1, 2], cfg, SIZE)
    with pytest.raises(ModelNotFoundError, match="not a local folder"):
        load_pipeline("builtin:tiny-sd", "no/such-controlnet", cfg)


def test_nan_images_are_reported(tiny_sd, controlnet, cfg, caplog) -> None:
    broken = load_sd_parts(tiny_sd)
    with torch.no_grad():
        broken.vae.decoder.conv_out.bias.fill_(float("nan"))  # what an fp16 VAE overflow gives
    pipe = pipeline_from_parts(broken, controlnet, cfg)
    with caplog.at_level(logging.WARNING, logger="poseguide.generate"):
        (image,) = generate(
            pipe, PROMPT, pose_condition(a_person(SIZE), SIZE).image, [42], cfg, SIZE
        )
    assert f"prompt {PROMPT!r}, seed 42 is NaN" in caplog.text
    assert np.asarray(image).max() == 0


def test_run_generate_writes_pose_and_images(tiny_sd, controlnet_dir, tmp_path: Path) -> None:
    config = Config(
        run=RunConfig(device="cpu"),
        data=DataConfig(resolution=64),
        model=ModelConfig(base=tiny_sd),
        generate=GenerateConfig(steps=STEPS),
    )
    write_pose(tmp_path / "pose.json", a_person((128, 96)), size=(128, 96))
    out = tmp_path / "out"
    paths = run_generate(config, controlnet_dir, PROMPT, tmp_path / "pose.json", out, n=2, seed=5)
    assert paths == [out / "image_5.png", out / "image_6.png"]
    for name in ("pose.png", "pose.json", "generate.json"):
        assert (out / name).is_file(), name
    assert Image.open(out / "pose.png").size == (64, 64)
    record = json.loads((out / "generate.json").read_text())
    assert record["seeds"] == [5, 6] and record["generate"]["scheduler"] == "unipc"

    # image_6 alone is image_6 of the pair; output_size "source" is the keypoint file's canvas
    (alone,) = run_generate(
        config, controlnet_dir, PROMPT, tmp_path / "pose.json", tmp_path / "alone", seed=6
    )
    assert (
        np.abs(np.asarray(Image.open(alone), float) - np.asarray(Image.open(paths[1]), float)).max()
        <= 1
    )
    (big,) = run_generate(
        config,
        controlnet_dir,
        PROMPT,
        tmp_path / "pose.json",
        tmp_path / "big",
        output_size="source",
    )
    assert Image.open(big).size == (128, 96)


@pytest.mark.parametrize(
    ("pose_size", "args", "message"),
    [
        # The reproduction: a keypoint file declaring a 100000x100000 canvas ran out of memory.
        ((100_000, 100_000), ["--source-size"],
         "huge.json: canvas (--source-size) 100000x100000 = 10,000,000,000 pixels is over the "
         "limit of 16,777,216 (pose.render.max_canvas_pixels)"),
        ((128, 96), ["--output-size", "30000", "30000"],
         "output size 30000x30000 = 900,000,000 pixels is over the limit of 16,777,216"),
        # The configured limit is the one applied (a small one here: nothing big is allocated
        # even where the check is missing).
        ((128, 96), ["--size", "200", "200", "pose.render.max_canvas_pixels=10000"],
         "generation size 200x200 = 40,000 pixels is over the limit of 10,000"),
    ],
)  # fmt: skip
def test_sizes_over_the_canvas_limit_are_one_line_before_anything_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, pose_size, args, message
) -> None:
    import poseguide.generate as generation
    from poseguide.cli import main

    def never(*args, **kwargs):
        pytest.fail("the pipeline was loaded: the size is checked after allocating")

    monkeypatch.setattr(generation, "load_pipeline", never)
    write_pose(tmp_path / "huge.json", a_person((128, 96)), size=pose_size)
    out = tmp_path / "out"
    cli = ["generate", "--controlnet", "unused", "--prompt", PROMPT, "--out", str(out),
           "--pose", str(tmp_path / "huge.json"), "run.device=cpu", "data.resolution=64",
           *args]  # fmt: skip
    assert main(cli) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err, err
    assert not out.exists()


def test_a_skeleton_image_is_not_resized_past_the_canvas_limit() -> None:
    from poseguide.config.schema import RenderConfig
    from poseguide.errors import InputError

    skeleton = Image.new("RGB", (64, 64))
    with pytest.raises(InputError, match="generation size 200x200 = 40,000 pixels"):
        pose_condition(skeleton, (200, 200), RenderConfig(max_canvas_pixels=10_000))
    assert pose_condition(
        skeleton, (96, 96), RenderConfig(max_canvas_pixels=10_000)
    ).image.size == (
        96,
        96,
    )
