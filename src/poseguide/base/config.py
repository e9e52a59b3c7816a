"""The base's typed config: what ``poseguide base train NAME`` trains (``configs/base/NAME.yaml``).

One place for the defaults of the mini world's base: the synthetic training set, the VAE and the
UNet (their diffusers constructor arguments and training settings), the frozen text encoder.
The config's hash (:func:`config_hash`) names the cached pipeline folder, so a changed setting
builds a new base instead of reusing a stale one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from poseguide.config.checks import MAX_BATCH, MAX_COUNT, MAX_SIDE, _count
from poseguide.config.core import ConfigError, to_dict
from poseguide.config.core import load as _load
from poseguide.config.yaml_files import read_yaml

PRESET_DIR = Path(__file__).resolve().parents[3] / "configs" / "base"


def _positive(key: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{key}: must be {'>= 0' if allow_zero else '> 0'}, got {value}")


@dataclass
class BaseDataConfig:
    n: int = 2048  # synthetic training images
    seed: int = 0  # the synthetic set's seed (the mini preset's ControlNet train split)
    size: tuple[int, int] = (128, 128)  # (width, height) the people are drawn at
    resolution: int = 64  # square training size (downscaled from `size` with Lanczos)
    two_people: float = 0.0  # fraction of images with two people
    caption_dropout: float = 0.1  # captions replaced by "" (classifier-free guidance)

    def __post_init__(self) -> None:
        _count("data.n", self.n, MAX_COUNT)
        if not 16 <= self.resolution <= MAX_SIDE or self.resolution % 8:
            raise ConfigError(f"data.resolution: a multiple of 8 from 16 to {MAX_SIDE:,}; got "
                              f"{self.resolution}")  # fmt: skip
        if not 0.0 <= self.caption_dropout < 1.0:
            raise ConfigError(f"data.caption_dropout: in [0, 1), got {self.caption_dropout}")


@dataclass
class PhaseConfig:
    """How one part is trained: steps, batch, optimizer, schedule, checkpoints."""

    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 50  # linear warmup, then constant (the first steps do not depend on
    # `steps`, so a short run reproduces a long run's first logged steps)
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0

    def __post_init__(self) -> None:
        _positive("steps", self.steps)
        _count("batch_size", self.batch_size, MAX_BATCH)
        _positive("lr", self.lr)
        _positive("warmup_steps", self.warmup_steps, allow_zero=True)


def _vae_arch() -> dict[str, Any]:
    return {
        "block_out_channels": [16, 32, 64],  # 3 blocks: latents are 4x smaller than images
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 8,
    }


def _unet_arch() -> dict[str, Any]:
    return {
        "block_out_channels": [64, 96, 96],
        "layers_per_block": 1,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "attention_head_dim": 8,
        "norm_num_groups": 16,
    }


def _text_arch() -> dict[str, Any]:  # a tiny CLIP text tower, random and frozen
    return {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "max_position_embeddings": 77}  # fmt: skip


@dataclass
class VaeConfig(PhaseConfig):
    arch: dict[str, Any] = field(default_factory=_vae_arch)  # AutoencoderKL arguments
    kl_weight: float = 1e-6  # weight of the KL term against the L1 + L2 reconstruction


@dataclass
class UNetConfig(PhaseConfig):
    arch: dict[str, Any] = field(default_factory=_unet_arch)  # UNet2DConditionModel arguments
    ema_decay: float = 0.999  # EMA of the weights, exported in place of the raw ones
    ema_power: float = 0.75  # EMA warmup: decay = 1 - (1 + step) ** -power, capped at ema_decay


@dataclass
class BaseConfig:
    name: str = "mini"  # the run folder: output_dir/name
    output_dir: str = "runs/base"
    seed: int = 0
    data: BaseDataConfig = field(default_factory=BaseDataConfig)
    vae: VaeConfig = field(default_factory=lambda: VaeConfig(steps=900, lr=1e-3))
    unet: UNetConfig = field(default_factory=lambda: UNetConfig(steps=1100, lr=6e-4))
    text: dict[str, Any] = field(default_factory=_text_arch)  # CLIPTextConfig arguments
    checkpoint_every: int = 200  # steps between checkpoints (each phase also ends with one)
    keep_checkpoints: int = 2
    log_every: int = 10  # steps between log lines
    threads: int | None = None  # torch intra-op threads; null = torch's default

    def __post_init__(self) -> None:
        _positive("checkpoint_every", self.checkpoint_every)
        _positive("log_every", self.log_every)


def find_base_config(name_or_path: str | Path) -> Path:
    """A config file as given, or the preset ``configs/base/NAME.yaml``."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    preset = PRESET_DIR / f"{name_or_path}.yaml"
    if preset.is_file():
        return preset
    names = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
    raise ConfigError(f"base config not found: {name_or_path} (a path, or one of {names})")


def load_base_config(name_or_path: str | Path, overrides: tuple[str, ...] = ()) -> BaseConfig:
    return _load(BaseConfig, read_yaml(find_base_config(name_or_path)), overrides)


# Settings that change where or how fast a base is built, not what it learns.
NOT_HASHED = ("name", "output_dir", "checkpoint_every", "keep_checkpoints", "log_every", "threads")


def config_hash(config: BaseConfig) -> str:
    """A short digest of everything that decides the trained weights."""
    data = {k: v for k, v in to_dict(config).items() if k not in NOT_HASHED}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]
