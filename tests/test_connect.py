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
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import vault_cluster
from tests.conftest import Result, run_cli
from tests.fixtures_servers import free_port
from vaultsync.formats import HEADER

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
    (folder / "private").mkdir()  # the Vault CLI walks sub-folders too
    shutil.copy(vault_server.cacert, folder / "private" / "any-name.crt")  # no OpenSSL hash links needed
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


# --- a server whose certificate is bad: expired, not yet valid, for another name ------------------------


NAMES = {"dns": vault_cluster.SERVER_NAMES, "ips": ("127.0.0.1",)}
BAD_CERTS = {
    "expired": ({**NAMES, "valid_days": (-3, -1)}, "TLS: the certificate of {addr} has expired"),
    "not-yet-valid": ({**NAMES, "valid_days": (1, 3)}, "TLS: the certificate of {addr} is not valid yet"),
    "other-name": ({"dns": ("elsewhere.test",)}, "TLS: the certificate of {addr} is not valid for the name asked for"),
}


@pytest.fixture(scope="module")
def bad_cert_nodes(vault_server, tmp_path_factory) -> Iterator[dict[str, vault_cluster.Node]]:
    """Real server processes (started, never initialised: a handshake is all these tests need), each
    with a certificate the session CA signed that a client must refuse."""
    from vaultsync import devserver

    assert vault_server.ca is not None, "needs the session's server-mode CA"
    nodes: dict[str, vault_cluster.Node] = {}
    try:
        for name, (issue, _) in BAD_CERTS.items():
            cert = vault_server.ca.issue(f"bad-{name}", **issue)  # type: ignore[arg-type]
            folder = tmp_path_factory.mktemp(f"bad-{name}")
            nodes[name] = vault_cluster.Node(devserver.find_server_binary(), folder, vault_server.ca, name, tls=cert).start()
        yield nodes
    finally:
        for node in nodes.values():
            node.kill()


@pytest.mark.parametrize("which", list(BAD_CERTS))
def test_a_bad_server_certificate_says_what_is_wrong_with_it(vault_server, bad_cert_nodes, base_env, kv2, env_file, which):
    node = bad_cert_nodes[which]
    res = dry_run({**base_env, "VAULT_ADDR": node.addr, "VAULT_CACERT": vault_server.cacert}, kv2, env_file)
    assert res.code == 1, res.output
    assert BAD_CERTS[which][1].format(addr=node.addr) in res.stderr
    assert "Traceback" not in res.output


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


def test_a_world_readable_client_key_is_warned_about_once_not_refused(vault_server, base_env, kv2, env_file, client_cert, tmp_path):
    key = tmp_path / "open-key.pem"
    shutil.copy(client_cert.key, key)
    env = {**base_env, "VAULT_ADDR": vault_server.mtls_addr, "VAULT_CACERT": vault_server.cacert,
           "VAULT_CLIENT_CERT": client_cert.cert, "VAULT_CLIENT_KEY": str(key)}
    key.chmod(0o600)
    res = dry_run(env, kv2, env_file)
    ok(res)
    assert "readable by every user" not in res.stderr
    key.chmod(0o644)
    res = dry_run(env, kv2, env_file)
    ok(res)
    assert res.stderr.count(f"warning: the client key {key} is readable by every user (mode 644)") == 1
    assert [e for e in debug_events(res) if e["event"] == "client key readable by every user"]


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


def test_the_cluster_port_instead_of_the_api_port_names_the_tls_reason(vault_server, base_env, kv2, env_file):
    addr = f"https://127.0.0.1:{vault_server.node.cluster_port}"
    res = dry_run({**base_env, "VAULT_ADDR": addr, "VAULT_CACERT": vault_server.cacert}, kv2, env_file)
    assert res.code == 1, res.output
    assert f"TLS handshake with {addr} failed (" in res.stderr and "is this the server's API port?" in res.stderr
    assert "failed (no reason given)" not in res.stderr


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


def test_unresolvable_name_and_ipv6_literal_name_the_address_and_the_cause(vault_server, base_env, kv2, env_file):
    env = {**base_env, "VAULT_CACERT": vault_server.cacert}
    res = dry_run({**env, "VAULT_ADDR": "https://vault.nonexistent.invalid:8200"}, kv2, env_file)
    assert res.code == 1, res.output
    assert "cannot reach the server at https://vault.nonexistent.invalid:8200: name lookup failed" in res.stderr
    port = free_port()
    res = dry_run({**env, "VAULT_ADDR": f"https://[::1]:{port}/"}, kv2, env_file)
    assert res.code == 1, res.output
    assert f"cannot reach the server at https://[::1]:{port}: " in res.stderr and "Traceback" not in res.output


def test_address_with_a_trailing_slash_works(vault_server, base_env, kv2, env_file):
    ok(dry_run({**base_env, "VAULT_ADDR": vault_server.addr + "/", "VAULT_CACERT": vault_server.cacert}, kv2, env_file))


@pytest.mark.parametrize("suffix,code,expect", [
    ("/v1", 2, "must not end in /v1: vaultsync adds it"),
    ("/?x=1", 2, "must not hold a query (?) or fragment (#)"),
    ("/some/prefix", 1, "no Vault API at {addr}/some/prefix: auth/token/lookup-self is not found there"),
], ids=["v1", "query", "wrong-path"])
def test_address_with_a_path_or_query_says_what_is_wrong(vault_server, base_env, kv2, env_file, suffix, code, expect):
    env = {**base_env, "VAULT_ADDR": vault_server.addr + suffix, "VAULT_CACERT": vault_server.cacert}
    res = dry_run(env, kv2, env_file)
    assert res.code == code, res.output
    assert expect.format(addr=vault_server.addr) in res.stderr


@pytest.mark.parametrize("addr,expect", [
    ("https://[::1:8200", "is not a valid URL (check the [IPv6] brackets)"),
    ("https://:8200", "has no valid host name"),
    ("https://vault host:8200", "has no valid host name"),
    ("https://[::1]:82x0", "has an invalid port"),
    ("ftp://vault:8200", "must start with https:// or http://"),
], ids=["ipv6-bracket", "no-host", "space", "port", "scheme"])
def test_a_malformed_address_is_a_config_error_naming_it(base_env, kv2, env_file, addr, expect):
    res = dry_run({**base_env, "VAULT_ADDR": addr}, kv2, env_file)
    assert res.code == 2, res.output
    assert f"error: server address {addr!r} {expect}" in res.stderr
    assert "Traceback" not in res.output


def test_a_password_in_the_address_never_reaches_a_message(vault_server, base_env, kv2, env_file):
    port = free_port()
    res = dry_run({**base_env, "VAULT_ADDR": f"https://ops:pa55w0rd-in-url@127.0.0.1:{port}"}, kv2, env_file)
    assert res.code == 1 and f"cannot reach the server at https://127.0.0.1:{port}: Connection refused" in res.stderr, res.output
    assert "pa55w0rd-in-url" not in res.output


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

@pytest.mark.parametrize("content,expect", [
    (b"%s\r\n", None), (b"  %s \t\n\n", None),
    (b"", "the token file (vault.token_file) is empty"), (b"\n \r\n", "the token file (vault.token_file) is empty"),
    (b"%s\nsecond-line\n", "the token holds spaces, line breaks"), (b"\xef\xbb\xbf%s\n", "the token file holds bytes no token has"),
    (b"%s\xff\n", "the token file holds bytes no token has"), (None, "cannot read the token file: Is a directory"),
], ids=["crlf", "whitespace", "empty", "blank", "two-lines", "bom", "binary", "folder"])
def test_token_file_shapes_work_or_fail_cleanly_naming_the_file(vault_server, vault_env, kv2, env_file, tmp_path, content, expect):
    token = vault_server.token
    tf = tmp_path / "token"
    if content is None:
        tf.mkdir()
    else:
        tf.write_bytes(content.replace(b"%s", token.encode()))
    cfg = tmp_path / "vaultsync.toml"
    cfg.write_text(f'[vault]\ntoken_file = "{tf}"\n')
    no_token = {k: v for k, v in vault_env.items() if k != "VAULT_TOKEN"}
    res = dry_run(no_token, kv2, env_file, "--config", str(cfg))
    if expect is None:
        ok(res)
    else:
        assert res.code == 2, res.output
        assert f"error: {tf}: {expect}" in res.stderr
        assert "Traceback" not in res.output
    assert token not in res.output


def test_a_token_in_the_environment_with_a_line_break_inside_is_a_clean_error(vault_server, vault_env, kv2, env_file):
    token = vault_server.token
    ok(dry_run({**vault_env, "VAULT_TOKEN": f"{token}\r\n"}, kv2, env_file))  # an env file with CRLF line ends
    res = dry_run({**vault_env, "BAO_TOKEN": f"{token}\nx", "VAULT_TOKEN": ""}, kv2, env_file)
    assert res.code == 2 and "VAULT_TOKEN (or BAO_TOKEN): the token holds spaces, line breaks" in res.stderr, res.output
    assert token not in res.output


def test_render_says_why_it_could_not_log_in(vault_server, vault_env, kv2, tmp_path):
    cfg = tmp_path / "vaultsync.toml"
    cfg.write_text(f'[kv]\nmount = "{kv2}"\n[services.web]\n[[services.web.destinations]]\npath = "web.env"\n')
    res = run_cli("--config", str(cfg), "render", env={**vault_env, "VAULT_TOKEN": "hvs.not-a-real-token-at-all-0000"}, cwd=tmp_path)
    assert res.code == 1 and "error: login failed: invalid token" in res.stderr, res.output
    addr = f"https://127.0.0.1:{free_port()}"
    res = run_cli("--config", str(cfg), "render", env={**vault_env, "VAULT_ADDR": addr}, cwd=tmp_path)
    assert res.code == 1 and f"error: login failed: cannot reach the server at {addr}: Connection refused" in res.stderr, res.output


def test_approle_login_ignores_a_personal_token_in_vault_token_and_home(kv2, root, cli, vault_env, tmp_path):
    """An operator's stale `vault login` token (or VAULT_TOKEN) on the host must not ride along with
    an AppRole login: sent with the wrapped secret_id's unwrap it failed and read as an attack."""
    import uuid

    approle = "approle-" + uuid.uuid4().hex[:8]
    cfg = tmp_path / "vaultsync.toml"
    cfg.write_text(f'[kv]\nmount = "{kv2}"\nprefix = "compose"\n[auth]\nmount = "{approle}"\n'
                   '[services.web]\n[[services.web.destinations]]\npath = "web.env"\n')
    root.secrets.kv.v2.create_or_update_secret(path="compose/web", secret={"A": "1"}, mount_point=kv2)
    assert cli("--config", str(cfg), "policies", "apply", str(tmp_path)).code == 0
    creds = tmp_path / "creds"
    assert cli("--config", str(cfg), "approle", "credentials", "web", "--out", str(creds), "--wrap-ttl", "60s").code == 0
    cfg.write_text(cfg.read_text().replace(
        "[auth]\n", f'[auth]\nmethod = "approle"\nrole_name = "web"\nrole_id_file = "{creds / "role_id"}"\n'
                    f'secret_id_file = "{creds / "secret_id"}"\nsecret_id_wrapped = true\n'))
    home = Path(vault_env["HOME"])
    (home / ".vault-token").write_text("hvs.stale-personal-token-from-vault-login\n")
    env = {**vault_env, "VAULT_TOKEN": "hvs.stale-token-in-the-environment-000"}
    res = run_cli("--config", str(cfg), "render", env=env, cwd=tmp_path)
    assert res.code == 0, res.output
    assert "security" not in res.stderr
    assert (tmp_path / "web.env").read_text() == HEADER + "A='1'\n"


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
        assert (work / "web.env").read_text() == HEADER + "A='1'\n"  # the last good file stays
    finally:
        d.stop()
    assert token not in d.log.read_text()


def test_daemon_with_a_token_file_an_agent_rewrites_logs_in_with_the_new_token_without_crying_wolf(kv2, root, vault_server, tmp_path):
    from tests.daemon_harness import DaemonProc, daemon_env, wait_for
    from tests.least_privilege import daemon_token
    from tests.test_daemon import config

    root.secrets.kv.v2.create_or_update_secret(path="compose/web", secret={"A": "1"}, mount_point=kv2)
    work = tmp_path / "work"
    work.mkdir()
    token_file = work / "agent-token"
    token_file.write_text(daemon_token(root, kv_mount=kv2, ttl="4s", explicit_max_ttl="10s") + "\n")
    cfg = config(work, kv2, '[services.web]\n[[services.web.destinations]]\npath = "web.env"\n', poll="1s")
    cfg.write_text(cfg.read_text().replace("[vault]\n", f'[vault]\ntoken_file = "{token_file}"\n', 1))
    env = {k: v for k, v in daemon_env(vault_server, "", work).items() if k != "VAULT_TOKEN"}
    d = DaemonProc(cfg, env, work).start()
    try:
        # What an agent's file sink does before the old token's max TTL: write the next token.
        token_file.write_text(daemon_token(root, kv_mount=kv2, ttl="1h") + "\n")
        wait_for(lambda: d.count("logged in") >= 2, 30, "a login with the rewritten token file")
        root.secrets.kv.v2.create_or_update_secret(path="compose/web", secret={"A": "2"}, mount_point=kv2)
        wait_for(lambda: (work / "web.env").read_text() == HEADER + "A='2'\n", 30, "a change read with the new token")
        assert d.count("static token cannot log in again") == 0
    finally:
        d.stop()
