"""Alert rules in compose/prometheus/rules: promtool checks and unit tests, and a real Prometheus loading them.

Needs Debian's `prometheus` package (/usr/bin/promtool, /usr/bin/prometheus).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import dashboards

pytestmark = pytest.mark.prometheus

ROOT = Path(__file__).resolve().parent.parent
PROM_DIR = ROOT / "compose" / "prometheus"
RULES = PROM_DIR / "rules" / "vaultsync.yml"
RULE_TESTS = PROM_DIR / "rules" / "tests" / "vaultsync_test.yml"
CONFIG = PROM_DIR / "prometheus.yml"
DASHBOARD = ROOT / "compose" / "grafana" / "dashboards" / "vaultsync.json"

REQUIRED_ALERTS = {
    "VaultsyncLeaseRenewalOverdue",
    "VaultsyncLeaseExpiringSoon",
    "VaultsyncLeaseExpired",
    "VaultsyncTokenRenewalOverdue",
    "VaultsyncTokenExpiringSoon",
    "VaultsyncTokenExpired",
    "VaultsyncRenewalsFailing",
    "VaultsyncRenderFailing",
    "VaultsyncRenderStale",
    "VaultsyncVaultUnreachable",
    "VaultsyncDown",
    "VaultsyncLoginsFailing",
    "VaultsyncRotationsFailing",
    "VaultsyncForeignSecretAccess",
}
# The daemon's metric contract: rules may use nothing else.
CONTRACT = {
    "vaultsync_lease_expiry_timestamp_seconds",
    "vaultsync_token_expiry_timestamp_seconds",
    "vaultsync_lease_ttl_seconds",
    "vaultsync_lease_renewal_due_timestamp_seconds",
    "vaultsync_token_ttl_seconds",
    "vaultsync_token_renewal_due_timestamp_seconds",
    "vaultsync_renewals_total",
    "vaultsync_logins_total",
    "vaultsync_render_total",
    "vaultsync_last_render_success_timestamp_seconds",
    "vaultsync_rotations_total",
    "vaultsync_secret_version",
    "vaultsync_vault_up",
    "vaultsync_build_info",
    "vaultsync_vault_requests_total",
    "vaultsync_hooks_total",
    # `vaultsync audit --watch` (vaultsync/audit_watch.py)
    "vaultsync_audit_denied_requests_total",
}


def promtool(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    binary = "/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else shutil.which("promtool")
    if not binary:
        pytest.fail("promtool not found: install Debian package prometheus (apt-get install -y prometheus)", pytrace=False)
    return subprocess.run([binary, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def _ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, f"{' '.join(proc.args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"


def _rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def _alerts() -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for r in _rules() if "alert" in r}


# --- promtool -----------------------------------------------------------------------------------


def test_promtool_check_rules() -> None:
    proc = promtool("check", "rules", RULES)
    _ok(proc)
    assert "SUCCESS" in proc.stdout


def test_promtool_unit_tests_pass() -> None:
    proc = promtool("test", "rules", RULE_TESTS)
    _ok(proc)
    assert "SUCCESS" in proc.stdout


def test_promtool_check_config() -> None:
    proc = promtool("check", "config", CONFIG)
    _ok(proc)
    assert "1 rule files found" in proc.stdout, proc.stdout
    assert str(RULES.relative_to(ROOT)) in proc.stdout, "prometheus.yml does not load rules/vaultsync.yml"


def test_unit_tests_catch_a_broken_rule(tmp_path: Path) -> None:
    """The unit tests are not vacuous: a 90 s overdue slack instead of 45 s fails them."""
    (tmp_path / "rules" / "tests").mkdir(parents=True)
    text = RULES.read_text()
    rule = "time() - (vaultsync_lease_renewal_due_timestamp_seconds > 0) > 45"
    assert rule in text
    (tmp_path / "rules" / "vaultsync.yml").write_text(text.replace(rule, rule.replace("45", "90")))
    (tmp_path / "rules" / "tests" / "vaultsync_test.yml").write_text(RULE_TESTS.read_text())
    proc = promtool("test", "rules", tmp_path / "rules" / "tests" / "vaultsync_test.yml")
    assert proc.returncode != 0, proc.stdout
    assert "VaultsyncLeaseRenewalOverdue" in proc.stdout + proc.stderr


# --- rule content -------------------------------------------------------------------------------


def test_required_alerts_exist_with_severity_and_annotations() -> None:
    alerts = _alerts()
    assert REQUIRED_ALERTS <= set(alerts), f"missing: {REQUIRED_ALERTS - set(alerts)}"
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert rule["annotations"]["summary"].strip() and rule["annotations"]["description"].strip(), name
        assert "for" in rule, f"{name}: say `for:` explicitly, even 0m"
    for name in ("VaultsyncLeaseRenewalOverdue", "VaultsyncLeaseExpiringSoon", "VaultsyncLeaseExpired"):
        for field in ("summary", "description"):
            assert "{{ $labels.service }}" in alerts[name]["annotations"][field], name
            assert "{{ $labels.secret }}" in alerts[name]["annotations"][field], name
    assert alerts["VaultsyncVaultUnreachable"]["expr"].strip() == "vaultsync_vault_up == 0"
    down = alerts["VaultsyncDown"]["expr"]
    assert 'absent(up{job="vaultsync"})' in down and 'up{job="vaultsync"} == 0' in down


def test_every_alert_links_its_runbook_section() -> None:
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", runbook, re.M)}
    for name, rule in _alerts().items():
        url = rule["annotations"].get("runbook_url", "")
        assert url == f"docs/runbook.md#{name.lower()}", f"{name}: runbook_url {url!r}"
        assert name.lower() in anchors, f"docs/runbook.md has no section {name}"


def test_rules_use_only_contract_metrics() -> None:
    recorded = {r["record"] for r in _rules() if "record" in r}
    for rule in _rules():
        for metric in re.findall(r"\bvaultsync[_:][a-z0-9_:]+", rule["expr"]):
            assert metric in CONTRACT or metric in recorded, f"{rule.get('alert') or rule.get('record')} uses {metric}"


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())
    assert tests["rule_files"] == ["../vaultsync.yml"]
    fired, quiet = set(), set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = set(_alerts())
    assert alerts - fired == set(), "alerts without a firing test"
    assert alerts - quiet == set(), "alerts without a not-firing test"


# --- a real Prometheus with the stack's config --------------------------------------------------


@pytest.fixture(scope="module")
def prometheus(prometheus_server):
    """The stack's prometheus.yml and rules, in a real Prometheus (its targets don't resolve here: that's fine)."""
    return prometheus_server(CONFIG)


def test_prometheus_loads_our_rules(prometheus) -> None:
    rules = prometheus.rules()
    names = {r["name"] for r in rules if r["type"] == "alerting"}
    assert REQUIRED_ALERTS <= names
    assert names == set(_alerts())
    bad = [r for r in rules if r.get("health") not in ("ok", "unknown")]
    assert not bad, json.dumps(bad, indent=1)
    deadline = time.monotonic() + 30
    while not (targets := prometheus.targets()) and time.monotonic() < deadline:
        time.sleep(0.5)  # static targets appear after the first discovery sync
    jobs = {t["labels"]["job"] for t in targets}
    assert {"vaultsync", "openbao", "otel-collector"} <= jobs
    openbao = next(t for t in targets if t["labels"]["job"] == "openbao")
    assert openbao["scrapeUrl"].endswith("/v1/sys/metrics?format=prometheus")


def test_absent_daemon_shows_up_as_pending_vaultsync_down(prometheus) -> None:
    """Nothing answers at vaultsync:9464 here, so VaultsyncDown goes pending within a few evaluations."""
    alerts = prometheus.wait_for_alert("VaultsyncDown", state="pending", timeout=90)
    assert alerts[0]["labels"]["severity"] == "critical"


def test_dashboard_queries_are_valid_promql(prometheus) -> None:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [
        node["expr"] for node in dashboards.nodes(dash)
        if "expr" in node and (not isinstance(node.get("datasource"), dict) or node["datasource"].get("type") == "prometheus")
    ]
    assert len(exprs) >= 10
    for expr in exprs:
        q = expr.replace("$__rate_interval", "1m").replace("$__range", "1h").replace("$service", ".*")
        prometheus.query(q)  # raises with Prometheus' parse error on a bad expression


def test_factory_takes_a_dict_config_and_a_rules_dir(prometheus_server) -> None:
    """The form daemon tests use: their own scrape config, our rules, fast evaluation."""
    server = prometheus_server(
        {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "scrape_configs": []},
        rules_dir=PROM_DIR / "rules",
    )
    cfg = yaml.safe_load(server.config_file.read_text())
    assert cfg["rule_files"] == [str(PROM_DIR / "rules" / "*.yml")]
    assert {r["name"] for r in server.rules() if r["type"] == "alerting"} == set(_alerts())
    hits = server.wait_for_alert("VaultsyncDown", state="pending", timeout=20)
    assert hits[0]["labels"] == {"alertname": "VaultsyncDown", "job": "vaultsync", "severity": "critical"}


# --- `for:` and thresholds at the exact evaluation (issue 17) -----------------------------------

# Each alert: input series (one sample every 15 s) that make its condition true from second `onset`
# on, and the hold (`for:`, seconds) it must have. Rules are evaluated every 15 s and the checks
# bracket the exact evaluation where it starts pending and firing, so a `for:` or a threshold off by
# one evaluation fails. Onsets are worked out by hand from the thresholds: e.g. a renewal due at
# 100 s is "over 45 s overdue" from 145 s on, so from the 150 s evaluation.
STEP = 15
_LEASE = '{service="api",secret="db"}'
BOUNDARIES: dict[str, tuple[list[tuple[str, str]], int, int]] = {
    "VaultsyncLeaseRenewalOverdue": ([(f"vaultsync_lease_renewal_due_timestamp_seconds{_LEASE}", "100x250")], 150, 0),
    # under a quarter of a 1000 s TTL left (expiry 600 s: from 350 s) and the renewal overdue
    "VaultsyncLeaseExpiringSoon": ([(f"vaultsync_lease_expiry_timestamp_seconds{_LEASE}", "600x250"),
                                    (f"vaultsync_lease_ttl_seconds{_LEASE}", "1000x250"),
                                    (f"vaultsync_lease_renewal_due_timestamp_seconds{_LEASE}", "100x250")], 360, 0),
    "VaultsyncLeaseExpired": ([(f"vaultsync_lease_expiry_timestamp_seconds{_LEASE}", "100x250")], 135, 0),
    "VaultsyncTokenRenewalOverdue": ([("vaultsync_token_renewal_due_timestamp_seconds", "100x250")], 150, 0),
    "VaultsyncTokenExpiringSoon": ([("vaultsync_token_expiry_timestamp_seconds", "600x250"), ("vaultsync_token_ttl_seconds", "1000x250"),
                                    ("vaultsync_token_renewal_due_timestamp_seconds", "100x250")], 360, 0),
    "VaultsyncTokenExpired": ([("vaultsync_token_expiry_timestamp_seconds", "100x250")], 135, 0),
    "VaultsyncRenewalsFailing": ([('vaultsync_renewals_total{kind="lease",result="failure"}', "0+1x250")], 15, 600),
    "VaultsyncLoginsFailing": ([('vaultsync_logins_total{method="approle",result="failure"}', "0+1x250")], 15, 600),
    "VaultsyncRenderFailing": ([('vaultsync_render_total{service="api",destination="api.env",result="failure"}', "0+1x250")], 15, 600),
    "VaultsyncRenderStale": ([('vaultsync_last_render_success_timestamp_seconds{service="api",destination="api.env"}', "0x250")], 1815, 300),
    "VaultsyncVaultUnreachable": ([("vaultsync_vault_up", "0x250")], 0, 120),
    "VaultsyncDown": ([('up{job="vaultsync",instance="vaultsync:9464"}', "0x250")], 0, 300),
    "VaultsyncRotationsFailing": ([('vaultsync_rotations_total{service="api",result="failure"}', "0+1x250")], 15, 0),
    # one refusal every 15 s: increase() over 5 m is 6 (> 5) at 90 s, 5 at 75 s
    "VaultsyncForeignSecretAccess": ([('vaultsync_audit_denied_requests_total{service="web"}', "0+1x250")], 90, 0),
}


def _boundary_tests() -> dict[str, Any]:
    tests = []
    for name, (series, onset, hold) in BOUNDARIES.items():
        def alerts(state: str, at: int, present: bool) -> dict[str, Any]:
            return {"expr": f'count(ALERTS{{alertname="{name}",alertstate="{state}"}})', "eval_time": f"{at}s",
                    "exp_samples": [{"labels": "{}", "value": 1}] if present else []}

        checks = [alerts("firing", onset + hold, True)]
        if onset + hold >= STEP:
            checks.append(alerts("firing", onset + hold - STEP, False))
        if hold:  # pending from the onset, not one evaluation earlier
            checks.append(alerts("pending", onset, True))
            if onset >= STEP:
                checks.append(alerts("pending", onset - STEP, False))
        tests.append({"name": f"{name} fires exactly {hold}s after its condition holds from {onset}s", "interval": f"{STEP}s",
                      "input_series": [{"series": s, "values": v} for s, v in series], "promql_expr_test": checks})
    return {"rule_files": [str(RULES)], "evaluation_interval": f"{STEP}s", "tests": tests}


def test_every_alert_fires_at_the_exact_evaluation_its_for_and_threshold_say(tmp_path: Path) -> None:
    assert set(BOUNDARIES) == set(_alerts()) == REQUIRED_ALERTS
    (tmp_path / "boundaries.yml").write_text(yaml.safe_dump(_boundary_tests(), sort_keys=False))
    _ok(promtool("test", "rules", tmp_path / "boundaries.yml"))


def test_boundary_tests_catch_a_for_off_by_one_minute(tmp_path: Path) -> None:
    """`for: 2m` -> `3m` on VaultsyncVaultUnreachable must fail the boundary tests."""
    text = RULES.read_text()
    rule = "expr: vaultsync_vault_up == 0\n        for: 2m"
    assert rule in text
    rules = tmp_path / "vaultsync.yml"
    rules.write_text(text.replace(rule, rule.replace("2m", "3m")))
    doc = _boundary_tests()
    doc["rule_files"] = [str(rules)]
    (tmp_path / "boundaries.yml").write_text(yaml.safe_dump(doc, sort_keys=False))
    proc = promtool("test", "rules", tmp_path / "boundaries.yml")
    assert proc.returncode != 0 and "VaultsyncVaultUnreachable" in proc.stdout + proc.stderr, proc.stdout
