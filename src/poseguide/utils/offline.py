"""The one "are we offline" rule, for model hubs, dataset hubs and pose weights alike."""

from __future__ import annotations

import os

# Any of these set to a true value means: touch no network (the hubs' own variables, and
# ultralytics' for its weights and its automatic pip installs).
OFFLINE_ENV_VARS: tuple[str, ...] = (
    "HF_HUB_OFFLINE",
    "YOLO_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "TRANSFORMERS_OFFLINE",
)
_TRUTHY = ("1", "true", "yes", "on", "y", "t")


def offline_vars() -> list[str]:
    """The offline variables that are set to a true value ("1", "true", "yes", ...)."""
    return [k for k in OFFLINE_ENV_VARS if os.environ.get(k, "").strip().lower() in _TRUTHY]


def is_offline() -> bool:
    """True when any of :data:`OFFLINE_ENV_VARS` is set to a true value."""
    return bool(offline_vars())


def offline_reason() -> str:
    """``"offline: HF_HUB_OFFLINE=1"``-style text for messages (empty when online)."""
    names = offline_vars()
    return f"offline: {', '.join(f'{k}={os.environ[k]}' for k in names)}" if names else ""
