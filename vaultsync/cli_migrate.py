"""`vaultsync migrate`: flags and output around :mod:`vaultsync.migrate` (plans in
:mod:`vaultsync.plan_output`, inputs in :mod:`vaultsync.inputs`)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from vaultsync import leases, tracing
from vaultsync import logging as vlog
from vaultsync.cli import CONTEXT, State, confirm_or_cancel, handle_errors, main, output_option
from vaultsync.errors import BadInput, ConfigError

# --- migrate ------------------------------------------------------------------------


@main.command(context_settings=CONTEXT)
@click.argument("env_files", nargs=-1, metavar="[FILE|FILE:SERVICE|FOLDER|GLOB|-]...")
@click.option("--service", help="Service name for the secret path [default: the file's folder name].")
@click.option("--path", "secret_path", help="Full secret path under the mount (overrides --prefix/--service).")
@click.option("--mount", help="KV mount [default: secret].")
@click.option("--prefix", help="Path prefix under the mount [default: compose].")
@click.option("--kv-version", type=click.IntRange(1, 2), help="KV version when the token may not read the mount.")
@click.option("--dry-run", is_flag=True, help="Print the plan and stop.")
@click.option("--detailed-exitcode", is_flag=True, help="With --dry-run: exit 0 no changes, 2 changes pending, 1 error.")
@click.option("--prune", is_flag=True, help="Remove keys that are only in Vault.")
@click.option("-y", "--yes", "--auto-approve", "yes", is_flag=True,
              help="Do not ask before overwriting or removing values (never asked without a terminal).")
@click.option("--strict", is_flag=True, help="A duplicate key is an error, not a warning.")
@click.option("--interpolate", is_flag=True, help="Expand ${VAR} from keys defined earlier in the same file (off: stored literally).")
@click.option("--interpolate-env", "interpolate_env", multiple=True, metavar="NAME",
              help="With --interpolate, let ${NAME} read this environment variable too (repeatable).")
@click.option("--concurrency", type=click.IntRange(1, 64), help="Parallel requests [default: 8].")
@output_option
@click.option("--summary", "summary_only", is_flag=True, help="One line per secret to write instead of every key (huge plans).")
@click.option("-v", "--verbose", is_flag=True, help="List unchanged keys too.")
@click.option("--deadline", default="5m", show_default=True,
              help="Give up on writes not started by then (reported; a re-run converges).")
@click.pass_obj
@handle_errors
def migrate(state: State, env_files: tuple[str, ...], service: str | None, secret_path: str | None, mount: str | None,
            prefix: str | None, kv_version: int | None, dry_run: bool, detailed_exitcode: bool, prune: bool, yes: bool,
            strict: bool, interpolate: bool, interpolate_env: tuple[str, ...], concurrency: int | None, output: str,
            summary_only: bool, verbose: bool, deadline: str) -> None:
    """Import .env files into KV: print a masked plan, ask before overwriting or removing values (on a
    terminal), then write with check-and-set.

    Each argument is a file, FILE:SERVICE, a folder (every .env below it), a glob, or - (standard input,
    with --service).

    Exit codes: 0 done, 1 failure, 2 bad input (or, with --dry-run --detailed-exitcode, changes pending),
    3 conflict (someone else wrote first).
    """
    from vaultsync import inputs
    from vaultsync import migrate as m
    from vaultsync import plan_output as po
    from vaultsync.connection import preflight
    from vaultsync.migrate_notes import rotated_keys
    from vaultsync.vault import KV, make_client, resolve_kv_version

    if detailed_exitcode and not dry_run:
        raise BadInput("--detailed-exitcode goes with --dry-run (it reports whether changes are pending)")
    try:
        deadline_at = time.monotonic() + leases.parse_duration(deadline)
    except ValueError as exc:
        raise BadInput(f"--deadline: {exc}") from None
    s = state.settings(**{"kv.mount": mount, "kv.prefix": prefix, "kv.version": kv_version, "migrate.concurrency": concurrency})
    if env_files:
        sources = inputs.expand(env_files, service=service, secret_path=secret_path)
        if secret_path and len(sources) > 1:
            raise BadInput("--path names one secret; give one file, or use --service/--prefix")
    else:
        sources = list(s.migrate.sources)
        if not sources:
            raise BadInput("no .env files given, and no [[migrate.sources]] in the config")
        inputs.check_readable(sources)
    if interpolate_env and not interpolate:
        raise BadInput("--interpolate-env needs --interpolate")
    log = vlog.get_logger()

    def warn(msg: str, event: str) -> None:
        if not vlog.is_console():  # on a terminal the warning line says it; a console log line would repeat it
            log.warning(event, detail=msg)
        click.echo(f"warning: {msg}", err=True)

    targets = m.build_targets(
        sources, prefix=s.kv.prefix, strict=strict, interpolate=interpolate, interpolate_env=interpolate_env,
        max_secret_bytes=s.migrate.max_secret_bytes, warn=lambda msg: warn(msg, "duplicate key"),
    )
    for file in inputs.files_without_keys(sources, (w for t in targets for w in t.origins.values())):
        warn(f"{file}: empty file (no KEY=VALUE lines): nothing to import from it", "empty file")
    if not targets:
        click.echo("Nothing to import: the files hold no keys.")
        return
    for msg in m.style_warnings(targets):
        warn(msg, "style cannot carry keys")
    client = make_client(s.vault, pool_size=s.migrate.concurrency)
    if not client.token:
        raise ConfigError("no token: set VAULT_TOKEN (or BAO_TOKEN), --token-file, vault.token_file, or `vault login` (~/.vault-token)")
    preflight(client)
    version = resolve_kv_version(client, s.kv.mount, s.kv.version)
    kv = KV(client, s.kv.mount, version)
    with tracing.span("vaultsync.migrate.plan", mount=kv.mount, kv_version=version, secrets=len(targets)) as sp:
        the_plan = m.plan(kv, targets, prune=prune, concurrency=s.migrate.concurrency, keep=rotated_keys(s))
        tracing.set_attributes(sp, writes=len(the_plan.writes))
    if output == "text":
        click.echo(_for_terminal(po.migrate_text(the_plan, verbose=verbose, summary_only=summary_only)))
    log.info("migrate planned", mount=kv.mount, kv_version=version, secrets=len(the_plan.secrets), writes=len(the_plan.writes))
    if dry_run or not the_plan.writes:
        if output == "json":
            click.echo(json.dumps({"plan": po.migrate_dict(the_plan), "dry_run": dry_run, "result": None}, indent=2))
        sys.exit(po.exit_code_for_dry_run(bool(the_plan.writes), detailed_exitcode))
    if po.migrate_is_destructive(the_plan) and not yes:
        confirm_or_cancel("Overwrite or remove the values marked ~ and - above?")
    with tracing.span("vaultsync.migrate.apply", mount=kv.mount, writes=len(the_plan.writes)) as sp:
        if output == "text" and sys.stderr.isatty():
            with click.progressbar(length=len(the_plan.writes), label="writing", file=sys.stderr) as bar:
                outcome = m.apply(kv, the_plan, concurrency=s.migrate.concurrency, progress=lambda _sp: bar.update(1),
                                  deadline=deadline_at)
        else:
            outcome = m.apply(kv, the_plan, concurrency=s.migrate.concurrency, deadline=deadline_at)
        tracing.set_attributes(sp, written=len(outcome.written), conflicts=len(outcome.conflicts), failed=len(outcome.failed),
                               unknown=len(outcome.unknown), abandoned=len(outcome.abandoned))
    log.info("migrate applied", written=len(outcome.written), conflicts=len(outcome.conflicts), failed=len(outcome.failed),
             unknown=len(outcome.unknown), abandoned=len(outcome.abandoned), abandon_reason=outcome.abandon_reason)
    if output == "json":
        click.echo(json.dumps({
            "plan": po.migrate_dict(the_plan), "dry_run": False,
            "result": {"written": outcome.written, "conflicts": outcome.conflicts,
                       "failed": [{"path": p, "error": e} for p, e in outcome.failed],
                       "unknown": [{"path": p, "error": e} for p, e in outcome.unknown],
                       "abandoned": outcome.abandoned, "abandon_reason": outcome.abandon_reason},
            "exit_code": outcome.exit_code,
        }, indent=2))
    else:
        _print_outcome(outcome, kv.mount, len(the_plan.writes))
    if outcome.exit_code:
        sys.exit(outcome.exit_code)


def _print_outcome(outcome: Any, mount: str, planned: int) -> None:
    """Written, not written and unknown, each said separately: a timeout is not a "no"."""
    click.echo(f"Wrote {len(outcome.written)} of {planned} secrets.")
    for path in outcome.conflicts:
        click.echo(f"conflict: {mount}/{path} was changed by someone else after planning; not written. Re-run to see the new plan.", err=True)
    for path, reason in outcome.failed:
        click.echo(f"failed: {mount}/{path}: {reason} (not written)", err=True)
    for path, reason in outcome.unknown:
        click.echo(f"unknown: {mount}/{path}: {reason}; it may have been written (re-run to converge)", err=True)
    if outcome.abandoned:
        click.echo(f"not written: {len(outcome.abandoned)} secrets not attempted ({outcome.abandon_reason}).", err=True)
    not_written = len(outcome.not_written)
    if not_written or outcome.unknown:
        click.echo(f"{len(outcome.written)} written, {not_written} not written, {len(outcome.unknown)} unknown "
                   "(re-run to converge).", err=True)


def _for_terminal(text: str) -> str:
    from vaultsync import cli_support
    from vaultsync import plan_output as po

    return po.colourize(text) if cli_support.wants_colour(sys.stdout) else text
