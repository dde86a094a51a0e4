"""The collector's audit log pipeline (compose/otel/config.yaml), run with the collector's own stanza
library (tools/stanzacheck) over entries the real test server wrote: labels, structured metadata, one
record per operation, and the stdout audit copy kept out of the container-log pipeline.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import hvac.exceptions
import pytest

from tests import gotools
from tests.test_compose import COMPOSE_DIR

pytestmark = pytest.mark.vault

CONFIG = COMPOSE_DIR / "otel" / "config.yaml"


@pytest.fixture(scope="module")
def stanzacheck() -> Path:
    return gotools.build_tool("stanzacheck")


def _run(binary: Path, receiver: str, lines: Path) -> list[dict]:
    proc = subprocess.run([str(binary), str(CONFIG), receiver, str(lines)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "stanzacheck: line" not in proc.stderr, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_audit_records_reach_loki_with_three_labels(vault_server, root, kv2, stanzacheck, tmp_path):
    node = vault_server.node
    assert node is not None, "needs the server-mode test server and its file audit device"
    start = node.audit_size()
    root.secrets.kv.v2.create_or_update_secret(path="compose/api", secret={"K": "v"}, mount_point=kv2)
    stranger = vault_server.client(root.auth.token.create(policies=["default"], ttl="5m")["auth"]["client_token"])
    with pytest.raises(hvac.exceptions.Forbidden):
        stranger.secrets.kv.v2.read_secret_version(path="compose/api", mount_point=kv2, raise_on_deleted_version=True)
    with open(node.audit_log, "rb") as f:
        f.seek(start)
        raw = f.read()
    lines = [line for line in raw.decode().splitlines() if line.startswith("{")]
    entries = [json.loads(line) for line in lines]
    (tmp_path / "audit.log").write_text("\n".join(lines) + "\n")

    out = _run(stanzacheck, "filelog/openbao-audit", tmp_path / "audit.log")
    assert len(out) == sum(e["type"] == "response" for e in entries), "one record per operation (the response)"
    for record in out:
        assert set(record["resource"]) == {"service.name", "mount", "operation", "outcome"}
        assert record["resource"]["service.name"] == "openbao-audit"
        assert all(isinstance(v, str | int | float | bool) for v in record["attributes"].values()), record["attributes"]
        assert json.loads(record["body"])["type"] == "response"
    write = [r for r in out if r["attributes"].get("path") == f"{kv2}/data/compose/api" and r["resource"]["outcome"] == "ok"]
    assert [w["resource"] for w in write] == [
        {"service.name": "openbao-audit", "mount": f"{kv2}/", "operation": "create", "outcome": "ok"}]
    assert write[0]["attributes"]["display_name"] == "root"
    assert write[0]["attributes"]["token_accessor"].startswith("hmac-sha256:")
    denied = [r for r in out if r["resource"]["outcome"] == "denied"]
    assert len(denied) == 1 and denied[0]["attributes"]["path"] == f"{kv2}/data/compose/api"
    assert denied[0]["resource"]["operation"] == "read"
    assert denied[0]["attributes"]["display_name"] == "token-token"  # the refused token, as logged

    # The server's second audit device (stdout) lands in its container log: not shipped a second time.
    docker_log = tmp_path / "container-json.log"
    docker_log.write_text("\n".join(json.dumps({"log": text + "\n", "stream": "stdout", "time": "2026-01-01T00:00:00.5Z"})
                                    for text in (lines[0], '{"app":"vaultsync","level":"info","event":"rendered"}')) + "\n")
    kept = _run(stanzacheck, "filelog/containers", docker_log)
    assert [r["attributes"].get("event") for r in kept] == ["rendered"]
