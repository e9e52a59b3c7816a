"""Reading config files: strict YAML (a key given twice is an error, no Python tags), bounded
(file size and the values its aliases expand to), with ``include:`` files merged beneath and the
file every key came from recorded for the error messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from poseguide.config.core import ConfigData, ConfigError, Sources, _join
from poseguide.utils.io import read_at_most

# The largest config file read: presets are a few KB; a file of a million keys (several MB) took
# over a minute and gigabytes to parse before its first unknown-key error.
MAX_CONFIG_BYTES = 1 << 20
# The most keys and list items a config file may hold with its aliases (*name) expanded: a few
# hundred are real; an 871-byte file of nested aliases expands to a billion and hung the loader.
MAX_CONFIG_VALUES = 100_000


def _deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = (
            _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (PyYAML
    silently keeps the last one). Keys given by a ``<<`` merge may be overridden as usual."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._paths: dict[int, str] = {}  # id(node) -> its dotted key, for the message

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        path = self._paths.get(id(node), "")
        lines: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = lines.get(key)
            except TypeError:  # an unhashable key: PyYAML's own error says so below
                continue
            if first is not None:
                where = f"lines {first} and {line}" if first != line else f"twice on line {line}"
                raise ConfigError(
                    f"duplicate key '{_join(path, key)}' ({where}); YAML would keep only the "
                    "last one: remove one",
                    key=_join(path, key),
                )
            lines[key] = line
            self._paths[id(value_node)] = _join(path, key)
        return super().construct_mapping(node, deep=deep)

    def construct_sequence(self, node: yaml.SequenceNode, deep: bool = False) -> list:
        path = self._paths.get(id(node), "")
        for index, item in enumerate(node.value):
            self._paths[id(item)] = _join(path, index)
        return super().construct_sequence(node, deep=deep)


def _key_paths(data: dict, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], bool]:
    """Every key path of nested mappings -> whether its value is itself a mapping."""
    out = {}
    for k, v in data.items():
        out[(*prefix, str(k))] = isinstance(v, dict)
        if isinstance(v, dict):
            out.update(_key_paths(v, (*prefix, str(k))))
    return out


def _merge_sources(base: Sources, top: dict, file: str) -> Sources:
    """The sources of ``_deep_merge(base data, top)`` where ``top`` came from ``file``."""
    paths = _key_paths(top)
    replaced = {p for p, is_mapping in paths.items() if not is_mapping}
    kept = {p: f for p, f in base.items() if not any(p[:i] in replaced for i in range(len(p)))}
    return {**kept, **dict.fromkeys(paths, file)}


def _read_config_text(path: Path) -> str:
    """The file's text, refused unparsed when it is over :data:`MAX_CONFIG_BYTES`."""
    data = read_at_most(path, MAX_CONFIG_BYTES)
    if data is None:
        raise ConfigError(
            f"{path}: over {MAX_CONFIG_BYTES:,} bytes, far more than a config holds (presets are "
            "a few KB); check that this is the right file"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None


def _parse_yaml(path: Path) -> dict:
    text = _read_config_text(path)
    try:
        data = yaml.load(text, Loader=_StrictLoader) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}", key=err.key) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    _check_expanded_size(data, path)
    return data


def _check_expanded_size(data: dict, path: Path) -> None:
    """Refuse ``data`` when it holds over :data:`MAX_CONFIG_VALUES` keys and items, counted as
    every later walk sees them (an alias once per use); stops counting at the limit."""
    stack: list[Any] = [data]
    count = 0
    while stack:
        node = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            count += 1
            if count > MAX_CONFIG_VALUES:
                raise ConfigError(
                    f"{path}: over {MAX_CONFIG_VALUES:,} keys and values with its aliases "
                    "(*name) expanded, far more than a config holds; use fewer aliases"
                )
            if isinstance(child, (dict, list)):
                stack.append(child)


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> ConfigData:
    """Read a YAML config; a top-level ``base: other.yaml`` (a path relative to this file) is
    loaded first and merged under it. The result remembers which file set each key."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"{path}: 'base' includes form a cycle")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    data = _parse_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return ConfigData(data, dict.fromkeys(_key_paths(data), str(path)))
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(
            f"{path}: base: expected the file name of another config (a path relative to this "
            f"file), got {base!r}",
            key="base",
        )
    below = read_yaml(path.parent / base, (*_seen, path))
    return ConfigData(_deep_merge(below, data), _merge_sources(below.sources, data, str(path)))
