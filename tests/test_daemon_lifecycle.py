"""The daemon's token lifecycle as it runs in production: its own AppRole with the shipped
policy, a wrapped secret_id, a short token TTL and max TTL, a database lease and a rotated key.

Token renewals and re-logins are what keeps every lease alive: a lease dies with the token
that created it, so after each re-login every lease must be issued again under the new token.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from dotenv import dotenv_values

from tests.conftest import ROOT, run_cli
from tests.daemon_harness import DaemonProc, daemon_env, wait_for
from tests.test_daemon import can_login, database_engine, role_exists

TOKEN_TTL, TOKEN_MAX_TTL = 6, 21


def _ts(event: dict) -> float:
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def dynamic_users(pg) -> set[str]:
    with pg.connect() as conn:
        return {r[0] for r in conn.execute("select rolname from pg_roles where rolname like 'v-%'").fetchall()}


def _events(d: DaemonProc, name: str) -> list[dict]:
    return [e for e in d.events() if e.get("event") == name]


@pytest.fixture
def approle_daemon(fresh_vault, postgres_server, tmp_path: Path):
    """A server of the test's own (the shipped policy names the `secret` and `database` mounts)."""
    root = fresh_vault.client(fresh_vault.token)
    if "secret/" not in root.sys.list_mounted_secrets_engines()["data"]:
        root.sys.enable_secrets_engine("kv", path="secret", options={"version": "2"})
    database_engine(root, postgres_server, default_ttl="8s", max_ttl="2m", mount="database")
    root.secrets.kv.v2.create_or_update_secret(path="compose/api", secret={"APP": "x"}, mount_point="secret")
    work = tmp_path / "work"
    work.mkdir()
    cfg = work / "vaultsync.toml"
    cfg.write_text(
        '[vault]\ntimeout = "3s"\n[kv]\nmount = "secret"\nprefix = "compose"\n'
        '[auth]\nmethod = "approle"\nmount = "approle"\nrole_name = "vaultsync-daemon"\n'
        f'role_id_file = "{work}/creds/role_id"\nsecret_id_file = "{work}/creds/secret_id"\nsecret_id_wrapped = true\n'
        '[daemon]\npoll_interval = "2s"\nlease_revoke_grace = "1s"\nlock_ttl = "10s"\n'
        '[services.api]\ndynamic = { db = "database/creds/api" }\n'
        f'[[services.api.destinations]]\npath = "{work}/api.env"\n'
        '[[services.api.rotate]]\nkey = "SESSION_SECRET"\ngenerator = "hex"\nlength = 16\nevery = "5s"\n'
    )
    admin = fresh_vault.env(tmp_path, fresh_vault.token)
    res = run_cli("--config", str(cfg), "policies", "apply", str(ROOT / "policies"), env=admin)
    assert res.code == 0, res.output
    # Short-lived tokens, so that renewals and re-logins happen within the test.
    root.adapter.post("/v1/auth/approle/role/vaultsync-daemon", json={"token_ttl": TOKEN_TTL, "token_max_ttl": TOKEN_MAX_TTL})
    res = run_cli("--config", str(cfg), "approle", "credentials", "vaultsync-daemon", "--out", str(work / "creds"), "--wrap-ttl", "60s", env=admin)
    assert res.code == 0 and "wrapped" in res.stdout, res.output
    wrapping_token = (work / "creds" / "secret_id").read_text().strip()
    d = DaemonProc(cfg, daemon_env(fresh_vault, None, work), work)
    yield d, root, work, wrapping_token
    d.stop()


def test_approle_daemon_renews_logs_in_again_reissues_every_lease_and_keeps_rotating(approle_daemon, postgres_server):
    d, root, work, wrapping_token = approle_daemon
    others = dynamic_users(postgres_server)  # the session's database is shared with other tests
    d.start(timeout=60)
    first = dotenv_values(work / "api.env")
    assert first["APP"] == "x" and first["DB_USERNAME"]
    # The wrapped secret_id was unwrapped by the daemon (a second unwrap is impossible).
    with pytest.raises(Exception):
        root.adapter.post("/v1/sys/wrapping/lookup", json={"token": wrapping_token})
    logins = _events(d, "logged in")
    assert logins[0]["policies"] == ["vaultsync-daemon"] and logins[0]["ttl"] == TOKEN_TTL  # no "default": token_no_default_policy

    # Two re-logins: each before the previous token's max TTL.
    wait_for(lambda: len(_events(d, "logged in")) >= 3, 2 * TOKEN_MAX_TTL + 30, f"two re-logins (log: {d.tail()})")
    wait_for(lambda: len(_events(d, "dynamic secret issued")) >= 3, 20, "a lease issued under each token")
    seen_rotations = len(_events(d, "rotated"))
    wait_for(lambda: len(_events(d, "rotated")) > seen_rotations, 20, "a rotation after the re-logins")

    # Of all the database users issued so far, only the one in the file is left (the others were
    # revoked after the grace period, or died with their token). Other tests' users are not ours.
    def only_current_user_left() -> bool:
        return dynamic_users(postgres_server) - others == {dotenv_values(work / "api.env")["DB_USERNAME"]}

    wait_for(only_current_user_left, 15, "every superseded database user dropped")
    current = dotenv_values(work / "api.env")
    # The current user belongs to a live lease of a live token.
    assert can_login(postgres_server, current["DB_USERNAME"], current["DB_PASSWORD"])
    events = d.events()
    d.stop()

    logins = [e for e in events if e.get("event") == "logged in"]
    login_at = [_ts(e) for e in logins]
    for previous, nxt in zip(login_at, login_at[1:]):
        # Strictly before the max TTL; today the margin is only 0.5-1.5 s with a 6 s TTL (see the report
        # of issue 17: a 1 s renewal shortfall is not seen as "capped", and the token gets no lead).
        assert nxt - previous < TOKEN_MAX_TTL, f"re-login {nxt - previous:.1f} s after the previous login (max TTL {TOKEN_MAX_TTL} s)"
        assert nxt - previous > TOKEN_MAX_TTL / 2, "re-logged in long before the max TTL"
    relogins = [e for e in events if e.get("event") == "logging in again"]
    assert relogins and all(e["reason"] in ("max TTL reached", "a lease is due and the token would not outlive it") for e in relogins), relogins

    # Renewals near 2/3 of the TTL the server granted (grace jitter: 10-20 % of it).
    timeline = [(e["event"], _ts(e), e) for e in events if e.get("event") in ("logged in", "token renewed")]
    checked = 0
    for (_ev1, t1, e1), (ev2, t2, _e2) in zip(timeline, timeline[1:]):
        ttl = float(e1["ttl"])
        if ev2 == "token renewed" and ttl >= TOKEN_TTL - 1:
            assert 0.5 * ttl <= t2 - t1 <= 0.85 * ttl + 0.5, f"renewed {t2 - t1:.2f} s into a {ttl} s token"
            checked += 1
    assert checked >= 2, f"no full-TTL renewals to check: {timeline}"
    assert not [e for e in events if e.get("event") in ("token renewal failed", "login failed", "lease renewal failed",
                                                          "lease cannot be renewed, re-issuing", "lease expired during failures, re-issuing")]

    # Every lease issued again under each new token; the old database users are dropped.
    issued = [e for e in events if e.get("event") == "dynamic secret issued"]
    for previous, login in zip(login_at, login_at[1:]):
        # At once, and before the old token (and every lease it created) reaches its max TTL.
        assert any(0 <= _ts(e) - login < 2 and _ts(e) < previous + TOKEN_MAX_TTL for e in issued), \
            f"no lease issued right after the login at {login:.1f} (previous {previous:.1f})"
    assert current["DB_USERNAME"] != first["DB_USERNAME"] and not role_exists(postgres_server, first["DB_USERNAME"])

    # Rotation went on across the re-logins, with the daemon policy's check-and-set writes.
    rotated = [_ts(e) for e in events if e.get("event") == "rotated"]
    assert any(t > login_at[-1] for t in rotated) and any(t < login_at[1] for t in rotated), rotated
    meta = root.secrets.kv.v2.read_secret_metadata(path="compose/api", mount_point="secret")["data"]
    assert meta["current_version"] >= 3
    logs = d.log.read_text()
    assert first["DB_PASSWORD"] not in logs and current["DB_PASSWORD"] not in logs
