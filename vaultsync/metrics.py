"""Prometheus metrics and the small HTTP server for /metrics, /healthz, /readyz and /status.

Names and labels are a contract with the alert rules (compose/prometheus/rules) and the
dashboard. Labels are bounded: service and secret names come from the config, the
destination is the rendered file's name; never a lease id, a path from the server or a value.
Every series that is known up front is exported at 0 so that it is never absent.
"""

from __future__ import annotations

import errno
import hmac
import ipaddress
import json
import socket
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from requests.adapters import HTTPAdapter

from vaultsync import __version__
from vaultsync.errors import ConfigError, VaultsyncError
from vaultsync.logging import register_secret

#: source_missing: the service's KV secret is deleted or was never written; the file is kept.
RENDER_RESULTS = ("success", "unchanged", "failure", "source_missing")


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.lease_expiry = Gauge("vaultsync_lease_expiry_timestamp_seconds", "When the current lease of a dynamic secret expires (unix time).", ["service", "secret"], registry=r)
        self.token_expiry = Gauge("vaultsync_token_expiry_timestamp_seconds", "When the daemon's token expires (unix time; 0: never).", registry=r)
        # What "healthy" means for each lease and the token, for the alert rules: the TTL the last
        # successful issue/renewal granted and when it planned the next one. Neither moves on a
        # failed attempt, so a stalled lease shows an ever older due time.
        self.lease_ttl = Gauge("vaultsync_lease_ttl_seconds", "Lease duration granted by the last successful issue or renewal (0: never expires).", ["service", "secret"], registry=r)
        self.lease_due = Gauge("vaultsync_lease_renewal_due_timestamp_seconds", "When the last successful issue or renewal planned the next renewal or re-issue (unix time; 0: none planned).", ["service", "secret"], registry=r)
        self.token_ttl = Gauge("vaultsync_token_ttl_seconds", "Token TTL granted by the last successful login or renewal (0: never expires).", registry=r)
        self.token_due = Gauge("vaultsync_token_renewal_due_timestamp_seconds", "When the last successful login or renewal planned the next renewal or re-login (unix time; 0: none planned).", registry=r)
        self.renewals = Counter("vaultsync_renewals", "Token and lease renewals.", ["kind", "result"], registry=r)
        self.logins = Counter("vaultsync_logins", "Logins to the server.", ["method", "result"], registry=r)
        self.renders = Counter("vaultsync_render", "Renders of a destination file (result: success, unchanged, failure, source_missing).", ["service", "destination", "result"], registry=r)
        self.last_render_success = Gauge("vaultsync_last_render_success_timestamp_seconds", "Last time a destination was rendered successfully (written or already up to date).", ["service", "destination"], registry=r)
        self.rotations = Counter("vaultsync_rotations", "Rotations of secrets vaultsync owns (result: success, skipped, failure).", ["service", "result"], registry=r)
        self.secret_version = Gauge("vaultsync_secret_version", "KV version of a service's secret as last read.", ["service", "secret"], registry=r)
        self.vault_up = Gauge("vaultsync_vault_up", "1 when the last request reached the server, else 0.", registry=r)
        self.requests = Counter("vaultsync_vault_requests", "HTTP requests sent to the server (result: ok, error).", ["result"], registry=r)
        self.hooks = Counter("vaultsync_hooks", "Change hooks run after a render (result: success, failure).", ["service", "destination", "result"], registry=r)
        self.job_lateness = Histogram("vaultsync_job_lateness_seconds", "How late a scheduled job started (kind: token, lease, kv, render, rotate, ...).", ["kind"], buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=r)
        self.job_crashes = Counter("vaultsync_job_crashes", "Jobs that raised an unexpected error, or whose run was skipped while it still ran (each is run again).", ["kind"], registry=r)
        Gauge("vaultsync_build_info", "vaultsync version.", ["version"], registry=r).labels(__version__).set(1)
        for kind in ("token", "lease"):
            for result in ("success", "failure"):
                self.renewals.labels(kind, result)
        for result in ("ok", "error"):
            self.requests.labels(result)
        for kind in ("token", "lease", "kv", "render", "rotate"):
            self.job_lateness.labels(kind)
            self.job_crashes.labels(kind)

    def record_lease(self, service: str, secret: str, *, ttl: float, expires_at: float | None, due: float | None) -> None:
        """A lease was issued or renewed: its expiry, granted TTL and planned next action."""
        self.lease_expiry.labels(service, secret).set(expires_at if ttl and expires_at else 0)
        self.lease_ttl.labels(service, secret).set(ttl or 0)
        self.lease_due.labels(service, secret).set(due if ttl and due else 0)

    def record_token(self, *, ttl: float, expires_at: float | None, due: float | None) -> None:
        """The token was issued (login) or renewed."""
        self.token_expiry.set(expires_at if ttl and expires_at else 0)
        self.token_ttl.set(ttl or 0)
        self.token_due.set(due if ttl and due else 0)

    def prime(self, method: str, services: Iterable[Any]) -> None:
        """Create every known series at 0 so alerts on rate() and absent() behave from the start."""
        for result in ("success", "failure"):
            self.logins.labels(method, result)
        for svc in services:
            for result in ("success", "skipped", "failure"):
                self.rotations.labels(svc.name, result)
            for dest in svc.destinations:
                for result in RENDER_RESULTS:
                    self.renders.labels(svc.name, dest.name, result)

    def forget_service(self, svc: Any) -> None:
        """Drop a removed service's series (after a reload), so stale expiries cannot alert."""
        for name in svc.dynamic:
            for gauge in (self.lease_expiry, self.lease_ttl, self.lease_due):
                _remove(gauge, svc.name, name)
        _remove(self.secret_version, svc.name, "kv")
        for dest in svc.destinations:
            _remove(self.last_render_success, svc.name, dest.name)
            for result in RENDER_RESULTS:
                _remove(self.renders, svc.name, dest.name, result)

    def counting_adapter(self, pool_size: int, on_result: Callable[[int | None], None] | None = None) -> HTTPAdapter:
        """An HTTPAdapter that counts every request and keeps vault_up current. ``on_result``
        sees each response's status (None: no answer), for the daemon's recovery path."""
        metrics = self
        observe = on_result or (lambda _status: None)

        class CountingAdapter(HTTPAdapter):
            def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
                try:
                    response = super().send(request, *args, **kwargs)
                except requests.RequestException:
                    metrics.requests.labels("error").inc()
                    metrics.vault_up.set(0)
                    observe(None)
                    raise
                ok = response.status_code < 500  # 5xx: down, sealed or standby
                metrics.requests.labels("ok" if ok else "error").inc()
                metrics.vault_up.set(1 if ok else 0)
                observe(response.status_code)
                return response

        return CountingAdapter(pool_connections=1, pool_maxsize=pool_size)


def _remove(metric: Any, *labels: str) -> None:
    try:
        metric.remove(*labels)
    except KeyError:
        pass


#: How long one connection may take, all of it (a scrape takes milliseconds; a client that
#: sends half a request and waits must not hold a worker), and how many are served at once.
CONNECTION_TIMEOUT = 5.0
MAX_WORKERS = 8


class _BoundedHTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with at most ``max_workers`` connections in flight: one more is
    closed at once (a scraper retries) instead of getting a thread of its own."""

    daemon_threads = True

    def __init__(self, addr: tuple[str, int], handler: type[BaseHTTPRequestHandler], max_workers: int) -> None:
        self._slots = threading.BoundedSemaphore(max_workers)
        super().__init__(addr, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away or was cut off is not news (socketserver would print a
        traceback to stderr, outside the JSON log)."""


def _is_loopback(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or bool(mapped and mapped.is_loopback)


def read_status_token(path: str | None) -> str | None:
    """The bearer token that /status asks for, from ``daemon.status_token_file`` (None: not set)."""
    if not path:
        return None
    try:
        token = open(path, encoding="utf-8").read().strip()  # noqa: SIM115 - tiny file
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read daemon.status_token_file: {exc.strerror}") from None
    if len(token) < 16:
        raise ConfigError(f"{path}: daemon.status_token_file must hold a token of at least 16 characters")
    register_secret(token)
    return token


class HealthServer:
    """/metrics (Prometheus text), /healthz (alive), /readyz (authenticated and every
    destination rendered once), /status (JSON, no secrets, but paths and render errors: only
    to loopback clients, or to anyone with the bearer token when ``status_token`` is set).

    Each connection has ``timeout`` seconds in all, and at most ``max_workers`` are served
    at once."""

    def __init__(self, addr: str, metrics: Metrics, ready: Callable[[], bool], status: Callable[[], dict[str, Any]], *,
                 status_token: str | None = None, timeout: float = CONNECTION_TIMEOUT, max_workers: int = MAX_WORKERS) -> None:
        host, _, port = addr.rpartition(":")
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def setup(self) -> None:
                self.timeout = timeout  # each read and write (StreamRequestHandler applies it)
                super().setup()
                # ... and the whole connection: a client trickling bytes is cut off too.
                self._expired = threading.Event()
                self._deadline = threading.Timer(timeout, self._expire)
                self._deadline.daemon = True
                self._deadline.start()

            def _expire(self) -> None:
                self._expired.set()  # what was read so far is not a request to answer
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

            def finish(self) -> None:
                self._deadline.cancel()
                try:
                    super().finish()
                except OSError:
                    pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self._expired.is_set():
                    self.close_connection = True
                    return
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    outer._send(self, 200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    outer._send(self, 200, b"ok\n", "text/plain")
                elif path == "/readyz":
                    ok = ready()
                    outer._send(self, 200 if ok else 503, b"ready\n" if ok else b"not ready\n", "text/plain")
                elif path == "/status":
                    if outer._status_allowed(self):
                        outer._send(self, 200, json.dumps(status(), indent=2).encode(), "application/json")
                    else:
                        outer._send(self, 403, b"forbidden: /status answers loopback clients, or a bearer token "
                                    b"(daemon.status_token_file)\n", "text/plain")
                else:
                    outer._send(self, 404, b"not found\n", "text/plain")

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet: scrapes are not news
                pass

        self._status_token = status_token
        try:
            self.server = _BoundedHTTPServer((host.strip("[]") or "127.0.0.1", int(port)), Handler, max_workers)
        except OSError as exc:
            busy = exc.errno == errno.EADDRINUSE
            raise VaultsyncError(
                f"cannot listen on {addr} for /metrics and /status: {exc.strerror}"
                + (" (another vaultsync daemon, or another program, already uses it: stop it, or give this one "
                   "--metrics-addr HOST:PORT / daemon.metrics_addr)" if busy else "")
            ) from None
        self.thread = threading.Thread(target=self.server.serve_forever, name="vaultsync-http", daemon=True)

    def _status_allowed(self, handler: BaseHTTPRequestHandler) -> bool:
        if self._status_token is not None:
            given = handler.headers.get("Authorization", "")
            return hmac.compare_digest(given.encode(), f"Bearer {self._status_token}".encode())
        return _is_loopback(str(handler.client_address[0]))

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, code: int, body: bytes, ctype: str) -> None:
        handler.send_response(code)
        handler.send_header("Content-Type", ctype)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    @property
    def address(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{host}:{port}"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
