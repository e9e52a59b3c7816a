"""What the app does, as plain Python: no Gradio here, so every callback is tested directly.

:class:`AppBackend` turns uploads and edited keypoints into the skeleton image ControlNet sees
(through :func:`poseguide.generate.pose_condition`) and generates images through
:func:`poseguide.generate.generate`, the one generation path. Uploads are checked before they are
decoded: their size in bytes, then their pixel count read from the header
(:class:`AppLimits`), then a full decode, all by :func:`poseguide.utils.images.read_image`.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import logging
import shutil
import tempfile
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from poseguide.config import Config
from poseguide.errors import OOM_HINT, InputError, UserError, classify, one_line
from poseguide.generate import PoseInput, generate, guess_image_kind, pose_condition
from poseguide.models import load_pipeline, load_sd_parts, pipeline_from_parts, untrained_controlnet
from poseguide.models.controlnet import UNTRAINED, ControlNetRef, is_export
from poseguide.paths import RunPaths
from poseguide.pose.api import estimator_from_config
from poseguide.pose.io import MAX_POSE_JSON_BYTES, load_pose_json, parse_pose, pose_to_json
from poseguide.pose.render import MAX_CANVAS_PIXELS, canvas_limit, check_canvas_size
from poseguide.pose.skeleton import NUM_COCO17
from poseguide.utils.device import resolve_device
from poseguide.utils.images import ImageReadError, read_image
from poseguide.utils.io import atomic_write_json, writing

log = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_MB = 20.0  # per uploaded file; Gradio refuses larger uploads before Python
# Per uploaded image, checked from the header before decoding: the skeleton canvas limit.
DEFAULT_MAX_PIXELS = MAX_CANVAS_PIXELS
MAX_KEYPOINT_JSON_BYTES = MAX_POSE_JSON_BYTES  # keypoint JSON (uploaded, or sent by the editor)
MAX_PEOPLE = 20
MAX_IMAGES = 4  # images per click of Generate
MAX_STEPS = 150
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit seed
MAX_CACHED_PIPELINES = 2  # SD1.5 pipelines take ~4 GB each: keep the last two models used
DEFAULT_CANVAS = (512, 512)  # (width, height) of the default pose and of JSON files without one
UNTRAINED_LABEL = "untrained ControlNet (copied from the base UNet)"
UPLOAD_KINDS = ("auto", "photo", "skeleton")
EDITOR_BACKGROUND_SIDE = 384  # px: the photo under the editor's joints, sent as a data URL
# What ControlNetModel.save_pretrained(safe_serialization=True) writes: an export is complete
# only when both are there (training writes it under a temporary name, then renames it).

# A standing person as fractions of the canvas, COCO-17 order (x, y).
_DEFAULT_PERSON = (
    (0.50, 0.13), (0.53, 0.11), (0.47, 0.11), (0.56, 0.13), (0.44, 0.13),
    (0.62, 0.25), (0.38, 0.25), (0.68, 0.40), (0.32, 0.40), (0.70, 0.55), (0.30, 0.55),
    (0.58, 0.55), (0.42, 0.55), (0.60, 0.72), (0.40, 0.72), (0.61, 0.90), (0.39, 0.90),
)  # fmt: skip


class AppError(UserError, ValueError):
    """A problem with what the user gave the app; shown in the page."""


@dataclass(frozen=True)
class AppLimits:
    """What the app accepts: upload size in bytes and image size in pixels."""

    max_upload_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * 2**20)
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if self.max_upload_bytes <= 0 or self.max_pixels <= 0:
            raise InputError(f"app limits must be positive, got {self}")

    @property
    def transport_bytes(self) -> int:
        """What Gradio itself accepts on the wire (``max_file_size``): twice the app's limit, so
        a file somewhat over the limit still reaches the app and gets its message naming the
        limit, while a far larger one is cut off by Gradio while it streams in (bounded disk)."""
        return 2 * self.max_upload_bytes

    @classmethod
    def from_options(
        cls, max_upload_mb: float | None = None, max_pixels: int | None = None
    ) -> AppLimits:
        """Limits from command-line options; None keeps a default."""
        mb = DEFAULT_MAX_UPLOAD_MB if max_upload_mb is None else max_upload_mb
        return cls(int(mb * 2**20), DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels)


@dataclass(frozen=True)
class PoseResult:
    """A new pose for the page.

    ``keypoints``: the editor's new value (keypoint JSON), None to leave the editor as it is (a
    skeleton image has no keypoints). ``image``: the ControlNet input at the generation size.
    ``json_path``: the keypoints as a downloadable file, or None. ``message``: for the status line.
    """

    keypoints: str | None
    image: Image.Image
    json_path: Path | None
    message: str


def default_person(canvas: tuple[int, int] = DEFAULT_CANVAS) -> np.ndarray:
    """(1, 17, 3) keypoints of a standing person on ``canvas`` (W, H), every joint visible."""
    w, h = canvas
    return np.array([[(round(x * w), round(y * h), 2.0) for x, y in _DEFAULT_PERSON]])


def read_upload(path: str | Path, limits: AppLimits) -> Image.Image:
    """Decode an uploaded image as RGB (EXIF orientation applied) within ``limits``, with the
    one safe reader (:func:`poseguide.utils.images.read_image`): the byte size, then the pixel
    count from the header before any pixel is decoded, then a full decode.

    Raises :class:`AppError` naming the file (its name only: the server's temp path means
    nothing to the user).
    """
    path = Path(path)
    try:
        return read_image(path, limits.max_pixels, "uploaded image", exif=True,
                          max_bytes=limits.max_upload_bytes, limit_name="--max-pixels")  # fmt: skip
    except ImageReadError as err:
        raise AppError(_upload_problem(path, err)) from None


def _upload_problem(path: Path, err: ImageReadError) -> str:
    """What the page says about an upload the reader refused: the file's name, never the
    server's temp path, and the limit or the problem."""
    name, facts = path.name, err.facts
    if "bytes" in facts:
        return (f"{name} is {facts['bytes'] / 2**20:.1f} MB, over the upload limit of "
                f"{facts['limit'] / 2**20:.1f} MB; use a smaller file")  # fmt: skip
    if "pixels" in facts:
        return (f"{name} is {facts['width']}x{facts['height']} = {facts['pixels']:,} pixels, "
                f"over the limit of {facts['limit']:,} pixels; use a smaller image")  # fmt: skip
    if facts.get("pil_limit"):
        return f"{name} has more pixels than Pillow allows; use a smaller image"
    if err.problem == "missing_file":
        return f"{name} is no longer on the server; upload it again"
    if err.problem == "unreadable_image" and "reason" in facts:
        return f"{name} is not a readable image ({facts['reason']}); upload a PNG, JPEG or WebP"
    detail = err.detail.replace(f"uploaded image {path}", name).replace(str(path), name)
    return f"{detail}; upload a photo or a skeleton image" if err.problem == "zero_size" else detail


def data_url(image: Image.Image, side: int = EDITOR_BACKGROUND_SIDE) -> str:
    """A small JPEG of ``image`` (longer side at most ``side``) as a ``data:`` URL."""
    small = image.copy()
    small.thumbnail((side, side))
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=70)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _canvas_for(people: np.ndarray) -> tuple[int, int]:
    """A canvas for keypoints given without one: the default, grown to hold every joint."""
    labelled = people[people[..., 2] > 0][:, :2]
    if not len(labelled):
        return DEFAULT_CANVAS
    far = np.ceil(labelled.max(axis=0) * 1.05).astype(int)
    return max(DEFAULT_CANVAS[0], int(far[0])), max(DEFAULT_CANVAS[1], int(far[1]))


def _summary(people: np.ndarray, canvas: tuple[int, int]) -> str:
    count = len(people)
    joints = int((people[..., 2] > 0).sum())
    who = "1 person" if count == 1 else f"{count} people"
    shown = f"{joints} of {NUM_COCO17 * count} joints shown"
    return f"{who}, {shown}, on a {canvas[0]}x{canvas[1]} canvas"


def default_controlnet(config: Config) -> str:
    """The run's newest export (its last stage's, else the one before, ...), else
    :data:`UNTRAINED`."""
    paths = RunPaths.of(config)
    for stage in reversed([s.name for s in config.train.stages]):
        if is_export(paths.export(stage)):
            return str(paths.export(stage))
    return UNTRAINED


def model_choices(config: Config, extra: str | None = None) -> list[tuple[str, str]]:
    """(label, value) pairs for the model menu: ``extra`` (the model given at start-up), every
    complete export (:func:`is_export`) under ``run.output_dir/*/exports/``, and the untrained
    ControlNet. The app serves these and no other model."""
    choices = [(extra, extra)] if extra else []
    for folder in sorted(Path(config.run.output_dir).glob("*/exports/*")):
        value = str(folder)
        if value != extra and is_export(folder):
            choices.append((value, value))
    return [*choices, (UNTRAINED_LABEL, UNTRAINED)]


def _check_int(name: str, value: Any, low: int, high: int) -> int:
    """``value`` as an int in [low, high]; whole floats (a slider's 4.0) count as ints."""
    whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not whole:
        raise AppError(f"{name} must be a whole number, got {value!r}")
    if not low <= int(value) <= high:
        raise AppError(f"{name} must be between {low} and {high}, got {int(value)}")
    return int(value)


class AppBackend:
    """The app's state and callbacks: limits, the pose estimator and a cache of pipelines.

    Args:
        config: the resolved config (model.base, generate, pose, data.resolution, run.device).
        limits: what uploads may be.
        controlnet: the default model (a folder or hub id); None: :func:`default_controlnet`.
        estimator: a pose estimator (tests pass a fake); None: the configured one, on first use.
    """

    def __init__(
        self,
        config: Config,
        limits: AppLimits | None = None,
        controlnet: str | None = None,
        estimator: Any = None,
    ) -> None:
        self.config = config
        self.limits = limits or AppLimits()
        self.default_model = controlnet or default_controlnet(config)
        self.size = (config.data.resolution, config.data.resolution)
        self._estimator = estimator
        self._pipes: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        # Keypoint downloads, and Gradio's upload cache when the page is built (ui.build_app).
        with writing(tempfile.gettempdir()):
            self.tmp = Path(tempfile.mkdtemp(prefix="poseguide-app-"))
        self._remove_tmp = weakref.finalize(self, shutil.rmtree, self.tmp, True)

    def close(self) -> None:
        """Remove :attr:`tmp` and everything in it (also done at normal exit); idempotent."""
        self._remove_tmp()

    # -- poses ---------------------------------------------------------------------------------

    @property
    def estimator(self) -> Any:
        if self._estimator is None:
            self._estimator = estimator_from_config(self.config.pose.estimator)
        return self._estimator

    def default_pose(self) -> PoseResult:
        """A standing person on the default canvas: what the page starts with."""
        return self.pose_from_people(default_person(), DEFAULT_CANVAS, "Default pose")

    def pose_from_people(
        self,
        people: np.ndarray,
        canvas: tuple[int, int],
        what: str,
        background: str | None = None,
    ) -> PoseResult:
        """Render (P, 17, 3) keypoints on ``canvas`` (W, H) at the generation size.

        ``background``: a ``data:image/...`` URL the editor shows under the joints (the photo);
        it goes into the editor's value only, not into the downloadable JSON.
        """
        if len(people) > MAX_PEOPLE:
            raise AppError(f"{what}: {len(people)} people; at most {MAX_PEOPLE} are supported")
        render = self.config.pose.render
        canvas = check_canvas_size(canvas, canvas_limit(render), f"{what}: canvas")
        cond = pose_condition(PoseInput.keypoints(people, canvas), self.size, render)
        data = pose_to_json(people, size=canvas)
        text = json.dumps(data)
        # One file per distinct pose: the download keeps the name pose.json.
        digest = hashlib.sha1(text.encode()).hexdigest()[:16]
        path = atomic_write_json(self.tmp / digest / "pose.json", data)
        editor = json.dumps({**data, "background": background}) if background else text
        return PoseResult(editor, cond.image, path, f"{what}: {_summary(people, canvas)}.")

    def pose_from_upload(self, path: str | Path | None, kind: str = "auto") -> PoseResult:
        """A photo (its pose estimated) or a skeleton image (used as is); ``kind`` as
        :data:`UPLOAD_KINDS` (``auto`` guesses with :func:`guess_image_kind`)."""
        if not path:
            raise AppError("no image uploaded")
        if kind not in UPLOAD_KINDS:
            raise AppError(f"unknown upload kind {kind!r}; choose one of {', '.join(UPLOAD_KINDS)}")
        name = Path(path).name
        image = read_upload(path, self.limits)
        if kind == "auto":
            kind = guess_image_kind(image)
        if kind == "skeleton":
            cond = pose_condition(PoseInput.skeleton(image, source=name), self.size)
            return PoseResult(
                None,
                cond.image,
                None,
                f"{name}: used as a skeleton image ({image.width}x{image.height}), resized to "
                f"{self.size[0]}x{self.size[1]}. It has no keypoints to edit or download: upload "
                "a photo or a keypoint JSON for those (or set the kind to photo).",
            )
        start = time.perf_counter()
        render = self.config.pose.render
        check_canvas_size(image.size, canvas_limit(render), f"{name}: photo")  # drawn at its size
        found = pose_condition(
            PoseInput.photo(image, source=name), image.size, render, self.estimator,
            render.min_score,
        )  # fmt: skip
        people = found.people[(found.people[..., 2] > 0).any(axis=1)]
        took = time.perf_counter() - start
        what = f"{name}: pose estimated in {took:.1f} s"
        return self.pose_from_people(people, image.size, what, background=data_url(image))

    def pose_from_keypoints(
        self, value: str | dict | None, what: str = "Edited pose"
    ) -> PoseResult:
        """The editor's keypoint JSON (a string or mapping, layout of :mod:`poseguide.pose.io`)."""
        if value is None or value == "":
            raise AppError(f"{what}: no keypoints")
        if isinstance(value, str):
            if len(value) > MAX_KEYPOINT_JSON_BYTES:
                raise AppError(f"{what}: the keypoint JSON is over {MAX_KEYPOINT_JSON_BYTES} bytes")
            value = load_pose_json(value, what)
        pose = parse_pose(value, what)
        return self.pose_from_people(pose.people, pose.size or _canvas_for(pose.people), what)

    def pose_from_json_file(self, path: str | Path | None) -> PoseResult:
        """An uploaded keypoint JSON file (see :mod:`poseguide.pose.io`); errors name the file,
        never the server's temp path."""
        if not path:
            raise AppError("no keypoint file uploaded")
        path = Path(path)
        name = path.name
        try:
            size = path.stat().st_size
            if size > MAX_KEYPOINT_JSON_BYTES:
                raise AppError(f"{name} is {size / 2**20:.1f} MB, over the keypoint file limit "
                               f"of {MAX_KEYPOINT_JSON_BYTES / 2**20:.0f} MB")  # fmt: skip
            data = path.read_bytes()
        except FileNotFoundError:
            raise AppError(f"{name} is no longer on the server; upload it again") from None
        if not data.strip():
            raise AppError(f"{name} is empty; upload a keypoint JSON file (as downloaded below)")
        pose = parse_pose(load_pose_json(data, name), name)
        return self.pose_from_people(pose.people, pose.size or _canvas_for(pose.people), name)

    # -- generation ----------------------------------------------------------------------------

    def pipeline(self, model: str | None) -> Any:
        """The pipeline for ``model`` (one of :func:`model_choices`), loaded once. Any other
        value is refused without a word about what is on the server at that path."""
        model = (model or self.default_model).strip()
        offered = [value for _, value in model_choices(self.config, self.default_model)]
        if model not in offered:
            raise AppError(f"{model!r} is not one of the app's models; choose one from the menu")
        with self._lock:  # one load at a time; generation itself is one at a time (the queue)
            if model in self._pipes:
                self._pipes.move_to_end(model)
                return self._pipes[model]
            pipe = self._load(model)
            self._pipes[model] = pipe
            while len(self._pipes) > MAX_CACHED_PIPELINES:
                self._pipes.popitem(last=False)
            return pipe

    def _load(self, model: str) -> Any:
        cfg, m = self.config, self.config.model
        device = resolve_device(cfg.run.device)
        start = time.perf_counter()
        if ControlNetRef.parse(model).kind == "untrained":
            parts = load_sd_parts(m.base, m.revision, m.variant, device=device)
            controlnet = untrained_controlnet(parts, cfg.run.seed).eval().requires_grad_(False)
            pipe = pipeline_from_parts(parts, controlnet, cfg.generate)
        else:
            pipe = load_pipeline(m.base, model, cfg.generate, device, m.revision, m.variant)
        log.info("loaded %s on %s in %.1f s", model, device, time.perf_counter() - start)
        return pipe

    def generate(
        self,
        prompt: str,
        pose: Image.Image | None,
        model: str | None = None,
        seed: Any = 0,
        steps: Any = None,
        guidance: Any = None,
        n: Any = 1,
    ) -> tuple[list[Image.Image], str]:
        """``n`` images of ``prompt`` in ``pose`` (a skeleton image); seeds ``seed .. seed+n-1``.

        ``steps`` and ``guidance`` default to the config's. Returns the images (generation size)
        and a one-line summary.
        """
        if pose is None:
            raise AppError("no pose yet: upload a photo, a skeleton image or a keypoint JSON")
        seed = _check_int("seed", seed, 0, MAX_SEED - MAX_IMAGES)  # seed + i must fit too
        n = _check_int("number of images", n, 1, MAX_IMAGES)
        g = self.config.generate
        steps = _check_int("steps", g.steps if steps is None else steps, 1, MAX_STEPS)
        guidance = float(g.guidance_scale if guidance is None else guidance)
        if not 0.0 <= guidance <= 50.0:
            raise AppError(f"guidance must be between 0 and 50, got {guidance}")
        cfg = dataclasses.replace(g, steps=steps, guidance_scale=guidance)
        model = (model or self.default_model).strip()
        pipe = self.pipeline(model)
        start = time.perf_counter()
        seeds = [seed + i for i in range(n)]
        images = generate(pipe, prompt or "", pose.convert("RGB"), seeds, cfg, self.size)
        took = time.perf_counter() - start
        label = UNTRAINED_LABEL if model == UNTRAINED else model
        span = f"seed {seed}" if n == 1 else f"seeds {seed}-{seeds[-1]}"
        return images, (
            f"Generated {n} image{'s' if n > 1 else ''} ({self.size[0]}x{self.size[1]}, {span}, "
            f"{steps} steps, guidance {guidance:g}) with {label} in {took:.1f} s."
        )


def error_message(err: BaseException) -> str:
    """The status line for an error, classified as the CLI does (:func:`poseguide.errors.classify`):
    the message of what the user can fix; the type (traceback in the server log) for the rest."""
    kind = classify(err)
    if kind == "user":
        text = one_line(err)
    elif kind == "oom":
        text = f"{type(err).__name__}: {OOM_HINT} (see the server log)"
    else:
        text = f"{type(err).__name__}: {err} (see the server log)"
    return f"**Error:** {escape_markdown(text)}"


def escape_markdown(text: str) -> str:
    """``text`` with Markdown's special characters escaped, so it shows as written."""
    return "".join("\\" + c if c in "\\`*_[]<>#|" else c for c in text)
