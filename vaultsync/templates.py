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

import jinja2.utils
from jinja2 import FunctionLoader, StrictUndefined, TemplateSyntaxError, UndefinedError, nodes
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
    env.undefined = _undefined_showing_only(_spelled_names(env, source))
    return env


def _spelled_names(env: SandboxedEnvironment, source: str) -> frozenset[str | int]:
    """Every name and string the template's own text spells (configuration, not secrets)."""
    tree = env.parse(source)
    names = {n.name for n in tree.find_all(nodes.Name)} | {n.attr for n in tree.find_all(nodes.Getattr)}
    return frozenset(names | {n.value for n in tree.find_all(nodes.Const) if isinstance(n.value, (str, int))})


def _undefined_showing_only(spelled: frozenset[str | int]) -> type[StrictUndefined]:
    """A StrictUndefined whose error shows the missing name only if the template spells it.

    Jinja's own message quotes the name looked up, and ``secrets[PASSWORD]`` looks
    up a *value*: a name computed at render time is never shown.
    """

    class NamedIfSpelled(StrictUndefined):
        __slots__ = ()

        @property
        def _undefined_message(self) -> str:
            name = self._undefined_name
            shown = repr(name) if isinstance(name, (str, int)) and name in spelled else "(a name computed from a value: not shown)"
            if self._undefined_obj is jinja2.utils.missing:
                return f"{shown} is undefined (no such secret)"
            return f"{type(self._undefined_obj).__name__} object has no attribute or key {shown}"

    return NamedIfSpelled


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
        # NamedIfSpelled's message: names the template spells, never a value.
        raise fail(_template_line(exc.__traceback__, name), str(exc.message)) from None
    except _Refused as exc:
        raise fail(_template_line(exc.__traceback__, name), str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - any other message could quote a value
        raise fail(_template_line(exc.__traceback__, name), f"{type(exc).__name__} while rendering") from None
