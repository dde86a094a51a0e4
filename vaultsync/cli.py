"""Thin Click commands: parse flags, build settings, call the module that does the work."""

from __future__ import annotations

import functools
import os
import json
import sys
from collections.abc import Callable
from typing import Any

import click

from vaultsync import __version__, cli_support, config, tracing
from vaultsync import logging as vlog
from vaultsync.errors import BadInput, ConfigError, RoleNotFound, VaultsyncError

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
            report_error(exc)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:  # noqa: BLE001 - the one place that turns a bug into a clean exit
            unexpected(exc)

    return wrapper


def report_error(exc: VaultsyncError) -> None:
    """Say it once: on a terminal the ``error:`` line is the message (a console log line would
    repeat it); in JSON mode the log record is for the collector, the line for the person."""
    if not vlog.is_console():
        vlog.get_logger().error("command failed", error=vlog.scrub(str(exc)), exit_code=exc.exit_code)
    click.echo(f"error: {vlog.scrub(str(exc))}", err=True)
    sys.exit(exc.exit_code)


def unexpected(exc: BaseException) -> None:
    what = type(exc).__name__
    # On a terminal the traceback is only shown at --log-level debug: one line, not a wall of frames.
    level = "debug" if vlog.is_console() else "error"
    getattr(vlog.get_logger(), level)("unexpected error", error_type=what, error=vlog.scrub(str(exc)), exit_code=1,
                                      exc_info=exc)
    where = "run again with --log-level debug for details" if vlog.is_console() else "details in the log"
    click.echo(f"error: unexpected {what}: {vlog.scrub(str(exc))[:200]} ({where})", err=True)
    sys.exit(1)


class _Group(click.Group):
    """A group run bare prints its help and succeeds (as `vault`, `terraform` and `git` do)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args:
            click.echo(ctx.get_help())
            ctx.exit(0)
        return super().parse_args(ctx, args)


class _Main(_Group):
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

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args:
            return super().parse_args(ctx, args)
        arity = cli_support.global_option_arity(self.get_params(ctx))
        # A command that hands its arguments to a child program (allow_interspersed_args=False, e.g.
        # `exec`) keeps everything after its name untouched: those flags are the child's.
        index = cli_support.command_index(args, arity, set(self.commands))
        command = self.commands[args[index]] if index is not None else None
        # (a group never allows interspersed args itself: its subcommands do)
        passthrough = command is not None and not isinstance(command, click.Group) and not command.context_settings.get(
            "allow_interspersed_args", command.allow_interspersed_args)
        head, tail = (args[:index + 1], args[index + 1:]) if passthrough and index is not None else (args, [])
        head = cli_support.go_style_flags(head, cli_support.long_option_names(self))
        return super().parse_args(ctx, cli_support.hoist_global_options(head, arity, self.commands) + tail)


def output_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--output`` / ``--format`` (the Vault CLI's ``-format=json``): text for people, json for scripts."""
    return click.option("--output", "--format", "output", type=click.Choice(["text", "json"]), default="text",
                        show_default=True, help="text for people, json for scripts.")(fn)


def confirm_or_cancel(question: str) -> None:
    """Ask on a terminal (terraform's "only 'yes'"); without one, never ask: scripts and CI go on,
    as they did before the prompt existed, and --yes documents the intent."""
    from vaultsync import plan_output as po

    if not (cli_support.is_terminal(sys.stdin) and cli_support.is_terminal(sys.stdout)):
        return
    if not po.confirm(question, read=input, out=sys.stdout):
        click.echo("Apply cancelled: nothing was written.", err=True)
        sys.exit(1)


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


ROOT_HELP = cli_support.examples(
    "eval \"$(vaultsync dev up)\"              # a local dev server to try it on",
    "vaultsync init my-stack                  # a starter vaultsync.toml and policies/",
    "vaultsync migrate --dry-run api/.env     # plan only",
    "vaultsync migrate services/*/.env        # plan, confirm, write",
    "vaultsync policies apply policies/",
    "vaultsync daemon --config vaultsync.toml",
    "vaultsync doctor                         # check address, TLS, token, mount, roles",
) + "\n\n" + cli_support.GLOBAL_OPTIONS_NOTE


@click.group(cls=_Main, context_settings=CONTEXT, epilog=ROOT_HELP)
@click.version_option(__version__, prog_name="vaultsync")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Settings file [default: ./vaultsync.toml if present].")
@click.option("-a", "--address", "--addr", "addr", help="Server address (else VAULT_ADDR / BAO_ADDR).")
@click.option("--token-file", type=click.Path(dir_okay=False), help="File holding the token (wins over VAULT_TOKEN and vault.token_file).")
@click.option("--token", "token_on_argv", hidden=True, help="Refused: a token on the command line is readable by every local user.")
@click.option("--namespace", help="Namespace (else VAULT_NAMESPACE / BAO_NAMESPACE).")
@click.option("--cacert", help="CA file to verify the server with (else VAULT_CACERT / BAO_CACERT).")
@click.option("--capath", help="Folder of CA files (else VAULT_CAPATH / BAO_CAPATH); --cacert wins.")
@click.option("--client-cert", help="Client certificate for mTLS (else VAULT_CLIENT_CERT), with --client-key.")
@click.option("--client-key", help="Key of the client certificate (else VAULT_CLIENT_KEY).")
@click.option("--tls-server-name", help="Name to send (SNI) and check in the server's certificate (else VAULT_TLS_SERVER_NAME).")
@click.option("--tls-skip-verify", is_flag=True, default=None, help="Turn TLS verification off (not for production).")
@click.option("--log-format", type=click.Choice(["auto", "json", "console"]), default=None,
              help="Log lines on stderr [default: console on a terminal, else json; or VAULTSYNC_LOG_FORMAT].")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default=None,
              help="[default: info; warning for one-shot commands on a terminal].")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, addr: str | None, token_file: str | None, token_on_argv: str | None,
         namespace: str | None, cacert: str | None, capath: str | None, client_cert: str | None, client_key: str | None,
         tls_server_name: str | None, tls_skip_verify: bool | None, log_format: str | None, log_level: str | None) -> None:
    """Move docker-compose .env secrets into Vault/OpenBao and keep them alive."""
    try:
        fmt = cli_support.log_format_for(log_format, sys.stderr)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    vlog.configure(fmt, cli_support.log_level_for(log_level, fmt, ctx.invoked_subcommand),
                   colors=fmt == "console" and cli_support.wants_colour(sys.stderr))
    if token_on_argv is not None:
        raise BadInput("--token is not accepted: a command line is readable by every local user (/proc/PID/cmdline). "
                       "Use VAULT_TOKEN, --token-file FILE, or `vault login` (~/.vault-token)")
    ctx.call_on_close(tracing.shutdown)
    ctx.obj = State(config_path, {
        "vault.addr": addr, "vault.namespace": namespace, "vault.cacert": cacert,
        # --capath alone replaces a CA file from the config or environment (a CA file wins over a folder).
        "vault.capath": capath, **({"vault.cacert": ""} if capath and not cacert else {}),
        "vault.client_cert": client_cert, "vault.client_key": client_key, "vault.tls_server_name": tls_server_name,
        "vault.tls_verify": False if tls_skip_verify else None,
        # An explicit --token-file wins over VAULT_TOKEN from the environment.
        **({"vault.token_file": token_file, "vault.token": ""} if token_file else {}),
    })


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


# Commands defined in their own modules register themselves on `main` when imported.
from vaultsync import cli_migrate, cli_setup  # noqa: E402,F401

cli_support.attach_examples(main)
