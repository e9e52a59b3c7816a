"""Synthetic people, part 4: captions that describe each image from its sampled attributes.

The wording varies (subject nouns, sentence templates, optional details such as hair and shoes)
but always names each person's pose, the colour of their top (or dress) and the scene, and is
drawn from the sample's own random generator, so it is deterministic per seed.
"""

from __future__ import annotations

import math

import numpy as np

from poseguide.synth.draw import Outfit, article
from poseguide.synth.poses import PoseAngles

POSE_PHRASES: dict[str, tuple[str, ...]] = {
    "standing": ("standing", "standing still", "standing upright",
                 "standing with arms at the sides"),
    "walking": ("walking", "walking along", "taking a step"),
    "running": ("running", "jogging", "running fast"),
    "arms_raised": ("standing with arms raised", "raising both arms", "holding both arms up",
                    "cheering with arms in the air"),
    "arms_out": ("standing with arms stretched out to the sides",
                 "holding both arms out sideways", "standing with outstretched arms"),
    "waving": ("waving with the {side} hand", "waving", "raising the {side} hand to wave"),
    "hands_on_hips": ("standing with hands on hips", "posing with hands on the hips"),
    "sitting": ("sitting on a stool", "sitting on a wooden stool", "seated on a stool"),
    "star_jump": ("doing a star jump", "jumping with arms and legs spread",
                  "jumping with arms up and legs apart"),
    "one_leg": ("standing on one leg", "balancing on the {other} leg", "raising the {side} knee"),
    "pointing": ("pointing with the {side} arm", "pointing to the side", "pointing at something"),
    "side_stretch": ("stretching to one side", "doing a side stretch",
                     "leaning to the side with the {side} arm over the head"),
}  # fmt: skip
SUBJECTS = ("a person", "a figure", "someone", "a cartoon person", "an illustrated figure")
BUILD_WORDS = {"slim": "slim", "broad": "broad-shouldered"}
SINGLE_TEMPLATES = (
    "{subj} in {outfit}{hair} {pose}, {bg}",
    "{subj} wearing {outfit}{hair}, {pose} {bg}",
    "{bg}, {subj} in {outfit}{hair} is {pose}",
    "a drawing of {subj} {pose} {bg}, wearing {outfit}{hair}",
    "{subj} {pose} {bg}, dressed in {outfit}{hair}",
)
TWO_TEMPLATES = (
    "two people {bg}: on the left, {p0}; on the right, {p1}",
    "two people side by side {bg}, one in {o0} {pose0} and the other in {o1} {pose1}",
    "{bg}, a person in {o0} {pose0} next to a person in {o1} {pose1}",
    "a drawing of two people {bg}; the one on the left is {pose0} in {o0}, "
    "the one on the right is {pose1} in {o1}",
)
PLURAL_BOTTOMS = ("trousers", "jeans", "shorts")


def outfit_phrase(outfit: Outfit, rng: np.random.Generator) -> str:
    """E.g. "a red t-shirt and blue jeans", "a long-sleeved green dress and black shoes"."""
    if outfit.bottom == "dress":
        sleeves = "long-sleeved " if outfit.long_sleeves and rng.random() < 0.5 else ""
        items = [article(f"{sleeves}{outfit.top_color} dress")]
    else:
        bottom = f"{outfit.bottom_color} {outfit.bottom}"
        if outfit.bottom not in PLURAL_BOTTOMS:
            bottom = article(bottom)
        items = [article(f"{outfit.top_color} {outfit.top}"), bottom]
    if rng.random() < 0.3:
        items.append(f"{outfit.shoes} shoes")
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def hair_phrase(outfit: Outfit, rng: np.random.Generator) -> str:
    if rng.random() >= 0.35:
        return ""
    return f" with {'long' if outfit.long_hair else 'short'} {outfit.hair} hair"


def pose_phrase(pose: PoseAngles, rng: np.random.Generator) -> str:
    """A participle phrase for the pose ("waving with the left hand", "walking to the right")."""
    text = str(rng.choice(POSE_PHRASES[pose.family]))
    side = pose.side or "right"
    text = text.format(side=side, other="left" if side == "right" else "right")
    if pose.family in ("walking", "running") and rng.random() < 0.6:
        # Positive yaw turns the person towards the image's right.
        text += " to the right" if math.sin(math.radians(pose.yaw)) > 0 else " to the left"
    return text


def subject(pose_build: str, rng: np.random.Generator) -> str:
    noun = str(rng.choice(SUBJECTS))
    build = BUILD_WORDS.get(pose_build)
    if build and noun in ("a person", "a figure") and rng.random() < 0.3:
        noun = article(f"{build} {noun[2:]}")
    return noun


def caption(
    poses: list[PoseAngles], outfits: list[Outfit], builds: list[str], scene_phrase: str,
    rng: np.random.Generator,
) -> str:  # fmt: skip
    """Describe one image; people are given left to right. Never empty."""
    if len(poses) == 1:
        template = str(rng.choice(SINGLE_TEMPLATES))
        return template.format(
            subj=subject(builds[0], rng),
            outfit=outfit_phrase(outfits[0], rng),
            hair=hair_phrase(outfits[0], rng),
            pose=pose_phrase(poses[0], rng),
            bg=scene_phrase,
        )
    words: dict[str, str] = {"bg": scene_phrase}
    for i, (pose, outfit, build) in enumerate(zip(poses, outfits, builds, strict=True)):
        words[f"o{i}"] = outfit_phrase(outfit, rng)
        words[f"pose{i}"] = pose_phrase(pose, rng)
        words[f"p{i}"] = f"{subject(build, rng)} in {words[f'o{i}']} {words[f'pose{i}']}"
    return str(rng.choice(TWO_TEMPLATES)).format(**words)
