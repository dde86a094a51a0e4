"""The edges of `vaultsync audit`: window from --since, files, progress bar, output."""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timedelta, timezone
from typing import Any

import click

from vaultsync import audit, audit_source
from vaultsync.errors import BadInput, VaultsyncError
from vaultsync.leases import parse_duration


def window_start(since: str, now: datetime) -> datetime | None:
    """``--since``: a duration back from ``now``, an ISO time, or ``all``."""
    if since.strip().lower() in ("all", "0", ""):
        return None
    try:
        return now - timedelta(seconds=parse_duration(since))
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(since)
    except ValueError:
        raise BadInput(f"--since {since!r}: give a duration (24h, 7d), an ISO time or 'all'") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def run(settings: Any, files: list[str], *, since: str, output: str, watch: bool, metrics_addr: str) -> None:
    identities = audit.identities_from_settings(settings)
    for path in files if not watch else []:  # --watch waits for a file that is not there yet
        if not os.path.isfile(path):
            raise BadInput(f"{path}: no such audit log file")
    if watch:
        _watch(files, identities, metrics_addr)
        return
    start = window_start(since, datetime.now(timezone.utc))
    cutoff = audit.cutoff_string(start) if start else None
    agg = audit.Aggregator(identities, cutoff=cutoff)
    try:
        if sys.stderr.isatty():
            with click.progressbar(length=audit_source.total_size(files), label="reading", file=sys.stderr) as bar:
                audit_source.read_files(files, agg, progress=bar.update)
        else:
            audit_source.read_files(files, agg)
    except OSError as exc:
        raise VaultsyncError(f"{exc.filename or files[0]}: cannot read: {exc.strerror or exc}") from None
    shown = f"{cutoff}Z" if cutoff else None
    if output == "json":
        click.echo(json.dumps(audit.as_dict(agg.report, window_start=shown), indent=2))
    else:
        click.echo(audit.as_text(agg.report, window_start=shown))
    for kind, n in sorted(agg.report.anomalies.counts.items()):
        click.echo(f"warning: skipped {n} {kind.replace('_', ' ')} line(s), first at "
                   f"{agg.report.anomalies.lines[kind][0]}", err=True)


def _watch(files: list[str], identities: audit.Identities, metrics_addr: str) -> None:
    from vaultsync import audit_watch

    if len(files) != 1:
        raise BadInput("--watch follows one file (the live audit log)")
    if ":" not in metrics_addr or not metrics_addr.rpartition(":")[2].isdigit():
        raise BadInput(f"--metrics-addr {metrics_addr!r}: give host:port")
    click.echo(f"watching {files[0]}; metrics on http://{metrics_addr}/metrics", err=True)
    try:
        audit_watch.watch(files[0], identities, addr=metrics_addr, stop=audit_watch.stop_on_signals())
    except OSError as exc:
        raise VaultsyncError(f"--watch: {exc.strerror or exc}") from None
