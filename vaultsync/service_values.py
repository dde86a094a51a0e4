"""What a service's destinations render: its KV keys and ``<NAME>_<FIELD>`` of each dynamic secret.

A dynamic field whose variable name is also a KV key would silently replace that key in
every file (outside tester's finding 12): the render of that service is refused instead,
naming the service and the key (never a value), and its files are left as they are.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from vaultsync.errors import VaultsyncError


class KeyCollision(VaultsyncError):
    """A dynamic secret's field renders under the same name as a KV key."""


def merge(service: str, kv_data: Mapping[str, Any] | None, dynamic: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """KV keys, then each dynamic secret's fields as ``<NAME>_<FIELD>`` (upper case); values that
    are not strings are JSON-encoded. Raises :class:`KeyCollision` when a name is taken twice."""
    values = {key: _text(value) for key, value in (kv_data or {}).items()}
    origin = {key: "a KV key" for key in values}
    for name, data in sorted(dynamic.items()):
        for field_name, value in data.items():
            key = f"{name}_{field_name}".upper()
            if key in origin:
                raise KeyCollision(f"service {service}: {key} is both {origin[key]} and field {field_name!r} of dynamic "
                                   f"secret {name!r}; rename one (the files are left as they are)")
            origin[key] = f"field {field_name!r} of dynamic secret {name!r}"
            values[key] = _text(value)
    return values


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)
