"""``poseguide explain-loss``: the thesis' Fig. 4.2 for one training sample.

It runs the training step's own code (:func:`poseguide.train.step.loss_terms`, the function every
optimizer step calls) on one row with the row's own noise, at a chosen timestep, and shows what
stage 2 weighs: the image, the pose, the decoded prediction error M, the estimator heatmap H,
the binary mask H_M, the four channels of H_E with their ranges, and the weight map
``1 + w * H_E``. The tensors are saved beside the PNG (``.safetensors``) so the figure can be
checked against the loss.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as safetensors_bytes

from poseguide.config import Config
from poseguide.data.dataset import PoseDataset, collate, placed
from poseguide.data.preprocess import prepare
from poseguide.data.sources import open_source
from poseguide.paths import RunPaths
from poseguide.pose.api import estimator_from_config
from poseguide.pose.skeleton import COCO17_LIMBS, COCO17_NAMES
from poseguide.pseudo import pseudo_estimator_config, pseudo_rows
from poseguide.train.setup import TrainingError, controlnet_for_stage, make_trainer
from poseguide.train.step import epoch_key, loss_terms
from poseguide.utils.images import figure_to_image, pyplot
from poseguide.utils.io import atomic_save_image, atomic_write_bytes, atomic_write_json


def _stage(config: Config, name: str | None) -> tuple[int, Any]:
    stages = config.train.stages
    if name is None:
        heat = [i for i, s in enumerate(stages) if s.loss.kind in ("heatmap", "reward")]
        if not heat:
            raise TrainingError("no stage uses the heatmap or reward loss; pass --stage NAME")
        return heat[0], stages[heat[0]]
    names = [s.name for s in stages]
    if name not in names:
        raise TrainingError(f"unknown stage {name!r}; the config has {names}")
    return names.index(name), stages[names.index(name)]


def _row(source: Any, sample_id: str) -> int:
    ids = source.ids()
    if sample_id not in ids:
        raise TrainingError(f"sample {sample_id!r} is not in {source.name} (first ids: {ids[:5]})")
    return ids.index(sample_id)


def _controlnet(config: Config, frozen: Any, index: int, controlnet: str | None) -> Any:
    """The given ControlNet, else this stage's export, else the previous stage's, else from_unet."""

    paths = RunPaths.of(config)
    exports = [paths.export(s.name) for s in config.train.stages[: index + 1]][::-1]
    found = next((str(p) for p in exports if (p / "config.json").is_file()), None)
    init = controlnet or found or "unet"
    stage = config.train.stages[index]
    return controlnet_for_stage(frozen, stage, init, None, config.run.seed + index).eval()


def explain_loss(
    config: Config, sample_id: str, timestep: int, out: str | Path, stage: str | None = None,
    controlnet: str | None = None,
) -> dict:  # fmt: skip
    """Write the figure (``out``), its tensors and a JSON summary; return the summary."""

    index, spec = _stage(config, stage)
    trainer = make_trainer(config)
    steps = trainer.frozen.parts.scheduler.config.num_train_timesteps
    if not 0 <= timestep < steps:
        raise TrainingError(f"--timestep must be in [0, {steps}), got {timestep}")
    source = open_source(config.data.train, config.data.max_image_pixels)
    row = _row(source, sample_id)
    data = replace(config.data, hflip=0.0, caption_dropout=0.0)
    dataset = PoseDataset(source, [row], data, config.pose.render, config.run.seed)
    item = dataset[0]
    if item["keypoints"] is None and spec.loss.kind == "reward":
        item["pseudo_keypoints"], item["pseudo_areas"] = _pseudo(config, source, row, data)
    batch = collate([item])
    model = _controlnet(config, trainer.frozen, index, controlnet)
    with torch.no_grad():  # the training step's own code, the row's own noise (epoch 0)
        terms = loss_terms(trainer, model, batch, spec, epoch_key(index, 0), timestep, debug=True)
    return _write(out, spec, batch, terms, timestep, sample_id)


def _pseudo(config: Config, source: Any, row: int, data: Any) -> tuple[np.ndarray, ...]:
    """The row's pseudo ground truth on the training canvas, by the latent cache's own rule
    (:func:`poseguide.pseudo.pseudo_rows`: ``pose.estimator`` on the original image)."""

    sample = source.load(row)
    estimator = estimator_from_config(pseudo_estimator_config(config))
    found = pseudo_rows(estimator, [sample])[0]
    item = prepare(sample, row, data, config.pose.render, config.run.seed, 0)
    return placed(found, item.placement)


def _write(out: str | Path, spec: Any, batch: dict, terms: dict, t: int, sample_id: str) -> dict:
    out = Path(out)
    raw = terms["_debug"]
    debug = {k: v.detach().float().cpu() for k, v in raw.items() if isinstance(v, torch.Tensor)}
    if "h_e" in debug:
        debug["weight"] = 1.0 + spec.loss.weight * debug["h_e"]
    summary = {"sample": sample_id, "stage": spec.name, "timestep": t,
               **{k: float(v[0]) for k, v in terms.items() if not k.startswith("_")}}  # fmt: skip
    reward = spec.loss.kind == "reward"
    if reward:  # one sample: its reward terms are the values themselves
        for part, name in (("reward_sum", "reward"), ("reward_oks_sum", "reward_oks"),
                           ("reward_people", "people"), ("reward_pseudo", "pseudo")):  # fmt: skip
            summary[name] = summary.pop(part)
        summary.update(_reward_summary(spec, raw, t))
        for key, value in (raw.get("reward_details") or [{}])[0].items():
            debug[f"reward_{key}"] = value.float()[None]
    tensors = {k: v[0].contiguous() for k, v in debug.items()}
    atomic_write_bytes(out.with_suffix(".safetensors"), safetensors_bytes(tensors))
    atomic_write_json(out.with_suffix(".json"), summary)
    figure = _reward_figure(batch, raw, debug, summary) if reward else _figure(
        batch, debug, summary, spec.loss.weight)  # fmt: skip
    atomic_save_image(out, figure)
    return summary


def _reward_summary(spec: Any, raw: dict, t: int) -> dict:
    """The reward's numbers for the JSON: whether it applied, its value, OKS per joint."""
    rewarded = bool(raw.get("reward_rows"))
    out: dict[str, Any] = {"rewarded": rewarded, "reward_loss_kind": spec.loss.reward_loss,
                           "reward_timestep_max": spec.loss.reward_timestep_max}  # fmt: skip
    if not rewarded:
        too_late = t > spec.loss.reward_timestep_max
        out["why_not_rewarded"] = "t > reward_timestep_max" if too_late else "no target people"
        return out
    details = raw["reward_details"][0]
    out["joint_oks"] = [[None if np.isnan(v) else round(float(v), 6) for v in person]
                        for person in details["joint_oks"].numpy()]  # fmt: skip
    out["matched"] = details["matched"].tolist()
    out["pseudo_ground_truth"] = bool(raw["reward_targets"][0].pseudo)
    return out


def _skeleton(ax: Any, people: np.ndarray, colour: str, label: str) -> None:
    for k, person in enumerate(people):
        xy, present = person[:, :2], person[:, 2] > 0
        for a, b in COCO17_LIMBS:
            if present[a] and present[b]:
                ax.plot(xy[[a, b], 0], xy[[a, b], 1], color=colour, linewidth=1.5)
        ax.scatter(xy[present, 0], xy[present, 1], s=8, color=colour,
                   label=label if k == 0 else None)  # fmt: skip


def _reward_figure(batch: dict, raw: dict, debug: dict, summary: dict) -> Any:
    """Noisy input, the one-step prediction with the target (green) and predicted (red)
    skeletons over it, OKS per joint, the reward value."""

    fig, axes = pyplot().subplots(1, 4, figsize=(17, 4.6))
    _show(axes[0], batch["conditioning"][0].permute(1, 2, 0).numpy(), "pose (condition)")
    for ax in axes[1:]:
        ax.axis("off")
    if summary["rewarded"]:
        noisy = debug["reward_noisy"][0].permute(1, 2, 0).numpy()
        _show(axes[1], noisy, f"noisy input z_t, t = {summary['timestep']} (decoded)")
        predicted = debug["reward_images"][0].permute(1, 2, 0).numpy()
        _show(axes[2], predicted, "one-step prediction x0 (decoded)")
        target = raw["reward_targets"][0].keypoints
        scale = predicted.shape[1] / batch["conditioning"].shape[-1]
        shown = target.copy()
        shown[..., :2] *= scale
        _skeleton(axes[2], shown, "lime", "target" + (" (pseudo)" if summary[
            "pseudo_ground_truth"] else ""))  # fmt: skip
        found = np.concatenate([debug["reward_keypoints"][0].numpy() * scale,
                                target[..., 2:]], axis=-1)  # fmt: skip
        _skeleton(axes[2], found[np.asarray(summary["matched"])], "red", "predicted")
        axes[2].legend(loc="lower right", fontsize=7)
        joints = np.asarray(summary["joint_oks"], dtype=float)  # None (unlabelled) -> NaN
        labelled = (~np.isnan(joints)).sum(axis=0)
        joint = np.where(labelled > 0, np.nansum(joints, axis=0) / np.maximum(labelled, 1), 0.0)
        axes[3].axis("on")
        axes[3].barh(range(len(COCO17_NAMES)), joint, color="tab:blue")
        axes[3].set_yticks(range(len(COCO17_NAMES)), COCO17_NAMES, fontsize=6)
        axes[3].invert_yaxis()
        axes[3].set_xlim(0, 1)
        axes[3].set_title("OKS per joint (people averaged)", fontsize=8)
    else:
        axes[1].text(0.05, 0.5, f"not rewarded: {summary['why_not_rewarded']}", fontsize=9)
    fig.suptitle(f"{summary['stage']}, t = {summary['timestep']}: loss {summary['loss']:.4f}, "
                 f"reward ({summary['reward_loss_kind']}) {summary['reward']:.4f}, OKS "
                 f"{summary['reward_oks']:.4f}", fontsize=10)  # fmt: skip
    return figure_to_image(fig, dpi=90)


def _show(ax: Any, array: np.ndarray, title: str, cmap: str | None = None) -> None:
    image = ax.imshow(array, cmap=cmap)
    ax.set_title(title, fontsize=8)
    ax.axis("off")
    if cmap is not None:
        ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.02)


def _figure(batch: dict, debug: dict, summary: dict, weight: float) -> Any:
    fig, axes = pyplot().subplots(2, 5, figsize=(16, 6.6))
    image = (batch["pixel_values"][0].permute(1, 2, 0).numpy() + 1) / 2
    _show(axes[0, 0], image.clip(0, 1), f"image {summary['sample']}")
    _show(axes[0, 1], batch["conditioning"][0].permute(1, 2, 0).numpy(), "pose")
    panels = [("decoded", "M: decoded error"), ("heatmaps", "H: estimator heatmap (max)"),
              ("h_m", "H_M: binary mask")]  # fmt: skip
    for ax, (key, title) in zip(axes[0, 2:], panels, strict=True):
        if key in debug:
            value = debug[key][0]
            array = value.permute(1, 2, 0).numpy() if key == "decoded" else value.amax(0).numpy()
            _show(ax, array, title, None if key == "decoded" else "viridis")
        else:
            ax.axis("off")
    h_e = debug.get("h_e")
    for c in range(4):
        if h_e is not None:
            channel = h_e[0, c if h_e.shape[1] > 1 else 0].numpy()
            _show(
                axes[1, c],
                channel,
                f"H_E[{c}] min {channel.min():.2f} max {channel.max():.2f}",
                "coolwarm",
            )
        else:
            axes[1, c].axis("off")
    if "weight" in debug:
        w = debug["weight"][0].mean(0).numpy()
        _show(axes[1, 4], w, f"weight 1 + {weight} H_E (mean of channels)", "magma")
    else:
        axes[1, 4].axis("off")
    fig.suptitle(f"{summary['stage']}, t = {summary['timestep']}: loss {summary['loss']:.4f}, "
                 f"mse {summary['mse']:.4f}", fontsize=10)  # fmt: skip
    return figure_to_image(fig, dpi=90)
