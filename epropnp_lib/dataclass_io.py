"""Dataclass configs from and to plain mappings (YAML/JSON, checkpoints), strictly.

``from_dict`` is the one place where outside configuration enters a dataclass: unknown keys,
missing required keys and values of the wrong type raise :class:`~epropnp_lib.errors.ConfigError`
naming the key and where it came from; the dataclass's own ``__post_init__`` then checks ranges.
``to_dict`` is its inverse and produces only plain values (dict, list, str, int, float, bool,
None), so that a config can be stored in a checkpoint loaded with ``torch.load(weights_only=True)``
or written as YAML.

Example::

    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Cfg:
    ...     depth: int = 18
    ...     widths: tuple[int, ...] = (16, 32)
    >>> from_dict(Cfg, {"depth": 34})
    Cfg(depth=34, widths=(16, 32))
    >>> to_dict(Cfg())
    {'depth': 18, 'widths': [16, 32]}
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from epropnp_lib.errors import ConfigError

T = TypeVar("T")

__all__ = ["from_dict", "to_dict"]


def json_default(value: Any) -> Any:
    """``default=`` of :func:`json.dumps`: NumPy scalars as plain Python values (anything else
    raises ``TypeError``, as ``json`` does)."""
    item = getattr(value, "item", None)
    if item is not None and type(value).__module__ == "numpy":
        return item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def from_dict(cls: type[T], mapping: Mapping[str, Any], *, where: str = "config") -> T:
    """Build the dataclass ``cls`` from ``mapping``; nested dataclasses come from nested mappings.

    Raises:
        ConfigError: ``mapping`` is not a mapping, has a key that is not a field of ``cls``, lacks
            a required field, or a value does not have the field's type (ints are accepted for
            floats; bools are never accepted as numbers).
    """
    if not dataclasses.is_dataclass(cls) or not isinstance(cls, type):
        raise TypeError(f"{cls!r} is not a dataclass type")
    if not isinstance(mapping, Mapping):
        raise ConfigError(
            f"{where}: expected a mapping for {cls.__name__}, got {type(mapping).__name__}"
        )
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(mapping) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))} for {cls.__name__}; "
            f"known keys: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, field in fields.items():
        if name not in mapping:
            required = field.default is dataclasses.MISSING
            if required and field.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{where}: missing required key {name!r} for {cls.__name__}")
            continue
        kwargs[name] = _convert(hints[name], mapping[name], f"{where}.{name}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: invalid {cls.__name__}: {exc}") from exc


def to_dict(obj: Any) -> Any:
    """Plain-value form of a dataclass instance (recursively); tuples become lists, enums names."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, enum.Enum):
        return obj.name
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"to_dict: cannot represent {type(obj).__name__} as a plain value")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in args:
            if option is type(None):
                continue
            try:
                return _convert(option, value, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} matches none of {_type_name(tp)}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value, where=where)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        if isinstance(value, tp):
            return value
        for member in tp:
            if value in (member.name, member.value):
                return member
        raise ConfigError(f"{where}: {value!r} is not one of {[m.name for m in tp]}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list for {_type_name(tp)}, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        if not args:
            return tuple(value)
        pairs = enumerate(zip(args, value, strict=True))
        return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in pairs)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        return [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        key_t, val_t = args if args else (Any, Any)
        return {
            _convert(key_t, k, f"{where}<key>"): _convert(val_t, v, f"{where}[{k!r}]")
            for k, v in value.items()
        }
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{where}: expected null, got {value!r}")
        return None
    raise TypeError(f"{where}: from_dict does not support fields of type {_type_name(tp)}")
