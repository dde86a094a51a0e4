"""Turn a mapping of secrets into the text of an env file, in one of four styles.

``render(style, values, template=..., destination=...)`` is a pure function:
it returns text and never touches the file system (``vaultsync.render``
writes it). Every style is chosen so that the reader on the other side gets
back exactly the value stored in Vault, and when a style cannot carry a value
faithfully we raise :class:`FormatError` instead of writing something that
would be read differently. Error messages name the key, the destination and
the reason, never the value.

Styles
======

``dotenv``
    For python-dotenv (``load_dotenv``/``dotenv_values``), with or without
    interpolation. Values are single-quoted with ``\\`` and ``'`` escaped by a
    backslash; newlines stay literal inside the quotes (multi-line PEM works).
    A value holding a carriage return is double-quoted instead, with ``\\r``
    and ``\\n`` escaped, because reading a file in text mode turns a raw CR
    into LF. python-dotenv expands ``${NAME}`` / ``${NAME:-default}`` *in
    every quoting style*, including single quotes, and has no escape for
    ``$``; the parsed text is also what ``interpolate=False`` returns. So a
    value containing such a pattern cannot read back identically under both
    settings, and we raise :class:`FormatError` (use ``shell``, ``docker`` or
    ``template`` for it). ``$``, ``$NAME``, ``${`` without a closing brace and
    ``${A:b}`` are not expanded by python-dotenv and are written as is.
    (compose's ``env_file`` reads this style the same, except that it keeps
    ``\\`` inside single quotes as two backslashes and interpolates ``$NAME``
    inside the double quotes used for values with a CR: use ``docker`` for
    compose.)

``docker``
    ``KEY=value`` verbatim, one per line, for ``docker run --env-file`` *and*
    compose's ``env_file``. The two disagree: ``docker run`` takes everything
    after ``=`` literally, compose parses the value as dotenv (strips quotes,
    trims whitespace, cuts `` #`` comments and interpolates ``$NAME``,
    ``${...}`` and ``$$``). We only write values both read the same and raise
    :class:`FormatError` for the rest: newline, carriage return, leading or
    trailing whitespace, a leading quote, whitespace followed by ``#``, and
    ``$`` followed by ``$``, ``{``, a letter or ``_``, and lines over
    docker's 64 KiB line limit. (Recent docker CLIs also strip one pair of
    matching quotes around a value; a leading quote is rejected anyway.)

``shell``
    ``export KEY='value'`` lines, safe to ``source`` from bash and POSIX sh:
    inside single quotes nothing is special, and a ``'`` is written as
    ``'\\''`` (close, escaped quote, reopen).

``template``
    ``string.Template(template).substitute(values)``: ``$KEY``/``${KEY}``
    placeholders, ``$$`` for a literal ``$``. A placeholder with no value is a
    :class:`FormatError` naming it. The output is the template's text, so its
    order and final newline are the template author's.

In every style keys must match ``[A-Za-z_][A-Za-z0-9_]*``, and a value may not
contain NUL (no environment can hold it) or anything that is not encodable as
UTF-8. The generated styles (all but ``template``) sort lines by key for
stable diffs and end with a newline; an empty mapping renders as ``""``.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Mapping

from vaultsync.errors import BadInput

__all__ = ["STYLES", "FormatError", "render", "quote_dotenv", "quote_shell", "check_key"]

STYLES = ("dotenv", "docker", "shell", "template")

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# python-dotenv's (1.x) variable pattern: ${NAME} or ${NAME:-default}, with
# NAME anything but '}' and ':'. Kept in step with dotenv/variables.py by
# tests/test_formats.py, which checks verdicts against the real library.
_DOTENV_VARIABLE = re.compile(r"\$\{[^}:]*(?::-[^}]*)?\}")
# What compose's env_file parser interpolates in an unquoted value ($$ is its
# escape for a literal $, so it changes the value too).
_COMPOSE_DOLLAR = re.compile(r"\$[${A-Za-z_]")
_WS_HASH = re.compile(r"\s#")
# docker's env-file reader is a bufio.Scanner with the default 64 KiB buffer:
# a longer line (newline included) fails the whole file.
_DOCKER_MAX_LINE = 64 * 1024


class FormatError(BadInput):
    """A value or key cannot be written in the chosen style.

    ``str()`` names the destination, the key and the reason, never the value.
    ``key`` is ``None`` for problems with the style or the template itself.
    """

    def __init__(self, destination: str, key: str | None, reason: str) -> None:
        self.destination, self.key, self.reason = destination, key, reason
        where = f"{destination}: key {key!r}" if key is not None else destination
        super().__init__(f"{where}: {reason}")


def check_key(key: object, destination: str) -> str:
    """Return ``key`` if it is a portable environment variable name, else raise.

    Keys are names (Vault field names, config), not secrets, so the error
    names them.
    """
    if not isinstance(key, str):
        raise FormatError(destination, None, f"variable name of type {type(key).__name__}: must be a str")
    if not _KEY.fullmatch(key):
        raise FormatError(destination, key, "invalid variable name: must match [A-Za-z_][A-Za-z0-9_]*")
    return key


def _check_value_common(key: str, value: object, destination: str) -> str:
    if not isinstance(value, str):
        raise FormatError(destination, key, f"value must be a string, not {type(value).__name__}")
    if "\x00" in value:
        raise FormatError(destination, key, "value contains a NUL byte, which no environment can hold")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise FormatError(destination, key, "value is not encodable as UTF-8 (lone surrogate)") from None
    return value


def quote_dotenv(value: str) -> str:
    """Quote ``value`` for python-dotenv (see the module docstring)."""
    if "\r" in value:
        escaped = (
            value.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "\\r").replace("\n", "\\n")
        )
        return f'"{escaped}"'
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def quote_shell(value: str) -> str:
    """Single-quote ``value`` for bash/sh; ``'`` becomes ``'\\''``."""
    return "'" + value.replace("'", "'\\''") + "'"


def _dotenv_line(key: str, value: str, destination: str) -> str:
    if _DOTENV_VARIABLE.search(value):
        raise FormatError(
            destination,
            key,
            "value contains a ${...} pattern that python-dotenv would expand in any quoting; "
            "use the shell, docker or template style for this destination",
        )
    return f"{key}={quote_dotenv(value)}"


def _docker_line(key: str, value: str, destination: str) -> str:
    def reject(reason: str) -> FormatError:
        return FormatError(destination, key, f"{reason}; the docker env-file style cannot carry it")

    if "\n" in value or "\r" in value:
        raise reject("value contains a line break")
    if value != value.strip():
        raise reject("value has leading or trailing whitespace (compose strips it)")
    if value[:1] in ("'", '"'):
        raise reject("value starts with a quote (compose would unquote it)")
    if _WS_HASH.search(value):
        raise reject("value contains whitespace followed by '#' (compose reads a comment)")
    if _COMPOSE_DOLLAR.search(value):
        raise reject("value contains '$' followed by '$', '{', a letter or '_' (compose interpolates it)")
    line = f"{key}={value}"
    if len(line.encode("utf-8")) + 1 > _DOCKER_MAX_LINE:
        raise reject(f"line is longer than docker's {_DOCKER_MAX_LINE}-byte limit")
    return line


def _shell_line(key: str, value: str, destination: str) -> str:
    return f"export {key}={quote_shell(value)}"


_LINE_WRITERS: dict[str, Callable[[str, str, str], str]] = {
    "dotenv": _dotenv_line,
    "docker": _docker_line,
    "shell": _shell_line,
}


def render(
    style: str,
    values: Mapping[str, str],
    *,
    template: str | None = None,
    destination: str,
) -> str:
    """Render ``values`` as the text of an env file in ``style``.

    ``destination`` is only used in error messages (usually the target path).
    Raises :class:`FormatError` for an unknown style, a template given to a
    non-template style (or missing for ``template``), an invalid key, or a
    value the style cannot carry faithfully.
    """
    if style not in STYLES:
        raise FormatError(destination, None, f"unknown style {style!r} (choose from {', '.join(STYLES)})")

    checked: dict[str, str] = {}
    for key in sorted(values, key=lambda k: (not isinstance(k, str), str(k))):
        check_key(key, destination)
        checked[key] = _check_value_common(key, values[key], destination)

    if style == "template":
        if template is None:
            raise FormatError(destination, None, "the template style needs a template")
        return _render_template(template, checked, destination)
    if template is not None:
        raise FormatError(destination, None, f"a template was given but the style is {style!r}")

    writer = _LINE_WRITERS[style]
    lines = [writer(key, value, destination) for key, value in checked.items()]
    return "".join(line + "\n" for line in lines)


def _render_template(template: str, values: Mapping[str, str], destination: str) -> str:
    try:
        return string.Template(template).substitute(values)
    except KeyError as exc:
        name = exc.args[0] if exc.args else "?"
        raise FormatError(destination, str(name), "the template uses a key that has no value") from None
    except ValueError as exc:
        # string.Template's message names the line and column of the bad
        # placeholder; the template is configuration, not a secret.
        raise FormatError(destination, None, f"invalid template: {exc}") from None
