"""The pure lifetime of tokens and leases, and the one failure counter every retrying job uses
(no server: the decisions take the time and the randomness as arguments)."""

from __future__ import annotations

import random

import pytest

from vaultsync.child import RestartPlan
from vaultsync.leases import Action
from vaultsync.lifetime import Backoff, Lifetime


class Fixed(random.Random):
    """Every draw at the top of its range: the slowest retry, the latest renewal."""

    def uniform(self, a: float, b: float) -> float:
        return b

    def random(self) -> float:
        return 0.999999


def test_backoff_doubles_from_base_to_cap_and_resets():
    b = Backoff(base=1.0, cap=8.0)
    delays = [b.failed(Fixed()) for _ in range(6)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert b.failing and b.succeeded() and not b.failing
    assert b.failed(Fixed()) == 1.0


def test_backoff_is_jittered_never_below_half():
    rng = random.Random(7)
    b = Backoff(base=1.0, cap=300.0)
    for n in range(12):
        d = b.failed(rng)
        assert min(300.0, 2.0 ** n) / 2 <= d <= min(300.0, 2.0 ** n)


def test_backoff_floor_and_expiry():
    assert Backoff().failed(Fixed(), floor=60.0) == 60.0
    b = Backoff(attempt=8)  # 256 s ceiling
    assert b.failed(Fixed(), now=100.0, expires_at=130.0) == pytest.approx(25.0)  # never past expiry - margin
    assert Backoff().failed(Fixed(), now=200.0, expires_at=130.0) is None  # expired: do something else


def test_lease_renewed_until_max_ttl_then_reissued_early_enough_for_the_lead():
    life = Lifetime(lead=4.0)
    d = life.issued(30.0, renewable=True, now=0.0, rng=Fixed())
    assert d.action is Action.RENEW and 0 < d.at < 30.0 and life.expires_at == 30.0
    d = life.renewed(30.0, renewable=True, now=d.at, rng=Fixed())
    assert d.action is Action.RENEW and life.last_renewal is not None
    # Max TTL in sight: the server grants less than asked: re-issue, at least `lead` before expiry.
    now = d.at
    d = life.renewed(10.0, renewable=True, now=now, rng=Fixed())
    assert d.action is Action.REISSUE and d.max_ttl_reached
    assert d.at <= now + 10.0 - 4.0 and life.expires_at == now + 10.0 and life.granted == 10.0


def test_periodic_token_is_renewed_for_ever():
    life = Lifetime(periodic=True)
    life.issued(60.0, renewable=True, now=0.0, rng=Fixed())
    for i in range(1, 5):
        assert life.renewed(60.0, renewable=True, now=i * 40.0, rng=Fixed()).action is Action.RENEW


def test_failed_renewals_back_off_within_the_expiry_then_give_up_and_success_resets():
    life = Lifetime()
    life.issued(100.0, renewable=True, now=0.0, rng=Fixed())
    now, delays = 70.0, []
    while (d := life.renewal_failed(now=now, rng=Fixed())) is not None:
        delays.append(d)
        assert now + d <= 100.0
        now += d
    assert now >= 100.0 - 1e-9 and delays[:3] == [1.0, 2.0, 4.0] and len(delays) < 20  # bounded, no tight loop
    life.renewed(100.0, renewable=True, now=now, rng=Fixed())
    assert not life.renewals.failing


def test_nothing_to_do_for_a_ttl_of_zero_and_non_renewable_is_refetched():
    life = Lifetime()
    assert life.issued(0.0, renewable=False, now=5.0, rng=Fixed()).action is Action.NOTHING
    assert life.expires_at is None and not life.expired(1e12)
    d = life.issued(100.0, renewable=False, now=0.0, rng=Fixed())
    assert d.action is Action.REISSUE and 85.0 <= d.at <= 95.0


def test_must_reissue_turns_a_renewal_into_a_reissue():
    life = Lifetime()
    life.issued(100.0, renewable=True, now=0.0, rng=Fixed())
    life.must_reissue()
    assert life.action is Action.REISSUE


def test_child_restart_backoff_is_capped_and_resets_after_a_healthy_run():
    plan, attempt, delays = RestartPlan(base=1.0, cap=8.0, healthy_after=10.0), 0, []
    for _ in range(6):
        attempt, delay = plan.next(attempt, ran_for=0.1, rng=Fixed())
        delays.append(delay)
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert plan.next(attempt, ran_for=30.0, rng=Fixed()) == (1, 1.0)
