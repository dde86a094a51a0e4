"""The ``template`` style: Jinja2 in a sandbox, with a quoting filter per reader.

A template sees every secret of its service: each key as a variable
(``{{ DB_PASSWORD }}``, dynamic fields as ``{{ DB_USERNAME }}``) and all of
them in ``secrets`` (``{{ secrets["com.example.key"] }}`` for names that are not
identifiers). Filters quote for one reader each: ``| shell``, ``| dotenv``,
``| compose``, ``| systemd``, ``| docker`` (refuses a line break), ``| json``,
and ``| urlquote`` for a URL part (``postgres://{{ DB_USERNAME | urlquote }}:...``).

``SandboxedEnvironment`` keeps a template from reaching Python internals, and
``StrictUndefined`` makes a missing key an error instead of an empty string.
Errors name the template file, the line and the variable, never a value: the
message of an arbitrary runtime error could hold one, so only its type is shown.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable, Mapping
from types import TracebackType

from jinja2 import FunctionLoader, StrictUndefined, TemplateSyntaxError, UndefinedError
from jinja2.sandbox import SandboxedEnvironment

from vaultsync import quoting
from vaultsync.errors import BadInput

__all__ = ["render", "FILTERS"]


class _Refused(Exception):
    """A filter cannot quote this value for its reader; the message names no value."""


def _docker(value: str) -> str:
    why = quoting.docker_refusal("", value)
    if why is not None:
        raise _Refused(why)
    return value


def _strict(fn: Callable[[str], str], name: str) -> Callable[[object], str]:
    def apply(value: object) -> str:
        if not isinstance(value, str):
            raise _Refused(f"the {name} filter needs a string, not {type(value).__name__}")
        return fn(value)

    return apply


FILTERS: dict[str, Callable[[object], str]] = {
    "shell": _strict(quoting.quote_shell, "shell"),
    "dotenv": _strict(quoting.quote_dotenv, "dotenv"),
    "compose": _strict(quoting.quote_compose, "compose"),
    "systemd": _strict(quoting.quote_systemd, "systemd"),
    "docker": _strict(_docker, "docker"),
    "json": lambda value: json.dumps(value, ensure_ascii=False),
    "urlquote": _strict(lambda v: urllib.parse.quote(v, safe=""), "urlquote"),
}


def _environment(name: str, source: str) -> SandboxedEnvironment:
    env = SandboxedEnvironment(
        # filename = name, so Jinja's rewritten traceback frames carry the template's name and line
        loader=FunctionLoader(lambda _n: (source, name, lambda: True)),
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
    )
    env.filters.update(FILTERS)
    return env


def _template_line(tb: TracebackType | None, name: str) -> int | None:
    """The template line of the innermost frame that ran template code."""
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == name:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def render(source: str, values: Mapping[str, str], *, destination: str, name: str | None = None) -> str:
    """Render ``source`` with ``values``; raise a ``FormatError`` naming file:line on any error."""
    from vaultsync.formats import FormatError

    name = name or "<template>"

    def fail(line: int | None, reason: str) -> BadInput:
        where = f"template {name}" + (f":{line}" if line else "")
        return FormatError(destination, None, f"{where}: {reason}")

    try:
        template = _environment(name, source).get_template(name)
    except TemplateSyntaxError as exc:
        # The template is configuration, not a secret: its own text may be quoted.
        raise fail(exc.lineno, f"syntax error: {exc.message}") from None
    context = {k: v for k, v in values.items() if k.isidentifier()}
    context["secrets"] = dict(values)
    try:
        return template.render(context)
    except UndefinedError as exc:
        # "'NAME' is undefined" / "'dict object' has no attribute 'NAME'": names only.
        raise fail(_template_line(exc.__traceback__, name), f"{exc.message} (no such secret)") from None
    except _Refused as exc:
        raise fail(_template_line(exc.__traceback__, name), str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - any other message could quote a value
        raise fail(_template_line(exc.__traceback__, name), f"{type(exc).__name__} while rendering") from None
