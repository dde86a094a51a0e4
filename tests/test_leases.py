"""Properties of the renewal/backoff maths, checked over many seeds."""

from __future__ import annotations

import math
import random

import pytest

from vaultsync import leases
from vaultsync.leases import (
    MIN_DELAY,
    Action,
    backoff_ceiling,
    backoff_delay,
    grace_period,
    next_renewal_delay,
    parse_duration,
    plan_after_renewal,
    plan_new_lease,
    refetch_delay_nonrenewable,
    reissue_early,
    retry_delay_before_expiry,
)

SEEDS = range(300)
TTLS = [0.2, 0.9, 1.0, 3.0, 30.0, 60.0, 300.0, 3600.0, 86400.0, 768 * 3600.0]


def rngs():
    for seed in SEEDS:
        yield random.Random(seed)


# --------------------------------------------------------------------------
# parse_duration
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("768h", 768 * 3600.0),
        ("1h0m0s", 3600.0),
        ("1.5h", 5400.0),
        ("250ms", 0.25),
        ("1m30.5s", 90.5),
        ("2d", 172800.0),
        ("10us", 1e-5),
        ("10µs", 1e-5),
        ("30", 30.0),
        (" 45 ", 45.0),
        ("0", 0.0),
        ("0s", 0.0),
        ("2.5", 2.5),
        (".5s", 0.5),
        (30, 30.0),
        (2.5, 2.5),
        (0, 0.0),
    ],
)
def test_parse_duration_accepts(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "bad",
    ["", "   ", "s", "h1", "1x", "1 h", "1h 30m", "-5s", "-5", "1h-30m", "abc", "1.2.3s", "5m30", "nan", "inf", "1e3"],
)
def test_parse_duration_rejects_strings(bad):
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(bad)


@pytest.mark.parametrize("bad", [-1, -0.5, float("nan"), float("inf"), True, None, [], b"30s"])
def test_parse_duration_rejects_other_values(bad):
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(bad)


def test_parse_duration_error_names_the_text():
    with pytest.raises(ValueError, match="'12 parsecs'"):
        parse_duration("12 parsecs")


# --------------------------------------------------------------------------
# grace, renewal, refetch
# --------------------------------------------------------------------------


def test_grace_is_10_to_20_percent_and_varies():
    for ttl in TTLS:
        graces = [grace_period(ttl, rng) for rng in rngs()]
        assert all(0.10 * ttl <= g <= 0.20 * ttl for g in graces)
        assert len(set(graces)) > len(graces) // 2
        assert min(graces) < 0.12 * ttl and max(graces) > 0.18 * ttl  # spans the range
    assert grace_period(0, random.Random(1)) == 0.0


def test_next_renewal_delay_bounds():
    for ttl in TTLS:
        for rng in rngs():
            grace = grace_period(ttl, rng)
            for remaining in (ttl, ttl * 0.8, ttl * 0.5, ttl * 0.25, ttl * 0.1, ttl * 0.01):
                d = next_renewal_delay(remaining, ttl, grace, rng)
                assert 0.0 < d <= remaining
                assert d >= min(MIN_DELAY, remaining / 2)  # floor unless remaining is tiny
                if remaining - grace >= MIN_DELAY:
                    # never sleeps into the grace window reserved for re-issuing
                    assert d <= remaining - grace + 1e-9


def test_next_renewal_delay_is_about_two_thirds_and_jittered():
    ttl = 3600.0
    delays = []
    for rng in rngs():
        grace = grace_period(ttl, rng)
        delays.append(next_renewal_delay(ttl, ttl, grace, rng))
    assert all(2 / 3 * ttl <= d <= 2 / 3 * ttl + 0.2 * ttl / 3 for d in delays)
    assert len(set(delays)) == len(delays)  # every seed differs
    assert max(delays) - min(delays) > 60  # a real spread, not rounding noise


def test_next_renewal_delay_fresh_jitter_for_same_grace():
    rng = random.Random(7)
    delays = {next_renewal_delay(3600, 3600, 500.0, rng) for _ in range(50)}
    assert len(delays) > 40


def test_next_renewal_delay_edges():
    rng = random.Random(3)
    assert next_renewal_delay(0, 3600, 400, rng) == 0.0
    assert next_renewal_delay(-5, 3600, 400, rng) == 0.0
    # inside the grace window: act at the floor
    assert next_renewal_delay(300, 3600, 400, rng) == MIN_DELAY
    # a remaining ttl larger than the lease is clamped to the lease
    assert next_renewal_delay(10_000, 60, 0, rng) <= 60
    # tiny remaining: below the floor, but positive and never past expiry
    d = next_renewal_delay(0.2, 0.2, 0.0, rng)
    assert 0 < d <= 0.2


def test_next_renewal_delay_monotonic_in_remaining_for_same_draw():
    for seed in range(50):
        previous = -1.0
        for remaining in [1, 2, 5, 10, 50, 100, 500, 1000, 3000, 3600]:
            d = next_renewal_delay(remaining, 3600, 0.0, random.Random(seed))
            assert d >= previous
            previous = d


def test_refetch_nonrenewable_85_to_95_percent():
    for ttl in TTLS:
        delays = [refetch_delay_nonrenewable(ttl, rng) for rng in rngs()]
        for d in delays:
            if ttl >= 2 * MIN_DELAY / 0.85:
                assert 0.85 * ttl <= d <= 0.95 * ttl
            assert 0 < d <= ttl
        assert len(set(delays)) > len(delays) // 2
    assert refetch_delay_nonrenewable(0, random.Random(0)) == 0.0


# --------------------------------------------------------------------------
# Plans
# --------------------------------------------------------------------------


def test_plan_new_lease():
    rng = random.Random(11)
    never = plan_new_lease(0, renewable=True, now=100.0, rng=rng)
    assert never.action is Action.NOTHING and never.at is None and never.expires_at is None

    token = plan_new_lease(3600, renewable=True, now=100.0, rng=rng)
    assert token.action is Action.RENEW
    assert token.expires_at == 3700.0
    assert token.at == pytest.approx(100.0 + token.delay)
    assert 0.10 * 3600 <= token.grace <= 0.20 * 3600
    assert 2400 <= token.delay <= 3600 - token.grace

    secret = plan_new_lease(1000, renewable=False, now=0.0, rng=rng)
    assert secret.action is Action.REISSUE and 850 <= secret.delay <= 950

    with pytest.raises(ValueError):
        plan_new_lease(-1, renewable=True, now=0.0, rng=rng)


def test_plan_after_renewal_extending_lease_renews_again():
    for rng in rngs():
        d = plan_after_renewal(3600, 3600, 3600, 500.0, now=1000.0, rng=rng)
        assert d.action is Action.RENEW and not d.max_ttl_reached
        assert d.expires_at == 4600.0
        assert 1000.0 < d.at < 4600.0 - d.grace + 1e-9
        assert 360 <= d.grace <= 720  # re-drawn for the new duration


def test_plan_after_renewal_detects_max_ttl_by_requested_increment():
    for rng in rngs():
        d = plan_after_renewal(3600, 1800, None, 500.0, now=0.0, rng=rng)
        assert d.action is Action.REISSUE and d.max_ttl_reached
        assert d.delay == pytest.approx(1800 - 500.0)  # at the start of the grace window
        assert d.grace == 500.0  # kept: relative to the full lease
        assert "max ttl" in d.reason


def test_plan_after_renewal_detects_max_ttl_by_shrinking_ttl():
    rng = random.Random(5)
    # no increment requested: the server's default applies; it shrank anyway
    d = plan_after_renewal(None, 2000, 3600, 400.0, now=10.0, rng=rng)
    assert d.action is Action.REISSUE and d.max_ttl_reached
    assert d.at == pytest.approx(10.0 + 1600.0)


def test_plan_after_renewal_slack_ignores_rounding():
    d = plan_after_renewal(3600, 3599.5, 3600, 400.0, now=0.0, rng=random.Random(1))
    assert d.action is Action.RENEW


def test_plan_after_renewal_ttl_inside_grace_reissues_now():
    for rng in rngs():
        d = plan_after_renewal(3600, 200, 3600, 500.0, now=0.0, rng=rng)
        assert d.action is Action.REISSUE
        assert d.delay == MIN_DELAY
    d = plan_after_renewal(None, 200, None, 500.0, now=0.0, rng=random.Random(0))
    assert d.action is Action.REISSUE and d.delay == MIN_DELAY


def test_plan_after_renewal_zero_ttl_reissues_immediately():
    d = plan_after_renewal(3600, 0, 3600, 500.0, now=5.0, rng=random.Random(0))
    assert d.action is Action.REISSUE and d.delay == 0.0 and d.at == 5.0


def test_plan_after_renewal_periodic_token_never_capped():
    for rng in rngs():
        # asked for a day, the period is an hour: normal for periodic tokens
        d = plan_after_renewal(86400, 3600, 3600, None, now=0.0, rng=rng, periodic=True)
        assert d.action is Action.RENEW and not d.max_ttl_reached


def test_plan_after_renewal_not_renewable_anymore():
    d = plan_after_renewal(3600, 1000, 3600, None, now=0.0, rng=random.Random(2), renewable=False)
    assert d.action is Action.REISSUE and 850 <= d.delay <= 950


def test_plan_after_renewal_rejects_negative_ttl():
    with pytest.raises(ValueError):
        plan_after_renewal(3600, -1, None, None, now=0.0, rng=random.Random(0))


def test_simulated_lifetime_ends_in_reissue_before_expiry():
    """Drive plans against a fake server with a max TTL: renewals happen, the
    cap is noticed, and the re-issue is scheduled before the lease ends."""
    for seed in range(100):
        rng = random.Random(seed)
        ttl, max_ttl, now = 3600.0, 4 * 3600.0, 0.0
        decision = plan_new_lease(ttl, renewable=True, now=now, rng=rng)
        previous = ttl
        renewals = 0
        while decision.action is Action.RENEW:
            now = decision.at
            returned = min(ttl, max_ttl - now)
            decision = plan_after_renewal(ttl, returned, previous, decision.grace, now=now, rng=rng)
            previous = returned
            renewals += 1
            assert renewals < 100
        assert decision.action is Action.REISSUE
        assert renewals >= 3
        assert decision.at < max_ttl
        assert max_ttl - decision.at >= min(decision.grace, max_ttl - now) - 1e-6


# --------------------------------------------------------------------------
# Backoff
# --------------------------------------------------------------------------


def test_backoff_bounds_cap_and_never_zero():
    for rng in rngs():
        for attempt in range(51):
            d = backoff_delay(attempt, rng=rng)
            ceiling = backoff_ceiling(attempt)
            assert 0 < ceiling / 2 <= d <= ceiling <= 300.0


def test_backoff_ceiling_monotonic_and_capped():
    ceilings = [backoff_ceiling(a, 0.5, 60.0) for a in range(100)]
    assert ceilings == sorted(ceilings)
    assert ceilings[0] == 0.5 and ceilings[1] == 1.0 and ceilings[-1] == 60.0
    assert backoff_ceiling(10**6) == 300.0  # no overflow


def test_backoff_monotonic_for_same_draw():
    for seed in SEEDS:
        delays = [backoff_delay(a, rng=random.Random(seed)) for a in range(51)]
        assert delays == sorted(delays)


def test_backoff_jitter_varies_even_at_cap():
    for attempt in (0, 3, 20, 50):
        delays = {backoff_delay(attempt, rng=rng) for rng in rngs()}
        assert len(delays) > 250
    at_cap = [backoff_delay(40, rng=rng) for rng in rngs()]
    assert max(at_cap) - min(at_cap) > 100  # clients that failed together spread out


def test_backoff_custom_base_and_cap():
    rng = random.Random(0)
    for attempt in range(30):
        assert 0.05 <= backoff_delay(attempt, 0.1, 2.0, rng=rng) <= 2.0


@pytest.mark.parametrize(
    ("attempt", "base", "cap", "exc"),
    [(-1, 1.0, 300.0, ValueError), (0, 0.0, 300.0, ValueError), (0, 1.0, 0.5, ValueError),
     (0, 1.0, math.inf, ValueError), (1.5, 1.0, 300.0, TypeError), (True, 1.0, 300.0, TypeError)],
)
def test_backoff_rejects_bad_arguments(attempt, base, cap, exc):
    with pytest.raises(exc):
        backoff_delay(attempt, base, cap, rng=random.Random(0))


def test_retry_never_past_expiry_minus_margin():
    for rng in rngs():
        now, expires_at = 1000.0, 1000.0 + rng.uniform(6, 2000)
        for attempt in range(51):
            d = retry_delay_before_expiry(attempt, expires_at, now, rng=rng, margin=5.0)
            assert d is not None and d > 0
            assert now + d <= expires_at - 5.0 + 1e-9


def test_retry_gives_up_only_when_expired():
    rng = random.Random(0)
    assert retry_delay_before_expiry(0, 100.0, 100.0, rng=rng) is None
    assert retry_delay_before_expiry(0, 100.0, 150.0, rng=rng) is None
    # inside the margin but not expired: still a (last) attempt, before expiry
    d = retry_delay_before_expiry(10, 100.0, 98.0, rng=rng, margin=5.0)
    assert d is not None and 0 < d <= 2.0


def test_retry_inside_margin_terminates_without_busy_loop():
    """Retries inside the safety margin shrink but never below MIN_DELAY, so
    only a handful happen before expiry, then the plan gives up."""
    for rng in rngs():
        now, expires_at = 0.0, 4.0
        attempts = 0
        while (d := retry_delay_before_expiry(attempts, expires_at, now, rng=rng, margin=5.0)) is not None:
            assert d >= min(MIN_DELAY, expires_at - now) and now + d <= expires_at
            now += d
            attempts += 1
            assert attempts < 20
        assert now >= expires_at and attempts >= 2


def test_retry_without_expiry_is_plain_backoff():
    a = retry_delay_before_expiry(5, None, 0.0, rng=random.Random(9))
    b = backoff_delay(5, rng=random.Random(9))
    assert a == b


class TestReissueEarly:
    def _capped(self, now: float = 100.0, ttl: float = 6.0):
        import random as _r

        return leases.plan_after_renewal(10.0, ttl, 10.0, 1.0, now=now, rng=_r.Random(1))

    def test_moves_a_capped_reissue_to_lead_seconds_before_expiry(self):
        d = self._capped()
        assert d.action is leases.Action.REISSUE and d.max_ttl_reached
        early = leases.reissue_early(d, now=100.0, lead=4.0)
        assert early.at == pytest.approx(102.0) and early.delay == pytest.approx(2.0)
        assert early.expires_at == d.expires_at

    def test_never_before_now_and_never_later_than_planned(self):
        d = self._capped()
        assert leases.reissue_early(d, now=100.0, lead=60.0).at == 100.0
        assert leases.reissue_early(d, now=100.0, lead=0.0).at == d.at

    def test_leaves_renewals_alone(self):
        import random as _r

        d = leases.plan_new_lease(30.0, renewable=True, now=0.0, rng=_r.Random(2))
        assert leases.reissue_early(d, now=0.0, lead=10.0) is d


# --- exact values, found by mutation testing (issue 17) -------------------------------------------
# A stub random source drawing at a fixed fraction of the interval turns the jittered
# formulas into exact numbers, so an off-by-one constant or a dropped term changes the result.


class Draw:
    """``uniform(a, b)`` always returns ``a + fraction * (b - a)``."""

    def __init__(self, fraction: float) -> None:
        self.fraction = fraction

    def uniform(self, a: float, b: float) -> float:
        return a + self.fraction * (b - a)


LOW, HIGH = Draw(0.0), Draw(1.0)
D = leases.RenewalDecision
A = leases.Action


def test_parse_duration_messages_name_the_input_and_the_rule():
    with pytest.raises(ValueError, match=r"invalid duration -1: must not be negative"):
        parse_duration(-1)
    with pytest.raises(ValueError, match=r"'-1h': must not be negative"):
        parse_duration("-1h")
    with pytest.raises(ValueError, match=r"of type list: expected str, int or float"):
        parse_duration([1])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^invalid duration '': empty$"):
        parse_duration("   ")
    with pytest.raises(ValueError, match=r"'9{400}h': must be finite"):
        parse_duration("9" * 400 + "h")
    with pytest.raises(ValueError) as exc:
        parse_duration("5 minutes")
    assert f"(units: {', '.join(leases._UNIT_SECONDS)})" in str(exc.value)


def test_parse_duration_plain_number_string_overflow_names_it():
    text = "1" + "0" * 400
    with pytest.raises(ValueError, match=f"'{text}': must be finite"):
        parse_duration(text)


def test_next_renewal_delay_exact_formula():
    # 2/3 of what is left plus a third of the grace, drawn low/high.
    assert next_renewal_delay(300, 300, 30, LOW) == pytest.approx(200.0)
    assert next_renewal_delay(300, 300, 30, HIGH) == pytest.approx(210.0)
    # A grace of 0 (or below) adds nothing.
    assert next_renewal_delay(300, 300, 0, HIGH) == pytest.approx(200.0)
    assert next_renewal_delay(300, 300, -9, HIGH) == pytest.approx(200.0)
    # lease_duration 0 means "unknown": no clamp; a positive one clamps what is left.
    assert next_renewal_delay(30, 0, 0, LOW) == pytest.approx(20.0)
    assert next_renewal_delay(30, 0.9, 0, LOW) == pytest.approx(0.6)


def test_plan_new_lease_exact_decisions():
    assert plan_new_lease(0, renewable=True, now=100, rng=LOW) == D(A.NOTHING, None, None, None, 0.0, "no expiry (ttl 0)")
    assert plan_new_lease(100, renewable=False, now=100, rng=LOW) == D(A.REISSUE, 85.0, 185.0, 200.0, 10.0, "not renewable")
    assert plan_new_lease(300, renewable=True, now=100, rng=LOW) == D(A.RENEW, 200.0, 300.0, 400.0, 30.0, "renewable")
    with pytest.raises(ValueError, match=r"ttl must not be negative \(got -1\)"):
        plan_new_lease(-1, renewable=True, now=0, rng=LOW)


def test_plan_after_renewal_exact_decisions():
    now = 1000.0
    assert plan_after_renewal(60, 0, 60, 6, now=now, rng=LOW) == D(A.REISSUE, 0.0, now, now, 0.0, "server returned ttl 0: expired")
    assert plan_after_renewal(60, 60, 60, 6, now=now, rng=LOW, renewable=False) == D(
        A.REISSUE, 51.0, now + 51.0, now + 60.0, 6.0, "lease no longer renewable")
    assert plan_after_renewal(60, 60, 60, 6, now=now, rng=LOW) == D(A.RENEW, 40.0, now + 40.0, now + 60.0, 6.0, "lease extended")
    # Capped: the reason says against what.
    capped = plan_after_renewal(60, 30, 60, 6, now=now, rng=LOW)
    assert capped == D(A.REISSUE, 24.0, now + 24.0, now + 30.0, 6.0, "max ttl reached (ttl 30s < requested 60s)", True)
    before = plan_after_renewal(None, 30, 60, 6, now=now, rng=LOW)
    assert before.reason == "max ttl reached (ttl 30s < previous 60s)" and before.max_ttl_reached
    with pytest.raises(ValueError, match=r"returned_ttl must not be negative \(got -2\)"):
        plan_after_renewal(60, -2, 60, 6, now=now, rng=LOW)


def test_plan_after_renewal_boundaries():
    now = 0.0
    # Servers count whole seconds: a shortfall of exactly the 1 s slack is rounding, 1.5 s is a cap.
    assert plan_after_renewal(60, 59, None, 6, now=now, rng=LOW).action is A.RENEW
    assert plan_after_renewal(None, 59, 60, 6, now=now, rng=LOW).action is A.RENEW
    assert plan_after_renewal(60, 58.5, None, 6, now=now, rng=LOW).max_ttl_reached
    # A TTL of 1 s is not "expired".
    assert plan_after_renewal(None, 1, None, 0.1, now=now, rng=LOW).reason == "lease extended"
    # A TTL equal to the grace is inside it.
    inside = plan_after_renewal(None, 5, None, 5, now=now, rng=LOW)
    assert inside.action is A.REISSUE and inside.reason == "ttl 5s within grace 5s" and inside.max_ttl_reached


def test_reissue_early_exact_and_only_for_max_ttl_reissues():
    capped = D(A.REISSUE, 24.0, 124.0, 130.0, 6.0, "max ttl reached", True)
    assert reissue_early(capped, now=100, lead=10) == D(A.REISSUE, 20.0, 120.0, 130.0, 6.0, "max ttl reached; 10s before expiry", True)
    no_at = D(A.REISSUE, None, None, 130.0, 6.0, "x", True)
    assert reissue_early(no_at, now=100, lead=10).at == 100
    not_renewable = D(A.REISSUE, 24.0, 124.0, 130.0, 6.0, "not renewable", False)
    assert reissue_early(not_renewable, now=100, lead=10) is not_renewable
    renew = D(A.RENEW, 24.0, 124.0, 130.0, 6.0, "odd", True)
    assert reissue_early(renew, now=100, lead=10) is renew


def test_backoff_argument_errors_say_what_is_wrong():
    with pytest.raises(TypeError, match=r"attempt must be an int \(got float\)"):
        backoff_ceiling(1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"attempt must be >= 0 \(got -1\)"):
        backoff_ceiling(-1)
    with pytest.raises(ValueError, match=r"base must be a positive finite number \(got 0\)"):
        backoff_ceiling(1, base=0)
    with pytest.raises(ValueError, match=r"cap must be finite and >= base \(got cap=1, base=2\)"):
        backoff_ceiling(1, base=2, cap=1)
    assert backoff_ceiling(3, base=2, cap=2) == 2  # cap == base is allowed


def test_retry_delay_before_expiry_exact():
    far = 1e9
    # Defaults: capped at 300 s, 5 s of margin before expiry.
    assert retry_delay_before_expiry(20, far, 0, rng=HIGH) == 300.0
    assert retry_delay_before_expiry(20, far, 0, rng=HIGH, cap=10) == 10.0
    assert retry_delay_before_expiry(5, 10, 0, rng=HIGH) == 5.0
    assert retry_delay_before_expiry(5, 10, 0, rng=HIGH, margin=0) == 10.0
    assert retry_delay_before_expiry(0, 5.5, 0, rng=HIGH) == 0.5  # deadline 0.5 s away
    # Inside the margin: half of what is left (never 0, never a spin).
    assert retry_delay_before_expiry(10, 5, 0, rng=HIGH) == 2.5
    assert retry_delay_before_expiry(10, 4, 0, rng=HIGH) == 2.0
