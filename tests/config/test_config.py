"""The config engine: YAML + overrides into typed dataclasses, with errors that name keys."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import yaml

from poseguide.cli import main
from poseguide.config import Config, ConfigError, dump_yaml, load_config, save_config, to_dict
from poseguide.config.core import apply_override, from_dict, load
from poseguide.config.yaml_files import read_yaml

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


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
    # Precision comes from poseguide's train.mixed_precision (a launcher value would be ignored).
    assert config.mixed_precision in (None, "no")
    text = path.read_text()
    assert text.startswith("#") and f"--config_file configs/accelerate/{path.name}" in text
    if "deepspeed" in path.name:
        assert config.deepspeed_config["zero_stage"] == int(path.stem[-1])  # deepspeed_zeroN
        assert "gradient_clipping" not in config.deepspeed_config  # train.optim.max_grad_norm


def test_yaml_words_that_look_boolean_stay_words() -> None:
    config = load_config("tiny", ["train.mixed_precision=no", "train.tensorboard=true"])
    assert config.train.mixed_precision == "no" and config.train.tensorboard is True
    with pytest.raises(ConfigError, match="train.tensorboard: expected bool, got 'yes'"):
        load_config("tiny", ["train.tensorboard=yes"])


def test_unquoted_no_in_a_yaml_file_means_the_word(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  mixed_precision: no\n")
    assert load_config(path).train.mixed_precision == "no"


def test_fixed_tuples_convert_each_position_to_its_own_type() -> None:
    @dataclass
    class Pair:
        pair: tuple[int, str] = (1, "a")

    assert from_dict(Pair, {"pair": [2, "b"]}).pair == (2, "b")
    with pytest.raises(ConfigError, match=r"pair\.1: expected str, got 3"):
        from_dict(Pair, {"pair": [2, 3]})
    with pytest.raises(ConfigError, match=r"pair: expected tuple\[int, str\], got \[2\]"):
        from_dict(Pair, {"pair": [2]})


def test_floats_are_finite_whatever_their_spelling() -> None:
    @dataclass
    class Clip:
        norm: float | None = 1.0

    for value in (float("nan"), float("inf"), "nan", "-inf", "1e400", 10**400):
        with pytest.raises(ConfigError, match=r"^norm: expected a finite number, got "):
            from_dict(Clip, {"norm": value})
    assert from_dict(Clip, {"norm": None}).norm is None
    with pytest.raises(ConfigError, match="norm: expected float or null, got 'x'"):
        from_dict(Clip, {"norm": "x"})


def test_duplicate_keys_name_file_key_and_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("run:\n  name: a\n  seed: 1\n  name: b\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f"{path}: duplicate key 'run.name' (lines 2 and 4); YAML would keep only the last one: "
        "remove one"
    )
    path.write_text("train:\n  stages:\n    - {name: s1, lr: 1.0e-3, lr: 2.0e-3}\n")
    with pytest.raises(
        ConfigError, match=r"duplicate key 'train\.stages\.0\.lr' \(twice on line 3\)"
    ):
        load_config(path)
    path.write_text("run: {seed: 1}\ndata: {resolution: 64}\nrun: {name: x}\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml: duplicate key 'run' \(lines 1 and 3\)"):
        load_config(path)
    # A key set over a `<<` merge is YAML's way to override it, not a duplicate.
    path.write_text("x: &d {name: a, seed: 1}\nrun:\n  <<: *d\n  seed: 2\n")
    assert read_yaml(path)["run"] == {"name": "a", "seed": 2}


@pytest.mark.parametrize("base", ["5", "[a.yaml]", "''", "{a: 1}", "true"])
def test_base_must_be_a_file_name(tmp_path: Path, base: str) -> None:
    path = tmp_path / "top.yaml"
    path.write_text(f"base: {base}\nrun: {{name: b}}\n")
    value = repr(yaml.safe_load(f"v: {base}")["v"])
    with pytest.raises(ConfigError, match="base: expected the file name of another config") as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: base:") and str(info.value).endswith(value)


def test_value_errors_name_the_file_that_set_the_value(tmp_path: Path) -> None:
    def message(name: str, overrides: tuple[str, ...] = ()) -> str:
        with pytest.raises(ConfigError) as info:
            load_config(tmp_path / name, list(overrides))
        return str(info.value)

    files = {
        "base.yaml": "run: {seed: 3}\ntrain: {optim: {beta1: 5}}\n",
        "top.yaml": "base: base.yaml\nrun: {name: b}\n",  # beta1 still comes from base.yaml
        "fixed.yaml": "base: base.yaml\ntrain: {optim: {beta1: 0.5}}\nrun: {seed: -1}\n",
        "ok.yaml": "base: base.yaml\ntrain: {optim: {beta1: 0.5}}\n",
        "typed.yaml": "data:\n  resolution: 128.7\n",
        "stages.yaml": "train:\n  stages:\n    - {name: s, init: previous}\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    beta1 = "train.optim.beta1: must be in [0, 1), got 5.0"
    assert message("base.yaml") == f"{tmp_path / 'base.yaml'}: {beta1}"
    assert message("top.yaml") == f"{tmp_path / 'base.yaml'}: {beta1}"
    assert message("fixed.yaml").startswith(f"{tmp_path / 'fixed.yaml'}: run.seed: ")
    assert message("fixed.yaml").endswith("got -1")
    assert message("typed.yaml") == (
        f"{tmp_path / 'typed.yaml'}: data.resolution: expected int, got 128.7"
    )
    assert message("stages.yaml").startswith(f"{tmp_path / 'stages.yaml'}: train.stages.0.init: ")
    # A value an override set is the override's, not the file's: no file is named.
    assert message("ok.yaml", ("run.seed=-2",)).startswith("run.seed: must be a seed in 0..")
    first = message("ok.yaml", ("train.stages.stage1.init=previous",))
    assert first.startswith("train.stages.0.init: the first stage ('stage1')")


def test_cli_prints_a_duplicate_key_as_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bad = tmp_path / "dup.yaml"
    bad.write_text("run:\n  seed: 1\n  seed: 2\n")
    assert main(["config", "validate", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{bad}: duplicate key 'run.seed' (lines 2 and 3)" in err


def test_a_config_over_the_size_limit_is_refused_before_parsing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A YAML of a million keys took 82 s and 2.4 GB to reach its unknown-key error."""
    import poseguide.config.yaml_files as core

    head = "run:\n  seed: 1\n"
    exact = tmp_path / "exact.yaml"
    exact.write_text(head + "#" * (core.MAX_CONFIG_BYTES - len(head)))
    assert load_config(exact).run.seed == 1  # at the limit: read
    big = tmp_path / "big.yaml"
    big.write_text(head + "#" * (core.MAX_CONFIG_BYTES - len(head) + 1))
    monkeypatch.setattr(core.yaml, "load", lambda *a, **k: pytest.fail("the file was parsed"))
    assert main(["config", "validate", str(big)]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err == f"error: {big}: over 1,048,576 bytes, far more than a config holds (presets "
        "are a few KB); check that this is the right file"
    )
    (tmp_path / "latin1.yaml").write_bytes("run:\n  name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.yaml: not UTF-8 text"):
        load_config(tmp_path / "latin1.yaml")


def test_aliases_that_expand_past_the_limit_are_refused(tmp_path: Path) -> None:
    """871 bytes of nested aliases (nine levels) expand to 10**9 keys: the loader's walks over
    the data hung; six levels (10**6) here. A recursive alias recursed without end."""
    lines = ["l0: &l0 {" + ", ".join(f"k{i}: 1" for i in range(10)) + "}"]
    for n in range(1, 6):
        lines.append(f"l{n}: &l{n} {{" + ", ".join(f"k{i}: *l{n - 1}" for i in range(10)) + "}")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=r"bomb.yaml: over 100,000 keys and values with its "):
        load_config(bomb)
    (tmp_path / "loop.yaml").write_text("run: &a [1, *a]\n")
    with pytest.raises(ConfigError, match=r"loop.yaml: over 100,000 keys and values"):
        load_config(tmp_path / "loop.yaml")
