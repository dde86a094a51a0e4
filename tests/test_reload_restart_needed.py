"""Outside tester's finding 8: a SIGHUP that changes [daemon] settings used only at start
(metrics_addr, status_token_file) says "restart needed" instead of a silent "config reloaded"."""

from __future__ import annotations

import signal

from tests.daemon_harness import DaemonProc, daemon_env, wait_for
from tests.test_daemon import config, short_token


def test_sighup_changing_the_status_token_file_warns_restart_needed(kv2, root, vault_server, tmp_path):
    root.secrets.kv.v2.create_or_update_secret(path="compose/web", secret={"A": "1"}, mount_point=kv2)
    body = '[services.web]\n[[services.web.destinations]]\npath = "web.env"\n'
    cfg = config(tmp_path, kv2, body)
    d = DaemonProc(cfg, daemon_env(vault_server, short_token(root), tmp_path), tmp_path).start()
    try:
        (tmp_path / "status.token").write_text("a-status-token-0123456789\n")
        (tmp_path / "status.token").chmod(0o600)
        config(tmp_path, kv2, body, extra='status_token_file = "status.token"\n')
        d.signal(signal.SIGHUP)
        wait_for(lambda: d.count("config reloaded") == 1, 10, "the reload")
        warnings = [e for e in d.events() if "restart needed" in e.get("event", "")]
        assert warnings and warnings[0]["settings"] == ["daemon.status_token_file"] and warnings[0]["level"] == "warning"
        assert d._get("/status").status_code == 200, "the running daemon keeps its start-up /status settings"
    finally:
        assert d.stop() == 0
