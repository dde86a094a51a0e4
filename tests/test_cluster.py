"""A 3-node raft cluster (loopback, TLS, one CA): leader failover under a running daemon and migrate,
and seal/unseal and restart of a server-mode node under a running daemon.

Figures (seconds from the leader's SIGKILL to the daemon's next successful lease renewal, requests
during the outage, seal/unseal recovery time) are printed with ``-s`` and written to
``<tmp>/figures.json``.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from dotenv import dotenv_values

from tests import vault_cluster
from tests.conftest import ROOT, Server, session_ca
from tests.daemon_harness import DaemonProc, daemon_env, wait_for
from tests.least_privilege import daemon_token, migrator_token
from tests.test_daemon import config, database_engine
from vaultsync import devserver

pytestmark = pytest.mark.vault


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[vault_cluster.Cluster]:
    ca = session_ca(tmp_path_factory)
    started = time.monotonic()
    c = vault_cluster.start_cluster(devserver.find_server_binary(), tmp_path_factory.mktemp("cluster"), ca, size=3)
    print(f"\n3-node cluster up in {time.monotonic() - started:.1f}s")
    try:
        yield c
    finally:
        c.stop()


def as_server(node: vault_cluster.Node, token: str) -> Server:
    """A conftest ``Server`` for one node: clients and environments carry the CA like every test's."""
    return Server(node.addr, token, "cluster", node.pid, cacert=node.ca.cert_file, node=node, ca=node.ca)


def event_times(d: DaemonProc, event: str) -> list[float]:
    out = []
    for e in d.events():
        if e.get("event") == event and "timestamp" in e:
            out.append(datetime.datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp())
    return out


class FileWatcher:
    """Reads a rendered file as fast as it can and remembers any moment it was missing, empty or torn."""

    def __init__(self, path: Path, must_have: tuple[str, ...]) -> None:
        self.path, self.must_have = path, must_have
        self.bad: list[str] = []
        self.reads = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                values = dotenv_values(self.path)
                if not all(values.get(k) for k in self.must_have):
                    self.bad.append(f"incomplete: {sorted(values)}")
            except OSError as exc:
                self.bad.append(f"unreadable: {exc}")
            self.reads += 1
            time.sleep(0.01)

    def __enter__(self) -> FileWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def errors(d: DaemonProc) -> float:
    """Requests the daemon sent that failed (0 before the first failure)."""
    value = d.metric("vaultsync_vault_requests_total", result="error")
    return 0.0 if value != value else value


def record(tmp_path_factory: pytest.TempPathFactory, name: str, figures: dict) -> None:
    print(f"\nFIGURES {name}: {json.dumps(figures)}")
    path = tmp_path_factory.getbasetemp() / "figures.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[name] = figures
    path.write_text(json.dumps(data, indent=2))


def test_leader_sigkill_under_daemon_on_a_standby_and_a_running_migrate(cluster, postgres_server, tmp_path, tmp_path_factory):
    leader = cluster.leader()
    standby_a, standby_b = cluster.standbys()[:2]
    root = as_server(leader, cluster.root_token).client(cluster.root_token)
    kv = "fo-" + uuid.uuid4().hex[:8]
    root.sys.enable_secrets_engine("kv", path=kv, options={"version": "2"})
    db = database_engine(root, postgres_server, default_ttl="6s", max_ttl="1h")
    root.secrets.kv.v2.create_or_update_secret(path="compose/api", secret={"APP": "x"}, mount_point=kv)

    # The daemon talks to a standby (which forwards to the leader) with the shipped daemon policy.
    work = tmp_path / "work"
    work.mkdir()
    cfg = config(work, kv, f'[services.api]\ndynamic = {{ db = "{db}/creds/api" }}\n[[services.api.destinations]]\npath = "api.env"\n',
                 poll="2s")
    token = daemon_token(root, kv_mount=kv, db_mount=db)
    d = DaemonProc(cfg, daemon_env(as_server(standby_a, token), token, work), work).start(timeout=60)

    # migrate: many services, through the other standby, with the shipped migrator policy.
    services = [f"svc{i:03d}" for i in range(600)]
    files = []
    for name in services:
        f = tmp_path / "envs" / name / ".env"
        f.parent.mkdir(parents=True)
        f.write_text(f"NAME={name}\nSHARED=s\n")
        files.append(str(f))
    mig_env = as_server(standby_b, cluster.root_token).env(tmp_path, migrator_token(root, kv))
    migrate: subprocess.Popen[str] | None = None
    try:
        with FileWatcher(work / "api.env", ("APP", "DB_USERNAME", "DB_PASSWORD")) as watcher:
            wait_for(lambda: d.count("lease renewed") >= 1, 30, "a first lease renewal before the fault")
            # (started only now: a fast migrate would otherwise be done before the daemon's first renewal)
            migrate = subprocess.Popen(
                [sys.executable, "-m", "vaultsync", "migrate", "--mount", kv, "--kv-version", "2", "--concurrency", "2",
                 "--output", "json", *files],
                env=mig_env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            # Kill the leader while migrate is writing.
            wait_for(lambda: len(root.secrets.kv.v2.list_secrets(path="compose", mount_point=kv)["data"]["keys"]) > 30,
                     60, "migrate to be writing")
            before_errors = errors(d)
            # Otherwise this would only test a migrate that had finished before the fault.
            assert migrate.poll() is None, "migrate finished before the leader was killed: give it more secrets"
            killed_at = time.time()
            leader.kill()
            new_leader = cluster.leader(timeout=60)
            elected_s = time.time() - killed_at
            first = wait_for(lambda: [t for t in event_times(d, "lease renewed") if t > killed_at], 90,
                             f"a lease renewal after the leader was killed (log: {d.tail()})")
            renewal_s = min(first) - killed_at
            errors_during = errors(d) - before_errors
            out, err = migrate.communicate(timeout=300)
            # Still renewing afterwards, through the same standby.
            n = d.count("lease renewed")
            wait_for(lambda: d.count("lease renewed") > n, 30, "renewals to go on")
        assert not watcher.bad, watcher.bad[:5]
        assert watcher.reads > 100
    finally:
        if migrate is not None and migrate.poll() is None:
            migrate.kill()
        d.stop()
    assert migrate is not None

    # migrate finished, or exited 1 naming each secret it did not write: failed, unknown (sent, no answer:
    # may have landed) or abandoned (not sent once the server stopped answering).
    doc = json.loads(out)
    written = doc["result"]["written"]
    failed = [f["path"] for f in doc["result"]["failed"]]
    unknown = [f["path"] for f in doc["result"]["unknown"]]
    abandoned = doc["result"]["abandoned"]
    assert migrate.returncode in (0, 1), err
    assert sorted(written + failed + unknown + abandoned) == [f"compose/{n}" for n in services]  # every secret accounted for
    assert bool(failed or unknown or abandoned) == (migrate.returncode == 1)
    assert not abandoned or doc["result"]["abandon_reason"]
    assert all(f["error"] for f in doc["result"]["failed"])
    failure_reasons = sorted({f["error"].replace(f["path"], "<path>") for f in doc["result"]["failed"]})
    root = as_server(new_leader, cluster.root_token).client(cluster.root_token)
    # Nothing acknowledged was lost (raft commits before it answers)...
    for path in written:
        assert root.secrets.kv.v2.read_secret_version(path=path, mount_point=kv, raise_on_deleted_version=True)["data"]["data"]
    # ...and a re-run converges, writing each secret once (version 1: nothing doubled).
    rerun = subprocess.run(
        [sys.executable, "-m", "vaultsync", "migrate", "--mount", kv, "--output", "json", *files],
        env={**mig_env, "VAULT_ADDR": new_leader.addr}, cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr
    result = json.loads(rerun.stdout)["result"] or {"written": []}
    assert len(result["written"]) <= len(services) - len(written)
    for name in services:
        secret = root.secrets.kv.v2.read_secret_version(path=f"compose/{name}", mount_point=kv, raise_on_deleted_version=True)["data"]
        assert secret["data"] == {"NAME": name, "SHARED": "s"}
        assert secret["metadata"]["version"] == 1, f"compose/{name} written twice"

    # The old leader comes back with its state and rejoins as a standby voter.
    restarted_at = time.monotonic()
    leader.restart()
    leader.wait(lambda h: bool(h) and h.get("standby") and not h.get("sealed"), 60, "the old leader to rejoin as standby")
    rejoin_s = time.monotonic() - restarted_at
    peers = cluster.peers()
    assert sorted(p["node_id"] for p in peers if p["voter"]) == ["node1", "node2", "node3"]
    record(tmp_path_factory, "failover", {
        "election_s": round(elected_s, 2), "kill_to_first_renewal_s": round(renewal_s, 2),
        "daemon_failed_requests_during_outage": errors_during, "migrate_exit": migrate.returncode,
        "migrate_written_first_run": len(written), "migrate_failed_first_run": len(failed), "rejoin_s": round(rejoin_s, 2),
        "migrate_failure_reasons": failure_reasons[:3],
    })
    assert renewal_s < 60


def test_seal_unseal_and_restart_under_a_running_daemon(fresh_vault, tmp_path, tmp_path_factory):
    node = fresh_vault.node
    assert node is not None, "needs a server-mode fresh_vault"
    root = fresh_vault.client(fresh_vault.token)
    kv = "su-" + uuid.uuid4().hex[:8]
    root.sys.enable_secrets_engine("kv", path=kv, options={"version": "2"})
    root.secrets.kv.v2.create_or_update_secret(path="compose/web", secret={"COLOR": "blue"}, mount_point=kv)
    work = tmp_path / "work"
    work.mkdir()
    cfg = config(work, kv, '[services.web]\n[[services.web.destinations]]\npath = "web.env"\n', poll="1s")
    token = daemon_token(root, kv_mount=kv)
    d = DaemonProc(cfg, daemon_env(fresh_vault, token, work), work).start()
    figures: dict[str, float] = {}
    try:
        with FileWatcher(work / "web.env", ("COLOR",)) as watcher:
            for fault in ("seal", "restart"):
                assert d.metric("vaultsync_vault_up") == 1
                offset = node.audit_size()
                started = time.monotonic()
                if fault == "seal":
                    node.seal()
                else:
                    node.stop()
                wait_for(lambda: d.metric("vaultsync_vault_up") == 0, 30, f"vault_up 0 after {fault}")
                wait_for(lambda: d._get("/readyz").status_code != 200, 30, f"/readyz not ready after {fault}")
                errors_before = errors(d)
                # The outage lasts until the daemon has retried a few times (its backoff decides when).
                wait_for(lambda: errors(d) >= errors_before + 3, 60, f"the daemon to retry during the {fault}")
                if fault == "seal":
                    node.unseal()
                else:
                    node.restart()
                node.wait_active()
                back = time.monotonic()
                wait_for(lambda: d.metric("vaultsync_vault_up") == 1, 60, f"vault_up 1 after {fault}")
                wait_for(lambda: d._get("/readyz").status_code == 200, 60, f"/readyz ready after {fault}")
                outage = back - started
                figures[f"{fault}_outage_s"] = round(outage, 2)
                figures[f"{fault}_recovery_s"] = round(time.monotonic() - back, 2)
                # Requests the daemon sent during the outage (all failed) and the ones the server
                # audited from the fault until recovery (a sealed or stopped server audits none).
                figures[f"{fault}_failed_requests"] = errors(d) - errors_before
                audited = [e for e in node.audit_entries(offset) if e.get("type") == "request"]
                figures[f"{fault}_audited_requests"] = len(audited)
                assert errors(d) - errors_before < 2 * outage + 10, f"{errors(d) - errors_before} requests in {outage:.0f}s"
            # a change after both faults still reaches the file
            root = fresh_vault.client(fresh_vault.token)
            root.secrets.kv.v2.create_or_update_secret(path="compose/web", secret={"COLOR": "green"}, mount_point=kv)
            wait_for(lambda: "green" in (work / "web.env").read_text(), 30, "the new value after recovery")
        assert not watcher.bad, watcher.bad[:5]
    finally:
        d.stop()
    record(tmp_path_factory, "seal_restart", figures)
