"""``vaultsync export``: one KV secret back into an env file (the inverse of ``migrate``).

For rollback, for seeding a developer's ``.env``, for diffing what Vault holds with a
file. One read, one render in the chosen style, one atomic 0600 write (or stdout).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from vaultsync import formats
from vaultsync.errors import VaultsyncError
from vaultsync.vault import KV


def as_env_values(data: dict[str, Any]) -> dict[str, str]:
    """KV data as env values: strings as they are, anything else JSON-encoded (as the daemon renders it)."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in data.items()}


def export_text(kv: KV, path: str, *, style: str, warn: Callable[[str], None] | None = None) -> str:
    """The text of ``path``'s secret in ``style``; raises VaultsyncError if there is none,
    FormatError if the style cannot carry a key or value."""
    secret = kv.read(path)
    if secret.data is None:
        # Not SourceMissing: its hint (kv_path, optional = true) is about a daemon's service.
        raise VaultsyncError(f"secret {kv.mount}/{secret.path} does not exist (PATH is relative to the mount, "
                             f"e.g. compose/web; --mount names another mount)")
    return formats.render(style, as_env_values(secret.data or {}), destination=f"{kv.mount}/{secret.path}", warn=warn)
