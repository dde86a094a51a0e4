"""Pure decisions behind the daemon's recovery from faults (no I/O, no clock of its own).

* :class:`Reachability` turns the outcome of every request into two edges: the server
  *went down* (start probing it) and *came back* (reset every backoff, re-check the
  token, poll everything now). One recovery path for outages, hangs and unseals.
* :class:`Throttle` lets an event through at most once per period (error logs of a dead
  token, token checks triggered by 403s).
* :func:`token_verdict` reads a token lookup's failure: dead token, or a passing fault.
* :class:`CrashBackoff` gives a crashed job its retry delay and counts its crashes.

Shaped for the coming ``Lifetime`` (issue 12): callers pass ``now`` and a ``Random``.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field

from vaultsync import leases

#: HTTP statuses that mean "the server is not answering" (sealed, standby, gateway):
#: a 500 is an engine's error (a database plugin that failed), not an outage.
DOWN_STATUSES = frozenset({502, 503, 504})

#: While the server is down it is probed this often at most (a cheap unauthenticated
#: ``sys/health``), so that recovery starts within a few seconds of it answering.
PROBE_CAP = 4.0


def is_down(status: int | None) -> bool:
    """``status`` None means no answer at all (refused, reset, timed out)."""
    return status is None or status in DOWN_STATUSES


@dataclass
class Reachability:
    """Edges of the server's availability, from request outcomes (thread-safe)."""

    up: bool = True
    failures: int = 0  # consecutive requests without an answer
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def observe(self, status: int | None) -> str | None:
        """Record one request's outcome; return ``"down"`` or ``"back"`` on an edge, else None."""
        down = is_down(status)
        with self._lock:
            if down:
                self.failures += 1
                if self.up:
                    self.up = False
                    return "down"
                return None
            self.failures = 0
            if not self.up:
                self.up = True
                return "back"
            return None


@dataclass
class Throttle:
    """Let an event through at most once per ``every`` seconds (thread-safe)."""

    every: float
    _last: float | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def allow(self, now: float) -> bool:
        with self._lock:
            if self._last is not None and now - self._last < self.every:
                return False
            self._last = now
            return True

    def reset(self) -> None:
        with self._lock:
            self._last = None


def token_verdict(error: str) -> str:
    """What a failed token lookup says: ``"dead"`` (revoked, expired: the server refused it)
    or ``"unknown"`` (no answer, sealed...: try again later). ``error`` is the described
    error's text (never a secret)."""
    text = error.lower()
    if "permission denied" in text or "invalid token" in text or "bad token" in text:
        return "dead"
    return "unknown"


def lease_gone(error: str) -> bool:
    """True when a renewal failed because the lease no longer exists (revoked, expired):
    renewing again cannot help, re-issue now."""
    text = error.lower()
    return any(s in text for s in ("lease not found", "invalid lease", "lease is not renewable", "lease expired"))


@dataclass
class CrashBackoff:
    """Per-job crash counts and retry delays: a job that raised is run again later,
    backed off, never dropped and never in a loop."""

    base: float = 1.0
    cap: float = 300.0
    attempts: dict[str, int] = field(default_factory=dict)

    def crashed(self, job_id: str, rng: random.Random) -> float:
        attempt = self.attempts.get(job_id, 0)
        self.attempts[job_id] = attempt + 1
        return leases.backoff_delay(attempt, self.base, self.cap, rng=rng)

    def succeeded(self, job_id: str) -> None:
        self.attempts.pop(job_id, None)


def missing_source_delay(attempt: int, poll_interval: float, rng: random.Random, cap: float = 60.0) -> float:
    """When to look again for a KV secret that is deleted or was never written: back off
    from the poll interval, but not past ``cap`` (or the poll interval when that is longer),
    so a restored secret is noticed within a minute."""
    ceiling = max(poll_interval, cap)
    delay = leases.backoff_delay(attempt, max(poll_interval, 0.5), max(ceiling, poll_interval), rng=rng)
    return max(poll_interval, min(delay, ceiling))


def blame_the_token(error: str, *, expires_at: float | None, now: float, token_problem: str | None) -> str:
    """A *permission denied* while our token is known to be expired or rejected is the token's
    fault, not the policies': say so instead of "the token's policies do not grant ..."."""
    if "permission denied" not in error.lower():
        return error
    action = error.split(" (the token's policies do not grant")[0].split(" (check the token's policies)")[0]
    if expires_at is not None and expires_at <= now:
        return (f"{action} (the token expired {max(0, round(now - expires_at))}s ago and the server refuses it: "
                "give vaultsync a new token, not new policies)")
    if token_problem:
        return f"{action} (the server rejected the token itself: {token_problem})"
    return error
