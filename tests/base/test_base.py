"""The mini world's base: training, resume, export, the built-in name and the shipped copy."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from poseguide.base.builtin import MINI_SD, PRESET, SHIP_LIMIT_BYTES, SHIPPED, recorded_hash
from poseguide.base.config import config_hash, load_base_config
from poseguide.base.parts import batch_rows
from poseguide.base.train import BaseTrainingError, read_log, train_base

SMALL = ("data.n=24", "data.resolution=32", "data.size=[64,64]", "vae.steps=4",
         "vae.batch_size=4", "unet.steps=4", "unet.batch_size=4", "checkpoint_every=2",
         "log_every=2")  # fmt: skip


def small(tmp_path: Path, *more: str):
    return load_base_config(PRESET, [f"output_dir={tmp_path}", *SMALL, *more])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("base")
    train_base(small(root), progress=False)
    return root / "mini"


def test_rows_are_seeded_permutations_per_epoch() -> None:
    def rows(seed: int) -> list[int]:  # 5 steps of 4: 20 rows, two epochs of 10
        return [r for s in range(5) for r in batch_rows(seed, "vae", s, 10, 4).tolist()]

    flat = rows(0)
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert flat == rows(0) and flat != rows(1)


def test_pipeline_loads_in_diffusers_and_generates(trained: Path) -> None:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(trained / "pipeline"), safety_checker=None)
    info = json.loads((trained / "pipeline" / "poseguide-base.json").read_text())
    assert pipe.vae.config.scaling_factor == pytest.approx(info["scaling_factor"])
    assert pipe.vae_scale_factor == 4  # three VAE blocks: latents 4x smaller
    image = pipe("a person", num_inference_steps=2, height=32, width=32, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images  # fmt: skip
    assert image.shape == (1, 32, 32, 3) and np.isfinite(image).all()
    rows = read_log(trained / "log.jsonl")
    assert [(r["phase"], r["step"]) for r in rows] == [
        ("vae", 1), ("vae", 2), ("vae", 3), ("vae", 4),
        ("unet", 1), ("unet", 2), ("unet", 3), ("unet", 4),
    ]  # fmt: skip
    assert read_log(trained / "pipeline" / "log.jsonl") == rows


def test_exported_unet_is_the_ema(trained: Path) -> None:
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    exported = UNet2DConditionModel.from_pretrained(str(trained / "pipeline"), subfolder="unet")
    raw = load_file(str(trained / "checkpoints" / "step-2-unet-000004" / "model.safetensors"))
    ema = torch.load(trained / "checkpoints" / "step-2-unet-000004" / "ema.pt", weights_only=True)
    params = dict(exported.named_parameters())
    name = next(iter(params))
    assert not torch.equal(params[name], raw[name])  # EMA weights, not the raw ones
    assert torch.equal(params[name], ema["shadow_params"][0])


def test_resume_continues_bit_for_bit(trained: Path, tmp_path: Path) -> None:
    copy = tmp_path / "mini"
    shutil.copytree(trained, copy)
    ckpt = copy / "checkpoints"
    shutil.rmtree(ckpt / "step-2-unet-000004")
    (ckpt / "latest").write_text("step-2-unet-000002\n")
    for leftover in (copy / "parts" / "unet", copy / "pipeline"):
        shutil.rmtree(leftover)
    train_base(small(tmp_path), resume="latest", progress=False)
    for part in ("unet", "vae"):
        a = (trained / "pipeline" / part / "diffusion_pytorch_model.safetensors").read_bytes()
        b = (copy / "pipeline" / part / "diffusion_pytorch_model.safetensors").read_bytes()
        assert a == b, part
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in read_log(copy / "log.jsonl")]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"}
                     for r in read_log(trained / "log.jsonl")]  # fmt: skip


def test_existing_run_needs_resume_and_the_same_config(trained: Path, tmp_path: Path) -> None:
    copy = tmp_path / "mini"
    shutil.copytree(trained, copy)
    shutil.rmtree(copy / "pipeline")
    with pytest.raises(BaseTrainingError, match="--resume latest"):
        train_base(small(tmp_path), progress=False)
    with pytest.raises(BaseTrainingError, match="another base config"):
        train_base(small(tmp_path, "unet.lr=1e-4"), resume="latest", progress=False)


def test_hash_ignores_bookkeeping_only(tmp_path: Path) -> None:
    base = small(tmp_path)
    assert config_hash(base) == config_hash(small(tmp_path / "x", "name=other", "log_every=5"))
    assert config_hash(base) != config_hash(small(tmp_path, "unet.steps=5"))
    assert config_hash(base) != config_hash(small(tmp_path, "data.seed=3"))


# --------------------------------------------------------------------------- shipped copy


def test_shipped_base_is_what_its_config_and_log_say() -> None:
    config = load_base_config(PRESET)
    assert recorded_hash(SHIPPED) == config_hash(config), (
        "configs/base/mini.yaml changed since the shipped base was trained: retrain it with "
        "`poseguide base train mini` and ship it (README: the mini world)"
    )
    recorded = load_base_config(SHIPPED / "base-config.yaml")
    assert config_hash(recorded) == config_hash(config)
    size = sum(p.stat().st_size for p in SHIPPED.rglob("*") if p.is_file())
    assert size <= SHIP_LIMIT_BYTES
    rows = read_log(SHIPPED / "log.jsonl")
    last = {phase: max(r["step"] for r in rows if r["phase"] == phase) for phase in ("vae", "unet")}
    assert last == {"vae": config.vae.steps, "unet": config.unet.steps}


def test_builtin_name_loads_the_shipped_base_in_fp32() -> None:
    from poseguide.models.hub import resolve_pretrained
    from poseguide.models.sd import load_sd_parts, vae_scale_factor

    assert Path(resolve_pretrained(MINI_SD)) == SHIPPED  # nothing built: the cache is empty
    parts = load_sd_parts(MINI_SD)
    assert parts.unet.dtype == torch.float32 and parts.vae.dtype == torch.float32
    assert vae_scale_factor(parts.vae) == 4
    info = json.loads((SHIPPED / "poseguide-base.json").read_text())
    assert parts.vae.config.scaling_factor == pytest.approx(info["scaling_factor"])


def test_the_command_reproduces_the_shipped_first_steps(tmp_path: Path) -> None:
    """The base command, run again with the shipped config, logs the same first VAE losses; the
    UNet's first losses, from the shipped (fp16-rounded) VAE, agree to fp16's precision."""
    from diffusers import AutoencoderKL

    shipped = read_log(SHIPPED / "log.jsonl")
    first = {phase: [r for r in shipped if r["phase"] == phase][:3] for phase in ("vae", "unet")}
    train_base(load_base_config(PRESET, [f"output_dir={tmp_path}", "vae.steps=3",
                                         "unet.steps=1"]), progress=False)  # fmt: skip
    again = read_log(tmp_path / "mini" / "log.jsonl")
    vae = [r["loss"] for r in again if r["phase"] == "vae"]
    np.testing.assert_allclose(vae, [r["loss"] for r in first["vae"]], rtol=1e-3)
    run = tmp_path / "unet-only"
    AutoencoderKL.from_pretrained(str(SHIPPED), subfolder="vae", torch_dtype=torch.float32
                                  ).save_pretrained(run / "mini" / "parts" / "vae")  # fmt: skip
    train_base(load_base_config(PRESET, [f"output_dir={run}", "unet.steps=3"]), progress=False)
    unet = [r["loss"] for r in read_log(run / "mini" / "log.jsonl") if r["phase"] == "unet"]
    np.testing.assert_allclose(unet, [r["loss"] for r in first["unet"]], rtol=3e-2)


def test_the_cli_trains_resumes_and_ships(tmp_path: Path, capsys) -> None:
    from poseguide.cli import main

    args = ["base", "train", "mini", f"output_dir={tmp_path}", *SMALL]
    assert main(args) == 0
    assert "base mini:" in capsys.readouterr().out
    assert main([*args, "--resume", "latest"]) == 0  # built: nothing to train again
    dest = tmp_path / "shipped"
    assert main(["base", "ship", str(tmp_path / "mini" / "pipeline"), "--dest", str(dest)]) == 0
    assert "fp16" in capsys.readouterr().out
    from safetensors import safe_open

    with safe_open(str(dest / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}  # noqa: SIM118
    assert recorded_hash(dest) == config_hash(small(tmp_path))
    assert config_hash(load_base_config(dest / "base-config.yaml")) == config_hash(small(tmp_path))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.resolution=100000000", "data.resolution: a multiple of 8 from 16 to 4,096"),
        ("vae.batch_size=100000000000", "vae.batch_size: must be between 1 and 4,096"),
        ("data.n=1000000000", "data.n: must be between 1 and 1,000,000"),
    ],
)
def test_base_sizes_have_upper_bounds(override: str, message: str) -> None:
    from poseguide.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_base_config(PRESET, [override])
