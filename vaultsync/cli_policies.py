"""`vaultsync policies apply` and `vaultsync approle credentials`: least-privilege policies and
AppRoles from the config, and the credentials a service or the daemon logs in with."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from vaultsync import cli_support, config
from vaultsync import logging as vlog
from vaultsync.cli import CONTEXT, State, _Group, confirm_or_cancel, handle_errors, main, output_option
from vaultsync.errors import BadInput, ConfigError, RoleNotFound, VaultsyncError


def wrap_ttl_seconds(text: str | None) -> int | None:
    """``--wrap-ttl``: a whole number of seconds, at least 1 (0 would silently hand out an
    unwrapped secret_id, 0.5 a wrapping token the server reads as 0)."""
    from vaultsync.leases import parse_duration

    if text is None:
        return None
    try:
        ttl = parse_duration(text)
    except ValueError as exc:
        raise BadInput(f"--wrap-ttl: {exc}") from None
    if ttl < 1 or ttl != int(ttl):
        raise BadInput(f"--wrap-ttl must be a whole number of seconds, at least 1s (got {text!r})")
    return int(ttl)


# --- policies and AppRoles ----------------------------------------------------------------


def _kv_for_policies(client: Any, s: config.Settings) -> Any:
    from vaultsync.vault import KV, resolve_kv_version

    if not s.services:  # generated policies (services', the daemon's) name KV paths
        return None
    return KV(client, s.kv.mount, resolve_kv_version(client, s.kv.mount, s.kv.version))


def _admin_client(s: config.Settings) -> Any:
    from vaultsync.connection import preflight
    from vaultsync.vault import make_client

    client = make_client(s.vault)
    if not client.token:
        raise ConfigError("no token: set VAULT_TOKEN (or BAO_TOKEN), vault.token_file, or `vault login` (~/.vault-token)")
    preflight(client)
    return client


@main.group(cls=_Group, context_settings=CONTEXT)
def policies() -> None:
    """HCL policies from a folder, plus a least-privilege policy and an AppRole per service."""


@policies.command("apply", context_settings=CONTEXT)
@click.argument("folder", required=False, type=click.Path(file_okay=False))
@click.option("--dry-run", is_flag=True, help="Print the plan (each new or changed policy checked by the server) and stop.")
@click.option("--detailed-exitcode", is_flag=True, help="With --dry-run: exit 0 no changes, 2 changes pending, 1 error.")
@click.option("--prune", is_flag=True, help="Remove policies vaultsync made that nothing declares any more.")
@click.option("--prune-all", is_flag=True, help="Remove every policy that is only in Vault, other teams' too (never root or default).")
@click.option("-y", "--yes", "--auto-approve", "yes", is_flag=True,
              help="Do not ask before changing or removing policies (never asked without a terminal).")
@click.option("--kv-version", type=click.IntRange(1, 2), help="KV version for generated policies, if the token may not read the mount.")
@output_option
@click.pass_obj
@handle_errors
def policies_apply(state: State, folder: str | None, dry_run: bool, detailed_exitcode: bool, prune: bool, prune_all: bool,
                   yes: bool, kv_version: int | None, output: str) -> None:
    """Apply FOLDER/*.hcl [default: ./policies] and the AppRoles of vaultsync.toml's services.

    Exit codes: 0 done, 1 failure, 2 bad input or an invalid policy (or, with --dry-run
    --detailed-exitcode, changes pending)."""
    from vaultsync import plan_output as po
    from vaultsync import policies as pol

    if detailed_exitcode and not dry_run:
        raise BadInput("--detailed-exitcode goes with --dry-run (it reports whether changes are pending)")
    s = state.settings(**{"kv.version": kv_version})
    if folder is None and os.path.isdir("policies"):
        folder = "policies"
    client = _admin_client(s)
    the_plan = pol.plan(client, s, folder, _kv_for_policies(client, s), prune=prune, prune_all=prune_all)
    if output == "text":
        text = po.policy_text(the_plan)
        click.echo(po.colourize(text) if cli_support.wants_colour(sys.stdout) else text)
    # The server parses each new or changed policy now, so a dry run catches an invalid file too.
    try:
        pol.validate(client, the_plan)
    except BadInput:
        raise
    except VaultsyncError as exc:
        if not dry_run:
            raise
        click.echo(f"warning: the server could not check the policies (a dry run with a read-only token?): "
                   f"{vlog.scrub(str(exc))}", err=True)
    if dry_run or the_plan.empty:
        if output == "json":
            click.echo(json.dumps({"plan": po.policy_dict(the_plan), "dry_run": dry_run, "result": None}, indent=2))
        sys.exit(po.exit_code_for_dry_run(not the_plan.empty, detailed_exitcode))
    if po.policy_is_destructive(the_plan) and not yes:
        confirm_or_cancel("Change or remove the policies and AppRoles marked ~ and - above?")
    out = pol.apply(client, the_plan)
    vlog.get_logger().info("policies applied", applied=len(out.applied), removed=len(out.removed), roles=len(out.roles), failed=len(out.failed))
    if output == "json":
        click.echo(json.dumps({"plan": po.policy_dict(the_plan), "dry_run": False, "result": {
            "applied": out.applied, "removed": out.removed, "roles": out.roles,
            "failed": [{"what": w, "error": e} for w, e in out.failed]}}, indent=2))
    else:
        click.echo(f"Applied {len(out.applied)} policies, removed {len(out.removed)}, wrote {len(out.roles)} AppRoles.")
    if out.failed:
        what, err = out.failed[0]
        click.echo(f"failed: {what}: {err}; everything listed above it was applied, nothing after it.", err=True)
        sys.exit(1)


@main.group(cls=_Group, context_settings=CONTEXT)
def approle() -> None:
    """AppRole credentials for a service."""


@approle.command("credentials", context_settings=CONTEXT)
@click.argument("service")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Folder for role_id and secret_id (0600 files).")
@click.option("--stdout", "to_stdout", is_flag=True, help="Print them instead (they will be in your terminal's history).")
@click.option("--wrap-ttl", help="Hand out a response-wrapped secret_id valid this long (e.g. 60s).")
@click.pass_obj
@handle_errors
def approle_credentials(state: State, service: str, out_dir: str | None, to_stdout: bool, wrap_ttl: str | None) -> None:
    """Issue a role_id and a new secret_id for SERVICE's AppRole."""
    from vaultsync import auth

    if bool(out_dir) == bool(to_stdout):
        raise BadInput("give exactly one of --out DIR or --stdout")
    s = state.settings()
    ttl = wrap_ttl_seconds(wrap_ttl)
    client = _admin_client(s)
    try:
        creds = auth.issue_credentials(client, mount=s.auth.mount, role=service, wrap_ttl=ttl)
    except RoleNotFound as exc:
        from vaultsync.guidance import missing_role

        raise ConfigError(missing_role(s, exc.role, exc.mount)) from None
    kind = "wrapped secret_id (unwrap once, within the TTL)" if creds.wrapped else "secret_id"
    try:
        if to_stdout:
            click.echo(json.dumps({"role_id": creds.role_id, "secret_id": creds.secret_id, "wrapped": creds.wrapped}))
            return
        paths = auth.write_credentials(creds, out_dir)  # type: ignore[arg-type]
    except BaseException:
        # Issued but not delivered: destroy it, so no valid secret_id is left behind (in a
        # half-written folder, or nowhere at all).
        _destroy_issued(client, s.auth.mount, service, creds)
        raise
    vlog.get_logger().info("credentials written", service=service, wrapped=creds.wrapped, folder=str(out_dir))
    click.echo(f"Wrote role_id and {kind} for {service}: {', '.join(str(p) for p in paths)}")


def _destroy_issued(client: Any, mount: str, service: str, creds: Any) -> None:
    from vaultsync import auth

    log = vlog.get_logger()
    if not creds.accessor:
        log.error("the secret_id just issued could not be destroyed: the server returned no accessor", service=service)
        return
    try:
        auth.destroy_secret_id(client, mount=mount, role=service, accessor=creds.accessor)
        log.warning("secret_id destroyed: the command failed after issuing it", service=service)
    except VaultsyncError as exc:
        log.error("the secret_id just issued could not be destroyed; destroy it by hand", service=service, error=str(exc))
