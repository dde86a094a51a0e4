"""Pure parts of `vaultsync audit`: reading lines in bounded memory, rotation, bounded report.

Entries are shaped like the ones Vault 1.14.1 writes (tests/test_audit.py checks the real thing).
"""

from __future__ import annotations

import gzip
import io
import json
import os
from pathlib import Path

from vaultsync import audit, audit_source

IDS = audit.Identities(roles={"api": "api", "web": "web"}, display_names={"api": "api", "web": "web"})


def entry(path: str = "secret/data/compose/api", *, role: str = "api", op: str = "read", error: str | None = None,
          when: str = "2026-11-27T20:13:14.616322144Z", kind: str = "response") -> bytes:
    doc = {"time": when, "type": kind,
           "auth": {"client_token": "hmac-sha256:aa", "display_name": "approle", "metadata": {"role_name": role},
                    "policy_results": {"allowed": error is None}},
           "request": {"operation": op, "mount_class": "secret", "mount_type": "kv", "path": path}}
    if error:
        doc["error"] = error
    return json.dumps(doc).encode()


def test_a_line_longer_than_the_limit_is_skipped_without_being_held(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(entry() + b"\n" + b"x" * 10_000 + b"\n" + entry() + b"\n")
    agg = audit.Aggregator(IDS)
    audit_source.read_files([str(log)], agg, max_line=4096)
    assert agg.report.by_identity["api"]["reads"] == 2
    assert agg.report.anomalies.lines == {audit.OVERSIZED: [f"{log}:2"]}


def test_rotated_gzip_files_are_read_oldest_first(tmp_path: Path) -> None:
    old = tmp_path / "audit.log.1.gz"
    with gzip.open(old, "wb") as f:
        f.write(entry(role="web", path="secret/data/compose/web") + b"\n")
    new = tmp_path / "audit.log"
    new.write_bytes(entry(error="1 error occurred:\n\t* permission denied\n\n", role="web") + b"\n")
    agg = audit.Aggregator(IDS)
    audit_source.read_files([str(old), str(new)], agg)
    assert agg.report.by_path[("web", "secret/data/compose/web")]["reads"] == 1
    assert agg.report.by_path[("web", "secret/data/compose/api")]["denied"] == 1


def test_window_and_unknown_identity() -> None:
    agg = audit.Aggregator(IDS, cutoff="2026-11-27T20:00:00")
    agg.feed(entry(when="2026-11-27T19:59:59.999Z"), "f:1")
    agg.feed(entry(role="billing", when="2026-11-27T20:00:00Z"), "f:2")
    agg.feed(entry(when="2026-11-27T20:00:00.5Z", kind="request"), "f:3")  # requests are not counted
    assert agg.report.outside_window == 1
    assert agg.report.by_identity == {"unknown:approle/billing": {"reads": 1}}


def test_report_memory_is_bounded_by_max_keys() -> None:
    agg = audit.Aggregator(IDS, max_keys=10)
    for i in range(1000):
        agg.feed(entry(path=f"secret/data/probe/{i}"), f"f:{i}")
    assert len(agg.report.by_path) == 11  # ten paths, plus one overflow bucket
    assert agg.report.by_path[("api", audit.OTHER_PATHS)]["reads"] == 990


def test_follow_reopens_a_rotated_file(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(entry() + b"\n")
    agg = audit.Aggregator(IDS)
    steps = iter(range(100))

    def sleep(_s: float) -> None:  # each idle poll is one step of the scenario
        n = next(steps)
        if n == 0:
            with open(log, "ab") as f:
                f.write(entry() + b"\n" + entry()[:20])  # the last one is still being written
        elif n == 1:
            with open(log, "ab") as f:
                f.write(entry()[20:] + b"\n")
        elif n == 2:
            os.rename(log, tmp_path / "audit.log.1")
            log.write_bytes(entry(role="web") + b"\n")

    audit_source.follow(str(log), agg, poll=0, from_start=True, sleep=sleep,
                        stop=lambda: agg.report.by_identity.get("web", {}).get("reads") == 1)
    assert agg.report.by_identity["api"]["reads"] == 3
    assert agg.report.anomalies.counts == {audit.ROTATED: 1}


def test_lines_keeps_a_cut_off_last_line_apart() -> None:
    got = list(audit_source.lines(io.BytesIO(b"a\nb\nc")))
    assert [(x.data, x.complete) for x in got] == [(b"a", True), (b"b", True), (b"c", False)]
