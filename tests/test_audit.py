"""`vaultsync audit` against a real server's file audit device: counts equal the operations performed.

The server is the test's own (``fresh_vault``) so its audit log holds only this test's operations.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import hvac.exceptions
import pytest
import requests

from tests import least_privilege
from tests.conftest import ROOT, run_cli
from tests.test_daemon import database_engine
from vaultsync.devserver import free_port

pytestmark = pytest.mark.vault

SERVICES = {"api": 2, "web": 1, "worker": 3}  # service -> how many times it reads its own secret
ZERO = {"reads": 0, "writes": 0, "logins": 0, "failed_logins": 0, "token_renewals": 0, "lease_renewals": 0,
        "tokens_created": 0, "denied": 0, "other": 0}


def _config(tmp_path: Path, db_mount: str) -> Path:
    body = ['[kv]\nmount = "secret"\nprefix = "compose"\n', '[auth]\nmount = "approle"\n']
    body += [f'[services.{name}]\ntoken_ttl = "10m"\ntoken_max_ttl = "1h"\n' for name in SERVICES]
    body[2] += f'dynamic = {{ db = "{db_mount}/creds/api" }}\n'  # api: a database lease it renews
    path = tmp_path / "vaultsync.toml"
    path.write_text("\n".join(body))
    return path


def _metric(text: str, name: str, labels: str) -> float | None:
    m = re.search(rf"^{name}\{{{re.escape(labels)}\}} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def _wait(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


@pytest.mark.postgres
def test_report_counts_equal_the_operations_performed(fresh_vault, postgres_server, tmp_path):
    server, node = fresh_vault, fresh_vault.node
    assert node is not None, "needs a server-mode node with a file audit device"
    root = server.client(server.token)
    db = database_engine(root, postgres_server, default_ttl="5m", max_ttl="1h")
    cfg = _config(tmp_path, db)
    root_env = server.env(tmp_path, server.token)

    metrics_addr = f"127.0.0.1:{free_port()}"
    watcher = subprocess.Popen(
        [sys.executable, "-m", "vaultsync", "--config", str(cfg), "audit", str(node.audit_log), "--watch",
         "--metrics-addr", metrics_addr], env=root_env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait(lambda: _scrape(metrics_addr) is not None)

        # migrate: one .env per service, written by the shipped migrator policy's token.
        policy = least_privilege.install_policy(root, "vaultsync-migrator", kv_mount="secret")
        migrator = least_privilege.token_for(root, policy, default_policy=False, display_name="migrator")
        for name in SERVICES:
            (tmp_path / name).mkdir()
            (tmp_path / name / ".env").write_text(f"OWNER={name}\nPASSWORD=pw-{name}\n")
        res = run_cli("--config", str(cfg), "migrate", *(str(tmp_path / n / ".env") for n in SERVICES),
                      env=server.env(tmp_path, migrator))
        assert res.code == 0, res.output

        empty = tmp_path / "no-policy-files"
        empty.mkdir()
        res = run_cli("--config", str(cfg), "policies", "apply", str(empty), env=root_env)
        assert res.code == 0, res.output

        clients = {}
        for name in SERVICES:
            res = run_cli("--config", str(cfg), "approle", "credentials", name, "--stdout", env=root_env)
            assert res.code == 0, res.output
            creds = json.loads(res.stdout)
            client = server.client()
            client.auth.approle.login(role_id=creds["role_id"], secret_id=creds["secret_id"], use_token=True)
            clients[name] = client
        for name, reads in SERVICES.items():
            for _ in range(reads):
                got = clients[name].secrets.kv.v2.read_secret_version(path=f"compose/{name}", mount_point="secret",
                                                                      raise_on_deleted_version=True)
                assert got["data"]["data"]["OWNER"] == name
            clients[name].auth.token.renew_self()
        # api's dynamic database secret: issued once (a read), its lease renewed twice.
        lease = clients["api"].read(f"{db}/creds/api")["lease_id"]
        for _ in range(2):
            # the path form, the one the generated policies grant (scoped to the service's own leases)
            clients["api"].adapter.put(f"/v1/sys/leases/renew/{lease}", json={"increment": 300})
        for _ in range(2):  # web probes api's secret: refused twice
            with pytest.raises(hvac.exceptions.Forbidden):
                clients["web"].secrets.kv.v2.read_secret_version(path="compose/api", mount_point="secret",
                                                                 raise_on_deleted_version=True)
        with pytest.raises(hvac.exceptions.InvalidRequest):  # a wrong secret_id: a failed login, by nobody known
            server.client().auth.approle.login(role_id=creds["role_id"], secret_id="not-the-secret-id")

        # The watcher saw the refusals: the alert's metric, labelled with the service, not the path.
        _wait(lambda: _metric(_scrape(metrics_addr) or "", "vaultsync_audit_denied_requests_total", 'service="web"') == 2)
        text = _scrape(metrics_addr) or ""
        assert _metric(text, "vaultsync_audit_denied_requests_total", 'service="api"') == 0
        assert _metric(text, "vaultsync_audit_operations_total", 'kind="reads",service="worker"') == 3
        assert "compose/" not in text
    finally:
        watcher.terminate()
        _, err = watcher.communicate(timeout=30)
    assert watcher.returncode == 0, err.decode()

    res = run_cli("--config", str(cfg), "audit", str(node.audit_log), "--since", "1h", "--output", "json", env=root_env)
    assert res.code == 0, res.output
    report = json.loads(res.stdout)
    services = report["services"]
    for name, reads in SERVICES.items():
        expected = {**ZERO, "reads": reads, "logins": 1, "token_renewals": 1, "denied": 2 if name == "web" else 0}
        if name == "api":
            expected.update(reads=reads + 1, lease_renewals=2)
        assert services[name] == expected, name
    paths = {(p["service"], p["path"]): p for p in report["paths"]}
    assert paths[("web", "secret/data/compose/api")]["denied"] == 2
    assert paths[("api", "secret/data/compose/api")]["reads"] == 2
    assert paths[("api", f"{db}/creds/api")]["reads"] == 1
    assert paths[("api", "sys/leases/renew")]["lease_renewals"] == 2
    assert lease.rsplit("/", 1)[1] not in res.stdout  # the lease id in the renew path is never reported
    migrator_writes = {path: p["writes"] for (who, path), p in paths.items() if who == "unknown:token-migrator" and p["writes"]}
    assert migrator_writes == {f"secret/data/compose/{n}": 1 for n in SERVICES}
    assert services["unknown:anonymous"]["failed_logins"] == 1
    assert report["skipped"] == {}
    # HMAC'd values stay HMAC'd, and no secret value or secret_id is in the report.
    for name in SERVICES:
        assert f"pw-{name}" not in res.stdout
    assert creds["secret_id"] not in res.stdout and creds["role_id"] not in res.stdout

    # The window: nothing after a time in the future.
    res = run_cli("--config", str(cfg), "audit", str(node.audit_log), "--since", "2999-01-01T00:00:00Z",
                  "--output", "json", env=root_env)
    assert res.code == 0 and json.loads(res.stdout)["counted"] == 0, res.output

    # The same log, damaged: cut at the front (rotated mid-line), a non-JSON line, an unknown entry type
    # and operation, and cut at the end. Those are reported with their line numbers and skipped.
    damaged = tmp_path / "damaged.log"
    original = node.audit_log.read_bytes()
    lines = original.splitlines(keepends=True)
    damaged.write_bytes(
        lines[0][len(lines[0]) // 2:]
        + b"this is not json\n"
        + json.dumps({"time": "2026-01-01T00:00:00Z", "type": "weird"}).encode() + b"\n"
        + json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "type": "response",
                      "request": {"operation": "teleport", "path": "secret/data/compose/api"}}).encode() + b"\n"
        + b"".join(lines[1:])
        + b'{"time": "2026-'
    )
    res = run_cli("--config", str(cfg), "audit", str(damaged), "--since", "1h", "--output", "json", env=root_env)
    assert res.code == 0, res.output
    again = json.loads(res.stdout)
    skipped = {kind: v["lines"] for kind, v in again["skipped"].items()}
    last = len(lines) + 4
    assert skipped == {"not_json": [f"{damaged}:1", f"{damaged}:2"], "unknown_type": [f"{damaged}:3"],
                       "unknown_operation": [f"{damaged}:4"], "truncated": [f"{damaged}:{last}"]}
    for name in SERVICES:  # the first line was root's: the services' counts are unchanged
        assert again["services"][name] == services[name]
    assert "skipped 2 not json line(s)" in res.stderr

    res = run_cli("--config", str(cfg), "audit", str(damaged), "--since", "1h", env=root_env)
    assert res.code == 0, res.output
    assert re.search(r"^web\s+secret/data/compose/api\s+0\s+0\s+0\s+0\s+0\s+0\s+0\s+2$", res.stdout, re.M), res.stdout


def _scrape(addr: str) -> str | None:
    try:
        return requests.get(f"http://{addr}/metrics", timeout=5).text
    except requests.RequestException:
        return None


def test_missing_file_and_bad_window_are_clean_errors(tmp_path):
    env = {"HOME": str(tmp_path), "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    res = run_cli("audit", str(tmp_path / "nope.log"), env=env, cwd=tmp_path)
    assert res.code == 2 and "nope.log: no such audit log file" in res.stderr and "Traceback" not in res.output
    (tmp_path / "a.log").write_text("")
    res = run_cli("audit", str(tmp_path / "a.log"), "--since", "yesterday-ish", env=env, cwd=tmp_path)
    assert res.code == 2 and "--since" in res.stderr and "Traceback" not in res.output
