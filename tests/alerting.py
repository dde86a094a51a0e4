"""A real Alertmanager (Debian's prometheus-alertmanager) started through the stack's own
compose/alertmanager/run.sh, and a webhook sink that records what it delivers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures_servers import _stop_process, _wait_ready, free_port

ROOT = Path(__file__).resolve().parent.parent
AM_DIR = ROOT / "compose" / "alertmanager"
AM_BIN = "/usr/bin/prometheus-alertmanager"


@dataclass
class Delivery:
    receiver: str  # the URL path the notification was posted to: "critical" or "warning"
    at: float  # wall-clock time it arrived
    body: dict[str, Any]

    def alerts(self, status: str = "firing") -> list[dict[str, Any]]:
        return [a for a in self.body.get("alerts", []) if a.get("status") == status]


class WebhookSink:
    """An HTTP server that keeps every JSON notification POSTed to it, by path."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                with sink._lock:
                    sink.deliveries.append(Delivery(self.path.strip("/"), time.time(), body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def received(self, receiver: str | None = None, alertname: str | None = None) -> list[tuple[Delivery, dict[str, Any]]]:
        with self._lock:
            deliveries = list(self.deliveries)
        return [(d, a) for d in deliveries if receiver is None or d.receiver == receiver
                for a in d.alerts() if alertname is None or a["labels"].get("alertname") == alertname]

    def wait_for(self, receiver: str, alertname: str, timeout: float) -> tuple[Delivery, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hits = self.received(receiver, alertname)
            if hits:
                return hits[0]
            time.sleep(0.2)
        raise AssertionError(f"{alertname} never reached /{receiver} within {timeout:.0f}s; got {self.summary()}")

    def summary(self) -> list[tuple[str, list[str]]]:
        with self._lock:
            return [(d.receiver, [a["labels"].get("alertname", "?") for a in d.alerts()]) for d in self.deliveries]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Alertmanager:
    url: str
    data: Path
    log: Path
    proc: subprocess.Popen[bytes] = field(repr=False)

    def post_alerts(self, alerts: list[dict[str, Any]]) -> None:
        req = urllib.request.Request(f"{self.url}/api/v2/alerts", data=json.dumps(alerts).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200

    def alerts(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.url}/api/v2/alerts", timeout=10) as resp:
            return json.load(resp)

    def stop(self) -> None:
        _stop_process(self.proc)


def start_alertmanager(workdir: Path, webhook: WebhookSink) -> Alertmanager:
    """The stack's Alertmanager config, filled in by the stack's run.sh, on a free loopback port."""
    binary = AM_BIN if os.access(AM_BIN, os.X_OK) else shutil.which("alertmanager")
    if not binary:
        pytest.fail(f"{AM_BIN} not found: install Debian package prometheus-alertmanager", pytrace=False)
    data = workdir / "alertmanager"
    data.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "ALERTMANAGER_TEMPLATE": str(AM_DIR / "alertmanager.yml"),
        "ALERTMANAGER_DATA": str(data),
        "ALERTMANAGER_BINARY": binary,
        "ALERTMANAGER_CRITICAL_WEBHOOK_URL": f"{webhook.url}/critical",
        "ALERTMANAGER_WARNING_WEBHOOK_URL": f"{webhook.url}/warning",
    }
    log = workdir / "alertmanager.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["/bin/sh", str(AM_DIR / "run.sh"), f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
            env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    _wait_ready(url, proc, log, 30, name="alertmanager")
    return Alertmanager(url, data, log, proc)
