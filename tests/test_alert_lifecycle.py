"""The lease and token alerts over whole lives, in promtool: quiet for every healthy lease or
token whatever its TTL, and early enough for a stalled one.

The lives are walked with the daemon's own timing code (tests/alert_lifecycle.py), replayed
to Prometheus as late as the stack's scrape interval allows, and checked at every
evaluation through the ALERTS series promtool keeps.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests import alert_lifecycle as life
from tests.test_alert_rules import RULES, promtool

pytestmark = pytest.mark.prometheus

LEASE_LABELS = 'service="api",secret="db",instance="vaultsync:9464",job="vaultsync"'
TOKEN_LABELS = 'instance="vaultsync:9464",job="vaultsync"'
# (TTL, max TTL) pairs: a 30 s role, a 10-minute one, an hour, a day.
LIVES = [(30.0, 90.0), (600.0, 1800.0), (3600.0, 3 * 3600.0), (86400.0, 26 * 3600.0)]
# Every evaluation of a day-long life costs promtool ~3 ms: one seed for it, three for the rest.
SEEDS = {30.0: (1, 2, 3), 600.0: (1, 2, 3), 3600.0: (1, 2, 3), 86400.0: (1,)}
# How long before expiry a stalled lease/token must page (ExpiringSoon); None: it cannot page
# before expiry (the 45 s slack is most of its life), so it must page "expired" within a minute.
LEAD = {30.0: None, 600.0: 60.0, 3600.0: 10 * 60.0, 86400.0: 4 * 3600.0}
LAG = 2 * life.STEP - 1  # a sample taken just before the change, read until the evaluation before the next scrape


def _labels(kind: str) -> str:
    return LEASE_LABELS if kind == "lease" else TOKEN_LABELS


def _alert_labels(kind: str, alert: str, severity: str) -> str:
    extra = 'secret="db",service="api",' if kind == "lease" else ""
    return f'{{alertname="{alert}",alertstate="firing",instance="vaultsync:9464",job="vaultsync",{extra}severity="{severity}"}}'


def _name(kind: str, what: str) -> str:
    return f"Vaultsync{'Lease' if kind == 'lease' else 'Token'}{what}"


def healthy_case(kind: str, ttl: float, max_ttl: float, seed: int) -> dict:
    w = life.walk(kind, ttl, max_ttl, horizon=max_ttl + min(ttl, 3600.0), seed=seed)
    # The walk covers a whole life: renewals, a capped renewal near the max TTL, a re-issue.
    assert w.renewals >= 1 and w.capped >= 1 and w.reissues >= 1, (kind, ttl, seed, w.renewals, w.capped, w.reissues)
    end = int(w.horizon // life.STEP) * int(life.STEP)
    return {
        "name": f"healthy {kind} ttl={ttl:g}s max={max_ttl:g}s seed={seed}",
        "interval": f"{int(life.STEP)}s",
        "input_series": life.input_series(w, _labels(kind), LAG),
        "promql_expr_test": [
            # Not one alert, pending or firing, at any evaluation of the whole life.
            {"expr": f"count_over_time(ALERTS[{end + 1}s])", "eval_time": f"{end}s", "exp_samples": []},
        ],
    }


def stalled_case(kind: str, ttl: float, max_ttl: float) -> dict:
    w = life.walk(kind, ttl, max_ttl, horizon=2 * max_ttl, seed=7, stall_at=1.0)  # the first renewal fails
    expiry = w.expiry_at_stall
    assert expiry is not None
    end = int((expiry + 180) // life.STEP) * int(life.STEP)
    w.horizon = end
    first = "min_over_time(timestamp(ALERTS{{alertname=\"{alert}\",alertstate=\"firing\"}})[{end}s:{step}s])"
    checks = [
        # The warning comes first, when the planned renewal is overdue.
        {"expr": f"{first.format(alert=_name(kind, 'RenewalOverdue'), end=end, step=int(life.STEP))} <= bool {w.changes[0][1].due + 45 + 2 * life.STEP}",
         "eval_time": f"{end}s",
         "exp_samples": [{"labels": _alert_labels(kind, _name(kind, "RenewalOverdue"), "warning"), "value": 1}]},
        # Expired and still exported: within a minute of expiry.
        {"expr": f"{first.format(alert=_name(kind, 'Expired'), end=end, step=int(life.STEP))} - {expiry} <= bool 60",
         "eval_time": f"{end}s",
         "exp_samples": [{"labels": _alert_labels(kind, _name(kind, "Expired"), "critical"), "value": 1}]},
    ]
    lead = LEAD[ttl]
    if lead is not None:
        checks.append(
            {"expr": f"{expiry} - {first.format(alert=_name(kind, 'ExpiringSoon'), end=end, step=int(life.STEP))} >= bool {lead}",
             "eval_time": f"{end}s",
             "exp_samples": [{"labels": _alert_labels(kind, _name(kind, "ExpiringSoon"), "critical"), "value": 1}]})
    return {
        "name": f"stalled {kind} ttl={ttl:g}s",
        "interval": f"{int(life.STEP)}s",
        "input_series": life.input_series(w, _labels(kind), LAG),
        "promql_expr_test": checks,
    }


def write_tests(folder: Path, rules: Path, cases: list[dict]) -> Path:
    path = folder / "lifecycle_test.yml"
    path.write_text(yaml.safe_dump({
        "rule_files": [str(rules)],
        "evaluation_interval": f"{int(life.STEP)}s",
        "tests": cases,
    }, sort_keys=False))
    return path


def run(folder: Path, rules: Path, cases: list[dict]):
    return promtool("test", "rules", write_tests(folder, rules, cases), timeout=600)


@pytest.mark.parametrize("kind", ["lease", "token"])
def test_healthy_lives_never_alert(kind: str, tmp_path: Path) -> None:
    cases = [healthy_case(kind, ttl, max_ttl, seed) for ttl, max_ttl in LIVES for seed in SEEDS[ttl]]
    proc = run(tmp_path, RULES, cases)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


@pytest.mark.parametrize("kind", ["lease", "token"])
def test_stalled_lives_page_in_time(kind: str, tmp_path: Path) -> None:
    proc = run(tmp_path, RULES, [stalled_case(kind, ttl, max_ttl) for ttl, max_ttl in LIVES])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def _mutated(tmp_path: Path, old: str, new: str) -> Path:
    text = RULES.read_text()
    assert text.count(old) >= 1, old
    path = tmp_path / "vaultsync.yml"
    path.write_text(text.replace(old, new))
    return path


def test_a_fraction_alone_pages_healthy_capped_leases(tmp_path: Path) -> None:
    """Without the "overdue" condition, the healthy walks fail: they are not vacuous."""
    rules = _mutated(tmp_path, "and time() - (vaultsync_lease_renewal_due_timestamp_seconds > 0) > 45", "")
    proc = run(tmp_path, rules, [healthy_case("lease", 3600.0, 3 * 3600.0, seed) for seed in (1, 2, 3)])
    assert proc.returncode != 0 and "VaultsyncLeaseExpiringSoon" in proc.stdout + proc.stderr


def test_a_small_fraction_pages_a_day_lease_too_late(tmp_path: Path) -> None:
    """A 5 % threshold (what a fraction-only rule would need) pages a 24 h lease 72 min ahead: caught."""
    rules = _mutated(tmp_path, "< 0.25 * vaultsync_lease_ttl_seconds", "< 0.05 * vaultsync_lease_ttl_seconds")
    proc = run(tmp_path, rules, [stalled_case("lease", 86400.0, 26 * 3600.0)])
    assert proc.returncode != 0, proc.stdout
