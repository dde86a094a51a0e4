"""The compose stack's telemetry parts, run for real: Jaeger, an OpenTelemetry Collector, Kafka.

Registered from tests/conftest.py (``pytest_plugins``). Every binary is built or resolved by
the Makefile into ``~/.cache/vaultsync/`` once per machine (``make jaeger otelcol kafka``);
a fixture that finds it missing fails and names the make target. Everything listens on
127.0.0.1 and free ports.

* ``jaeger_server``: Jaeger v2 (v1.76.0), OTLP in, in-memory storage, query HTTP API.
* ``otelcol``: the path of the collector built with the official builder from
  ``tools/otelcol/builder-config.yaml``; ``start_otelcol(config)`` runs it.
* ``kafka_broker``: one Kafka broker + KRaft controller (3.9.0, Maven Central's jars).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures_servers import _stop_process, _tail, free_port

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vaultsync"
JAEGER_VERSION = "v1.76.0"
KAFKA_VERSION = "3.9.0"


def _cached(path: Path, target: str) -> Path:
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make {target}` (builds it once per machine)", pytrace=False)
    return path


def otelcol_path() -> Path:
    """Same key as the Makefile: the builder manifest and the builder's go.mod/go.sum."""
    h = hashlib.sha256()
    for rel in ("tools/otelcol/builder-config.yaml", "tools/otelcol/builder/go.mod", "tools/otelcol/builder/go.sum"):
        h.update((ROOT / rel).read_bytes())
    return CACHE / f"otelcol-{h.hexdigest()[:12]}" / "otelcol-vaultsync"


def wait_for(check: Callable[[], Any], what: str, proc: subprocess.Popen[Any] | None, log: Path | None,
             timeout: float = 90.0) -> Any:
    """Poll ``check`` until it returns something truthy; fail with the process log on timeout or exit."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what}: process exited ({proc.returncode}):\n{_tail(log) if log else ''}", pytrace=False)
        try:
            result = check()
        except (OSError, ValueError):
            result = None
        if result:
            return result
        time.sleep(0.3)
    pytest.fail(f"{what}: timed out after {timeout:.0f}s\n{_tail(log) if log else ''}", pytrace=False)


def http_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


# --- Jaeger --------------------------------------------------------------------------------


@dataclass
class Jaeger:
    otlp_http: str  # http://127.0.0.1:PORT, for OTEL_EXPORTER_OTLP_ENDPOINT
    otlp_grpc: str  # 127.0.0.1:PORT, for a collector's otlp exporter
    query: str  # http://127.0.0.1:PORT, Jaeger's HTTP API

    def traces(self, service: str = "vaultsync") -> list[dict[str, Any]]:
        """Jaeger's /api/traces answer for ``service``: a list of traces, each with ``spans``."""
        q = urllib.parse.urlencode({"service": service, "limit": 1000, "lookback": "1h"})
        return http_json(f"{self.query}/api/traces?{q}").get("data") or []

    def spans(self, service: str = "vaultsync") -> list[dict[str, Any]]:
        """Every span of ``service`` as ``{"name": ..., "tags": {key: value}}``."""
        return [
            {"name": s["operationName"], "tags": {t["key"]: t["value"] for t in s.get("tags", [])}}
            for trace in self.traces(service)
            for s in trace["spans"]
        ]


def jaeger_config(otlp_grpc: int, otlp_http: int, query_http: int, query_grpc: int) -> dict[str, Any]:
    return {
        "service": {
            "extensions": ["jaeger_storage", "jaeger_query"],
            "pipelines": {"traces": {"receivers": ["otlp"], "processors": ["batch"],
                                     "exporters": ["jaeger_storage_exporter"]}},
            "telemetry": {"metrics": {"level": "none"}, "logs": {"level": "info"}},
        },
        "extensions": {
            "jaeger_query": {
                "storage": {"traces": "memstore"},
                "http": {"endpoint": f"127.0.0.1:{query_http}"},
                "grpc": {"endpoint": f"127.0.0.1:{query_grpc}"},
            },
            "jaeger_storage": {"backends": {"memstore": {"memory": {"max_traces": 10000}}}},
        },
        "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": f"127.0.0.1:{otlp_grpc}"},
                                             "http": {"endpoint": f"127.0.0.1:{otlp_http}"}}}},
        "processors": {"batch": {"timeout": "200ms"}},
        "exporters": {"jaeger_storage_exporter": {"trace_storage": "memstore"}},
    }


@pytest.fixture(scope="session")
def jaeger_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jaeger]:
    binary = _cached(CACHE / f"jaeger-{JAEGER_VERSION}" / "jaeger", "jaeger")
    folder = tmp_path_factory.mktemp("jaeger")
    ports = [free_port() for _ in range(4)]
    config = folder / "jaeger.yaml"
    config.write_text(yaml.safe_dump(jaeger_config(*ports)))
    log = folder / "jaeger.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(binary), "--config", str(config)], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=folder, env={"PATH": os.environ.get("PATH", "")})
    server = Jaeger(otlp_http=f"http://127.0.0.1:{ports[1]}", otlp_grpc=f"127.0.0.1:{ports[0]}",
                    query=f"http://127.0.0.1:{ports[2]}")
    try:
        wait_for(lambda: "data" in http_json(f"{server.query}/api/services"), "jaeger query API", proc, log)
        yield server
    finally:
        _stop_process(proc)


# --- OpenTelemetry Collector -----------------------------------------------------------------


@dataclass
class Collector:
    proc: subprocess.Popen[Any]
    log: Path


@pytest.fixture(scope="session")
def otelcol() -> Path:
    return _cached(otelcol_path(), "otelcol")


@pytest.fixture
def start_otelcol(otelcol: Path, tmp_path: Path) -> Iterator[Callable[..., Collector]]:
    """Start the built collector with a config (a dict) and extra env; stopped after the test."""
    started: list[Collector] = []

    def start(config: dict[str, Any], env: dict[str, str] | None = None) -> Collector:
        path = tmp_path / f"otelcol-{len(started)}.yaml"
        path.write_text(yaml.safe_dump(config))
        log = tmp_path / f"otelcol-{len(started)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([str(otelcol), "--config", str(path)], stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=tmp_path,
                                    env={"PATH": os.environ.get("PATH", ""), **(env or {})})
        started.append(Collector(proc, log))
        return started[-1]

    try:
        yield start
    finally:
        for c in started:
            _stop_process(c.proc)


# --- Kafka ---------------------------------------------------------------------------------


@dataclass
class Kafka:
    bootstrap: str
    log: Path


def kafka_properties(data_dir: Path, broker_port: int, controller_port: int) -> str:
    return "\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
        f"listeners=PLAINTEXT://127.0.0.1:{broker_port},CONTROLLER://127.0.0.1:{controller_port}",
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{broker_port}",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=PLAINTEXT",
        f"log.dirs={data_dir}",
        "num.partitions=3",
        "offsets.topic.replication.factor=1",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        "auto.create.topics.enable=true",
        "",
    ])


def _java(folder: Path, libs: Path, log: Path, *args: str) -> list[str]:
    return ["java", "-Xmx512m", "-XX:+UseSerialGC", f"-Dlog4j.configuration=file:{folder / 'log4j.properties'}",
            "-cp", f"{libs}/*", *args]


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kafka]:
    libs = _cached(CACHE / f"kafka-{KAFKA_VERSION}" / "libs", "kafka")
    folder = tmp_path_factory.mktemp("kafka")
    broker_port, controller_port = free_port(), free_port()
    props = folder / "server.properties"
    props.write_text(kafka_properties(folder / "data", broker_port, controller_port))
    (folder / "log4j.properties").write_text(
        "log4j.rootLogger=INFO, stdout\n"
        "log4j.appender.stdout=org.apache.log4j.ConsoleAppender\n"
        "log4j.appender.stdout.layout=org.apache.log4j.PatternLayout\n"
        "log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
    )
    log = folder / "kafka.log"
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(folder)}
    with log.open("wb") as out:
        fmt = subprocess.run(_java(folder, libs, log, "kafka.tools.StorageTool", "format", "-t", base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode(),
                                   "-c", str(props)), stdout=out, stderr=subprocess.STDOUT, env=env, timeout=120)
    if fmt.returncode != 0:
        pytest.fail(f"kafka storage format failed:\n{_tail(log)}", pytrace=False)
    with log.open("ab") as out:
        proc = subprocess.Popen(_java(folder, libs, log, "kafka.Kafka", str(props)), stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=folder)
    try:
        wait_for(lambda: "Kafka Server started" in log.read_text(errors="replace"), "kafka broker", proc, log,
                 timeout=120)
        yield Kafka(bootstrap=f"127.0.0.1:{broker_port}", log=log)
    finally:
        _stop_process(proc, timeout=30)
