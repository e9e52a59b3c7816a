"""``builtin:mini-sd``: the mini world's base, cached by its config hash, or the shipped copy.

Resolution order for the preset ``configs/base/mini.yaml`` (hash ``H``):

1. ``cache_root()/models/mini-sd-H/``: a base this machine built (``poseguide base train``
   writes there when asked for the built-in);
2. the copy shipped in the package (``poseguide/assets/mini-sd/``, fp16 weights, 9.5 MB, with
   its config, seed and training log) when its recorded hash is ``H``;
3. otherwise it is trained now (about 20 minutes on 2 CPU cores) into the cache, resumable.

:func:`ship` writes the shipped copy from a trained run (``poseguide base ship``).
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import torch

from poseguide.base.config import BaseConfig, config_hash, load_base_config
from poseguide.base.train import INFO_FILE, LOG_FILE, BaseTrainingError, train_base
from poseguide.config.core import dump_yaml, load
from poseguide.models.tiny import save_pipeline
from poseguide.paths import cache_root
from poseguide.utils.io import atomic_directory, writing

log = logging.getLogger(__name__)

MINI_SD = "builtin:mini-sd"
PRESET = "mini"
SHIPPED = Path(__file__).resolve().parents[1] / "assets" / "mini-sd"
SHIP_LIMIT_BYTES = 10 * 1024 * 1024  # what the repository may carry


def recorded_hash(folder: Path) -> str | None:
    """The config hash a pipeline folder was trained with (its ``poseguide-base.json``)."""
    info = Path(folder) / INFO_FILE
    return json.loads(info.read_text()).get("hash") if info.is_file() else None


def cached_folder(config: BaseConfig) -> Path:
    return cache_root() / "models" / f"mini-sd-{config_hash(config)}"


def mini_sd(progress: bool = True) -> Path:
    """The pipeline folder of ``builtin:mini-sd`` (see the module docstring)."""
    config = load_base_config(PRESET)
    folder, wanted = cached_folder(config), config_hash(config)
    if recorded_hash(folder) == wanted:
        return folder
    if recorded_hash(SHIPPED) == wanted:
        return SHIPPED
    log.warning("builtin:mini-sd: no built or shipped base for config hash %s; training it now "
                "(about 20 minutes on 2 CPU cores, resumable)", wanted)  # fmt: skip
    return build_into_cache(config, progress)


def build_into_cache(config: BaseConfig, progress: bool = True) -> Path:
    """Train ``config`` under the cache (resuming an interrupted build) and keep its pipeline."""
    target = cached_folder(config)
    runs = cache_root() / "base-runs"
    run = replace(config, output_dir=str(runs), name=f"{config.name}-{config_hash(config)}")
    pipeline = train_base(run, resume="latest", progress=progress)
    with writing(target), atomic_directory(target) as tmp:
        shutil.copytree(pipeline, tmp, dirs_exist_ok=True)
    return target


def ship(pipeline: Path, dest: Path = SHIPPED) -> Path:
    """Write ``pipeline`` (a trained base) to ``dest`` with fp16 weights, its config as YAML,
    its log and info; refuses when it would exceed :data:`SHIP_LIMIT_BYTES`."""
    from diffusers import StableDiffusionPipeline

    info = json.loads((Path(pipeline) / INFO_FILE).read_text())
    pipe = StableDiffusionPipeline.from_pretrained(str(pipeline), safety_checker=None)
    parts = {name: getattr(pipe, name) for name in ("vae", "unet", "text_encoder", "scheduler")}
    for name in ("vae", "unet", "text_encoder"):
        parts[name].to(torch.float16)
    with writing(dest), atomic_directory(dest) as tmp:
        save_pipeline(tmp, parts, pipe.tokenizer)
        for name in (INFO_FILE, LOG_FILE):
            shutil.copy2(Path(pipeline) / name, tmp / name)
        (tmp / "base-config.yaml").write_text(dump_yaml(load(BaseConfig, info["config"])))
        size = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
        if size > SHIP_LIMIT_BYTES:
            limit = SHIP_LIMIT_BYTES / 2**20
            raise BaseTrainingError(f"the fp16 base is {size / 2**20:.1f} MiB, over the "
                                    f"{limit:.0f} MiB the repository carries")  # fmt: skip
    return dest
