"""Build what a run needs: the accelerator, the frozen models, the data, optimizers, ControlNets."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from poseguide.config import Config
from poseguide.config.schema import OptimConfig, StageConfig
from poseguide.data.dataset import PoseDataset, ShardedSampler, collate
from poseguide.errors import TrainingError
from poseguide.models import (
    ControlNetRef,
    SDParts,
    build_controlnet,
    load_sd_parts,
    untrained_controlnet,
)
from poseguide.objectives import loss_needs
from poseguide.train.step import Trainer
from poseguide.utils.device import MIXED_PRECISION_DTYPES, wants_cpu

log = logging.getLogger(__name__)


def deepspeed_requested() -> bool:
    """``accelerate launch`` was given a DeepSpeed config (it sets ACCELERATE_USE_DEEPSPEED)."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def make_accelerator(config: Config) -> Any:
    """An accelerate Accelerator: one device, several GPUs or nodes, from `accelerate launch`.

    The process group gets ``train.process_timeout_s`` as its collective time-out (torch's
    default, 10 minutes, is shorter than a first cache build). DeepSpeed on a machine without
    CUDA runs on the CPU with gloo (accelerate's ``cpu=True`` would silently drop DeepSpeed).
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, InitProcessGroupKwargs

    deepspeed = deepspeed_requested()
    cpu = wants_cpu(config.run.device) and not deepspeed
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if launched != "no" and launched != config.train.mixed_precision:
        log.warning("accelerate launch's mixed_precision=%s is not used: poseguide trains with "
                    "train.mixed_precision=%s (set it in the config)", launched,
                    config.train.mixed_precision)  # fmt: skip
    group = {"timeout": timedelta(seconds=config.train.process_timeout_s)}
    if deepspeed and not torch.cuda.is_available():
        group["backend"] = "gloo"
    try:
        acc = Accelerator(mixed_precision=config.train.mixed_precision, cpu=cpu,
                          kwargs_handlers=[InitProcessGroupKwargs(**group)])  # fmt: skip
    except (ValueError, RuntimeError) as err:
        raise TrainingError(
            f"train.mixed_precision={config.train.mixed_precision!r} is not available here: {err}"
        ) from None
    if acc.distributed_type == DistributedType.DEEPSPEED:
        _configure_deepspeed(acc, config)
    return acc


def _configure_deepspeed(acc: Any, config: Config) -> None:
    """Values accelerate cannot infer without a DataLoader in ``prepare`` (poseguide prepares a
    model and an optimizer per stage): the micro-batch size; gradient accumulation stays in
    poseguide's config (it must be 1: DeepSpeed steps inside ``backward``). What was never run
    under DeepSpeed is refused (bench/gpu_smoke.sh does not measure it)."""
    if config.train.compile:
        raise TrainingError("train.compile=true is untested under DeepSpeed: set train.compile="
                            "false, or train without the DeepSpeed config")  # fmt: skip
    if config.train.optim.optimizer == "adamw8bit":
        raise TrainingError("train.optim.optimizer=adamw8bit is untested under DeepSpeed ZeRO "
                            "(ZeRO partitions the optimizer state itself): use adamw")  # fmt: skip
    if config.train.grad_accum != 1:
        raise TrainingError(
            "under DeepSpeed set gradient accumulation in the DeepSpeed config "
            "(gradient_accumulation_steps) and keep train.grad_accum=1"
        )
    ds = acc.state.deepspeed_plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = config.train.batch_size
    if ds.get("gradient_accumulation_steps") in (None, "auto"):
        ds["gradient_accumulation_steps"] = 1
    # DeepSpeed clips inside its step (accelerate's clip_grad_norm_ does nothing there): the
    # value comes from poseguide's config, as without DeepSpeed, whatever the YAML says.
    clip = config.train.optim.max_grad_norm or 0.0
    given = ds.get("gradient_clipping", "auto")
    if given not in ("auto", None) and float(given) != clip:
        log.warning(
            "the DeepSpeed config's gradient_clipping=%s is replaced by "
            "train.optim.max_grad_norm=%s",
            given,
            clip or None,
        )
    ds["gradient_clipping"] = clip


def check_shared(acc: Any, *folders: Path) -> None:
    """Every process must see the main process's files in ``folders`` (run folder, cache):
    several nodes need them on a shared filesystem. The main process writes a token, every
    process reads it; all raise together (a lone failure would leave the others in a barrier)."""
    if acc.num_processes == 1:
        return
    import uuid

    from accelerate.utils import broadcast_object_list, gather_object

    token = [uuid.uuid4().hex if acc.is_main_process else None]
    broadcast_object_list(token)
    name = f".shared-check-{token[0]}"
    if acc.is_main_process:
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(token[0])
    acc.wait_for_everyone()
    unseen = [str(f) for f in folders if not (f / name).is_file()
              or (f / name).read_text() != token[0]]  # fmt: skip
    missing = [(i, u) for i, u in enumerate(gather_object([unseen])) if u]
    acc.wait_for_everyone()
    if acc.is_main_process:
        for folder in folders:
            (folder / name).unlink(missing_ok=True)
    if missing:
        rank, where = missing[0]
        raise TrainingError(
            f"process {rank} does not see the main process's files in {', '.join(where)}: "
            "put the run folder (run.output_dir) and data.cache.dir on a filesystem every node "
            "mounts at the same path (a shared filesystem)"
        )


@dataclass
class Frozen:
    """The frozen SD parts on the training device, and facts derived from the config."""

    parts: SDParts
    weight_dtype: torch.dtype
    device: torch.device
    text_encoder_offloaded: bool = False  # on the CPU: every step's text comes from the cache

    def offload_text_encoder(self) -> None:
        """Move the text encoder off the training device (validation brings it back for its
        prompts and moves it away again)."""
        self.parts.text_encoder.to("cpu")
        self.text_encoder_offloaded = True


def load_frozen(config: Config, device: torch.device) -> Frozen:
    """Load VAE, UNet and text encoder frozen, in the mixed-precision dtype, on ``device``."""
    dtype = MIXED_PRECISION_DTYPES[config.train.mixed_precision]
    m = config.model
    parts = load_sd_parts(m.base, m.revision, m.variant, dtype=dtype, device=device)
    if config.train.gradient_checkpointing:
        parts.unet.enable_gradient_checkpointing()  # gradients flow through the frozen UNet
        if any(loss_needs(s.loss).reward for s in config.train.stages):
            parts.vae.enable_gradient_checkpointing()  # and through the reward's decode
    if config.train.channels_last:
        parts.unet.to(memory_format=torch.channels_last)
    if config.train.compile:  # the training step's copy; validation builds its pipeline from it
        parts.unet = torch.compile(parts.unet)
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest kernels once
        if config.train.tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
    return Frozen(parts, dtype, device)


def make_trainer(config: Config) -> Any:
    """The accelerator and the frozen SD parts on its device: what one training step needs
    (:class:`poseguide.train.step.Trainer`)."""

    accelerator = make_accelerator(config)
    return Trainer(config, accelerator, load_frozen(config, accelerator.device))


def controlnet_for_stage(
    frozen: Frozen, stage: StageConfig, init: str, previous: Path | None, seed: int
) -> Any:
    """The trainable fp32 ControlNet a stage starts from (a reference, see
    :mod:`poseguide.models.controlnet`): ``unet`` (the untrained copy of the UNet's encoder,
    its conditioning embedding seeded with ``seed``), ``previous`` or a folder/hub id."""
    ref = ControlNetRef.parse(init)
    if ref.kind == "untrained":
        return untrained_controlnet(frozen.parts, seed).to(frozen.device)
    if ref.kind == "previous":
        if previous is None or not (previous / "config.json").is_file():
            raise TrainingError(
                f"stage {stage.name!r} starts from the previous stage's export, which is missing "
                f"({previous}). Run the previous stage first, or set "
                f"train.stages.{stage.name}.init to a ControlNet folder or hub id."
            )
        return build_controlnet(frozen.parts.unet, str(previous)).to(frozen.device)
    if ref.kind != "pretrained":
        raise TrainingError(f"train.stages.{stage.name}.init: {init!r} cannot start a stage")
    return build_controlnet(frozen.parts.unet, ref.name).to(frozen.device)


def make_optimizer(params: list[torch.nn.Parameter], optim: OptimConfig, lr: float) -> Any:
    kwargs = {"lr": lr, "betas": (optim.beta1, optim.beta2), "weight_decay": optim.weight_decay,
              "eps": optim.eps}  # fmt: skip
    if optim.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise TrainingError(
                "train.optim.optimizer=adamw8bit needs bitsandbytes: `pip install bitsandbytes` "
                "(CUDA only), or use train.optim.optimizer=adamw"
            ) from None
        return bnb.optim.AdamW8bit(params, **kwargs)
    # The fused kernel: one pass over all parameters (about 6x faster than the default on CPU).
    return torch.optim.AdamW(params, **kwargs, fused=True)


def make_lr_scheduler(optimizer: Any, stage: StageConfig, total_steps: int) -> Any:
    from diffusers.optimization import get_scheduler

    try:
        return get_scheduler(stage.lr_scheduler, optimizer, num_warmup_steps=stage.warmup_steps,
                             num_training_steps=total_steps)  # fmt: skip
    except ValueError as err:
        raise TrainingError(f"train.stages.{stage.name}.lr_scheduler: {err}") from None


def make_loader(
    config: Config,
    source: Any,
    rows: list[int],
    cache: Any,
    rank: int,
    world: int,
    stage: StageConfig | None = None,
) -> tuple[PoseDataset, ShardedSampler, DataLoader]:
    """Dataset, sharded sampler and DataLoader for this process (for ``stage``: a reward stage
    with ``reward_condition: targets`` draws its pseudo-target rows' condition from them)."""
    redraw = stage is not None and stage.loss.kind == "reward" and (
        stage.loss.reward_condition == "targets")  # fmt: skip
    dataset = PoseDataset(source, rows, config.data, config.pose.render, config.run.seed, cache,
                          condition_from_pseudo=redraw)  # fmt: skip
    sampler = ShardedSampler(len(rows), config.run.seed, rank, world)
    loader = DataLoader(
        dataset,
        batch_size=config.train.batch_size,
        sampler=sampler,
        collate_fn=collate,
        num_workers=config.data.num_workers,
        drop_last=True,
        pin_memory=torch.cuda.is_available(),
    )
    return dataset, sampler, loader


def steps_per_epoch(sampler: ShardedSampler, config: Config) -> int:
    """Optimizer steps per epoch on each process (incomplete micro-batch groups are dropped)."""
    steps = sampler.per_process // config.train.batch_size // config.train.grad_accum
    if steps == 0:
        raise TrainingError(
            f"{sampler.size} rows cannot fill one optimizer step of batch_size "
            f"{config.train.batch_size} x grad_accum {config.train.grad_accum} x "
            f"{sampler.world} processes"
        )
    return steps
