"""Shared test helpers: a tiny-run config writer and the CLI in a subprocess."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]


def write_config(root: Path, **sections: object) -> Path:
    """A tiny-preset config at ``root/config.yaml``; its paths are relative, so run it with
    ``root`` as the working folder (two roots then hold identical configs)."""
    config = {
        "base": str(REPO / "configs" / "tiny.yaml"),
        "run": {"name": "t", "output_dir": "runs", "seed": 3, "device": "cpu"},
        "data": {
            "train": {"kind": "synthetic", "path": "data/train",
                      "synthetic": {"n": 8, "seed": 0, "size": [64, 64]}},
            "eval": {"kind": "synthetic", "path": "data/eval",
                     "synthetic": {"n": 4, "seed": 1, "size": [64, 64]}},
            "cache": {"dir": "cache"},
        },
        "train": {
            "batch_size": 2,
            "checkpoint_every": 1,
            "stages": [
                {"name": "stage1", "loss": {"kind": "denoising"}, "epochs": 2, "lr": 1e-3},
                {"name": "stage2", "loss": {"kind": "heatmap", "source": "predicted_error"},
                 "epochs": 1, "lr": 1e-3},
            ],
        },
    }  # fmt: skip
    for key, value in sections.items():
        section = config.setdefault(key, {})
        section.update(value)  # type: ignore[union-attr]
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """The global torch RNG seeded with ``seed`` inside the block and restored after it: for
    what draws from it without a generator (a new module's weights, such as the ControlNet
    pose embedding that ``build_controlnet`` initialises)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", YOLO_OFFLINE="1", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return env


def start_cli(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "poseguide", *args], cwd=cwd, env=cli_env(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def free_port() -> int:
    """A TCP port nobody listens on now (for a launcher's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_as_team(world: int, work: Callable[[Any], Any], timeout: float = 300) -> list[Any]:
    """``work(team)`` on ``world`` threads standing in for processes: each gets a
    :class:`poseguide.utils.team.Team` whose ``gather`` meets the others' at a
    ``threading.Barrier`` (a thread that never arrives breaks it after ``timeout`` s instead of
    hanging the test). Returns each rank's result, or the exception it raised, in rank order."""
    from poseguide.utils.team import Team

    meet = threading.Barrier(world, timeout=timeout)
    slots: list[Any] = [None] * world
    out: list[Any] = [None] * world

    def member(rank: int) -> Team:
        def gather(obj: Any) -> list[Any]:
            slots[rank] = obj
            meet.wait()
            seen = list(slots)
            meet.wait()  # no slot is overwritten before every rank has read them all
            return seen

        return Team(rank, world, gather)

    def run(rank: int) -> None:
        try:
            out[rank] = work(member(rank))
        except BaseException as err:  # handed to the test
            out[rank] = err

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return out


def wait_for_step(
    root: Path, proc: subprocess.Popen, stage: str, step: int, timeout: float = 240
) -> None:
    """Poll metrics.jsonl until ``stage`` has logged ``step`` (or the process ended)."""
    path, deadline = root / "runs/t/metrics.jsonl", time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"training ended early:\n{proc.stdout.read()}")
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line being written
                    continue
                if row["stage"] == stage and row["step"] >= step:
                    return
        time.sleep(0.01)
    raise AssertionError(f"no {stage} step {step} within {timeout} s")


def launch(
    root: Path,
    *args: str,
    processes: int = 1,
    command: str = "train",
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """``poseguide COMMAND config.yaml ARGS`` in ``root``: one process, or ``processes`` gloo
    processes through torchrun; asserts it succeeded and returns it (``stdout`` holds what
    the main process printed, ``stderr`` every process's log)."""
    launcher = ["-m", "poseguide"]
    if processes > 1:
        launcher = ["-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                    "--master_port", str(free_port()), *launcher]  # fmt: skip
    proc = subprocess.run([sys.executable, *launcher, command, "config.yaml", *args], cwd=root,
                          env=env or cli_env(), capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr[-6000:]
    return proc


def run_cli(root: Path, *args: str) -> None:
    launch(root, *args)


def metrics(root: Path, run: str = "t") -> list[dict]:
    """The rows of ``root/runs/RUN/metrics.jsonl`` (one per logged step)."""
    lines = (root / "runs" / run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]
