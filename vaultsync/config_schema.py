"""The one generic validator behind :mod:`vaultsync.config`: a TOML table into a frozen dataclass,
every key checked against the field's type, unknown keys an error naming the file and the key."""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from vaultsync.errors import ConfigError
from vaultsync.leases import parse_duration


def _only(raw: Mapping[str, Any], allowed: set[str], src: str, where: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        at = f"{where}." if where else ""
        raise ConfigError(f"{src}: unknown setting {at}{unknown[0]} (allowed: {', '.join(sorted(allowed))})")


def _section(cls: type, raw: Any, src: str, where: str, *, durations: set[str] = frozenset(), forbid: set[str] = frozenset()) -> Any:  # type: ignore[assignment]
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{src}: {where} must be a table")
    for key in forbid:
        if key in raw:
            raise ConfigError(f"{src}: {where}.{key} may not be set in a file; use an environment variable or a token file")
    names = {f.name for f in fields(cls)} - {"token"}
    _only(raw, names, src, where)
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key in durations and value is not None:
            try:
                value = parse_duration(value)
            except ValueError as exc:
                raise ConfigError(f"{src}: {where}.{key}: {exc}") from None
        elif isinstance(value, list):
            value = tuple(value)
        if not _conforms(value, hints[key]):
            raise ConfigError(f"{src}: {where}.{key} must be {_describe(hints[key])}, not {type(value).__name__} {value!r}"[:300])
        values[key] = value
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"{src}: {where}: {exc}") from None


def _conforms(value: Any, tp: Any) -> bool:
    """Does a TOML value fit a dataclass field's type? (bool is not an int here.)"""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, a) for a in args)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin is tuple:
        return isinstance(value, (tuple, list)) and all(_conforms(v, args[0]) for v in value)
    if origin in (Mapping, dict):
        return isinstance(value, Mapping) and all(isinstance(k, str) and _conforms(v, args[1]) for k, v in value.items())
    return isinstance(value, origin or tp)


def _describe(tp: Any) -> str:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
        return _describe(args[0])
    return {bool: "true or false", int: "a whole number", float: "a number or a duration", str: "a string"}.get(
        tp, "a list of strings" if typing.get_origin(tp) is tuple else "a table of strings" if typing.get_origin(tp) in (Mapping, dict) else str(tp)
    )


def _positive(value: float | None, src: str, where: str) -> None:
    if value is not None and value <= 0:
        raise ConfigError(f"{src}: {where} must be more than 0")
