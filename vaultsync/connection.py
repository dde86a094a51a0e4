"""How vaultsync reaches the server: address, TLS, the token's source, and what a failure means.

The rules follow the Vault CLI (``api/client.go`` ``ReadEnvironment``/``ConfigureTLS``):
``VAULT_CACERT`` wins over ``VAULT_CAPATH``; a client certificate needs its key;
``VAULT_TLS_SERVER_NAME`` is both the SNI name and the name checked in the server's
certificate. Every file is checked before the first request, so a missing CA is its
own error naming the file rather than a TLS failure.

hvac's adapter uses the ``verify``/``cert`` of a ``requests.Session`` handed to it,
not its own ``verify=`` argument: TLS is configured on the session and its pool.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

import hvac.exceptions
import requests
import urllib3
from requests.adapters import HTTPAdapter

from vaultsync.config import VaultSettings
from vaultsync.errors import ConfigError, TokenInvalid, VaultError
from vaultsync.logging import get_logger, register_secret

log = get_logger()


# --- address and TLS files -------------------------------------------------------------------------


def check_addr(addr: str) -> str:
    """The server address as a base URL. What requests would refuse later with an opaque error (no
    scheme, no host, a bad port or [IPv6] literal, a query) is a config error naming the address now."""
    addr = addr.strip()
    shown = _without_userinfo(addr)
    try:
        parts = urlsplit(addr if "://" in addr else f"https://{addr}")
    except ValueError:
        raise ConfigError(f"server address {shown!r} is not a valid URL (check the [IPv6] brackets)") from None
    register_secret(parts.password)  # user:password@ in an address: never in a log line or message
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise ConfigError(f"server address {shown!r} has an invalid port") from None
    problem = _addr_problem(addr, parts)
    if problem:
        raise ConfigError(f"server address {shown!r} {problem}")
    # A path is kept (a reverse proxy may serve the API under a prefix), as in the Vault CLI.
    return addr.rstrip("/")


def _addr_problem(addr: str, parts: SplitResult) -> str | None:
    if "://" not in addr:
        return f"must start with https:// or http:// (write it as https://{_without_userinfo(addr)})"
    if parts.scheme not in ("http", "https"):
        return "must start with https:// or http://"
    if not parts.hostname or any(c.isspace() for c in parts.hostname):
        return "has no valid host name"
    if parts.query or parts.fragment or "?" in addr or "#" in addr:
        return "must not hold a query (?) or fragment (#)"
    if parts.path.rstrip("/").endswith("/v1"):
        return "must not end in /v1: vaultsync adds it (give the server's address, e.g. https://vault.example.com:8200)"
    return None


def _without_userinfo(url: str) -> str:
    """``url`` without ``user:password@``: a password in an address must not reach a message."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)?[^/?#@]*@", r"\1", url.strip())


def _require_file(path: str, what: str) -> None:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except IsADirectoryError:
        raise ConfigError(f"{path}: the {what} is a folder, not a file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what}: {exc.strerror}") from None


def _ca_context_from_folder(folder: str) -> ssl.SSLContext:
    """Every PEM certificate in ``folder`` and its sub-folders (as the Vault CLI walks VAULT_CAPATH:
    any file name, no OpenSSL hash links needed). Unlike it, a file holding no certificate (a README)
    is skipped rather than an error."""
    if not os.path.isdir(folder):
        raise ConfigError(f"{folder}: the CA folder (capath) does not exist or is not a folder")
    # A bare client context: no system roots, the Vault CLI trusts only the folder.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    loaded = 0
    for entry in sorted(Path(folder).rglob("*")):
        if not entry.is_file():
            continue
        try:
            text = entry.read_text(encoding="ascii", errors="strict")
        except (OSError, UnicodeDecodeError):
            continue
        if "-----BEGIN CERTIFICATE-----" not in text:
            continue
        try:
            ctx.load_verify_locations(cadata=text)
            loaded += 1
        except ssl.SSLError:
            raise ConfigError(f"{entry}: not a valid PEM certificate (in the CA folder)") from None
    if not loaded:
        raise ConfigError(f"{folder}: the CA folder holds no PEM certificate")
    return ctx


@dataclass(frozen=True)
class TLSOptions:
    """What the session and its connection pool need: ``verify`` as requests takes it,
    ``cert`` (client certificate, key), and pool arguments (CA folder context, server name)."""

    verify: bool | str
    cert: tuple[str, str] | None
    pool_kw: dict[str, Any]


def tls_options(vault: VaultSettings) -> TLSOptions:
    verify, pool_kw = _server_verification(vault)
    if vault.tls_server_name:
        pool_kw["server_hostname"] = vault.tls_server_name  # SNI
        pool_kw["assert_hostname"] = vault.tls_server_name  # and the name the certificate must carry
    return TLSOptions(verify, _client_certificate(vault), pool_kw)


def _server_verification(vault: VaultSettings) -> tuple[bool | str, dict[str, Any]]:
    """``verify`` for requests, and the pool's CA-folder context: a CA file wins over a folder;
    with neither, the system's CAs."""
    if not vault.tls_verify:
        return False, {}
    if vault.cacert:
        _require_file(vault.cacert, "CA certificate file (cacert)")
        try:
            ssl.create_default_context(cafile=vault.cacert)
        except ssl.SSLError:
            raise ConfigError(f"{vault.cacert}: the CA certificate file (cacert) holds no valid PEM certificate") from None
        return vault.cacert, {}
    if vault.capath:
        # requests only checks that the folder exists; the context holds its certificates.
        return vault.capath, {"ssl_context": _ca_context_from_folder(vault.capath)}
    return True, {}


def _client_certificate(vault: VaultSettings) -> tuple[str, str] | None:
    if not (vault.client_cert or vault.client_key):
        return None
    if not (vault.client_cert and vault.client_key):
        raise ConfigError("a client certificate needs both client_cert and client_key "
                          "(VAULT_CLIENT_CERT and VAULT_CLIENT_KEY)")
    _require_file(vault.client_cert, "client certificate (client_cert)")
    _require_file(vault.client_key, "client key (client_key)")
    asked: list[bool] = []

    def no_passphrase() -> bytes:
        # Given a callback, OpenSSL asks it instead of prompting on the terminal (or failing with
        # EINVAL without one); the TLS stack that opens the connections has no way to pass one.
        asked.append(True)
        return b""

    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(vault.client_cert, vault.client_key, password=no_passphrase)
    except (ssl.SSLError, OSError, ValueError):
        if asked:
            raise ConfigError(f"{vault.client_key}: cannot read the client key (encrypted keys are not supported: "
                              "store it decrypted, mode 0600, e.g. `openssl pkey -in KEY -out KEY.plain`)") from None
        raise ConfigError(f"{vault.client_cert}, {vault.client_key}: not a PEM certificate and its matching key") from None
    return vault.client_cert, vault.client_key


def configure_session(session: requests.Session, adapter: HTTPAdapter, vault: VaultSettings) -> None:
    """Apply the TLS settings to ``session`` and ``adapter``'s pool (any HTTPAdapter, also the
    daemon's counting one)."""
    tls = tls_options(vault)
    session.verify = tls.verify
    session.cert = tls.cert
    # urllib3 drops these keywords for http:// pools, so they only ever touch TLS connections.
    adapter.poolmanager.connection_pool_kw.update(tls.pool_kw)
    if not vault.tls_verify:
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)  # else one per request
        addr = _without_userinfo(vault.addr)
        _warn_once(f"TLS verification is OFF for {addr} (tls-skip-verify / VAULT_SKIP_VERIFY / tls_verify = false): "
                   "not for production", "tls verification disabled", addr=addr)
    if tls.cert:
        _warn_if_world_readable(tls.cert[1])


def _warn_if_world_readable(key: str) -> None:
    """A warning, not a refusal: the Vault CLI accepts such a key, and a Kubernetes secret volume
    is world-readable unless its defaultMode says otherwise."""
    try:
        mode = os.stat(key).st_mode & 0o777
    except OSError:
        return
    if mode & 0o004:
        _warn_once(f"the client key {key} is readable by every user (mode {mode:o}): chmod 600 it",
                   "client key readable by every user", file=key, mode=f"{mode:o}")


_warned: set[str] = set()


def _warn_once(message: str, event: str, **context: str) -> None:
    """Once per process and message: on stderr (a person runs the command) and in the log."""
    if message in _warned:
        return
    _warned.add(message)
    print(f"warning: {message}", file=sys.stderr, flush=True)
    log.warning(event, **context)


# --- what a failure means --------------------------------------------------------------------------


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and everything it wraps (requests -> urllib3 -> ssl/socket), breadth first."""
    seen: list[BaseException] = []
    queue: list[Any] = [exc]
    while queue:
        cur = queue.pop(0)
        if not isinstance(cur, BaseException) or any(cur is s for s in seen):
            continue
        seen.append(cur)
        queue.extend([getattr(cur, "reason", None), cur.__cause__, cur.__context__, *cur.args])
    return seen


def server_of(exc: BaseException) -> str:
    url = getattr(getattr(exc, "request", None), "url", None) or getattr(exc, "url", None)
    if not url:
        return "the server"
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]  # never a user:password of the address
    return f"{parts.scheme}://{host}" if host else "the server"


# OpenSSL X509_V_ERR_* codes (x509_vfy.h); 7 (signature failure): a CA of the same name did not sign it
_UNKNOWN_CA = {2, 7, 18, 19, 20, 21}
_NAME_MISMATCH = {62, 64}
_NOT_YET_VALID, _EXPIRED = 9, 10


def _explain_tls(exc: BaseException, server: str) -> str:
    causes = _causes(exc)
    for c in causes:
        if type(c).__name__ == "CertificateError":  # urllib3's own check of VAULT_TLS_SERVER_NAME
            return (f"TLS: the certificate of {server} is not valid for the name asked for ({c}); "
                    "connect by a name the certificate carries, or set VAULT_TLS_SERVER_NAME to one")
        if isinstance(c, ssl.SSLCertVerificationError):
            code = c.verify_code
            if code in _UNKNOWN_CA:
                return (f"TLS: the certificate of {server} is signed by a CA this client does not trust "
                        "(set VAULT_CACERT/--cacert to the CA file, or VAULT_CAPATH to a folder of CA files)")
            if code in _NAME_MISMATCH:
                return (f"TLS: the certificate of {server} is not valid for the name asked for ({c.verify_message}); "
                        "connect by a name the certificate carries, or set VAULT_TLS_SERVER_NAME to one")
            if code == _EXPIRED:
                return f"TLS: the certificate of {server} has expired ({c.verify_message}); the server needs a new one"
            if code == _NOT_YET_VALID:
                return (f"TLS: the certificate of {server} is not valid yet ({c.verify_message}); "
                        "check the clock of this host and of the server")
            return f"TLS: the certificate of {server} was refused: {c.verify_message}"
    text = " ".join(str(c) for c in causes)
    if any(r in text for r in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "HTTP_REQUEST", "PACKET_LENGTH_TOO_LONG")):
        return f"TLS: {server} does not speak TLS (use http:// for a plain-HTTP server)"
    if any(r in text for r in ("CERTIFICATE_REQUIRED", "ALERT_BAD_CERTIFICATE", "ALERT_UNKNOWN_CA", "ALERT_HANDSHAKE_FAILURE")):
        return (f"TLS: {server} refused the client certificate or asked for one "
                "(set VAULT_CLIENT_CERT and VAULT_CLIENT_KEY to a certificate its CA signed)")
    return f"TLS handshake with {server} failed ({_tls_reason(causes)}): is this the server's API port?"


def _tls_reason(causes: list[BaseException]) -> str:
    for c in causes:
        if isinstance(c, ssl.SSLEOFError) or "UNEXPECTED_EOF" in str(c):
            return "the server closed the connection during the handshake"
    reasons = [c.reason for c in causes if isinstance(c, ssl.SSLError) and getattr(c, "reason", None)]
    return reasons[0] if reasons else "no reason given"


def _os_error(exc: BaseException) -> str:
    for c in _causes(exc):
        if isinstance(c, socket.gaierror):
            return f"name lookup failed: {c.strerror or c}"
        if isinstance(c, OSError) and c.errno and not isinstance(c, ssl.SSLError):
            return c.strerror or errno.errorcode.get(c.errno, str(c.errno))
    for c in _causes(exc):
        if isinstance(c, (ConnectionError, EOFError)) or "RemoteDisconnected" in type(c).__name__:
            return "the connection was closed by the server"
    return type(exc).__name__


def explain_transport(exc: BaseException) -> str | None:
    """One line for a failure below HTTP (or a plain-HTTP request to a TLS port), naming the server; None otherwise."""
    server = server_of(exc)
    if isinstance(exc, requests.exceptions.SSLError):
        return _explain_tls(exc, server)
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return f"cannot reach the server at {server}: connection timed out"
    if isinstance(exc, requests.exceptions.ConnectionError):
        if any(isinstance(c, ssl.SSLError) for c in _causes(exc)):
            return _explain_tls(exc, server)
        return f"cannot reach the server at {server}: {_os_error(exc)}"
    if isinstance(exc, requests.exceptions.Timeout):
        return f"the server at {server} did not answer in time"
    if isinstance(exc, (requests.exceptions.InvalidSchema, requests.exceptions.MissingSchema, requests.exceptions.InvalidURL)):
        return "the server address is not an http:// or https:// URL"
    if isinstance(exc, hvac.exceptions.InvalidRequest) and "HTTP request to an HTTPS server" in f"{exc.args[0]} {exc.text}":
        return f"{server} speaks HTTPS, not plain HTTP: use https:// in the address (VAULT_ADDR)"
    return None


def token_refused(exc: BaseException) -> bool:
    """A 403 that says the token itself is no good, not just a missing policy. Vault 1.14 answers
    "permission denied" for an unknown token too; on lookup-self/renew-self (which the default
    policy grants every token) that means the token is invalid, expired or revoked."""
    if not isinstance(exc, hvac.exceptions.Forbidden):
        return False
    text = f"{' '.join(exc.errors or [])} {exc.args[0] if exc.args else ''}".lower()
    own = any(p in str(exc.url or "") for p in ("auth/token/lookup-self", "auth/token/renew-self"))
    return own or "invalid token" in text or "token expired" in text


# --- preflight ---------------------------------------------------------------------------------------


def _token_known(client: hvac.Client) -> bool:
    """Does the server know this token at all? ``sys/internal/ui/mounts`` answers any valid token
    (listing what it may see) and refuses an unknown one: Vault 1.14 says "permission denied" to both
    an unknown token and a valid one without lookup-self, so the message cannot tell them apart."""
    try:
        client.adapter.get("/v1/sys/internal/ui/mounts")
        return True
    except hvac.exceptions.Forbidden:
        return False
    except Exception:  # noqa: BLE001 - any other answer: not a token problem
        return True


def preflight(client: hvac.Client) -> dict[str, Any]:
    """``auth/token/lookup-self`` before the first real request, so the first failure says what
    is wrong: unreachable, TLS, bad token, or a token without permission."""
    from vaultsync.vault import describe

    try:
        data = client.adapter.get("/v1/auth/token/lookup-self")
    except hvac.exceptions.Forbidden as exc:
        if not _token_known(client):
            raise TokenInvalid(
                f"invalid token: the token was refused by {server_of(exc)}: it is invalid, expired or revoked "
                "(set VAULT_TOKEN, vault.token_file, or `vault login` again)"
            ) from None
        # Valid, but created without the default policy: it may not look itself up. Not fatal:
        # the first real request names what it lacks.
        log.debug("token may not look itself up", path="auth/token/lookup-self", capability="read")
        return {}
    except hvac.exceptions.InvalidPath:  # every token may look itself up: nothing there is Vault's API
        raise VaultError(f"no Vault API at {_without_userinfo(client.adapter.base_uri)}: auth/token/lookup-self "
                         "is not found there (check the path in the address)") from None
    except Exception as exc:  # noqa: BLE001 - one clean message per cause
        raise describe(exc, "look up the token (auth/token/lookup-self)") from None
    info = (data or {}).get("data") or {} if isinstance(data, dict) else {}
    log.debug("token checked", policies=list(info.get("policies") or ()), ttl=info.get("ttl"),
              renewable=info.get("renewable"))
    return info

