"""The config engine: YAML + overrides into typed dataclasses, with errors that name keys."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import yaml

from poseguide.cli import main
from poseguide.config import Config, ConfigError, dump_yaml, load_config, save_config, to_dict
from poseguide.config.core import apply_override, from_dict, load, read_yaml

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


@dataclass
class Stage:
    name: str = "s"
    lr: float = 1e-4
    epochs: int = 1


@dataclass
class Toy:
    mode: Literal["a", "b"] = "a"
    size: tuple[int, int] = (8, 8)
    path: str | None = None
    flag: bool = False
    stages: list[Stage] = field(default_factory=lambda: [Stage("one"), Stage("two")])
    extra: dict[str, float] = field(default_factory=dict)


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_preset_loads_and_validates(path: Path) -> None:
    config = load_config(path)
    assert isinstance(config, Config)
    first = path.read_text().splitlines()[0]
    assert first.startswith("#"), f"{path.name} must start with a comment giving its command"
    # The resolved config round-trips through YAML unchanged.
    assert load(Config, yaml.safe_load(dump_yaml(config))) == config


def test_presets_exist() -> None:
    assert {"tiny", "thesis"} <= {p.stem for p in CONFIG_DIR.glob("*.yaml")}


def test_types_are_coerced_and_checked() -> None:
    toy = from_dict(Toy, {"mode": "b", "size": [4, 2], "path": "x", "extra": {"k": 1}})
    assert toy.mode == "b" and toy.size == (4, 2) and toy.path == "x"
    assert toy.extra == {"k": 1.0} and isinstance(toy.extra["k"], float)
    # PyYAML reads 5e-7 (no dot) as a string: it still means the number.
    assert from_dict(Stage, yaml.safe_load("lr: 5e-7")).lr == 5e-7


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"mode": "c"}, "mode: expected one of 'a', 'b', got 'c'"),
        ({"size": [1, 2, 3]}, "size: expected tuple[int, int]"),
        ({"flag": "yes"}, "flag: expected bool, got 'yes'"),
        ({"flag": 1}, "flag: expected bool, got 1"),
        ({"stages": [{"lr": "fast"}]}, "stages.0.lr: expected float, got 'fast'"),
        ({"stages": [{"epochs": 1.5}]}, "stages.0.epochs: expected int, got 1.5"),
        ({"path": 3}, "path: expected str or null"),
    ],
)
def test_type_errors_name_key_and_expected_type(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        from_dict(Toy, data)


def test_unknown_key_names_it_and_suggests_nearest() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown key 'stages\.0\.lrr'; did you mean 'stages\.0\.lr'"
    ):
        from_dict(Toy, {"stages": [{"lrr": 1.0}]})
    with pytest.raises(
        ConfigError, match=r"unknown key 'pose\.rendr'; did you mean 'pose\.render'"
    ):
        load_config(None, ["pose.rendr.style=controlnet_aux"])


def test_overrides_by_index_and_by_name() -> None:
    data = to_dict(Toy())
    apply_override(data, "stages.1.lr=0.5")
    apply_override(data, "stages.one.epochs=7")
    apply_override(data, "size=[3, 4]")
    toy = from_dict(Toy, data)
    assert toy.stages[1].lr == 0.5 and toy.stages[0].epochs == 7 and toy.size == (3, 4)
    with pytest.raises(ConfigError, match="use an index or one of the names"):
        apply_override(data, "stages.three.lr=1")
    with pytest.raises(ConfigError, match="must look like key.sub=value"):
        apply_override(data, "stages")
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_override(data, "mode.x=1")


def test_overrides_are_validated_after_applying() -> None:
    config = load_config("tiny", ["run.seed=5", "pose.render.style=controlnet_aux"])
    assert config.run.seed == 5 and config.pose.render.style == "controlnet_aux"
    with pytest.raises(ConfigError, match="pose.estimator.conf: must be in"):
        load_config("tiny", ["pose.estimator.conf=1.5"])
    with pytest.raises(ConfigError, match="run.seed: expected int"):
        load_config("tiny", ["run.seed=abc"])


def test_base_include_merges(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(
        "run: {name: a, seed: 3}\npose: {render: {style: controlnet_aux}}\n"
    )
    (tmp_path / "top.yaml").write_text("base: base.yaml\nrun: {name: b}\n")
    config = load_config(tmp_path / "top.yaml")
    assert (config.run.name, config.run.seed) == ("b", 3)
    assert config.pose.render.style == "controlnet_aux"
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        read_yaml(tmp_path / "loop.yaml")


def test_save_and_reload_round_trip(tmp_path: Path) -> None:
    config = load_config("thesis", ["run.seed=11"])
    path = save_config(config, tmp_path / "resolved.yaml")
    assert load_config(path) == config


def test_bad_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config not found: nope"):
        load_config("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(bad)


def test_cli_config_show_and_validate(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["config", "show", "tiny", "run.seed=9", "--save", str(tmp_path / "c.yaml")]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["run"]["seed"] == 9 and shown["pose"]["render"]["style"] == "controlnet10"
    assert yaml.safe_load((tmp_path / "c.yaml").read_text()) == shown
    assert main(["config", "validate", "thesis"]) == 0
    bad = tmp_path / "typo.yaml"
    bad.write_text("run: {sed: 1}\n")
    assert main(["config", "validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'run.sed'; did you mean 'run.seed'" in err


@pytest.mark.parametrize(
    "path", sorted((CONFIG_DIR / "accelerate").glob("*.yaml")), ids=lambda p: p.name
)
def test_accelerate_configs_parse(path: Path) -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    assert config.mixed_precision == "bf16"
    assert path.read_text().startswith("#")
    if "deepspeed" in path.name:
        assert config.deepspeed_config["zero_stage"] == 2


def test_yaml_words_that_look_boolean_stay_words() -> None:
    config = load_config("tiny", ["train.mixed_precision=no", "train.tensorboard=true"])
    assert config.train.mixed_precision == "no" and config.train.tensorboard is True
    with pytest.raises(ConfigError, match="train.tensorboard: expected bool, got 'yes'"):
        load_config("tiny", ["train.tensorboard=yes"])


def test_unquoted_no_in_a_yaml_file_means_the_word(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  mixed_precision: no\n")
    assert load_config(path).train.mixed_precision == "no"
