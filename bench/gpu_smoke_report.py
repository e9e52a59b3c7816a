"""What ``bench/gpu_smoke.py`` prints: per case a table of its stages' figures, then the
targets (printed with PASS/FAIL words, never enforced)."""

from __future__ import annotations

TARGETS = {"cap_b1_gib": 11.0, "card_gib": 12.0, "mfu": 0.35, "stage2_ratio": 1.9,
           "bare_ratio": 1.05}  # fmt: skip


def fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def derived(stage: dict, case: dict, peaks: dict) -> dict:
    """samples/s, FLOPs per sample, MFU (datasheet and measured peak), syncs per step and the
    loop/bare ratio of one stage's figures."""
    s, flops = stage.get("s_per_step"), stage.get("flops_per_step")
    mfu = {k: flops / s / (p * 1e12) if flops and s and p else None for k, p in peaks.items()}
    n = stage.get("sync_steps")
    syncs = stage.get("syncs") if stage.get("syncs") is not None else stage.get("device_reads")
    bare = (stage.get("bare") or {}).get("s_per_step")
    return {"samples_s": case["batch"] / s if s else None,
            "gflop_sample": flops / case["batch"] / 1e9 if flops else None,
            "mfu_sheet": mfu.get("sheet"), "mfu_measured": mfu.get("measured"),
            "syncs_step": syncs / n if n else None,
            "bare_ratio": s / bare if s and bare else None}  # fmt: skip


HEADER = (f"{'stage':<8}{'loss':<24}{'s/step':>8}{'median':>8}{'p90':>8}{'samples/s':>10}"
          f"{'GFLOP/smp':>10}{'MFU':>6}{'MFU*':>6}{'alloc':>7}{'resv':>7}{'syncs':>7}"
          f"{'finite':>8}{'data':>7}{'start':>7}  status")  # fmt: skip


def status(st: dict) -> str:
    bad = st.get("oom") or st.get("error")
    if not bad:
        return "ok"
    what = "OOM" if st.get("oom") else bad["kind"]
    return f"{what} in {bad['phase']} (step {bad['step']})"


def stage_row(st: dict, c: dict, peaks: dict) -> str:
    d = derived(st, c, peaks)
    finite = (f"{st['window_reads'] + st['every_step_reads']}/{st['sync_steps']}"
              if st.get("sync_steps") else "n/a")  # fmt: skip
    pct = lambda v: fmt(v and 100 * v, ".1f")  # noqa: E731
    return (f"{st['stage']:<8}{st['loss']:<24}{fmt(st.get('s_per_step'), '.4f'):>8}"
            f"{fmt(st.get('step_median_s'), '.4f'):>8}{fmt(st.get('step_p90_s'), '.4f'):>8}"
            f"{fmt(d['samples_s'], '.2f'):>10}{fmt(d['gflop_sample'], '.1f'):>10}"
            f"{pct(d['mfu_sheet']):>6}{pct(d['mfu_measured']):>6}"
            f"{fmt(st.get('alloc_gib'), '.2f'):>7}{fmt(st.get('reserved_gib'), '.2f'):>7}"
            f"{fmt(d['syncs_step'], '.3f'):>7}{finite:>8}"
            f"{fmt(st.get('data_wait_s_per_step'), '.4f'):>7}{fmt(st.get('start_s'), '.1f'):>7}"
            f"  {status(st)}")  # fmt: skip


def print_case(result: dict, peaks: dict) -> None:
    c = result["case"]
    what = [c["model"], f"{c['size']} px", f"batch {c['batch']}", c["optimizer"],
            f"log_every {c['log_every']}"]  # fmt: skip
    what += ["gradient checkpointing"] * c["checkpointing"] + ["DeepSpeed ZeRO-2"] * c["deepspeed"]
    if result.get("allocator_cap_gib"):
        what += [f"a {c['cap_gib']:g} GiB card: allocator capped at "
                 f"{result['allocator_cap_gib']:.2f} GiB (CUDA context {result['context_gib']:.2f}"
                 f" GiB, {result['context_how']})"]  # fmt: skip
    setup = f", set-up {result['setup_s']:.0f} s" if "setup_s" in result else ""
    print(f"\n== {c['name']}: {', '.join(what)} (wall {result['wall_s']:.0f} s{setup})")
    for note in result["notes"]:
        print(f"   note: {note}")
    if result["stages"]:
        print(HEADER)
    for st in result["stages"]:
        print(stage_row(st, c, peaks))
    for st in result["stages"]:
        bare = st.get("bare")
        if bare:
            d = derived(st, c, peaks)
            print(f"   {st['stage']} bare step {bare['s_per_step']:.4f} s (median "
                  f"{fmt(bare.get('step_median_s'), '.4f')}): loop/bare "
                  f"{fmt(d['bare_ratio'], '.3f')}")  # fmt: skip
        for read in st.get("top_reads", []):
            print(f"   {st['stage']} host read of a device value: {read}")
        for sync in st.get("top_syncs", []):
            print(f"   {st['stage']} CUDA sync at: {sync}")
        if st.get("sdpa"):
            print(f"   {st['stage']} attention kernels: {', '.join(st['sdpa'])}")
        bad = st.get("oom") or st.get("error")
        if bad:
            print(f"   {st['stage']} {bad['kind']}: {bad['message'][:600]}")
            print("\n".join(f"   {st['stage']}   at {frame}" for frame in bad["frames"][-4:]))
    if result.get("failure"):
        print(f"   {result['failure']}; the end of its log:")
        print("\n".join(f"   | {line}" for line in result.get("log_tail", [])))


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def at_most(value: float | None, target: str) -> bool | None:
    return None if value is None else value <= TARGETS[target]


def find(results: list[dict], prefix: str) -> dict | None:
    return next((r for r in results if r["case"]["name"].startswith(prefix)), None)


def thesis_targets(results: list[dict]) -> list[str]:
    """Batch 1 with the thesis' settings, every stage in one process: peak allocated <= 11 GiB,
    and reserved plus the CUDA context within a 12 GiB card."""
    r = find(results, "cap12-b1-adamw")
    what = (f"thesis settings (batch 1, AdamW, checkpointing) peak allocated <= "
            f"{TARGETS['cap_b1_gib']:g} GiB in every stage")  # fmt: skip
    if r is None or not r["stages"] or "alloc_gib" not in r["stages"][0]:
        why = "not run" if r is None else (r["failure"] or "not on a CUDA device")
        return [f"{what}: n/a ({why})"]
    context = r.get("context_gib", 0.0)
    peaks = [(s["stage"], s["alloc_gib"], s["reserved_gib"], bool(s["oom"])) for s in r["stages"]]
    ok = all(a <= TARGETS["cap_b1_gib"] and not oom for _, a, _, oom in peaks)
    fits = all(v + context <= TARGETS["card_gib"] and not oom for _, _, v, oom in peaks)
    shown = ", ".join(f"{n} {a:.2f}{' (OOM)' if oom else ''}" for n, a, _, oom in peaks)
    card = ", ".join(f"{n} {v + context:.2f}" for n, v, _, _ in peaks)
    return [f"{what}: {shown} GiB -> {verdict(ok)}",
            f"  and reserved + CUDA context ({context:.2f} GiB) <= {TARGETS['card_gib']:g} GiB: "
            f"{card} GiB -> {verdict(fits)}"]  # fmt: skip


def main_targets(results: list[dict], peaks: dict) -> list[str]:
    """The uncapped SD1.5 case: stage-1 MFU, loop/bare, stage-2 and reward over stage 1."""
    r = find(results, "sd15-")
    if r is None or not r["stages"]:
        return ["SD1.5 MFU, loop/bare and stage-ratio targets: n/a (no uncapped SD1.5 figures)"]
    stages = {s["stage"]: s for s in r["stages"]}
    s1 = stages.get("stage1", {})
    d = derived(s1, r["case"], peaks) if s1 else {}
    t1 = s1.get("s_per_step")
    ratio = {k: stages[k]["s_per_step"] / t1 if t1 and stages.get(k, {}).get("s_per_step")
             else None for k in ("stage2", "reward")}  # fmt: skip
    b, pct = r["case"]["batch"], lambda v: "n/a" if v is None else f"{100 * v:.1f} %"
    mfu = d.get("mfu_sheet")
    return [
        f"batch {b} stage-1 MFU >= {100 * TARGETS['mfu']:.0f} % of the datasheet peak: "
        f"{pct(mfu)} -> {verdict(None if mfu is None else mfu >= TARGETS['mfu'])} "
        f"(of the measured matmul peak: {pct(d.get('mfu_measured'))})",
        f"batch {b} stage-1 loop/bare step <= {TARGETS['bare_ratio']}: "
        f"{fmt(d.get('bare_ratio'), '.3f')} -> "
        f"{verdict(at_most(d.get('bare_ratio'), 'bare_ratio'))}",
        f"batch {b} stage-2 step <= {TARGETS['stage2_ratio']}x stage 1: "
        f"{fmt(ratio['stage2'], '.2f')}x -> "
        f"{verdict(at_most(ratio['stage2'], 'stage2_ratio'))}",
        f"batch {b} reward step (every sample rewarded) / stage 1: {fmt(ratio['reward'], '.2f')}x"
        " (no target; at reward_timestep_max 200 about a fifth of the samples pay it)",
    ]


def sync_targets(results: list[dict]) -> list[str]:
    lines = []
    for r in results:
        for s in r["stages"]:
            per_step = derived(s, r["case"], {})["syncs_step"]
            if per_step is None:
                continue
            limit = 1 / r["case"]["log_every"]
            word = verdict(per_step <= limit + 1e-9)
            if r["case"]["deepspeed"]:
                word += (
                    " (under DeepSpeed poseguide reads the loss's finiteness before every "
                    "update, and DeepSpeed reads its own overflow and gradient-norm checks)"
                )
            lines.append(f"{r['case']['name']} {s['stage']} host syncs per steady-state step "
                         f"<= 1/log_every = {limit:.3f}: {per_step:.3f} -> {word}")  # fmt: skip
    return lines


def print_targets(results: list[dict], peaks: dict) -> None:
    print("\nTargets (printed, never enforced: the exit status stays 0)")
    for line in [*main_targets(results, peaks), *thesis_targets(results), *sync_targets(results)]:
        print(f"  {line}")
    for r in results:
        if r["case"]["cap_gib"] and r["stages"] and "alloc_gib" in r["stages"][0]:
            print(f"  {r['case']['name']}: " + ", ".join(
                f"{s['stage']} peak allocated {fmt(s.get('alloc_gib'), '.2f')} GiB, reserved "
                f"{fmt(s.get('reserved_gib'), '.2f')}, {'OOM' if s['oom'] else 'no OOM'}"
                for s in r["stages"]))  # fmt: skip
    print(
        "  not measured: train.compile (a first compile of SD1.5 at 512 px does not fit the "
        "deadline) and train.channels_last; poseguide refuses train.compile and adamw8bit "
        "under DeepSpeed (untested there)"
    )
