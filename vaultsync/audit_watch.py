"""`vaultsync audit --watch`: tail the audit log and export counters for Prometheus.

The alert VaultsyncForeignSecretAccess (compose/prometheus/rules/vaultsync.yml) is built on
``vaultsync_audit_denied_requests_total``. Labels stay bounded: ``service`` is a service from the
config, the daemon's role, or ``unknown`` (the identity as logged is in the one-shot report, never a
label); ``kind`` and ``reason`` are fixed sets. No path is ever a label.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, start_http_server

from vaultsync import audit
from vaultsync.audit_source import follow

UNKNOWN = "unknown"


class AuditMetrics:
    def __init__(self, services: Iterable[str], registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.known = set(services)
        self.denied = Counter("vaultsync_audit_denied_requests", "Requests the server refused with permission denied, by service (from the audit log).", ["service"], registry=r)
        self.operations = Counter("vaultsync_audit_operations", "Audited operations by service and kind (reads, writes, logins, renewals...).", ["service", "kind"], registry=r)
        self.skipped = Counter("vaultsync_audit_skipped_lines", "Audit log lines skipped (not JSON, truncated, unknown type or operation, rotated).", ["reason"], registry=r)
        # Exported at 0 from the start, so increase() sees the first denial and the series is never absent.
        for name in [*sorted(self.known), UNKNOWN]:
            self.denied.labels(name)

    def label(self, identity: str) -> str:
        return identity if identity in self.known else UNKNOWN

    def on_event(self, event: audit.Event) -> None:
        service = self.label(event.identity)
        self.operations.labels(service, event.kind).inc()
        if event.kind == audit.DENIED:
            self.denied.labels(service).inc()


class _CountingAnomalies(audit.Anomalies):
    def __init__(self, metrics: AuditMetrics) -> None:
        super().__init__()
        self._metrics = metrics

    def add(self, kind: str, where: str) -> None:
        super().add(kind, where)
        self._metrics.skipped.labels(kind).inc()


def watch(path: str, identities: audit.Identities, *, addr: str, stop: Callable[[], bool],
          poll: float = 1.0, from_start: bool = False) -> tuple[AuditMetrics, audit.Aggregator]:
    """Serve /metrics on ``addr`` (host:port) and tail ``path`` until ``stop()``."""
    metrics = AuditMetrics(set(identities.roles.values()) | set(identities.display_names.values()))
    # Only per-identity counts matter here: one path per identity keeps the report from growing.
    agg = audit.Aggregator(identities, max_keys=0, on_event=metrics.on_event)
    agg.report.anomalies = _CountingAnomalies(metrics)
    host, _, port = addr.rpartition(":")
    server, thread = start_http_server(int(port), addr=host or "127.0.0.1", registry=metrics.registry)
    try:
        follow(path, agg, poll=poll, from_start=from_start, stop=stop)
    finally:
        server.shutdown()
        thread.join(timeout=5)
    return metrics, agg


def stop_on_signals() -> Callable[[], bool]:
    """A ``stop`` callable that turns true on SIGTERM/SIGINT."""
    import signal

    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    return done.is_set
