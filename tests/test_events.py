"""The events output: CloudEvents 1.0 JSON on a real Kafka broker (3.9.0, KRaft), keyed by service,
never a value, lease id or token; a full local queue drops (counted) instead of blocking."""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from datetime import datetime, timezone

import pytest
from confluent_kafka import Consumer
from prometheus_client import CollectorRegistry

from vaultsync.events import EventConfigError, KafkaEvents, KafkaSettings, cloud_event


def test_cloud_event_shape_and_subject():
    ev = cloud_event("rotated", "api", "db", version=3, previous_version=2,
                     now=datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc), event_id="e1")
    assert ev == {
        "specversion": "1.0", "id": "e1", "source": "/vaultsync", "type": "io.vaultsync.secret.rotated",
        "subject": "api/db", "time": "2026-01-02T03:04:05Z", "datacontenttype": "application/json",
        "data": {"service": "api", "secret": "db", "version": 3, "previous_version": 2},
    }


@pytest.mark.parametrize("field", ["value", "lease_id", "token", "password", "secret_id"])
def test_cloud_event_refuses_fields_that_could_hold_a_secret(field):
    with pytest.raises(ValueError, match=field):
        cloud_event("rotated", "api", "db", **{field: "x"})


def test_settings_errors_name_the_setting_never_its_value():
    with pytest.raises(EventConfigError, match="bootstrap"):
        KafkaSettings.from_table({"topic": "t"})
    with pytest.raises(EventConfigError, match="passwd") as err:
        KafkaSettings.from_table({"bootstrap": "h:1", "passwd": "hunter2-canary"})
    assert "hunter2-canary" not in str(err.value)
    s = KafkaSettings.from_table({"bootstrap": "h:1", "sasl.mechanism": "PLAIN", "sasl.password": "p-canary"})
    assert "p-canary" not in repr(s) and s.producer_config()["enable.idempotence"] is True


def _consume(bootstrap: str, topic: str, want: int, timeout: float = 60.0) -> list:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"g{secrets.token_hex(3)}",
                         "auto.offset.reset": "earliest"})
    got = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout
        while len(got) < want and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is not None and msg.error() is None:
                got.append(msg)
    finally:
        consumer.close()
    return got


def test_events_reach_kafka_keyed_by_service_in_order(kafka_broker):
    topic = f"vaultsync.events.{secrets.token_hex(4)}"
    registry = CollectorRegistry()
    out = KafkaEvents(KafkaSettings(kafka_broker.bootstrap, topic), registry=registry)
    for version in (1, 2, 3):
        assert out.publish(cloud_event("rotated", "api", "db", version=version))
    assert out.publish(cloud_event("lease_reissued", "web", "pg", ttl_seconds=30))
    assert out.close(60) == 0
    msgs = _consume(kafka_broker.bootstrap, topic, 4)
    assert len(msgs) == 4
    api = [json.loads(m.value()) for m in msgs if m.key() == b"api"]
    assert [e["data"]["version"] for e in api] == [1, 2, 3]  # one key, one partition: ordered
    assert len({m.partition() for m in msgs if m.key() == b"api"}) == 1
    web = [json.loads(m.value()) for m in msgs if m.key() == b"web"]
    assert web[0]["type"] == "io.vaultsync.lease.reissued" and web[0]["subject"] == "web/pg"
    assert registry.get_sample_value("vaultsync_events_published_total") == 4


def test_a_full_queue_drops_and_counts_instead_of_blocking(kafka_broker):
    registry = CollectorRegistry()
    logged = []
    out = KafkaEvents(KafkaSettings(kafka_broker.bootstrap, f"vaultsync.events.{secrets.token_hex(4)}", queue_size=1),
                      registry=registry, log=lambda msg, **f: logged.append(msg))
    started = time.monotonic()
    results = [out.publish(cloud_event("rotated", "api", "db", version=v)) for v in range(50)]
    assert time.monotonic() - started < 2.0
    dropped = results.count(False)
    assert dropped >= 1
    assert registry.get_sample_value("vaultsync_events_dropped_total", {"reason": "queue_full"}) == dropped
    assert "event dropped: queue full" in logged
    out.close(60)


def rotating_service(root, kv2: str, tmp_path: Path, bootstrap: str, topic: str,
                     destination: str | None = None) -> tuple[Path, Path, str]:
    """A daemon config whose one service rotates a key every 3 s and publishes its events to
    ``topic``; returns its work folder, config file and a token for it."""
    root.secrets.kv.v2.create_or_update_secret(path="compose/api", secret={"STATIC": "s"}, mount_point=kv2)
    token = root.auth.token.create(policies=["root"], ttl="1h")["auth"]["client_token"]
    work = tmp_path / "work"
    work.mkdir()
    cfg = work / "vaultsync.toml"
    cfg.write_text(
        f'[vault]\ntimeout = "3s"\n[kv]\nmount = "{kv2}"\nprefix = "compose"\n[daemon]\npoll_interval = "1s"\n'
        f'[events]\nkafka = {{ bootstrap = "{bootstrap}", topic = "{topic}" }}\n'
        '[services.api]\n'
        + (f'[[services.api.destinations]]\npath = "{destination}"\n' if destination else "")
        + '[[services.api.rotate]]\nkey = "SESSION_SECRET"\ngenerator = "hex"\nlength = 16\nevery = "3s"\n'
    )
    return work, cfg, token


def test_daemon_rotation_events_on_kafka_carry_no_value(kv2, root, vault_server, tmp_path, kafka_broker):
    from tests.daemon_harness import DaemonProc, daemon_env

    topic = f"vaultsync.events.{secrets.token_hex(4)}"
    work, cfg, token = rotating_service(root, kv2, tmp_path, kafka_broker.bootstrap, topic)
    d = DaemonProc(cfg, daemon_env(vault_server, token, work), work, name="events").start()
    try:
        deadline = time.monotonic() + 60
        while d.count("rotated") < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        assert d.stop() == 0, d.tail()  # SIGTERM: queued events are flushed before exit
    rotations = d.count("rotated")
    assert rotations >= 2, d.tail()
    msgs = _consume(kafka_broker.bootstrap, topic, 2 * rotations)
    assert {m.key() for m in msgs} == {b"api"}
    events = [json.loads(m.value()) for m in msgs]
    rotated = [e for e in events if e["type"] == "io.vaultsync.secret.rotated"]
    assert len(rotated) == rotations
    # Each rotation writes a new KV version, which the daemon's next read reports too.
    changed = [e for e in events if e["type"] == "io.vaultsync.kv.version_changed"]
    assert changed and all(e["subject"] == "api" and e["data"]["path"] == "compose/api" for e in changed)
    assert all(e["type"] == "io.vaultsync.secret.rotated" and e["subject"] == "api/SESSION_SECRET" for e in rotated)
    assert [e["data"]["version"] for e in rotated] == sorted(e["data"]["version"] for e in rotated)
    value = root.secrets.kv.v2.read_secret_version(path="compose/api", mount_point=kv2,
                                                   raise_on_deleted_version=True)["data"]["data"]["SESSION_SECRET"]
    raw = b"".join(m.value() for m in msgs)
    assert value.encode() not in raw and token.encode() not in raw
