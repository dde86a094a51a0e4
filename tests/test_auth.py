"""vaultsync.auth in-process, against the real server: the token's state as the server reports it,
each way a credential file can be wrong, issuing and destroying AppRole credentials.

(`tests/test_policies.py` covers the wrapped secret_id's origin checks end to end.)"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import hvac.exceptions
import pytest

from vaultsync import auth, logging
from vaultsync.config import AuthSettings
from vaultsync.errors import ConfigError, VaultError
from vaultsync.logging import REDACTED, scrub


@pytest.fixture
def approle(root):
    """A fresh AppRole mount with role ``api`` (15 min tokens, policy ``p-api``)."""
    mount = "ar-" + uuid.uuid4().hex[:8]
    root.sys.enable_auth_method("approle", path=mount)
    root.adapter.post(f"/v1/auth/{mount}/role/api", json={
        "token_policies": ["p-api"], "token_ttl": "15m", "token_max_ttl": "1h", "token_no_default_policy": True})
    yield mount
    root.sys.disable_auth_method(mount)


def creds_files(folder: Path, creds: auth.Credentials) -> AuthSettings:
    auth.write_credentials(creds, folder)
    return AuthSettings(method="approle", role_name="api", role_id_file=str(folder / "role_id"),
                        secret_id_file=str(folder / "secret_id"))


def test_lookup_self_reports_what_the_server_says(root, vault_server):
    token = root.auth.token.create(policies=["p-one", "p-two"], ttl="10m", renewable=True)["auth"]["client_token"]
    state = auth.lookup_self(vault_server.client(token))
    assert state.token == token and state.method == "token" and state.renewable is True
    assert 590 <= state.ttl <= 600 and state.period == 0
    assert state.accessor == root.auth.token.lookup(token)["data"]["accessor"]
    assert set(state.policies) == {"default", "p-one", "p-two"}

    periodic = root.auth.token.create(policies=["p-one"], period="5m", renewable=False)["auth"]["client_token"]
    state = auth.lookup_self(vault_server.client(periodic))
    assert state.period == 300 and state.renewable is False

    # The root token never expires: ttl 0, and no expire_time to turn it into "about to expire".
    assert auth.lookup_self(root).ttl == 0


def test_lookup_self_of_a_revoked_token_is_one_clean_error(root, vault_server):
    token = root.auth.token.create(ttl="10m")["auth"]["client_token"]
    root.auth.token.revoke(token)
    with pytest.raises(VaultError, match=r"^invalid token .*: look up the token$") as err:
        auth.lookup_self(vault_server.client(token))
    assert token not in str(err.value)


def test_renew_self_returns_the_new_ttl(root, vault_server):
    token = root.auth.token.create(policies=["p-one"], ttl="2m", explicit_max_ttl="1h", renewable=True)["auth"]["client_token"]
    client = vault_server.client(token)
    # No increment: the server's own default (the token's ttl from its creation, 2 min).
    assert auth.renew_self(client).ttl == 120
    assert auth.renew_self(client, 0.0).ttl == 120
    state = auth.renew_self(client, 600)
    assert state.method == "renew" and state.token == token and state.ttl == 600 and state.renewable is True
    assert state.period == 0 and "p-one" in state.policies
    assert state.accessor == root.auth.token.lookup(token)["data"]["accessor"]
    assert REDACTED in scrub(f"x {state.accessor} y")  # the accessor is registered as a secret


def test_renew_self_of_a_periodic_token_reports_its_period(root, vault_server):
    token = root.auth.token.create(policies=["p-one"], period="4m", renewable=True)["auth"]["client_token"]
    state = auth.renew_self(vault_server.client(token), 600)
    assert state.ttl == 240  # capped at the period (the renew answer carries no "period" field)


def test_renew_self_of_a_non_renewable_token_fails_cleanly(root, vault_server):
    token = root.auth.token.create(ttl="10m", renewable=False)["auth"]["client_token"]
    with pytest.raises(VaultError, match="renew the token") as err:
        auth.renew_self(vault_server.client(token), 60)
    assert token not in str(err.value)


def test_token_login_uses_the_configured_token(root, vault_server):
    token = root.auth.token.create(policies=["p-one"], ttl="10m")["auth"]["client_token"]
    client = vault_server.client()
    client.token = None
    state = auth.login(client, vault_server.settings(token=token), AuthSettings(method="token"))
    assert client.token == token and state.token == token and state.method == "token"
    # Registered as a secret (the token shape alone would miss a token with another prefix).
    assert token in logging._known


def test_token_login_without_a_token_names_every_source(vault_server, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.vault-token
    with pytest.raises(ConfigError, match="auth.method is 'token' but no token: set VAULT_TOKEN"):
        auth.login(vault_server.client(), vault_server.settings(), AuthSettings(method="token"))


def test_approle_login_reports_the_roles_token(root, vault_server, approle, tmp_path):
    creds = auth.issue_credentials(root, mount=approle, role="api")
    settings = creds_files(tmp_path, creds)
    client = vault_server.client()
    client.token = None
    state = auth.login(client, vault_server.settings(), AuthSettings(**{**settings.__dict__, "mount": approle}))
    assert state.method == "approle" and client.token == state.token
    assert state.policies == ("p-api",) and state.ttl == 900 and state.renewable is True and state.period == 0
    assert state.accessor == root.auth.token.lookup(state.token)["data"]["accessor"]
    assert REDACTED in scrub(creds.role_id) and REDACTED in scrub(creds.secret_id)


def test_approle_login_with_a_secret_id_already_read_ignores_the_file(root, vault_server, approle, tmp_path):
    creds = auth.issue_credentials(root, mount=approle, role="api")
    settings = creds_files(tmp_path, creds)
    os.unlink(settings.secret_id_file)  # the daemon keeps the value: the file may be gone by its next login
    settings = AuthSettings(**{**settings.__dict__, "mount": approle})
    assert auth.login(vault_server.client(), vault_server.settings(), settings, secret_id=creds.secret_id).policies == ("p-api",)


def test_approle_login_refused_by_the_server_names_the_mount(root, vault_server, approle, tmp_path):
    creds = auth.issue_credentials(root, mount=approle, role="api")
    settings = creds_files(tmp_path, auth.Credentials(creds.role_id, str(uuid.uuid4())))
    with pytest.raises(VaultError, match=f"AppRole login on auth/{approle}") as err:
        auth.login(vault_server.client(), vault_server.settings(), AuthSettings(**{**settings.__dict__, "mount": approle}))
    assert creds.role_id not in str(err.value)


@pytest.mark.parametrize("what", ["role_id_file", "secret_id_file"])
def test_a_missing_setting_is_named(vault_server, tmp_path, what):
    settings = AuthSettings(method="approle", role_id_file=str(tmp_path / "r"), secret_id_file=str(tmp_path / "s"))
    (tmp_path / "r").write_text("role\n")
    (tmp_path / "s").write_text("secret\n")
    settings = AuthSettings(**{**settings.__dict__, what: None})
    with pytest.raises(ConfigError, match=rf"^auth.method is 'approle' but auth.{what} is not set$"):
        auth.login(vault_server.client(), vault_server.settings(), settings)


def test_each_bad_credential_file_is_one_clear_error(vault_server, tmp_path):
    good = tmp_path / "good"
    good.write_text("  some-role-id \n")
    assert auth._read_file(str(good), "role_id_file") == "some-role-id"  # surrounding whitespace dropped

    cases = {
        "absent": (None, rf"^{tmp_path}/absent: cannot read role_id_file: No such file or directory$"),
        "empty": (b" \n", rf"^{tmp_path}/empty: role_id_file is empty$"),
        "binary": (b"\xff\xfe\x00", rf"^{tmp_path}/binary: role_id_file is not UTF-8 text$"),
        "shared": (b"x", rf"^auth.role_id_file: {tmp_path}/shared is writable by other users \(mode 0666\)$"),
    }
    for name, (body, message) in cases.items():
        if body is not None:
            (tmp_path / name).write_bytes(body)
        if name == "shared":
            os.chmod(tmp_path / name, 0o666)
        with pytest.raises(ConfigError, match=message):
            auth._read_file(str(tmp_path / name), "role_id_file")


def test_secret_id_file_is_removed_only_when_asked(root, vault_server, approle, tmp_path):
    for remove in (False, True):
        folder = tmp_path / str(remove)
        creds = auth.issue_credentials(root, mount=approle, role="api")
        settings = AuthSettings(**{**creds_files(folder, creds).__dict__, "mount": approle, "remove_secret_id_file": remove})
        assert auth.read_secret_id(vault_server.client(), settings) == creds.secret_id
        assert (folder / "secret_id").exists() is not remove
        assert (folder / "role_id").exists()


def test_wrapped_secret_id_is_unwrapped_and_its_file_removed(root, vault_server, approle, tmp_path):
    creds = auth.issue_credentials(root, mount=approle, role="api", wrap_ttl=60)
    settings = AuthSettings(**{**creds_files(tmp_path, creds).__dict__, "mount": approle, "secret_id_wrapped": True,
                               "remove_secret_id_file": True})
    client = vault_server.client()
    client.token = None  # not logged in: the wrapping token authenticates the unwrap itself
    secret_id = auth.read_secret_id(client, settings)
    assert not (tmp_path / "secret_id").exists()
    assert secret_id != creds.secret_id and REDACTED in scrub(secret_id)
    role_id = (tmp_path / "role_id").read_text().strip()
    login = vault_server.client().auth.approle.login(role_id=role_id, secret_id=secret_id, mount_point=approle)
    assert login["auth"]["policies"] == ["p-api"]


def test_unwrap_while_logged_in_names_the_wrapping_token_in_the_body(root, vault_server, approle):
    """An authenticated client (e.g. `vaultsync approle credentials` checking its own output)
    must unwrap the given token, not its own."""
    creds = auth.issue_credentials(root, mount=approle, role="api", wrap_ttl=60)
    helper = root.auth.token.create(policies=["default"], ttl="5m")["auth"]["client_token"]
    secret_id = auth.unwrap_secret_id(vault_server.client(helper), creds.secret_id, mount=f"/{approle}/", role="api")
    assert root.adapter.post(f"/v1/auth/{approle}/role/api/secret-id/lookup", json={"secret_id": secret_id})["data"]
    with pytest.raises(auth.SecurityError, match="already unwrapped"):
        auth.unwrap_secret_id(vault_server.client(helper), creds.secret_id, mount=approle, role="api")


def test_unwrap_with_no_role_name_accepts_any_role_of_the_mount_only(root, vault_server, approle):
    creds = auth.issue_credentials(root, mount=approle, role="api", wrap_ttl=60)
    assert auth.unwrap_secret_id(vault_server.client(), creds.secret_id, mount=approle, role=None)
    # A wrapping token from another endpoint of the same mount (the role's role-id) is refused.
    other = root.adapter.get(f"/v1/auth/{approle}/role/api/role-id", headers={"X-Vault-Wrap-TTL": "60"})["wrap_info"]["token"]
    with pytest.raises(auth.SecurityError, match=f"created by 'auth/{approle}/role/api/role-id'"):
        auth.unwrap_secret_id(vault_server.client(), other, mount=approle, role=None)


def test_unwrap_against_an_unreachable_server_is_not_a_security_event(vault_server):
    client = vault_server.client()
    client.adapter.base_uri = "https://127.0.0.1:9"  # nothing listens on the discard port
    with pytest.raises(VaultError, match="look up the wrapping token") as err:
        auth.unwrap_secret_id(client, "hvs.CAESIwrapping-token-that-is-not-real", mount="approle", role="api")
    assert not isinstance(err.value, auth.SecurityError)


def test_issue_credentials_unwrapped(root, vault_server, approle):
    creds = auth.issue_credentials(root, mount=f"/{approle}/", role="api")
    assert creds.wrapped is False and creds.wrap_ttl == 0.0
    assert creds.role_id == root.adapter.get(f"/v1/auth/{approle}/role/api/role-id")["data"]["role_id"]
    looked = root.adapter.post(f"/v1/auth/{approle}/role/api/secret-id/lookup", json={"secret_id": creds.secret_id})["data"]
    assert looked["secret_id_accessor"] == creds.accessor
    assert "secret" not in repr(creds).replace("secret_id", "") and creds.secret_id not in repr(creds)
    assert REDACTED in scrub(creds.accessor) and REDACTED in scrub(creds.role_id)


def test_issue_credentials_wrapped(root, vault_server, approle):
    creds = auth.issue_credentials(root, mount=approle, role="api", wrap_ttl=90)
    assert creds.wrapped is True and creds.wrap_ttl == 90.0
    info = root.adapter.post("/v1/sys/wrapping/lookup", json={"token": creds.secret_id})["data"]
    assert info["creation_ttl"] == 90 and info["creation_path"] == f"auth/{approle}/role/api/secret-id"
    secret_id = root.adapter.post("/v1/sys/wrapping/unwrap", json={"token": creds.secret_id})["data"]
    assert secret_id["secret_id_accessor"] == creds.accessor


def test_issue_credentials_for_an_unknown_role_says_to_apply_policies(root, approle):
    with pytest.raises(ConfigError, match=rf"^no AppRole 'nope' on auth/{approle}: run `vaultsync policies apply` first$"):
        auth.issue_credentials(root, mount=approle, role="nope")


def test_issue_credentials_without_permission_is_one_clean_error(root, vault_server, approle):
    weak = root.auth.token.create(policies=["default"], ttl="5m")["auth"]["client_token"]
    with pytest.raises(VaultError, match="read the role_id of api"):
        auth.issue_credentials(vault_server.client(weak), mount=approle, role="api")
    root.sys.create_or_update_acl_policy(f"roleid-{approle}", f'path "auth/{approle}/role/api/role-id" {{ capabilities = ["read"] }}')
    reader = root.auth.token.create(policies=[f"roleid-{approle}"], ttl="5m")["auth"]["client_token"]
    with pytest.raises(VaultError, match="permission denied: issue a secret_id for api"):
        auth.issue_credentials(vault_server.client(reader), mount=approle, role="api")
    root.sys.delete_acl_policy(f"roleid-{approle}")


def test_destroy_secret_id_makes_it_unusable(root, vault_server, approle):
    creds = auth.issue_credentials(root, mount=approle, role="api")
    auth.destroy_secret_id(root, mount=f"{approle}/", role="api", accessor=creds.accessor)
    with pytest.raises(hvac.exceptions.InvalidRequest):
        vault_server.client().auth.approle.login(role_id=creds.role_id, secret_id=creds.secret_id, mount_point=approle)
    weak = root.auth.token.create(policies=["default"], ttl="5m")["auth"]["client_token"]
    with pytest.raises(VaultError, match="destroy the secret_id just issued for api"):
        auth.destroy_secret_id(vault_server.client(weak), mount=approle, role="api", accessor=creds.accessor)


def test_write_credentials_writes_two_private_files(tmp_path):
    creds = auth.Credentials("role-1234", "secret-5678")
    paths = auth.write_credentials(creds, str(tmp_path))
    assert paths == [tmp_path / "role_id", tmp_path / "secret_id"]
    assert (tmp_path / "role_id").read_text() == "role-1234\n" and (tmp_path / "secret_id").read_text() == "secret-5678\n"
    assert {p.stat().st_mode & 0o777 for p in paths} == {0o600}


def test_a_token_with_under_a_second_left_is_expiring_not_eternal(root, vault_server):
    """The server rounds the TTL down: 0 with an expire_time means "about to expire", never "never expires"."""
    import time

    for _ in range(5):  # the window is under a second wide: retry on a loaded machine that misses it
        token = root.auth.token.create(ttl="2s")["auth"]["client_token"]
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            info = root.auth.token.lookup(token)["data"]
            if info["ttl"] == 0:
                break
            time.sleep(0.05)
        try:
            state = auth.lookup_self(vault_server.client(token))
        except VaultError:
            continue  # expired between the two lookups
        assert state.ttl == 0.5
        return
    pytest.fail("never caught a token in its last second")
