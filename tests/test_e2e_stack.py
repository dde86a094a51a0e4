"""End to end, all real: a vaultsync daemon rotating a key every 3 s publishes its events to Kafka (3.9.0),
Prometheus scrapes its metrics, the built collector's filelog receiver parses its JSON log file, and a
`vaultsync render` run's traces go through the collector (OTLP) to Jaeger."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.daemon_harness import DaemonProc, daemon_env
from tests.fixtures_servers import free_port
from tests.fixtures_telemetry import wait_for
from tests.test_events import _consume, rotating_service
from tests.test_stack_telemetry import _log_records


def _collector_config(daemon_log, jaeger_grpc: str, otlp_http: int) -> dict:
    return {
        "receivers": {
            "otlp": {"protocols": {"http": {"endpoint": f"127.0.0.1:{otlp_http}"}}},
            "filelog/daemon": {"include": [str(daemon_log)], "start_at": "beginning", "poll_interval": "100ms",
                               "operators": [{"type": "json_parser", "if": 'body matches "^\\\\{"', "parse_to": "attributes"}]},
        },
        "processors": {"batch": {"timeout": "200ms"}},
        "exporters": {"otlp/jaeger": {"endpoint": jaeger_grpc, "tls": {"insecure": True}},
                      "debug": {"verbosity": "detailed"}},
        "service": {
            "telemetry": {"metrics": {"level": "none"}},
            "pipelines": {"traces": {"receivers": ["otlp"], "processors": ["batch"], "exporters": ["otlp/jaeger"]},
                          "logs": {"receivers": ["filelog/daemon"], "processors": ["batch"], "exporters": ["debug"]}},
        },
    }


def test_daemon_events_metrics_logs_and_traces_through_the_real_stack(
        kv2, root, vault_server, tmp_path, kafka_broker, jaeger_server, start_otelcol, prometheus_server):
    topic = "vaultsync.events.e2e"
    work, cfg, token = rotating_service(root, kv2, tmp_path, kafka_broker.bootstrap, topic, destination="api.env")
    otlp_http = free_port()
    env = {**daemon_env(vault_server, token, work), "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_http}"}
    d = DaemonProc(cfg, env, work, name="e2e")
    collector = start_otelcol(_collector_config(d.log, jaeger_server.otlp_grpc, otlp_http))
    wait_for(lambda: "Everything is ready" in collector.log.read_text(errors="replace"), "collector start",
             collector.proc, collector.log)
    d.start()
    prom = prometheus_server({"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                              "scrape_configs": [{"job_name": "vaultsync", "static_configs": [{"targets": [f"127.0.0.1:{d.port}"]}]}]})
    try:
        wait_for(lambda: d.count("rotated") >= 2, "two rotations", d.proc, d.log, timeout=60)
        series = wait_for(lambda: prom.query('vaultsync_rotations_total{service="api",result="success"} >= 1'),
                          "rotations in prometheus", d.proc, d.log, timeout=60)
        assert series[0]["metric"]["job"] == "vaultsync"
        res = subprocess.run(
            [sys.executable, "-m", "vaultsync", "--config", str(cfg), "render"],
            env=env, cwd=work, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr
    finally:
        assert d.stop() == 0, d.tail()
    value = root.secrets.kv.v2.read_secret_version(path="compose/api", mount_point=kv2,
                                                   raise_on_deleted_version=True)["data"]["data"]["SESSION_SECRET"]

    # Kafka: rotated events for the right service, keyed by it, no value, no token.
    msgs = _consume(kafka_broker.bootstrap, topic, d.count("rotated"))
    rotated = [json.loads(m.value()) for m in msgs if m.key() == b"api"
               and json.loads(m.value())["type"] == "io.vaultsync.secret.rotated"]
    assert rotated and rotated[0]["subject"] == "api/SESSION_SECRET"
    raw = b"".join(m.value() for m in msgs)
    assert value.encode() not in raw and token.encode() not in raw

    # Jaeger: the render run's spans, through the collector.
    def render_span():
        return [s for s in jaeger_server.spans() if s["name"] == "vaultsync.render.destination"
                and s["tags"].get("service") == "api" and s["tags"].get("destination") == "api.env"]
    spans = wait_for(render_span, "render span in jaeger", collector.proc, collector.log, timeout=60)
    assert spans[0]["tags"]["result"] in ("success", "unchanged")
    assert value not in json.dumps(jaeger_server.traces())

    # Logs: the daemon's own JSON log file, parsed by the filelog receiver.
    def parsed():
        recs = _log_records(collector.log.read_text(errors="replace"))
        return [r for r in recs if r.get("event") == "rotated" and r.get("service") == "api"] or None
    recs = wait_for(parsed, "rotated log records at the debug exporter", collector.proc, collector.log, timeout=60)
    assert recs[0]["key"] == "SESSION_SECRET" and recs[0]["app"] == "vaultsync"
    assert value not in collector.log.read_text(errors="replace")
