"""How each reader quotes a value, so that it parses back exactly what we wrote.

Pure string functions; :mod:`vaultsync.formats` assembles them into files and
the tests check every one against the real reader (``tests/test_formats.py``,
``tests/test_roundtrip.py``). The rules were read from the readers' sources:

python-dotenv 1.x (``dotenv/parser.py``, ``dotenv/main.py``)
    Single quotes: ``\\'`` and ``\\\\`` are the only escapes, newlines are kept.
    Double quotes: ``\\n``, ``\\r``, ``\\\\``, ``\\"`` ... are escapes. A file
    read from a path is opened in text mode, so a raw CR becomes LF: values
    with a CR go in double quotes with ``\\r`` escaped. Interpolation (on by
    default) expands ``${NAME}`` and ``${NAME:-default}`` in *every* quoting
    and has no escape for ``$``; but a variable with an empty name and a
    default, ``${:-$}``, always expands to its default. We write each ``${``
    of a value as ``${:-$}{`` so the reader puts the ``$`` back. (With
    ``interpolate=False`` such a value reads back with the escape in it: the
    style targets python-dotenv's default.)

compose-go ``dotenv/parser.go`` (compose ``env_file:``)
    Double quotes: the parser keeps ``\\x`` pairs, drops the backslash of
    ``\\"``, then expands ``\\n \\r \\t \\\\ \\" \\$``... and interpolates
    ``$NAME``/``${...}``, where ``$$`` (what ``\\$`` becomes) is a literal
    ``$``. So escaping ``\\``, ``"``, ``$``, LF and CR carries any value.

docker CLI ``pkg/kvfile`` (``docker run --env-file``)
    ``KEY=VALUE`` per line, the value verbatim (no quotes, no escapes, no
    ``$``); a line is at most 64 KiB (bufio.Scanner); a CR before the line end
    is dropped. So only line breaks and overlong lines cannot be carried.

bash / POSIX sh
    Inside single quotes nothing is special; ``'`` is written ``'\\''``.

systemd ``src/basic/env-file.c`` (``EnvironmentFile=``), systemd.exec(5)
    Inside double quotes ``\\`` escapes ``"``, ``\\``, `````` ` `````` and ``$``
    (any other ``\\x`` keeps its backslash), and newlines are kept; no
    variable expansion. Escaping those four carries any value.
"""

from __future__ import annotations

import re

__all__ = [
    "quote_dotenv",
    "quote_compose",
    "quote_shell",
    "quote_systemd",
    "docker_refusal",
    "bash_reserved",
    "DOCKER_MAX_LINE",
]

# python-dotenv's expansion escape: "${:-$}" always resolves to "$" (empty name, default "$").
_DOTENV_DOLLAR = "${:-$}"
DOCKER_MAX_LINE = 64 * 1024

# Names bash will not let a sourced file set: read-only ones (an error that aborts a
# `set -e` script) and ones whose value the shell itself keeps changing (PIPESTATUS after
# every command); OPTIND must be a number (dash aborts, bash reads 0).
_BASH_RESERVED = frozenset({
    "UID", "EUID", "PPID", "SHELLOPTS", "BASHOPTS", "BASHPID", "GROUPS", "FUNCNAME", "RANDOM", "SRANDOM",
    "SECONDS", "LINENO", "HISTCMD", "DIRSTACK", "EPOCHSECONDS", "EPOCHREALTIME", "_", "SHLVL", "PIPESTATUS", "OPTIND",
})


def quote_dotenv(value: str) -> str:
    """Quote ``value`` for python-dotenv (interpolating or not, see the module docstring)."""
    value = value.replace("${", _DOTENV_DOLLAR + "{")
    if "\r" in value:
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "\\r").replace("\n", "\\n")
        return f'"{escaped}"'
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def quote_compose(value: str) -> str:
    """Double-quote ``value`` for compose-go's dotenv parser."""
    escaped = (
        value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$").replace("\n", "\\n").replace("\r", "\\r")
    )
    return f'"{escaped}"'


def quote_shell(value: str) -> str:
    """Single-quote ``value`` for bash/sh; ``'`` becomes ``'\\''``."""
    return "'" + value.replace("'", "'\\''") + "'"


_SYSTEMD_ESCAPE = re.compile(r'(["\\`$])')


def quote_systemd(value: str) -> str:
    """Double-quote ``value`` for systemd's EnvironmentFile= parser."""
    return '"' + _SYSTEMD_ESCAPE.sub(r"\\\1", value) + '"'


def docker_refusal(key: str, value: str) -> str | None:
    """Why ``docker run --env-file`` cannot carry this value, or None."""
    if "\n" in value or "\r" in value:
        return "value contains a line break; docker --env-file has no multi-line values (use the compose style)"
    if len(key.encode("utf-8")) + 1 + len(value.encode("utf-8")) + 1 > DOCKER_MAX_LINE:
        return f"line is longer than docker's {DOCKER_MAX_LINE}-byte (64 KiB) line limit"
    return None


def bash_reserved(key: str) -> bool:
    """True for names bash refuses or overrides when a file is sourced (UID, BASH_*, ...)."""
    return key in _BASH_RESERVED or key.startswith("BASH_")
