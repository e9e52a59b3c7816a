"""CAP (HumanSD's cosine-similarity AP) and the papers' per-batch aggregation of COCO AP."""

from __future__ import annotations

import numpy as np
import pytest

from poseguide.pose.coco_eval import (
    COCO_KEYPOINT_STAT_NAMES,
    coco_keypoint_ap,
    keypoint_cosine_similarity,
)
from poseguide.pose.skeleton import NUM_COCO17

ONES = np.ones(NUM_COCO17)


def _person(xy: list[tuple[float, float]]) -> np.ndarray:
    """(17, 3): the first len(xy) joints labelled (v = 2) at ``xy``, the rest unlabelled."""
    out = np.zeros((NUM_COCO17, 3))
    out[: len(xy), :2] = xy
    out[: len(xy), 2] = 2
    return out


# Three labelled joints: x = (0, 1, 2), y = (0, 2, 1).
THREE = _person([(0, 0), (1, 2), (2, 1)])


def test_cosine_similarity_known_values() -> None:
    # Corrected: scale and translation do not matter (min-max normalisation), the shape does.
    moved = THREE.copy()
    moved[:3, :2] = moved[:3, :2] * 3.0 + [40.0, -7.0]
    assert keypoint_cosine_similarity(moved, THREE, ONES, "corrected") == pytest.approx(1.0)
    # As released, the detection's y is its normalised x over the norm of its min-max y:
    # g = (x^, y^), d = (x^, x^ / |y~|) with x~ = (0, .5, 1), y~ = (0, 1, .5), |.|^2 = 1.25:
    # g.d = 1 + 0.8 / sqrt(1.25), |g| = sqrt(2), |d| = sqrt(1 + 1 / 1.25).
    expected = (1 + 0.8 / np.sqrt(1.25)) / (np.sqrt(2) * np.sqrt(1 + 1 / 1.25))
    assert expected == pytest.approx(0.904169, abs=1e-6)
    assert keypoint_cosine_similarity(THREE, THREE, ONES, "humansd") == pytest.approx(expected)
    # Only the ground truth's labelled joints count; the sigmas weigh each coordinate.
    noisy = THREE.copy()
    noisy[5:, :2] = 999.0
    assert keypoint_cosine_similarity(noisy, THREE, ONES, "corrected") == pytest.approx(1.0)
    sigmas = ONES.copy()
    sigmas[1] = 2.0  # joint 1 at (0.5, 1): x~ = (0, .25, 1), y~ = (0, .5, 1)
    mirrored = THREE.copy()
    mirrored[:3, 0] = -mirrored[:3, 0]
    plain = keypoint_cosine_similarity(mirrored, THREE, ONES, "corrected")
    weighed = keypoint_cosine_similarity(mirrored, THREE, sigmas, "corrected")
    assert plain < 0.99 and weighed != pytest.approx(plain)
    # A degenerate axis (every labelled joint on one vertical line): NaN as released, 0 here.
    line = _person([(5, 0), (5, 1), (5, 3)])
    assert np.isnan(keypoint_cosine_similarity(line, line, ONES, "humansd"))
    assert keypoint_cosine_similarity(line, line, ONES, "corrected") == 0.0
    with pytest.raises(ValueError, match="variant"):
        keypoint_cosine_similarity(THREE, THREE, ONES, "other")


def test_cap_follows_the_similarity_where_oks_does_not() -> None:
    """A detection of the right shape at twice the size: CAP (corrected) is perfect, COCO AP
    (OKS) is not; identical detections under the released similarity (0.904) match at the
    thresholds 0.50..0.90 only, so CAP is 9/10 of those images' AP."""
    gts = [THREE[None] * [40, 40, 1] + [50, 50, 0]] * 3
    gts = [g.copy() for g in gts]
    for g in gts:
        g[..., 2] = THREE[None, :, 2]
    dets = []
    for g in gts:
        d = g.copy()
        d[0, :3, :2] = (d[0, :3, :2] - 50) * 2.0 + 20.0  # the same shape, twice the size
        dets.append(d)
    scores = [np.ones(1)] * 3
    cap = coco_keypoint_ap(gts, dets, scores, similarity="cosine", cap_variant="corrected")
    ap = coco_keypoint_ap(gts, dets, scores)  # COCO's sigmas
    assert cap["AP"] == pytest.approx(1.0) and cap["AR"] == pytest.approx(1.0)
    assert ap["AP"] < 0.5 and cap["similarity"] == "cosine" and ap["similarity"] == "oks"
    released = coco_keypoint_ap(gts, gts, scores, sigmas=ONES, similarity="cosine",
                                cap_variant="humansd")  # fmt: skip
    assert released["AP"] == pytest.approx(0.9) and released["AR"] == pytest.approx(0.9)
    assert released["AP50"] == pytest.approx(1.0)


def test_per_batch_aggregation_is_the_mean_of_the_batches() -> None:
    rng = np.random.default_rng(5)
    gts, dets, scores = [], [], []
    for k in range(5):
        g = rng.uniform(20, 200, size=(1 + k % 2, NUM_COCO17, 3))
        g[..., 2] = 2
        d = g + rng.normal(0, 4 + 3 * k, size=g.shape)
        gts.append(g)
        dets.append(d[: 1 + k % 3])
        scores.append(rng.uniform(0.3, 1.0, size=len(dets[-1])))
    whole = coco_keypoint_ap(gts, dets, scores)
    batched = coco_keypoint_ap(gts, dets, scores, batch=2)
    parts = [coco_keypoint_ap(gts[i : i + 2], dets[i : i + 2], scores[i : i + 2])
             for i in (0, 2, 4)]  # fmt: skip
    assert batched["batch"] == 2 and batched["num_batches"] == 3
    for name in ("AP", "AP50", "AR"):
        assert batched[name] == pytest.approx(np.mean([p[name] for p in parts]), abs=1e-12)
    assert any(batched[n] != pytest.approx(whole[n]) for n in COCO_KEYPOINT_STAT_NAMES)
    assert "batch" not in whole
    with pytest.raises(ValueError, match="batch"):
        coco_keypoint_ap(gts, dets, scores, batch=0)


def test_the_most_salient_people_alone_are_scored() -> None:
    """Four people of areas 4000..1000 in one image: detections on the three largest are all
    of AP_clean's ground truth (AR 1) but 3/4 of the full set's; one on the smallest alone is
    ignored by AP_clean (a crowd region) and a quarter of the full recall."""
    people = np.zeros((4, NUM_COCO17, 3))
    for k in range(4):
        people[k, :, 0] = 100 * k + np.linspace(10, 60, NUM_COCO17)
        people[k, :, 1] = np.linspace(10, 200, NUM_COCO17)
        people[k, :, 2] = 2
    areas = [np.array([4000.0, 3000.0, 2000.0, 1000.0])]
    largest = coco_keypoint_ap([people], [people[:3]], [np.ones(3)], areas_per_image=areas)
    clean = coco_keypoint_ap([people], [people[:3]], [np.ones(3)], areas_per_image=areas,
                             salient=3)  # fmt: skip
    assert largest["AR"] == pytest.approx(0.75) and clean["AR"] == pytest.approx(1.0)
    assert clean["AP"] == pytest.approx(1.0) and clean["salient"] == 3
    smallest = coco_keypoint_ap([people], [people[3:]], [np.ones(1)], areas_per_image=areas)
    ignored = coco_keypoint_ap([people], [people[3:]], [np.ones(1)], areas_per_image=areas,
                               salient=3)  # fmt: skip
    assert smallest["AR"] == pytest.approx(0.25) and ignored["AR"] == 0.0
