"""The Kafka broker the events tests use: 3.9.0 (compose's apache/kafka:3.9.0) from Maven Central's
jars, one broker + KRaft controller on loopback. A keyed message produced with an idempotent
producer comes back to a consumer, key and all."""

from __future__ import annotations

import secrets

from confluent_kafka import Consumer, Producer


def test_kafka_broker_round_trips_a_keyed_message(kafka_broker):
    topic = f"vaultsync.test.{secrets.token_hex(4)}"
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap, "enable.idempotence": True, "acks": "all"})
    delivered = []
    producer.produce(topic, key=b"api", value=b'{"type":"io.vaultsync.test"}',
                     on_delivery=lambda err, msg: delivered.append((err, msg.partition())))
    assert producer.flush(60) == 0
    assert delivered and delivered[0][0] is None, delivered

    consumer = Consumer({"bootstrap.servers": kafka_broker.bootstrap, "group.id": f"g{secrets.token_hex(3)}",
                         "auto.offset.reset": "earliest"})
    try:
        consumer.subscribe([topic])
        msg = None
        for _ in range(60):
            msg = consumer.poll(1.0)
            if msg is not None and msg.error() is None:
                break
        assert msg is not None and msg.error() is None, msg and msg.error()
        assert (msg.key(), msg.value()) == (b"api", b'{"type":"io.vaultsync.test"}')
    finally:
        consumer.close()
