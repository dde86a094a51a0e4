"""Command-line habits borrowed from the Vault CLI, terraform and git: global options before or
after the subcommand, human output on a terminal, and an ``Examples:`` block in every help page.

Pure helpers for :mod:`vaultsync.cli`; nothing here talks to a server.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import IO

import click


def global_option_arity(params: Iterable[click.Parameter]) -> dict[str, bool]:
    """Every spelling of the root group's options -> whether it takes a value."""
    arity: dict[str, bool] = {}
    for param in params:
        if not isinstance(param, click.Option):
            continue
        for name in (*param.opts, *param.secondary_opts):
            if name not in ("-h", "--help", "--version"):  # each command has its own --help
                arity[name] = not param.is_flag
    return arity


def hoist_global_options(args: Sequence[str], arity: Mapping[str, bool], commands: Iterable[str]) -> list[str]:
    """``vaultsync daemon --config x.toml`` -> ``vaultsync --config x.toml daemon``.

    Global options found after the first subcommand name are moved in front of it (with their
    value, in either ``--opt value`` or ``--opt=value`` form), as git and kubectl accept them.
    Nothing after a ``--`` is touched, and a value that follows a global option is never read as
    an option itself."""
    args = list(args)
    first = command_index(args, arity, set(commands))
    if first is None:
        return args
    head, tail = args[:first], args[first:]
    hoisted: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(tail):
        arg = tail[i]
        if arg == "--":
            rest.extend(tail[i:])
            break
        name = arg.split("=", 1)[0] if arg.startswith("--") else arg
        if name in arity:
            takes_value = arity[name]
            hoisted.append(arg)
            if takes_value and "=" not in arg and i + 1 < len(tail):
                hoisted.append(tail[i + 1])
                i += 1
        else:
            rest.append(arg)
        i += 1
    return [*head, *hoisted, *rest]


def long_option_names(group: click.Group) -> set[str]:
    """Every ``--name`` any command of the tree accepts."""
    names: set[str] = set()
    for param in group.params:
        names.update(o for o in (*getattr(param, "opts", ()), *getattr(param, "secondary_opts", ())) if o.startswith("--"))
    for command in group.commands.values():
        if isinstance(command, click.Group):
            names |= long_option_names(command)
        else:
            for param in command.params:
                names.update(o for o in (*getattr(param, "opts", ()), *getattr(param, "secondary_opts", ()))
                             if o.startswith("--"))
    return names


def go_style_flags(args: Sequence[str], long_names: set[str]) -> list[str]:
    """``-format=json``, ``-address=URL``, ``-dry-run`` (the Vault CLI's and terraform's Go-style
    single-dash flags) -> ``--format=json`` ... when ``--name`` is one of ours. Single letters and
    anything after ``--`` are left alone."""
    out: list[str] = []
    for i, arg in enumerate(args):
        if arg == "--":
            return out + list(args[i:])
        name = arg.split("=", 1)[0]
        if arg.startswith("-") and not arg.startswith("--") and len(name) > 2 and "-" + name in long_names:
            arg = "-" + arg
        out.append(arg)
    return out


def command_index(args: Sequence[str], arity: Mapping[str, bool], commands: set[str]) -> int | None:
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in commands:
            return i
        if arg == "--":
            return None
        if arity.get(arg) and "=" not in arg:
            i += 1  # the option's value, even if it looks like a command name
        i += 1
    return None


def is_terminal(stream: IO[str] | None) -> bool:
    try:
        return bool(stream is not None and stream.isatty())
    except (ValueError, AttributeError):  # closed or replaced stream
        return False


def log_format_for(requested: str | None, stderr: IO[str] | None) -> str:
    """``console`` for a person at a terminal, ``json`` for a pipe, a file or a log collector,
    unless asked (``--log-format`` or ``VAULTSYNC_LOG_FORMAT``)."""
    choice = requested or os.environ.get("VAULTSYNC_LOG_FORMAT") or "auto"
    if choice not in ("auto", "json", "console"):
        raise ValueError(f"VAULTSYNC_LOG_FORMAT must be auto, json or console, not {choice[:20]!r}")
    if choice == "auto":
        return "console" if is_terminal(stderr) else "json"
    return choice


def wants_colour(stderr: IO[str] | None) -> bool:
    """Colour only on a terminal, and never when ``NO_COLOR`` is set to anything (no-color.org)."""
    return "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb" and is_terminal(stderr)


def log_level_for(requested: str | None, fmt: str, command: str | None) -> str:
    """JSON logs keep ``info`` (a collector wants the record). On a terminal a one-shot command
    shows its plan and result on stdout: info lines would only interleave with it, so warnings
    and errors are shown; the daemon (a long-running process someone is watching) keeps info."""
    if requested:
        return requested
    if fmt == "console" and command not in ("daemon",):
        return "warning"
    return "info"


def examples(*lines: str) -> str:
    r"""An ``Examples:`` epilog; ``\b`` keeps Click from re-wrapping the command lines."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


GLOBAL_OPTIONS_NOTE = "Global options (--config, --address, --token-file, --log-format ...) may also come after the command."


# Shown under each command's help (`vaultsync COMMAND --help`); a test checks every command has one.
EXAMPLES: dict[str, tuple[str, ...]] = {
    "migrate": (
        "vaultsync migrate --dry-run api/.env                  # plan only",
        "vaultsync migrate services/*/.env                     # one secret per service folder",
        "vaultsync migrate services/                           # every .env under the folder",
        "vaultsync migrate api/.env.prod:api web/.env:web      # FILE:SERVICE pairs",
        "cat app.env | vaultsync migrate --service app -       # from stdin",
        "vaultsync migrate --dry-run --detailed-exitcode .env  # CI drift check: exit 2 when changes are pending",
        "vaultsync migrate --prune --yes api/.env              # remove keys only in Vault, no prompt",
    ),
    "export": (
        "vaultsync export compose/web --style compose --out web.env",
        "vaultsync export compose/api | diff - api/.env",
    ),
    "dev": ("eval \"$(vaultsync dev up)\"", "vaultsync dev status", "vaultsync dev down"),
    "dev up": (
        "eval \"$(vaultsync dev up)\"            # a free port",
        "eval \"$(vaultsync dev up --port 8200)\"",
    ),
    "dev down": ("vaultsync dev down                 # every dev server you started", "vaultsync dev down --port 8200"),
    "dev status": ("vaultsync dev status",),
    "policies": ("vaultsync policies apply --dry-run policies/", "vaultsync policies apply --yes policies/"),
    "policies apply": (
        "vaultsync policies apply --dry-run                     # plan; invalid HCL fails here too",
        "vaultsync policies apply --dry-run --detailed-exitcode # exit 2 when changes are pending",
        "vaultsync policies apply policies/",
        "vaultsync policies apply --prune --auto-approve policies/",
    ),
    "approle": ("vaultsync approle credentials vaultsync-daemon --out /etc/vaultsync --wrap-ttl 60s",),
    "approle credentials": (
        "vaultsync approle credentials vaultsync-daemon --out /etc/vaultsync --wrap-ttl 60s",
        "vaultsync approle credentials api --stdout | jq -r .role_id",
    ),
    "daemon": (
        "vaultsync daemon --config /etc/vaultsync/vaultsync.toml",
        "vaultsync daemon --config vaultsync.toml --metrics-addr 127.0.0.1:9464 --log-format json",
    ),
    "exec": (
        "vaultsync exec api -- ./server --port 8080         # secrets in its environment, restarted on change",
        "vaultsync exec --config /etc/vaultsync.toml web    # the [services.web.exec] command",
    ),
    "render": ("vaultsync render --config vaultsync.toml", "vaultsync render --format json"),
    "status": ("vaultsync status", "vaultsync status --format json | jq .token"),
    "audit": (
        "vaultsync audit --since 24h /var/log/vault/audit.log",
        "vaultsync audit --watch --metrics-addr 127.0.0.1:9465 /var/log/vault/audit.log",
    ),
    "init": ("vaultsync init                       # into the current folder", "vaultsync init deploy/vaultsync"),
    "doctor": ("vaultsync doctor", "vaultsync doctor --config /etc/vaultsync/vaultsync.toml --format json"),
}


def attach_examples(group: click.Group, prefix: str = "") -> None:
    """Put each command's ``Examples:`` block (from :data:`EXAMPLES`) under its help."""
    for name, command in group.commands.items():
        path = f"{prefix}{name}"
        lines = EXAMPLES.get(path)
        if lines and not command.epilog:
            command.epilog = examples(*lines) + "\n\n" + GLOBAL_OPTIONS_NOTE
        if isinstance(command, click.Group):
            attach_examples(command, f"{path} ")
