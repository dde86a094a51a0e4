"""Client construction and the small KV v1/v2 surface vaultsync needs.

One ``requests.Session`` with a connection pool sized to the worker count is
shared by every request, so a migration of many secrets reuses keep-alive
connections. hvac only reads ``VAULT_*`` variables itself; settings (with the
``BAO_*`` aliases already folded in) are passed explicitly instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import hvac
import hvac.exceptions
import requests
import urllib3
from requests.adapters import HTTPAdapter

from vaultsync import connection
from vaultsync.config import VaultSettings, token_with_source
from vaultsync.errors import (BadInput, ConfigError, Conflict, OutcomeUnknown, SourceMissing, TokenInvalid, Unreachable,
                              VaultError)
from vaultsync.logging import get_logger, register_secret, remember_secret

log = get_logger()


def make_client(settings: VaultSettings, *, pool_size: int = 10, token: str | None = None, adapter: HTTPAdapter | None = None) -> hvac.Client:
    """An hvac client with TLS verification on unless the settings turn it off.
    ``adapter`` replaces the connection pool (the daemon passes one that counts requests).
    Bad addresses and unreadable CA/certificate files fail here, before any request."""
    addr = connection.check_addr(settings.addr)
    session = requests.Session()
    # requests re-reads every proxy variable of the environment on each request when
    # trust_env is on (a measurable share of a migration's CPU); resolve them once.
    proxies = requests.utils.get_environ_proxies(addr)
    session.trust_env = False
    adapter = adapter or HTTPAdapter(pool_connections=1, pool_maxsize=max(pool_size, 1))
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    connection.configure_session(session, adapter, settings)
    if token is None:
        token, source = token_with_source(settings)
        log.debug("token source", source=source)
    register_secret(token)
    return hvac.Client(
        url=addr,
        token=token or "",  # never None: hvac would read ~/.vault-token behind our back
        verify=session.verify,
        cert=session.cert,
        namespace=settings.namespace,
        timeout=settings.timeout,
        session=session,
        proxies=proxies or None,
    )


def describe(exc: Exception, action: str, *, needs: str | None = None) -> VaultError:
    """Turn an hvac/requests error into a VaultError that says what failed, without bodies.
    ``needs`` names the capability and policy path the action takes (for permission errors)."""
    if connection.token_refused(exc):
        return TokenInvalid(f"invalid token (expired, revoked or wrong; refused by the server): {action}")
    if isinstance(exc, hvac.exceptions.Forbidden):
        return VaultError(f"permission denied: {action} (the token's policies do not grant {needs})" if needs
                          else f"permission denied: {action} (check the token's policies)")
    transport = connection.explain_transport(exc)
    if transport:
        return _transport_error(exc)(f"{transport} ({action})")
    if isinstance(exc, hvac.exceptions.VaultDown):
        return VaultError(f"server sealed or in standby: {connection.server_of(exc)} has no active node to answer (unseal it, or wait for an election): {action}")
    if isinstance(exc, hvac.exceptions.RateLimitExceeded):
        return VaultError(f"rate limited by the server: {action}")
    if isinstance(exc, hvac.exceptions.VaultError):
        errors = "; ".join(str(e) for e in (exc.errors or [])) or type(exc).__name__
        return VaultError(f"{action}: {errors}")
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return OutcomeUnknown(f"connection lost before the answer: {action}")
    return VaultError(f"{action}: {type(exc).__name__}")


def _transport_error(exc: Exception) -> type[VaultError]:
    """Whether a request that failed below HTTP may still have taken effect: migrate reports
    "not written" (never sent) apart from "unknown" (sent, no answer)."""
    if isinstance(exc, requests.exceptions.SSLError):
        return VaultError  # the handshake failed: nothing was sent, and retrying will not help
    if isinstance(exc, requests.exceptions.ConnectTimeout) or (
            isinstance(exc, requests.exceptions.ConnectionError) and _never_sent(exc)):
        return Unreachable
    if isinstance(exc, (requests.exceptions.Timeout, requests.exceptions.ConnectionError)):
        return OutcomeUnknown
    return VaultError


def _never_sent(exc: requests.exceptions.ConnectionError) -> bool:
    """True when the connection could not be made (refused, no route, DNS): the request
    was never sent. A connection dropped after sending is another matter."""
    reason = getattr(exc.args[0] if exc.args else None, "reason", None)
    return isinstance(reason, (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError))


def normalize_path(path: str) -> str:
    """``a//b/`` -> ``a/b``; ``.`` and ``..`` segments are refused (the server would
    resolve them differently than a reader of the plan expects)."""
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise BadInput(f"secret path {path!r} has a '.' or '..' segment")
    return "/".join(parts)


def _url_path(path: str) -> str:
    """Percent-encode each segment, so '#', '?' or '%' in a name reach the server as written."""
    return "/".join(quote(p, safe="") for p in normalize_path(path).split("/")) if path.strip("/") else ""


@dataclass(frozen=True)
class Secret:
    """What a KV path holds. ``version`` 0 means nothing there (v2) or unknown (v1)."""

    path: str
    data: dict[str, Any] | None = field(repr=False)
    version: int = 0

    @property
    def exists(self) -> bool:
        return self.data is not None


def detect_kv_version(client: hvac.Client, mount: str) -> int:
    """1 or 2, from the mount's options. Needs some capability on the mount."""
    try:
        resp = client.adapter.get(f"/v1/sys/internal/ui/mounts/{mount.strip('/')}")
    except Exception as exc:  # noqa: BLE001 - mapped to a message below
        if isinstance(exc, (hvac.exceptions.Forbidden, hvac.exceptions.InvalidPath)) and not connection.token_refused(exc):
            raise ConfigError(
                f"cannot read the KV version of mount {mount!r} (no access to it, or no such mount: "
                f"sys/internal/ui/mounts/{mount.strip('/')} answers to any capability on the mount); "
                "pass --kv-version 1 or 2"
            ) from None
        raise describe(exc, f"look up mount {mount}") from None
    data = resp.get("data", {}) if isinstance(resp, dict) else {}
    if data.get("type") not in (None, "kv", "generic"):
        raise ConfigError(f"mount {mount!r} is a {data.get('type')} engine, not KV")
    version = str((data.get("options") or {}).get("version") or "1")
    return 2 if version == "2" else 1


def resolve_kv_version(client: hvac.Client, mount: str, configured: int | None) -> int:
    """The KV version to use: ``configured`` (``--kv-version``, ``kv.version``) when the mount's
    options cannot be read, else the mount's own, and a configured one that contradicts it is
    refused (exit 2): a v2 write to a v1 mount lands as a junk secret under ``<mount>/data/``."""
    if configured is None:
        return detect_kv_version(client, mount)
    try:
        actual = detect_kv_version(client, mount)
    except (ConfigError, VaultError):
        return configured  # options unreadable (no access): trust the flag, as documented
    if actual != configured:
        raise ConfigError(f"mount {mount.strip('/')!r} is KV v{actual}, but the KV version given (--kv-version or "
                          f"kv.version) is {configured}: drop it or give {actual}")
    return actual


class KV:
    """Read and write whole secrets on one KV mount (v1 or v2)."""

    def __init__(self, client: hvac.Client, mount: str, version: int) -> None:
        if version not in (1, 2):
            raise ConfigError("KV version must be 1 or 2")
        self.client, self.mount, self.version = client, mount.strip("/"), version

    def read(self, path: str) -> Secret:
        path = normalize_path(path)
        url = _url_path(path)
        try:
            if self.version == 2:
                resp = self.client.adapter.get(f"/v1/{self.mount}/data/{url}")
                body = resp["data"]
                meta = body.get("metadata") or {}
                _remember_values(body.get("data"))
                # A deleted or destroyed latest version reads as absent but keeps its number,
                # which check-and-set must be given.
                return Secret(path, body.get("data"), int(meta.get("version") or 0))
            resp = self.client.adapter.get(f"/v1/{self.mount}/{url}")
            _remember_values(resp["data"])
            return Secret(path, resp["data"], 0)
        except hvac.exceptions.InvalidPath as exc:
            if self.version == 2 and exc.json and isinstance(exc.json.get("data"), dict):
                # 404 with a body: the latest version was deleted.
                meta = exc.json["data"].get("metadata") or {}
                return Secret(path, None, int(meta.get("version") or 0))
            return Secret(path, None, 0)
        except Exception as exc:  # noqa: BLE001
            raise describe(exc, f"read {self.mount}/{path}", needs=f"'read' on {self._policy_path(path)}") from None

    def list(self, folder: str) -> list[str] | None:
        """Names directly under ``folder`` (sub-folders end in ``/``); [] when empty,
        None when the token may not list it."""
        folder = normalize_path(folder)
        enc = _url_path(folder)
        url = f"/v1/{self.mount}/metadata/{enc}" if self.version == 2 else f"/v1/{self.mount}/{enc}"
        try:
            resp = self.client.adapter.list(url)
        except hvac.exceptions.InvalidPath:
            return []
        except hvac.exceptions.Forbidden:
            return None
        except Exception as exc:  # noqa: BLE001
            raise describe(exc, f"list {self.mount}/{folder}") from None
        return list((resp or {}).get("data", {}).get("keys", []))

    def write(self, path: str, data: dict[str, Any], *, cas: int | None = None) -> int:
        """Write the whole secret. On v2 with ``cas`` the write fails with
        :class:`Conflict` if the current version is not ``cas`` (0: must not exist).
        Returns the new version (v2) or 0 (v1)."""
        path = normalize_path(path)
        url = _url_path(path)
        _remember_values(data)
        try:
            if self.version == 2:
                body: dict[str, Any] = {"data": data}
                if cas is not None:
                    body["options"] = {"cas": cas}
                resp = self.client.adapter.post(f"/v1/{self.mount}/data/{url}", json=body)
                version = ((resp or {}).get("data") or {}).get("version") if isinstance(resp, dict) else None
                if version is None:
                    # Accepted, but not answered as KV v2 answers: a v1 mount stored it at data/<path>.
                    raise OutcomeUnknown(f"write {self.mount}/{path}: the server accepted the write but did not answer "
                                         f"as KV v2 does (is mount {self.mount!r} KV v1? then --kv-version 1); it may "
                                         f"have landed at {self.mount}/data/{path}")
                return int(version)
            self.client.adapter.post(f"/v1/{self.mount}/{url}", json=data)
            return 0
        except OutcomeUnknown:
            raise
        except hvac.exceptions.InvalidRequest as exc:
            if any("check-and-set" in str(e) for e in (exc.errors or [])):
                raise Conflict(f"{self.mount}/{path} changed since it was read (check-and-set failed)") from None
            raise describe(exc, f"write {self.mount}/{path}") from None
        except Exception as exc:  # noqa: BLE001
            raise describe(exc, f"write {self.mount}/{path}",
                           needs=f"'create' and 'update' on {self._policy_path(path)}") from None

    def _policy_path(self, path: str) -> str:
        return f"{self.mount}/data/{path}" if self.version == 2 else f"{self.mount}/{path}"

    def policy_paths(self, path: str) -> dict[str, list[str]]:
        """The policy paths (and capabilities) that read ``path`` on this mount."""
        path = normalize_path(path)
        if self.version == 2:
            return {f"{self.mount}/data/{path}": ["read"], f"{self.mount}/metadata/{path}": ["read", "list"]}
        return {f"{self.mount}/{path}": ["read", "list"]}


def _remember_values(data: Any) -> None:
    """Every value read from or written to KV is scrubbed from the logs for the rest of the process."""
    if isinstance(data, dict):
        for value in data.values():
            remember_secret(value)


def _lease_url(action: str, lease_id: str) -> str:
    return f"/v1/sys/leases/{action}/{quote(lease_id.strip('/'), safe='/')}"


def renew_lease(client: hvac.Client, lease_id: str, increment: int | None = None) -> dict[str, Any]:
    """Renew a lease with its id in the URL (``sys/leases/renew/<lease id>``), not in the body:
    ACLs match the request path, so the daemon's policy can allow renewals of the leases that
    come from the paths it reads (``sys/leases/renew/database/creds/api/*``) and no others.
    A policy written for the body form (``sys/leases/renew``, as in ``default``) still works:
    on *permission denied* the body form is tried once."""
    body = {"increment": increment} if increment else {}
    try:
        resp = client.adapter.put(_lease_url("renew", lease_id), json=body)
    except hvac.exceptions.Forbidden:
        resp = client.adapter.put("/v1/sys/leases/renew", json={"lease_id": lease_id, **body})
    return resp if isinstance(resp, dict) else {}


def revoke_lease(client: hvac.Client, lease_id: str) -> None:
    """Revoke a lease, its id in the URL (see :func:`renew_lease`)."""
    try:
        client.adapter.put(_lease_url("revoke", lease_id), json={})
    except hvac.exceptions.Forbidden:
        client.adapter.put("/v1/sys/leases/revoke", json={"lease_id": lease_id})


def read_source(kv: KV, path: str, *, service: str, optional: bool = False) -> Secret:
    """Read a service's KV secret; a missing one raises :class:`SourceMissing` unless ``optional``.

    The one place that decides what "missing" means, for ``render`` and the daemon alike.
    """
    secret = kv.read(path)
    if secret.data is None and not optional:
        raise SourceMissing(service, f"{kv.mount}/{secret.path}")
    return secret
