"""Typed configs: dataclass schema, YAML files with ``base:`` includes, dotted overrides."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from poseguide.config.core import ConfigError, dump_yaml, to_dict
from poseguide.config.core import load as _load
from poseguide.config.protocols import with_protocol
from poseguide.config.schema import Config
from poseguide.config.yaml_files import read_yaml
from poseguide.utils.io import atomic_write_text

__all__ = [
    "Config",
    "ConfigError",
    "dump_yaml",
    "find_config",
    "load_config",
    "save_config",
    "to_dict",
]

# Presets live in the repository's configs/ folder (the package is installed editable from it).
PRESET_DIR = Path(__file__).resolve().parents[3] / "configs"


def find_config(name_or_path: str | Path) -> Path:
    """A config path as given, or the preset ``configs/NAME.yaml`` for a bare name."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    for candidate in (PRESET_DIR / f"{name_or_path}.yaml", PRESET_DIR / str(name_or_path)):
        if candidate.is_file():
            return candidate
    presets = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
    raise ConfigError(f"config not found: {name_or_path} (a path, or one of the presets {presets})")


def load_config(name_or_path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Load a YAML config (or the defaults when None) and apply ``key.sub=value`` overrides."""
    data = read_yaml(find_config(name_or_path)) if name_or_path is not None else {}
    return _load(Config, with_protocol(data, overrides), overrides)


def save_config(config: Config, path: str | Path) -> Path:
    """Write the resolved config (every key, defaults included) as YAML, atomically."""
    return atomic_write_text(path, dump_yaml(config))
