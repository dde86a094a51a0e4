"""Thin Click commands: parse flags, build settings, call the module that does the work."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from vaultsync import __version__, cli_support, config, tracing
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


# Commands defined in their own modules register themselves on `main` when imported.
from vaultsync import cli_migrate, cli_policies, cli_run, cli_setup  # noqa: E402,F401

cli_support.attach_examples(main)
