"""The compose stack's telemetry, run for real: the collector built from tools/otelcol/builder-config.yaml
checks compose/otel/config.yaml, carries vaultsync's traces to Jaeger, and its filelog receiver parses
vaultsync's JSON log lines (as docker's json-file driver stores them) into attributes."""

from __future__ import annotations

import copy
import json
import re
import secrets
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import yaml

from tests.fixtures_servers import free_port
from tests.fixtures_telemetry import wait_for

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_OTEL = ROOT / "compose" / "otel" / "config.yaml"


def _validate(otelcol: Path, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(otelcol), "validate", "--config", str(config)], capture_output=True, text=True,
                          timeout=60, env={"VAULTSYNC_ENVIRONMENT": "test"})


def test_compose_collector_config_validates_with_the_built_collector(otelcol):
    res = _validate(otelcol, COMPOSE_OTEL)
    assert res.returncode == 0, res.stdout + res.stderr


def test_validate_rejects_a_component_the_collector_does_not_have(otelcol, tmp_path):
    config = yaml.safe_load(COMPOSE_OTEL.read_text())
    config["exporters"]["kafka"] = {"brokers": ["127.0.0.1:9"]}
    config["service"]["pipelines"]["traces"]["exporters"].append("kafka")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    res = _validate(otelcol, bad)
    assert res.returncode != 0
    assert "kafka" in res.stdout + res.stderr


def _local_config(containers: Path, jaeger_grpc: str) -> tuple[dict, int]:
    """compose/otel/config.yaml on loopback and free ports; Loki (not buildable here) swapped for debug."""
    config = copy.deepcopy(yaml.safe_load(COMPOSE_OTEL.read_text()))
    http_port = free_port()
    config["extensions"]["health_check"]["endpoint"] = f"127.0.0.1:{free_port()}"
    if "file_storage/filelog" in config["extensions"]:
        config["extensions"]["file_storage/filelog"]["directory"] = str(containers.parent / "file_storage")
    if "filelog/openbao-audit" in config["receivers"]:
        config["receivers"]["filelog/openbao-audit"]["include"] = [str(containers.parent / "openbao-audit.log")]
    protocols = config["receivers"]["otlp"]["protocols"]
    protocols["grpc"]["endpoint"] = f"127.0.0.1:{free_port()}"
    protocols["http"]["endpoint"] = f"127.0.0.1:{http_port}"
    filelog = config["receivers"]["filelog/containers"]
    filelog["include"] = [f"{containers}/*/*-json.log"]
    filelog["start_at"] = "beginning"
    filelog["poll_interval"] = "100ms"
    config["processors"]["batch"]["timeout"] = "200ms"
    config["exporters"]["prometheus"]["endpoint"] = f"127.0.0.1:{free_port()}"
    config["exporters"]["otlp/jaeger"]["endpoint"] = jaeger_grpc
    del config["exporters"]["otlphttp/loki"]
    config["exporters"]["debug"] = {"verbosity": "detailed"}
    config["service"]["pipelines"]["logs"]["exporters"] = ["debug"]
    config["service"]["telemetry"]["metrics"] = {"level": "none"}
    return config, http_port


def _docker_json_line(line: str) -> str:
    """One line as docker's json-file log driver writes it (what the compose collector reads)."""
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")
    return json.dumps({"log": line + "\n", "stream": "stderr", "time": now}) + "\n"


def _vaultsync_log_lines(service: str) -> list[str]:
    """Lines from vaultsync's own logger (the daemon's format: JSON with app, event, service, secret)."""
    probe = (
        "import io, sys\n"
        "from vaultsync import logging as vlog\n"
        "vlog.configure('json', 'info', stream=sys.stdout)\n"
        f"vlog.get_logger().info('lease renewed', service='{service}', secret='db', ttl=60)\n"
        f"vlog.get_logger().warning('lease renewal failed', service='{service}', secret='db', retry_in=2.0)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    return [line for line in out.stdout.splitlines() if line.startswith("{")]


def _log_records(text: str) -> list[dict[str, str]]:
    """The debug exporter's detailed log records, as {attribute: value} (strings only)."""
    records = []
    for chunk in text.split("LogRecord #")[1:]:
        attrs = dict(re.findall(r"->\s+([\w.]+): Str\((.*?)\)\n", chunk.split("Trace ID:")[0]))
        records.append(attrs)
    return records


def test_traces_and_logs_flow_through_the_built_collector(kv2, cli, tmp_path, jaeger_server, start_otelcol):
    service = f"web{secrets.token_hex(3)}"
    containers = tmp_path / "containers"
    (containers / "c1").mkdir(parents=True)
    config, http_port = _local_config(containers, jaeger_server.otlp_grpc)
    collector = start_otelcol(config, env={"VAULTSYNC_ENVIRONMENT": "e2e"})
    wait_for(lambda: "Everything is ready" in collector.log.read_text(errors="replace"), "collector start",
             collector.proc, collector.log)

    # Logs: vaultsync's JSON lines, as the docker json-file driver stores them, read by filelog.
    log_file = containers / "c1" / "c1-json.log"
    log_file.write_text("".join(_docker_json_line(line) for line in _vaultsync_log_lines(service)))

    # Traces: a real migrate + render sent to the collector's OTLP/HTTP receiver.
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{http_port}"}
    env_file = tmp_path / service / ".env"
    env_file.parent.mkdir()
    env_file.write_text("TOKEN=canary-e2e-value\n")
    assert cli("migrate", "--mount", kv2, str(env_file), env=otel).code == 0
    cfg = tmp_path / "vaultsync.toml"
    cfg.write_text(f'[kv]\nmount = "{kv2}"\n[services.{service}]\n[[services.{service}.destinations]]\npath = "w.env"\n')
    res = cli("--config", str(cfg), "render", env=otel)
    assert res.code == 0, res.output

    def render_span():
        for s in jaeger_server.spans():
            if s["name"] == "vaultsync.render.destination" and s["tags"].get("service") == service:
                return s
        return None

    span = wait_for(render_span, "render span via the collector in jaeger", collector.proc, collector.log, timeout=60)
    assert span["tags"]["result"] == "success"
    traces = json.dumps(jaeger_server.traces())
    assert "canary-e2e-value" not in traces
    # The compose resource processor tagged it on the way through.
    assert '"deployment.environment"' in traces and '"e2e"' in traces

    def parsed():
        recs = [r for r in _log_records(collector.log.read_text(errors="replace")) if r.get("service") == service]
        return recs if len(recs) == 2 else None

    records = wait_for(parsed, "filelog records at the debug exporter", collector.proc, collector.log, timeout=60)
    assert {r["event"] for r in records} == {"lease renewed", "lease renewal failed"}
    assert all(r["secret"] == "db" and r["app"] == "vaultsync" for r in records)
    # The compose operators label the stream (resource service.name) and the resource processor tags it.
    text = collector.log.read_text(errors="replace")
    assert "service.name: Str(vaultsync)" in text and "deployment.environment: Str(e2e)" in text
