"""What ``migrate`` must keep or explain beyond the plain key diff: keys the daemon owns
(``--prune`` never removes them) and changes a fingerprint cannot show (a value's type)."""

from __future__ import annotations

from typing import Any

from vaultsync.vault import normalize_path

CHANGED = "changed"


def rotated_keys(settings: Any) -> dict[str, dict[str, str]]:
    """Secret path -> {key: why} for every ``[[services.X.rotate]]`` key of the configured
    services: ``migrate --prune`` from an .env file that never held a generated key must not
    delete it (the daemon would render without it until the key is next due)."""
    out: dict[str, dict[str, str]] = {}
    for svc in settings.services.values():
        for spec in svc.rotate:
            out.setdefault(normalize_path(svc.kv_path), {})[spec.key] = (
                f"the daemon rotates it for service {svc.name}; --prune never removes it")
    return out


def explain(change: Any) -> str:
    """A short note for one planned key change, or ""."""
    if change.status == CHANGED and change.old == change.new:
        # Same text, other JSON type (true, 1, a list... written by another tool): the write
        # stores it as the string from the .env file.
        return "  (type changes: Vault holds a non-string value, the .env file a string)"
    return ""

