"""Skeleton rendering: pixel-exact against the reference annotators, and the rules behind it."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from poseguide.errors import InputError
from poseguide.pose.render import (
    DEFAULT_RENDER_STYLE,
    RENDER_STYLES,
    limb_polygon,
    render_openpose18,
    render_skeleton,
)
from poseguide.pose.skeleton import (
    OPENPOSE18_COLORS,
    OPENPOSE18_DRAWN_LIMBS,
    OPENPOSE18_LIMBS,
    KeypointError,
    coco17_to_openpose18,
)

# The repo's own copy (CI runs on a clean clone); the shared folder is the source it was taken from.
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "openpose-reference"
SHARED_FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "openpose-reference"
POSES = ("standing", "arms_up", "two_people")
FIXTURE_FILES = [f"{p}.json" for p in POSES] + [
    f"{p}.{s}.png" for p in POSES for s in RENDER_STYLES
]

# Limb colour on a black canvas: 1.0 gives round(0.6 * c), controlnet_aux int(0.6 * c); for the
# palette's channel values both are this table.
DIMMED = {0: 0, 85: 51, 170: 102, 255: 153}
COCO_LEFT_SHOULDER, COCO_RIGHT_SHOULDER, COCO_LEFT_WRIST = 5, 6, 9
OP_NECK, OP_LEFT_WRIST = 1, 7
NECK_LIMBS = [i for i in range(OPENPOSE18_DRAWN_LIMBS) if OP_NECK in OPENPOSE18_LIMBS[i]]
LEFT_WRIST_LIMB = OPENPOSE18_LIMBS.index((6, 7))


def load_pose(name: str) -> tuple[tuple[int, int], np.ndarray]:
    data = json.loads((FIXTURES / f"{name}.json").read_text())
    people = np.array([p["keypoints"] for p in data["people_coco17"]], dtype=np.float64)
    return tuple(data["canvas_size"]), people.reshape(-1, 17, 3)


def load_reference(name: str, style: str) -> np.ndarray:
    return np.asarray(Image.open(FIXTURES / f"{name}.{style}.png").convert("RGB"))


def dimmed(color: tuple[int, int, int]) -> tuple[int, ...]:
    return tuple(DIMMED[c] for c in color)


def has_color(image: np.ndarray, color: tuple[int, ...]) -> bool:
    return bool(np.all(image == np.array(color, dtype=np.uint8), axis=-1).any())


def drawn_limbs(people18: np.ndarray) -> list[tuple[int, int]]:
    """(person, limb) pairs that are drawn: first 17 limbs with both joints present."""
    present = people18[..., 2] > 0
    return [
        (p, i)
        for p in range(len(people18))
        for i, (a, b) in enumerate(OPENPOSE18_LIMBS[:OPENPOSE18_DRAWN_LIMBS])
        if present[p, a] and present[p, b]
    ]


def limb_mask(people18: np.ndarray, person: int, limb: int, size: tuple[int, int]) -> np.ndarray:
    a, b = OPENPOSE18_LIMBS[limb]
    mask = np.zeros((size[1], size[0]), np.uint8)
    cv2.fillConvexPoly(mask, limb_polygon(people18[person, a], people18[person, b]), 1)
    return mask.astype(bool)


def circles_mask(people18: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    mask = np.zeros((size[1], size[0]), np.uint8)
    for x, y, v in people18.reshape(-1, 3):
        if v > 0:
            cv2.circle(mask, (int(x), int(y)), 4, 1, thickness=-1)
    return mask.astype(bool)


def one_joint(joint: int, x: float, y: float) -> np.ndarray:
    people18 = np.zeros((1, 18, 3))
    people18[0, joint] = (x, y, 2)
    return people18


def disc_rows_cols(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.nonzero(image.any(axis=-1))
    return rows, cols


# --- the reference renders ----------------------------------------------------------------------


def test_fixture_copy_is_the_shared_reference():
    if not SHARED_FIXTURES.is_dir():
        pytest.skip(f"{SHARED_FIXTURES} is absent (a clean clone of the repo): nothing to compare")
    for name in FIXTURE_FILES:
        assert (FIXTURES / name).read_bytes() == (SHARED_FIXTURES / name).read_bytes(), name


@pytest.mark.parametrize("style", RENDER_STYLES)
@pytest.mark.parametrize("name", POSES)
def test_matches_reference_render_pixel_for_pixel(name, style):
    size, people = load_pose(name)
    reference = load_reference(name, style)
    out = render_skeleton(people, size, style)
    assert out.shape == reference.shape and out.dtype == np.uint8
    differ = np.any(out != reference, axis=-1)
    assert not differ.any(), (
        f"{differ.sum()} pixels differ, first at (row, col) {np.argwhere(differ)[0]}"
    )


def test_default_style_is_controlnet10():
    size, people = load_pose("standing")
    assert DEFAULT_RENDER_STYLE == "controlnet10"
    np.testing.assert_array_equal(
        render_skeleton(people, size), load_reference("standing", "controlnet10")
    )


@pytest.mark.parametrize("style", RENDER_STYLES)
def test_limb_midpoints_have_the_dimmed_limb_colour(style):
    checked = 0
    for name in POSES:
        size, people = load_pose(name)
        people18 = coco17_to_openpose18(people)
        out = render_skeleton(people, size, style)
        limbs = drawn_limbs(people18)
        masks = {key: limb_mask(people18, *key, size) for key in limbs}
        circles = circles_mask(people18, size)
        for p, i in limbs:
            a, b = OPENPOSE18_LIMBS[i]
            x, y = (people18[p, a, :2] + people18[p, b, :2]) / 2
            col, row = int(x), int(y)
            others = [m[row, col] for key, m in masks.items() if key != (p, i)]
            if circles[row, col] or any(others):
                continue  # a circle or another limb mixes in here
            assert masks[p, i][row, col]
            assert tuple(out[row, col]) == dimmed(OPENPOSE18_COLORS[i]), (name, p, i)
            checked += 1
    assert checked >= 40


@pytest.mark.parametrize("style", RENDER_STYLES)
def test_joint_centres(style):
    """aux: full joint colour on top. 1.0: the circle, then each covering limb blended 0.4/0.6."""
    size, people = load_pose("standing")
    people18 = coco17_to_openpose18(people)
    out = render_skeleton(people, size, style)
    limbs = drawn_limbs(people18)
    masks = {key: limb_mask(people18, *key, size) for key in limbs}
    dimmed_centres = 0
    for j, (x, y, v) in enumerate(people18[0]):
        assert v > 0
        col, row = int(x), int(y)
        expected = np.array(OPENPOSE18_COLORS[j], dtype=np.float64)
        if style == "controlnet10":
            for p, i in limbs:  # in drawing order
                if masks[p, i][row, col]:
                    expected = np.round(0.4 * expected + 0.6 * np.array(OPENPOSE18_COLORS[i]))
        dimmed_centres += tuple(expected) != OPENPOSE18_COLORS[j]
        assert tuple(out[row, col]) == tuple(expected.astype(int)), (style, j)
    if style == "controlnet10":
        assert dimmed_centres >= 10  # limbs really pass over the circles
    else:
        assert dimmed_centres == 0


@pytest.mark.parametrize("name", POSES)
def test_styles_differ_only_at_circles_and_limb_overlaps(name):
    size, people = load_pose(name)
    people18 = coco17_to_openpose18(people)
    old = render_skeleton(people, size, "controlnet10")
    aux = render_skeleton(people, size, "controlnet_aux")
    circles = circles_mask(people18, size)
    coverage = sum(limb_mask(people18, p, i, size).astype(int) for p, i in drawn_limbs(people18))
    expected_region = circles | (coverage >= 2)
    differ = np.any(old != aux, axis=-1)
    assert differ.any() and (differ & circles).any()
    assert not (differ & ~expected_region).any(), np.argwhere(differ & ~expected_region)[:5]
    # Single-limb bodies are identical and not black.
    single = (coverage == 1) & ~circles
    assert single.sum() > 1000 and old[single].any()


def test_overlapping_limbs_blend_in_10_and_overwrite_in_aux():
    people18 = np.zeros((1, 18, 3))
    people18[0, 2] = (20, 50, 2)  # right shoulder
    people18[0, 3] = (80, 50, 2)  # right elbow: limb 2, horizontal
    people18[0, 5] = (50, 20, 2)  # left shoulder
    people18[0, 6] = (50, 80, 2)  # left elbow: limb 4, vertical, drawn after limb 2
    old = render_openpose18(people18, (100, 100), "controlnet10")
    aux = render_openpose18(people18, (100, 100), "controlnet_aux")
    first, second = np.array(OPENPOSE18_COLORS[2]), np.array(OPENPOSE18_COLORS[4])
    mixed = np.round(0.4 * np.round(0.6 * first) + 0.6 * second)
    assert tuple(old[50, 50]) == tuple(mixed.astype(int))
    assert tuple(aux[50, 50]) == dimmed(OPENPOSE18_COLORS[4])


def test_overlapping_people_follow_the_reference_order():
    """Not decidable from the fixtures (their people are apart); this is the references' code.

    1.0 loops limb-major (limb i of every person before limb i + 1); controlnet_aux draws person by
    person, so a later person's limbs cover an earlier person's circles.
    """
    people18 = np.zeros((2, 18, 3))
    people18[0, 5] = (50, 20, 2)  # person 0: left shoulder-elbow, limb 4, vertical
    people18[0, 6] = (50, 80, 2)
    people18[1, 2] = (20, 50, 2)  # person 1: right shoulder-elbow, limb 2, horizontal
    people18[1, 3] = (80, 50, 2)
    people18[0, 0] = (40, 50, 2)  # person 0's nose lies under person 1's limb
    old = render_openpose18(people18, (100, 100), "controlnet10")
    aux = render_openpose18(people18, (100, 100), "controlnet_aux")
    limb2, limb4 = np.array(OPENPOSE18_COLORS[2]), np.array(OPENPOSE18_COLORS[4])
    assert tuple(old[50, 50]) == tuple(np.round(0.4 * np.round(0.6 * limb2) + 0.6 * limb4))
    assert tuple(aux[50, 50]) == dimmed(OPENPOSE18_COLORS[2])
    assert tuple(aux[50, 40]) == dimmed(OPENPOSE18_COLORS[2])


# --- which joints and limbs are drawn -----------------------------------------------------------


@pytest.mark.parametrize("style", RENDER_STYLES)
@pytest.mark.parametrize("missing", [COCO_LEFT_SHOULDER, COCO_RIGHT_SHOULDER])
def test_no_neck_without_both_shoulders(style, missing):
    size, people = load_pose("standing")
    full = render_skeleton(people, size, style)
    people[0, missing, 2] = 0
    out = render_skeleton(people, size, style)
    neck_colors = [OPENPOSE18_COLORS[OP_NECK]] + [dimmed(OPENPOSE18_COLORS[i]) for i in NECK_LIMBS]
    for color in neck_colors:
        assert has_color(full, color), color
        assert not has_color(out, color), color
    assert len(NECK_LIMBS) == 5


@pytest.mark.parametrize("style", RENDER_STYLES)
def test_unlabelled_joints_draw_nothing(style):
    rng = np.random.default_rng(0)
    people = np.zeros((3, 17, 3))
    people[..., :2] = rng.uniform(0, 512, (3, 17, 2))
    assert not render_skeleton(people, (512, 512), style).any()
    assert not render_skeleton(np.zeros((0, 17, 3)), (512, 512), style).any()


@pytest.mark.parametrize("style", RENDER_STYLES)
def test_removing_a_wrist_removes_its_circle_and_limb(style):
    size, people = load_pose("standing")
    people18 = coco17_to_openpose18(people)
    full = render_skeleton(people, size, style)
    people[0, COCO_LEFT_WRIST, 2] = 0
    out = render_skeleton(people, size, style)
    wrist_color = OPENPOSE18_COLORS[OP_LEFT_WRIST]
    limb_color = dimmed(OPENPOSE18_COLORS[LEFT_WRIST_LIMB])
    assert has_color(full, wrist_color) and has_color(full, limb_color)
    assert not has_color(out, wrist_color) and not has_color(out, limb_color)
    wrist_only = np.zeros_like(people18)
    wrist_only[0, OP_LEFT_WRIST] = people18[0, OP_LEFT_WRIST]
    allowed = circles_mask(wrist_only, size) | limb_mask(people18, 0, LEFT_WRIST_LIMB, size)
    changed = np.any(full != out, axis=-1)
    assert changed.any() and not (changed & ~allowed).any()
    # The coordinates of an unlabelled joint are ignored.
    people[0, COCO_LEFT_WRIST, :2] = (3.0, 500.0)
    np.testing.assert_array_equal(render_skeleton(people, size, style), out)


def test_min_score_drops_low_confidence_joints():
    size, people = load_pose("standing")
    scores = people.copy()
    scores[..., 2] = 0.9
    scores[0, COCO_LEFT_WRIST, 2] = 0.3
    without = people.copy()
    without[0, COCO_LEFT_WRIST, 2] = 0
    for style in RENDER_STYLES:
        low = render_skeleton(scores, size, style, min_score=0.5)
        np.testing.assert_array_equal(low, render_skeleton(without, size, style))
        high = render_skeleton(scores, size, style, min_score=0.2)
        np.testing.assert_array_equal(high, render_skeleton(people, size, style))


@pytest.mark.parametrize("style", RENDER_STYLES)
def test_people_are_drawn_independently(style):
    size, people = load_pose("two_people")
    both = render_skeleton(people, size, style).astype(int)
    alone = [render_skeleton(people[i : i + 1], size, style).astype(int) for i in range(2)]
    assert alone[0].any() and alone[1].any()
    assert not (alone[0].any(axis=-1) & alone[1].any(axis=-1)).any()  # far apart
    np.testing.assert_array_equal(both, alone[0] + alone[1])


# --- sizes and canvases -------------------------------------------------------------------------


@pytest.mark.parametrize("style", RENDER_STYLES)
@pytest.mark.parametrize("size", [(64, 48), (1000, 700), (512, 512)])
def test_any_canvas_size_with_absolute_4px_sizes(style, size):
    width, height = size
    joint = render_openpose18(one_joint(0, 30.0, 20.0), size, style)
    assert joint.shape == (height, width, 3) and joint.dtype == np.uint8
    rows, cols = disc_rows_cols(joint)
    assert len(rows) == 49  # OpenCV's filled radius-4 circle
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (16, 24, 26, 34)
    limb = np.zeros((1, 18, 3))
    limb[0, 2] = (12, 24, 2)
    limb[0, 3] = (52, 24, 2)
    out = render_openpose18(limb, size, style)
    rows = np.nonzero(out[:, 32].any(axis=-1))[0]
    assert rows.tolist() == list(range(20, 29))  # half-width 4 around row 24
    assert tuple(out[24, 32]) == dimmed(OPENPOSE18_COLORS[2])


def test_aux_reproduces_the_normalised_coordinate_round_trip():
    """controlnet_aux draws at int((y / H) * H), which can be y - 1 for an integer y."""
    width, height = 1000, 700
    y = next(y for y in range(height) if (y / height) * height < y)
    people18 = one_joint(0, 500.0, float(y))
    rows_old, _ = disc_rows_cols(render_openpose18(people18, (width, height), "controlnet10"))
    rows_aux, _ = disc_rows_cols(render_openpose18(people18, (width, height), "controlnet_aux"))
    assert (rows_old.min(), rows_old.max()) == (y - 4, y + 4)
    assert (rows_aux.min(), rows_aux.max()) == (y - 5, y + 3)


@pytest.mark.parametrize("style", RENDER_STYLES)
def test_draws_on_a_given_canvas_without_modifying_it(style):
    canvas = np.full((100, 100, 3), 100, dtype=np.uint8)
    people18 = np.zeros((1, 18, 3))
    people18[0, 2] = (20, 50, 2)
    people18[0, 3] = (80, 50, 2)
    out = render_openpose18(people18, (100, 100), style, canvas=canvas)
    assert (canvas == 100).all()
    color = np.array(OPENPOSE18_COLORS[2])
    if style == "controlnet10":
        expected = tuple(np.round(0.4 * 100 + 0.6 * color).astype(int))  # blended in
    else:
        expected = dimmed(OPENPOSE18_COLORS[2])  # filled over
    assert tuple(out[50, 50]) == expected
    assert tuple(out[5, 5]) == (100, 100, 100)


def test_limbs_partly_off_canvas_match_a_whole_canvas_blend():
    """The 1.0 blend is done in the limb's bounding box; that must equal blending everything."""
    people18 = np.zeros((1, 18, 3))
    people18[0, 2] = (-15.5, 10.2, 2)
    people18[0, 3] = (30.7, -8.9, 2)
    people18[0, 4] = (70.0, 75.0, 2)
    out = render_openpose18(people18, (64, 48), "controlnet10")
    expected = np.zeros((48, 64, 3), np.uint8)
    for j in (2, 3, 4):
        x, y = people18[0, j, :2]
        cv2.circle(expected, (int(x), int(y)), 4, OPENPOSE18_COLORS[j], thickness=-1)
    for i in (2, 3):
        a, b = OPENPOSE18_LIMBS[i]
        limb = expected.copy()
        cv2.fillConvexPoly(limb, limb_polygon(people18[0, a], people18[0, b]), OPENPOSE18_COLORS[i])
        expected = cv2.addWeighted(expected, 0.4, limb, 0.6, 0)
    assert out.any()
    np.testing.assert_array_equal(out, expected)


# --- errors ---------------------------------------------------------------------------------------


def test_unknown_style_names_the_valid_ones():
    size, people = load_pose("standing")
    for call in (
        lambda: render_skeleton(people, size, "controlnet11"),
        lambda: render_openpose18(coco17_to_openpose18(people), size, "bgr"),
    ):
        with pytest.raises(ValueError, match=r"controlnet10.*controlnet_aux"):
            call()


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match=r"\(48, 64, 3\) uint8"):
        render_openpose18(np.zeros((1, 18, 3)), (64, 48), canvas=np.zeros((64, 48, 3), np.uint8))
    with pytest.raises(KeypointError, match="person 0, joint 3"):
        render_openpose18(one_joint(3, np.nan, 4.0), (64, 48))
    with pytest.raises(KeypointError):
        render_skeleton(np.zeros((2, 18, 3)), (64, 48))


# ---------------------------------------------------------------------------------------------
# Bounds: canvas sizes and coordinates (issue 11, finding 8)
# ---------------------------------------------------------------------------------------------


def _pose_file(path, people, **size):

    flat = [{"keypoints": np.asarray(p, dtype=float).ravel().tolist()} for p in people]
    path.write_text(json.dumps({**size, "people": flat}))
    return path


def test_a_huge_canvas_is_refused_before_anything_is_allocated(tmp_path, capsys) -> None:
    import tracemalloc

    from poseguide.cli import main
    from poseguide.pose.render import check_canvas_size

    person = np.array([[(10.0 + j, 10.0 + j, 2.0) for j in range(17)]])
    json_file = _pose_file(tmp_path / "p.json", person, width=64, height=64)
    tracemalloc.start()
    code = main(["pose", "render", str(json_file), "--out", str(tmp_path / "o.png"),
                 "--size", "40000", "40000"])  # fmt: skip
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert code == 2 and peak < 50 * 2**20  # a 40000x40000 canvas would be 4.8 GB
    err = capsys.readouterr().err
    assert "40000x40000 = 1,600,000,000 pixels is over the limit of 16,777,216" in err
    assert "pose.render.max_canvas_pixels" in err
    with pytest.raises(InputError, match="two whole numbers"):
        check_canvas_size((128.7, 64))
    with pytest.raises(InputError, match="two whole numbers"):
        check_canvas_size((True, 64))
    assert check_canvas_size((np.int64(64), 32)) == (64, 32)


@pytest.mark.parametrize("value", [1e300, -1e12])
def test_coordinates_far_off_the_canvas_are_one_clear_error(tmp_path, capsys, value) -> None:
    from poseguide.cli import main
    from poseguide.pose.inputs import pose_condition

    person = np.array([[(10.0 + j, 10.0 + j, 2.0) for j in range(17)]])
    person[0, 9, 0] = value  # the left wrist
    with pytest.raises(KeypointError, match=r"person 0, joint .*far outside the 64x64 canvas"):
        render_skeleton(person, (64, 64))
    json_file = _pose_file(tmp_path / "p.json", person, width=64, height=64)
    assert main(["pose", "render", str(json_file), "--out", str(tmp_path / "o.png")]) == 2
    assert f"{json_file}: person 0, joint 7: coordinates" in capsys.readouterr().err
    with pytest.raises(KeypointError, match=r"p.json: person 0, .*far outside"):  # generate, app
        pose_condition(str(json_file), (64, 64))
    person[0, 9, 2] = 0  # an absent joint's coordinates are never drawn: fine
    assert render_skeleton(person, (64, 64)).shape == (64, 64, 3)


@pytest.mark.parametrize("width", [128.7, True, "128"])
def test_a_pose_file_size_must_be_whole_numbers(tmp_path, width) -> None:
    from poseguide.pose.io import read_pose

    person = np.array([[(10.0, 10.0, 2.0)] * 17])
    json_file = _pose_file(tmp_path / "p.json", person, width=width, height=64)
    with pytest.raises(KeypointError, match="must be two whole numbers"):
        read_pose(json_file)


def test_render_section_sets_the_limb_and_joint_sizes() -> None:
    """A ``pose.render`` section draws with its own sizes; its defaults are the annotators'."""
    from poseguide.config.schema import RenderConfig
    from poseguide.synth import make_sample

    people = make_sample(1, 0, (128, 128), 0.0).keypoints
    for style in ("controlnet10", "controlnet_aux"):
        plain = render_skeleton(people, (128, 128), style)
        assert np.array_equal(render_skeleton(people, (128, 128), RenderConfig(style=style)), plain)
        thin = render_skeleton(people, (128, 128), RenderConfig(style=style, limb_width=1,
                                                                   joint_radius=1))  # fmt: skip
        drawn, thin_drawn = (plain.max(-1) > 0).sum(), (thin.max(-1) > 0).sum()
        assert 0 < thin_drawn < 0.6 * drawn
        # every thin pixel lies inside the thick drawing (same skeleton, smaller pen)
        assert ((thin.max(-1) > 0) & (plain.max(-1) == 0)).sum() == 0
