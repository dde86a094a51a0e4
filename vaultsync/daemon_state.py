"""What the daemon knows: per service its KV reading, its leases and the state of each output;
the token. Plain data (the timing lives in each :class:`~vaultsync.lifetime.Lifetime`)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from vaultsync import auth, render
from vaultsync import service_values as service_values_
from vaultsync.config import ServiceSettings
from vaultsync.lifetime import Backoff, Lifetime
from vaultsync.outputs import Output


@dataclass
class Lease:
    """One dynamic secret's current lease; its timing is its :class:`Lifetime`."""

    service: str
    name: str
    path: str
    lease_id: str = field(repr=False)
    data: dict[str, Any] = field(repr=False)
    renewable: bool
    life: Lifetime

    @property
    def ttl(self) -> float:
        """The TTL it was issued with (what each renewal asks for); 0: it never expires."""
        return self.life.requested

    @property
    def expires_at(self) -> float:
        return self.life.expires_at if self.life.expires_at is not None else float("inf")


@dataclass
class DestinationState:
    last_result: str = "pending"
    last_success: float | None = None
    error: str | None = None
    window: render.WaitWindow | None = None


@dataclass
class ServiceState:
    settings: ServiceSettings
    kv_data: dict[str, Any] | None = field(default=None, repr=False)
    kv_version: int = 0
    kv_loaded: bool = False  # a read succeeded (the secret may still be absent)
    kv_reads: Backoff = field(default_factory=Backoff)  # failed KV reads
    kv_missing: int = 0  # consecutive reads that found the secret deleted or never written
    issues: dict[str, Backoff] = field(default_factory=dict)  # failed reads per dynamic secret (only while failing)
    rotations: dict[str, Backoff] = field(default_factory=dict)  # failed rotations per key
    leases: dict[str, Lease] = field(default_factory=dict)
    destinations: dict[str, DestinationState] = field(default_factory=dict)  # per output key
    outputs: dict[str, Output] = field(default_factory=dict)  # key (a destination's path, or "exec") -> output
    lock: threading.RLock = field(default_factory=threading.RLock)


@dataclass
class TokenInfo:
    state: auth.TokenState | None = None  # as of login
    life: Lifetime = field(default_factory=Lifetime)
    logins: Backoff = field(default_factory=Backoff)  # failed logins (not renewals': see issue 11)


def service_values(svc: ServiceState) -> dict[str, str]:
    """What a service's destinations render: its KV keys, then ``<NAME>_<FIELD>`` of each
    dynamic secret (e.g. ``DB_USERNAME``). Non-string KV values are JSON-encoded. Raises
    :class:`~vaultsync.service_values.KeyCollision` when a field's name is also a KV key."""
    return service_values_.merge(svc.settings.name, svc.kv_data, {n: lease.data for n, lease in svc.leases.items()})


def renders_without_kv(svc: ServiceSettings) -> bool:
    """A service renders without its KV keys when its secret is absent only if asked to
    (``on_delete = "empty"``, or a KV source marked optional)."""
    return getattr(svc, "on_delete", "keep") == "empty" or bool(getattr(svc, "optional", False))


class DaemonParts:
    """What every part of the Daemon (its token, lease, service, recovery and job mixins) reads
    from the others; declared once for readers and type checkers, set by ``Daemon.__init__``."""

    settings: Any
    client: Any
    kv: Any
    clock: Any
    rng: Any
    metrics: Any
    events: Any
    services: dict[str, Any]
    token: Any
    token_problem: str | None
    _lock: Any
    _stop: Any
    _at: Any
