"""Training objectives: one module per loss kind, and the objective a stage builds once.

* :mod:`~poseguide.objectives.denoising`: stage 1's denoising loss and its target;
* :mod:`~poseguide.objectives.heatmap`: stage 2's heatmap-guided loss with its mask sources
  (HumanSD's predicted error, the ground-truth keypoints);
* :mod:`~poseguide.objectives.reward`: the pose-consistency reward, its inputs and targets;
* :mod:`~poseguide.objectives.terms`: how the logged terms are reduced and read;
* :mod:`~poseguide.objectives.objective`: :func:`build_objective` (once per stage), the one
  dispatcher :func:`stage_loss`, :func:`loss_needs` and :func:`estimator_configs`.
"""

from poseguide.objectives.denoising import denoising_loss, denoising_target
from poseguide.objectives.heatmap import (
    MASK_SOURCES,
    ground_truth_mask,
    heatmap_weighted_loss,
    predicted_error_mask,
)
from poseguide.objectives.objective import (
    LOSS_KINDS,
    LossNeeds,
    Objective,
    build_objective,
    estimator_configs,
    loss_needs,
    stage_loss,
)
from poseguide.objectives.terms import derived_terms, reduce_terms, term_reduction

__all__ = ["LOSS_KINDS", "MASK_SOURCES", "LossNeeds", "Objective", "build_objective",
           "denoising_loss", "denoising_target", "derived_terms", "estimator_configs",
           "ground_truth_mask", "heatmap_weighted_loss", "loss_needs", "predicted_error_mask",
           "reduce_terms", "stage_loss", "term_reduction"]  # fmt: skip
