"""Logging in (token or AppRole), the token's state, and AppRole credentials.

AppRole credentials are read from files, as Vault Agent's auto-auth reads them
(``role_id_file``, ``secret_id_file``). A response-wrapped secret_id is looked up
before it is unwrapped: the wrapping token must have been created by
``auth/<mount>/role/<role>/secret-id``; a token that fails the lookup was already
unwrapped (or forged) and is refused as a security event rather than retried.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions

from vaultsync.config import AuthSettings, VaultSettings, resolve_token
from vaultsync.errors import ConfigError, RoleNotFound, VaultError
from vaultsync.logging import register_secret
from vaultsync.render import atomic_write
from vaultsync.safefs import UnsafePath, read_trusted_file
from vaultsync.vault import describe


class SecurityError(VaultError):
    """Something that must be reported, not retried: a reused or foreign wrapping token."""


@dataclass(frozen=True)
class TokenState:
    """What the server says about our token. ``ttl`` 0 means it never expires."""

    token: str = field(repr=False)
    accessor: str = field(repr=False)
    ttl: float
    renewable: bool
    period: float = 0.0
    policies: tuple[str, ...] = ()
    method: str = "token"


def _from_auth(auth: dict[str, Any], method: str) -> TokenState:
    token = auth["client_token"]
    register_secret(token)
    register_secret(auth.get("accessor"))
    return TokenState(
        token=token,
        accessor=auth.get("accessor", ""),
        ttl=float(auth.get("lease_duration") or 0),
        renewable=bool(auth.get("renewable")),
        period=float(auth.get("period") or 0) if "period" in auth else 0.0,
        policies=tuple(auth.get("token_policies") or auth.get("policies") or ()),
        method=method,
    )


def lookup_self(client: hvac.Client) -> TokenState:
    try:
        data = client.auth.token.lookup_self()["data"]
    except Exception as exc:  # noqa: BLE001
        raise describe(exc, "look up the token") from None
    ttl = float(data.get("ttl") or 0)
    if ttl == 0 and data.get("expire_time"):
        # Vault rounds down: a token with under a second left reads as ttl 0, which
        # elsewhere means "never expires". Keep it expiring, now.
        ttl = 0.5
    return TokenState(
        token=client.token, accessor=data.get("accessor", ""), ttl=ttl,
        renewable=bool(data.get("renewable")), period=float(data.get("period") or 0),
        policies=tuple(data.get("policies") or ()), method="token",
    )


def renew_self(client: hvac.Client, increment: float | None = None) -> TokenState:
    try:
        resp = client.auth.token.renew_self(increment=int(increment) if increment else None)
    except Exception as exc:  # noqa: BLE001
        raise describe(exc, "renew the token") from None
    return _from_auth(resp["auth"], "renew")


def login(client: hvac.Client, vault: VaultSettings, auth: AuthSettings, *, secret_id: str | None = None) -> TokenState:
    """Authenticate ``client`` (sets its token) and return the token's state.

    For AppRole, ``secret_id`` is one already read (a daemon keeps it to log in again
    after its token's max TTL, when the file may be gone); else it is read from its file."""
    if auth.method == "token":
        token = resolve_token(vault)
        if not token:
            raise ConfigError("auth.method is 'token' but no token: set VAULT_TOKEN (or BAO_TOKEN), vault.token_file, or `vault login` (~/.vault-token)")
        client.token = token
        register_secret(token)
        return lookup_self(client)
    role_id = _read_file(auth.role_id_file, "role_id_file")
    secret_id = secret_id or read_secret_id(client, auth)
    try:
        resp = client.auth.approle.login(role_id=role_id, secret_id=secret_id, mount_point=auth.mount, use_token=True)
    except Exception as exc:  # noqa: BLE001
        raise describe(exc, f"AppRole login on auth/{auth.mount}") from None
    return _from_auth(resp["auth"], "approle")


def _read_file(path: str | None, what: str) -> str:
    if not path:
        raise ConfigError(f"auth.method is 'approle' but auth.{what} is not set")
    try:
        value = read_trusted_file(path).decode("utf-8").strip()
    except UnsafePath as exc:
        raise ConfigError(f"auth.{what}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: {what} is not UTF-8 text") from None
    if not value:
        raise ConfigError(f"{path}: {what} is empty")
    register_secret(value)
    return value


def read_secret_id(client: hvac.Client, auth: AuthSettings) -> str:
    """The secret_id from its file: unwrapped first when it is a wrapping token;
    the file is removed afterwards when ``remove_secret_id_file`` is set."""
    value = _read_file(auth.secret_id_file, "secret_id_file")
    if auth.secret_id_wrapped:
        value = unwrap_secret_id(client, value, mount=auth.mount, role=auth.role_name)
    if auth.remove_secret_id_file and auth.secret_id_file:
        try:
            os.unlink(auth.secret_id_file)
        except FileNotFoundError:
            pass
    return value


def unwrap_secret_id(client: hvac.Client, wrapping_token: str, *, mount: str, role: str | None) -> str:
    """Check where the wrapping token came from, then unwrap it (once)."""
    register_secret(wrapping_token)
    try:
        info = client.adapter.post("/v1/sys/wrapping/lookup", json={"token": wrapping_token})["data"]
    except (hvac.exceptions.InvalidRequest, hvac.exceptions.Forbidden, hvac.exceptions.InvalidPath):
        raise SecurityError(
            "the wrapped secret_id is not valid: it was already unwrapped (by someone else?) or has expired; "
            "issue new credentials and investigate"
        ) from None
    except Exception as exc:  # noqa: BLE001
        raise describe(exc, "look up the wrapping token") from None
    path = str(info.get("creation_path", ""))
    mount = mount.strip("/")
    expected = f"auth/{mount}/role/{role}/secret-id" if role else None
    ok = path == expected if expected else (path.startswith(f"auth/{mount}/role/") and path.endswith("/secret-id"))
    if not ok:
        raise SecurityError(f"the wrapping token was created by {path!r}, not by an AppRole secret-id endpoint; refusing to unwrap")
    try:
        if client.token:  # authenticated: name the wrapping token in the body
            resp = client.adapter.post("/v1/sys/wrapping/unwrap", json={"token": wrapping_token})
        else:  # not logged in yet (the usual case): the wrapping token authenticates itself
            resp = client.adapter.post("/v1/sys/wrapping/unwrap", headers={"X-Vault-Token": wrapping_token})
    except (hvac.exceptions.InvalidRequest, hvac.exceptions.Forbidden):
        raise SecurityError("the wrapped secret_id was unwrapped by someone else between lookup and unwrap") from None
    except Exception as exc:  # noqa: BLE001
        raise describe(exc, "unwrap the secret_id") from None
    secret_id = resp["data"]["secret_id"]
    register_secret(secret_id)
    return secret_id


# --- issuing credentials (`vaultsync approle credentials`) ---------------------------------


@dataclass(frozen=True)
class Credentials:
    role_id: str = field(repr=False)
    secret_id: str = field(repr=False)  # the wrapping token when ``wrapped``
    wrapped: bool = False
    wrap_ttl: float = 0.0
    accessor: str = field(default="", repr=False)  # the secret_id's accessor: destroys it without knowing it


def issue_credentials(client: hvac.Client, *, mount: str, role: str, wrap_ttl: float | None = None) -> Credentials:
    mount = mount.strip("/")
    try:
        role_id = client.adapter.get(f"/v1/auth/{mount}/role/{role}/role-id")["data"]["role_id"]
    except hvac.exceptions.InvalidPath:
        raise RoleNotFound(role, mount, f"no AppRole {role!r} on auth/{mount}: run `vaultsync policies apply` first") from None
    except Exception as exc:  # noqa: BLE001
        raise describe(exc, f"read the role_id of {role}") from None
    register_secret(role_id)
    headers = {"X-Vault-Wrap-TTL": str(int(wrap_ttl))} if wrap_ttl else None
    try:
        resp = client.adapter.post(f"/v1/auth/{mount}/role/{role}/secret-id", json={}, headers=headers)
    except Exception as exc:  # noqa: BLE001
        raise describe(exc, f"issue a secret_id for {role}") from None
    if wrap_ttl:
        token = resp["wrap_info"]["token"]
        accessor = resp["wrap_info"].get("wrapped_accessor") or ""
        register_secret(token)
        register_secret(accessor)
        return Credentials(role_id, token, True, float(wrap_ttl), accessor)
    secret_id = resp["data"]["secret_id"]
    accessor = resp["data"].get("secret_id_accessor") or ""
    register_secret(secret_id)
    register_secret(accessor)
    return Credentials(role_id, secret_id, accessor=accessor)


def destroy_secret_id(client: hvac.Client, *, mount: str, role: str, accessor: str) -> None:
    """Destroy an issued secret_id by its accessor (a command that failed after issuing it
    must not leave a valid credential behind, e.g. in a half-written folder)."""
    try:
        client.adapter.post(f"/v1/auth/{mount.strip('/')}/role/{role}/secret-id-accessor/destroy",
                            json={"secret_id_accessor": accessor})
    except Exception as exc:  # noqa: BLE001
        raise describe(exc, f"destroy the secret_id just issued for {role}") from None


def write_credentials(creds: Credentials, folder: str | Path) -> list[Path]:
    """``role_id`` and ``secret_id`` as 0600 files, written atomically."""
    folder = Path(folder)
    out = []
    for name, value in (("role_id", creds.role_id), ("secret_id", creds.secret_id)):
        path = folder / name
        atomic_write(path, (value + "\n").encode(), mode=0o600)
        out.append(path)
    return out
