"""The field's evaluation protocols as presets (issue 20): each fills the settings its paper
fixed, a config file or an override still wins, and the report's set-up says which follow."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from poseguide.config import ConfigError, load_config, to_dict
from poseguide.config.protocols import HUMANSD_NEGATIVE_PROMPT, PROTOCOLS, protocol_report


def _value(config: object, dotted: str) -> object:
    node = to_dict(config)
    for part in dotted.split("."):
        node = node[part]
    return node


def test_humansd_preset_reproduces_every_listed_setting() -> None:
    config = load_config(None, ["evaluate.protocol=humansd"])
    expected = {
        "generate.scheduler": "ddim", "generate.steps": 50, "generate.guidance_scale": 9.0,
        "generate.negative_prompt": HUMANSD_NEGATIVE_PROMPT, "generate.batch_size": 10,
        "evaluate.seed": 42, "evaluate.fid": True, "evaluate.fid_feature": 64,
        "evaluate.kid_subset_size": 1000, "evaluate.clip_model": "openai/clip-vit-base-patch16",
        "evaluate.coco_area": "keypoint_box", "evaluate.coco_batch": 10,
        "evaluate.cap_variant": "humansd",
    }  # fmt: skip
    assert set(expected) == set(PROTOCOLS["humansd"].settings)
    for key, value in expected.items():
        assert _value(config, key) == value, key
    assert HUMANSD_NEGATIVE_PROMPT.startswith("longbody, lowres, bad anatomy")


def test_hyperhuman_preset_and_the_thesis_default() -> None:
    config = load_config(None, ["evaluate.protocol=hyperhuman"])
    for key, value in PROTOCOLS["hyperhuman"].settings.items():
        assert _value(config, key) == value, key
    assert config.generate.guidance_scale == 7.5 and config.evaluate.fid_feature == 2048
    assert config.evaluate.fid_clip and config.evaluate.coco_salient == 3
    assert to_dict(load_config(None, ["evaluate.protocol=thesis"])) == to_dict(load_config(None))
    assert load_config(None).evaluate.protocol == "thesis"


def test_a_file_or_an_override_wins_over_the_protocol(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    data = {"generate": {"steps": 12}, "evaluate": {"protocol": "humansd", "coco_batch": 4}}
    path.write_text(yaml.safe_dump(data))
    config = load_config(path, ["generate.guidance_scale=7.5"])
    assert config.generate.steps == 12 and config.evaluate.coco_batch == 4  # the file's
    assert config.generate.guidance_scale == 7.5  # the override's
    assert config.generate.scheduler == "ddim" and config.evaluate.fid_feature == 64
    # An override that switches the protocol off leaves the defaults.
    off = load_config(path, ["evaluate.protocol=thesis"])
    assert off.generate.scheduler == "unipc" and off.evaluate.coco_batch == 4
    report = protocol_report(to_dict(config))
    rows = {r["key"]: r for r in report["settings"]}
    assert report["name"] == "humansd" and "HumanSD" in report["source"]
    assert not rows["generate.steps"]["follows"] and rows["generate.steps"]["used"] == 12
    assert rows["generate.scheduler"]["follows"] and rows["evaluate.seed"]["follows"]
    assert rows["data.resolution"]["protocol"] == 512  # an expectation, checked not set
    assert any("HigherHRNet" in d for d in report["differences"])


def test_an_unknown_protocol_is_one_line() -> None:
    with pytest.raises(ConfigError, match="evaluate.protocol") as err:
        load_config(None, ["evaluate.protocol=stablepose"])
    assert "\n" not in str(err.value)


def test_choosing_a_protocol_does_not_block_resuming_the_training() -> None:
    """A protocol changes generation and evaluation only: a training checkpoint written under
    the thesis protocol resumes under humansd; a training key still refuses."""
    from poseguide.train.runner import config_changes

    before = to_dict(load_config(None))
    assert config_changes(before, load_config(None, ["evaluate.protocol=humansd"])) == []
    assert config_changes(before, load_config(None, ["train.batch_size=3"])) == ["train.batch_size"]


def test_the_differences_match_what_is_computed() -> None:
    """AP_clean is computed (coco_salient), so the hyperhuman protocol says how, not that it
    is missing; what is missing (FID_CLIP, the subset's selection) is said."""
    said = " ".join(PROTOCOLS["hyperhuman"].differences)
    assert PROTOCOLS["hyperhuman"].settings["evaluate.coco_salient"] == 3
    assert "three largest by area" in said and "not computed yet" not in said
    assert "FID_CLIP" in said and "8,236" in said
