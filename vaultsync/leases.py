"""Timing maths for tokens and leases: when to renew, when to re-issue, how to back off.

Everything here is a pure function of its arguments. Nothing reads the clock or
the global ``random`` module: callers pass ``now`` (any monotonic-ish float
clock, in seconds) and a ``random.Random``. That keeps the daemon's scheduling
reproducible in tests (seed the RNG, pick ``now``) and keeps this module free
of I/O.

The model follows OpenBao's ``api/lifetime_watcher.go`` and consul-template,
with two deliberate differences:

* The TTL the *server* returns is the truth. A renewal that comes back with a
  shorter TTL than was asked for, or than the previous one, means the lease hit
  its max TTL: renewing again only shrinks it further, so we plan a re-issue
  (re-login / fetch new credentials) before it runs out.
* Failures always back off. The upstream watcher computes a backoff and then
  retries in a tight loop; here every retry delay is exponential, capped,
  jittered and never zero.
"""

from __future__ import annotations

import enum
import math
import random
from dataclasses import dataclass

from vaultsync.durations import _UNIT_SECONDS, parse_duration  # noqa: F401 - part of this module's API

__all__ = [
    "MIN_DELAY",
    "Action",
    "RenewalDecision",
    "parse_duration",
    "grace_period",
    "next_renewal_delay",
    "refetch_delay_nonrenewable",
    "plan_new_lease",
    "plan_after_renewal",
    "reissue_early",
    "backoff_ceiling",
    "backoff_delay",
    "retry_delay_before_expiry",
]

#: Smallest delay we schedule while a lease still has time left. It keeps a
#: misbehaving server (TTL 0/1 s over and over) from turning the daemon into a
#: busy loop. Only when less than ``2 * MIN_DELAY`` remains do delays go lower.
MIN_DELAY = 0.5

_TWO_THIRDS = 2.0 / 3.0
_GRACE_RANGE = (0.10, 0.20)
_REFETCH_RANGE = (0.85, 0.95)
# Above this many doublings base * 2**attempt exceeds any sane cap; stop
# exponentiating so huge attempt numbers cannot overflow a float.
_MAX_DOUBLINGS = 60


# --------------------------------------------------------------------------
# Renewal timing
# --------------------------------------------------------------------------


def grace_period(lease_duration: float, rng: random.Random) -> float:
    """A random 10–20 % of ``lease_duration``: the window before expiry in which
    we stop renewing and re-issue instead.

    Random per lease (as in OpenBao) so that many clients whose credentials
    were issued together do not all re-login in the same second.
    """
    if lease_duration <= 0:
        return 0.0
    return lease_duration * rng.uniform(*_GRACE_RANGE)


def _floor(remaining: float) -> float:
    """The minimum delay while ``remaining`` seconds are left (see MIN_DELAY)."""
    return min(MIN_DELAY, remaining / 2.0)


def next_renewal_delay(
    remaining_ttl: float, lease_duration: float, grace: float, rng: random.Random
) -> float:
    """Seconds to wait before renewing a lease that has ``remaining_ttl`` left.

    OpenBao's rule: 2/3 of the remaining TTL plus a third of the grace period.
    We draw the grace share fresh on every call (uniform in ``[0, grace/3]``)
    so that successive renewals of the same lease keep spreading out, and we
    clamp the result so the wake-up never falls inside the grace window
    (``remaining - grace``): that window is reserved for re-issuing, which
    needs time to succeed (and to be retried) before the lease is gone.

    ``lease_duration`` is the lease's full duration as last granted; the
    remaining TTL can never honestly exceed it, so a larger value (clock skew,
    a caller mixing up fields) is clamped to it.

    The result is never negative, never more than ``remaining_ttl``, and at
    least ``MIN_DELAY`` unless less than ``2 * MIN_DELAY`` remains. It is 0.0
    only when nothing remains: the lease has expired and must be re-issued.
    """
    remaining = max(0.0, remaining_ttl)
    if lease_duration > 0:
        remaining = min(remaining, lease_duration)
    if remaining == 0.0:
        return 0.0
    grace = max(0.0, grace)
    delay = _TWO_THIRDS * remaining + rng.uniform(0.0, grace / 3.0)
    if remaining > grace:
        delay = min(delay, remaining - grace)
    else:
        delay = 0.0  # already inside the grace window: act now (floored below)
    return min(remaining, max(delay, _floor(remaining)))


def refetch_delay_nonrenewable(ttl: float, rng: random.Random) -> float:
    """Seconds to wait before re-fetching a secret whose lease cannot be renewed:
    a random 85–95 % of ``ttl`` (consul-template's rule), floored like
    :func:`next_renewal_delay`. 0.0 when ``ttl`` is 0 or less.
    """
    if ttl <= 0:
        return 0.0
    delay = ttl * rng.uniform(*_REFETCH_RANGE)
    return min(ttl, max(delay, _floor(ttl)))


class Action(enum.Enum):
    """What to do next with a lease or token."""

    RENEW = "renew"  #: renew it (token renew-self / sys/leases/renew) at ``at``
    REISSUE = "reissue"  #: log in again / read the secret anew at ``at``
    NOTHING = "nothing"  #: it never expires (TTL 0, e.g. static KV or a root token)


@dataclass(frozen=True)
class RenewalDecision:
    """The plan for one lease or token after it was issued or renewed.

    ``delay`` is seconds from the ``now`` the plan was made with; ``at`` is
    ``now + delay``; both are ``None`` only for ``Action.NOTHING``.
    ``expires_at`` is when the server says the lease ends (``None`` if never).
    ``grace`` is the grace period to pass back into the next
    :func:`plan_after_renewal` call (it is re-drawn while the lease keeps
    extending, kept once it stops). ``reason`` is a short human/log string
    (no secrets: it holds numbers only). ``max_ttl_reached`` is True when
    renewing can no longer push the expiry out far enough (the server capped
    the TTL, or what is left is within the grace window).
    """

    action: Action
    delay: float | None
    at: float | None
    expires_at: float | None
    grace: float
    reason: str
    max_ttl_reached: bool = False


def _decision(
    action: Action,
    delay: float,
    *,
    now: float,
    ttl: float,
    grace: float,
    reason: str,
    max_ttl_reached: bool = False,
) -> RenewalDecision:
    return RenewalDecision(
        action=action,
        delay=delay,
        at=now + delay,
        expires_at=now + max(0.0, ttl),
        grace=grace,
        reason=reason,
        max_ttl_reached=max_ttl_reached,
    )


def plan_new_lease(
    ttl: float,
    *,
    renewable: bool,
    now: float,
    rng: random.Random,
) -> RenewalDecision:
    """Plan for a token or lease that was just issued with ``ttl`` seconds.

    * ``ttl == 0`` means "never expires" in Vault's API (static KV reads, root
      tokens): ``Action.NOTHING``.
    * Renewable: renew at :func:`next_renewal_delay` (~2/3 of the TTL).
    * Not renewable: re-issue at :func:`refetch_delay_nonrenewable` (85–95 %).
    """
    if ttl < 0:
        raise ValueError(f"ttl must not be negative (got {ttl})")
    if ttl == 0:
        return RenewalDecision(Action.NOTHING, None, None, None, 0.0, "no expiry (ttl 0)")
    grace = grace_period(ttl, rng)
    if not renewable:
        delay = refetch_delay_nonrenewable(ttl, rng)
        return _decision(Action.REISSUE, delay, now=now, ttl=ttl, grace=grace, reason="not renewable")
    delay = next_renewal_delay(ttl, ttl, grace, rng)
    return _decision(Action.RENEW, delay, now=now, ttl=ttl, grace=grace, reason="renewable")


def plan_after_renewal(
    requested_increment: float | None,
    returned_ttl: float,
    previous_ttl: float | None,
    grace: float | None,
    *,
    now: float,
    rng: random.Random,
    renewable: bool = True,
    periodic: bool = False,
    slack: float = 1.0,
) -> RenewalDecision:
    """Decide what to do after a successful renewal.

    Arguments are what was asked and what the server answered:

    ``requested_increment``
        The increment sent with the renewal, or ``None``/0 if none was sent
        (the server then applies its default).
    ``returned_ttl``
        The TTL (``lease_duration``) in the server's answer: the truth.
    ``previous_ttl``
        The TTL granted by the previous issue/renewal, or ``None``.
    ``grace``
        The grace period carried from the previous decision (``None`` on the
        first renewal: drawn from ``returned_ttl``).
    ``renewable``
        The ``renewable`` flag of the answer; a lease can stop being renewable.
    ``periodic``
        Periodic tokens have no max TTL: every renewal returns the period, so a
        shorter-than-requested TTL is normal and never means "re-issue".
    ``slack``
        Seconds of difference ignored when comparing TTLs (servers work in
        whole seconds).

    The lease is *capped* (its max TTL is in sight) when the server returned
    less than was requested, or less than it granted the previous time. From
    then on renewing cannot move the expiry, so we re-issue when the grace
    window starts (``returned_ttl - grace``). A TTL that is already within the
    grace window, or zero, means re-issue now (after the minimal floor).
    """
    if returned_ttl < 0:
        raise ValueError(f"returned_ttl must not be negative (got {returned_ttl})")
    ttl = float(returned_ttl)
    if ttl == 0:
        return _decision(
            Action.REISSUE, 0.0, now=now, ttl=0.0, grace=0.0, reason="server returned ttl 0: expired"
        )
    if grace is None:
        grace = grace_period(ttl, rng)
    if not renewable:
        delay = refetch_delay_nonrenewable(ttl, rng)
        return _decision(
            Action.REISSUE, delay, now=now, ttl=ttl, grace=grace, reason="lease no longer renewable"
        )

    if periodic:
        capped = False
        why = ""
    else:
        shorter_than_requested = bool(requested_increment) and ttl + slack < float(requested_increment or 0)
        shorter_than_before = previous_ttl is not None and ttl + slack < previous_ttl
        capped = shorter_than_requested or shorter_than_before
        why = (
            f"ttl {ttl:g}s < requested {float(requested_increment or 0):g}s"
            if shorter_than_requested
            else f"ttl {ttl:g}s < previous {float(previous_ttl or 0):g}s"
        )

    within_grace = ttl <= grace and not periodic
    if capped or within_grace:
        # Re-issue when the grace window starts (at once if it already has). Keep the
        # grace drawn while the lease was still extending: it is relative to the full
        # lease, which is the window re-issuing needs.
        delay = min(ttl, max(ttl - grace, _floor(ttl)))
        reason = f"max ttl reached ({why})" if capped else f"ttl {ttl:g}s within grace {grace:g}s"
        return _decision(Action.REISSUE, delay, now=now, ttl=ttl, grace=grace, reason=reason, max_ttl_reached=True)

    # Still extending: draw a fresh grace for the new duration (as OpenBao does).
    grace = grace_period(ttl, rng)
    delay = next_renewal_delay(ttl, ttl, grace, rng)
    return _decision(Action.RENEW, delay, now=now, ttl=ttl, grace=grace, reason="lease extended")


def reissue_early(decision: RenewalDecision, *, now: float, lead: float) -> RenewalDecision:
    """Move a max-TTL re-issue earlier so new credentials exist ``lead`` seconds
    before the old lease expires (time for the service to switch before the old
    lease is revoked). Never earlier than ``now``; other decisions are returned as is."""
    if decision.action is not Action.REISSUE or not decision.max_ttl_reached or decision.expires_at is None:
        return decision
    at = max(now, min(decision.at if decision.at is not None else now, decision.expires_at - lead))
    return RenewalDecision(decision.action, at - now, at, decision.expires_at, decision.grace,
                           decision.reason + f"; {lead:g}s before expiry", True)


# --------------------------------------------------------------------------
# Backoff after failures
# --------------------------------------------------------------------------


def backoff_ceiling(attempt: int, base: float = 1.0, cap: float = 300.0) -> float:
    """The deterministic upper bound for retry number ``attempt`` (0-based):
    ``min(cap, base * 2**attempt)``. Monotonic non-decreasing in ``attempt``.
    """
    _check_backoff_args(attempt, base, cap)
    if attempt >= _MAX_DOUBLINGS:
        return cap
    return min(cap, base * (2.0**attempt))


def _check_backoff_args(attempt: int, base: float, cap: float) -> None:
    if isinstance(attempt, bool) or not isinstance(attempt, int):
        raise TypeError(f"attempt must be an int (got {type(attempt).__name__})")
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0 (got {attempt})")
    if not (base > 0 and math.isfinite(base)):
        raise ValueError(f"base must be a positive finite number (got {base})")
    if not (cap >= base and math.isfinite(cap)):
        raise ValueError(f"cap must be finite and >= base (got cap={cap}, base={base})")


def backoff_delay(
    attempt: int,
    base: float = 1.0,
    cap: float = 300.0,
    *,
    rng: random.Random,
) -> float:
    """Seconds to wait before retry number ``attempt`` (0 for the first retry).

    "Equal jitter": a uniform draw in ``[ceiling/2, ceiling]`` where
    ``ceiling = min(cap, base * 2**attempt)``. Unlike full jitter it is never
    (close to) zero, so a failing server is never hammered; unlike a fixed
    exponential it stays spread out once the cap is reached, so clients that
    failed together do not retry together. Never above ``cap``.
    """
    ceiling = backoff_ceiling(attempt, base, cap)
    return ceiling * rng.uniform(0.5, 1.0)


def retry_delay_before_expiry(
    attempt: int,
    expires_at: float | None,
    now: float,
    *,
    rng: random.Random,
    base: float = 1.0,
    cap: float = 300.0,
    margin: float = 5.0,
) -> float | None:
    """Backoff for a failed renewal/re-issue, bounded by the lease's expiry.

    Returns seconds to wait, or ``None`` to give up — and gives up only when
    the lease has really expired (``now >= expires_at``): until then there is
    always one more attempt worth making. ``expires_at=None`` means the lease
    never expires: plain :func:`backoff_delay`.

    The retry is never scheduled past ``expires_at - margin``; when the
    backoff would overshoot, the retry moves to that deadline. Once inside the
    margin, retries go at half the time left (at least ``MIN_DELAY``, at most
    the time left), so a handful of last attempts happen before expiry
    without a busy loop.
    """
    delay = backoff_delay(attempt, base, cap, rng=rng)
    if expires_at is None:
        return delay
    remaining = expires_at - now
    if remaining <= 0:
        return None
    deadline = remaining - max(0.0, margin)
    if deadline > 0:
        return min(delay, deadline)
    # Inside the safety margin: hurry, but never spin and never overshoot.
    return min(remaining, max(min(delay, remaining / 2.0), MIN_DELAY))
