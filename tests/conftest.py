"""Test-wide settings: nothing may reach a model hub, and ultralytics may not auto-install."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Built models (the tiny SD pipeline) go to a per-session folder, not ~/.cache."""
    os.environ["POSEGUIDE_CACHE"] = str(tmp_path_factory.mktemp("poseguide-cache"))


@pytest.fixture(scope="session")
def tiny_sd() -> str:
    """A tiny SD pipeline folder (random weights), built once per session."""
    from poseguide.tiny import build_tiny_sd

    return str(build_tiny_sd())
