#!/usr/bin/env python
"""Seconds per training step: the trainer's own step function vs a bare ControlNet step.

    .venv/bin/python bench/train_step.py                          # tiny @ 64 px, SD1.5-size @ 256
    .venv/bin/python bench/train_step.py --models sd15 --sizes 256,512 --steps 2 --warmup 1
    .venv/bin/python bench/train_step.py --device cuda --precision bf16 --sizes 512 --steps 20

For each (model, size) a child process (so that peak memories do not mix) sets a run up exactly
as ``poseguide train`` does (``poseguide.train.runner._make_run``: frozen parts, synthetic data,
latent cache; then the ControlNet, AdamW, LR schedule and ``accelerator.prepare`` as in
``train_stage``) and times:

* trainer: ``poseguide.train.step.optimizer_step``, the one step ``poseguide train`` runs (next
  batch from the DataLoader, ``loss_terms``: ``make_inputs``, ControlNet + UNet under the
  accelerator's autocast, loss; backward, non-finite check, gradient clipping, AdamW, LR
  schedule, metric reduction) on a stage state from ``poseguide.train.loop.start_stage`` (the
  same optimizer factory and gradient checkpointing as training), for stage 1 and for stage 2
  with the heatmap loss from ``ground_truth`` and from ``predicted_error`` masks;
* bare: a hand-written loop on one fixed batch of inputs: ``controlnet(...)`` -> ``unet(...,
  residuals)`` -> MSE -> backward -> AdamW step (the same model and optimizer), interleaved with
  the stage-1 trainer steps so that load changes hit both alike;
* the parts of the difference (data loading, ``make_inputs``, gradient clipping) and of the
  stage-2 ``predicted_error`` mask (VAE decode, pose estimator, VAE encode), timed alone;
* the reward stage (``loss.kind: reward``, oks reward on the denoising loss) with every sample
  rewarded (``reward_timestep_max`` 999, the estimator keeping every anchor: random weights
  make no confident person), so that each step pays the whole path: x0 from the scheduler,
  VAE decode with gradients, YOLO-pose forward and backward to its input, OKS. A run at the
  default ``reward_timestep_max`` 200 rewards about 20 % of the samples; the table gives that
  expected cost too;
* peak resident memory (``ru_maxrss``; on CUDA also ``max_memory_allocated``) and FLOPs of one
  step (``torch.utils.flop_counter.FlopCounterMode``, CPU attention included) so GPU users can
  compute utilisation.

Models: ``tiny`` (``builtin:tiny-sd``) and ``sd15`` (``builtin:sd15-random``: SD1.5's
architecture with random weights, built once, ~4 GB on disk). On this 2-core CPU with
``--threads 1`` the default run takes ~6 minutes, ``--sizes 512`` alone ~16 minutes. Add
``--threads 1`` when other processes share the CPU (two threads on two busy cores collapse).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")

import torch

MODELS = {"tiny": "builtin:tiny-sd", "sd15": "builtin:sd15-random"}
STAGES = ("stage1", "stage2_gt", "stage2_pe", "reward")
RESULT = "RESULT "  # the child's last stdout line: RESULT {json}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def make_config(work: Path, base: str, size: int, args: argparse.Namespace) -> Any:
    from poseguide.config import Config
    from poseguide.config.schema import (
        CacheConfig,
        DataConfig,
        EstimatorConfig,
        LossConfig,
        ModelConfig,
        RunConfig,
        SourceConfig,
        StageConfig,
        SynthConfig,
        TrainConfig,
        ValidationConfig,
    )

    synth = SynthConfig(n=args.rows, seed=0, size=(640, 480))  # COCO-like, resized to `size`
    data = DataConfig(
        train=SourceConfig(kind="synthetic", path=str(work / "data"), synthetic=synth),
        resolution=size,
        cache=CacheConfig(dir=str(work / "cache")),
    )
    stages = [
        StageConfig(name="stage1", loss=LossConfig(kind="denoising"), lr=1e-5),
        StageConfig(name="stage2_gt", loss=LossConfig(kind="heatmap", source="ground_truth")),
        StageConfig(name="stage2_pe", loss=LossConfig(kind="heatmap", source="predicted_error")),
        StageConfig(name="reward", loss=LossConfig(
            kind="reward", reward_timestep_max=999,
            reward_estimator=EstimatorConfig(conf=0.0, imgsz=size))),
    ]  # fmt: skip
    train = TrainConfig(stages=stages, batch_size=args.batch, mixed_precision=args.precision,
                        gradient_checkpointing=args.gradient_checkpointing,
                        validation=ValidationConfig(every=0))  # fmt: skip
    run = RunConfig(name="bench", output_dir=str(work / "runs"), device=args.device)
    return Config(run=run, data=data, model=ModelConfig(base=base), train=train)


def batches(loader: Any, dataset: Any, sampler: Any, stage_index: int):
    """Batches epoch after epoch, the epoch keys set as ``_run_epochs`` sets them."""
    from poseguide.train.step import epoch_key

    epoch = 0
    while True:
        key = epoch_key(stage_index, epoch)
        dataset.set_epoch(key)
        sampler.set_epoch(key)
        yield from loader
        epoch += 1


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Bench:
    """One run set up like ``poseguide train`` and the timed step functions."""

    def __init__(self, work: Path, base: str, size: int, args: argparse.Namespace) -> None:
        from poseguide.train.loop import start_stage
        from poseguide.train.runner import _make_run
        from poseguide.train.setup import make_loader

        config = make_config(work, base, size, args)
        self.run, _ = _make_run(config, None, list(range(len(STAGES))), explicit=True)
        cfg = self.run.config
        self.device = self.run.frozen.device
        # One ControlNet, optimizer and LR schedule (training's own), stepped with each loss.
        self.state = start_stage(self.run.trainer, 0, "unet", None, None, 0, 10**6)
        self.model, self.opt = self.state.model, self.state.optimizer
        self.data = make_loader(cfg, self.run.source, self.run.rows, self.run.cache, 0, 1)
        self.iters = {i: batches(self.data[2], self.data[0], self.data[1], i)
                      for i in range(len(STAGES))}  # fmt: skip

    def trainer_step(self, index: int) -> float:
        from poseguide.train.step import epoch_key, optimizer_step

        stage = self.run.config.train.stages[index]
        t0 = time.perf_counter()
        optimizer_step(self.run.trainer, stage, self.state, self.iters[index], epoch_key(index, 0))
        sync(self.device)
        return time.perf_counter() - t0

    def fixed_inputs(self) -> Any:
        from poseguide.train.step import make_inputs, row_generators

        batch = next(self.iters[0])
        gens = row_generators(0, 0, batch["index"])
        frozen = self.run.frozen
        return make_inputs(frozen.parts, batch, gens, frozen.device, frozen.weight_dtype)

    def bare_step(self, x: Any) -> float:
        """One :func:`bare_step` on this run's ControlNet and optimizer, timed (synchronised)."""
        t0 = time.perf_counter()
        bare_step(self.run.trainer, self.model, self.opt, x)
        sync(self.device)
        return time.perf_counter() - t0


def bare_step(trainer: Any, model: Any, optimizer: Any, x: Any, clip: float | None = None) -> None:
    """The least a ControlNet training step can do, on fixed inputs ``x`` (``StepInputs``):
    ControlNet -> UNet with its residuals -> MSE -> backward -> (clip to ``clip``) -> the
    optimizer's step: diffusers' ``train_controlnet.py`` per step, less its VAE and text encoding
    (poseguide caches both). ``model`` and ``optimizer`` as accelerate prepared them; the plain
    module and the optimizer inside are stepped, under the accelerator's autocast dtype."""
    controlnet = trainer.accelerator.unwrap_model(model)
    unet, opt = trainer.frozen.parts.unet, getattr(optimizer, "optimizer", optimizer)
    precision = trainer.config.train.mixed_precision
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    device = trainer.frozen.device
    with torch.autocast(device.type, dtype=dtype, enabled=precision != "no"):
        down, mid = controlnet(x.noisy, x.timesteps, encoder_hidden_states=x.text,
                               controlnet_cond=x.cond, return_dict=False)  # fmt: skip
        down, mid = [d.to(x.noisy.dtype) for d in down], mid.to(x.noisy.dtype)  # frozen dtype
        pred = unet(x.noisy, x.timesteps, encoder_hidden_states=x.text,
                    down_block_additional_residuals=down,
                    mid_block_additional_residual=mid, return_dict=False)[0]  # fmt: skip
    loss = torch.nn.functional.mse_loss(pred.float(), x.noise)
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_([p for p in controlnet.parameters() if p.grad is not None],
                                       clip)  # fmt: skip
    opt.step()
    opt.zero_grad(set_to_none=True)


def cpu_sdpa_flops() -> dict:
    """FLOP formulas for the CPU attention kernels FlopCounterMode does not know (torch 2.14)."""
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten

    def forward(q, k, v, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(q, k, v)

    def backward(grad, q, k, v, *args, out_shape=None, **kwargs) -> int:
        return sdpa_backward_flop_count(grad, q, k, v)

    return {aten._scaled_dot_product_flash_attention_for_cpu: forward,
            aten._scaled_dot_product_flash_attention_for_cpu_backward: backward}  # fmt: skip


def count_flops(fn: Any) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=cpu_sdpa_flops()) as counter:
        fn()
    return counter.get_total_flops()


def best_of(fn: Any, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def trainer_parts(b: Bench, n: int) -> dict:
    """Seconds of what the trainer does besides the bare step: data, inputs, dtype, clipping."""
    from poseguide.train.step import make_inputs, row_generators

    frozen, it = b.run.frozen, b.iters[0]
    out = {"data": best_of(lambda: next(it), max(n, 3))}
    batch = next(it)

    def inputs() -> None:
        gens = row_generators(0, 0, batch["index"])
        make_inputs(frozen.parts, batch, gens, frozen.device, frozen.weight_dtype)

    out["inputs"] = best_of(inputs, max(n, 3))
    # predict() casts each ControlNet residual to ``unet.dtype``, a property that walks every
    # module of the UNet on each access.
    unet = frozen.parts.unet
    count = len(b.run.accelerator.unwrap_model(b.model).controlnet_down_blocks) + 1
    out["dtype"] = best_of(lambda: [unet.dtype for _ in range(count)], max(n, 3))
    params = [p for p in b.model.parameters() if p.requires_grad]
    for p in params:  # clipping cost does not depend on the values
        p.grad = torch.full_like(p, 1e-4)
    norm = b.run.config.train.optim.max_grad_norm or 1.0
    out["clip"] = best_of(lambda: b.run.accelerator.clip_grad_norm_(params, norm), max(n, 3))
    b.opt.zero_grad(set_to_none=True)
    return out


@torch.no_grad()
def mask_parts(b: Bench, x: Any, n: int) -> dict:
    """Seconds of the stage-2 masks: VAE decode, pose estimator, VAE encode (predicted_error);
    the whole ground_truth mask."""
    from poseguide.objectives.heatmap import _resize, ground_truth_mask
    from poseguide.pose.heatmaps import binary_mask

    vae, stage = b.run.frozen.parts.vae, b.run.config.train.stages[2]
    z = (torch.randn_like(x.latents) / vae.config.scaling_factor).to(vae.dtype)
    decoded = ((vae.decode(z).sample.float() + 1) / 2).clamp(0, 1)
    estimator = b.run.trainer.objective(stage).mask_estimator
    heatmaps = estimator.heatmaps(decoded)
    mask = binary_mask(heatmaps, stage.loss.threshold, stage.loss.polarity, stage.loss.reduction)
    h_m = _resize(mask, tuple(decoded.shape[-2:]), stage.loss.mask_resize).expand(-1, 3, -1, -1)
    batch, gt = next(b.iters[1]), b.run.config.train.stages[1].loss
    size, latent = tuple(batch["conditioning"].shape[-1:-3:-1]), tuple(x.latents.shape[-1:-3:-1])
    return {
        "decode": best_of(lambda: vae.decode(z), n),
        "estimator": best_of(lambda: estimator.heatmaps(decoded), n),
        "encode": best_of(lambda: vae.encode(h_m.to(vae.dtype)).latent_dist.sample(), n),
        "gt_mask": best_of(
            lambda: ground_truth_mask(batch["keypoints"], size, latent, gt, b.device), max(n, 5)
        ),
    }


def warm_up(b: Bench, x: Any, warmup: int, out: dict) -> None:
    """Untimed steps of each kind in turn, noting the peak memory after each kind first ran."""
    for _ in range(warmup):
        b.trainer_step(0), b.bare_step(x)
    out["rss_stage1"] = rss_gib()
    for index, key in ((1, "rss_gt"), (2, "rss_pe"), (3, "rss_reward")):
        for _ in range(warmup):
            b.trainer_step(index)
        out[key] = rss_gib()


def timed_rounds(b: Bench, x: Any, steps: int) -> dict[str, list[float]]:
    """Rounds of (stage-1 trainer, bare, stage-2 gt, stage-2 pe) steps: interleaved, so that a
    change of machine load hits every kind alike and the ratios stay fair."""
    kinds = ("stage1", "bare", "stage2_gt", "stage2_pe", "reward")
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(steps):
        times["stage1"].append(b.trainer_step(0))
        times["bare"].append(b.bare_step(x))
        times["stage2_gt"].append(b.trainer_step(1))
        times["stage2_pe"].append(b.trainer_step(2))
        times["reward"].append(b.trainer_step(3))
    return times


def measure(model: str, size: int, args: argparse.Namespace) -> dict:
    """Everything for one (model, size), in one process."""
    tiny = model == "tiny"
    steps, warmup = (args.tiny_steps, args.tiny_warmup) if tiny else (args.steps, args.warmup)
    out: dict[str, Any] = {"model": model, "size": size, "steps": steps, "warmup": warmup,
                           "load_before": os.getloadavg()[0]}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="poseguide-bench-") as tmp:
        t0 = time.perf_counter()
        b = Bench(Path(tmp), MODELS[model], size, args)
        out["setup_s"], out["rss_setup"] = time.perf_counter() - t0, rss_gib()
        x = b.fixed_inputs()
        log(f"[{model} {size}px] set up in {out['setup_s']:.0f} s; warm-up")
        warm_up(b, x, max(warmup, 1), out)
        log(f"[{model} {size}px] {steps} timed rounds")
        out["times"] = timed_rounds(b, x, steps)
        out.update({k: min(v) for k, v in out["times"].items()})
        log(f"[{model} {size}px] parts and FLOPs")
        out["parts"] = trainer_parts(b, steps)
        out["mask_parts"] = mask_parts(b, x, steps)
        out["flops_stage1"] = count_flops(lambda: b.trainer_step(0))
        out["flops_bare"] = count_flops(lambda: b.bare_step(x))
        out["flops_pe"] = count_flops(lambda: b.trainer_step(2))
        out["flops_reward"] = count_flops(lambda: b.trainer_step(3))
        if b.device.type == "cuda":
            out["cuda_peak_gib"] = torch.cuda.max_memory_allocated(b.device) / 2**30
    out["load_after"] = os.getloadavg()[0]
    return out


def print_step_table(results: list[dict], args: argparse.Namespace) -> None:
    dev = args.device + (f", {torch.get_num_threads()} threads" if args.device == "cpu" else "")
    print(f"\nTraining step, batch {args.batch}, precision {args.precision}, {dev}. Minimum "
          f"over the timed steps (tiny: {args.tiny_steps} after {args.tiny_warmup} warm-up; "
          f"sd15: {args.steps} after {args.warmup}): least disturbed if shared")  # fmt: skip
    print(f"{'model':<6}{'px':>5}{'trainer s':>11}{'bare s':>9}{'ratio':>7}"
          f"{'data s':>9}{'inputs s':>10}{'dtype s':>9}{'clip s':>9}{'rest s':>9}")  # fmt: skip
    for r in results:
        p = r["parts"]
        rest = r["stage1"] - r["bare"] - sum(p.values())
        print(f"{r['model']:<6}{r['size']:>5}{r['stage1']:>11.3f}{r['bare']:>9.3f}"
              f"{r['stage1'] / r['bare']:>7.3f}{p['data']:>9.4f}{p['inputs']:>10.4f}"
              f"{p['dtype']:>9.4f}{p['clip']:>9.4f}{rest:>9.4f}")  # fmt: skip
    print("ratio = trainer / bare. The trainer's extra work, timed alone: data (DataLoader), "
          "inputs (make_inputs),\ndtype (unet.dtype per residual in predict), clip (gradient "
          "clipping); rest: the remainder")  # fmt: skip


def print_stage2_table(results: list[dict]) -> None:
    print("\nStage 2 (heatmap loss) over stage 1, and the predicted_error mask's parts (s)")
    print(f"{'model':<6}{'px':>5}{'stage1 s':>10}{'gt s':>9}{'gt/s1':>7}{'pe s':>9}"
          f"{'pe/s1':>7}{'decode':>8}{'pose':>8}{'encode':>8}{'gt mask':>9}")  # fmt: skip
    for r in results:
        m = r["mask_parts"]
        print(f"{r['model']:<6}{r['size']:>5}{r['stage1']:>10.3f}{r['stage2_gt']:>9.3f}"
              f"{r['stage2_gt'] / r['stage1']:>7.3f}{r['stage2_pe']:>9.3f}"
              f"{r['stage2_pe'] / r['stage1']:>7.3f}{m['decode']:>8.3f}{m['estimator']:>8.3f}"
              f"{m['encode']:>8.3f}{m['gt_mask']:>9.4f}")  # fmt: skip
    print("gt: ground_truth masks (gt mask: building one, timed alone); pe: predicted_error "
          "masks (VAE decode, YOLO pose, VAE encode)")  # fmt: skip
    print("\nMedians of the same steps (s): stage1 / bare / gt / pe / reward")
    for r in results:
        med = {k: statistics.median(v) for k, v in r["times"].items()}
        print(f"{r['model']:<6}{r['size']:>5}  {med['stage1']:.3f} / {med['bare']:.3f} / "
              f"{med['stage2_gt']:.3f} / {med['stage2_pe']:.3f} / {med['reward']:.3f}")  # fmt: skip


def print_reward_table(results: list[dict]) -> None:
    print("\nReward stage over stage 1: every sample rewarded, and expected at "
          "reward_timestep_max 200 (201 of 1000 timesteps rewarded)")  # fmt: skip
    print(f"{'model':<6}{'px':>5}{'stage1 s':>10}{'reward s':>10}{'ratio':>7}{'t<=200 s':>10}"
          f"{'ratio':>7}{'GFLOP s1':>10}{'GFLOP rw':>10}{'peak s1':>9}{'peak rw':>9}")  # fmt: skip
    for r in results:
        share = 201 / 1000  # batch 1: a step is rewarded with this probability
        mean = r["stage1"] + share * (r["reward"] - r["stage1"])
        print(f"{r['model']:<6}{r['size']:>5}{r['stage1']:>10.3f}{r['reward']:>10.3f}"
              f"{r['reward'] / r['stage1']:>7.2f}{mean:>10.3f}{mean / r['stage1']:>7.2f}"
              f"{r['flops_stage1'] / 1e9:>10.1f}{r['flops_reward'] / 1e9:>10.1f}"
              f"{r['rss_stage1']:>9.2f}{r['rss_reward']:>9.2f}")  # fmt: skip
    print("peak: ru_maxrss (GiB) after the kind of step first ran (each kind adds to the "
          "process' peak, so the reward's includes the stages before it)")  # fmt: skip


def print_memory_table(results: list[dict]) -> None:
    print("\nPeak memory (ru_maxrss, GiB, after set-up and after each kind of step first ran) "
          "and FLOPs per step (GFLOP)")  # fmt: skip
    print(f"{'model':<6}{'px':>5}{'setup':>8}{'stage1':>8}{'gt':>8}{'pe':>8}"
          f"{'trainer':>9}{'bare':>8}{'pe':>8}{'setup s':>9}{'load':>10}")  # fmt: skip
    for r in results:
        load = f"{r['load_before']:.1f}-{r['load_after']:.1f}"
        print(f"{r['model']:<6}{r['size']:>5}{r['rss_setup']:>8.2f}{r['rss_stage1']:>8.2f}"
              f"{r['rss_gt']:>8.2f}{r['rss_pe']:>8.2f}{r['flops_stage1'] / 1e9:>9.1f}"
              f"{r['flops_bare'] / 1e9:>8.1f}{r['flops_pe'] / 1e9:>8.1f}"
              f"{r['setup_s']:>9.0f}{load:>10}")  # fmt: skip
        if "cuda_peak_gib" in r:
            print(f"       CUDA max_memory_allocated {r['cuda_peak_gib']:.2f} GiB")
    print("FLOPs: matmuls, convolutions and attention (torch.utils.flop_counter), forward and "
          "backward;\npe includes the VAE decode/encode and the YOLO-pose network. "
          "load: 1-minute load average before-after.")  # fmt: skip


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    p.add_argument("--models", default="tiny,sd15", help="comma list of: tiny, sd15")
    p.add_argument("--sizes", type=ints, default=[256], help="sd15 training sizes in px")
    p.add_argument("--tiny-sizes", type=ints, default=[64], help="tiny training sizes in px")
    p.add_argument("--steps", type=int, default=2, help="timed sd15 steps per measurement")
    p.add_argument("--warmup", type=int, default=1, help="untimed sd15 steps first")
    p.add_argument("--tiny-steps", type=int, default=20)
    p.add_argument("--tiny-warmup", type=int, default=3)
    p.add_argument("--rows", type=int, default=4, help="synthetic rows (all cached)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's choice, one per core). Use 1 "
                        "when other processes share the CPU: with 2 threads on 2 busy cores, "
                        "small ops run up to ~30x slower")  # fmt: skip
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--device", default="cpu", help="run.device: cpu, cuda, auto, ...")
    p.add_argument("--precision", default="no", choices=["no", "bf16", "fp16"])
    what = "train.gradient_checkpointing=true (ControlNet and frozen UNet)"
    p.add_argument("--gradient-checkpointing", action="store_true", help=what)
    p.add_argument("--child", nargs=2, metavar=("MODEL", "SIZE"), help=argparse.SUPPRESS)
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args()
    args.models = [m for m in args.models.split(",") if m]
    if set(args.models) - set(MODELS):
        p.error(f"unknown models {sorted(set(args.models) - set(MODELS))}; use {sorted(MODELS)}")
    return args


def run_child(model: str, size: int) -> dict:
    here = str(Path(__file__).resolve())
    cmd = [sys.executable, here, *sys.argv[1:], "--child", model, str(size)]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith(RESULT)]
    if done.returncode or not lines:
        raise SystemExit(f"{model} at {size} px failed (exit {done.returncode}); see above")
    return json.loads(lines[-1][len(RESULT) :])


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        model, size = args.child[0], int(args.child[1])
        print(RESULT + json.dumps(measure(model, size, args)), flush=True)
        return
    start = time.perf_counter()
    sizes = {m: args.tiny_sizes if m == "tiny" else args.sizes for m in args.models}
    configs = [(m, s) for m in args.models for s in sizes[m]]
    results = [run_child(m, s) for m, s in configs]
    print_step_table(results, args)
    print_stage2_table(results)
    print_memory_table(results)
    print_reward_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
