"""Shared fixtures of the app tests: the tiny config and the astronaut photo."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from poseguide.config import Config, load_config


@pytest.fixture(scope="package", autouse=True)
def _one_thread():
    """Tiny models gain nothing from threads (and two on a busy 2-core machine crawl)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="package")
def app_config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    """The tiny preset on the CPU, with an empty run folder (so: the untrained ControlNet)."""
    runs = tmp_path_factory.mktemp("runs")
    return load_config("tiny", [f"run.output_dir={runs}", "run.device=cpu", "generate.steps=2"])


@pytest.fixture(scope="package")
def astronaut(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scikit-image's astronaut (512x512) as a PNG file, as a browser would upload it."""
    from skimage import data

    path = tmp_path_factory.mktemp("uploads") / "astronaut.png"
    Image.fromarray(data.astronaut()).save(path)
    return path
