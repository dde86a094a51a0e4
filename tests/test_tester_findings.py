"""Fixes for the outside tester's findings (5, 3, 4, 14, 6, 7, 11, 17), each against the real server."""

from __future__ import annotations

import uuid
from pathlib import Path

import hvac
import pytest

from vaultsync import migrate as m
from vaultsync import rotation
from vaultsync.config import RotateSpec
from vaultsync.vault import KV

NOW = 1_800_000_000.0


def kv2_data(root: hvac.Client, mount: str, path: str) -> dict:
    return root.secrets.kv.v2.read_secret_version(path=path, mount_point=mount, raise_on_deleted_version=True)["data"]["data"]


# --- 5: a second config's `policies apply` never rewrites another daemon's policy ----------------


def _daemon_config(tmp_path: Path, name: str, kv: str, approle: str, service: str, role_name: str | None) -> Path:
    cfg = tmp_path / f"{name}.toml"
    auth_lines = f'method = "approle"\nrole_name = "{role_name}"\n' if role_name else ""
    cfg.write_text(f'[kv]\nmount = "{kv}"\nprefix = "compose"\n[auth]\nmount = "{approle}"\n{auth_lines}'
                   f'[services.{service}]\n')
    return cfg


def test_a_second_daemon_config_never_rewrites_the_first_daemons_policy(kv2, root, cli, tmp_path):
    """The daemon policy is named after auth.role_name, so host B's apply leaves host A's alone."""
    approle = "approle-" + uuid.uuid4().hex[:8]
    empty = tmp_path / "no-files"
    empty.mkdir()
    host_a = _daemon_config(tmp_path, "a", kv2, approle, "api", "vaultsync-daemon")
    host_b = _daemon_config(tmp_path, "b", kv2, approle, "web", "hostb")
    assert cli("--config", str(host_a), "policies", "apply", str(empty)).code == 0
    before = root.sys.read_acl_policy("vaultsync-daemon")["data"]["policy"]
    res = cli("--config", str(host_b), "policies", "apply", str(empty))
    assert res.code == 0, res.output
    assert root.sys.read_acl_policy("vaultsync-daemon")["data"]["policy"] == before
    assert f"{kv2}/data/compose/api" in before
    assert root.adapter.get(f"/v1/auth/{approle}/role/hostb")["data"]["token_policies"] == ["vaultsync-daemon-hostb"]
    assert f"{kv2}/data/compose/web" in root.sys.read_acl_policy("vaultsync-daemon-hostb")["data"]["policy"]


def test_rewriting_a_daemon_policy_another_approle_carries_is_refused(kv2, root, cli, tmp_path):
    approle = "approle-" + uuid.uuid4().hex[:8]
    empty = tmp_path / "no-files"
    empty.mkdir()
    host_a = _daemon_config(tmp_path, "a", kv2, approle, "api", "vaultsync-daemon")
    token_host = _daemon_config(tmp_path, "b", kv2, approle, "web", None)  # token auth: the default policy name
    assert cli("--config", str(host_a), "policies", "apply", str(empty)).code == 0
    before = root.sys.read_acl_policy("vaultsync-daemon")["data"]["policy"]
    res = cli("--config", str(token_host), "policies", "apply", str(empty))
    assert res.code == 2 and "also given to AppRole vaultsync-daemon" in res.stderr, res.output
    assert root.sys.read_acl_policy("vaultsync-daemon")["data"]["policy"] == before


# --- 3: keys the daemon rotates survive `migrate --prune`, and come back if deleted ---------------


def test_migrate_prune_keeps_the_keys_the_daemon_rotates(kv2, root, cli, tmp_path):
    root.secrets.kv.v2.create_or_update_secret(path="compose/api", secret={"A": "old", "SESSION": "s", "LEGACY": "x"},
                                               mount_point=kv2)
    env = tmp_path / "api" / ".env"
    env.parent.mkdir()
    env.write_text("A=new\n")
    cfg = tmp_path / "vaultsync.toml"
    cfg.write_text(f'[kv]\nmount = "{kv2}"\nprefix = "compose"\n[services.api]\n'
                   '[[services.api.rotate]]\nkey = "SESSION"\nevery = "1h"\n')
    res = cli("--config", str(cfg), "migrate", "--prune", str(env))
    assert res.code == 0, res.output
    assert "SESSION" in res.stdout and "the daemon rotates it for service api" in res.stdout
    assert kv2_data(root, kv2, "compose/api") == {"A": "new", "SESSION": "s"}


def test_a_rotated_key_deleted_from_kv_is_regenerated_before_it_is_due(vault_server, kv2):
    kv = KV(vault_server.client(vault_server.token), kv2, 2)
    kv.write("compose/api", {"STATIC": "s", "SESSION": "old"})
    spec = RotateSpec(key="SESSION", generator="hex", length=16, every=3600)
    assert rotation.rotate_if_due(kv, "api", "compose/api", spec, holder="a", now=NOW, lock_ttl=30).status == "rotated"
    kv.write("compose/api", {"STATIC": "s"})  # e.g. an old `migrate --prune`
    again = rotation.rotate_if_due(kv, "api", "compose/api", spec, holder="a", now=NOW + 10, lock_ttl=30)
    assert again.status == "rotated" and again.next_due == NOW + 10 + 3600
    assert len(kv.read("compose/api").data["SESSION"]) == 32
    assert rotation.missing_owned_keys([spec], {"STATIC": "s"}) == ["SESSION"]
    assert rotation.missing_owned_keys([spec], None) == []  # no secret at all: that is "source missing"
    # Present again: not due until `every` has passed.
    assert rotation.rotate_if_due(kv, "api", "compose/api", spec, holder="a", now=NOW + 20, lock_ttl=30).status == "not_due"


# --- 17a, 17h: migrate messages ----------------------------------------------------------------------


def test_size_limit_message_shows_single_braces(tmp_path):
    env = tmp_path / "api" / ".env"
    env.parent.mkdir()
    env.write_text("A=" + "x" * 200 + "\n")
    from vaultsync.config import SourceSpec
    from vaultsync.errors import BadInput

    with pytest.raises(BadInput) as err:
        m.build_targets([SourceSpec(str(env))], prefix="compose", max_secret_bytes=100)
    assert "split = {...}" in str(err.value) and "{{" not in str(err.value)


def test_a_type_only_change_says_so_in_the_plan(kv2, root, cli, tmp_path):
    root.adapter.post(f"/v1/{kv2}/data/compose/api", json={"data": {"B": True, "N": 1}})
    env = tmp_path / "api" / ".env"
    env.parent.mkdir()
    env.write_text("B=true\nN=1\n")
    res = cli("migrate", "--mount", kv2, "--dry-run", str(env))
    assert res.code == 0, res.output
    lines = [line for line in res.stdout.splitlines() if "~ B" in line or "~ N" in line]
    assert len(lines) == 2 and all("type changes" in line for line in lines), res.stdout


# --- 4: a --kv-version that contradicts the mount ----------------------------------------------------


@pytest.mark.parametrize("actual", [1, 2])
def test_a_kv_version_that_contradicts_the_mount_is_refused(actual, request, root, cli, tmp_path):
    mount = request.getfixturevalue(f"kv{actual}")
    env = tmp_path / "pr" / ".env"
    env.parent.mkdir()
    env.write_text("A=1\n")
    res = cli("migrate", "--mount", mount, "--kv-version", str(3 - actual), str(env))
    assert res.code == 2 and f"is KV v{actual}" in res.stderr, res.output
    assert KV(root, mount, actual).list("") == [] and KV(root, mount, 3 - actual).list("") == []  # nothing written
    assert cli("migrate", "--mount", mount, "--kv-version", str(actual), str(env)).code == 0


def test_a_v2_write_landing_on_a_v1_mount_is_never_reported_as_not_written(vault_server, kv1):
    from vaultsync.errors import OutcomeUnknown

    kv = KV(vault_server.client(vault_server.token), kv1, 2)
    with pytest.raises(OutcomeUnknown, match="may have landed at .*/data/compose/pr"):
        kv.write("compose/pr", {"A": "1"}, cas=0)


# --- 14: an encrypted client key -----------------------------------------------------------------------


def test_an_encrypted_client_key_is_refused_without_a_prompt(vault_server, kv2, tmp_path):
    from cryptography.hazmat.primitives import serialization

    from tests.conftest import run_cli

    assert vault_server.ca is not None, "needs the session's server-mode server"
    issued = vault_server.ca.issue("vaultsync-client", client=True)
    key = serialization.load_pem_private_key(Path(issued.key).read_bytes(), password=None)
    encrypted = tmp_path / "encrypted-key.pem"
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"correct horse")))
    encrypted.chmod(0o600)
    env_file = tmp_path / "api" / ".env"
    env_file.parent.mkdir()
    env_file.write_text("A=1\n")
    env = {**vault_server.env(tmp_path, vault_server.token), "VAULT_CLIENT_CERT": issued.cert,
           "VAULT_CLIENT_KEY": str(encrypted)}
    res = run_cli("migrate", "--mount", kv2, "--dry-run", str(env_file), env=env)
    assert res.code == 2, res.output
    assert f"{encrypted}: cannot read the client key (encrypted keys are not supported" in res.stderr
    assert "pass phrase" not in res.output.lower() and "OSError" not in res.output


# --- 6, 7, 11: `vaultsync render` ---------------------------------------------------------------------


def _render_config(tmp_path: Path, kv: str, services: str) -> Path:
    cfg = tmp_path / "vaultsync.toml"
    cfg.write_text(f'[kv]\nmount = "{kv}"\nprefix = "compose"\n{services}')
    return cfg


def test_render_reports_each_hook_failure_and_exits_non_zero(kv2, root, cli, tmp_path):
    import json

    root.secrets.kv.v2.create_or_update_secret(path="compose/api", secret={"A": "1"}, mount_point=kv2)
    cfg = _render_config(tmp_path, kv2, (
        '[services.api]\n'
        # (a bare name is looked up on the hooks' PATH when it runs; a missing absolute one is a config error)
        '[[services.api.destinations]]\npath = "missing.env"\ncommand = ["vaultsync-no-such-reload"]\n'
        '[[services.api.destinations]]\npath = "exit3.env"\ncommand = ["/bin/sh", "-c", "exit 3"]\n'
        '[[services.api.destinations]]\npath = "ok.env"\ncommand = ["/bin/true"]\n'
        '[[services.api.destinations]]\npath = "plain.env"\n'))
    res = cli("--config", str(cfg), "render", cwd=tmp_path)
    assert res.code == 4, res.output
    lines = {line.split(": ")[1]: line for line in res.stdout.splitlines()}
    assert "hook failed" in lines[str(tmp_path / "missing.env")] and "vaultsync-no-such-reload" in lines[str(tmp_path / "missing.env")]
    assert "hook failed: /bin/sh exited with 3" in lines[str(tmp_path / "exit3.env")]
    assert lines[str(tmp_path / "ok.env")].endswith("success, hook ran")
    assert lines[str(tmp_path / "plain.env")].endswith(": success")
    for name in ("missing", "exit3", "ok", "plain"):
        (tmp_path / f"{name}.env").unlink()
    res = cli("--config", str(cfg), "render", "--output", "json", cwd=tmp_path)
    assert res.code == 4
    assert json.loads(res.stdout)["api"] == {str(tmp_path / "missing.env"): "hook_failure", str(tmp_path / "exit3.env"): "hook_failure",
                                             str(tmp_path / "ok.env"): "success", str(tmp_path / "plain.env"): "success"}


@pytest.mark.parametrize("output", ["text", "json"])
def test_render_without_a_config_says_so_like_the_daemon(output, cli, tmp_path):
    empty = tmp_path / "cron-cwd"
    empty.mkdir()
    res = cli("render", "--output", output, cwd=empty)
    assert res.code == 2 and "no [services.<name>] in the config: nothing to do" in res.stderr, res.output
    assert res.stdout == ""


def test_render_refuses_dynamic_secrets_unless_asked(kv2, root, cli, tmp_path):
    root.secrets.kv.v2.create_or_update_secret(path="compose/api", secret={"A": "1"}, mount_point=kv2)
    cfg = _render_config(tmp_path, kv2, '[services.api]\ndynamic = { db = "no-such-mount/creds/api" }\n'
                                        '[[services.api.destinations]]\npath = "api.env"\n'
                                        '[services.web]\n[[services.web.destinations]]\npath = "web.env"\n')
    res = cli("--config", str(cfg), "render", cwd=tmp_path)
    assert res.code == 2 and "service api has dynamic secrets" in res.stderr and "--allow-dynamic-leases" in res.stderr, res.output
    assert not (tmp_path / "web.env").exists()  # refused before anything is rendered


def _approle_tokens(root: hvac.Client, approle: str) -> int:
    accessors = root.adapter.list("/v1/auth/token/accessors")["data"]["keys"]
    count = 0
    for accessor in accessors:
        try:
            info = root.adapter.post("/v1/auth/token/lookup-accessor", json={"accessor": accessor})["data"]
        except hvac.exceptions.InvalidRequest:
            continue  # expired meanwhile
        count += info.get("path") == f"auth/{approle}/login"
    return count


def _web_approle(kv2: str, root, cli, tmp_path, *credential_flags: str):
    """Service web with its own AppRole (policies applied) and its credentials in tmp_path/creds:
    the AppRole mount, the config file and the credentials folder."""
    approle = "approle-" + uuid.uuid4().hex[:8]
    root.secrets.kv.v2.create_or_update_secret(path="compose/web", secret={"A": "1"}, mount_point=kv2)
    cfg = _render_config(tmp_path, kv2, f'[auth]\nmount = "{approle}"\n[services.web]\n[[services.web.destinations]]\npath = "web.env"\n')
    assert cli("--config", str(cfg), "policies", "apply", str(tmp_path)).code == 0
    creds = tmp_path / "creds"
    assert cli("--config", str(cfg), "approle", "credentials", "web", "--out", str(creds), *credential_flags).code == 0
    return approle, cfg, creds


def test_render_revokes_the_token_it_logged_in_for(kv2, root, cli, tmp_path):
    approle, cfg, creds = _web_approle(kv2, root, cli, tmp_path)
    cfg.write_text(cfg.read_text().replace(
        "[auth]\n", f'[auth]\nmethod = "approle"\nrole_name = "web"\nrole_id_file = "{creds / "role_id"}"\n'
                    f'secret_id_file = "{creds / "secret_id"}"\n'))
    for _ in range(2):
        res = cli("--config", str(cfg), "render", cwd=tmp_path)
        assert res.code == 0, res.output
    assert (tmp_path / "web.env").exists()
    assert _approle_tokens(root, approle) == 0


# --- 17b: export's hint names export's own terms ---------------------------------------------------------


def test_export_of_a_missing_secret_names_no_service_options(kv2, cli, tmp_path):
    res = cli("export", "--mount", kv2, "--stdout", "compose/nope")
    assert res.code == 1, res.output
    assert f"secret {kv2}/compose/nope does not exist" in res.stderr
    assert "kv_path" not in res.stderr and "optional" not in res.stderr and "service export" not in res.stderr


# --- 17f: an already-unwrapped secret_id is reported, not retried ------------------------------------------


def test_the_daemon_stops_on_an_already_unwrapped_secret_id(kv2, root, cli, tmp_path):
    from tests.fixtures_servers import free_port

    approle, cfg, creds = _web_approle(kv2, root, cli, tmp_path, "--wrap-ttl", "60s")
    root.adapter.post("/v1/sys/wrapping/unwrap", json={"token": (creds / "secret_id").read_text().strip()})  # someone else
    cfg.write_text(cfg.read_text().replace(
        "[auth]\n", f'[auth]\nmethod = "approle"\nrole_name = "web"\nrole_id_file = "{creds / "role_id"}"\n'
                    f'secret_id_file = "{creds / "secret_id"}"\nsecret_id_wrapped = true\n'))
    res = cli("--config", str(cfg), "daemon", "--metrics-addr", f"127.0.0.1:{free_port()}", cwd=tmp_path)
    assert res.code == 1, res.output
    assert "already unwrapped" in res.stderr and "not retried" in res.stderr
    assert "start-up failed, retrying" not in res.stderr and not (tmp_path / "web.env").exists()


# --- 17d: an expired static token is blamed, not the policies ------------------------------------------------


def test_blame_the_token_only_when_it_is_known_bad():
    from vaultsync.recovery import blame_the_token

    denied = "permission denied: read kv/compose/api (the token's policies do not grant 'read' on kv/data/compose/api)"
    assert blame_the_token(denied, expires_at=None, now=100, token_problem=None) == denied
    assert blame_the_token(denied, expires_at=200, now=100, token_problem=None) == denied
    expired = blame_the_token(denied, expires_at=90, now=100, token_problem=None)
    assert expired.startswith("permission denied: read kv/compose/api (the token expired 10s ago") and "policies do not" not in expired
    assert "rejected the token itself: revoked" in blame_the_token(denied, expires_at=None, now=100, token_problem="revoked")
    assert blame_the_token("kv down", expires_at=90, now=100, token_problem="x") == "kv down"


def test_the_daemon_says_its_static_token_expired(kv2, root, vault_server, tmp_path):
    from tests.daemon_harness import DaemonProc, daemon_env, wait_for

    root.secrets.kv.v2.create_or_update_secret(path="compose/api", secret={"A": "1"}, mount_point=kv2)
    token = root.auth.token.create(policies=["root"], ttl="8s", renewable=False)["auth"]["client_token"]
    cfg = tmp_path / "vaultsync.toml"
    cfg.write_text(f'[kv]\nmount = "{kv2}"\nprefix = "compose"\n[daemon]\npoll_interval = "1s"\n'
                   '[services.api]\n[[services.api.destinations]]\npath = "api.env"\n')
    d = DaemonProc(cfg, daemon_env(vault_server, token, tmp_path), tmp_path, name="expired").start()
    try:
        failures = wait_for(lambda: [e for e in d.events() if e.get("event") == "kv read failed"], 60,
                            "a kv read refused after the token expired")
    finally:
        d.stop()
    assert "the token expired" in failures[0]["error"] and "policies do not grant" not in failures[0]["error"], failures[0]
    assert not [e for e in d.events() if e.get("event") == "logging in again"]  # it cannot log in: a static token


def test_the_daemon_regenerates_a_rotated_key_deleted_from_kv(kv2, root, vault_server, tmp_path):
    """Finding 3, daemon side: a key it owns that disappears is regenerated at once (and said so),
    not left out of the env file until `every` has passed."""
    from tests.daemon_harness import DaemonProc, daemon_env, wait_for

    root.secrets.kv.v2.create_or_update_secret(path="compose/api", secret={"STATIC": "s"}, mount_point=kv2)
    cfg = tmp_path / "vaultsync.toml"
    cfg.write_text(f'[kv]\nmount = "{kv2}"\nprefix = "compose"\n[daemon]\npoll_interval = "1s"\n'
                   '[services.api]\n[[services.api.destinations]]\npath = "api.env"\n'
                   '[[services.api.rotate]]\nkey = "SESSION"\ngenerator = "hex"\nlength = 16\nevery = "1h"\n')
    d = DaemonProc(cfg, daemon_env(vault_server, vault_server.token, tmp_path), tmp_path, name="regen").start()
    try:
        first = wait_for(lambda: kv2_data(root, kv2, "compose/api").get("SESSION"), 60, "the first rotation")
        root.secrets.kv.v2.create_or_update_secret(path="compose/api", secret={"STATIC": "s"}, mount_point=kv2)
        again = wait_for(lambda: kv2_data(root, kv2, "compose/api").get("SESSION"), 60, f"SESSION regenerated ({d.tail()})")
        wait_for(lambda: f"SESSION='{again}'" in (tmp_path / "api.env").read_text(), 30, "the new key rendered")
        missing = [e for e in d.events() if e.get("event") == "rotated key missing from kv: regenerating it now"]
    finally:
        d.stop()
    assert again != first and missing and missing[0]["key"] == "SESSION" and missing[0]["level"] == "error"
