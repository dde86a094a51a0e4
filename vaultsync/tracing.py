"""Optional OTLP traces for ``migrate`` and ``render`` runs.

On only when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``)
is set; then spans go to that collector over OTLP/HTTP. When off, nothing from
OpenTelemetry is imported and :func:`span` is a no-op context manager. Span
attributes are names and counts (mount, service, destination, result), never values.
Needs the ``otel`` extra: ``pip install 'vaultsync[otel]'``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator
from typing import Any

_provider: Any = None


_missing_warned = False


def enabled() -> bool:
    """Configured by the environment, and the ``otel`` extra is installed (else a warning, once)."""
    global _missing_warned
    if not (os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        return False
    if importlib.util.find_spec("opentelemetry.sdk") is None:
        if not _missing_warned:
            _missing_warned = True
            from vaultsync.logging import get_logger

            get_logger().warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but the otel extra is not installed: no traces")
        return False
    return True


def _tracer() -> Any:
    global _provider
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from vaultsync import __version__

    if _provider is None:
        _provider = TracerProvider(resource=Resource.create({"service.name": "vaultsync", "service.version": __version__}))
        _provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return _provider.get_tracer("vaultsync")


@contextlib.contextmanager
def span(name: str, **attributes: Any) -> Iterator[Any]:
    """A span when tracing is on (set more attributes with ``s.set_attribute``), else None."""
    if not enabled():
        yield None
        return
    with _tracer().start_as_current_span(name, attributes={k: v for k, v in attributes.items() if v is not None}) as s:
        yield s


def set_attributes(s: Any, **attributes: Any) -> None:
    if s is not None:
        for key, value in attributes.items():
            s.set_attribute(key, value)


def shutdown() -> None:
    """Flush spans before the process exits."""
    if _provider is not None:
        _provider.shutdown()
