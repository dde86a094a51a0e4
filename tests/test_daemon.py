"""`vaultsync daemon` against a real server and a real PostgreSQL behind the database secrets engine."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import hvac
import psycopg
import pytest
from dotenv import dotenv_values

from tests.daemon_harness import DaemonProc, TcpCut, daemon_env, wait_for
from tests.fixtures_servers import PostgresServer
from tests.least_privilege import daemon_token
from vaultsync.formats import HEADER

HOOK = [sys.executable, "-c", "import sys, time; open(sys.argv[1], 'a').write(f'{time.time()}\\n')"]


def short_token(root: hvac.Client, ttl: str = "1h") -> str:
    """The daemon's identity in these tests: a renewable token with the daemon policy vaultsync
    generates (no default policy), its KV and database mounts widened to ``+`` so it fits every
    test's fresh mounts."""
    return daemon_token(root, kv_mount="+", db_mount="+", ttl=ttl)


def database_engine(root: hvac.Client, pg: PostgresServer, *, default_ttl: str = "5s", max_ttl: str = "20s", mount: str | None = None) -> str:
    """Enable the database secrets engine on a fresh mount with role `api` on the real PostgreSQL."""
    mount = mount or "db-" + uuid.uuid4().hex[:8]
    root.sys.enable_secrets_engine("database", path=mount)
    root.adapter.post(f"/v1/{mount}/config/pg", json={
        "plugin_name": "postgresql-database-plugin",
        "connection_url": f"postgresql://{{{{username}}}}:{{{{password}}}}@{pg.host}:{pg.port}/postgres?sslmode=disable",
        "username": pg.admin_user, "password": pg.admin_password, "allowed_roles": ["api"],
        "verify_connection": True,
    })
    root.adapter.post(f"/v1/{mount}/roles/api", json={
        "db_name": "pg",
        "creation_statements": ["CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';"],
        "default_ttl": default_ttl, "max_ttl": max_ttl,
    })
    return mount


def config(tmp_path: Path, kv: str, body: str, *, poll: str = "1s", grace: str = "3s", extra: str = "") -> Path:
    path = tmp_path / "vaultsync.toml"
    path.write_text(
        f'[vault]\ntimeout = "3s"\n\n[kv]\nmount = "{kv}"\nprefix = "compose"\n\n'
        f'[daemon]\npoll_interval = "{poll}"\nlease_revoke_grace = "{grace}"\n{extra}\n\n{body}'
    )
    return path


def can_login(pg: PostgresServer, user: str, password: str) -> bool:
    try:
        with pg.connect(user, password) as conn:
            conn.execute("select 1")
        return True
    except psycopg.OperationalError:
        return False


def role_exists(pg: PostgresServer, user: str) -> bool:
    with pg.connect() as conn:
        return conn.execute("select 1 from pg_roles where rolname = %s", (user,)).fetchone() is not None


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    d = tmp_path / "work"
    d.mkdir()
    return d


def test_lease_renewed_until_max_ttl_then_reissued_rendered_hooked_and_old_revoked(kv2, root, vault_server, postgres_server, workdir):
    db = database_engine(root, postgres_server, default_ttl="5s", max_ttl="20s")
    root.secrets.kv.v2.create_or_update_secret(path="compose/api", secret={"APP": "x"}, mount_point=kv2)
    cfg = config(workdir, kv2, f"""
[services.api]
dynamic = {{ db = "{db}/creds/api" }}
[[services.api.destinations]]
path = "out/api.env"
command = {json.dumps(HOOK + [str(workdir / "hooks.log")])}
""", grace="1s")
    d = DaemonProc(cfg, daemon_env(vault_server, short_token(root), workdir), workdir).start()
    try:
        env_file = workdir / "out" / "api.env"
        first = dotenv_values(env_file)
        assert first["APP"] == "x" and first["DB_USERNAME"] and first["DB_PASSWORD"]
        assert oct(env_file.stat().st_mode & 0o777) == "0o600"
        assert can_login(postgres_server, first["DB_USERNAME"], first["DB_PASSWORD"])
        issued = time.time()
        # Renewals keep the same lease (and user) alive past its 5 s TTL...
        wait_for(lambda: d.count("lease renewed") >= 2, 15, "two lease renewals")
        assert dotenv_values(env_file)["DB_USERNAME"] == first["DB_USERNAME"]
        assert time.time() - issued > 5
        assert can_login(postgres_server, first["DB_USERNAME"], first["DB_PASSWORD"])
        # ...until the max TTL (20 s): then new credentials, a new file, the hook.
        second = wait_for(lambda: (v := dotenv_values(env_file))["DB_USERNAME"] != first["DB_USERNAME"] and v, 25, "re-issued credentials")
        assert time.time() - issued < 20, "re-issued only after the old lease had expired"
        assert can_login(postgres_server, second["DB_USERNAME"], second["DB_PASSWORD"])
        hooks = wait_for(lambda: len((workdir / "hooks.log").read_text().splitlines()) >= 2 and (workdir / "hooks.log").read_text(), 5, "hook runs")
        assert len(hooks.splitlines()) == 2  # start + re-issue; renewals do not re-render
        # The old lease is revoked after the grace period: its database user is dropped.
        wait_for(lambda: not role_exists(postgres_server, first["DB_USERNAME"]), 10, "old lease revoked")
        # (the user is dropped while the revoke request is answered: the log line follows a moment later)
        wait_for(lambda: d.count("old lease revoked") >= 1, 5, "the revoke logged")
        assert d.metric("vaultsync_lease_expiry_timestamp_seconds", service="api", secret="db") > time.time()
        assert d.metric("vaultsync_renewals_total", kind="lease", result="success") >= 2
        assert d.metric("vaultsync_render_total", service="api", destination="out/api.env", result="success") == 2
    finally:
        d.stop()
    logs = d.log.read_text()
    assert first["DB_PASSWORD"] not in logs and second["DB_PASSWORD"] not in logs


def test_kv_change_reaches_the_file_within_one_poll_interval(kv2, root, vault_server, workdir):
    root.secrets.kv.v2.create_or_update_secret(path="compose/web", secret={"COLOR": "blue"}, mount_point=kv2)
    cfg = config(workdir, kv2, '[services.web]\n[[services.web.destinations]]\npath = "web.env"\nstyle = "shell"\n', poll="2s")
    d = DaemonProc(cfg, daemon_env(vault_server, short_token(root), workdir), workdir).start()
    try:
        assert (workdir / "web.env").read_text() == "export COLOR='blue'\n"
        assert d.metric("vaultsync_secret_version", service="web", secret="kv") == 1
        root.secrets.kv.v2.create_or_update_secret(path="compose/web", secret={"COLOR": "green"}, mount_point=kv2)
        changed = time.monotonic()
        wait_for(lambda: "green" in (workdir / "web.env").read_text(), 3, "the new version in the file")
        assert time.monotonic() - changed <= 2.5
        assert d.metric("vaultsync_secret_version", service="web", secret="kv") == 2
    finally:
        d.stop()


def test_one_failing_destination_blocks_no_other_and_keeps_its_old_file(kv2, root, vault_server, workdir):
    root.secrets.kv.v2.create_or_update_secret(path="compose/api", secret={"PEM": "line1\nline2", "A": "1"}, mount_point=kv2)
    (workdir / "api.docker").write_text("OLD=good\n")
    cfg = config(workdir, kv2, """
[services.api]
[[services.api.destinations]]
path = "api.docker"
style = "docker"
[[services.api.destinations]]
path = "api.env"
[[services.api.destinations]]
path = "api.sh"
style = "shell"
""")
    d = DaemonProc(cfg, daemon_env(vault_server, short_token(root), workdir), workdir).start(wait_ready=False)
    try:
        wait_for(lambda: (workdir / "api.sh").exists() and (workdir / "api.env").exists(), 10, "the good destinations")
        assert dotenv_values(workdir / "api.env") == {"PEM": "line1\nline2", "A": "1"}
        assert (workdir / "api.docker").read_text() == "OLD=good\n"
        assert d.metric("vaultsync_render_total", service="api", destination="api.docker", result="failure") >= 1
        assert d._get("/readyz").status_code == 503
        status = d.status()["services"]["api"]["destinations"]
        assert status[str(workdir / "api.docker")]["result"] == "failure"
        assert "line break" in status[str(workdir / "api.docker")]["error"] and "line1" not in status[str(workdir / "api.docker")]["error"]
    finally:
        d.stop()


def test_server_outage_files_untouched_failures_counted_requests_bounded_then_recovery(kv2, fresh_vault, postgres_server, workdir):
    root = fresh_vault.client(fresh_vault.token)
    root.sys.enable_secrets_engine("kv", path=kv2, options={"version": "2"})
    db = database_engine(root, postgres_server, default_ttl="6s", max_ttl="60s")
    root.secrets.kv.v2.create_or_update_secret(path="compose/api", secret={"APP": "x"}, mount_point=kv2)
    cfg = config(workdir, kv2, f'[services.api]\ndynamic = {{ db = "{db}/creds/api" }}\n[[services.api.destinations]]\npath = "api.env"\n', poll="1s")
    d = DaemonProc(cfg, daemon_env(fresh_vault, short_token(root), workdir), workdir).start()
    env_file = workdir / "api.env"
    try:
        before = env_file.read_bytes(), env_file.stat().st_mtime_ns
        assert d.metric("vaultsync_vault_up") == 1
        requests_before = d.metric("vaultsync_vault_requests_total", result="error") + d.metric("vaultsync_vault_requests_total", result="ok")
        os.kill(fresh_vault.pid, signal.SIGSTOP)  # the server stops answering (a hung or partitioned server)
        try:
            wait_for(lambda: d.metric("vaultsync_vault_up") == 0, 15, "vault_up 0")
            time.sleep(30)
            assert (env_file.read_bytes(), env_file.stat().st_mtime_ns) == before, "a file changed during the outage"
            assert d.metric("vaultsync_vault_up") == 0
            failures = d.metric("vaultsync_vault_requests_total", result="error")
            assert failures >= 3
            sent = failures + d.metric("vaultsync_vault_requests_total", result="ok") - requests_before
            # A hung server: each request waits out the 3 s client timeout, which alone keeps this
            # bound; test_refused_connections_... is the one that needs the backoff.
            assert sent <= 30, f"{sent} requests during a 30 s outage"
        finally:
            os.kill(fresh_vault.pid, signal.SIGCONT)
        wait_for(lambda: d.metric("vaultsync_vault_up") == 1, 30, "vault_up back to 1")
        # The lease expired during the outage: new credentials are issued and rendered.
        creds = wait_for(lambda: (v := dotenv_values(env_file))["DB_USERNAME"] != dotenv_values(stream=__import__("io").StringIO(before[0].decode()))["DB_USERNAME"] and v, 40, "re-rendered credentials")
        wait_for(lambda: can_login(postgres_server, creds["DB_USERNAME"], creds["DB_PASSWORD"]), 10, "new credentials log in")
        assert d._get("/readyz").status_code == 200
    finally:
        d.stop()


def test_refused_connections_are_retried_with_backoff_not_in_a_loop(kv2, root, vault_server, postgres_server, workdir):
    """A server that refuses connections at once: no client timeout throttles the retries
    (unlike a hung server), so only the daemon's backoff keeps the request count down."""
    db = database_engine(root, postgres_server, default_ttl="6s", max_ttl="60s")
    root.secrets.kv.v2.create_or_update_secret(path="compose/api", secret={"APP": "x"}, mount_point=kv2)
    cut = TcpCut(vault_server.addr)
    through_cut = dataclasses.replace(vault_server, addr=cut.addr)
    cfg = config(workdir, kv2, f'[services.api]\ndynamic = {{ db = "{db}/creds/api" }}\n[[services.api.destinations]]\npath = "api.env"\n', poll="1s")
    d = DaemonProc(cfg, daemon_env(through_cut, short_token(root), workdir), workdir).start()
    env_file = workdir / "api.env"

    def sent() -> float:
        return d.metric("vaultsync_vault_requests_total", result="error") + d.metric("vaultsync_vault_requests_total", result="ok")

    try:
        before = env_file.read_bytes(), env_file.stat().st_mtime_ns
        cut.cut()
        try:
            wait_for(lambda: d.metric("vaultsync_vault_up") == 0, 15, "vault_up 0")
            start = sent()
            time.sleep(20)  # the measurement window itself, not a wait for a condition
            during = sent() - start
            print(f"{during} requests in 20 s of refused connections")
            # Measured: 13 with backoff, 44 with a constant 1 s retry (kv poll every 1 s, a 6 s lease).
            assert 3 <= during <= 25, f"{during} requests in 20 s of refused connections"
            assert (env_file.read_bytes(), env_file.stat().st_mtime_ns) == before, "a file changed during the outage"
        finally:
            cut.restore()
        wait_for(lambda: d.metric("vaultsync_vault_up") == 1, 60, "vault_up back to 1")
        wait_for(lambda: d._get("/readyz").status_code == 200, 60, "ready again")
    finally:
        d.stop()
        cut.cut()


def test_sigkill_during_renders_never_leaves_a_torn_file(kv2, root, vault_server, workdir):
    size = 200_000
    payloads = [c * size for c in "ABCD"]
    root.secrets.kv.v2.create_or_update_secret(path="compose/big", secret={"BLOB": payloads[0]}, mount_point=kv2)
    cfg = config(workdir, kv2, '[services.big]\n[[services.big.destinations]]\npath = "big.env"\n', poll="1s")
    env = daemon_env(vault_server, short_token(root), workdir)
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            root.secrets.kv.v2.create_or_update_secret(path="compose/big", secret={"BLOB": payloads[i % 4]}, mount_point=kv2)
            time.sleep(0.02)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    rng = random.Random(7)
    renders = 0
    try:
        for round_ in range(6):
            d = DaemonProc(cfg, env, workdir, name=f"daemon{round_}").start()
            # the start-up render and a poll's (1 s apart at the least), then a kill somewhere in the next poll
            wait_for(lambda: d.count("rendered") >= 2, 30, "a poll's render after the start-up one")
            time.sleep(rng.uniform(0.0, 1.0))
            d.kill()
            renders += d.count("rendered")
            value = dotenv_values(workdir / "big.env")["BLOB"]
            assert value in payloads, f"torn file after SIGKILL in round {round_}: {len(value)} bytes"
    finally:
        stop.set()
        t.join()
    assert renders >= 12, "the kills did not land among renders"
    d = DaemonProc(cfg, env, workdir, name="final").start()
    d.stop()
    assert not [p for p in workdir.iterdir() if p.name.startswith(".big.env.")], "temp files left after restart"


def test_two_daemons_rotate_each_owned_secret_once_per_period(kv2, root, vault_server, workdir):
    root.secrets.kv.v2.create_or_update_secret(path="compose/api", secret={"STATIC": "s"}, mount_point=kv2)
    body = '[services.api]\n[[services.api.rotate]]\nkey = "SESSION_SECRET"\ngenerator = "hex"\nlength = 16\nevery = "4s"\n'
    cfg = config(workdir, kv2, body, extra='lock_ttl = "10s"')
    token = short_token(root)
    started = time.monotonic()  # before the first daemon: it rotates as it starts
    a = DaemonProc(cfg, daemon_env(vault_server, token, workdir), workdir, name="a").start()
    b = DaemonProc(cfg, daemon_env(vault_server, token, workdir), workdir, name="b").start()
    try:
        wait_for(lambda: a.count("rotated") + b.count("rotated") >= 3, 60, "three rotations (every = 4s)")
    finally:
        a.stop()
        b.stop()
    elapsed = time.monotonic() - started
    meta = root.secrets.kv.v2.read_secret_metadata(path="compose/api", mount_point=kv2)["data"]
    versions = sorted(meta["versions"].items(), key=lambda kv: int(kv[0]))
    created = [_ts(v["created_time"]) for _, v in versions[1:]]  # version 1 is the test's own write
    rotations = a.count("rotated") + b.count("rotated")
    assert rotations == len(created) and 3 <= rotations <= elapsed / 4 + 1, f"{rotations} rotations in {elapsed:.1f} s with every = 4 s"
    gaps = [b2 - b1 for b1, b2 in zip(created, created[1:])]
    assert all(g >= 3.9 for g in gaps), f"rotated twice within one period: gaps {gaps}"
    data = root.secrets.kv.v2.read_secret_version(path="compose/api", mount_point=kv2, raise_on_deleted_version=True)["data"]["data"]
    assert data["STATIC"] == "s" and len(data["SESSION_SECRET"]) == 32
    assert data["SESSION_SECRET"] not in a.log.read_text() + b.log.read_text()


def _ts(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")[:26] + "+00:00" if "." in iso else iso.replace("Z", "+00:00")).timestamp()


def test_sighup_reload_adds_and_removes_services_and_status_reports(kv2, root, vault_server, workdir):
    for n in ("one", "two"):
        root.secrets.kv.v2.create_or_update_secret(path=f"compose/{n}", secret={"N": n}, mount_point=kv2)
    svc = '[services.{n}]\n[[services.{n}.destinations]]\npath = "{n}.env"\n'
    cfg = config(workdir, kv2, svc.format(n="one"))
    d = DaemonProc(cfg, daemon_env(vault_server, short_token(root), workdir), workdir).start()
    try:
        assert not (workdir / "two.env").exists()
        cfg.write_text(cfg.read_text() + svc.format(n="two"))
        d.signal(signal.SIGHUP)
        wait_for(lambda: (workdir / "two.env").exists(), 10, "the added service's file")
        assert dotenv_values(workdir / "two.env") == {"N": "two"}
        cfg.write_text(cfg.read_text().replace(svc.format(n="one"), ""))
        d.signal(signal.SIGHUP)
        wait_for(lambda: set(d.status()["services"]) == {"two"}, 10, "service one removed")
        assert ("vaultsync_last_render_success_timestamp_seconds", (("destination", "one.env"), ("service", "one"))) not in d.metrics()
        cfg.write_text("this is = not toml [")
        d.signal(signal.SIGHUP)
        wait_for(lambda: d.count("reload failed, keeping the running config") == 1, 10, "a bad reload refused")
        st = d.status()
        assert st["ready"] and st["token"]["authenticated"] and 3000 < st["token"]["time_left"] <= 3600
    finally:
        assert d.stop() == 0


def test_sigterm_with_revoke_on_exit_revokes_leases_and_token(kv2, root, vault_server, postgres_server, workdir):
    db = database_engine(root, postgres_server, default_ttl="1m", max_ttl="5m")
    # No KV secret for this service, only a lease: optional = true says that is expected.
    cfg = config(workdir, kv2, f'[services.api]\noptional = true\ndynamic = {{ db = "{db}/creds/api" }}\n'
                 '[[services.api.destinations]]\npath = "api.env"\n', extra="revoke_on_exit = true")
    token = short_token(root)
    d = DaemonProc(cfg, daemon_env(vault_server, token, workdir), workdir).start()
    creds = dotenv_values(workdir / "api.env")
    assert role_exists(postgres_server, creds["DB_USERNAME"])
    assert d.stop() == 0
    assert not role_exists(postgres_server, creds["DB_USERNAME"])
    with pytest.raises(hvac.exceptions.Forbidden):
        vault_server.client(token).auth.token.lookup_self()


# The README's series (a contract with the alert rules and the dashboard), with the labels each carries.
CONTRACT = {
    "vaultsync_lease_expiry_timestamp_seconds": {"service", "secret"},
    "vaultsync_token_expiry_timestamp_seconds": set(),
    "vaultsync_lease_ttl_seconds": {"service", "secret"},
    "vaultsync_lease_renewal_due_timestamp_seconds": {"service", "secret"},
    "vaultsync_token_ttl_seconds": set(),
    "vaultsync_token_renewal_due_timestamp_seconds": set(),
    "vaultsync_renewals_total": {"kind", "result"},
    "vaultsync_logins_total": {"method", "result"},
    "vaultsync_render_total": {"service", "destination", "result"},
    "vaultsync_last_render_success_timestamp_seconds": {"service", "destination"},
    "vaultsync_rotations_total": {"service", "result"},
    "vaultsync_secret_version": {"service", "secret"},
    "vaultsync_vault_up": set(),
    "vaultsync_build_info": {"version"},
    "vaultsync_vault_requests_total": {"result"},
    "vaultsync_hooks_total": {"service", "destination", "result"},
    "vaultsync_job_lateness_seconds": {"kind"},
    "vaultsync_job_crashes_total": {"kind"},
}


def test_metrics_contract_is_exported_from_the_start(kv2, root, vault_server, postgres_server, workdir):
    db = database_engine(root, postgres_server, default_ttl="10m", max_ttl="1h")
    root.secrets.kv.v2.create_or_update_secret(path="compose/api", secret={"A": "1"}, mount_point=kv2)
    cfg = config(workdir, kv2, f'[services.api]\ndynamic = {{ db = "{db}/creds/api" }}\n[[services.api.destinations]]\npath = "api.env"\n'
                 f'command = {json.dumps(HOOK + [str(workdir / "hooks.log")])}\n')
    d = DaemonProc(cfg, daemon_env(vault_server, short_token(root), workdir), workdir).start()
    try:
        series = wait_for(lambda: (m := d.metrics()) and ("vaultsync_hooks_total", (("destination", "api.env"), ("result", "success"), ("service", "api"))) in m and m,
                          15, "the first hook counted")
        labels: dict[str, set[str]] = {}
        names = {name for name, _ in series}
        for name, pairs in series:
            if not name.startswith("vaultsync_") or name.endswith("_created"):  # client-side birth times
                continue
            family = re.sub(r"_(bucket|count|sum)$", "", name)  # a histogram's samples name its family
            family = family if family + "_bucket" in names else name
            labels.setdefault(family, set()).update(k for k, _ in pairs if k != "le")
        assert labels == CONTRACT, "the exported series differ from the contract"
        assert d.metric("vaultsync_lease_expiry_timestamp_seconds", service="api", secret="db") > time.time() + 500
        assert d.metric("vaultsync_vault_requests_total", result="ok") > 0
        assert d.metric("vaultsync_renewals_total", kind="lease", result="failure") == 0
        assert d.metric("vaultsync_logins_total", method="token", result="success") == 1
        assert abs(d.metric("vaultsync_token_expiry_timestamp_seconds") - (time.time() + 3600)) < 60
    finally:
        d.stop()


def test_render_command_one_shot(kv2, root, vault_server, cli, workdir):
    root.secrets.kv.v2.create_or_update_secret(path="compose/api", secret={"A": "1"}, mount_point=kv2)
    cfg = config(workdir, kv2, '[services.api]\n[[services.api.destinations]]\npath = "api.env"\n[[services.api.destinations]]\npath = "api.sh"\nstyle = "shell"\n')
    as_daemon = {"VAULT_TOKEN": short_token(root)}  # render runs with the daemon's policy, not root
    res = cli("--config", str(cfg), "render", "--output", "json", env=as_daemon)
    assert res.code == 0, res.output
    assert set(json.loads(res.stdout)["api"].values()) == {"success"}
    again = cli("--config", str(cfg), "render", "--output", "json", env=as_daemon)
    assert set(json.loads(again.stdout)["api"].values()) == {"unchanged"}
    assert (workdir / "api.sh").read_text() == "export A='1'\n"


def test_wait_window_coalesces_a_burst_into_one_render_and_one_signal(kv2, root, vault_server, workdir):
    root.secrets.kv.v2.create_or_update_secret(path="compose/api", secret={"N": "0"}, mount_point=kv2)
    counter = workdir / "hups"
    child = subprocess.Popen([sys.executable, "-c", (
        "import signal, sys, time\n"
        "n = 0\n"
        "def hup(*_):\n"
        "    global n; n += 1; open(sys.argv[1], 'w').write(str(n))\n"
        "signal.signal(signal.SIGHUP, hup)\n"
        "while True: time.sleep(0.1)\n"), str(counter)])
    (workdir / "api.pid").write_text(f"{child.pid}\n")
    cfg = config(workdir, kv2, '[services.api]\n[[services.api.destinations]]\npath = "api.env"\npidfile = "api.pid"\n'
                 'signal = "HUP"\nwait = { min = "1.5s", max = "4s" }\n', poll="1s")
    d = DaemonProc(cfg, daemon_env(vault_server, short_token(root), workdir), workdir).start()
    try:
        wait_for(lambda: counter.exists() and counter.read_text() == "1", 5, "the first render's signal")
        for n in range(1, 6):  # a burst of changes, each seen by a poll
            root.secrets.kv.v2.create_or_update_secret(path="compose/api", secret={"N": str(n)}, mount_point=kv2)
            time.sleep(0.3)
        wait_for(lambda: dotenv_values(workdir / "api.env")["N"] == "5", 10, "the last value rendered")
        # Polls after the render find nothing new (1 s apart): by then a second signal would have been sent.
        confirmed = d.metric("vaultsync_render_total", service="api", destination="api.env", result="unchanged")
        wait_for(lambda: d.metric("vaultsync_render_total", service="api", destination="api.env", result="unchanged") >= confirmed + 5,
                 15, "five polls after the burst's render")
        assert counter.read_text() == "2", "one signal for the whole burst"
        assert d.metric("vaultsync_render_total", service="api", destination="api.env", result="success") == 2
        assert d.metric("vaultsync_hooks_total", service="api", destination="api.env", result="success") == 2
    finally:
        d.stop()
        child.kill()
        child.wait()


def test_each_poll_confirms_files_and_restores_one_that_was_changed(kv2, root, vault_server, workdir):
    root.secrets.kv.v2.create_or_update_secret(path="compose/web", secret={"A": "1"}, mount_point=kv2)
    cfg = config(workdir, kv2, '[services.web]\n[[services.web.destinations]]\npath = "web.env"\n', poll="1s")
    d = DaemonProc(cfg, daemon_env(vault_server, short_token(root), workdir), workdir).start()
    try:
        first = d.metric("vaultsync_last_render_success_timestamp_seconds", service="web", destination="web.env")
        wait_for(lambda: d.metric("vaultsync_render_total", service="web", destination="web.env", result="unchanged") >= 2, 10, "unchanged renders")
        assert d.metric("vaultsync_last_render_success_timestamp_seconds", service="web", destination="web.env") > first
        assert d.metric("vaultsync_render_total", service="web", destination="web.env", result="success") == 1
        (workdir / "web.env").write_text("A='tampered'\n")
        wait_for(lambda: dotenv_values(workdir / "web.env") == {"A": "1"}, 5, "the file restored")
        (workdir / "web.env").unlink()
        wait_for(lambda: (workdir / "web.env").exists(), 5, "the file re-created")
    finally:
        d.stop()


def test_a_dynamic_secret_that_cannot_be_read_is_retried_with_growing_backoff(kv2, root, vault_server, workdir):
    root.secrets.kv.v2.create_or_update_secret(path="compose/api", secret={"A": "1"}, mount_point=kv2)
    (workdir / "api.env").write_text("A='previous'\n")
    cfg = config(workdir, kv2, '[services.api]\ndynamic = { db = "no-such-mount/creds/api" }\n'
                 '[[services.api.destinations]]\npath = "api.env"\n')
    d = DaemonProc(cfg, daemon_env(vault_server, short_token(root), workdir), workdir).start(wait_ready=False)
    try:
        failed = wait_for(lambda: (e := [x for x in d.events() if x.get("event") == "dynamic secret read failed"])[3:] and e, 40,
                          "four failed attempts")
        at = [_ts(e["timestamp"]) for e in failed[:4]]
        gaps = [t2 - t1 for t1, t2 in zip(at, at[1:])]
        # Equal jitter: attempt n waits in [2**n / 2, 2**n] s, so the third gap is at least twice the first.
        assert gaps[0] >= 0.4 and gaps[2] >= 2 * gaps[0] - 0.1, f"gaps {gaps}: no growing backoff"
        assert [e["retry_in"] for e in failed[:3]] == sorted(e["retry_in"] for e in failed[:3])
        assert d._get("/readyz").status_code == 503
        assert (workdir / "api.env").read_text() == "A='previous'\n", "a partial file replaced the previous one"
    finally:
        d.stop()


def test_status_command_reports_token_leases_and_destinations(kv2, root, vault_server, postgres_server, cli, workdir):
    db = database_engine(root, postgres_server, default_ttl="10m", max_ttl="1h")
    root.secrets.kv.v2.create_or_update_secret(path="compose/api", secret={"A": "1"}, mount_point=kv2)
    cfg = config(workdir, kv2, f'[services.api]\ndynamic = {{ db = "{db}/creds/api" }}\n[[services.api.destinations]]\npath = "api.env"\n')
    d = DaemonProc(cfg, daemon_env(vault_server, short_token(root), workdir), workdir).start()
    try:
        text = cli("status", "--metrics-addr", f"127.0.0.1:{d.port}")
        assert text.code == 0, text.output
        assert "ready: True" in text.stdout and "api: kv compose/api v1" in text.stdout
        # rendered at start ("success"), or already confirmed by a poll since ("unchanged")
        assert "lease db: " in text.stdout and re.search(rf"{re.escape(str(workdir / 'api.env'))}: (success|unchanged)\n", text.stdout)
        doc = json.loads(cli("status", "--metrics-addr", f"127.0.0.1:{d.port}", "--output", "json").stdout)
        assert 500 < doc["services"]["api"]["leases"]["db"]["time_left"] <= 600
        creds = dotenv_values(workdir / "api.env")
        assert creds["DB_PASSWORD"] not in text.stdout + json.dumps(doc)
    finally:
        d.stop()
    down = cli("status", "--metrics-addr", f"127.0.0.1:{d.port}")
    assert down.code == 1 and "no daemon answers" in down.stderr


def test_render_command_renders_the_other_services_when_one_fails(kv2, root, vault_server, cli, workdir):
    root.secrets.kv.v2.create_or_update_secret(path="compose/good", secret={"A": "1"}, mount_point=kv2)
    root.secrets.kv.v2.create_or_update_secret(path="compose/broken", secret={"B": "1"}, mount_point=kv2)
    cfg = config(workdir, kv2, '[services.broken]\ndynamic = { db = "no-such-mount/creds/x" }\n'
                 '[[services.broken.destinations]]\npath = "broken.env"\n'
                 '[services.good]\n[[services.good.destinations]]\npath = "good.env"\n')
    res = cli("--config", str(cfg), "render", "--allow-dynamic-leases", "--output", "json", env={"VAULT_TOKEN": short_token(root)})
    assert res.code == 1, res.output
    assert json.loads(res.stdout) == {"broken": {str(workdir / "broken.env"): "failure"}, "good": {str(workdir / "good.env"): "success"}}
    assert (workdir / "good.env").read_text() == HEADER + "A='1'\n" and not (workdir / "broken.env").exists()


def test_a_missing_kv_path_is_never_rendered_empty_keeps_the_file_and_is_not_ready(kv2, root, vault_server, workdir):
    (workdir / "ghost.env").write_text("A='previous'\n")
    cfg = config(workdir, kv2, '[services.ghost]\n[[services.ghost.destinations]]\npath = "ghost.env"\n', poll="1s")
    d = DaemonProc(cfg, daemon_env(vault_server, short_token(root), workdir), workdir).start(wait_ready=False)
    try:
        wait_for(lambda: d.metric("vaultsync_render_total", service="ghost", destination="ghost.env",
                                  result="source_missing") >= 2, 10, "the missing source looked for again")
        assert d._get("/readyz").status_code == 503
        assert (workdir / "ghost.env").read_text() == "A='previous'\n", "an empty render replaced the file"
        root.secrets.kv.v2.create_or_update_secret(path="compose/ghost", secret={"A": "now"}, mount_point=kv2)
        wait_for(lambda: d._get("/readyz").status_code == 200, 15, "ready once the secret exists")
        assert dotenv_values(workdir / "ghost.env") == {"A": "now"}
        root.secrets.kv.v2.delete_metadata_and_all_versions(path="compose/ghost", mount_point=kv2)
        wait_for(lambda: d._get("/readyz").status_code == 503, 10, "not ready once the secret is gone")
        assert dotenv_values(workdir / "ghost.env") == {"A": "now"}, "a deleted secret emptied the file"
    finally:
        d.stop()
