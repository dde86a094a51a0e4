"""Getting started and checking a setup: `vaultsync dev up|down|status`, `vaultsync init`,
`vaultsync doctor`."""

from __future__ import annotations

import json
import sys

import click

from vaultsync import devserver
from vaultsync.cli import CONTEXT, State, _Group, handle_errors, main, output_option

# --- dev server -------------------------------------------------------------------------


@main.group(cls=_Group, context_settings=CONTEXT)
def dev() -> None:
    """A local dev-mode server for trying vaultsync out (in memory, root token known)."""


@dev.command("up", context_settings=CONTEXT)
@click.option("--port", type=click.IntRange(1, 65535), help="Loopback port [default: the running one, else a free one].")
@handle_errors
def dev_up(port: int | None) -> None:
    """Start a dev server (one per port; ours already on that port is reused) and print its export lines."""
    server = devserver.up(port)
    click.echo(f"export VAULT_ADDR={server.addr}")
    click.echo(f"export VAULT_TOKEN={server.token}")
    flag = f" --port {server.addr.rsplit(':', 1)[1]}"
    click.echo(f"# server log: {server.log}; stop it with: vaultsync dev down{flag}", err=True)


@dev.command("down", context_settings=CONTEXT)
@click.option("--port", type=click.IntRange(1, 65535), help="Stop only the one on this port [default: every one].")
@handle_errors
def dev_down(port: int | None) -> None:
    """Stop the dev servers started by `dev up` (only those: a pid is checked before it is signalled)."""
    stopped = devserver.down(port)
    click.echo("\n".join(f"stopped {addr}" for addr in stopped) if stopped else "no dev server was running")


@dev.command("status", context_settings=CONTEXT)
@handle_errors
def dev_status() -> None:
    """List the running dev servers started by `dev up` (address, pid, log). Exit 1 when none runs."""
    servers = devserver.running_all()
    for server in servers:
        click.echo(f"{server.addr}  pid {server.pid}  log {server.log}")
    if not servers:
        click.echo("no dev server is running")
        sys.exit(1)


@main.command("doctor", context_settings=CONTEXT)
@output_option
@click.pass_obj
@handle_errors
def doctor_cmd(state: State, output: str) -> None:
    """Check the setup and print a checklist: address, TLS, server, token, KV mount and version, the
    policies and AppRoles the config needs, the daemon's credential files, destination folders.

    Read-only. Exit 0 when nothing failed (warnings allowed), 1 otherwise."""
    from vaultsync import doctor
    from vaultsync.vault import make_client

    checks = doctor.Doctor(state.settings(), make_client).run()
    click.echo(json.dumps(doctor.as_dict(checks), indent=2) if output == "json" else doctor.as_text(checks))
    sys.exit(0 if doctor.as_dict(checks)["ok"] else 1)


@main.command("init", context_settings=CONTEXT)
@click.argument("folder", default=".", type=click.Path(file_okay=False))
@click.option("--force", is_flag=True, help="Replace files that already exist.")
@handle_errors
def init_cmd(folder: str, force: bool) -> None:
    """Write a starter vaultsync.toml and the shipped policies/ into FOLDER [default: .]."""
    from vaultsync import starter

    for path in starter.write(folder, force=force):
        click.echo(f"wrote {path}")
    click.echo("Next: edit vaultsync.toml, then `vaultsync doctor` and `vaultsync policies apply --dry-run`.")
