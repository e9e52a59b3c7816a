"""OpenPose-18 skeleton images, drawn the way ControlNet's annotators draw them.

Two reference drawings exist and differ in pixels (METHOD section 4); both are reproduced pixel for
pixel (``tests/fixtures/openpose-reference``, a copy of the shared reference renders):

* ``"controlnet10"``: the ControlNet 1.0 annotator, what ``lllyasviel/sd-controlnet-openpose`` saw
  in training. All joint circles first (joint by joint, each over all people), then limb by limb
  (each over all people) a full-colour ellipse blended in as ``0.4 * canvas + 0.6 * limb`` with
  OpenCV's rounding. Circles under a limb come out dimmed; overlapping limbs mix.
* ``"controlnet_aux"``: controlnet_aux 0.0.10. Person by person: the limbs filled, overwriting, in
  ``int(0.6 * colour)``, then that person's circles in full colour on top. controlnet_aux stores
  keypoints divided by the image width and height and multiplies them back before drawing; that
  float round trip is kept because it can move an ``int()`` truncation by one pixel (e.g. 43 of the
  701 integer rows of a 700 px tall canvas).

Both draw the first :data:`OPENPOSE18_DRAWN_LIMBS` (17) limbs, a limb half-width of 4 px and a joint
radius of 4 px in absolute pixels at any canvas size, and truncate the ellipse centre, half-length
and angle with ``int()`` as the references do. Images are RGB uint8 on a black canvas.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from poseguide.config.schema import RenderConfig
from poseguide.errors import InputError
from poseguide.pose.skeleton import (
    NUM_OPENPOSE18,
    OPENPOSE18_COLORS,
    OPENPOSE18_DRAWN_LIMBS,
    OPENPOSE18_LIMBS,
    KeypointError,
    as_people,
    coco17_to_openpose18,
)

RENDER_STYLES: tuple[str, ...] = ("controlnet10", "controlnet_aux")
DEFAULT_RENDER_STYLE = RenderConfig.style
MAX_CANVAS_PIXELS = RenderConfig.max_canvas_pixels
# A drawn joint may lie at most this many canvas sides outside the canvas (farther coordinates,
# e.g. 1e300, are a units mistake and overflow OpenCV's integer drawing).
OFF_CANVAS_LIMIT = 10

# Absolute sizes in pixels, whatever the canvas size (the annotators' `stickwidth` and radius);
# pose.render.limb_width / joint_radius set others (thinner skeletons for small images).
LIMB_HALF_WIDTH = RenderConfig.limb_width
JOINT_RADIUS = RenderConfig.joint_radius
# ControlNet 1.0: canvas = 0.4 * canvas + 0.6 * canvas_with_the_limb.
LIMB_BLEND_WEIGHT = 0.6
# controlnet_aux: limbs are filled with int(0.6 * colour).
AUX_LIMB_COLOR_FACTOR = 0.6


def check_style(style: str) -> str:
    """Return ``style`` if it is one of :data:`RENDER_STYLES`, else raise ValueError naming them."""
    if style not in RENDER_STYLES:
        valid = ", ".join(repr(s) for s in RENDER_STYLES)
        raise InputError(f"unknown skeleton render style {style!r}; valid styles are {valid}")
    return style


def limb_polygon(
    start: np.ndarray, end: np.ndarray, half_width: int = LIMB_HALF_WIDTH
) -> np.ndarray:
    """Outline of the filled ellipse drawn for a limb from ``start`` to ``end``.

    ``start`` and ``end`` are ``(x, y)`` in pixels (extra entries are ignored). The ellipse is
    centred on the midpoint, has half-length ``|end - start| / 2`` and half-width
    ``half_width`` (the annotators': :data:`LIMB_HALF_WIDTH`), and is rotated to the limb angle;
    centre, half-length and angle (in degrees) are truncated with ``int()`` like the reference
    annotators. Returns (N, 2) int32 vertices for ``cv2.fillConvexPoly``.
    """
    x0, y0, x1, y1 = float(start[0]), float(start[1]), float(end[0]), float(end[1])
    mid_x, mid_y = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    length = ((x0 - x1) ** 2 + (y0 - y1) ** 2) ** 0.5
    angle = math.degrees(math.atan2(y0 - y1, x0 - x1))
    return cv2.ellipse2Poly(
        (int(mid_x), int(mid_y)), (int(length / 2), int(half_width)), int(angle), 0, 360, 1
    )


def aux_limb_color(color: tuple[int, int, int]) -> tuple[int, int, int]:
    """The dimmed colour controlnet_aux fills limbs with: ``int(0.6 * c)`` per channel."""
    return tuple(int(float(c) * AUX_LIMB_COLOR_FACTOR) for c in color)


def canvas_limit(style: Any = None) -> int:
    """The largest canvas in pixels: a ``pose.render`` section's ``max_canvas_pixels``, else
    :data:`MAX_CANVAS_PIXELS` (a style name, None)."""
    return int(getattr(style, "max_canvas_pixels", MAX_CANVAS_PIXELS))


def check_canvas_size(
    size: Any, max_pixels: int = MAX_CANVAS_PIXELS, what: str = "canvas"
) -> tuple[int, int]:
    """``size`` as ``(width, height)`` whole positive numbers, at most ``max_pixels`` pixels
    (``pose.render.max_canvas_pixels``); an :class:`InputError` naming ``what`` (e.g.
    ``"pose.json: canvas"``) and the value otherwise.

    The one canvas check: every path that makes an image of a size it was given (skeleton
    rendering, generation sizes, ``generate --source-size``, the app's keypoint canvases)
    calls it before allocating anything.
    """
    values = list(size) if isinstance(size, (tuple, list)) else [size]
    whole = [isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values]
    if len(values) != 2 or not all(whole):
        raise InputError(f"{what} size must be two whole numbers (width, height), got {size!r}")
    width, height = int(values[0]), int(values[1])
    if width <= 0 or height <= 0:
        raise InputError(f"{what} size must be positive (width, height), got {width}x{height}")
    if width * height > max_pixels:
        raise InputError(
            f"{what} {width}x{height} = {width * height:,} pixels is over the limit of "
            f"{max_pixels:,} (pose.render.max_canvas_pixels); use a smaller size"
        )
    return width, height


def _new_canvas(
    size: tuple[int, int], canvas: np.ndarray | None, max_pixels: int, what: str
) -> np.ndarray:
    """A (H, W, 3) uint8 canvas to draw on: a copy of ``canvas``, or black."""
    width, height = check_canvas_size(size, max_pixels, what)
    if canvas is None:
        return np.zeros((height, width, 3), dtype=np.uint8)
    canvas = np.asarray(canvas)
    if canvas.shape != (height, width, 3) or canvas.dtype != np.uint8:
        raise ValueError(
            f"canvas has shape {canvas.shape} and dtype {canvas.dtype}; expected "
            f"({height}, {width}, 3) uint8 for size (width, height) = ({width}, {height})"
        )
    return canvas.copy()


def _present(people18: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(P, 18) bool: which joints are drawn; present joints must have finite coordinates within
    :data:`OFF_CANVAS_LIMIT` canvas sides of the canvas (farther ones cannot be drawn)."""
    present = people18[..., 2] > 0
    xy = people18[..., :2]
    bad = present & ~np.isfinite(xy).all(axis=-1)
    if bad.any():
        p, j = np.argwhere(bad)[0]
        raise KeypointError(
            f"person {p}, joint {j}: coordinates {people18[p, j, :2].tolist()} are not finite; "
            "mark the joint absent (third value 0) or give finite pixel coordinates"
        )
    side = max(size)
    far = present & (np.abs(np.where(present[..., None], xy, 0.0)) > OFF_CANVAS_LIMIT * side).any(
        -1
    )
    if far.any():
        p, j = np.argwhere(far)[0]
        raise KeypointError(
            f"person {p}, joint {j}: coordinates {people18[p, j, :2].tolist()} are far outside "
            f"the {size[0]}x{size[1]} canvas (at most {OFF_CANVAS_LIMIT} canvas sides away); "
            "check the keypoints' units (pixels) or mark the joint absent"
        )
    return present


def _blend_limb(canvas: np.ndarray, polygon: np.ndarray, color: tuple[int, int, int]) -> None:
    """ControlNet 1.0 limb, in place: ``0.4 * canvas + 0.6 * (canvas with the limb filled)``.

    Only the polygon's bounding box is blended: everywhere else both inputs are equal and the
    weighted sum rounds back to the same value, so the result is that of a whole-canvas blend.
    """
    height, width = canvas.shape[:2]
    x, y, w, h = cv2.boundingRect(polygon)
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
    if x0 >= x1 or y0 >= y1:
        return
    region = canvas[y0:y1, x0:x1]
    with_limb = region.copy()
    cv2.fillConvexPoly(with_limb, polygon - np.array([x0, y0], dtype=polygon.dtype), color)
    canvas[y0:y1, x0:x1] = cv2.addWeighted(
        region, 1.0 - LIMB_BLEND_WEIGHT, with_limb, LIMB_BLEND_WEIGHT, 0.0
    )


def drawing(style: Any) -> tuple[str, int, int]:
    """(style name, limb half-width, joint radius) of a style name (the annotators' sizes) or a
    ``pose.render`` section (:class:`~poseguide.config.schema.RenderConfig`: its own sizes)."""
    if isinstance(style, str):
        return check_style(style), LIMB_HALF_WIDTH, JOINT_RADIUS
    return check_style(style.style), int(style.limb_width), int(style.joint_radius)


def _draw_controlnet10(canvas: np.ndarray, people18: np.ndarray, limb: int, radius: int) -> None:
    """ControlNet 1.0 order: every circle (joint-major), then every limb (limb-major), blended."""
    present = _present(people18, (canvas.shape[1], canvas.shape[0]))
    for joint in range(NUM_OPENPOSE18):
        for person, ok in zip(people18, present[:, joint], strict=True):
            if ok:
                center = (int(person[joint, 0]), int(person[joint, 1]))
                cv2.circle(canvas, center, radius, OPENPOSE18_COLORS[joint], thickness=-1)
    for index in range(OPENPOSE18_DRAWN_LIMBS):
        a, b = OPENPOSE18_LIMBS[index]
        for person, ok in zip(people18, present[:, a] & present[:, b], strict=True):
            if ok:
                polygon = limb_polygon(person[a], person[b], limb)
                _blend_limb(canvas, polygon, OPENPOSE18_COLORS[index])


def _draw_controlnet_aux(canvas: np.ndarray, people18: np.ndarray, limb: int, radius: int) -> None:
    """controlnet_aux order: person by person, dimmed limbs (overwriting), then full circles."""
    present = _present(people18, (canvas.shape[1], canvas.shape[0]))
    height, width = canvas.shape[:2]
    scale = np.array([float(width), float(height)])
    # controlnet_aux keeps x / W and y / H and multiplies back: reproduce the float round trip.
    points = people18[..., :2] / scale * scale
    for person, ok in zip(points, present, strict=True):
        for index in range(OPENPOSE18_DRAWN_LIMBS):
            a, b = OPENPOSE18_LIMBS[index]
            if ok[a] and ok[b]:
                color = aux_limb_color(OPENPOSE18_COLORS[index])
                cv2.fillConvexPoly(canvas, limb_polygon(person[a], person[b], limb), color)
        for joint in range(NUM_OPENPOSE18):
            if ok[joint]:
                center = (int(person[joint, 0]), int(person[joint, 1]))
                cv2.circle(canvas, center, radius, OPENPOSE18_COLORS[joint], thickness=-1)


def render_openpose18(
    people18: np.ndarray,
    size: tuple[int, int],
    style: Any = DEFAULT_RENDER_STYLE,
    canvas: np.ndarray | None = None,
    max_pixels: int | None = None,
    where: str | None = None,
) -> np.ndarray:
    """Draw OpenPose-18 people as a ControlNet skeleton image.

    Args:
        people18: (P, 18, 3) or (18, 3) float ``(x, y, v)`` in pixels, OpenPose-18 order; a joint
            is drawn when ``v > 0`` (its coordinates are ignored otherwise). Any P, including 0.
        size: ``(width, height)`` of the image in pixels.
        style: one of :data:`RENDER_STYLES` (see the module docstring), or a ``pose.render``
            section, which also sets the limb half-width and joint radius (:func:`drawing`).
        canvas: optional (H, W, 3) uint8 RGB image to draw on (not modified); black if None.
        max_pixels: the largest canvas accepted (:func:`check_canvas_size`); None: the
            style's (:func:`canvas_limit`).
        where: names the keypoints (their file) in errors, e.g. a joint far off the canvas.

    Returns:
        (H, W, 3) uint8 RGB image, values in [0, 255].
    """
    name, limb, radius = drawing(style)
    people18 = as_people(people18, NUM_OPENPOSE18)
    limit = canvas_limit(style) if max_pixels is None else max_pixels
    out = _new_canvas(size, canvas, limit, f"{where}: canvas" if where else "canvas")
    draw = _draw_controlnet10 if name == "controlnet10" else _draw_controlnet_aux
    try:
        draw(out, people18, limb, radius)
    except KeypointError as err:
        if where is None:
            raise
        raise KeypointError(f"{where}: {err}") from None
    return out


def render_skeleton(
    people: np.ndarray,
    size: tuple[int, int],
    style: Any = DEFAULT_RENDER_STYLE,
    min_score: float = 0.0,
    max_pixels: int | None = None,
    where: str | None = None,
) -> np.ndarray:
    """Draw COCO-17 people as a ControlNet OpenPose skeleton image.

    Args:
        people: (P, 17, 3) COCO-17 ``(x, y, v)`` in pixels (also (17, 3) or flat COCO lists); a
            joint is drawn when ``v > min_score``. The neck is the shoulder midpoint and is drawn,
            with its limbs, only when both shoulders are.
        size: ``(width, height)`` of the image in pixels.
        style: one of :data:`RENDER_STYLES` (default ControlNet 1.0), or a ``pose.render``
            section (:func:`drawing`).
        min_score: visibility or confidence threshold (0 keeps every labelled joint).
        max_pixels: the largest canvas accepted; None: the style's (:func:`canvas_limit`).
        where: names the keypoints (their file) in errors.

    Returns:
        (H, W, 3) uint8 RGB image, values in [0, 255].
    """
    drawing(style)
    people18 = coco17_to_openpose18(people, min_score)
    return render_openpose18(people18, size, style, max_pixels=max_pixels, where=where)
