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
