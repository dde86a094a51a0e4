"""`vaultsync audit`'s edges in-process: the --since window and the refusals before any file is read."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from vaultsync import audit_cli
from vaultsync.config import Settings
from vaultsync.errors import BadInput

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)


def test_since_is_a_duration_an_iso_time_or_all():
    assert audit_cli.window_start("24h", NOW) == NOW - timedelta(hours=24)
    assert audit_cli.window_start("7d", NOW) == NOW - timedelta(days=7)
    for everything in ("all", "ALL ", "0", ""):
        assert audit_cli.window_start(everything, NOW) is None
    assert audit_cli.window_start("2026-11-01T08:30:00", NOW) == datetime(2026, 11, 1, 8, 30, tzinfo=timezone.utc)
    offset = audit_cli.window_start("2026-11-01T08:30:00+02:00", NOW)
    assert offset is not None and offset.utcoffset() == timedelta(hours=2)
    with pytest.raises(BadInput, match=r"^--since 'yesterday': give a duration \(24h, 7d\), an ISO time or 'all'$"):
        audit_cli.window_start("yesterday", NOW)


def test_a_missing_log_file_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match=rf"^{tmp_path}/none.log: no such audit log file$"):
        audit_cli.run(Settings(), [str(tmp_path / "none.log")], since="all", output="text", watch=False, metrics_addr="")


def test_watch_follows_one_file_and_needs_host_port(tmp_path):
    with pytest.raises(BadInput, match=r"^--watch follows one file \(the live audit log\)$"):
        audit_cli.run(Settings(), ["a", "b"], since="all", output="text", watch=True, metrics_addr="127.0.0.1:1")
    for bad in ("9464", "127.0.0.1:", "host:port"):
        with pytest.raises(BadInput, match=rf"^--metrics-addr '{bad}': give host:port$"):
            audit_cli.run(Settings(), ["a"], since="all", output="text", watch=True, metrics_addr=bad)
