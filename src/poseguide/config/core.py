"""A small typed-config engine: dataclasses <- YAML + dotted overrides, with helpful errors.

Supported field types: ``bool``, ``int``, ``float``, ``str``, ``Literal[...]``, ``X | None``,
``list[X]``, ``tuple[X, ...]``, ``dict[str, X]`` and nested dataclasses. A list of dataclasses
whose items have a ``name`` field can be addressed by index or by name in overrides
(``train.stages.stage2.lr=1e-6``). A ``float`` is always finite (YAML's ``.nan`` and ``.inf`` are
refused); an ``int`` is never a bool or a float.

Errors are :class:`ConfigError` and always name the dotted key (list items by index:
``train.stages.0.lr``), and the file when the value came from one; an unknown key also suggests
the nearest valid one. A key given twice in one YAML mapping is an error too.

The root class may define ``check_loaded()``: checks of a whole config as loaded (such as "the
first stage cannot start from the previous one"), which configs derived from it in code (one
selected stage of several) need not pass; :func:`load` calls it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any, Literal, TypeVar, Union

import yaml

from poseguide.errors import UserError

T = TypeVar("T")

# Where each key of a config file's data came from: a key path (dict keys only; a list belongs to
# the key that holds it) -> the file that set it, or None when an override did.
Sources = dict[tuple[str, ...], str | None]


class ConfigError(UserError, ValueError):
    """A config file, key or value is invalid; the message names the key.

    ``key`` is the dotted key at fault (None when the error is not about one key); it is how
    :func:`load` finds the file that set the value."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class _TypeMismatch(ConfigError):
    """The value has the wrong type (as opposed to a right type with a wrong value)."""


class ConfigData(dict):
    """Config data read from YAML files, with the :data:`Sources` of its keys."""

    def __init__(self, data: dict, sources: Sources | None = None) -> None:
        super().__init__(data)
        self.sources = sources or {}


def _join(prefix: str, key: Any) -> str:
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
    raise _TypeMismatch(f"{key or '<root>'}: expected {_type_name(tp)}, got {value!r}", key=key)


def _coerce_float(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        _fail(key, value, float)
    number: float | None
    try:
        # PyYAML reads "5e-7" (no dot) as a string; accept it as the number it means.
        number = float(value)
    except ValueError:
        number = None
    except OverflowError:  # an int beyond float's range
        number = math.inf
    if number is None:
        _fail(key, value, float)
    if not math.isfinite(number):
        raise ConfigError(f"{key}: expected a finite number, got {value!r}", key=key)
    return number


def _coerce_scalar(tp: Any, value: Any, key: str) -> Any:
    if tp is Any:
        return value
    if tp is float:
        return _coerce_float(value, key)
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is str:
        ok = isinstance(value, str)
    elif tp is type(None):
        ok = value is None
    else:
        raise TypeError(f"unsupported config type {tp!r} at {key}")
    if not ok:
        _fail(key, value, tp)
    return value


def _coerce_union(args: tuple, value: Any, key: str, tp: Any) -> Any:
    if value is None and type(None) in args:
        return None
    options = [a for a in args if a is not type(None)]
    for arg in options:
        try:
            return coerce(arg, value, key)
        except _TypeMismatch:
            # A single structured option (a section or a list) has the more precise error.
            if len(options) == 1 and (dataclasses.is_dataclass(arg) or typing.get_origin(arg)):
                raise
        # Any other ConfigError (right type, wrong value: a NaN float) is the precise one.
    _fail(key, value, tp)


def _coerce_sequence(origin: Any, args: tuple, value: Any, key: str, tp: Any) -> Any:
    if not isinstance(value, (list, tuple)):
        _fail(key, value, tp)
    if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
        if len(value) != len(args):
            _fail(key, value, tp)
        item_types = list(args)  # tuple[int, str]: one type per position
    else:
        item_types = [args[0] if args else Any] * len(value)
    pairs = enumerate(zip(item_types, value, strict=True))
    items = [coerce(a, v, _join(key, i)) for i, (a, v) in pairs]
    return items if origin is list else tuple(items)


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
        return _coerce_union(args, value, key, tp)
    if origin in (list, tuple):
        return _coerce_sequence(origin, args, value, key, tp)
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
        raise _TypeMismatch(f"{key or '<root>'}: expected a mapping, got {data!r}", key=key)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = _hints(cls)
    kwargs = {}
    for name, value in data.items():
        if name not in fields:
            where = _join(key, name)
            raise ConfigError(f"unknown key '{where}'{_suggest(key, str(name), fields)}", key=where)
        kwargs[name] = coerce(hints[name], value, _join(key, name))
    try:
        return cls(**kwargs)
    except ConfigError as err:
        # __post_init__ names keys relative to its own section.
        if key and not str(err).startswith(key):
            where = _join(key, err.key) if err.key else key
            raise ConfigError(f"{key}.{err}", key=where) from None
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
            return index % len(node), node[index]
        names = [item.get("name") for item in node if isinstance(item, dict)]
        if part in names:
            index = names.index(part)
            return index, node[index]
        raise ConfigError(
            f"unknown item '{_join(path, part)}': use an index or one of the names "
            f"{[n for n in names if n]}"
        )
    raise ConfigError(f"{path}: is a value, not a section; cannot set '{_join(path, part)}'")


def apply_override(data: dict, override: str) -> tuple[str, ...]:
    """Apply one ``dotted.key=value`` override in place; the value is parsed as YAML.

    Returns the key path it set, list items by index (``("train", "stages", "0", "lr")``)."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like key.sub=value")
    dotted, raw = override.split("=", 1)
    parts = [p for p in dotted.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {override!r} has an empty key")
    node, path, resolved = data, "", []
    for part in parts[:-1]:
        key, node = _child(node, part, path)
        path = _join(path, key if isinstance(key, str) else part)
        resolved.append(str(key))
    key, _ = _child(node, parts[-1], path)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"{dotted}: cannot parse value {raw!r}: {err}") from None
    if isinstance(value, bool) and raw.strip().lower() not in ("true", "false"):
        value = raw.strip()  # YAML 1.1 reads no/yes/on/off as booleans; keep the word
    node[key] = value
    return (*resolved, str(key))


def _source_of(key: str | None, sources: Sources) -> str | None:
    """The file that set ``key`` (or the section holding it); None for an override or a default."""
    parts = tuple(key.split(".")) if key else ()
    for n in range(len(parts), 0, -1):
        if parts[:n] in sources:
            return sources[parts[:n]]
    return None


def _build(cls: type[T], data: dict, sources: Sources, root: bool) -> T:
    """``from_dict`` (and ``check_loaded`` when ``root``) with the file named in its errors."""
    try:
        config = from_dict(cls, data)
        check = getattr(config, "check_loaded", None) if root else None
        if check is not None:
            check()
    except ConfigError as err:
        file = _source_of(err.key, sources)
        if file is None:
            raise
        raise ConfigError(f"{file}: {err}", key=err.key) from None
    return config


def load(cls: type[T], data: dict, overrides: typing.Sequence[str] = ()) -> T:
    """Validate ``data`` into ``cls``, fill defaults, apply overrides, validate again.

    Errors name the file (when ``data`` came from :func:`read_yaml`) and the key."""
    sources: Sources = dict(getattr(data, "sources", {}))
    config = _build(cls, data, sources, root=not overrides)
    if not overrides:
        return config
    full = to_dict(config)
    for override in overrides:
        path = apply_override(full, override)
        # The override replaces what a file set at its key and below.
        sources = {p: f for p, f in sources.items() if p[: len(path)] != path}
        sources[path] = None
    return _build(cls, full, sources, root=True)


def dump_yaml(config: Any) -> str:
    """The config as YAML text (all keys, defaults included)."""
    return yaml.safe_dump(to_dict(config), sort_keys=False, default_flow_style=False, width=100)
