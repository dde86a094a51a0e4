"""Outside tester's finding 18: after a hung server (SIGSTOP) answers again, one dynamic secret
was issued twice, 11 ms apart (two renders, two hook runs, an extra database user). The
re-issue job still waiting on the hung server and the recovery's own re-issue both got an
answer. The recovery must leave a secret whose job is in flight alone."""

from __future__ import annotations

import threading
from pathlib import Path

from tests.daemon_harness import wait_for
from vaultsync import config as cfgmod
from vaultsync.daemon import Daemon


def test_recovery_does_not_issue_a_secret_again_while_its_reissue_is_in_flight(fresh_vault, tmp_path: Path):
    server = fresh_vault
    root = server.client(server.token)
    root.sys.enable_secrets_engine("kv", path="app", options={"version": "2"})
    root.sys.enable_secrets_engine("kv", path="dyn", options={"version": "1"})
    root.secrets.kv.v2.create_or_update_secret(path="compose/api", secret={"A": "1"}, mount_point="app")
    # A KV v1 secret read as a dynamic secret: a real read, credentials in "data", no lease to expire.
    root.secrets.kv.v1.create_or_update_secret(path="creds", secret={"username": "u1"}, mount_point="dyn")
    path = tmp_path / "vaultsync.toml"
    path.write_text('[vault]\ntimeout = "4s"\n[kv]\nmount = "app"\n[daemon]\nmetrics_addr = ""\npoll_interval = "1h"\n'
                    '[services.api]\ndynamic = { db = "dyn/creds" }\n[[services.api.destinations]]\npath = "api.env"\n')
    settings = cfgmod.load(path, env=server.env(tmp_path, server.token))
    d = Daemon(settings, config_path=str(path), serve_http=False)
    issued: list[bool] = []
    reads = threading.Semaphore(0)
    pending: list[str] = []
    issue, get = d._issue, d.client.adapter.get

    def counting_issue(*args, **kwargs):  # counts what the daemon logs as "dynamic secret issued"
        ok = issue(*args, **kwargs)
        if ok:
            issued.append(ok)
        return ok

    def noting_get(url, *args, **kwargs):  # the real request to the real server, noted as sent
        if "/v1/dyn/" not in url:
            return get(url, *args, **kwargs)
        pending.append(url)
        reads.release()
        try:
            return get(url, *args, **kwargs)
        finally:
            pending.remove(url)

    d._issue, d.client.adapter.get = counting_issue, noting_get
    assert d._connect()  # log in, find the KV version
    d._add_service(settings.services["api"])  # scheduler not started yet: start-up issue, render
    assert reads.acquire(timeout=10) and len(issued) == 1
    paused = True
    server.node.pause()
    try:
        assert not d._issue("api", "db")  # times out on the hung server: a retry is scheduled (backed off)
        assert reads.acquire(timeout=10)
        d.scheduler.start()
        assert reads.acquire(timeout=15), "the retry job's read, now waiting on the hung server"
        d._kick_all()  # what the recovery does when a response arrives: the retry is still in flight
        reads.acquire(timeout=0.5)  # (old code: the recovery's own re-issue sends its read too)
        server.node.resume()
        paused = False
        wait_for(lambda: len(issued) >= 2, 15, "the retried read answered")
        wait_for(lambda: not pending, 15, "every read answered")
        assert len(issued) == 2, f"the secret was issued {len(issued) - 1} times after the outage, not once"
    finally:
        if paused:
            server.node.resume()
        d.scheduler.shutdown(wait=False) if d.scheduler.running else None
