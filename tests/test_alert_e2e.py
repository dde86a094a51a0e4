"""End to end, every part real: two daemons (real server, real PostgreSQL), a real Prometheus
with the shipped rules, the stack's Alertmanager config in a real Alertmanager, and a webhook.

* "stalled": its token loses the right to renew or re-read its database lease after the first
  issue. The lease page must reach the critical webhook, with the service, the secret and the
  runbook link, before the lease expires.
* "healthy": AppRole with a 30 s token (90 s max) and a 20 s database lease (60 s max), so it
  renews, re-issues and logs in again all the time. Over the same minutes: no alert at all.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import hvac
import pytest

from tests.alerting import WebhookSink, start_alertmanager
from tests.daemon_harness import DaemonProc, daemon_env, wait_for
from tests.test_daemon import config, database_engine

RULES = Path(__file__).resolve().parent.parent / "compose" / "prometheus" / "rules"
LEASE_TTL = 300  # long enough for the page to beat the expiry: first renewal <= 220 s, overdue 45 s later

pytestmark = pytest.mark.prometheus


def _policy(root: hvac.Client, name: str, paths: dict[str, list[str]]) -> None:
    root.sys.create_or_update_policy(name, "\n".join(
        f'path "{p}" {{ capabilities = {json.dumps(caps)} }}' for p, caps in paths.items()))


def _own_token_paths() -> dict[str, list[str]]:
    return {"auth/token/lookup-self": ["read"], "auth/token/renew-self": ["update"]}


@pytest.fixture
def webhook() -> Iterator[WebhookSink]:
    sink = WebhookSink()
    yield sink
    sink.stop()


def _stalled_daemon(root, vault_server, kv2, db: str, workdir: Path) -> tuple[DaemonProc, str]:
    policy = "e2e-stall-" + uuid.uuid4().hex[:8]
    grants = {**_own_token_paths(), f"{db}/creds/api": ["read"], "sys/leases/renew": ["update"],
              "sys/leases/revoke": ["update"], f"{kv2}/data/compose/*": ["read"]}
    _policy(root, policy, grants)
    token = root.auth.token.create(policies=[policy], no_default_policy=True, ttl="1h", renewable=True)["auth"]["client_token"]
    cfg = config(workdir, kv2, f"""
[services.billing]
dynamic = {{ db = "{db}/creds/api" }}
[[services.billing.destinations]]
path = "billing.env"
""", poll="5s")
    return DaemonProc(cfg, daemon_env(vault_server, token, workdir), workdir, name="stalled").start(), policy


def _healthy_daemon(root, vault_server, kv2, db: str, workdir: Path) -> DaemonProc:
    mount = "approle-" + uuid.uuid4().hex[:8]
    policy = "e2e-healthy-" + uuid.uuid4().hex[:8]
    _policy(root, policy, {f"{db}/creds/api": ["read"], "sys/leases/renew": ["update"], "sys/leases/revoke": ["update"],
                           f"{kv2}/data/compose/*": ["read"]})
    root.sys.enable_auth_method("approle", path=mount)
    root.adapter.post(f"/v1/auth/{mount}/role/daemon", json={
        "token_policies": [policy], "token_ttl": "30s", "token_max_ttl": "90s", "secret_id_ttl": "1h"})
    role_id = root.adapter.get(f"/v1/auth/{mount}/role/daemon/role-id")["data"]["role_id"]
    secret_id = root.adapter.post(f"/v1/auth/{mount}/role/daemon/secret-id")["data"]["secret_id"]
    (workdir / "role_id").write_text(role_id)
    (workdir / "secret_id").write_text(secret_id)
    for f in ("role_id", "secret_id"):
        (workdir / f).chmod(0o600)
    cfg = config(workdir, kv2, f"""
[auth]
method = "approle"
mount = "{mount}"
role_id_file = "role_id"
secret_id_file = "secret_id"

[services.api]
dynamic = {{ db = "{db}/creds/api" }}
[[services.api.destinations]]
path = "api.env"
""", poll="5s")
    return DaemonProc(cfg, daemon_env(vault_server, None, workdir), workdir, name="healthy").start()


def test_a_stalled_lease_pages_before_it_expires_and_a_healthy_daemon_never_alerts(
        kv2, root, vault_server, postgres_server, prometheus_server, webhook, tmp_path):
    for svc in ("billing", "api"):
        root.secrets.kv.v2.create_or_update_secret(path=f"compose/{svc}", secret={"APP": svc}, mount_point=kv2)
    slow_db = database_engine(root, postgres_server, default_ttl=f"{LEASE_TTL}s", max_ttl="1h")
    fast_db = database_engine(root, postgres_server, default_ttl="20s", max_ttl="60s")
    (tmp_path / "stalled").mkdir()
    (tmp_path / "healthy").mkdir()
    stalled, stalled_policy = _stalled_daemon(root, vault_server, kv2, slow_db, tmp_path / "stalled")
    healthy = _healthy_daemon(root, vault_server, kv2, fast_db, tmp_path / "healthy")
    am = start_alertmanager(tmp_path, webhook)
    try:
        prom = prometheus_server({
            "global": {"scrape_interval": "5s", "evaluation_interval": "5s"},
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [am.url.removeprefix("http://")]}]}]},
            "scrape_configs": [{"job_name": "vaultsync", "static_configs": [
                {"targets": [f"127.0.0.1:{stalled.port}"], "labels": {"daemon": "stalled"}},
                {"targets": [f"127.0.0.1:{healthy.port}"], "labels": {"daemon": "healthy"}},
            ]}],
        }, rules_dir=RULES)
        wait_for(lambda: sum(t["health"] == "up" for t in prom.targets()) == 2, 60, "Prometheus scraping both daemons")
        expiry = stalled.metric("vaultsync_lease_expiry_timestamp_seconds", service="billing", secret="db")
        assert expiry > time.time() + LEASE_TTL - 30
        # From now on the stalled daemon may neither renew nor re-read its lease: renewals fail.
        _policy(root, stalled_policy, {**_own_token_paths(), f"{kv2}/data/compose/*": ["read"]})

        delivery, alert = webhook.wait_for("critical", "VaultsyncLeaseExpiringSoon", timeout=expiry - time.time() + 60)
        assert delivery.at < expiry, f"the page arrived {delivery.at - expiry:.0f} s after the lease expired"
        assert alert["labels"]["service"] == "billing" and alert["labels"]["secret"] == "db"
        assert alert["labels"]["daemon"] == "stalled" and alert["labels"]["severity"] == "critical"
        assert alert["annotations"]["runbook_url"] == "docs/runbook.md#vaultsyncleaseexpiringsoon"
        assert stalled.count("lease renewal failed") + stalled.count("lease cannot be renewed, re-issuing") >= 1

        assert healthy.metric("vaultsync_logins_total", method="approle", result="success") >= 3, "no re-login happened"
        assert healthy.metric("vaultsync_renewals_total", kind="lease", result="success") >= 3
        quiet = prom.query('count_over_time(ALERTS{daemon="healthy"}[1h])')
        assert quiet == [], f"alerts for the healthy daemon: {quiet}"
        assert [a for _, a in webhook.received() if a["labels"].get("daemon") == "healthy"] == []
    finally:
        am.stop()
        stalled.stop()
        healthy.stop()
