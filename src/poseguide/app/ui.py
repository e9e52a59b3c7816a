"""The Gradio page: layout and wiring. The work is done by :class:`~poseguide.app.core.AppBackend`.

Layout: the prompt and generation settings on the left, the pose inputs (upload, keypoint JSON,
the drag editor, the JSON download) on the right; below them the pose ControlNet sees and the
generated images side by side, and a status line that shows what happened, errors included.
Every callback is guarded: an exception becomes a message in the status line, never a crash.

Uploads arrive as files (``gr.UploadButton``), never decoded by Gradio: the app checks the byte
size and the pixel count from the header (:func:`~poseguide.app.core.read_upload`) before
anything decodes the image, and every refusal is the app's own one-line message. Gradio's upload
cache lives in the backend's temp folder, which the app removes at exit and on SIGTERM/SIGINT.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home; set before import

import gradio as gr

from poseguide.app.core import (
    MAX_IMAGES,
    MAX_STEPS,
    AppBackend,
    AppLimits,
    PoseResult,
    error_message,
    model_choices,
)
from poseguide.app.editor import EDITOR_CSS, EDITOR_JS, EDITOR_TEMPLATE, editor_props
from poseguide.config import Config
from poseguide.errors import InputError, classify
from poseguide.utils.io import writing

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Gradio's upload cache: read by every component when it is built, by the server when it starts
# and on every request (uploads must be inside it), so it is set for the process.
GRADIO_CACHE_ENV = "GRADIO_TEMP_DIR"
DELETE_CACHE = (3600, 86400)  # (every, older than) seconds: a long-running server's old uploads
DEFAULT_PROMPT = "a person standing in a park, photograph"
# Small generated images are scaled up in the page: keep their pixels sharp.
PAGE_CSS = """
#pg-pose img, #pg-gallery img { image-rendering: pixelated; }
#pg-pose img { width: 100%; height: 100%; object-fit: contain; }
#pg-status { min-height: 2.5em; }
"""
INTRO = (
    "## poseguide: pose-guided image generation\n"
    "Give a pose (upload a photo and its pose is estimated, a skeleton image, or a keypoint "
    "JSON; or drag the joints in the editor), write a prompt and generate. Drag a joint to move "
    "it; double-click a joint to hide or show it (hidden joints are hollow)."
)


def _theme() -> Any:
    """The default theme with system fonts: the stock one fetches web fonts, and this app
    works offline."""
    return gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"],
        font_mono=["ui-monospace", "monospace"],
    )


def _guarded(fn: Callable[..., tuple], outputs: int) -> Callable[..., tuple]:
    """``fn`` with any exception turned into an error message in the last output (the status
    line); the other outputs are left as they are."""

    def run(*args: Any) -> tuple:
        try:
            return fn(*args)
        except Exception as err:
            log.warning("app: %s", err, exc_info=classify(err) != "user")
            return (*([gr.skip()] * (outputs - 1)), error_message(err))

    return run


def _pose_outputs(result: PoseResult, editor: bool = True) -> tuple:
    """(editor, pose state, pose image, download, status) for a new pose; without the editor
    when it already shows the pose (the user's own edit)."""
    rest = (result.image, result.image, result.json_path, result.message)
    if not editor:
        return rest
    return (gr.skip() if result.keypoints is None else result.keypoints, *rest)


def _settings(config: Config, controlnet: str | None, backend: AppBackend) -> tuple:
    """The left column: prompt, model, seed, images, steps, guidance and the Generate button."""
    g = config.generate
    prompt = gr.Textbox(DEFAULT_PROMPT, label="Prompt", lines=2, elem_id="pg-prompt")
    model = gr.Dropdown(
        model_choices(config, backend.default_model), value=backend.default_model,
        allow_custom_value=False, elem_id="pg-model",
        label="ControlNet: this machine's exports (start the app with --controlnet for another)",
    )  # fmt: skip
    with gr.Row():
        seed = gr.Number(0, label="Seed", precision=0, minimum=0, elem_id="pg-seed")
        count = gr.Slider(1, MAX_IMAGES, 1, step=1, label="Images", elem_id="pg-n")
    steps = gr.Slider(1, MAX_STEPS, g.steps, step=1, label="Steps", elem_id="pg-steps")
    guidance = gr.Slider(0, 20, g.guidance_scale, step=0.5, label="Guidance scale")
    run = gr.Button("Generate", variant="primary", elem_id="pg-generate")
    return run, [prompt, model, seed, steps, guidance, count]


def _pose_inputs(start: PoseResult) -> tuple:
    """The right column: the upload, the keypoint JSON upload, the editor and the download."""
    with gr.Tab("Photo or skeleton image"):
        # A file, not gr.Image: gr.Image decodes (and re-encodes) every upload before the app's
        # limits can look at it. A button, not gr.File: it takes the next file without a click
        # on "clear" first. No file_types: Gradio's refusal would not be the app's message.
        upload = gr.UploadButton(
            "Upload a photo (its pose is estimated) or an OpenPose skeleton image",
            type="filepath", elem_id="pg-upload",
        )  # fmt: skip
        kind = gr.Radio(["auto", "photo", "skeleton"], value="auto", label="The upload is")
    with gr.Tab("Keypoint JSON"):
        json_in = gr.UploadButton(
            "Upload keypoints in COCO-17 layout (a .json file, as downloaded below)",
            type="filepath", elem_id="pg-json-in",
        )  # fmt: skip
    editor = gr.HTML(
        start.keypoints, html_template=EDITOR_TEMPLATE, css_template=EDITOR_CSS,
        js_on_load=EDITOR_JS, elem_id="pg-editor", show_label=True, container=True,
        label="Pose editor (drag the joints)", **editor_props(),
    )  # fmt: skip
    with gr.Row():
        reset = gr.Button("Default pose", size="sm", elem_id="pg-reset")
        download = gr.DownloadButton(
            "Download keypoints (JSON)", value=start.json_path, size="sm", elem_id="pg-download"
        )
    return upload, kind, json_in, editor, reset, download


def build_app(
    config: Config,
    controlnet: str | None = None,
    limits: AppLimits | None = None,
    backend: AppBackend | None = None,
) -> gr.Blocks:
    """The app's page for ``config``; ``controlnet`` is the default model (see
    :func:`~poseguide.app.core.default_controlnet`). Serve it with :func:`launch`, which adds
    the upload limit, the offline theme and the page's CSS (Gradio 6 takes them at launch).
    Points Gradio's upload cache (``GRADIO_TEMP_DIR``, for the process) into the backend's
    temp folder, so the uploads go with it."""
    backend = backend or AppBackend(config, limits, controlnet)
    _cache_in(backend.tmp / "gradio")  # before any component is built
    start = backend.default_pose()
    w, h = backend.size
    with gr.Blocks(title="poseguide", delete_cache=DELETE_CACHE) as demo:
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                run, settings = _settings(config, controlnet, backend)
            with gr.Column(scale=1, min_width=320):
                upload, kind, json_in, editor, reset, download = _pose_inputs(start)
        with gr.Row(equal_height=True):
            pose_image = gr.Image(
                start.image, type="pil", format="png", interactive=False, height=320,
                label=f"Pose (the ControlNet input, {w}x{h})", elem_id="pg-pose",
            )  # fmt: skip
            gallery = gr.Gallery(
                label="Generated", format="png", columns=2, height=320, object_fit="contain",
                interactive=False, elem_id="pg-gallery",
            )  # fmt: skip
        status = gr.Markdown(start.message, elem_id="pg-status")
        pose = gr.State(start.image)  # the ControlNet input Generate uses

        def from_upload(path: str | None, kind: str) -> tuple:
            if not path:  # the kind changed before anything was uploaded
                return (gr.skip(),) * 5
            return _pose_outputs(backend.pose_from_upload(path, kind))

        def on_edit(event: gr.EventData) -> tuple:
            value = (event._data or {}).get("value")
            return _guarded(lambda: _pose_outputs(backend.pose_from_keypoints(value), False), 4)()

        def from_json(path: str | None) -> tuple:
            return _pose_outputs(backend.pose_from_json_file(path))

        pose_outs = [editor, pose, pose_image, download, status]
        upload.upload(_guarded(from_upload, 5), [upload, kind], pose_outs, api_name="upload")
        kind.input(_guarded(from_upload, 5), [upload, kind], pose_outs, api_name="upload_kind")
        json_in.upload(_guarded(from_json, 5), [json_in], pose_outs, api_name="upload_json")
        reset.click(_guarded(lambda: _pose_outputs(backend.default_pose()), 5), None, pose_outs)
        editor.edit(on_edit, None, pose_outs[1:])
        prompt, model, seed, steps, guidance, count = settings
        run.click(
            _guarded(backend.generate, 2),
            [prompt, pose, model, seed, steps, guidance, count], [gallery, status],
        )  # fmt: skip
    return demo


def _cache_in(folder: Path) -> None:
    """Put Gradio's upload cache in ``folder`` (the backend's temp folder, which the app
    removes) for this process; a cache the user chose is replaced while the app runs (choose
    where the temp folder goes with TMPDIR)."""
    with writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
    os.environ[GRADIO_CACHE_ENV] = str(folder)


def launch(
    config: Config,
    host: str = "127.0.0.1",
    port: int = 7860,
    controlnet: str | None = None,
    share: bool = False,
    limits: AppLimits | None = None,
    block: bool = True,
    backend: AppBackend | None = None,
) -> gr.Blocks | None:
    """Serve the app on ``host:port`` (default: this machine only).

    Uploads over ``limits.max_upload_bytes`` are refused by the app with its own message
    (Gradio cuts off only uploads over :attr:`~poseguide.app.core.AppLimits.transport_bytes`),
    images over ``limits.max_pixels`` too, from their header. ``block=True`` serves until SIGINT
    (Ctrl-C) or SIGTERM, then removes the app's temp folder (uploads included) and restores the
    previous signal handlers; after SIGTERM the signal is raised again, so the process ends as
    killed by it. ``block=False`` returns once the server runs and leaves signals to the caller
    (tests; stop it with ``demo.close()``; the temp folder goes with the backend or at exit).
    ``share`` asks Gradio for a public link (needs the network). Returns the page (None when a
    signal stopped the app before the page was built).
    """
    check_port(host, port)  # before anything is built or loaded
    if host not in LOOPBACK:
        log.warning(
            "serving on %s: other machines can reach the app, and it has no login; use "
            "--host 127.0.0.1 to keep it on this machine",
            host,
        )
    backend = backend or AppBackend(config, limits, controlnet)
    options = dict(
        server_name=host, server_port=port, share=share,
        max_file_size=backend.limits.transport_bytes, prevent_thread_lock=True, show_error=True,
        ssr_mode=False, mcp_server=False, quiet=not block, theme=_theme(), css=PAGE_CSS,
    )  # fmt: skip
    if not block:
        demo = _page(config, controlnet, backend)
        demo.launch(**options)
        return demo
    return _serve_until_stopped(config, controlnet, backend, options)


def check_port(host: str, port: int) -> None:
    """Refuse, as one line naming it, a port the app cannot serve on: out of range, in use by
    another program (Gradio's own error is an OSError traceback), or a host this machine does
    not have."""
    if not 0 < port < 65536:
        raise InputError(f"--port {port}: must be between 1 and 65535")
    try:
        family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Gradio binds
            sock.bind(address)
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            raise InputError(
                f"port {port} on {host} is in use (another app or server listens on it); stop "
                f"it, or pass another port, e.g. --port {port + 1}"
            ) from None
        why = err.strerror or str(err)
        raise InputError(
            f"cannot serve on {host}:{port} ({why}); check --host and --port"
        ) from None


def _page(config: Config, controlnet: str | None, backend: AppBackend) -> gr.Blocks:
    demo = build_app(config, controlnet, backend.limits, backend)
    demo.queue(default_concurrency_limit=1, max_size=32)  # one generation at a time
    return demo


def _serve_until_stopped(
    config: Config, controlnet: str | None, backend: AppBackend, options: dict
) -> gr.Blocks | None:
    """Build, launch and serve until SIGINT or SIGTERM (handlers only in the main thread: Python
    allows no others); then stop the server and remove the backend's temp folder, whatever
    stopped it. After SIGTERM the signal is raised again under the restored handler."""
    previous_cache = os.environ.get(GRADIO_CACHE_ENV)
    main = threading.current_thread() is threading.main_thread()
    demo, leftovers = None, _gradio_leftovers()
    with _stop_on(STOP_SIGNALS if main else ()) as received:
        try:
            demo = _page(config, controlnet, backend)
            demo.launch(**options)
            demo.block_thread()  # returns on KeyboardInterrupt: what Ctrl-C and the handlers raise
        except KeyboardInterrupt:  # only before block_thread, which swallows it
            if signal.SIGTERM not in received:
                raise  # Ctrl-C during start-up: as before, the CLI says "interrupted"
        finally:
            if demo is not None:
                demo.close(verbose=False)
            backend.close()
            _restore_env(GRADIO_CACHE_ENV, previous_cache)
            for folder in leftovers:  # only if still empty: never anything Gradio put there
                with contextlib.suppress(OSError):
                    folder.rmdir()
    if signal.SIGTERM in received:
        signal.raise_signal(signal.SIGTERM)  # by default the process ends, as killed by it
    return demo


def _gradio_leftovers() -> list[Path]:
    """The folders Gradio's server makes outside the app's temp folder and leaves behind (its
    ``vibe_edit_history``, empty outside vibe mode, under the temp folder Gradio chose when it
    was imported, ``$TMPDIR/gradio``), those that do not exist yet: the app removes them after
    serving, if they are still empty, innermost first."""
    from gradio import routes

    history = Path(routes.DEFAULT_TEMP_DIR) / "vibe_edit_history"
    return [folder for folder in (history, history.parent) if not folder.exists()]


@contextlib.contextmanager
def _stop_on(signals: tuple[signal.Signals, ...]) -> Iterator[list[int]]:
    """While inside: the first of ``signals`` raises KeyboardInterrupt in the main thread (what
    Ctrl-C does by default), so the server stops and the clean-up runs; later ones are noted
    and ignored, so they cannot cut the clean-up short. Yields the signals received; restores
    the previous handlers on the way out."""
    received: list[int] = []

    def stop(signum: int, frame: Any) -> None:
        received.append(signum)
        if len(received) == 1:
            log.info("app: %s received, stopping", signal.Signals(signum).name)
            raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, stop) for sig in signals}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            # None: a handler installed outside Python; the default is the nearest we can restore.
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
