"""structlog setup: JSON lines to stderr (for Loki) or a console format for people.

The redaction processor runs after exceptions are formatted and before the
renderer, so neither an event field nor an exception message can carry a secret:

* fields whose *name* says they hold a secret (``token``, ``secret_id``,
  ``password``, ``value`` ...) are replaced by ``"[redacted]"``;
* every string is scrubbed of values registered with :func:`register_secret`
  (tokens, secret ids, every KV value read or written, rendered credentials),
  in every form vaultsync itself writes them (JSON for non-strings, the escaped
  forms of each env-file style, each line of a multi-line value), and of
  anything shaped like a Vault/OpenBao token (``hvs.``/``s.``/``b.``/``r.``
  followed by 20+ characters, wherever it starts: ``?token%3Dhvs.…`` too);
* tracebacks are rendered without local variables.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import urllib.parse
from collections.abc import MutableMapping
from typing import Any

import structlog
from structlog.tracebacks import ExceptionDictTransformer

from vaultsync import quoting

REDACTED = "[redacted]"

_SECRET_FIELD = re.compile(
    # Not plain "secret": that field names a secret from the config (e.g. "db"), never its value.
    r"(^|_)(token|secret_id|client_secret|password|passwd|value|values|data|credential|credentials|"
    r"private_key|client_token|accessor|wrap(ping)?_token|authorization)$",
    re.IGNORECASE,
)
# Vault: hvs./hvb./hvr. (+ legacy s./b./r.); OpenBao: s./b./r. Never validated, only hidden.
# No \b before it: "%3Dhvs.…" or "xs.…" has no word boundary, and a missed token costs more than
# an over-redacted word.
# Glued to a word character, it must also look random (a capital or a digit): all-lower-case
# dashed names such as "apps.production-environment" are file and host names, not tokens.
_TOKEN_SHAPE = re.compile(
    r"(?:(?<![A-Za-z0-9_])(?:hv[sbr]|[sbr])\.|(?:hv[sbr]|[sbr])\.(?=[a-z_\-]*[A-Z0-9]))"
    r"[A-Za-z0-9_\-]{20,}(?:\.[A-Za-z0-9_\-]+)?"
)
_MIN_LEN = 4  # a 1-3 char "secret" would shred every log line
_MIN_LINE_LEN = 8  # lines of a multi-line secret (PEM) are scrubbed one by one too

_known: dict[str, int] = {}  # value -> how many live holders registered it
_known_lock = threading.Lock()
_remembered: set[str] = set()  # forms remember_secret keeps for the life of the process


def secret_forms(value: Any) -> set[str]:
    """Every form of ``value`` that vaultsync may print or write: the string itself (or the JSON
    and ``str()`` forms of a number, list or object, and each value inside), its escaped forms
    in each env-file style (dotenv single/double quotes, shell ``'\\''``, compose ``$$``, JSON,
    Python repr), and each long-enough line of a multi-line value."""
    forms: set[str] = set()
    if value is None or isinstance(value, bool):
        return forms
    if isinstance(value, (dict, list, tuple)):
        for item in value.values() if isinstance(value, dict) else value:
            forms |= secret_forms(item)
        for text in (_json(value), _json(value, compact=True), str(value)):
            forms |= _escaped_forms(text)
        return forms
    if not isinstance(value, str):
        text = _json(value) if isinstance(value, (int, float)) else str(value)
        return _escaped_forms(text) if len(text) >= 6 else forms  # short numbers are everywhere
    return _escaped_forms(value)


def _json(value: Any, compact: bool = False) -> str:
    try:
        return json.dumps(value, separators=(",", ":") if compact else None, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(value)


# Characters no form below escapes (JSON, repr, URL quoting, every style's quoting): a value made
# of them only has one form, itself. Most generated secrets are; it spares ~30 us a value.
_PLAIN = re.compile(r"[A-Za-z0-9_.~\-]*")


def _escaped_forms(text: str) -> set[str]:
    if _PLAIN.fullmatch(text):
        return {text} if len(text) >= _MIN_LEN else set()
    return _all_escaped_forms(text)


def _all_escaped_forms(text: str) -> set[str]:
    backslashed = text.replace("\\", "\\\\")
    forms = {
        text,
        json.dumps(text)[1:-1],
        json.dumps(text, ensure_ascii=False)[1:-1],
        repr(text)[1:-1],
        backslashed.replace("'", "\\'"),  # dotenv single quotes
        backslashed.replace('"', '\\"').replace("\r", "\\r").replace("\n", "\\n"),  # dotenv double quotes
        backslashed.replace('"', '\\"').replace("$", "\\$").replace("`", "\\`").replace("\n", "\\n"),  # shell/systemd double
        text.replace("'", "'\\''"),  # shell single quotes
        text.replace("$", "$$"),  # compose's escape for a literal $
        backslashed.replace('"', '\\"').replace("\n", "\\n").replace("$", "$$"),  # double quotes, $$ for $
        urllib.parse.quote(text, safe=""),  # the templates' urlquote filter
    }
    # Exactly what each style writes: the quoting functions the renderers themselves use.
    # (inside the quotes: a quoted form contains its inner one, so scrubbing that is enough)
    for quote in (quoting.quote_dotenv, quoting.quote_compose, quoting.quote_shell, quoting.quote_systemd):
        forms.add(quote(text)[1:-1])
    for form in list(forms):
        if "\n" in form or "\r" in form:
            forms |= {line for line in re.split(r"\r\n|\r|\n", form) if len(line.strip()) >= _MIN_LINE_LEN}
    return {f for f in forms if len(f) >= _MIN_LEN}


def register_secret(value: Any) -> None:
    """Scrub ``value`` (in every form it may be printed) from every later log line."""
    forms = secret_forms(value)
    if not forms:
        return
    with _known_lock:
        for form in forms:
            _known[form] = _known.get(form, 0) + 1
            if _known[form] == 1:
                _index_add(form)


def remember_secret(value: Any) -> None:
    """Scrub ``value`` from now on, for the life of the process (every KV value read or
    written): registered once, whatever the number of reads; :func:`forget_secret` by a holder
    that also registered it leaves it scrubbed."""
    forms = secret_forms(value)
    with _known_lock:
        new = forms - _remembered
        _remembered.update(new)  # forget_secret never drops these, whoever registered them too
        # (not ``forms - _known.keys()``: that copies every known value, quadratic over a migration)
        for form in new:
            if form not in _known:
                _known[form] = 1
                _index_add(form)


def forget_secret(value: Any) -> None:
    """Drop one registration of ``value`` (a revoked or replaced credential); it stops
    being scrubbed once no holder has it registered, so the set of scrubbed values
    stays as large as what is alive, not what was ever issued."""
    with _known_lock:
        for form in secret_forms(value) - _remembered:
            count = _known.get(form, 0)
            if count > 1:
                _known[form] = count - 1
            elif count == 1:
                del _known[form]
                _index_remove(form)


# Known forms by their first _MIN_LEN characters, so a scrub looks up each position of the text
# instead of testing every known value (10,000 leases made that ~20,000 tests per log line).
# A bucket is replaced, never changed, so a scrub reads the index without the lock.
_index: dict[str, frozenset[str]] = {}


def _index_add(form: str) -> None:
    head = form[:_MIN_LEN]
    _index[head] = _index.get(head, frozenset()) | {form}


def _index_remove(form: str) -> None:
    head = form[:_MIN_LEN]
    rest = _index.get(head, frozenset()) - {form}
    if rest:
        _index[head] = rest
    else:
        _index.pop(head, None)


def excerpt(text: str, *, limit: int, cut_at_start: bool = False) -> str:
    """A bounded, scrubbed excerpt of some output (a hook's), its *end* kept.

    Scrubbed before it is shortened, so no secret is cut to a piece that no longer matches;
    when the text itself was already cut at its start (``cut_at_start``: a tail), its first,
    partial line is dropped for the same reason."""
    if cut_at_start:
        text = text.partition("\n")[2]
    text = scrub(text)
    if len(text) > limit:
        text = "…" + text[len(text) - limit:]
    return text


def scrub(text: str) -> str:
    """Return ``text`` with registered secrets and token-shaped strings hidden.

    Every occurrence of every known form is found (one index lookup per position, then
    ``startswith`` on the few forms sharing those first characters) and the union of what
    they cover is hidden, so a secret containing another, or overlapping it, is hidden whole."""
    index = _index
    spans: list[tuple[int, int]] = []
    if index:
        get = index.get
        for i in range(len(text) - _MIN_LEN + 1):
            bucket = get(text[i:i + _MIN_LEN])
            if bucket:
                end = max((i + len(f) for f in bucket if text.startswith(f, i)), default=0)
                if end:
                    spans.append((i, end))
    if spans:
        parts, pos, start, stop = [], 0, *spans[0]
        for a, b in spans[1:]:
            if a < stop:  # overlaps the span being built: one redaction
                stop = max(stop, b)
                continue
            parts += [text[pos:start], REDACTED]
            pos, start, stop = stop, a, b
        parts += [text[pos:start], REDACTED, text[stop:]]
        text = "".join(parts)
    return _TOKEN_SHAPE.sub(REDACTED, text)


def _scrub_any(obj: Any) -> Any:
    if isinstance(obj, str):
        return scrub(obj)
    if isinstance(obj, dict):
        return {k: (REDACTED if _is_secret_field(k, v) else _scrub_any(v)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_scrub_any(v) for v in obj]
    return obj


def _is_secret_field(name: object, value: object) -> bool:
    # Exception dicts from structlog have a "value" field holding str(exc); that is a
    # message, not a secret: it is scrubbed like any other string instead.
    return isinstance(name, str) and bool(_SECRET_FIELD.search(name)) and not isinstance(value, (int, float, bool, type(None)))


def redact(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: hide secrets by field name, registered value and token shape."""
    for key in list(event_dict):
        value = event_dict[key]
        if key == "exception":
            event_dict[key] = _scrub_exception(value)
        elif _is_secret_field(key, value):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _scrub_any(value)
    return event_dict


def _scrub_exception(value: Any) -> Any:
    # dict_tracebacks gives a list of frames/exception dicts; format_exc_info a string.
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, list):
        return [
            {k: (scrub(v) if isinstance(v, str) else _scrub_any(v)) for k, v in item.items()}
            if isinstance(item, dict)
            else _scrub_any(item)
            for item in value
        ]
    return _scrub_any(value)


def _app(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Tag every line, so a log pipeline that reads all containers can pick ours out."""
    event_dict.setdefault("app", "vaultsync")
    return event_dict


_format = "json"


def is_console() -> bool:
    """Whether log lines go to a person (console format) rather than to a log collector."""
    return _format == "console"


def configure(fmt: str = "json", level: str = "info", stream: Any = None, colors: bool = False) -> None:
    """Configure structlog for the whole process. ``fmt`` is ``json`` or ``console`` (coloured
    when ``colors``)."""
    global _format
    stream = stream or sys.stderr
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        _app,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
    ]
    if fmt == "console":
        renderer: list[Any] = [
            structlog.processors.format_exc_info,
            redact,
            structlog.dev.ConsoleRenderer(colors=colors, exception_formatter=structlog.dev.plain_traceback),
        ]
    elif fmt == "json":
        renderer = [
            structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False)),
            redact,
            structlog.processors.JSONRenderer(),
        ]
    else:
        raise ValueError(f"unknown log format {fmt!r} (json or console)")
    _format = fmt
    structlog.configure(
        processors=[*shared, *renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str = "vaultsync") -> Any:
    return structlog.get_logger(name)
