"""Rotation and lease events as CloudEvents 1.0 JSON on Kafka (optional, ``[events] kafka = {...}``).

Pure core: :func:`cloud_event` builds one event from names, versions and times only; its
``data`` takes only the field names in :data:`DATA_FIELDS`, so a value, lease id or token cannot
be put in by mistake. Edge: :class:`KafkaEvents` hands events to an idempotent confluent-kafka
producer keyed by service (one service's events stay ordered on one partition). Delivery never
blocks the caller: the producer's own local queue is bounded (``queue_size``); when it is full
the event is dropped, counted (``vaultsync_events_dropped_total``) and logged. :meth:`close`
flushes, for SIGTERM.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

EVENT_TYPES = {
    "rotated": "io.vaultsync.secret.rotated",
    "lease_reissued": "io.vaultsync.lease.reissued",
    "render_failed": "io.vaultsync.render.failed",
    "login_failed": "io.vaultsync.login.failed",
    "kv_version_changed": "io.vaultsync.kv.version_changed",
}

# Names, versions, times and counts: nothing here can hold a secret.
DATA_FIELDS = frozenset({
    "service", "secret", "destination", "mount", "path", "version", "previous_version", "ttl_seconds",
    "issued_at", "expires_at", "renewable", "reason", "method", "attempt",
})

# Client settings passed through to librdkafka under the names it uses (security.protocol, sasl.*, ssl.*).
_PASSTHROUGH_PREFIXES = ("security.protocol", "sasl.", "ssl.", "client.id")


class EventConfigError(ValueError):
    pass


def cloud_event(kind: str, service: str, secret: str | None = None, *, source: str = "/vaultsync",
                now: datetime | None = None, event_id: str | None = None, **data: Any) -> dict[str, Any]:
    """One CloudEvents 1.0 event (structured mode, JSON)."""
    if kind not in EVENT_TYPES:
        raise ValueError(f"unknown event kind {kind!r}")
    unknown = sorted(set(data) - DATA_FIELDS)
    if unknown:
        raise ValueError(f"event data fields not allowed: {', '.join(unknown)}")
    for key, value in data.items():
        if not isinstance(value, (str, int, float, bool, type(None))):
            raise ValueError(f"event data field {key} must be a scalar")
    when = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return {
        "specversion": "1.0",
        "id": event_id or str(uuid.uuid4()),
        "source": source,
        "type": EVENT_TYPES[kind],
        "subject": f"{service}/{secret}" if secret else service,
        "time": when.isoformat().replace("+00:00", "Z"),
        "datacontenttype": "application/json",
        "data": {"service": service, **({"secret": secret} if secret else {}), **data},
    }


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap: str
    topic: str = "vaultsync.events"
    queue_size: int = 10000
    client: Mapping[str, str] = field(default_factory=dict, repr=False)  # may hold sasl.password

    @classmethod
    def from_table(cls, table: Mapping[str, Any], where: str = "[events] kafka") -> KafkaSettings:
        table = dict(table)
        bootstrap = table.pop("bootstrap", None)
        if not isinstance(bootstrap, str) or not bootstrap:
            raise EventConfigError(f"{where}: bootstrap (host:port[,host:port]) is required")
        topic = table.pop("topic", "vaultsync.events")
        queue_size = table.pop("queue_size", 10000)
        if not isinstance(topic, str) or not topic:
            raise EventConfigError(f"{where}: topic must be a non-empty string")
        if not isinstance(queue_size, int) or queue_size < 1:
            raise EventConfigError(f"{where}: queue_size must be a positive integer")
        bad = sorted(k for k in table if not k.startswith(_PASSTHROUGH_PREFIXES))
        if bad:
            raise EventConfigError(f"{where}: unknown setting(s) {', '.join(bad)} "
                                   "(allowed: bootstrap, topic, queue_size, security.protocol, sasl.*, ssl.*, client.id)")
        return cls(bootstrap, topic, queue_size, {k: str(v) for k, v in table.items()})

    def producer_config(self) -> dict[str, Any]:
        return {
            **self.client,
            "bootstrap.servers": self.bootstrap,
            "enable.idempotence": True,  # retries never duplicate or reorder within a partition
            "acks": "all",
            "queue.buffering.max.messages": self.queue_size,
            "linger.ms": 50,
        }


class KafkaEvents:
    """Publishes events without ever blocking; drops (counted, logged) when the local queue is full."""

    def __init__(self, settings: KafkaSettings, *, registry: Any = None,
                 log: Callable[..., None] | None = None, producer: Any = None) -> None:
        from prometheus_client import Counter

        self.settings = settings
        self._log = log or _default_log
        if producer is None:
            try:
                from confluent_kafka import Producer
            except ImportError:
                from vaultsync.errors import ConfigError

                raise ConfigError("events.kafka is set but the events extra is not installed: "
                                  "pip install 'vaultsync[events]'") from None
            producer = Producer(settings.producer_config())
        self._producer = producer
        kwargs = {"registry": registry} if registry is not None else {}
        self.dropped = Counter("vaultsync_events_dropped", "Events not delivered to Kafka (queue full or delivery failed).",
                               ["reason"], **kwargs)
        self.published = Counter("vaultsync_events_published", "Events delivered to Kafka.", **kwargs)

    def publish(self, event: Mapping[str, Any]) -> bool:
        """Queue one event; False (and counted) when it was dropped."""
        key = str(event["data"]["service"]).encode()
        try:
            self._producer.produce(self.settings.topic, key=key, value=json.dumps(event, separators=(",", ":")).encode(),
                                   on_delivery=self._delivered)
        except BufferError:
            self.dropped.labels("queue_full").inc()
            self._log("event dropped: queue full", type=event["type"], subject=event["subject"])
            return False
        self._producer.poll(0)  # serve delivery callbacks; never waits
        return True

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is None:
            self.published.inc()
        else:
            self.dropped.labels("delivery_failed").inc()
            self._log("event delivery failed", error=str(err.name() if hasattr(err, "name") else err))

    def close(self, timeout: float = 10.0) -> int:
        """Flush (on SIGTERM); returns how many events were still undelivered."""
        left = self._producer.flush(timeout)
        if left:
            self.dropped.labels("not_flushed").inc(left)
            self._log("events not flushed at exit", count=left)
        return left


def _default_log(message: str, **fields: Any) -> None:
    from vaultsync.logging import get_logger

    get_logger().warning(message, **fields)


class Emitter:
    """The daemon's side of the seam: ``emit`` never raises and never blocks; a no-op when not configured."""

    def __init__(self, sink: KafkaEvents | None = None) -> None:
        self._sink = sink

    @classmethod
    def from_settings(cls, settings: KafkaSettings | None, registry: Any = None) -> Emitter:
        return cls(KafkaEvents(settings, registry=registry) if settings is not None else None)

    def emit(self, kind: str, service: str, secret: str | None = None, **data: Any) -> None:
        if self._sink is None:
            return
        try:
            self._sink.publish(cloud_event(kind, service, secret, **data))
        except Exception as exc:  # noqa: BLE001 - events must never break renewals or renders
            _default_log("event not sent", kind=kind, service=service, error=type(exc).__name__)

    def close(self, timeout: float = 10.0) -> None:
        if self._sink is not None:
            self._sink.close(timeout)
