"""Optional OTLP traces: spans reach an OTLP/HTTP receiver when the endpoint is set, carry no
values, and nothing from OpenTelemetry is even imported when it is not."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


CANARY = "canary-otel-Zq9-value"


class Receiver:
    """Collects OTLP/HTTP trace exports (the protobuf bodies a collector would get)."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                outer.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def spans(self) -> dict[str, dict[str, object]]:
        out = {}
        for body in self.bodies:
            req = ExportTraceServiceRequest.FromString(body)
            for rs in req.resource_spans:
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        out[span.name] = {a.key: (a.value.string_value or a.value.int_value) for a in span.attributes}
        return out


def test_migrate_and_render_spans_reach_the_collector_without_values(kv2, root, cli, tmp_path):
    recv = Receiver()
    try:
        env_file = tmp_path / "api" / ".env"
        env_file.parent.mkdir()
        env_file.write_text(f"PASSWORD={CANARY}\n")
        res = cli("migrate", "--mount", kv2, str(env_file), env={"OTEL_EXPORTER_OTLP_ENDPOINT": recv.url})
        assert res.code == 0, res.output
        cfg = tmp_path / "vaultsync.toml"
        cfg.write_text(f'[kv]\nmount = "{kv2}"\n[services.api]\n[[services.api.destinations]]\npath = "api.env"\n')
        res = cli("--config", str(cfg), "render", env={"OTEL_EXPORTER_OTLP_ENDPOINT": recv.url})
        assert res.code == 0, res.output
        spans = recv.spans()
        assert spans["vaultsync.migrate.plan"]["mount"] == kv2 and spans["vaultsync.migrate.plan"]["writes"] == 1
        assert spans["vaultsync.migrate.apply"]["written"] == 1
        assert spans["vaultsync.render.destination"] == {"service": "api", "destination": "api.env", "result": "success"}
        assert "vaultsync.render" in spans
        assert all(CANARY.encode() not in body for body in recv.bodies)
    finally:
        recv.server.shutdown()


def test_tracing_off_imports_nothing_from_opentelemetry(kv2, vault_env, tmp_path):
    env_file = tmp_path / "api" / ".env"
    env_file.parent.mkdir()
    env_file.write_text("A=1\n")
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import sys\n"
        "from vaultsync.cli import main\n"
        "try:\n"
        f"    main(['migrate', '--mount', '{kv2}', '{env_file}'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('otel modules:', sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    import subprocess
    import sys

    env = {k: v for k, v in vault_env.items() if not k.startswith("OTEL_")}
    out = subprocess.run([sys.executable, str(probe)], env=env, capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert "otel modules: []" in out.stdout, out.stdout + out.stderr
    assert "Wrote 1 of 1 secrets." in out.stdout
