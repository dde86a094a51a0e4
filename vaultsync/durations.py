"""Durations as Vault and Go write them (``"30s"``, ``"1h30m"``, ``"7d"``), parsed into seconds.
(Split out of :mod:`vaultsync.leases`, which re-exports :func:`parse_duration`.)"""

from __future__ import annotations

import math
import re

_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,  # U+00B5 MICRO SIGN, as Go prints it
    "μs": 1e-6,  # U+03BC GREEK SMALL LETTER MU
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,  # Vault's parseutil accepts days; Go's time package does not
}
# Longest units first so "ms" is not read as "m" followed by garbage.
_UNIT_ALTERNATION = "|".join(sorted(map(re.escape, _UNIT_SECONDS), key=len, reverse=True))
_COMPONENT = re.compile(rf"(\d+(?:\.\d*)?|\.\d+)({_UNIT_ALTERNATION})")
_PLAIN_NUMBER = re.compile(r"(\d+(?:\.\d*)?|\.\d+)")


def parse_duration(value: str | int | float) -> float:
    """Parse a duration into seconds.

    Accepts what Vault/OpenBao and their configs use: plain numbers (seconds,
    as ints, floats or strings such as ``"30"``) and Go-style strings made of
    number+unit components (``"30s"``, ``"5m"``, ``"1h30m"``, ``"768h"``,
    ``"1.5h"``, ``"250ms"``, ``"7d"``). Durations are never negative: a TTL
    below zero is always a bug upstream, so it is rejected rather than clamped.

    Raises ``ValueError`` naming the offending text (durations are
    configuration, never secrets).
    """
    if isinstance(value, bool):  # bool is an int subclass; True seconds is a bug
        raise ValueError(f"invalid duration {value!r}: expected a number or a string like '30s'")
    if isinstance(value, (int, float)):
        seconds = float(value)
        _check_seconds(seconds, value)
        return seconds
    if not isinstance(value, str):
        raise ValueError(f"invalid duration of type {type(value).__name__}: expected str, int or float")

    text = value.strip()
    if not text:
        raise ValueError("invalid duration '': empty")
    if _PLAIN_NUMBER.fullmatch(text):
        seconds = float(text)
        _check_seconds(seconds, value)
        return seconds
    if text.startswith("-"):
        raise ValueError(f"invalid duration {value!r}: must not be negative")

    total = 0.0
    pos = 0
    for match in _COMPONENT.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(text) or pos == 0:
        raise ValueError(
            f"invalid duration {value!r}: expected seconds or number+unit parts "
            f"such as '30s', '5m', '1h30m' (units: {', '.join(_UNIT_SECONDS)})"
        )
    _check_seconds(total, value)
    return total


def _check_seconds(seconds: float, original: object) -> None:
    if math.isnan(seconds) or math.isinf(seconds):
        raise ValueError(f"invalid duration {original!r}: must be finite")
    if seconds < 0:
        raise ValueError(f"invalid duration {original!r}: must not be negative")
