"""Connecting to a production-like server: every TLS and token option, and every failure message.

The session server speaks TLS only (certificate from the session's private CA) and has a second
listener that requires a client certificate. Each test runs the real CLI as a user would.
"""

from __future__ import annotations

import http.server
import json
import shutil
import threading
import time
from pathlib import Path

import pytest

from tests import vault_cluster
from tests.conftest import Result, run_cli
from tests.fixtures_servers import free_port

pytestmark = pytest.mark.vault


@pytest.fixture
def env_file(tmp_path: Path) -> Path:
    folder = tmp_path / "api"
    folder.mkdir()
    path = folder / ".env"
    path.write_text("A=1\n")
    return path


@pytest.fixture
def base_env(vault_server, tmp_path) -> dict[str, str]:
    """The session server's address and root token, but no CA: each test says how the CA is found."""
    env = vault_server.env(tmp_path, vault_server.token)
    env.pop("VAULT_CACERT", None)
    return env


def dry_run(env: dict[str, str], mount: str, env_file: Path, *flags: str, cwd: Path | None = None) -> Result:
    return run_cli(*flags, "migrate", "--mount", mount, "--dry-run", str(env_file), env=env, cwd=cwd)


def ok(res: Result) -> None:
    assert res.code == 0, res.output
    assert "A" in res.stdout


# --- CA: file and folder, from flag, environment and config file -------------------------------------


def test_without_the_ca_the_error_says_the_ca_is_unknown(base_env, kv2, env_file):
    res = dry_run(base_env, kv2, env_file)
    assert res.code == 1, res.output
    assert "is signed by a CA this client does not trust" in res.stderr
    assert base_env["VAULT_ADDR"] in res.stderr  # names the server


def test_ca_file_from_env_flag_bao_alias_and_config(vault_server, base_env, kv2, env_file, tmp_path):
    ok(dry_run({**base_env, "VAULT_CACERT": vault_server.cacert}, kv2, env_file))
    ok(dry_run({**base_env, "BAO_CACERT": vault_server.cacert}, kv2, env_file))
    ok(dry_run(base_env, kv2, env_file, "--cacert", vault_server.cacert))
    shutil.copy(vault_server.cacert, tmp_path / "my-ca.pem")
    cfg = tmp_path / "vaultsync.toml"
    cfg.write_text('[vault]\ncacert = "my-ca.pem"\n')  # relative to the config file
    ok(dry_run(base_env, kv2, env_file, "--config", str(cfg)))


def test_ca_folder_from_env_flag_and_config(vault_server, base_env, kv2, env_file, tmp_path):
    folder = tmp_path / "cas"
    folder.mkdir()
    shutil.copy(vault_server.cacert, folder / "any-name.crt")  # no OpenSSL hash links, as the Vault CLI allows
    (folder / "README").write_text("not a certificate\n")
    ok(dry_run({**base_env, "VAULT_CAPATH": str(folder)}, kv2, env_file))
    ok(dry_run(base_env, kv2, env_file, "--capath", str(folder)))
    cfg = tmp_path / "vaultsync.toml"
    cfg.write_text('[vault]\ncapath = "cas"\n')
    ok(dry_run(base_env, kv2, env_file, "--config", str(cfg)))


def test_a_ca_folder_alone_does_not_trust_the_system_roots_or_another_ca(base_env, kv2, env_file, tmp_path):
    other = vault_cluster.make_ca(tmp_path / "other")
    res = dry_run({**base_env, "VAULT_CAPATH": str(other.folder)}, kv2, env_file)
    assert res.code == 1 and "signed by a CA this client does not trust" in res.stderr, res.output


def test_wrong_ca_file_is_an_unknown_ca(base_env, kv2, env_file, tmp_path):
    other = vault_cluster.make_ca(tmp_path / "other")
    res = dry_run({**base_env, "VAULT_CACERT": other.cert_file}, kv2, env_file)
    assert res.code == 1 and "signed by a CA this client does not trust" in res.stderr, res.output


@pytest.mark.parametrize("make,expect", [
    (lambda d: str(d / "missing.pem"), "cannot read the CA certificate file (cacert): No such file or directory"),
    (lambda d: str(d), "the CA certificate file (cacert) is a folder"),
    (lambda d: (d / "junk.pem").write_text("junk\n") and str(d / "junk.pem"), "holds no valid PEM certificate"),
], ids=["missing", "folder", "not-pem"])
def test_a_bad_ca_file_is_its_own_error_naming_the_file(base_env, kv2, env_file, tmp_path, make, expect):
    path = make(tmp_path)
    res = dry_run({**base_env, "VAULT_CACERT": path}, kv2, env_file)
    assert res.code == 2, res.output
    assert f"error: {path}: " in res.stderr and expect in res.stderr
    assert "TLS" not in res.stderr


def test_missing_ca_folder_names_the_folder(base_env, kv2, env_file, tmp_path):
    res = dry_run({**base_env, "VAULT_CAPATH": str(tmp_path / "nope")}, kv2, env_file)
    assert res.code == 2 and f"{tmp_path / 'nope'}: the CA folder" in res.stderr, res.output


# --- skip-verify ------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["env", "flag", "config"])
def test_skip_verify_connects_and_warns_on_stderr_and_in_the_log(base_env, kv2, env_file, tmp_path, how):
    env, flags = dict(base_env), []
    if how == "env":
        env["VAULT_SKIP_VERIFY"] = "true"
    elif how == "flag":
        flags = ["--tls-skip-verify"]
    else:
        cfg = tmp_path / "vaultsync.toml"
        cfg.write_text("[vault]\ntls_verify = false\n")
        flags = ["--config", str(cfg)]
    res = dry_run(env, kv2, env_file, *flags)
    ok(res)
    assert res.stderr.count("warning: TLS verification is OFF") == 1
    events = [json.loads(line) for line in res.stderr.splitlines() if line.startswith("{")]
    assert [e for e in events if e["event"] == "tls verification disabled" and e["level"] == "warning"]
    assert "InsecureRequestWarning" not in res.stderr


def test_skip_verify_must_be_a_boolean(base_env, kv2, env_file):
    res = dry_run({**base_env, "VAULT_SKIP_VERIFY": "maybe"}, kv2, env_file)
    assert res.code == 2 and "VAULT_SKIP_VERIFY must be true or false" in res.stderr, res.output


# --- server name ------------------------------------------------------------------------------------


def test_tls_server_name_is_checked_against_the_certificate(vault_server, base_env, kv2, env_file):
    env = {**base_env, "VAULT_CACERT": vault_server.cacert}
    ok(dry_run({**env, "VAULT_TLS_SERVER_NAME": "vault.test"}, kv2, env_file))
    ok(dry_run(env, kv2, env_file, "--tls-server-name", "vault.test"))
    res = dry_run({**env, "VAULT_TLS_SERVER_NAME": "other.example"}, kv2, env_file)
    assert res.code == 1, res.output
    assert "is not valid for the name asked for" in res.stderr and "VAULT_TLS_SERVER_NAME" in res.stderr


# --- mTLS ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client_cert(vault_server) -> vault_cluster.CertFiles:
    assert vault_server.ca is not None, "mTLS tests need the session's server-mode server"
    return vault_server.ca.issue("vaultsync-client", client=True)


def test_mtls_listener_refuses_a_client_without_certificate(vault_server, base_env, kv2, env_file):
    env = {**base_env, "VAULT_ADDR": vault_server.mtls_addr, "VAULT_CACERT": vault_server.cacert}
    res = dry_run(env, kv2, env_file)
    assert res.code == 1, res.output
    assert "refused the client certificate or asked for one" in res.stderr and "VAULT_CLIENT_CERT" in res.stderr


def test_mtls_with_client_certificate_from_env_flag_and_config(vault_server, base_env, kv2, env_file, client_cert, tmp_path):
    env = {**base_env, "VAULT_ADDR": vault_server.mtls_addr, "VAULT_CACERT": vault_server.cacert}
    ok(dry_run({**env, "VAULT_CLIENT_CERT": client_cert.cert, "VAULT_CLIENT_KEY": client_cert.key}, kv2, env_file))
    ok(dry_run({**env, "BAO_CLIENT_CERT": client_cert.cert, "BAO_CLIENT_KEY": client_cert.key}, kv2, env_file))
    ok(dry_run(env, kv2, env_file, "--client-cert", client_cert.cert, "--client-key", client_cert.key))
    cfg = tmp_path / "vaultsync.toml"
    cfg.write_text(f'[vault]\nclient_cert = "{client_cert.cert}"\nclient_key = "{client_cert.key}"\n')
    ok(dry_run(env, kv2, env_file, "--config", str(cfg)))


def test_mtls_certificate_from_another_ca_is_refused(vault_server, base_env, kv2, env_file, tmp_path):
    stranger = vault_cluster.make_ca(tmp_path / "stranger").issue("stranger", client=True)
    env = {**base_env, "VAULT_ADDR": vault_server.mtls_addr, "VAULT_CACERT": vault_server.cacert,
           "VAULT_CLIENT_CERT": stranger.cert, "VAULT_CLIENT_KEY": stranger.key}
    res = dry_run(env, kv2, env_file)
    assert res.code == 1 and "refused the client certificate" in res.stderr, res.output


def test_client_cert_without_key_and_missing_key_file(vault_server, base_env, kv2, env_file, client_cert, tmp_path):
    env = {**base_env, "VAULT_CACERT": vault_server.cacert}
    res = dry_run({**env, "VAULT_CLIENT_CERT": client_cert.cert}, kv2, env_file)
    assert res.code == 2 and "needs both client_cert and client_key" in res.stderr, res.output
    missing = str(tmp_path / "gone-key.pem")
    res = dry_run({**env, "VAULT_CLIENT_CERT": client_cert.cert, "VAULT_CLIENT_KEY": missing}, kv2, env_file)
    assert res.code == 2 and f"{missing}: cannot read the client key" in res.stderr, res.output


# --- addresses and transports ------------------------------------------------------------------------


def test_plain_http_to_the_tls_port_says_use_https(vault_server, base_env, kv2, env_file):
    env = {**base_env, "VAULT_ADDR": vault_server.addr.replace("https://", "http://")}
    res = dry_run(env, kv2, env_file)
    assert res.code == 1, res.output
    assert "speaks HTTPS, not plain HTTP: use https://" in res.stderr
    assert "InvalidRequest" not in res.output


def test_https_to_a_plain_http_server_says_it_is_not_tls(base_env, kv2, env_file):
    httpd = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        env = {**base_env, "VAULT_ADDR": f"https://127.0.0.1:{httpd.server_address[1]}"}
        res = dry_run(env, kv2, env_file)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert res.code == 1, res.output
    assert "does not speak TLS" in res.stderr


def test_address_without_scheme_is_a_config_error(vault_server, base_env, kv2, env_file):
    bare = vault_server.addr.removeprefix("https://")
    res = dry_run({**base_env, "VAULT_ADDR": bare}, kv2, env_file)
    assert res.code == 2, res.output
    assert f"must start with https:// or http:// (write it as https://{bare})" in res.stderr
    assert "InvalidSchema" not in res.output


def test_server_down_names_the_address_and_the_os_error(vault_server, base_env, kv2, env_file):
    addr = f"https://127.0.0.1:{free_port()}"
    res = dry_run({**base_env, "VAULT_ADDR": addr, "VAULT_CACERT": vault_server.cacert}, kv2, env_file)
    assert res.code == 1, res.output
    assert f"cannot reach the server at {addr}: Connection refused" in res.stderr


def test_sealed_server_says_sealed_and_names_it(fresh_vault, tmp_path, env_file):
    fresh_vault.node.seal()
    try:
        res = dry_run(fresh_vault.env(tmp_path, fresh_vault.token), "secret", env_file)
    finally:
        fresh_vault.node.unseal()
    assert res.code == 1, res.output
    assert f"server sealed or in standby: {fresh_vault.addr} has no active node" in res.stderr


# --- tokens ---------------------------------------------------------------------------------------------


def test_bad_token_is_exit_1_and_says_so(vault_server, vault_env, kv2, env_file):
    res = dry_run({**vault_env, "VAULT_TOKEN": "hvs.not-a-real-token-at-all-0000"}, kv2, env_file)
    assert res.code == 1, res.output
    assert "token was refused" in res.stderr and "invalid, expired or revoked" in res.stderr
    assert "--kv-version" not in res.stderr


def test_expired_token_is_exit_1_and_says_so(root, vault_env, kv2, env_file):
    token = root.auth.token.create(ttl="1s", explicit_max_ttl="1s", policies=["default"])["auth"]["client_token"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            root.auth.token.lookup(token)
        except Exception:  # noqa: BLE001 - gone: expired
            break
        time.sleep(0.2)
    res = dry_run({**vault_env, "VAULT_TOKEN": token}, kv2, env_file)
    assert res.code == 1 and "invalid, expired or revoked" in res.stderr, res.output
    assert token not in res.output


def test_missing_permission_names_the_path_and_capability(root, vault_env, kv2, env_file):
    root.sys.create_or_update_acl_policy(f"ro-{kv2}", f'path "{kv2}/data/*" {{ capabilities = ["read"] }}')
    token = root.auth.token.create(policies=[f"ro-{kv2}"], ttl="10m")["auth"]["client_token"]
    res = run_cli("migrate", "--mount", kv2, "--kv-version", "2", str(env_file), env={**vault_env, "VAULT_TOKEN": token})
    assert res.code == 1, res.output
    assert (f"permission denied: write {kv2}/compose/api (the token's policies do not grant 'create' and 'update' "
            f"on {kv2}/data/compose/api)") in res.stderr


def test_no_kv_version_access_is_still_a_kv_version_hint_not_a_token_error(root, vault_env, kv2, env_file):
    token = root.auth.token.create(policies=["default"], ttl="10m")["auth"]["client_token"]
    res = dry_run({**vault_env, "VAULT_TOKEN": token}, kv2, env_file)
    assert res.code == 2 and "pass --kv-version" in res.stderr and "invalid" not in res.stderr, res.output


def debug_events(res: Result) -> list[dict]:
    return [json.loads(line) for line in res.stderr.splitlines() if line.startswith("{")]


def test_token_sources_in_the_vault_cli_order_each_logged_and_redacted(vault_server, vault_env, kv2, env_file, tmp_path):
    root_token = vault_server.token
    home = Path(vault_env["HOME"])
    no_token = {k: v for k, v in vault_env.items() if k != "VAULT_TOKEN"}
    # nothing anywhere: a clear error
    res = dry_run(no_token, kv2, env_file)
    assert res.code == 2 and "no token" in res.stderr and "~/.vault-token" in res.stderr, res.output
    # ~/.vault-token (what `vault login` writes)
    (home / ".vault-token").write_text(root_token + "\n")
    res = dry_run(no_token, kv2, env_file, "--log-level", "debug")
    ok(res)
    assert [e["source"] for e in debug_events(res) if e["event"] == "token source"] == [str(home / ".vault-token")]
    # vault.token_file wins over ~/.vault-token
    (home / ".vault-token").write_text("hvs.stale-token-from-an-old-login-0000\n")
    tf = tmp_path / "token"
    tf.write_text(root_token)
    cfg = tmp_path / "vaultsync.toml"
    cfg.write_text('[vault]\ntoken_file = "token"\n')
    res = dry_run(no_token, kv2, env_file, "--config", str(cfg), "--log-level", "debug")
    ok(res)
    assert [e["source"] for e in debug_events(res) if e["event"] == "token source"] == [f"token_file {tf}"]
    # VAULT_TOKEN wins over both
    tf.write_text("hvs.stale-token-in-the-file-00000000")
    res = dry_run(vault_env, kv2, env_file, "--config", str(cfg), "--log-level", "debug")
    ok(res)
    assert [e["source"] for e in debug_events(res) if e["event"] == "token source"] == ["environment (VAULT_TOKEN/BAO_TOKEN)"]
    assert root_token not in res.output



# --- the daemon with a static token ---------------------------------------------------------------------


def test_daemon_static_token_at_max_ttl_says_once_that_it_cannot_log_in_again(kv2, root, vault_server, tmp_path):
    from tests.daemon_harness import DaemonProc, daemon_env, wait_for
    from tests.least_privilege import daemon_token
    from tests.test_daemon import config

    root.secrets.kv.v2.create_or_update_secret(path="compose/web", secret={"A": "1"}, mount_point=kv2)
    token = daemon_token(root, kv_mount=kv2, ttl="3s", explicit_max_ttl="8s")
    work = tmp_path / "work"
    work.mkdir()
    cfg = config(work, kv2, '[services.web]\n[[services.web.destinations]]\npath = "web.env"\n', poll="1s")
    d = DaemonProc(cfg, daemon_env(vault_server, token, work), work).start()
    try:
        wait_for(lambda: d.count("static token cannot log in again") >= 1, 30, "the daemon to say it cannot log in again")
        told = [e for e in d.events() if e.get("event") == "static token cannot log in again"][0]
        assert told["level"] == "error" and "periodic token" in told["fix"] and "approle" in told["fix"]
        # After the token is gone the daemon keeps trying (backed off) but says it only once.
        wait_for(lambda: d.count("login failed") >= 2, 60, "logins failing after expiry")
        assert d.count("static token cannot log in again") == 1
        assert (work / "web.env").read_text() == "A='1'\n"  # the last good file stays
    finally:
        d.stop()
    assert token not in d.log.read_text()
