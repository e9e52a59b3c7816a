"""Training checkpoints: everything needed to continue bit for bit, written atomically.

A checkpoint is a folder ``<run>/checkpoints/step-XXXXXXXX/`` holding

* ``controlnet.safetensors`` and ``config.json``: the trainable weights (fp32 master copy) and
  the ControlNet's architecture;
* ``optimizer.pt``, ``lr_scheduler.pt``, ``scaler.pt`` (fp16 only): state dicts, loaded with
  ``torch.load(weights_only=True)``; under DeepSpeed ZeRO the optimizer state is partitioned
  across processes and saved by DeepSpeed itself in ``deepspeed/`` instead of ``optimizer.pt``;
* ``ema.pt``: the EMA of the weights, when the stage keeps one (``ema_decay``);
* ``rng-<rank>.pt``: Python, NumPy, torch CPU and CUDA generator states of each process;
* ``state.json``: the position (stage, global step, step within the stage, epoch, step within the
  epoch), whether the stage is finished, the world size, the run's config as plain data, the
  training data's identity (rows, their ids, the source's content fingerprint) and every other
  file's size and SHA-256 (written last: a resume recomputes them, so a flipped byte is noticed).

The folder is built under a temporary name and renamed into place, then ``checkpoints/latest``
is rewritten to name it; the oldest step checkpoints beyond ``train.keep_checkpoints`` are
removed afterwards. A crash or a full disk at any point leaves the previous checkpoint and the
``latest`` pointer valid.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from poseguide.errors import UserError
from poseguide.utils.checksum import file_records, files_problem
from poseguide.utils.io import atomic_directory, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

LATEST = "latest"
PREFIX = "step-"
STATE_FILE = "state.json"
WEIGHTS_FILE = "controlnet.safetensors"
EMA_FILE = "ema.pt"  # the EMA of the weights, when the stage keeps one (stage.ema_decay)
# What every checkpoint holds (besides optimizer.pt or DeepSpeed's deepspeed/ folder); checked
# for checkpoints written before state.json recorded its files and their sizes.
REQUIRED_FILES = (WEIGHTS_FILE, "config.json", "lr_scheduler.pt")


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing, incomplete or does not fit this run."""


@dataclass
class Position:
    """Where training stands; saved in ``state.json``."""

    stage_index: int = 0
    stage_name: str = ""
    global_step: int = 0  # optimizer steps over all stages
    stage_step: int = 0  # optimizer steps in the current stage
    epoch: int = 0  # epoch within the stage
    epoch_step: int = 0  # optimizer steps already taken in this epoch
    stage_done: bool = False  # the stage finished; resuming starts the next one


@dataclass
class TrainState:
    """What training changes and a checkpoint saves: the (prepared) ControlNet, its optimizer,
    LR scheduler and grad scaler (fp16 only), and the position."""

    model: Any
    optimizer: Any
    scheduler: Any
    position: Position
    scaler: Any = None
    ema: Any = None  # diffusers EMAModel of the trainable weights (stage.ema_decay), or None

    def count_step(self) -> None:
        """One optimizer step was taken."""
        p = self.position
        steps = {"global_step": p.global_step + 1, "stage_step": p.stage_step + 1,
                 "epoch_step": p.epoch_step + 1}  # fmt: skip
        self.position = replace(p, **steps)

    def next_epoch(self) -> None:
        self.position = replace(self.position, epoch=self.position.epoch + 1, epoch_step=0)


def rng_state() -> dict[str, Any]:
    """Every global RNG state of this process, as tensors and plain data (weights_only-safe)."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, values, gauss = state["python"]
    random.setstate((version, tuple(values), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_name(global_step: int) -> str:
    return f"{PREFIX}{global_step:08d}"


def save_checkpoint(
    root: Path,
    state: TrainState,
    controlnet: Any,
    *,
    rngs: list[dict[str, Any]],
    config: dict,
    keep: int,
    world_size: int = 1,
    deepspeed_dir: Path | None = None,
    data: dict | None = None,
) -> Path:
    """Write a complete checkpoint of ``state`` atomically, point ``latest`` at it, and rotate
    old ones. ``controlnet`` is the unwrapped diffusers ControlNetModel (fp32 master weights);
    ``rngs`` every process's RNG states; ``deepspeed_dir`` DeepSpeed's own partitioned files;
    ``data`` the training data's identity (:func:`poseguide.train.runner.data_identity`)."""
    target = root / checkpoint_name(state.position.global_step)
    with atomic_directory(target) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in controlnet.state_dict().items()},
                  str(tmp / WEIGHTS_FILE))  # fmt: skip
        controlnet.save_config(tmp)
        if deepspeed_dir is not None:  # ZeRO partitions the optimizer: DeepSpeed's own files
            shutil.move(str(deepspeed_dir), tmp / "deepspeed")
        else:
            torch.save(state.optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(state.scheduler.state_dict(), tmp / "lr_scheduler.pt")
        if state.scaler is not None:
            torch.save(state.scaler.state_dict(), tmp / "scaler.pt")
        if state.ema is not None:
            torch.save(state.ema.state_dict(), tmp / EMA_FILE)
        for rank, rng in enumerate(rngs):
            torch.save(rng, tmp / f"rng-{rank}.pt")
        meta = {"position": asdict(state.position), "world_size": world_size, "config": config,
                "data": data, "files": file_records(tmp)}  # fmt: skip
        atomic_write_json(tmp / STATE_FILE, meta)  # written last: its presence means complete
    atomic_write_text(root / LATEST, target.name + "\n")
    rotate(root, keep)
    return target


def rotate(root: Path, keep: int) -> list[Path]:
    """Remove all but the newest ``keep`` step checkpoints (never the one ``latest`` names)."""
    pinned = (root / LATEST).read_text().strip() if (root / LATEST).is_file() else None
    found = sorted(p for p in root.glob(f"{PREFIX}*") if p.is_dir() and not p.name.startswith("."))
    removed = []
    for old in found[:-keep] if keep > 0 else found:
        if old.name != pinned:
            shutil.rmtree(old, ignore_errors=True)
            removed.append(old)
    return removed


def checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint folder ``path`` cannot be resumed from, or None when it is intact:
    ``state.json`` parses; every file it lists exists with the size and SHA-256 recorded at save
    time (older checkpoints: the size, or only that the required files exist); the weights'
    safetensors header reads."""
    state_file = path / STATE_FILE
    if not state_file.is_file():
        return f"{state_file} is missing (the checkpoint was not finished)"
    try:
        state = json.loads(state_file.read_text())
        Position(**state["position"])
    except (ValueError, KeyError, TypeError) as err:
        return f"{state_file} is damaged ({type(err).__name__}: {err})"
    recorded = state.get("files", dict.fromkeys(REQUIRED_FILES, None))
    problem = files_problem(path, recorded) if isinstance(recorded, dict) else "files: damaged"
    if problem is not None:
        return problem
    try:
        with safe_open(str(path / WEIGHTS_FILE), framework="pt") as handle:
            if not list(handle.keys()):
                return f"{path / WEIGHTS_FILE} holds no tensors"
    except Exception as err:  # any failure to parse untrusted bytes
        return f"{path / WEIGHTS_FILE} is damaged ({err})"
    return _deepspeed_problem(path / "deepspeed")


# The only classes DeepSpeed's ZeRO-1/2 files pickle besides tensors and plain data; DeepSpeed
# reads its files with torch.load(weights_only=False), so anything else is refused first.
DEEPSPEED_GLOBALS = {
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.utils.tensor_fragment.fragment_address",
}


def _deepspeed_problem(folder: Path) -> str | None:
    """Why DeepSpeed's own files in ``folder`` must not be unpickled, or None."""
    for file in sorted(folder.rglob("*.pt")) if folder.is_dir() else []:
        try:
            found = torch.serialization.get_unsafe_globals_in_checkpoint(file)
        except Exception as err:  # any failure to parse untrusted bytes
            return f"{file} is damaged ({err})"
        others = sorted(set(found) - DEEPSPEED_GLOBALS)
        if others:
            return (f"{file} pickles {', '.join(others[:3])}, not only DeepSpeed's own "
                    "optimizer state: refusing to unpickle it")  # fmt: skip
    return None


def _step_folders(root: Path) -> list[Path]:
    """Checkpoint folders, newest step first (temporary and hidden ones excluded)."""
    found = [p for p in root.glob(f"{PREFIX}*") if p.is_dir() and not p.name.startswith(".")]
    return sorted(found, key=lambda p: p.name, reverse=True)


def has_checkpoints(root: Path) -> bool:
    return (root / LATEST).is_file() or bool(_step_folders(root))


def resolve_checkpoint(root: Path, which: str) -> Path:
    """``latest`` or a checkpoint folder path, verified (:func:`checkpoint_problem`).

    ``latest`` is the folder ``root/latest`` names when it is intact, else the newest intact
    one (each damaged one skipped is logged with the reason); no intact one is a
    :class:`CheckpointError` listing why, with how to start over.
    """
    if which != LATEST:
        problem = checkpoint_problem(Path(which))
        if problem is not None:
            raise CheckpointError(f"cannot resume from {which}: {problem}")
        return Path(which)
    pointer = root / LATEST
    named = root / pointer.read_text().strip() if pointer.is_file() else None
    candidates = ([named] if named is not None else []) + [
        p for p in _step_folders(root) if p != named
    ]
    skipped = []
    for path in candidates:
        problem = checkpoint_problem(path)
        if problem is None:
            for name, why in skipped:
                log.warning("skipping checkpoint %s: %s; resuming from %s", name, why, path.name)
            return path
        skipped.append((path.name, problem))
    if not skipped:
        raise CheckpointError(f"no checkpoint to resume from in {root} (no 'latest' pointer)")
    reasons = "; ".join(f"{name}: {why}" for name, why in skipped)
    raise CheckpointError(
        f"no intact checkpoint in {root} ({reasons}); start over with another run.name, or "
        f"remove {root} to train this run from the beginning"
    )


@dataclass
class Loaded:
    path: Path
    position: Position
    world_size: int
    config: dict
    controlnet_state: dict[str, torch.Tensor]
    data: dict | None = None  # the training data's identity (None: written before it was kept)

    @property
    def deepspeed(self) -> bool:
        """Written under DeepSpeed: the optimizer state is DeepSpeed's own (``deepspeed/``)."""
        return (self.path / "deepspeed").is_dir()

    def build_controlnet(self, device: torch.device) -> Any:
        """The checkpoint's ControlNet (architecture and fp32 weights) on ``device``."""
        from diffusers import ControlNetModel

        model = ControlNetModel.from_config(ControlNetModel.load_config(self.path))
        model.load_state_dict(self.controlnet_state)
        return model.to(device=device, dtype=torch.float32).train()

    def ema_weights_into(self, model: Any) -> bool:
        """Copy the checkpoint's EMA weights (when it holds one) into ``model``'s trainable
        parameters, in their order; returns whether it did."""
        if not (self.path / EMA_FILE).is_file():
            return False
        shadow = _load(self.path / EMA_FILE)["shadow_params"]
        with torch.no_grad():
            for param, value in zip([p for p in model.parameters() if p.requires_grad], shadow,
                                    strict=True):  # fmt: skip
                param.copy_(value.to(param.device, param.dtype))
        return True

    def load_into(self, state: TrainState, rank: int) -> None:
        """Restore the optimizer, LR scheduler, grad scaler, position and this process's RNG
        states into ``state``."""
        path = self.path
        if (path / "optimizer.pt").is_file():  # else DeepSpeed loads its own (deepspeed/)
            state.optimizer.load_state_dict(_load(path / "optimizer.pt"))
        state.scheduler.load_state_dict(_load(path / "lr_scheduler.pt"))
        if state.scaler is not None and (path / "scaler.pt").is_file():
            state.scaler.load_state_dict(_load(path / "scaler.pt"))
        if state.ema is not None:
            if not (path / EMA_FILE).is_file():
                raise CheckpointError(
                    f"{path} holds no {EMA_FILE} but the stage keeps an EMA "
                    "(ema_decay); resume with the config it was written with"
                )
            state.ema.load_state_dict(_load(path / EMA_FILE))
            state.ema.to(device=next(state.model.parameters()).device)  # loaded on the CPU
        state.position = self.position
        rng_file = self.path / f"rng-{rank}.pt"
        if rng_file.is_file():
            set_rng_state(_load(rng_file))


def _load(path: Path) -> Any:
    """A checkpoint's state dict, tensors on the CPU (the optimizer moves them to its
    parameters' device), never unpickling anything but tensors and plain data."""
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # a file damaged after the check (or one that lies about its size)
        raise CheckpointError(f"{path} cannot be read ({err}); resume from an earlier "
                              "checkpoint with --resume PATH") from None  # fmt: skip


def load_checkpoint(path: Path) -> Loaded:
    """Read a checkpoint verified by :func:`checkpoint_problem` (a damaged one is a
    :class:`CheckpointError` naming the file)."""
    problem = checkpoint_problem(path)
    if problem is not None:
        raise CheckpointError(f"cannot resume from {path}: {problem}")
    state = json.loads((path / STATE_FILE).read_text())
    try:
        weights = load_file(str(path / WEIGHTS_FILE))
    except Exception as err:  # a header that parses but data that does not
        raise CheckpointError(f"cannot resume from {path}: {path / WEIGHTS_FILE}: {err}") from None
    return Loaded(path, Position(**state["position"]), state["world_size"], state["config"],
                  weights, state.get("data"))  # fmt: skip
