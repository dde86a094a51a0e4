"""The long-running and one-shot commands: `vaultsync daemon`, `exec`, `render`, `status`, `audit`."""

from __future__ import annotations

import json
import sys

import click

from vaultsync import logging as vlog
from vaultsync.cli import CONTEXT, State, handle_errors, main, output_option
from vaultsync.errors import ConfigError


# --- daemon, render, status -------------------------------------------------------------------


@main.command(context_settings=CONTEXT)
@click.option("--metrics-addr", help="Listen address for /metrics, /healthz, /readyz, /status [default: 127.0.0.1:9464].")
@click.pass_obj
@handle_errors
def daemon(state: State, metrics_addr: str | None) -> None:
    """Log in, keep the token and leases renewed, render env files, rotate owned keys.

    SIGHUP reloads the config; SIGTERM/SIGINT stop after in-flight work."""
    from vaultsync.daemon import Daemon

    s = state.settings(**{"daemon.metrics_addr": metrics_addr})
    if not s.services:
        raise ConfigError("no [services.<name>] in the config: nothing to do")
    overrides = {k: v for k, v in {**state.overrides, "daemon.metrics_addr": metrics_addr}.items() if v is not None}
    sys.exit(Daemon(s, config_path=state.config_path, overrides=overrides).run_forever())


@main.command("exec", context_settings={**CONTEXT, "ignore_unknown_options": True})
@click.argument("service")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option("--metrics-addr", help="Serve /metrics, /healthz, /readyz, /status here [default: none].")
@click.pass_obj
@handle_errors
def exec_cmd(state: State, service: str, command: tuple[str, ...], metrics_addr: str | None) -> None:
    """Run COMMAND with SERVICE's secrets in its environment: `vaultsync exec api -- ./server --port 80`.

    Starts it once every secret has a value, restarts (or signals) it when one changes, passes
    SIGTERM/SIGINT/SIGHUP/SIGUSR1/SIGUSR2 on, and exits with its exit status. Without COMMAND,
    [services.SERVICE.exec] command is run."""
    from vaultsync import execrun

    if command[:1] == ("--",):
        command = command[1:]
    sys.exit(execrun.run(state.settings(), service, command, config_path=state.config_path, metrics_addr=metrics_addr,
                         overrides=state.overrides))


@main.command("render", context_settings=CONTEXT)
@output_option
@click.option("--allow-dynamic-leases", is_flag=True,
              help="Render services with dynamic secrets too: each run issues new leases nobody renews or revokes.")
@click.pass_obj
@handle_errors
def render_cmd(state: State, output: str, allow_dynamic_leases: bool) -> None:
    """Render every destination once (for cron or CI) and run hooks for files that changed.

    Exit 1 if any destination failed (the others are still rendered), 4 if every file was
    rendered but a hook failed, 2 for a config without services or with dynamic secrets
    (unless --allow-dynamic-leases)."""
    from vaultsync import oneshot

    report = oneshot.render_all(state.settings(), allow_dynamic=allow_dynamic_leases)
    click.echo(json.dumps(report.as_dict(), indent=2) if output == "json" else "\n".join(report.as_lines()))
    for message in report.errors.values():
        click.echo(f"error: {vlog.scrub(message)}", err=True)
    if report.exit_code:
        sys.exit(report.exit_code)


@main.command(context_settings=CONTEXT)
@click.option("--metrics-addr", help="Where the daemon listens [default: from the config, 127.0.0.1:9464].")
@output_option
@click.pass_obj
@handle_errors
def status(state: State, metrics_addr: str | None, output: str) -> None:
    """Ask the running daemon: token and lease time left, last renewals, render status, the last error.

    Exit 0 when the daemon is ready, 1 when it is not (or does not answer)."""
    import requests

    from vaultsync.errors import VaultsyncError

    s = state.settings(**{"daemon.metrics_addr": metrics_addr})
    from vaultsync.metrics import read_status_token

    token = read_status_token(s.daemon.status_token_file)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        resp = requests.get(f"http://{s.daemon.metrics_addr}/status", headers=headers, timeout=5)
        if resp.status_code == 403:
            raise VaultsyncError(f"the daemon at {s.daemon.metrics_addr} refused /status: it answers loopback clients, "
                                 "or the bearer token in daemon.status_token_file")
        doc = resp.json()
    except (requests.RequestException, ValueError):
        raise VaultsyncError(f"no daemon answers at {s.daemon.metrics_addr} (is `vaultsync daemon` running?)") from None
    if output == "json":
        click.echo(json.dumps(doc, indent=2))
        sys.exit(0 if doc.get("ready") else 1)
    tok = doc["token"]
    if not tok["authenticated"]:
        left = "no usable token"
    else:
        left = "never expires" if tok["time_left"] is None else f"{tok['time_left']:.0f}s left"
    click.echo(f"ready: {doc['ready']}   token ({tok['method']}): {'authenticated' if tok['authenticated'] else 'NOT authenticated'}, {left}")
    if tok.get("error"):
        click.echo(f"  last error: {tok['error']}")
    for name, svc in doc["services"].items():
        kv = svc["kv"]
        missing = " (missing: last files kept)" if kv.get("missing") else "" if kv["found"] else " (not found)"
        click.echo(f"{name}: kv {kv['path']} v{kv['version']}{missing}")
        for lname, lease in svc["leases"].items():
            click.echo(f"  lease {lname}: {lease['time_left']:.0f}s left, next: {lease['next']}")
        for path, dest in svc["destinations"].items():
            err = f" ({dest['error']})" if dest["error"] else ""
            click.echo(f"  {path}: {dest['result']}{err}")
    if not doc.get("ready"):  # scripts and health checks: `vaultsync status || alert`
        sys.exit(1)


# --- audit ------------------------------------------------------------------------------------


@main.command("audit", context_settings=CONTEXT)
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--since", default="24h", show_default=True,
              help="Window: a duration back from now (24h, 7d) or a UTC time (2026-01-31T08:00:00Z); 'all' for everything.")
@output_option
@click.option("--watch", is_flag=True, help="Tail the (one) file and export metrics for Prometheus until SIGTERM.")
@click.option("--metrics-addr", default="127.0.0.1:9465", show_default=True, help="With --watch: where /metrics listens.")
@click.pass_obj
@handle_errors
def audit_cmd(state: State, files: tuple[str, ...], since: str, output: str, watch: bool, metrics_addr: str) -> None:
    """Who read, wrote, renewed and was refused, per service and secret path, from audit log FILES.

    FILES default to ./audit.log; give rotated ones oldest first (.gz is read too). Services come from
    the config's [services] (AppRole role and token display names). Skipped lines are reported."""
    from vaultsync import audit_cli

    audit_cli.run(state.settings(), list(files) or ["audit.log"], since=since, output=output, watch=watch,
                  metrics_addr=metrics_addr)
