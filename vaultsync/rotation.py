"""Rotation of the KV keys vaultsync owns, with a lock so that of several daemons
only one rotates a given key per period.

The lock is a KV v2 document ``<mount>/vaultsync/locks/<service>/<key>`` holding the
holder's id, an expiry and the time of the last rotation. It is taken and released
with check-and-set, so two daemons racing for it cannot both win; a crashed holder
blocks others only until the expiry.
"""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass
from typing import Any

from vaultsync.config import RotateSpec
from vaultsync.errors import ConfigError, Conflict, VaultsyncError
from vaultsync.vault import KV

_ALNUM = string.ascii_letters + string.digits
LOCK_PREFIX = "vaultsync/locks"


def generate(spec: RotateSpec) -> str:
    """A new random value: ``length`` bytes as hex or base64url, or ``length`` characters."""
    if spec.length < 8:
        raise ValueError(f"rotate {spec.key}: length must be at least 8")
    if spec.generator == "hex":
        return secrets.token_hex(spec.length)
    if spec.generator == "base64url":
        return secrets.token_urlsafe(spec.length)
    return "".join(secrets.choice(_ALNUM) for _ in range(spec.length))


@dataclass(frozen=True)
class RotationResult:
    status: str  # rotated | not_due | locked
    version: int = 0  # the service secret's new version when rotated
    next_due: float = 0.0  # unix time the key is next due (from the lock document)


def lock_path(service: str, key: str) -> str:
    return f"{LOCK_PREFIX}/{service}/{key}"


def key_missing(data: dict[str, Any] | None, key: str) -> bool:
    """The secret exists but the key we own is gone (deleted by hand, ``migrate --prune`` from an
    .env file that never had it): it is regenerated now, whatever the lock says of the last
    rotation, since every render until then would drop it from the service's env file."""
    return data is not None and key not in data


def missing_owned_keys(specs: Any, data: dict[str, Any] | None) -> list[str]:
    return sorted(spec.key for spec in specs if key_missing(data, spec.key))


def rotate_if_due(kv: KV, service: str, secret_path: str, spec: RotateSpec, *, holder: str, now: float, lock_ttl: float) -> RotationResult:
    """Take the lock, rotate ``spec.key`` if ``spec.every`` has passed since the last
    rotation (by any daemon) or the key is missing from the secret, release the lock. Raises VaultError on server errors."""
    if kv.version != 2:
        raise ConfigError(f"rotation of {service}/{spec.key} needs KV v2 (check-and-set); mount {kv.mount!r} is KV v1")
    path = lock_path(service, spec.key)
    lock = kv.read(path)
    doc: dict[str, Any] = dict(lock.data or {})
    last = float(doc.get("last_rotated", 0) or 0)
    if last and now - last < spec.every and not key_missing(kv.read(secret_path).data, spec.key):
        return RotationResult("not_due", next_due=last + spec.every)
    if doc.get("holder") and doc.get("holder") != holder and float(doc.get("expires", 0)) > now:
        return RotationResult("locked", next_due=float(doc["expires"]))
    try:
        version = kv.write(path, {**doc, "holder": holder, "expires": now + lock_ttl}, cas=lock.version)
    except Conflict:
        return RotationResult("locked", next_due=now + lock_ttl)
    try:
        current = kv.read(secret_path)
        data = {**(current.data or {}), spec.key: generate(spec)}
        new_version = kv.write(secret_path, data, cas=current.version)
    except BaseException:
        _release(kv, path, doc, version, last)
        raise
    try:
        _release(kv, path, doc, version, now)
    except VaultsyncError:
        # The key was rotated; only recording it failed. Do not rotate again: the lock
        # expires by itself, and until then no one (us included) rotates this key.
        pass
    return RotationResult("rotated", version=new_version, next_due=now + spec.every)


def _release(kv: KV, path: str, doc: dict[str, Any], version: int, last_rotated: float) -> None:
    try:
        kv.write(path, {**doc, "holder": "", "expires": 0, "last_rotated": last_rotated}, cas=version)
    except Conflict:
        pass  # our lock expired and someone else holds it now: theirs to release
