"""Walk a lease or the daemon's token through its life with the daemon's own timing code
(vaultsync.leases) and turn what the daemon would export into a promtool unit test.

The server side is modelled as Vault behaves for a database role or an AppRole token: a
renewal returns ``min(ttl, time left before max_ttl)``; a re-issue (new lease, or login)
starts a new max TTL. ``stall_at`` stops every action from that time on (renewals and
re-issues all fail), which leaves the exported series frozen, as in the daemon.

Prometheus sees the daemon late: a sample taken just before a renewal is what the next
evaluations read until the next scrape. ``lag`` replays the series that many seconds late,
so the rules are held to the worst case of the stack's 15 s scrape and evaluation intervals.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from vaultsync import leases

STEP = 15.0  # the stack's scrape and evaluation interval (compose/prometheus/prometheus.yml)
REVOKE_GRACE = 30.0  # the daemon's default lease_revoke_grace


@dataclass
class Sample:
    ttl: float
    expiry: float
    due: float


@dataclass
class Walk:
    """The exported state over time, as (time, state) changes, plus the facts a test asserts on."""

    kind: str  # "lease" or "token"
    ttl: float
    max_ttl: float
    horizon: float
    changes: list[tuple[float, Sample]] = field(default_factory=list)
    renewals: int = 0
    capped: int = 0
    reissues: int = 0
    expiry_at_stall: float | None = None

    def state_at(self, t: float) -> Sample | None:
        current = None
        for when, sample in self.changes:
            if when > t:
                break
            current = sample
        return current

    def series(self, lag: float) -> dict[str, list[float]]:
        """Values every STEP seconds from 0 to the horizon, each the state ``lag`` seconds before."""
        out: dict[str, list[float]] = {"ttl": [], "expiry": [], "due": []}
        steps = int(self.horizon // STEP) + 1
        for i in range(steps):
            s = self.state_at(max(0.0, i * STEP - lag))
            assert s is not None
            out["ttl"].append(s.ttl)
            out["expiry"].append(s.expiry)
            out["due"].append(s.due)
        return out


def walk(kind: str, ttl: float, max_ttl: float, horizon: float, *, seed: int, stall_at: float | None = None,
         lateness: float = 1.0) -> Walk:
    """Run the daemon's decisions for one lease (``kind="lease"``) or the token (``"token"``)."""
    rng = random.Random(seed)
    w = Walk(kind, ttl, max_ttl, horizon)
    issued_at = 0.0
    decision = leases.plan_new_lease(ttl, renewable=True, now=0.0, rng=rng)
    granted = ttl
    w.changes.append((0.0, Sample(ttl, ttl, decision.at or 0.0)))
    while decision.at is not None:
        now = decision.at + rng.uniform(0.0, lateness)
        if now > horizon:
            break
        if stall_at is not None and now >= stall_at:
            w.expiry_at_stall = w.changes[-1][1].expiry
            break
        if decision.action is leases.Action.REISSUE:
            w.reissues += 1
            issued_at, granted = now, ttl
            decision = leases.plan_new_lease(ttl, renewable=True, now=now, rng=rng)
            w.changes.append((now, Sample(ttl, now + ttl, decision.at or 0.0)))
            continue
        w.renewals += 1
        returned = max(0.0, min(ttl, issued_at + max_ttl - now))
        decision = leases.plan_after_renewal(ttl, returned, granted, decision.grace, now=now, rng=rng)
        if kind == "lease":  # the daemon hands new credentials over before the old ones expire
            decision = leases.reissue_early(decision, now=now, lead=REVOKE_GRACE + 1.0)
        w.capped += decision.max_ttl_reached
        granted = returned
        w.changes.append((now, Sample(returned, now + returned, decision.at or 0.0)))
    if stall_at is not None and w.expiry_at_stall is None:
        w.expiry_at_stall = w.changes[-1][1].expiry
    return w


def _values(xs: list[float]) -> str:
    return " ".join(f"{x:.3f}".rstrip("0").rstrip(".") for x in xs)


def input_series(w: Walk, labels: str, lag: float) -> list[dict[str, str]]:
    """promtool input_series for the walk's three gauges."""
    s = w.series(lag)
    if w.kind == "lease":
        names = ("vaultsync_lease_ttl_seconds", "vaultsync_lease_expiry_timestamp_seconds",
                 "vaultsync_lease_renewal_due_timestamp_seconds")
    else:
        names = ("vaultsync_token_ttl_seconds", "vaultsync_token_expiry_timestamp_seconds",
                 "vaultsync_token_renewal_due_timestamp_seconds")
    steps = len(s["ttl"])
    up = {"series": 'up{instance="vaultsync:9464",job="vaultsync"}', "values": f"1x{steps - 1}"}
    return [up] + [{"series": f"{name}{{{labels}}}", "values": _values(s[key])}
                   for name, key in zip(names, ("ttl", "expiry", "due"))]
