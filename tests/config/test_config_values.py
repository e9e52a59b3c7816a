"""Every config value is checked at load time: ranges, finiteness, seeds, names, references.

Each refusal is one ConfigError naming the key (list items by index) and the offending value;
tests/test_config.py covers the engine (types, files, includes, overrides).
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import pytest

from poseguide.config import ConfigError, load_config
from poseguide.config.schema import (
    MAX_SEED,
    NOT_STAGE_INITS,
    PREVIOUS_INIT,
    STAGE_REF_PREFIX,
    UNSUPPORTED_SCHEDULERS,
    UNTRAINED_INIT,
    OptimConfig,
    StageConfig,
    lr_scheduler_names,
)


def _refused(overrides: list[str], *fragments: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config("tiny", overrides)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        # A negative clipping norm reverses the gradient; zero zeroes it.
        ("train.optim.max_grad_norm=-1", ("train.optim.max_grad_norm:", "> 0", "got -1.0")),
        ("train.optim.max_grad_norm=0", ("train.optim.max_grad_norm:", "got 0.0")),
        ("train.optim.max_grad_norm=.nan", ("train.optim.max_grad_norm:", "finite", "got nan")),
        ("train.optim.beta1=5", ("train.optim.beta1:", "[0, 1)", "got 5.0")),
        ("train.optim.beta1=1", ("train.optim.beta1:", "[0, 1)", "got 1.0")),
        ("train.optim.beta1=-0.1", ("train.optim.beta1:", "got -0.1")),
        ("train.optim.beta2=1.0", ("train.optim.beta2:", "[0, 1)", "got 1.0")),
        ("train.optim.eps=-1", ("train.optim.eps:", "> 0", "got -1.0")),
        ("train.optim.eps=0", ("train.optim.eps:", "got 0.0")),
        ("train.optim.weight_decay=-0.01", ("train.optim.weight_decay:", ">= 0", "got -0.01")),
        ("train.stages.stage1.lr=.nan", ("train.stages.0.lr:", "finite", "got nan")),
        ("train.stages.stage2.lr=.inf", ("train.stages.1.lr:", "finite", "got inf")),
        ("train.stages.stage1.lr=-.inf", ("train.stages.0.lr:", "finite", "got -inf")),
        ("train.stages.stage1.lr=nan", ("train.stages.0.lr:", "finite", "got 'nan'")),
        ("train.stages.stage1.lr=1e400", ("train.stages.0.lr:", "finite", "got '1e400'")),
        ("train.stages.stage1.lr=0", ("train.stages.0.lr:", "> 0", "got 0.0")),
        ("train.stages.stage1.lr=-1e-5", ("train.stages.0.lr:", "got -1e-05")),
        ("train.stages.stage1.warmup_steps=-1", ("train.stages.0.warmup_steps:", "got -1")),
        ("train.validation.every=-1", ("train.validation.every:", ">= 0", "got -1")),
        ("train.validation.num_samples=-2", ("train.validation.num_samples:", "got -2")),
        ("generate.conditioning_scale=.inf", ("generate.conditioning_scale:", "got inf")),
        ("pose.estimator.heatmap_sigma=.nan", ("pose.estimator.heatmap_sigma:", "got nan")),
        ("evaluate.confidence=.nan", ("evaluate.confidence:", "got nan")),
    ],
)
def test_ranges_and_finiteness(override: str, fragments: tuple[str, ...]) -> None:
    _refused([override], *fragments)


@pytest.mark.parametrize(
    "override",
    [
        "train.optim.max_grad_norm=null",
        "train.optim.max_grad_norm=0.5",
        "train.optim.beta1=0",
        "train.optim.beta2=0.9999",
        "train.optim.weight_decay=0",
        "train.stages.stage1.lr=5e-7",
        "data.hflip=1",
        "data.caption_dropout=0",
        "train.validation.num_samples=0",
    ],
)
def test_values_at_the_edges_are_accepted(override: str) -> None:
    load_config("tiny", [override])


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("data.hflip", "1.5"),
        ("data.caption_dropout", "-0.1"),
        ("data.train.synthetic.two_people", "2"),
        ("pose.render.min_score", "1.01"),
        ("pose.estimator.conf", "-0.5"),
        ("train.stages.1.loss.threshold", "7"),
        ("evaluate.min_oks", "1.5"),
    ],
)
def test_probabilities_are_in_the_unit_interval(key: str, value: str) -> None:
    _refused([f"{key}={value}"], f"{key}:", "[0, 1]", f"got {float(value)!r}")


SEEDS = [
    "run.seed",
    "evaluate.seed",
    "train.validation.seed",
    "data.train.synthetic.seed",
    "data.eval.synthetic.seed",
]


@pytest.mark.parametrize("key", SEEDS)
@pytest.mark.parametrize("seed", [-1, MAX_SEED + 1])
def test_seeds_outside_numpys_range_are_refused(key: str, seed: int) -> None:
    _refused([f"{key}={seed}"], f"{key}:", f"0..{2**32 - 1}", f"got {seed}")


@pytest.mark.parametrize("key", SEEDS)
def test_seeds_at_the_ends_of_the_range_are_accepted(key: str) -> None:
    import numpy as np
    import torch

    for seed in (0, 2**32 - 1):
        load_config("tiny", [f"{key}={seed}"])
        np.random.seed(seed)  # what the range is for: every seeding call takes it
        torch.Generator().manual_seed(seed)
    with pytest.raises(ValueError):
        np.random.seed(2**32)


def test_lr_scheduler_names_come_from_diffusers() -> None:
    from diffusers.optimization import SchedulerType

    from poseguide.config.checks import _enum_values_in_source

    names = tuple(s.value for s in SchedulerType)
    assert lr_scheduler_names() == names
    # What a config load reads when diffusers is not imported yet (importing it takes seconds).
    assert _enum_values_in_source("diffusers", "optimization.py", "SchedulerType") == names


def test_loading_a_config_imports_neither_torch_nor_diffusers() -> None:
    code = (
        "import sys; from poseguide.config import load_config; "
        "load_config('tiny', ['train.stages.stage1.lr_scheduler=cosine']); "
        "print(sorted(m for m in ('torch', 'diffusers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "name", [n for n in lr_scheduler_names() if n not in UNSUPPORTED_SCHEDULERS]
)
def test_every_supported_diffusers_scheduler_is_accepted_and_builds(name: str) -> None:
    import torch
    from diffusers.optimization import get_scheduler

    warmup = 0 if name == "constant" else 2
    overrides = [
        f"train.stages.stage1.lr_scheduler={name}",
        f"train.stages.0.warmup_steps={warmup}",
    ]
    stage = load_config("tiny", overrides).train.stages[0]
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=stage.lr)
    # What poseguide.train.setup.make_lr_scheduler passes: no name may fail here at train time.
    get_scheduler(stage.lr_scheduler, optimizer, num_warmup_steps=stage.warmup_steps,
                  num_training_steps=10)  # fmt: skip


def test_unknown_or_unusable_lr_scheduler_is_refused() -> None:
    message = _refused(["train.stages.stage2.lr_scheduler=bogus"], "train.stages.1.lr_scheduler:")
    assert "got 'bogus'" in message and "cosine_with_restarts" in message
    _refused(
        ["train.stages.stage1.lr_scheduler=piecewise_constant"],
        "train.stages.0.lr_scheduler:",
        "'piecewise_constant'",
        "step_rules",
    )
    _refused(
        ["train.stages.stage1.warmup_steps=10"],
        "train.stages.0.warmup_steps:",
        "'constant' has no warmup",
    )
    config = load_config(
        "tiny",
        ["train.stages.stage1.lr_scheduler=constant_with_warmup", "train.stages.0.warmup_steps=10"],
    )
    assert config.train.stages[0].warmup_steps == 10


def test_the_first_stage_cannot_start_from_a_previous_one() -> None:
    _refused(["train.stages.stage1.init=previous"], "train.stages.0.init:", "'stage1'", "previous")
    _refused(["train.stages.stage1.init=' previous '"], "train.stages.0.init:")
    config = load_config("tiny", ["train.stages.stage2.init=previous"])
    assert config.train.stages[1].init == "previous"
    # `train --stage stage2` checks a config of the selected stages only: that must still build.
    thesis = load_config("thesis")
    assert thesis.train.stages[1].init == "previous"
    subset = replace(thesis.train, stages=[thesis.train.stages[1]])
    assert subset.stages[0].name == "stage2"


@pytest.mark.parametrize("init", ["originals", "", "  ", "stage:"])
def test_stage_init_refuses_what_cannot_start_a_stage(init: str) -> None:
    _refused([f"train.stages.stage2.init='{init}'"], "train.stages.1.init:", repr(init))


def test_stage_init_may_name_an_earlier_stage_only() -> None:
    config = load_config("mini")
    assert [s.init for s in config.train.stages[1:]] == ["stage:stage1"] * 3
    assert load_config("tiny", ["train.stages.stage2.init=stage:stage1"]).train.stages[1].init
    _refused(["train.stages.stage2.init=stage:stage2"], "train.stages.1.init:",
             "not an earlier stage", "['stage1']")  # fmt: skip
    _refused(["train.stages.stage1.init=stage:stage2"], "train.stages.0.init:", "none")
    _refused(["train.stages.stage2.init=stage:nope"], "'stage:nope'")


@pytest.mark.parametrize(
    "init", ["unet", "previous", "lllyasviel/sd-controlnet-openpose", "/runs/a/exports/stage1"]
)
def test_stage_init_vocabulary_matches_the_controlnet_references(init: str) -> None:
    from poseguide.models.controlnet import ControlNetRef

    assert ControlNetRef.parse(init).kind in ("untrained", "previous", "pretrained")
    load_config("tiny", [f"train.stages.stage2.init={init}"])


def test_stage_init_words_are_the_controlnet_reference_words() -> None:
    from poseguide.models import controlnet

    assert (UNTRAINED_INIT, PREVIOUS_INIT) == (controlnet.UNTRAINED, controlnet.PREVIOUS)
    assert (NOT_STAGE_INITS, STAGE_REF_PREFIX) == ((controlnet.ORIGINALS,), controlnet.STAGE_PREFIX)
    refused = [controlnet.ControlNetRef.parse(w).kind for w in (*NOT_STAGE_INITS, "stage:x")]
    assert refused == ["originals", "stage"]


@pytest.mark.parametrize("name", ["../..", "..", ".", "", " ", "a/b", "a\\b", "/abs", ".hidden"])
def test_run_name_cannot_leave_the_output_folder(name: str) -> None:
    _refused([f"run.name='{name}'"], "run.name:", repr(name), "plain folder name")


@pytest.mark.parametrize(
    "key", ["train.stages.stage1.name", "evaluate.models.baseline.name"], ids=["stage", "model"]
)
def test_other_folder_names_are_plain(key: str) -> None:
    index = "train.stages.0" if "stages" in key else "evaluate.models.0"
    _refused([f"{key}=../x"], f"{index}.name:", "'../x'", "plain folder name")


def test_stage_and_model_names_are_unique() -> None:
    _refused(["train.stages.stage2.name=stage1"], "train.stages:", "unique", "'stage1'")
    _refused(["evaluate.models.stage1.name=baseline"], "evaluate.models:", "unique")


@pytest.mark.parametrize("ref", ["", "stage:"])
def test_an_evaluated_model_names_a_model(ref: str) -> None:
    _refused([f"evaluate.models.stage1.controlnet='{ref}'"], "evaluate.models.1.controlnet:")


def test_run_name_accepts_a_plain_name() -> None:
    assert load_config("tiny", ["run.name=my-run_1 (b)"]).run.name == "my-run_1 (b)"


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("data.resolution=128.7", ("data.resolution: expected int, got 128.7",)),
        ("data.resolution=128.0", ("data.resolution: expected int, got 128.0",)),
        ("run.seed=true", ("run.seed: expected int, got True",)),
        ("train.batch_size=2.0", ("train.batch_size: expected int, got 2.0",)),
        ("data.train.synthetic.size=[true, 64]", ("data.train.synthetic.size.0:", "got True")),
        ("data.train.synthetic.size=[64, 64.5]", ("data.train.synthetic.size.1:", "got 64.5")),
        ("train.stages.stage1.lr=true", ("train.stages.0.lr: expected float, got True",)),
    ],
)
def test_integers_are_integers(override: str, fragments: tuple[str, ...]) -> None:
    _refused([override], *fragments)


def test_direct_construction_refuses_non_finite_and_out_of_range_values() -> None:
    with pytest.raises(ConfigError, match="lr: must be a finite number > 0, got nan"):
        StageConfig(lr=float("nan"))
    with pytest.raises(ConfigError, match="max_grad_norm: must be > 0, got -1.0"):
        OptimConfig(max_grad_norm=-1.0)
    with pytest.raises(ConfigError, match="eps: must be a finite number > 0, got inf"):
        OptimConfig(eps=float("inf"))


@pytest.mark.parametrize("decay", ["0", "1", "1.5", "-0.1"])
def test_ema_decay_is_a_fraction_or_null(decay: str) -> None:
    _refused([f"train.stages.stage1.ema_decay={decay}"], "ema_decay", "(0, 1)")
    assert load_config("tiny", ["train.stages.stage1.ema_decay=0.99"]).train.stages[0].ema_decay


# Sizes and counts have upper bounds: these validated before and allocated (or tried to) at the
# first batch: data.resolution=100000000, batch_size=10**23.
@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("data.resolution=100000000", ("data.resolution:", "up to 4,096", "got 100000000")),
        ("data.resolution=4104", ("data.resolution:", "up to 4,096", "got 4104")),
        ("train.batch_size=100000000000000000000000",
         ("train.batch_size: must be between 1 and 4,096, got 100000000000000000000000",)),
        ("train.batch_size=1e23", ("train.batch_size: expected int, got '1e23'",)),
        ("train.batch_size=1.0e+23", ("train.batch_size: expected int, got 1e+23",)),
        ("train.grad_accum=5000", ("train.grad_accum: must be between 1 and 4,096",)),
        ("generate.batch_size=5000", ("generate.batch_size: must be between 1 and 4,096",)),
        ("generate.steps=100000", ("generate.steps: must be between 1 and 1,000",)),
        ("data.cache.batch_size=5000", ("data.cache.batch_size: must be between 1 and 4,096",)),
        ("data.cache.shard_size=5000", ("data.cache.shard_size: must be between 1 and 4,096",)),
        ("data.num_workers=1000", ("data.num_workers: must be between 0 and 256",)),
        ("data.max_image_pixels=2000000000", ("data.max_image_pixels:", "1,073,741,824")),
        ("pose.render.max_canvas_pixels=2000000000", ("pose.render.max_canvas_pixels:",
                                                      "between 1 and 1,073,741,824")),
        ("pose.estimator.imgsz=100000", ("pose.estimator.imgsz:", "up to 4,096")),
        ("pose.estimator.max_det=10000000", ("pose.estimator.max_det:", "1,000,000")),
        ("data.train.synthetic.n=1000000000", ("data.train.synthetic.n:", "1,000,000")),
        ("data.train.synthetic.size=[64,100000]", ("data.train.synthetic.size:", "4096x4096")),
        ("train.validation.num_samples=100000", ("train.validation.num_samples:", "0 and 4,096")),
        ("train.stages.stage2.loss.reward_resolution=100000",
         ("train.stages.1.loss.reward_resolution: must be between 1 and 4,096",)),
        ("evaluate.bootstrap=1000000000", ("evaluate.bootstrap: must be between 0 and 1,000,000",)),
    ],
)  # fmt: skip
def test_sizes_and_counts_have_upper_bounds(override: str, fragments: tuple[str, ...]) -> None:
    _refused([override], *fragments)


@pytest.mark.parametrize(
    "override",
    ["data.resolution=4096", "train.batch_size=4096", "generate.steps=1000",
     "data.num_workers=256", "evaluate.bootstrap=0", "pose.estimator.imgsz=4096"],
)  # fmt: skip
def test_sizes_and_counts_at_their_bounds_are_accepted(override: str) -> None:
    load_config("tiny", [override])


def test_a_float_for_an_int_key_is_refused_in_a_file(tmp_path) -> None:
    for value in ("1e23", "1.0e+23", "4.0"):
        path = tmp_path / "c.yaml"
        path.write_text(f"train:\n  batch_size: {value}\n")
        with pytest.raises(ConfigError, match=r"c.yaml: train.batch_size: expected int, got "):
            load_config(path)
