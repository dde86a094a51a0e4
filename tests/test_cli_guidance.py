"""Issue 13: errors that name the next step, `vaultsync doctor`, `vaultsync init` (package data), a
busy metrics port as one clean error, packaging without setuptools warnings."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import uuid
import zipfile

from tests.conftest import ROOT, run_cli
from vaultsync import config, starter


def test_credentials_for_the_daemon_without_an_auth_table_print_the_lines_to_add(root, cli, tmp_path):
    mount = "ar-" + uuid.uuid4().hex[:8]
    root.sys.enable_auth_method("approle", path=mount)
    try:
        cfg = tmp_path / "vaultsync.toml"
        cfg.write_text(f'[auth]\nmount = "{mount}"\n')
        res = cli("approle", "credentials", "vaultsync-daemon", "--out", str(tmp_path / "creds"), "--config", str(cfg))
        assert res.code == 2, res.output
        assert 'method = "approle"' in res.stderr and 'role_name = "vaultsync-daemon"' in res.stderr
        assert "then run `vaultsync policies apply` again" in res.stderr
        other = cli("approle", "credentials", "nosuch", "--out", str(tmp_path / "creds"), "--config", str(cfg))
        assert other.code == 2 and "no AppRole 'nosuch'" in other.stderr
    finally:
        root.sys.disable_auth_method(mount)


def test_a_second_daemon_on_a_busy_metrics_port_is_one_clean_error(cli, tmp_path):
    cfg = tmp_path / "vaultsync.toml"
    cfg.write_text(f'[services.api]\n[[services.api.destinations]]\npath = "{tmp_path}/api.env"\n')
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        addr = f"127.0.0.1:{busy.getsockname()[1]}"
        res = cli("daemon", "--config", str(cfg), "--metrics-addr", addr, "--log-format", "console")
    assert res.code == 1, res.output
    assert "Traceback" not in res.output and "OSError" not in res.output
    assert res.stderr.count(f"error: cannot listen on {addr}") == 1, res.stderr
    assert "--metrics-addr" in res.stderr


def test_init_writes_a_loadable_starter_and_the_shipped_policies(cli, tmp_path):
    res = cli("init", str(tmp_path / "stack"))
    assert res.code == 0, res.output
    folder = tmp_path / "stack"
    assert sorted(p.name for p in (folder / "policies").iterdir()) == sorted(p.name for p in (ROOT / "policies").glob("*.hcl"))
    settings = config.load(folder / "vaultsync.toml")
    assert settings.auth.method == "approle" and "api" in settings.services
    assert config.load(folder / "vaultsync.example.toml").services
    again = cli("init", str(folder))
    assert again.code == 2 and "--force" in again.stderr
    assert cli("init", str(folder), "--force").code == 0


def test_doctor_prints_a_checklist_and_names_the_next_step(fresh_vault, tmp_path):
    (tmp_path / "out").mkdir()
    cfg = tmp_path / "vaultsync.toml"
    cfg.write_text('[services.api]\n[[services.api.destinations]]\npath = "out/api.env"\n'
                   '[[services.api.destinations]]\npath = "missing/x.env"\n')
    env = fresh_vault.env(tmp_path, fresh_vault.token)
    res = run_cli("doctor", "--config", str(cfg), env=env, cwd=tmp_path)
    assert res.code == 1, res.output
    out = res.stdout
    for line in ("[ok]   address:", "[ok]   tls: https, verified", "[ok]   server: version", "[ok]   token: from environment",
                 "[ok]   kv mount: secret/ is KV v2", "[FAIL] policies: missing: vaultsync-daemon, vaultsync-svc-api",
                 "-> vaultsync policies apply", f"[ok]   destination {tmp_path / 'out' / 'api.env'}",
                 f"[FAIL] destination {tmp_path / 'missing' / 'x.env'}"):
        assert line in out, out
    assert fresh_vault.token not in res.output
    assert run_cli("policies", "apply", "--config", str(cfg), env=env, cwd=tmp_path).code == 0
    (tmp_path / "missing").mkdir()
    doc = json.loads(run_cli("doctor", "--config", str(cfg), "--format", "json", env=env, cwd=tmp_path).stdout)
    assert doc["ok"] is True, doc
    assert {c["name"]: c["status"] for c in doc["checks"]}["approles"] == "ok"


def test_doctor_without_a_server_fails_at_the_server_check(vault_server, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = vault_server.env(tmp_path, vault_server.token)
    res = run_cli("doctor", "-a", f"http://127.0.0.1:{port}", env=env, cwd=tmp_path)
    assert res.code == 1 and "[FAIL] server:" in res.stdout and "Traceback" not in res.output, res.output


def test_the_wheel_carries_the_policies_and_example_and_builds_without_warnings(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path), str(ROOT)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "deprecated" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    wheel = next(tmp_path.glob("vaultsync-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"vaultsync/data/vaultsync.example.toml", "vaultsync/data/policies/vaultsync-migrator.hcl"} <= names
    assert starter.shipped_policies().keys() == {p.name for p in (ROOT / "policies").glob("*.hcl")}
