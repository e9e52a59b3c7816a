"""Value checks shared by the config schema's sections: each raises a one-line
:class:`~poseguide.config.core.ConfigError` naming the key and what is allowed."""

from __future__ import annotations

import ast
import functools
import importlib.util
import math
import sys
from pathlib import Path

from poseguide.config.core import ConfigError

# The largest seed every consumer takes: numpy's legacy seeding (np.random.seed, which
# accelerate's set_seed calls) accepts 0..2**32 - 1; torch accepts more.
MAX_SEED = 2**32 - 1

# Upper bounds of sizes and counts: far above any real use (SD1.5 trains at 512 px in batches of
# tens), low enough that a few extra zeros are one line at load time, not gigabytes allocated at
# the first batch.
MAX_SIDE = 4096  # px: data.resolution and other image sides (4096**2: the canvas limit)
MAX_PIXELS = 2**30  # data.max_image_pixels, pose.render.max_canvas_pixels (a 3 GB RGB image)
MAX_BATCH = 4096  # images per batch or shard, micro-batches per step, validation samples
MAX_WORKERS = 256  # DataLoader worker processes
MAX_DENOISING_STEPS = 1000  # generation steps: SD1.5's schedule has 1000 timesteps
MAX_COUNT = 10**6  # synthetic samples, bootstrap resamples, detections per image

# The ControlNet references a stage may start from, and those it may not: the vocabulary of
# poseguide.models.controlnet.ControlNetRef, which cannot be imported here (it imports torch,
# and poseguide.models imports this module); tests/test_config_values.py keeps the two in step.
UNTRAINED_INIT, PREVIOUS_INIT = "unet", "previous"
NOT_STAGE_INITS = ("originals",)
STAGE_REF_PREFIX = "stage:"

# diffusers schedulers that need arguments make_lr_scheduler does not pass.
UNSUPPORTED_SCHEDULERS = {"piecewise_constant": "it needs step_rules, which no stage key sets"}


def _invalid(key: str, text: str) -> ConfigError:
    return ConfigError(f"{key}: {text}", key=key)


def _positive(name: str, value: float, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0  # False for NaN
    if not (ok and math.isfinite(value)):
        bound = ">= 0" if allow_zero else "> 0"
        what = bound if math.isfinite(value) else f"a finite number {bound}"
        raise _invalid(name, f"must be {what}, got {value!r}")


def _count(name: str, value: int, high: int, low: int = 1) -> None:
    """An int size or count in ``low..high`` (:data:`MAX_BATCH` and the other bounds)."""
    if not low <= value <= high:
        raise _invalid(name, f"must be between {low:,} and {high:,}, got {value!r}")


def _unit_interval(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise _invalid(name, f"must be in [0, 1], got {value!r}")


def _below_one(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise _invalid(name, f"must be in [0, 1), got {value!r}")


def _seed(name: str, value: int) -> None:
    if not 0 <= value <= MAX_SEED:
        raise _invalid(name, f"must be a seed in 0..{MAX_SEED} (2**32 - 1), got {value!r}")


def _folder_name(name: str, value: str) -> None:
    """``value`` names one folder inside a parent (a run, a stage's export, a model's images):
    it may not be empty, hold a path separator or start with a dot (``..`` would leave it)."""
    if not value.strip() or value.startswith(".") or any(c in value for c in "/\\\0"):
        raise _invalid(
            name,
            f"{value!r} must be a plain folder name (not empty, no '/' or '\\', not starting "
            "with '.')",
        )


@functools.cache
def lr_scheduler_names() -> tuple[str, ...]:
    """The names diffusers' ``get_scheduler`` takes: ``diffusers.optimization.SchedulerType``.

    Importing diffusers costs seconds (it imports torch) and loading a config should not, so
    unless diffusers is imported already the enum's values are read from its source file, where
    they are string constants; importing it is the fallback."""
    module = sys.modules.get("diffusers.optimization")
    if module is None:
        names = _enum_values_in_source("diffusers", "optimization.py", "SchedulerType")
        if names:
            return names
        from diffusers import optimization as module
    return tuple(member.value for member in module.SchedulerType)


def _enum_values_in_source(package: str, file: str, enum: str) -> tuple[str, ...]:
    """The values of ``class enum(Enum)`` in ``package/file`` when all are string literals."""
    spec = importlib.util.find_spec(package)  # finds a top-level package without importing it
    if spec is None or not spec.submodule_search_locations:
        return ()
    path = Path(next(iter(spec.submodule_search_locations))) / file
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return ()
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == enum:
            members = [s.value for s in node.body if isinstance(s, ast.Assign)]
            if members and all(isinstance(m, ast.Constant) for m in members):
                values = [m.value for m in members]
                if all(isinstance(v, str) for v in values):
                    return tuple(values)
    return ()
