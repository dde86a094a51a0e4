"""One lifetime for tokens and leases, and one way of counting failures.

Pure: no clock, no randomness of its own, no I/O. The daemon's jobs do the requests and tell
a :class:`Lifetime` what happened (issued, renewed, renewal failed); it answers with what to do
next and when (Vault's ``api/lifetime_watcher.go`` renews tokens and leases with one loop; here
it is one state object). :class:`Backoff` owns a job's count of consecutive failures and the
wait before its next try; every retrying job of the daemon uses it, with one convention:
the first retry waits about ``base`` (1 s), doubling to ``cap``, jittered, and a retry meant to
save something that expires is never scheduled past its expiry.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from vaultsync.leases import (
    Action,
    RenewalDecision,
    backoff_delay,
    plan_after_renewal,
    plan_new_lease,
    reissue_early,
    retry_delay_before_expiry,
)

BACKOFF_BASE, BACKOFF_CAP = 1.0, 300.0


@dataclass
class Backoff:
    """Consecutive failures of one job (0: the last try worked)."""

    base: float = BACKOFF_BASE
    cap: float = BACKOFF_CAP
    attempt: int = 0

    @property
    def failing(self) -> bool:
        return self.attempt > 0

    def failed(self, rng: random.Random, *, now: float = 0.0, expires_at: float | None = None,
               floor: float = 0.0) -> float | None:
        """Count a failure and return the wait before the next try: at least ``floor``; with
        ``expires_at``, never past it, and None once it has passed (what the try protected is
        gone: do something else, e.g. re-issue)."""
        n, self.attempt = self.attempt, self.attempt + 1
        if expires_at is None:
            return max(floor, backoff_delay(n, self.base, self.cap, rng=rng))
        return retry_delay_before_expiry(n, expires_at, now, rng=rng, base=self.base, cap=self.cap)

    def succeeded(self) -> bool:
        """Forget the failures; True if there were some (the job is recovering)."""
        was, self.attempt = self.attempt > 0, 0
        return was


@dataclass
class Lifetime:
    """A token's or a lease's life as the server describes it, and the plan for its next step.

    ``requested`` is what each renewal asks for (the TTL it was issued with: asking for more is
    refused, asking for nothing gets the server's default). ``lead``: at max TTL, new credentials
    are fetched this long before the old ones expire (time for the service to switch before the
    old lease is revoked). ``periodic``: a periodic token is renewed to its period for ever.
    """

    lead: float = 0.0
    periodic: bool = False
    requested: float = 0.0
    granted: float = 0.0  # the TTL the last issue or renewal returned
    expires_at: float | None = None  # None: never
    decision: RenewalDecision | None = None
    last_renewal: float | None = None
    renewals: Backoff = field(default_factory=Backoff)

    @property
    def action(self) -> Action:
        return self.decision.action if self.decision else Action.NOTHING

    @property
    def due(self) -> float | None:
        return self.decision.at if self.decision else None

    def issued(self, ttl: float, *, renewable: bool, now: float, rng: random.Random) -> RenewalDecision:
        """A new token (login) or lease (read): renew at ~2/3 of its TTL, or re-read if not renewable."""
        self.requested = self.granted = ttl
        self.expires_at = now + ttl if ttl else None
        self.renewals.succeeded()
        self.decision = plan_new_lease(ttl, renewable=renewable, now=now, rng=rng)
        return self.decision

    def renewed(self, ttl: float, *, renewable: bool, now: float, rng: random.Random) -> RenewalDecision:
        """A renewal came back with ``ttl``: the server's TTL is the truth. Shorter than asked (max
        TTL in sight): re-issue, early enough for ``lead``."""
        grace = self.decision.grace if self.decision else None
        decision = plan_after_renewal(self.requested or None, ttl, self.granted or None, grace, now=now, rng=rng,
                                      renewable=renewable, periodic=self.periodic)
        self.decision = reissue_early(decision, now=now, lead=self.lead)
        self.granted, self.expires_at, self.last_renewal = ttl, now + ttl if ttl else None, now
        self.renewals.succeeded()
        return self.decision

    def renewal_failed(self, *, now: float, rng: random.Random) -> float | None:
        """When to try renewing again; None when it has expired meanwhile (re-issue now)."""
        return self.renewals.failed(rng, now=now, expires_at=self.expires_at)

    def must_reissue(self) -> None:
        """The next step is a re-issue whatever the plan said (its login or read failed)."""
        if self.decision is not None and self.decision.action is not Action.REISSUE:
            d = self.decision
            self.decision = RenewalDecision(Action.REISSUE, d.delay, d.at, d.expires_at, d.grace, d.reason, d.max_ttl_reached)

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and self.expires_at <= now
