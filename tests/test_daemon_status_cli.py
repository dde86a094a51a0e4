"""Issue 13 (daemon side): `status` shows the last error and exits 1 when not ready; no "kv secret
changed" after an outage when the version did not change; the `destination` label is the path as
configured (or the destination's `name`), so a/app.env and b/app.env are two series."""

from __future__ import annotations

import dataclasses
import uuid

from tests.daemon_harness import DaemonProc, TcpCut, daemon_env, wait_for
from tests.test_daemon import config, short_token, workdir  # noqa: F401 - workdir is a fixture
from vaultsync import config as vconfig


def test_status_of_a_daemon_that_cannot_log_in_shows_the_error_and_exits_1(kv2, root, vault_server, cli, workdir):
    root.secrets.kv.v2.create_or_update_secret(path="compose/api", secret={"A": "1"}, mount_point=kv2)
    cfg = config(workdir, kv2, '[services.api]\n[[services.api.destinations]]\npath = "api.env"\n')
    bogus = "dev-" + uuid.uuid4().hex
    d = DaemonProc(cfg, daemon_env(vault_server, bogus, workdir), workdir).start(wait_ready=False)
    try:
        wait_for(lambda: d._get("/status").status_code == 200 and d._get("/status").json()["token"]["error"], 30,
                 "the failed login in /status")
        res = cli("status", "--metrics-addr", f"127.0.0.1:{d.port}")
        assert res.code == 1, res.output
        assert "NOT authenticated, no usable token" in res.stdout and "never expires" not in res.stdout
        assert "last error: " in res.stdout and "invalid" in res.stdout.lower(), res.stdout
        assert bogus not in res.output
        assert cli("status", "--metrics-addr", f"127.0.0.1:{d.port}", "--format", "json").code == 1
    finally:
        d.stop()


def test_no_kv_secret_changed_log_after_an_outage_when_nothing_changed(kv2, root, vault_server, workdir):
    root.secrets.kv.v2.create_or_update_secret(path="compose/api", secret={"A": "1"}, mount_point=kv2)
    cut = TcpCut(vault_server.addr)
    through_cut = dataclasses.replace(vault_server, addr=cut.addr)
    cfg = config(workdir, kv2, '[services.api]\n[[services.api.destinations]]\npath = "api.env"\n', poll="1s")
    d = DaemonProc(cfg, daemon_env(through_cut, short_token(root), workdir), workdir).start()
    try:
        cut.cut()
        wait_for(lambda: any(e.get("event") == "kv read failed" for e in d.events()), 20, "a failed poll")
        cut.restore()
        wait_for(lambda: d.metric("vaultsync_vault_up") == 1 and any(
            e.get("event") == "kv read failed" for e in d.events()) and d._get("/readyz").status_code == 200, 30, "recovered")
        recovered_at = len(d.events())
        root.secrets.kv.v2.create_or_update_secret(path="compose/api", secret={"A": "2"}, mount_point=kv2)
        wait_for(lambda: any(e.get("event") == "kv secret changed" for e in d.events()[recovered_at:]), 20, "a real change")
        changed = [e for e in d.events() if e.get("event") == "kv secret changed"]
        assert [e["version"] for e in changed] == [2], changed  # nothing for the unchanged v1 after the outage
    finally:
        d.stop()


def test_destination_label_is_the_configured_path_or_its_name(kv2, root, vault_server, workdir):
    root.secrets.kv.v2.create_or_update_secret(path="compose/api", secret={"A": "1"}, mount_point=kv2)
    (workdir / "a").mkdir()
    (workdir / "b").mkdir()
    body = ('[services.api]\n[[services.api.destinations]]\npath = "a/app.env"\n'
            '[[services.api.destinations]]\npath = "b/app.env"\nname = "b-copy"\n')
    cfg = config(workdir, kv2, body)
    d = DaemonProc(cfg, daemon_env(vault_server, short_token(root), workdir), workdir).start()
    try:
        assert d.metric("vaultsync_render_total", service="api", destination="a/app.env", result="success") == 1
        assert d.metric("vaultsync_render_total", service="api", destination="b-copy", result="success") == 1
    finally:
        d.stop()


def test_destination_name_must_be_a_string(tmp_path):
    cfg = tmp_path / "vaultsync.toml"
    cfg.write_text('[services.api]\n[[services.api.destinations]]\npath = "x.env"\nname = ""\n')
    try:
        vconfig.load(cfg)
    except vconfig.ConfigError as exc:
        assert "name must be a non-empty string" in str(exc)
    else:
        raise AssertionError("an empty name was accepted")
    cfg.write_text('[services.api]\n[[services.api.destinations]]\npath = "sub/x.env"\n')
    assert vconfig.load(cfg).services["api"].destinations[0].name == "sub/x.env"
