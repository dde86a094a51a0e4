"""``vaultsync exec SERVICE -- CMD ARGS...``: run one command with one service's secrets in its
environment, for as long as it runs.

The same daemon, narrowed to that service: it logs in, reads every source, starts the command
only once each has a value, keeps the token and leases alive, and restarts (or signals) the
command when a secret changes. No file is written, nothing is rotated, no metrics server runs
unless asked. SIGTERM/SIGINT/SIGHUP/SIGUSR1/SIGUSR2 go to the command; when it exits, we exit
with its status (a signal N as 128 + N).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from vaultsync.config import ExecSettings, Settings
from vaultsync.errors import ConfigError


def exec_settings(settings: Settings, service: str, command: Sequence[str], *, metrics_addr: str | None) -> Settings:
    """``settings`` narrowed to ``service``, its output being only the command (given here, or its
    ``[services.<name>.exec] command``) and restarts on exit left to whoever started us."""
    svc = settings.services.get(service)
    if svc is None:
        known = ", ".join(sorted(settings.services)) or "none"
        raise ConfigError(f"{settings.source or 'config'}: no [services.{service}] (configured: {known})")
    ex = svc.exec or ExecSettings()
    if command:
        ex = replace(ex, command=tuple(command))
    if not ex.command:
        raise ConfigError(f"services.{service}: no command: give one after `--`, or set [services.{service}.exec] command")
    svc = replace(svc, destinations=(), rotate=(), exec=replace(ex, restart_on_exit=False))
    return replace(settings, services={service: svc}, daemon=replace(settings.daemon, metrics_addr=metrics_addr or ""))


def run(settings: Settings, service: str, command: Sequence[str], *, config_path: str | None,
        metrics_addr: str | None = None, overrides: dict[str, Any] | None = None) -> int:
    from vaultsync.daemon import Daemon

    narrowed = exec_settings(settings, service, command, metrics_addr=metrics_addr)
    daemon = Daemon(narrowed, config_path=config_path, overrides=overrides)
    daemon.exit_with_child = True
    return daemon.run_forever()
