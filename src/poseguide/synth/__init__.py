"""Synthetic people: procedurally drawn, posed figures with captions and exact keypoints.

A small deterministic dataset for the tests and the offline demo (``poseguide data synth``, the
``synthetic`` source kind). :mod:`~poseguide.synth.people` assembles samples and writes them as a
manifest dataset; :mod:`~poseguide.synth.poses` (pose families), :mod:`~poseguide.synth.body`
(skeletons and proportions), :mod:`~poseguide.synth.draw` (figures and clothes),
:mod:`~poseguide.synth.background` and :mod:`~poseguide.synth.caption` are its parts.
"""

from poseguide.synth.people import SynthSample, ensure_synthetic, make_sample, synthesize

__all__ = ["SynthSample", "ensure_synthetic", "make_sample", "synthesize"]
