"""Turn a mapping of secrets into the text of an env file, in a style named after its consumer.

``render(style, values, template=..., destination=...)`` is a pure function:
it returns text and never touches the file system (the daemon writes it).
Each style is exact for one reader: what that reader parses out of the file
is exactly what Vault holds. When a reader cannot carry a key or a value, the
whole destination fails with :class:`FormatError` naming the key and the
reason, never the value. The quoting rules, with the source they were read
from, are in :mod:`vaultsync.quoting`.

=========  ====================================================  ===============
style      reader                                                safe to source
=========  ====================================================  ===============
dotenv     python-dotenv (``load_dotenv``/``dotenv_values``)     no
compose    compose ``env_file:`` (compose-go's dotenv parser)    no
docker     ``docker run --env-file`` (docker CLI ``kvfile``)     no
shell      bash and POSIX sh (``. file`` / ``source file``)      yes
systemd    ``EnvironmentFile=`` of a systemd unit                no
json       any JSON parser: one object of strings                no
template   a Jinja2 template (:mod:`vaultsync.templates`)        the author's
=========  ====================================================  ===============

The generated styles sort lines by key for stable diffs and end with a
newline. All but ``shell`` and ``json`` start with a comment line saying the
file is not for ``source``: a shell would run ``$(...)`` in it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping

from vaultsync import quoting
from vaultsync.errors import BadInput

__all__ = ["STYLES", "FormatError", "render", "quote_dotenv", "quote_shell", "check_key", "refusals", "HEADER"]

STYLES = ("dotenv", "compose", "docker", "shell", "systemd", "json", "template")
#: Styles whose output is a list of variables (everything but ``template``).
GENERATED = tuple(s for s in STYLES if s != "template")

HEADER = "# Written by vaultsync. Not shell syntax: do not `source` this file (use style = \"shell\" for that).\n"

# What each reader accepts as a variable name.
#  - python-dotenv: any run of characters but '=', '#' and whitespace; compose-go:
#    letters, digits, '_', '.', '-'; docker's kvfile: anything without whitespace
#    or '='. The common ground, and what `migrate` accepts: letters, digits, '_', '.', '-'.
#  - bash/sh and systemd (env_name_is_valid, "we follow the rules bash enforces",
#    systemd#42426): [A-Za-z_][A-Za-z0-9_]*; a dotted name is silently dropped there.
_ENV_NAME = re.compile(r"[A-Za-z0-9_.\-]+")
_SHELL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NAME_RULES: dict[str, tuple[re.Pattern[str] | None, str]] = {
    "dotenv": (_ENV_NAME, "letters, digits, '_', '.', '-'"),
    "compose": (_ENV_NAME, "letters, digits, '_', '.', '-'"),
    "docker": (_ENV_NAME, "letters, digits, '_', '.', '-'"),
    "shell": (_SHELL_NAME, "[A-Za-z_][A-Za-z0-9_]* (a shell cannot assign other names)"),
    "systemd": (_SHELL_NAME, "[A-Za-z_][A-Za-z0-9_]* (systemd drops other names)"),
    "template": (_ENV_NAME, "letters, digits, '_', '.', '-'"),
    "json": (None, "a non-empty string"),
}


class FormatError(BadInput):
    """A value or key cannot be written in the chosen style.

    ``str()`` names the destination, the key and the reason, never the value.
    ``key`` is ``None`` for problems with the style or the template itself.
    """

    def __init__(self, destination: str, key: str | None, reason: str) -> None:
        self.destination, self.key, self.reason = destination, key, reason
        where = f"{destination}: key {key!r}" if key is not None else destination
        super().__init__(f"{where}: {reason}")


def check_key(key: object, destination: str, style: str = "dotenv") -> str:
    """Return ``key`` if the style's reader accepts it as a variable name, else raise.

    Keys are names (Vault field names, config), not secrets, so the error names them.
    """
    if not isinstance(key, str):
        raise FormatError(destination, None, f"variable name of type {type(key).__name__}: must be a str")
    pattern, rule = _NAME_RULES.get(style, _NAME_RULES["dotenv"])
    if not key or (pattern is not None and not pattern.fullmatch(key)):
        raise FormatError(destination, key, f"invalid variable name for the {style} style: must be {rule}")
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


quote_dotenv = quoting.quote_dotenv
quote_shell = quoting.quote_shell

_LINE_WRITERS: dict[str, Callable[[str, str], str]] = {
    "dotenv": lambda k, v: f"{k}={quoting.quote_dotenv(v)}",
    "compose": lambda k, v: f"{k}={quoting.quote_compose(v)}",
    "docker": lambda k, v: f"{k}={v}",
    "shell": lambda k, v: f"export {k}={quoting.quote_shell(v)}",
    "systemd": lambda k, v: f"{k}={quoting.quote_systemd(v)}",
}


def refusal(style: str, key: object, value: object) -> str | None:
    """Why ``style`` cannot carry this key/value pair, or None if it can.

    The reason names no value. Used by :func:`render` and by ``migrate``'s plan
    warnings, so both say the same thing.
    """
    try:
        check_key(key, "", style)
        _check_value_common(str(key), value, "")
    except FormatError as exc:
        return exc.reason
    assert isinstance(value, str)
    if style == "docker":
        return quoting.docker_refusal(str(key), value)
    return None


def refusals(values: Mapping[str, object], styles: tuple[str, ...] = GENERATED) -> dict[str, dict[str, str]]:
    """``{style: {key: reason}}`` for every pair some style cannot carry (plan-time warnings).

    Keys the shell style skips (bash's read-only names) are listed too.
    """
    out: dict[str, dict[str, str]] = {}
    for style in styles:
        for key, value in values.items():
            why = refusal(style, key, value)
            if why is None and style == "shell" and quoting.bash_reserved(str(key)):
                why = "skipped: bash reserves this name (read-only or set by the shell)"
            if why is not None:
                out.setdefault(style, {})[str(key)] = why
    return out


def render(
    style: str,
    values: Mapping[str, str],
    *,
    template: str | None = None,
    destination: str,
    template_name: str | None = None,
    warn: Callable[[str], None] | None = None,
) -> str:
    """Render ``values`` as the text of an env file in ``style``.

    ``destination`` is only used in error messages (usually the target path);
    ``template_name`` names the template file in template errors. ``warn`` is
    told about keys a style leaves out on purpose (bash's read-only names in
    the ``shell`` style). Raises :class:`FormatError` for an unknown style, a
    template given to a non-template style (or missing for ``template``), a
    key the reader does not accept, or a value it cannot carry.
    """
    if style not in STYLES:
        raise FormatError(destination, None, f"unknown style {style!r} (choose from {', '.join(STYLES)})")
    if style == "template":
        if template is None:
            raise FormatError(destination, None, "the template style needs a template")
    elif template is not None:
        raise FormatError(destination, None, f"a template was given but the style is {style!r}")

    checked: dict[str, str] = {}
    for key in sorted(values, key=lambda k: (not isinstance(k, str), str(k))):
        check_key(key, destination, style)
        checked[key] = _check_value_common(key, values[key], destination)

    if style == "template":
        from vaultsync import templates  # Jinja2 is only imported when a template is used

        assert template is not None
        return templates.render(template, checked, destination=destination, name=template_name)
    if style == "json":
        return json.dumps(checked, indent=2, ensure_ascii=False) + "\n" if checked else "{}\n"

    lines: list[str] = []
    for key, value in checked.items():
        if style == "docker":
            why = quoting.docker_refusal(key, value)
            if why is not None:
                raise FormatError(destination, key, why)
        if style == "shell" and quoting.bash_reserved(key):
            # bash refuses (read-only) or overrides these names; `export UID=...`
            # would abort a `set -e` script. Leave them out, say so in the file.
            lines.append(f"# {key} is not set here: bash reserves this name")
            if warn is not None:
                warn(f"{destination}: key {key!r} left out of the shell style: bash reserves this name")
            continue
        lines.append(_LINE_WRITERS[style](key, value))
    header = "" if style == "shell" else HEADER
    return header + "".join(line + "\n" for line in lines)
