"""The app's callbacks without a browser: uploads, keypoints, limits, generation, the CLI."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers import seeded
from PIL import Image

from poseguide.app import AppBackend, AppError, AppLimits
from poseguide.app.core import (
    DEFAULT_CANVAS,
    UNTRAINED,
    UNTRAINED_LABEL,
    default_controlnet,
    default_person,
    error_message,
    model_choices,
)
from poseguide.errors import InputError
from poseguide.generate import NoPersonFoundError, PoseInput, pose_condition
from poseguide.pose.io import parse_pose, read_pose, write_pose
from poseguide.pose.render import render_skeleton
from poseguide.pose.skeleton import KeypointError


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height``, with no pixel data (a cheap bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def backend(app_config) -> AppBackend:
    return AppBackend(app_config, AppLimits(max_upload_bytes=2**20, max_pixels=600 * 600))


def _same(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and np.array_equal(np.asarray(a), np.asarray(b))


def _levels(a: Image.Image, b: Image.Image) -> np.ndarray:
    """Per-value difference of two images of the same size, in uint8 levels."""
    assert a.size == b.size
    return np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16))


def test_photo_gives_keypoints_and_pose_image(backend: AppBackend, astronaut: Path) -> None:
    result = backend.pose_from_upload(astronaut)
    pose = parse_pose(json.loads(result.keypoints))
    assert pose.size == (512, 512)  # the editor works in the photo's pixels
    assert pose.people.shape == (1, 17, 3)
    nose, left_shoulder = pose.people[0, 0], pose.people[0, 5]
    assert nose[2] == 2 and np.hypot(*(nose[:2] - (221, 121))) < 20
    assert left_shoulder[2] == 2 and np.hypot(*(left_shoulder[:2] - (312, 250))) < 25
    assert pose.people[0, 15, 2] == 0  # the ankles are out of the picture
    assert result.image.size == backend.size == (64, 64)
    expected = pose_condition(PoseInput.keypoints(pose.people, (512, 512)), (64, 64))
    assert _same(result.image, expected.image)
    assert np.asarray(result.image).max() > 0
    assert "astronaut.png: pose estimated" in result.message and "1 person" in result.message
    assert np.array_equal(read_pose(result.json_path).people, pose.people)
    # The editor shows the photo under the joints; the download is keypoints only.
    assert json.loads(result.keypoints)["background"].startswith("data:image/jpeg;base64,")
    assert "background" not in json.loads(result.json_path.read_text())


def test_photo_without_a_person(backend: AppBackend, tmp_path: Path) -> None:
    path = tmp_path / "wall.png"
    Image.new("RGB", (256, 256), (128, 120, 110)).save(path)
    with pytest.raises(NoPersonFoundError, match="no person found"):
        backend.pose_from_upload(path, "photo")


def test_skeleton_image_is_used_as_is(backend: AppBackend, tmp_path: Path) -> None:
    path = tmp_path / "skeleton.png"
    Image.fromarray(render_skeleton(default_person((128, 128)), (128, 128))).save(path)
    result = backend.pose_from_upload(path)  # "auto" recognises the skeleton
    assert result.keypoints is None and result.json_path is None
    resized = Image.open(path).convert("RGB").resize((64, 64), Image.Resampling.BICUBIC)
    assert _same(result.image, resized)
    assert "skeleton image" in result.message


def test_keypoint_json_round_trip(backend: AppBackend, tmp_path: Path) -> None:
    people = default_person((128, 96))
    people[0, 9, 2] = 0  # a hidden wrist stays hidden
    upload = write_pose(tmp_path / "mine.json", people, size=(128, 96))
    result = backend.pose_from_json_file(upload)
    editor = parse_pose(json.loads(result.keypoints))
    assert editor.size == (128, 96) and np.array_equal(editor.people, people)
    download = read_pose(result.json_path)
    assert result.json_path.name == "pose.json"
    assert download.size == (128, 96) and np.array_equal(download.people, people)
    # What the editor sends back after a drag renders the same way.
    moved = json.loads(result.keypoints)
    moved["people"][0]["keypoints"][0] += 10.0  # the nose, 10 px to the right
    edited = backend.pose_from_keypoints(json.dumps(moved))
    assert parse_pose(json.loads(edited.keypoints)).people[0, 0, 0] == people[0, 0, 0] + 10
    expected = render_skeleton(parse_pose(moved).people * [0.5, 64 / 96, 1], (64, 64))
    assert np.array_equal(np.asarray(edited.image), expected)
    assert not _same(edited.image, result.image)


def test_keypoints_without_a_canvas(backend: AppBackend) -> None:
    people = default_person((900, 300))
    value = {"people": [{"keypoints": people[0].reshape(-1).tolist()}]}
    result = backend.pose_from_keypoints(value)
    width, height = parse_pose(json.loads(result.keypoints)).size
    assert width > people[0, :, 0].max() and height == DEFAULT_CANVAS[1]  # every joint fits


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("{not json", "not valid JSON"),
        ("", "no keypoints"),
        (json.dumps({"people": [{"keypoints": [1, 2, 3]}]}), "expected 51"),
        (json.dumps({"people": [{"keypoints": [0] * 50 + [7]}]}), "third value is 7"),
        ("x" * (2**20 + 1), "over 1048576 bytes"),
        ("[" * 100_000 + "]" * 100_000, "^Edited pose: not a keypoint file: .* nested too deeply"),
    ],
)
def test_bad_keypoints_are_refused(backend: AppBackend, value: str, match: str) -> None:
    with pytest.raises((AppError, KeypointError), match=match):
        backend.pose_from_keypoints(value)


def test_a_deeply_nested_keypoint_file_is_refused(backend: AppBackend, tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text('{"people": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(KeypointError, match=r"^deep.json: not a keypoint file: .* too deeply"):
        backend.pose_from_json_file(deep)


def test_oversized_uploads_are_refused(backend: AppBackend, tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    Image.new("RGB", (700, 600), (10, 20, 30)).save(big)  # 420,000 > 360,000 pixels
    with pytest.raises(AppError, match=r"700x600 = 420,000 pixels, over the limit of 360,000"):
        backend.pose_from_upload(big)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header(100_000, 100_000))  # decoded it would take 30 GB
    with pytest.raises(AppError, match="more pixels than Pillow allows"):
        backend.pose_from_upload(bomb)
    heavy = tmp_path / "heavy.png"
    heavy.write_bytes(b"\0" * (2**20 + 1))
    with pytest.raises(AppError, match=r"heavy.png is 1.0 MB, over the upload limit of 1.0 MB"):
        backend.pose_from_upload(heavy)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(AppError, match="junk.png is not a readable image"):
        backend.pose_from_upload(junk)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(AppError, match=r"^empty.png is empty \(0 bytes\); upload a photo") as err:
        backend.pose_from_upload(empty)
    assert str(tmp_path) not in str(err.value)  # the file's name, not the server's temp path
    with pytest.raises(AppError, match="gone.png is no longer on the server; upload it again"):
        backend.pose_from_upload(tmp_path / "gone.png")


def test_canvases_over_the_canvas_limit_are_refused_naming_the_file(
    app_config, backend: AppBackend, tmp_path: Path
) -> None:
    """One limit (pose.render.max_canvas_pixels) for keypoint canvases, photos and, by
    default, every upload: a 100000x100000 canvas is refused, naming the file."""
    from dataclasses import replace

    from poseguide.config.schema import RenderConfig

    upload = write_pose(tmp_path / "huge.json", default_person(), size=(100_000, 100_000))
    with pytest.raises(InputError, match=r"^huge.json: canvas 100000x100000 = 10,000,000,000 "
                       r"pixels is over the limit of 16,777,216"):  # fmt: skip
        backend.pose_from_json_file(upload)
    value = json.loads(upload.read_text())
    with pytest.raises(InputError, match=r"^Edited pose: canvas 100000x100000"):
        backend.pose_from_keypoints(json.dumps(value))
    assert AppLimits().max_pixels == RenderConfig().max_canvas_pixels
    small = replace(app_config.pose.render, max_canvas_pixels=10_000)
    config = replace(app_config, pose=replace(app_config.pose, render=small))

    class NoEstimator:
        def estimate_people(self, images):
            pytest.fail("the photo was estimated (drawn at its size) past the canvas limit")

    strict = AppBackend(config, AppLimits(max_pixels=600 * 600), estimator=NoEstimator())
    photo = tmp_path / "photo.png"
    Image.new("RGB", (128, 128), (128, 120, 110)).save(photo)
    with pytest.raises(InputError, match=r"^photo.png: photo 128x128 = 16,384 pixels is over "):
        strict.pose_from_upload(photo, "photo")
    strict.close()


def test_generate_returns_images(backend: AppBackend) -> None:
    pose = backend.default_pose().image
    images, message = backend.generate("a person", pose, UNTRAINED, seed=3, steps=2, n=2)
    assert len(images) == 2 and all(im.size == (64, 64) for im in images)
    assert "Generated 2 images" in message and "seeds 3-4" in message
    again, _ = backend.generate("a person", pose, UNTRAINED, seed=4, steps=2, n=1)
    # Image i depends on its seed only, not on the batch, yet not bit for bit: CPU kernels pick
    # their algorithm by batch size, so the float image (in [0, 1]) moves by ~1e-6 (measured
    # 1.2e-6) and a value next to a rounding boundary flips by one level (measured: 1-2 of the
    # 12,288 values, at 1 and 2 threads). Real bugs are far above that: another seed, or the two
    # images swapped, differ by up to 248 levels (44 on average, 97% of the values), another
    # prompt by up to 62 (6.7 on average).
    same_seed, other_seed = _levels(again[0], images[1]), _levels(images[0], images[1])
    assert same_seed.max() <= 1 and (same_seed > 0).mean() < 0.01, (
        f"seed 4 alone vs in a batch of 2: up to {same_seed.max()} levels, "
        f"{(same_seed > 0).sum()} of {same_seed.size} values differ"
    )
    assert other_seed.max() > 32 and other_seed.mean() > 8, "seeds 3 and 4 gave the same image"
    assert backend.pipeline(UNTRAINED) is backend.pipeline(None)  # loaded once, cached


def test_generate_with_an_exported_controlnet(app_config, tmp_path: Path) -> None:
    from dataclasses import replace

    from poseguide.models import build_controlnet, load_sd_parts

    config = replace(app_config, run=replace(app_config.run, output_dir=str(tmp_path)))
    backend = AppBackend(config)
    folder = tmp_path / "other-run" / "exports" / "stage1"  # as training's export writes it
    unet = load_sd_parts(backend.config.model.base).unet
    with seeded(0):
        build_controlnet(unet).save_pretrained(folder, safe_serialization=True)
    images, message = backend.generate("a person", backend.default_pose().image, str(folder))
    assert len(images) == 1 and images[0].size == (64, 64)
    assert f"with {folder} in" in message
    backend.close()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps": 0}, "steps must be between 1 and 150"),
        ({"n": 9}, "number of images must be between 1 and 4"),
        ({"seed": 1.5}, "seed must be a whole number"),
        ({"guidance": -1}, "guidance must be between 0 and 50"),
        ({"pose": None}, "no pose yet"),
        # Only the menu's models, and not a word about what the server has at that path.
        ({"model": "/no/such/controlnet"}, "^'/no/such/controlnet' is not one of the app's mod"),
        ({"model": "/etc"}, "^'/etc' is not one of the app's models; choose one from the menu$"),
    ],
)
def test_generate_refuses_bad_settings(backend: AppBackend, kwargs: dict, match: str) -> None:
    args = {"prompt": "p", "pose": backend.default_pose().image, "model": UNTRAINED} | kwargs
    with pytest.raises((AppError, FileNotFoundError), match=match):
        backend.generate(**args)


def _export(folder: Path, weights: bool = True) -> Path:
    """A folder as ControlNetModel.save_pretrained writes it (contents faked)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    if weights:
        (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"weights")
    return folder


def test_default_model_is_the_newest_export(app_config, tmp_path: Path) -> None:
    from dataclasses import replace

    config = replace(app_config, run=replace(app_config.run, output_dir=str(tmp_path)))
    assert default_controlnet(config) == UNTRAINED
    exports = tmp_path / config.run.name / "exports"
    for stage in ("stage1", "stage2"):
        _export(exports / stage)
        assert default_controlnet(config) == str(exports / stage)
    values = [value for _, value in model_choices(config, "some/hub-id")]
    assert values == ["some/hub-id", str(exports / "stage1"), str(exports / "stage2"), UNTRAINED]
    # A third stage (the reward stage of thesis_reward.yaml) is the newest once exported.
    stages = [*config.train.stages, replace(config.train.stages[-1], name="stage3")]
    three = replace(config, train=replace(config.train, stages=stages))
    assert default_controlnet(three) == str(exports / "stage2")
    _export(exports / "stage3")
    assert default_controlnet(three) == str(exports / "stage3")


def test_model_menu_lists_complete_exports_only(app_config, tmp_path: Path) -> None:
    """Training writes an export as .stage2.<random>.tmp, then renames it (the old one goes to
    .stage2.old first): the menu lists neither those nor a folder without its weights."""
    from dataclasses import replace

    config = replace(app_config, run=replace(app_config.run, output_dir=str(tmp_path)))
    exports = tmp_path / config.run.name / "exports"
    _export(exports / ".stage2.abc.tmp")  # complete inside, but not yet renamed
    _export(exports / ".stage2.old")
    _export(exports / "copy.tmp")
    _export(exports / "stage2", weights=False)  # half-written: config.json, no weights
    (exports / "notes").mkdir()
    assert model_choices(config) == [(UNTRAINED_LABEL, UNTRAINED)]
    assert default_controlnet(config) == UNTRAINED
    other = _export(tmp_path / "other-run" / "exports" / "stage1")
    assert [value for _, value in model_choices(config)] == [str(other), UNTRAINED]


def test_close_removes_the_temp_folder(app_config) -> None:
    backend = AppBackend(app_config)
    download = backend.default_pose().json_path
    assert download.is_file() and download.is_relative_to(backend.tmp)
    backend.close()
    backend.close()  # idempotent
    assert not backend.tmp.exists()


def test_error_message_is_markdown_safe() -> None:
    text = error_message(AppError("file my_photo_1.png: *bad*"))
    assert text == r"**Error:** file my\_photo\_1.png: \*bad\*"
    assert "RuntimeError: boom (see the server log)" in error_message(RuntimeError("boom"))


def test_callbacks_never_raise(backend: AppBackend) -> None:
    gr = pytest.importorskip("gradio", reason="the app extra is missing: pip install -e '.[app]'")
    from poseguide.app.ui import _guarded, build_app

    def fails() -> tuple:
        raise KeyError("oops")

    out = _guarded(fails, 3)()
    assert out[:2] == (gr.skip(), gr.skip()) and out[2].startswith("**Error:** KeyError")
    assert isinstance(build_app(backend.config, backend=backend), gr.Blocks)


def test_cli_app_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import poseguide.app
    from poseguide.cli import main

    calls = []
    monkeypatch.setattr(poseguide.app, "launch", lambda *a, **k: calls.append((a, k)))
    args = ["app", "--host", "0.0.0.0", "--port", "8123", "--max-pixels", "1000"]
    args.append("data.resolution=128")
    assert main(args) == 0
    (config, host, port), kwargs = calls[0]
    assert (host, port, config.data.resolution, config.model.base) == (
        "0.0.0.0", 8123, 128, "builtin:tiny-sd",
    )  # fmt: skip
    assert kwargs["limits"] == AppLimits.from_options(None, 1000) and kwargs["controlnet"] is None
    assert main(["app"]) == 0 and calls[1][0][1] == "127.0.0.1"  # loopback by default


def test_stop_on_signals_then_restore_the_handlers() -> None:
    """The first signal stops the server (KeyboardInterrupt, as Ctrl-C); a second one during the
    clean-up is noted, not raised; the handlers from before are back afterwards."""
    import signal

    pytest.importorskip("gradio", reason="the app extra is missing: pip install -e '.[app]'")
    from poseguide.app.ui import _stop_on

    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with _stop_on((signal.SIGTERM, signal.SIGINT)) as received:
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGINT)  # during the clean-up: ignored
    assert received == [signal.SIGTERM, signal.SIGINT]
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_a_full_disk_at_start_up_is_one_line_naming_the_folder(
    app_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import tempfile

    from poseguide.utils.io import WriteError

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "mkdtemp", full_disk)
    with pytest.raises(WriteError, match=rf"^could not write {tempfile.gettempdir()}: No space"):
        AppBackend(app_config)


def test_a_busy_port_is_one_line_naming_it(capsys: pytest.CaptureFixture) -> None:
    import socket

    pytest.importorskip("gradio", reason="the app extra is missing: pip install -e '.[app]'")
    from poseguide.cli import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["app", "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: port {port} on 127.0.0.1 is in use (another app or server listens "
                   f"on it); stop it, or pass another port, e.g. --port {port + 1}")  # fmt: skip
    assert main(["app", "--port", "70000"]) == 2
    assert "--port 70000: must be between 1 and 65535" in capsys.readouterr().err
