"""The app served by ``poseguide app`` in its own process, driven through its HTTP API (Gradio's
client): refused uploads get the app's own message, a pixel bomb is refused from its header
(no decode: the server's peak memory stays flat, no decoded copy is written), and SIGTERM or
SIGINT removes the app's temp folder, uploads included.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from helpers import free_port
from PIL import Image

from poseguide.app.core import default_person
from poseguide.pose.io import write_pose
from poseguide.pose.render import render_skeleton

pytest.importorskip("gradio", reason="the app extra is missing: pip install -e '.[app]'")
gradio_client = pytest.importorskip("gradio_client")

MAX_UPLOAD_MB = 1
MAX_PIXELS = 600 * 600
START_TIMEOUT_S = 180  # the machine may be busy; the server imports torch and gradio
BOMB_SIDE = 10_000  # 10000x10000 grey: ~100 KB as a PNG, 100 MB decoded, 300 MB as RGB


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    tmp: Path  # the server's TMPDIR: its temp folder and Gradio's cache are made in there

    def client(self):
        return gradio_client.Client(self.url, verbose=False, download_files=False,
                                    analytics_enabled=False)  # fmt: skip

    def app_folders(self) -> list[Path]:
        return sorted(self.tmp.glob("poseguide-app-*"))


def _start(where: Path, app_config) -> Server:
    """``poseguide app`` in a subprocess, with TMPDIR under ``where``; returns once it serves."""
    tmp = where / "tmp"
    tmp.mkdir(parents=True)
    port = free_port()
    command = [
        sys.executable, "-m", "poseguide", "app", "--port", str(port),
        "--max-upload-mb", str(MAX_UPLOAD_MB), "--max-pixels", str(MAX_PIXELS),
        f"run.output_dir={app_config.run.output_dir}", "run.device=cpu",
    ]  # fmt: skip
    env = dict(os.environ, TMPDIR=str(tmp), GRADIO_ANALYTICS_ENABLED="False")
    env.pop("GRADIO_TEMP_DIR", None)
    proc = subprocess.Popen(command, cwd=where, env=env, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"poseguide app exited with status {proc.returncode} at start-up")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return Server(proc, f"http://127.0.0.1:{port}/", tmp)
        except OSError:
            time.sleep(0.2)
    proc.kill()
    pytest.fail(f"poseguide app did not serve within {START_TIMEOUT_S} s")


def _stop(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.kill()
        server.proc.wait(30)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, app_config) -> Iterator[Server]:
    running = _start(tmp_path_factory.mktemp("server"), app_config)
    yield running
    _stop(running)


def _peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM), in MB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


def _status(client, path: Path, api: str = "/upload") -> str:
    args = (gradio_client.handle_file(str(path)),) + (("auto",) if api == "/upload" else ())
    return client.predict(*args, api_name=api)[-1]


def _files(tmp_path: Path) -> dict[str, Path]:
    """Uploads the app must refuse, each with (a part of) the message it must show."""
    bomb = tmp_path / "bomb.png"
    Image.new("L", (BOMB_SIDE, BOMB_SIDE), 128).save(bomb, optimize=True)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image at all\n")
    heavy = tmp_path / "heavy.png"  # over the app's 1 MB, under what Gradio lets through
    heavy.write_bytes(np.random.default_rng(0).bytes(int(1.5 * 2**20)))
    return {"bomb": bomb, "empty": empty, "notes": notes, "heavy": heavy}


def test_refused_uploads_get_the_apps_message(server: Server, tmp_path: Path) -> None:
    files = _files(tmp_path)
    client = server.client()
    expected = {
        "empty": r"\*\*Error:\*\* empty.png is empty \(0 bytes\); upload a photo or a skeleton",
        "notes": r"\*\*Error:\*\* notes.txt is not a readable image \(cannot identify image",
        "heavy": r"\*\*Error:\*\* heavy.png is 1.5 MB, over the upload limit of 1.0 MB",
    }
    for name, message in expected.items():  # these also warm the server up for the bomb
        assert re.fullmatch(message + ".*", _status(client, files[name])), name
    before = _peak_rss_mb(server.proc.pid)
    status = _status(client, files["bomb"])
    grown = _peak_rss_mb(server.proc.pid) - before
    assert status == (
        rf"**Error:** bomb.png is {BOMB_SIDE}x{BOMB_SIDE} = {BOMB_SIDE**2:,} pixels, over the "
        f"limit of {MAX_PIXELS:,} pixels; use a smaller image"
    )
    # Decoded, the bomb takes 100 MB (grey) or 300 MB (RGB); Gradio's gr.Image added ~480 MB.
    assert grown < 50, f"the server's peak memory grew by {grown:.0f} MB for a refused bomb"
    # Only the upload itself is on disk, inside the app's folder: no decoded or re-encoded copy.
    (folder,) = server.app_folders()
    copies = [p for p in folder.rglob("*") if p.is_file() and p.stat().st_size > 10_000]
    assert sorted(p.name for p in copies) == ["bomb.png", "heavy.png"], copies
    (bomb,) = (p for p in copies if p.name == "bomb.png")
    assert bomb.read_bytes() == files["bomb"].read_bytes()


def test_refused_keypoint_files_get_the_apps_message(server: Server, tmp_path: Path) -> None:
    client = server.client()
    empty = tmp_path / "empty.json"
    empty.write_bytes(b"")
    picture = tmp_path / "picture.json"
    Image.new("RGB", (8, 8)).save(picture, "PNG")
    short = tmp_path / "short.json"
    short.write_text('{"people": [{"keypoints": [1, 2, 3]}]}')
    assert _status(client, empty, "/upload_json").startswith("**Error:** empty.json is empty")
    assert _status(client, picture, "/upload_json") == (
        "**Error:** picture.json: not valid JSON (not UTF-8 text)"
    )
    status = _status(client, short, "/upload_json")
    assert status.startswith("**Error:** short.json") and "expected 51" in status
    assert str(server.tmp) not in status  # the file's name, never the server's temp path


def test_gradio_cuts_off_far_larger_uploads(server: Server, tmp_path: Path) -> None:
    """The app's message covers files up to twice the limit; Gradio refuses larger ones while
    they stream in, so no upload can fill the server's disk."""
    import httpx

    huge = np.random.default_rng(1).bytes(2 * MAX_UPLOAD_MB * 2**20 + 1)
    reply = httpx.post(server.url + "gradio_api/upload", files={"files": ("huge.png", huge)})
    assert reply.status_code == 413 and "maximum allowed size" in reply.text


STOPS = [(signal.SIGTERM, -signal.SIGTERM), (signal.SIGINT, 0)]  # SIGINT: Ctrl-C, a clean stop


@pytest.mark.parametrize(("stop", "status"), STOPS)
def test_signals_remove_the_temp_folders(
    tmp_path: Path, app_config, stop: signal.Signals, status: int
) -> None:
    server = _start(tmp_path, app_config)
    try:
        skeleton = tmp_path / "my-skeleton.png"
        Image.fromarray(render_skeleton(default_person((96, 96)), (96, 96))).save(skeleton)
        keypoints = write_pose(tmp_path / "my-pose.json", default_person(), size=(512, 512))
        client = server.client()
        assert "my-skeleton.png: used as a skeleton image" in _status(client, skeleton)
        assert _status(client, keypoints, "/upload_json").startswith("my-pose.json: 1 person")
        (folder,) = server.app_folders()
        kept = {p.name for p in folder.rglob("*")}
        assert {"my-skeleton.png", "my-pose.json", "pose.json"} <= kept  # uploads and downloads
        server.proc.send_signal(stop)
        assert server.proc.wait(60) == status
    finally:
        _stop(server)
    assert server.app_folders() == []
    left = {p.name for p in server.tmp.rglob("*") if p.is_file()}
    assert not left & {"my-skeleton.png", "my-pose.json", "pose.json"}, left
    # Gradio's server also makes $TMPDIR/gradio/vibe_edit_history (empty): the app removes it.
    assert not (server.tmp / "gradio").exists(), list(server.tmp.rglob("*"))
