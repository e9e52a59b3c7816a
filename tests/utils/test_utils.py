"""Atomic output keeps the previous file on any failure; images open without third-party patches."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from PIL import Image, UnidentifiedImageError

from poseguide.utils import io as pio
from poseguide.utils.device import resolve_device
from poseguide.utils.images import pil_open


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.json"
    pio.atomic_write_json(target, {"x": 1})
    pio.atomic_write_json(target, {"x": 2})
    assert target.read_text().strip().replace(" ", "").replace("\n", "") == '{"x":2}'
    assert [p.name for p in target.parent.iterdir()] == ["a.json"]


def test_full_disk_keeps_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "metrics.json"
    pio.atomic_write_text(target, "good")

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError, match="No space left") as err:
        pio.atomic_write_text(target, "half-written")
    assert isinstance(err.value, pio.WriteError) and err.value.errno == errno.ENOSPC
    assert f"could not write {target}" in str(err.value)  # names the file
    assert target.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_stale_temporaries_are_what_killed_writers_left(tmp_path: Path) -> None:
    (tmp_path / ".step-00000004.x1y2.tmp" / "sub").mkdir(parents=True)
    (tmp_path / ".metrics.json.ab12.tmp").write_text("half")
    (tmp_path / ".stage1.old").mkdir()
    (tmp_path / "step-00000003").mkdir()  # a real checkpoint stays
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / ".a.png.zz.tmp").write_bytes(b"x")
    removed = pio.remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == [".metrics.json.ab12.tmp", ".stage1.old",
                                               ".step-00000004.x1y2.tmp"]  # fmt: skip
    assert (tmp_path / "images" / ".a.png.zz.tmp").exists()  # not recursive unless asked
    assert [p.name for p in pio.remove_stale_temporaries(tmp_path, recursive=True)] == [
        ".a.png.zz.tmp"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "step-00000003"]


def test_atomic_directory_is_all_or_nothing(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint"
    with pio.atomic_directory(target) as tmp:
        (tmp / "weights").write_text("v1")
    with pytest.raises(RuntimeError), pio.atomic_directory(target) as tmp:
        (tmp / "weights").write_text("v2 partial")
        raise RuntimeError("killed half way")
    assert (target / "weights").read_text() == "v1"
    with pio.atomic_directory(target) as tmp:
        (tmp / "weights").write_text("v2")
    assert (target / "weights").read_text() == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_atomic_save_image_round_trip(tmp_path: Path) -> None:
    image = Image.new("RGB", (5, 4), (10, 20, 30))
    pio.atomic_save_image(tmp_path / "a.png", image)
    assert pil_open(tmp_path / "a.png").getpixel((2, 2)) == (10, 20, 30)
    with pytest.raises(ValueError, match="unknown image file extension"):
        pio.atomic_save_image(tmp_path / "a.xyz", image)


def test_corrupt_image_error_survives_ultralytics_patch(tmp_path: Path) -> None:
    import ultralytics  # noqa: F401  - patches PIL.Image.open on import

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    with pytest.raises(UnidentifiedImageError):
        pil_open(bad)


def test_resolve_device() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")


def test_atomic_outputs_get_the_usual_permissions(tmp_path: Path) -> None:
    mask = os.umask(0o022)
    try:
        pio.atomic_write_text(tmp_path / "a.txt", "x")
        with pio.atomic_directory(tmp_path / "d") as tmp:
            (tmp / "f").write_text("y")
    finally:
        os.umask(mask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755


def test_wants_cpu_follows_the_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from poseguide.utils.device import wants_cpu

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert wants_cpu("cpu") and wants_cpu("auto") and not wants_cpu("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert wants_cpu("cpu") and not wants_cpu("auto")


@pytest.mark.parametrize("present", [True, False], ids=["gpu-present", "no-gpu"])
def test_auto_says_loudly_when_cuda_is_there_but_unusable(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, present: bool
) -> None:
    """torch 2.14's CUDA build on a machine with an old driver: is_available() is False and
    "auto" would silently train on the CPU; it warns once, with torch's reason."""
    import torch

    from poseguide.utils import device

    def init() -> None:
        raise RuntimeError("The NVIDIA driver on your system is too old (found version 11040).\nx")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "init", init)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(device, "_gpu_present", lambda: present)
    device.warn_if_cuda_unusable.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="poseguide.utils.device"):
            assert device.resolve_device("auto").type == "cpu"
            assert device.wants_cpu("auto")
            assert not device.wants_cpu("cuda")
    finally:
        device.warn_if_cuda_unusable.cache_clear()
    warnings = [r.getMessage() for r in caplog.records]
    if not present:  # a CUDA build on a machine without a GPU: nothing to say
        assert warnings == []
        return
    assert len(warnings) == 1, warnings  # once per process
    assert "runs on the CPU" in warnings[0] and "CUDA 13.0" in warnings[0]
    assert "driver on your system is too old (found version 11040)." in warnings[0]


def test_a_team_shares_work_and_stops_together() -> None:
    """Team.run gives every process every result; when one fails, all raise: it its own error,
    the others a one-line SharedWorkError (a user error) or a RuntimeError (a bug)."""
    from helpers import run_as_team

    from poseguide.errors import InputError
    from poseguide.utils.team import SOLO, SharedWorkError

    assert SOLO.run(lambda: 3) == [3] and SOLO.share(range(5)) == [0, 1, 2, 3, 4]
    shares = run_as_team(3, lambda team: team.run(lambda: team.share(range(8))))
    assert shares == [[[0, 3, 6], [1, 4, 7], [2, 5]]] * 3

    def fails_on(rank: int, error: Exception):
        def work(team):
            def mine():
                if team.rank == rank:
                    raise error
                return team.rank

            return team.run(mine)

        return work

    user = run_as_team(2, fails_on(1, InputError("row 7 is bad\nfix it")))
    assert isinstance(user[1], InputError)
    assert isinstance(user[0], SharedWorkError)
    assert str(user[0]) == "process 1 of 2: row 7 is bad; fix it"
    bug = run_as_team(2, fails_on(0, KeyError("oops")))
    assert isinstance(bug[0], KeyError)
    assert type(bug[1]) is RuntimeError and "process 0 of 2 failed" in str(bug[1])


def test_writing_names_the_path_of_a_failed_write(tmp_path: Path) -> None:
    """OSErrors and safetensors' I/O failures become a one-line WriteError naming the path;
    anything else (a bug, safetensors' other errors) is left as it is."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    folder = tmp_path / "untrained"
    with pytest.raises(pio.WriteError) as err, pio.writing(folder):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert str(err.value).startswith(f"could not write {folder}: No space left on device; ")
    assert err.value.errno == errno.ENOSPC and "\n" not in str(err.value)
    full = r"could not write .*untrained: No space left"
    with pytest.raises(pio.WriteError, match=full) as err, pio.writing(folder):
        raise SafetensorError(
            "Error while serializing: I/O error: No space left on device (os error 28) at "
            'path "/x/.tmpU33suZ"'
        )
    assert err.value.errno == errno.ENOSPC
    with pytest.raises(pio.WriteError, match="No such file or directory"), pio.writing(folder):
        save_file({}, str(tmp_path / "missing" / "w.safetensors"))  # safetensors' own error
    with pytest.raises(SafetensorError), pio.writing(folder):
        raise SafetensorError("Error while deserializing header: invalid JSON")
    with pytest.raises(KeyError), pio.writing(folder):
        raise KeyError("a bug")


@pytest.mark.parametrize(
    ("count", "text"),
    [(0, "0 B"), (999, "999 B"), (1000, "1.0 kB"), (35_200_000, "35.2 MB"),
     (999_999_999, "1.0 GB"), (61_000_000_000, "61.0 GB"), (3.2e15, "3200.0 TB")],
)  # fmt: skip
def test_byte_counts_read_in_the_unit_that_shows_them(count: float, text: str) -> None:
    """A small disk's check read "0.0 GB free; need about 0.0 GB"."""
    from poseguide.utils.units import format_bytes

    assert format_bytes(count) == text
