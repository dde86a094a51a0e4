"""End to end: a real Prometheus scrapes a running daemon (real server, real PostgreSQL) and the
shipped lease-expiring alert fires for the lease capped by a short max TTL, and only for it."""

from __future__ import annotations

from pathlib import Path

from tests.daemon_harness import DaemonProc, daemon_env, wait_for
from tests.test_daemon import config, database_engine, short_token

RULES = Path(__file__).resolve().parent.parent / "compose" / "prometheus" / "rules"


def test_lease_expiring_alert_fires_through_prometheus(kv2, root, vault_server, postgres_server, prometheus_server, tmp_path):
    short = database_engine(root, postgres_server, default_ttl="20s", max_ttl="20s")
    long = database_engine(root, postgres_server, default_ttl="1h", max_ttl="2h")
    for name in ("api", "billing"):  # a service whose KV secret is missing is not rendered (issue 11)
        root.secrets.kv.v2.create_or_update_secret(path=f"compose/{name}", secret={"A": "1"}, mount_point=kv2)
    cfg = config(tmp_path, kv2, f"""
[services.api]
dynamic = {{ db = "{short}/creds/api" }}
[[services.api.destinations]]
path = "api.env"

[services.billing]
dynamic = {{ db = "{long}/creds/api" }}
[[services.billing.destinations]]
path = "billing.env"
""")
    d = DaemonProc(cfg, daemon_env(vault_server, short_token(root), tmp_path), tmp_path).start()
    try:
        prom = prometheus_server({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "vaultsync", "static_configs": [{"targets": [f"127.0.0.1:{d.port}"]}]}],
        }, rules_dir=RULES)
        wait_for(lambda: any(t["health"] == "up" for t in prom.targets()), 30, "Prometheus scraping the daemon")
        firing = prom.wait_for_alert("VaultsyncLeaseExpiringSoon", "firing", timeout=60)
        assert {(a["labels"]["service"], a["labels"]["secret"]) for a in firing} == {("api", "db")}
        assert firing[0]["labels"]["severity"] == "critical"
        assert "api" in firing[0]["annotations"]["summary"]
        assert prom.query('vaultsync_lease_expiry_timestamp_seconds{service="billing"} - time() > 3000')
        quiet = {a["labels"]["alertname"] for a in prom.alerts()}
        assert not quiet & {"VaultsyncVaultUnreachable", "VaultsyncDown", "VaultsyncTokenExpiringSoon"}, quiet
    finally:
        d.stop()
