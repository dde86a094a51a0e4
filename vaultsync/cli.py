"""Thin Click commands: parse flags, build settings, call the module that does the work."""

from __future__ import annotations

import functools
import os
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import click

from vaultsync import __version__, config, devserver, leases, tracing
from vaultsync import logging as vlog
from vaultsync.errors import BadInput, ConfigError, VaultsyncError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class State:
    def __init__(self, config_path: str | None, overrides: dict[str, Any]) -> None:
        self.config_path, self.overrides = config_path, overrides

    def settings(self, **more: Any) -> config.Settings:
        return config.load(self.config_path, overrides={**self.overrides, **more})


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Map our exceptions to exit codes and a one-line message; anything unexpected becomes one
    redacted log line (type and scrubbed message, frames without locals), a short message and
    exit 1: never a raw traceback on the terminal."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except VaultsyncError as exc:
            vlog.get_logger().error("command failed", error=vlog.scrub(str(exc)), exit_code=exc.exit_code)
            click.echo(f"error: {vlog.scrub(str(exc))}", err=True)
            sys.exit(exc.exit_code)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:  # noqa: BLE001 - the one place that turns a bug into a clean exit
            unexpected(exc)

    return wrapper


def unexpected(exc: BaseException) -> None:
    what = type(exc).__name__
    vlog.get_logger().error("unexpected error", error_type=what, error=vlog.scrub(str(exc)), exit_code=1, exc_info=exc)
    click.echo(f"error: unexpected {what}: {vlog.scrub(str(exc))[:200]} (details in the log)", err=True)
    sys.exit(1)


class _Main(click.Group):
    """Catches what escapes a command outside ``handle_errors`` (the group callback, option parsing
    callbacks): the same clean exit."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit):
            raise
        except VaultsyncError as exc:
            click.echo(f"error: {vlog.scrub(str(exc))}", err=True)
            sys.exit(exc.exit_code)
        except Exception as exc:  # noqa: BLE001
            unexpected(exc)


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


@click.group(cls=_Main, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="vaultsync")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Settings file [default: ./vaultsync.toml if present].")
@click.option("--addr", help="Server address (else VAULT_ADDR / BAO_ADDR).")
@click.option("--namespace", help="Namespace (else VAULT_NAMESPACE / BAO_NAMESPACE).")
@click.option("--cacert", help="CA file to verify the server with (else VAULT_CACERT / BAO_CACERT).")
@click.option("--capath", help="Folder of CA files (else VAULT_CAPATH / BAO_CAPATH); --cacert wins.")
@click.option("--client-cert", help="Client certificate for mTLS (else VAULT_CLIENT_CERT), with --client-key.")
@click.option("--client-key", help="Key of the client certificate (else VAULT_CLIENT_KEY).")
@click.option("--tls-server-name", help="Name to send (SNI) and check in the server's certificate (else VAULT_TLS_SERVER_NAME).")
@click.option("--tls-skip-verify", is_flag=True, default=None, help="Turn TLS verification off (not for production).")
@click.option("--log-format", type=click.Choice(["json", "console"]), default="json", show_default=True)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True)
@click.pass_context
def main(ctx: click.Context, config_path: str | None, addr: str | None, namespace: str | None, cacert: str | None,
         capath: str | None, client_cert: str | None, client_key: str | None, tls_server_name: str | None,
         tls_skip_verify: bool | None, log_format: str, log_level: str) -> None:
    """Move docker-compose .env secrets into Vault/OpenBao and keep them alive."""
    vlog.configure(log_format, log_level)
    ctx.call_on_close(tracing.shutdown)
    ctx.obj = State(config_path, {
        "vault.addr": addr, "vault.namespace": namespace, "vault.cacert": cacert,
        # --capath alone replaces a CA file from the config or environment (a CA file wins over a folder).
        "vault.capath": capath, **({"vault.cacert": ""} if capath and not cacert else {}),
        "vault.client_cert": client_cert, "vault.client_key": client_key, "vault.tls_server_name": tls_server_name,
        "vault.tls_verify": False if tls_skip_verify else None,
    })


# --- migrate ------------------------------------------------------------------------


@main.command(context_settings=CONTEXT)
@click.argument("env_files", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--service", help="Service name for the secret path [default: the file's folder name].")
@click.option("--path", "secret_path", help="Full secret path under the mount (overrides --prefix/--service).")
@click.option("--mount", help="KV mount [default: secret].")
@click.option("--prefix", help="Path prefix under the mount [default: compose].")
@click.option("--kv-version", type=click.IntRange(1, 2), help="KV version when the token may not read the mount.")
@click.option("--dry-run", is_flag=True, help="Print the plan and stop.")
@click.option("--prune", is_flag=True, help="Remove keys that are only in Vault.")
@click.option("--strict", is_flag=True, help="A duplicate key is an error, not a warning.")
@click.option("--interpolate", is_flag=True, help="Expand ${VAR} from keys defined earlier in the same file (off: stored literally).")
@click.option("--interpolate-env", "interpolate_env", multiple=True, metavar="NAME",
              help="With --interpolate, let ${NAME} read this environment variable too (repeatable).")
@click.option("--concurrency", type=click.IntRange(1, 64), help="Parallel requests [default: 8].")
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("-v", "--verbose", is_flag=True, help="List unchanged keys too.")
@click.option("--deadline", default="5m", show_default=True,
              help="Give up on writes not started by then (reported; a re-run converges).")
@click.pass_obj
@handle_errors
def migrate(state: State, env_files: tuple[str, ...], service: str | None, secret_path: str | None, mount: str | None,
            prefix: str | None, kv_version: int | None, dry_run: bool, prune: bool, strict: bool, interpolate: bool,
            interpolate_env: tuple[str, ...], concurrency: int | None, output: str, verbose: bool, deadline: str) -> None:
    """Import ENV_FILES into KV: print a masked plan, then write with check-and-set.

    Exit codes: 0 done, 1 failure, 2 bad input, 3 conflict (someone else wrote first).
    """
    from vaultsync import migrate as m
    from vaultsync.connection import preflight
    from vaultsync.migrate_notes import rotated_keys
    from vaultsync.vault import KV, resolve_kv_version, make_client

    try:
        deadline_at = time.monotonic() + leases.parse_duration(deadline)
    except ValueError as exc:
        raise BadInput(f"--deadline: {exc}") from None
    s = state.settings(**{"kv.mount": mount, "kv.prefix": prefix, "kv.version": kv_version, "migrate.concurrency": concurrency})
    if env_files:
        if secret_path and len(env_files) > 1:
            raise BadInput("--path names one secret; give one file, or use --service/--prefix")
        sources = [config.SourceSpec(file=f, service=service, path=secret_path) for f in env_files]
    else:
        sources = list(s.migrate.sources)
        if not sources:
            raise BadInput("no .env files given, and no [[migrate.sources]] in the config")
    if interpolate_env and not interpolate:
        raise BadInput("--interpolate-env needs --interpolate")
    log = vlog.get_logger()
    targets = m.build_targets(
        sources, prefix=s.kv.prefix, strict=strict, interpolate=interpolate, interpolate_env=interpolate_env,
        max_secret_bytes=s.migrate.max_secret_bytes,
        warn=lambda msg: (log.warning("duplicate key", detail=msg), click.echo(f"warning: {msg}", err=True)),
    )
    for msg in m.style_warnings(targets):
        log.warning("style cannot carry keys", detail=msg)
        click.echo(f"warning: {msg}", err=True)
    client = make_client(s.vault, pool_size=s.migrate.concurrency)
    if not client.token:
        raise ConfigError("no token: set VAULT_TOKEN (or BAO_TOKEN), vault.token_file, or `vault login` (~/.vault-token)")
    preflight(client)
    version = resolve_kv_version(client, s.kv.mount, s.kv.version)
    kv = KV(client, s.kv.mount, version)
    with tracing.span("vaultsync.migrate.plan", mount=kv.mount, kv_version=version, secrets=len(targets)) as sp:
        the_plan = m.plan(kv, targets, prune=prune, concurrency=s.migrate.concurrency, keep=rotated_keys(s))
        tracing.set_attributes(sp, writes=len(the_plan.writes))
    if output == "text":
        click.echo(m.plan_as_text(the_plan, verbose=verbose))
    log.info("migrate planned", mount=kv.mount, kv_version=version, secrets=len(the_plan.secrets), writes=len(the_plan.writes))
    if dry_run or not the_plan.writes:
        if output == "json":
            click.echo(json.dumps({"plan": m.plan_as_dict(the_plan), "dry_run": dry_run, "result": None}, indent=2))
        elif not the_plan.writes:
            click.echo("Nothing to write: Vault already holds these values.")
        return
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
            "plan": m.plan_as_dict(the_plan), "dry_run": False,
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


@main.command("export", context_settings=CONTEXT)
@click.argument("secret_path", metavar="PATH")
@click.option("--style", type=click.Choice([s for s in config.STYLES if s != "template"]), default="dotenv",
              show_default=True, help="Whose syntax to write (see README: which style for what).")
@click.option("--out", "out_file", type=click.Path(dir_okay=False), help="Write here (atomically, mode 0600).")
@click.option("--force", is_flag=True, help="Replace --out if it exists (a symlink there is replaced, never followed).")
@click.option("--stdout", "to_stdout", is_flag=True, help="Print to stdout even if it is a terminal.")
@click.option("--mount", help="KV mount [default: secret].")
@click.option("--kv-version", type=click.IntRange(1, 2), help="KV version when the token may not read the mount.")
@click.pass_obj
@handle_errors
def export_cmd(state: State, secret_path: str, style: str, out_file: str | None, force: bool, to_stdout: bool,
               mount: str | None, kv_version: int | None) -> None:
    """Write the secret at PATH (under the mount, e.g. compose/web) as an env file: the inverse of migrate.

    Exit codes: 0 done, 1 no such secret, a server or write error, 2 a key or value the style cannot carry
    (or --out exists without --force)."""
    from vaultsync import export, render
    from vaultsync.vault import KV, resolve_kv_version, make_client

    if out_file and to_stdout:
        raise BadInput("give --out FILE or --stdout, not both")
    if out_file and not force and os.path.lexists(out_file):
        raise BadInput(f"{out_file} exists: pass --force to replace it")
    if not out_file and not to_stdout and sys.stdout.isatty():
        raise BadInput("refusing to print secrets to a terminal: give --out FILE, pipe the output, or pass --stdout")
    s = state.settings(**{"kv.mount": mount, "kv.version": kv_version})
    client = make_client(s.vault)
    if not client.token:
        raise ConfigError("no token: set VAULT_TOKEN (or BAO_TOKEN), or vault.token_file")
    kv = KV(client, s.kv.mount, resolve_kv_version(client, s.kv.mount, s.kv.version))
    text = export.export_text(kv, secret_path, style=style, warn=lambda msg: click.echo(f"warning: {msg}", err=True))
    if out_file:
        try:
            render.atomic_write(out_file, text.encode("utf-8"), mode=0o600)
        except OSError as exc:
            raise VaultsyncError(f"{out_file}: cannot write: {exc.strerror}") from None
        click.echo(f"Wrote {kv.mount}/{secret_path} to {out_file} ({style} style).", err=True)
    else:
        click.echo(text, nl=False)


# --- dev server -------------------------------------------------------------------------


@main.group(context_settings=CONTEXT)
def dev() -> None:
    """A local dev-mode server for trying vaultsync out (in memory, root token known)."""


@dev.command("up", context_settings=CONTEXT)
@click.option("--port", type=click.IntRange(1, 65535), help="Loopback port [default: a free one].")
@handle_errors
def dev_up(port: int | None) -> None:
    """Start the dev server (or find the running one) and print its export lines."""
    server = devserver.up(port)
    click.echo(f"export VAULT_ADDR={server.addr}")
    click.echo(f"export VAULT_TOKEN={server.token}")
    click.echo(f"# server log: {server.log}; stop it with: vaultsync dev down", err=True)


@dev.command("down", context_settings=CONTEXT)
@handle_errors
def dev_down() -> None:
    """Stop the dev server started by `dev up`."""
    click.echo("stopped" if devserver.down() else "no dev server was running")


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


@main.group(context_settings=CONTEXT)
def policies() -> None:
    """HCL policies from a folder, plus a least-privilege policy and an AppRole per service."""


@policies.command("apply", context_settings=CONTEXT)
@click.argument("folder", required=False, type=click.Path(file_okay=False))
@click.option("--dry-run", is_flag=True, help="Print the plan and stop.")
@click.option("--prune", is_flag=True, help="Remove policies vaultsync made that nothing declares any more.")
@click.option("--prune-all", is_flag=True, help="Remove every policy that is only in Vault, other teams' too (never root or default).")
@click.option("--kv-version", type=click.IntRange(1, 2), help="KV version for generated policies, if the token may not read the mount.")
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.pass_obj
@handle_errors
def policies_apply(state: State, folder: str | None, dry_run: bool, prune: bool, prune_all: bool, kv_version: int | None,
                   output: str) -> None:
    """Apply FOLDER/*.hcl [default: ./policies] and the AppRoles of vaultsync.toml's services."""
    from vaultsync import policies as pol

    s = state.settings(**{"kv.version": kv_version})
    if folder is None and os.path.isdir("policies"):
        folder = "policies"
    client = _admin_client(s)
    the_plan = pol.plan(client, s, folder, _kv_for_policies(client, s), prune=prune, prune_all=prune_all)
    if output == "text":
        click.echo(pol.plan_as_text(the_plan))
    if dry_run or the_plan.empty:
        if output == "json":
            click.echo(json.dumps({"plan": pol.plan_as_dict(the_plan), "dry_run": dry_run, "result": None}, indent=2))
        return
    pol.validate(client, the_plan)
    out = pol.apply(client, the_plan)
    vlog.get_logger().info("policies applied", applied=len(out.applied), removed=len(out.removed), roles=len(out.roles), failed=len(out.failed))
    if output == "json":
        click.echo(json.dumps({"plan": pol.plan_as_dict(the_plan), "dry_run": False, "result": {
            "applied": out.applied, "removed": out.removed, "roles": out.roles,
            "failed": [{"what": w, "error": e} for w, e in out.failed]}}, indent=2))
    else:
        click.echo(f"Applied {len(out.applied)} policies, removed {len(out.removed)}, wrote {len(out.roles)} AppRoles.")
    if out.failed:
        what, err = out.failed[0]
        click.echo(f"failed: {what}: {err}; everything listed above it was applied, nothing after it.", err=True)
        sys.exit(1)


@main.group(context_settings=CONTEXT)
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
    creds = auth.issue_credentials(client, mount=s.auth.mount, role=service, wrap_ttl=ttl)
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


@main.command("render", context_settings=CONTEXT)
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
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
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.pass_obj
@handle_errors
def status(state: State, metrics_addr: str | None, output: str) -> None:
    """Ask the running daemon: token and lease time left, last renewals, render status."""
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
        return
    tok = doc["token"]
    left = "never expires" if tok["time_left"] is None else f"{tok['time_left']:.0f}s left"
    click.echo(f"ready: {doc['ready']}   token ({tok['method']}): {'authenticated' if tok['authenticated'] else 'NOT authenticated'}, {left}")
    if tok.get("error"):
        click.echo(f"  token error: {tok['error']}")
    for name, svc in doc["services"].items():
        kv = svc["kv"]
        missing = " (missing: last files kept)" if kv.get("missing") else "" if kv["found"] else " (not found)"
        click.echo(f"{name}: kv {kv['path']} v{kv['version']}{missing}")
        for lname, lease in svc["leases"].items():
            click.echo(f"  lease {lname}: {lease['time_left']:.0f}s left, next: {lease['next']}")
        for path, dest in svc["destinations"].items():
            err = f" ({dest['error']})" if dest["error"] else ""
            click.echo(f"  {path}: {dest['result']}{err}")


# --- audit ------------------------------------------------------------------------------------


@main.command("audit", context_settings=CONTEXT)
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--since", default="24h", show_default=True,
              help="Window: a duration back from now (24h, 7d) or a UTC time (2026-01-31T08:00:00Z); 'all' for everything.")
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
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
