"""A small typed-config engine: dataclasses <- YAML + dotted overrides, with helpful errors.

Supported field types: ``bool``, ``int``, ``float``, ``str``, ``Literal[...]``, ``X | None``,
``list[X]``, ``tuple[X, ...]``, ``dict[str, X]`` and nested dataclasses. A list of dataclasses
whose items have a ``name`` field can be addressed by index or by name in overrides
(``train.stages.stage2.lr=1e-6``).

Errors are :class:`ConfigError` and always name the dotted key; an unknown key also suggests the
nearest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from poseguide.errors import UserError

T = TypeVar("T")


class ConfigError(UserError, ValueError):
    """A config file, key or value is invalid; the message names the key."""


def _join(prefix: str, key: str | int) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def _suggest(prefix: str, key: str, valid: typing.Iterable[str]) -> str:
    valid = [str(v) for v in valid]
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean '{_join(prefix, close[0])}'?" if close else "."
    return f"{hint} Valid keys here: {', '.join(sorted(valid))}"


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(tp) if a is not Ellipsis)
        return f"{origin.__name__}[{args}]"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return f"a mapping ({tp.__name__})"
    return getattr(tp, "__name__", str(tp))


def _fail(key: str, value: Any, tp: Any) -> typing.NoReturn:
    raise ConfigError(f"{key or '<root>'}: expected {_type_name(tp)}, got {value!r}")


def _coerce_scalar(tp: Any, value: Any, key: str) -> Any:
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # PyYAML reads "5e-7" (no dot) as a string; accept it as the number it means.
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is type(None):
        if value is None:
            return None
    else:
        raise TypeError(f"unsupported config type {tp!r} at {key}")
    _fail(key, value, tp)


def coerce(tp: Any, value: Any, key: str = "") -> Any:
    """Convert a plain YAML value to the annotated type ``tp``, or raise ConfigError."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value, key)
    if origin is Literal:
        if isinstance(value, bool):  # YAML 1.1 turns an unquoted no/off/yes/on into a bool
            words = ("no", "off", "false") if value is False else ("yes", "on", "true")
            value = next((w for w in words if w in args), value)
        if value in args and not isinstance(value, bool):
            return value
        _fail(key, value, tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for arg in options:
            try:
                return coerce(arg, value, key)
            except ConfigError:
                # A single structured option (a section or a list) has the more precise error.
                if len(options) == 1 and (dataclasses.is_dataclass(arg) or typing.get_origin(arg)):
                    raise
        _fail(key, value, tp)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            _fail(key, value, tp)
        item_tp = args[0] if args else Any
        items = [coerce(item_tp, v, _join(key, i)) for i, v in enumerate(value)]
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                _fail(key, value, tp)
            pairs = enumerate(zip(args, value, strict=True))
            items = [coerce(a, v, _join(key, i)) for i, (a, v) in pairs]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            _fail(key, value, tp)
        return {str(k): coerce(args[1], v, _join(key, k)) for k, v in value.items()}
    return _coerce_scalar(tp, value, key)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(cls: type[T], data: Any, key: str = "") -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys and bad types raise ConfigError."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{key or '<root>'}: expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = _hints(cls)
    kwargs = {}
    for name, value in data.items():
        if name not in fields:
            raise ConfigError(f"unknown key '{_join(key, name)}'{_suggest(key, str(name), fields)}")
        kwargs[name] = coerce(hints[name], value, _join(key, name))
    try:
        return cls(**kwargs)
    except ConfigError as err:
        if key and not str(err).startswith(key):
            raise ConfigError(f"{key}.{err}") from None
        raise


def to_dict(obj: Any) -> Any:
    """Plain data (dicts, lists, scalars) for a config object; tuples become lists."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def _child(node: Any, part: str, path: str) -> tuple[Any, Any]:
    """Return (container key, child) for one step of a dotted path through plain data."""
    if isinstance(node, dict):
        if part not in node:
            raise ConfigError(f"unknown key '{_join(path, part)}'{_suggest(path, part, node)}")
        return part, node[part]
    if isinstance(node, list):
        if part.lstrip("-").isdigit():
            index = int(part)
            if not -len(node) <= index < len(node):
                raise ConfigError(f"{_join(path, part)}: index out of range (length {len(node)})")
            return index, node[index]
        names = [item.get("name") for item in node if isinstance(item, dict)]
        if part in names:
            index = names.index(part)
            return index, node[index]
        raise ConfigError(
            f"unknown item '{_join(path, part)}': use an index or one of the names "
            f"{[n for n in names if n]}"
        )
    raise ConfigError(f"{path}: is a value, not a section; cannot set '{_join(path, part)}'")


def apply_override(data: dict, override: str) -> None:
    """Apply one ``dotted.key=value`` override in place; the value is parsed as YAML."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like key.sub=value")
    dotted, raw = override.split("=", 1)
    parts = [p for p in dotted.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {override!r} has an empty key")
    node, path = data, ""
    for part in parts[:-1]:
        key, node = _child(node, part, path)
        path = _join(path, key if isinstance(key, str) else part)
    key, _ = _child(node, parts[-1], path)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"{dotted}: cannot parse value {raw!r}: {err}") from None
    if isinstance(value, bool) and raw.strip().lower() not in ("true", "false"):
        value = raw.strip()  # YAML 1.1 reads no/yes/on/off as booleans; keep the word
    node[key] = value


def _deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = (
            _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """Read a YAML config; a top-level ``base: other.yaml`` is loaded first and merged under it."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"{path}: 'base' includes form a cycle")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    base = data.pop("base", None)
    if base is not None:
        data = _deep_merge(read_yaml(path.parent / base, (*_seen, path)), data)
    return data


def load(cls: type[T], data: dict, overrides: typing.Sequence[str] = ()) -> T:
    """Validate ``data`` into ``cls``, fill defaults, apply overrides, validate again."""
    config = from_dict(cls, data)
    if not overrides:
        return config
    full = to_dict(config)
    for override in overrides:
        apply_override(full, override)
    return from_dict(cls, full)


def dump_yaml(config: Any) -> str:
    """The config as YAML text (all keys, defaults included)."""
    return yaml.safe_dump(to_dict(config), sort_keys=False, default_flow_style=False, width=100)
