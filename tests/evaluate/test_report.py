"""The evaluation report on a fake ``<run>/eval/`` folder: tables, figures, selection, errors."""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from poseguide.errors import UserError
from poseguide.evaluate.report import (
    THESIS_TABLE_4_1,
    ReportError,
    check_consistency,
    grid_figure,
    load_eval,
    make_report,
    select_samples,
)

MODELS = ("baseline", "stage1", "stage2")
IDS = tuple(f"s{i}" for i in range(6))
# Built so that each column has another winner: CLIP stage1, LPIPS (lowest) baseline, OKS stage2.
CLIP_BASE = np.array([30.12, 30.57, 31.04, 29.81, 30.26, 30.93])
CLIP_SHIFT = {"baseline": 0.0, "stage1": 1.5, "stage2": 0.7}
LPIPS_BASE = np.array([0.701, 0.744, 0.688, 0.732, 0.759, 0.715])
LPIPS_SHIFT = {"baseline": 0.0, "stage1": 0.05, "stage2": 0.08}
# Ground-truth people per row: their OKS for the baseline; row s5 has no scoreable person.
PEOPLE = ([0.61], [0.55, 0.72], [0.48], [0.66, 0.31], [0.7], [])
OKS_SHIFT = {"baseline": 0.0, "stage1": -0.05, "stage2": 0.1}
OKS_SHIFT_ROW = {("stage2", "s1"): 0.2}  # s1: where the models' OKS differ most


def _rows() -> list[dict]:
    rows = []
    for model in MODELS:
        for i, sid in enumerate(IDS):
            shift = OKS_SHIFT[model] + OKS_SHIFT_ROW.get((model, sid), 0.0)
            per_gt = [round(min(1.0, v + shift), 6) for v in PEOPLE[i]]
            rows.append({
                "model": model, "id": sid, "index": i, "seed": i, "caption": f"a person {sid}",
                "size": [40, 32], "clip": round(CLIP_BASE[i] + CLIP_SHIFT[model], 6),
                "lpips": round(LPIPS_BASE[i] + LPIPS_SHIFT[model], 6),
                "oks": float(np.mean(per_gt)) if per_gt else None, "per_gt_oks": per_gt,
                "num_gt": len(per_gt), "num_dets": len(per_gt), "preds": [], "scores": [],
            })  # fmt: skip
    return rows


def _summary(values: list[float], half: float) -> dict:
    mean = float(np.mean(values))
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "n": len(values),
            "nan": 0}  # fmt: skip


def _metrics(rows: list[dict]) -> dict:
    models = {}
    for k, model in enumerate(MODELS):
        mine = [r for r in rows if r["model"] == model]
        people = [v for r in mine for v in r["per_gt_oks"]]
        models[model] = {
            "controlnet": f"stage:{model}", "resolved": f"/runs/x/export/{model}", "n": len(mine),
            "clip": _summary([r["clip"] for r in mine], 0.4),
            "lpips": _summary([r["lpips"] for r in mine], 0.02),
            "oks": _summary(people, 0.05),
            "coco": {"AP": 0.5 + 0.1 * k, "AP50": 0.7, "AP75": 0.4, "AR": 0.6 - 0.1 * k},
            "per_joint_accuracy": None if model == "stage1" else list(np.linspace(0.2, 0.9, 17)),
            "fid": None, "kid": None,
        }  # fmt: skip
    setup = {
        "base_model": "tiny-sd", "seed": 0, "resolution": 64, "estimator": "yolo11n-pose.pt",
        "lpips": "LPIPS alex v0.1", "clip": "tiny-clip", "ground_truth": "dataset",
        "min_oks": 0.0, "matching": "greedy by detection score", "eval_source": "fake",
        "rows": len(IDS), "limit": None, "bootstrap": 1000, "confidence": 0.95,
        "generate": {"steps": 2, "guidance_scale": 7.5},
    }  # fmt: skip
    return {"models": models, "setup": setup}


def _png(path: Path, rng: np.random.Generator) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (32, 40, 3), dtype=np.uint8)).save(path)


def _make_run(root: Path) -> Path:
    run = root / "run"
    eval_dir = run / "eval"
    rng = np.random.default_rng(0)
    rows = _rows()
    eval_dir.mkdir(parents=True)
    (eval_dir / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (eval_dir / "metrics.json").write_text(json.dumps(_metrics(rows)))
    for sid in IDS:
        _png(eval_dir / "poses" / f"{sid}.png", rng)
        _png(eval_dir / "originals" / f"{sid}.png", rng)
        for model in MODELS:
            _png(eval_dir / "images" / model / f"{sid}.png", rng)
    return run


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A fresh fake run for tests that change it."""
    return _make_run(tmp_path)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One report of an unchanged fake run, shared by the read-only tests (matplotlib is slow)."""
    return make_report(_make_run(tmp_path_factory.mktemp("report")))


def _main_table(md: str) -> dict[str, list[str]]:
    """Model -> its cells of the results table (the first table after the results heading)."""
    section = md.split("## Results", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    assert lines[0] == "| Model | CLIP score ↑ | LPIPS ↓ | OKS ↑ |"
    return {cells[0]: cells[1:] for cells in (
        [c.strip() for c in line.strip("|").split("|")] for line in lines[2:])}  # fmt: skip


def _sample_means() -> dict[str, dict[str, float]]:
    rows = _rows()
    means = {}
    for model in MODELS:
        mine = [r for r in rows if r["model"] == model]
        means[model] = {
            "clip": float(np.mean([r["clip"] for r in mine])),
            "lpips": float(np.mean([r["lpips"] for r in mine])),
            "oks": float(np.mean([v for r in mine for v in r["per_gt_oks"]])),
        }
    return means


def test_main_table_means_intervals_and_bold_winners(report: dict[str, Path]) -> None:
    table = _main_table(report["md"].read_text())
    assert list(table) == list(MODELS)  # metrics.json order
    means = _sample_means()
    winners = {"clip": "stage1", "lpips": "baseline", "oks": "stage2"}
    halves = {"clip": 0.4, "lpips": 0.02, "oks": 0.05}
    for j, (key, decimals) in enumerate((("clip", 2), ("lpips", 3), ("oks", 3))):
        for model in MODELS:
            mean, half = means[model][key], halves[key]
            text = f"{mean:.{decimals}f}"
            if model == winners[key]:
                text = f"**{text}**"
            interval = f" [{mean - half:.{decimals}f}, {mean + half:.{decimals}f}]"
            assert table[model][j] == text + interval, (model, key)
    assert sum(cell.count("**") for cells in table.values() for cell in cells) == 2 * 3


def test_report_numbers_are_the_per_sample_averages(report: dict[str, Path]) -> None:
    assert check_consistency(load_eval(report["md"].parent.parent)) == []
    md = report["md"].read_text()
    assert "average to these numbers" in md
    table = _main_table(md)
    for model, means in _sample_means().items():
        cells = [re.sub(r"\*\*", "", c).split(" [")[0] for c in table[model]]
        assert cells == [f"{means['clip']:.2f}", f"{means['lpips']:.3f}", f"{means['oks']:.3f}"]


def test_disagreeing_metrics_json_is_logged_and_shown(run_dir: Path, caplog) -> None:
    path = run_dir / "eval" / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics["models"]["stage2"]["clip"]["mean"] += 0.5
    path.write_text(json.dumps(metrics))
    with caplog.at_level(logging.WARNING, logger="poseguide.evaluate.report"):
        md = make_report(run_dir)["md"].read_text()
    assert any("stage2 clip" in r.getMessage() for r in caplog.records)
    assert "Per-sample check FAILED" in md and "stage2 clip" in md
    shown = metrics["models"]["stage2"]["clip"]["mean"]
    assert _main_table(md)["stage2"][0].startswith(f"{shown:.2f}")  # metrics.json's number


def test_thesis_reference_block(report: dict[str, Path]) -> None:
    md = report["md"].read_text()
    block = md.split("## Reference: the thesis' published numbers (not this run)", 1)[1]
    block = block.split("\n## ", 1)[0]
    assert "Table 4.1" in block and "RTX 3060" in block
    for label, clip, lpips, oks in THESIS_TABLE_4_1["rows"]:
        row = next(line for line in block.splitlines() if line.startswith(f"| {label} "))
        for value in (f"{clip:.2f}", f"{lpips:.3f}", f"{oks:.3f}"):
            assert value in row
    assert "**32.35**" in block and "**0.766**" in block and "**0.786**" in block


def test_html_is_self_contained(report: dict[str, Path]) -> None:
    out = report
    page = out["html"].read_text()
    assert 'src="http' not in page and "<link" not in page and "<script" not in page
    sources = re.findall(r'<img src="([^"]*)"', page)
    figures = [k for k in ("grid", "oks_hist", "joints", "curves") if k in out]
    assert len(sources) == len(figures) == 3  # no training curves in this run folder
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).verify()
    assert "<table>" in page and "<strong>" in page and "<style>" in page
    assert "Reference: the thesis&#x27; published numbers" in page


def test_figures_are_pngs_linked_relatively(report: dict[str, Path]) -> None:
    out = report
    md = out["md"].read_text()
    for key in ("grid", "oks_hist", "joints"):
        assert out[key].parent == out["md"].parent
        with Image.open(out[key]) as image:
            assert image.format == "PNG" and image.width > 100
        assert f"]({out[key].name})" in md
    assert "curves" not in out and "neither curves.png nor metrics.jsonl" in md


def test_training_curves_plotted_from_metrics_jsonl(run_dir: Path, tmp_path: Path) -> None:
    lines = [{"stage": "stage1", "global_step": s, "loss": 1.0 / s, "lr": 1e-5} for s in (1, 2, 3)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    out = make_report(run_dir, out_dir=tmp_path / "elsewhere")
    assert out["curves"] == tmp_path / "elsewhere" / "report_curves.png"
    Image.open(out["curves"]).verify()
    assert "](report_curves.png)" in out["md"].read_text()


def test_training_curves_copied_from_run_folder(run_dir: Path) -> None:
    Image.new("RGB", (30, 20), (1, 2, 3)).save(run_dir / "curves.png")
    out = make_report(run_dir)
    assert out["curves"].read_bytes() == (run_dir / "curves.png").read_bytes()


def test_select_by_id_by_n_and_by_rule(run_dir: Path) -> None:
    run = load_eval(run_dir)
    assert select_samples(run, ["s4", "s2"])[0] == ["s4", "s2"]
    assert select_samples(run, n=3, select="first")[0] == ["s0", "s1", "s2"]
    assert select_samples(run, n=3, select="even")[0] == ["s0", "s2", "s5"]
    picks, how = select_samples(run, n=2)  # "spread": s1's OKS differ most; s5 has none
    assert picks[0] == "s1" and "differ most" in how
    assert select_samples(run, n=99, select="spread")[0][-1] == "s5"
    with pytest.raises(ReportError, match="s9"):
        select_samples(run, ["s9"])
    with pytest.raises(UserError, match="select"):
        select_samples(run, select="random")
    out = make_report(run_dir, samples=["s3"])
    assert "chosen by id: s3." in out["md"].read_text()
    one = Image.open(out["grid"]).size
    three = Image.open(io.BytesIO(grid_figure(run, ["s0", "s1", "s2"])[0])).size
    assert one[0] == three[0] and three[1] > one[1]  # one row per selected sample


def test_missing_images_are_grey_placeholders(run_dir: Path) -> None:
    (run_dir / "eval" / "images" / "stage1" / "s0.png").unlink()
    for path in (run_dir / "eval" / "images" / "stage2").iterdir():  # a model without images
        path.unlink()
    out = make_report(run_dir, samples=["s0", "s1"])
    md = out["md"].read_text()
    assert "s0: no image for stage1, stage2 (shown grey)" in md
    assert "s1: no image for stage2 (shown grey)" in md
    Image.open(out["grid"]).verify()


def test_missing_metrics_json_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=re.escape(str(tmp_path / "eval" / "metrics.json"))) as info:
        make_report(tmp_path)
    assert isinstance(info.value, FileNotFoundError)


def test_nan_and_none_values_show_as_na(run_dir: Path) -> None:
    path = run_dir / "eval" / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics["models"]["baseline"]["lpips"] = None  # the LPIPS winner has no value now
    metrics["models"]["stage2"]["oks"]["mean"] = math.nan
    path.write_text(json.dumps(metrics))  # writes NaN, which json reads back
    md = make_report(run_dir)["md"].read_text()
    table = _main_table(md)
    assert table["baseline"][1] == "n/a" and table["stage2"][2] == "n/a"
    assert table["stage1"][1].startswith("**")  # the best remaining LPIPS
    assert table["baseline"][2].startswith("**")  # the best remaining OKS


def test_rerun_replaces_the_files(run_dir: Path) -> None:
    first = make_report(run_dir)
    path = run_dir / "eval" / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics["setup"]["base_model"] = "another-base"
    path.write_text(json.dumps(metrics))
    second = make_report(run_dir)
    assert first == second
    assert "Base model: another-base" in second["md"].read_text()
    assert not list((run_dir / "eval").glob(".*.tmp"))


def test_the_setup_says_whether_the_judge_is_the_rewards_estimator() -> None:
    from poseguide.config import load_config, to_dict
    from poseguide.evaluate.report import judge_note

    mini = to_dict(load_config("mini"))
    note = judge_note({"config": mini})
    assert note == ("judge yolo11n-pose.pt at imgsz 640; the reward trained against "
                    "yolo11n-pose.pt at imgsz 320")  # fmt: skip
    same = to_dict(load_config("mini", ["pose.estimator.imgsz=640"]))
    assert judge_note({"config": same}).startswith("NOT an independent judge")
    assert "no reward stage" in judge_note({"config": to_dict(load_config("tiny"))})


def test_a_full_disk_while_writing_the_report_is_one_line(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import errno

    import poseguide.utils.io as pio
    from poseguide.cli import main

    def full_disk(path: Path, data: bytes) -> Path:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pio, "_atomic_write_bytes", full_disk)
    assert main(["report", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and re.match(
        rf"error: could not write {re.escape(str(run_dir / 'eval'))}/\S+: No space left on "
        "device; what was there before is unchanged",
        err,
    ), err


def test_the_protocol_section_and_the_published_figures(run_dir: Path) -> None:
    """With evaluate.protocol=humansd: its settings marked as followed or not, the differences,
    and HumanSD's published Human-Art table beside this run's rows in the paper's units."""
    from poseguide.config import load_config, to_dict
    from poseguide.config.protocols import protocol_report

    path = run_dir / "eval" / "metrics.json"
    metrics = json.loads(path.read_text())
    config = to_dict(load_config(None, ["evaluate.protocol=humansd", "generate.steps=20"]))
    metrics["setup"]["protocol"] = protocol_report(config)
    entry = metrics["models"]["stage2"]
    entry["cap"] = {"AP": 0.6123}
    entry["pce"] = {"mean": 1.25, "ci_low": 1.0, "ci_high": 1.5}
    entry["fid"], entry["kid"] = 31.5, {"mean": 0.1234, "std": 0.01}
    path.write_text(json.dumps(metrics))
    md = make_report(run_dir)["md"].read_text()
    assert "## Protocol: humansd" in md and "Follows HumanSD (ICCV 2023)" in md
    assert "`generate.steps`: 20 (the protocol: 50; this run differs)" in md
    assert "`generate.scheduler`: 'ddim'" in md and "HigherHRNet" in md
    table = md.split("### Published figures beside this run", 1)[1].split("\n## ", 1)[0]
    lines = {ln.split("|")[1].strip(): [c.strip() for c in ln.strip("|").split("|")[1:]]
             for ln in table.splitlines() if ln.startswith("| ") and "---" not in ln}  # fmt: skip
    assert lines["Model"] == ["AP (%) ↑", "CAP (%) ↑", "PCE ↓", "FID ↓", "KID ×10 ↓", "CLIP ↑"]
    assert lines["HumanSD (published)"] == ["31.85", "59.11", "1.61", "26.28", "2.56", "32.98"]
    ours = lines["stage2 (this run)"]
    assert ours[0] == "70.00" and ours[1] == "61.23"  # AP 0.7, CAP 0.6123 in percent
    assert ours[2] == "1.25 [1.00, 1.50]" and ours[3] == "31.50" and ours[4] == "1.23 ± 0.10"
    # Without a protocol (the thesis'), no such section.
    metrics["setup"].pop("protocol")
    path.write_text(json.dumps(metrics))
    assert "Protocol:" not in make_report(run_dir)["md"].read_text()
