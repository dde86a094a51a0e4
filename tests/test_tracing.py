"""Optional OTLP traces: spans reach a real Jaeger (v1.76.0, OTLP in, in-memory storage) when the
endpoint is set, carry names and counts but no values, and nothing from OpenTelemetry is even
imported when it is not."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from tests.fixtures_telemetry import wait_for


CANARY = "canary-otel-Zq9-value"


def _ours(jaeger, mount: str, service: str) -> list[dict]:
    """This test's spans: the migrate trace (tagged with its mount) and the render trace (its service)."""
    mine = []
    for trace in jaeger.traces():
        tags = [{t["key"]: t["value"] for t in s.get("tags", [])} for s in trace["spans"]]
        if any(t.get("mount") == mount or t.get("service") == service for t in tags):
            mine.extend({"name": s["operationName"], "tags": t} for s, t in zip(trace["spans"], tags))
    return mine


def test_migrate_and_render_spans_reach_jaeger_without_values(kv2, root, cli, tmp_path, jaeger_server):
    service = f"api{secrets.token_hex(3)}"
    env_file = tmp_path / service / ".env"
    env_file.parent.mkdir()
    env_file.write_text(f"PASSWORD={CANARY}\n")
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": jaeger_server.otlp_http}
    res = cli("migrate", "--mount", kv2, str(env_file), env=otel)
    assert res.code == 0, res.output
    cfg = tmp_path / "vaultsync.toml"
    cfg.write_text(f'[kv]\nmount = "{kv2}"\n[services.{service}]\n[[services.{service}.destinations]]\npath = "api.env"\n')
    res = cli("--config", str(cfg), "render", env=otel)
    assert res.code == 0, res.output

    wanted = {"vaultsync.migrate.plan", "vaultsync.migrate.apply", "vaultsync.render", "vaultsync.render.destination"}
    spans = wait_for(lambda: (lambda s: s if wanted <= {x["name"] for x in s} else None)(_ours(jaeger_server, kv2, service)),
                     "vaultsync's spans in jaeger", None, None, timeout=60)
    by_name = {}
    for s in spans:
        by_name.setdefault(s["name"], []).append(s["tags"])
    assert len(by_name["vaultsync.migrate.plan"]) == 1 and len(by_name["vaultsync.render.destination"]) == 1
    plan = by_name["vaultsync.migrate.plan"][0]
    assert plan["mount"] == kv2 and plan["writes"] == 1
    assert by_name["vaultsync.migrate.apply"][0]["written"] == 1
    dest = by_name["vaultsync.render.destination"][0]
    assert {k: dest[k] for k in ("service", "destination", "result")} == {
        "service": service, "destination": "api.env", "result": "success"}
    # Jaeger keeps every attribute it was sent: the whole stored trace must not hold the value.
    assert CANARY not in json.dumps(jaeger_server.traces())


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
