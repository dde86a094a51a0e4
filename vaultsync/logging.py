"""structlog setup: JSON lines to stderr (for Loki) or a console format for people.

The redaction processor runs after exceptions are formatted and before the
renderer, so neither an event field nor an exception message can carry a secret:

* fields whose *name* says they hold a secret (``token``, ``secret_id``,
  ``password``, ``value`` ...) are replaced by ``"[redacted]"``;
* every string is scrubbed of values registered with :func:`register_secret`
  (tokens, secret ids, rendered credentials) and of anything shaped like a
  Vault/OpenBao token (``hvs.``/``s.``/``b.``/``r.`` followed by 20+ characters);
* tracebacks are rendered without local variables.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import MutableMapping
from typing import Any

import structlog
from structlog.tracebacks import ExceptionDictTransformer

REDACTED = "[redacted]"

_SECRET_FIELD = re.compile(
    # Not plain "secret": that field names a secret from the config (e.g. "db"), never its value.
    r"(^|_)(token|secret_id|client_secret|password|passwd|value|values|data|credential|credentials|"
    r"private_key|client_token|accessor|wrap(ping)?_token|authorization)$",
    re.IGNORECASE,
)
# Vault: hvs./hvb./hvr. (+ legacy s./b./r.); OpenBao: s./b./r. Never validated, only hidden.
_TOKEN_SHAPE = re.compile(r"\b(?:hv[sbr]|[sbr])\.[A-Za-z0-9_\-]{20,}(?:\.[A-Za-z0-9_\-]+)?")

_known: dict[str, int] = {}  # value -> how many live holders registered it
_known_lock = threading.Lock()
_ordered: tuple[str, ...] = ()  # longest first, so a secret containing another is hidden whole


def register_secret(value: str | None) -> None:
    """Scrub ``value`` from every later log line (tokens, secret ids, credentials)."""
    global _ordered
    if not value or len(value) < 4:  # a 1-3 char "secret" would shred every log line
        return
    with _known_lock:
        _known[value] = _known.get(value, 0) + 1
        if _known[value] == 1:
            _ordered = tuple(sorted(_known, key=len, reverse=True))


def forget_secret(value: str | None) -> None:
    """Drop one registration of ``value`` (a revoked or replaced credential); it stops
    being scrubbed once no holder has it registered, so the set of scrubbed values
    stays as large as what is alive, not what was ever issued."""
    global _ordered
    with _known_lock:
        count = _known.get(value or "", 0)
        if count > 1:
            _known[value] = count - 1  # type: ignore[index]
        elif count == 1:
            del _known[value]  # type: ignore[arg-type]
            _ordered = tuple(sorted(_known, key=len, reverse=True))


def scrub(text: str) -> str:
    """Return ``text`` with registered secrets and token-shaped strings hidden.

    Plain substring checks, no regex built from the secrets: cheap for the few
    hundred live values a daemon holds, and nothing to recompile when they change."""
    for value in _ordered:
        if value in text:
            text = text.replace(value, REDACTED)
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


def configure(fmt: str = "json", level: str = "info", stream: Any = None) -> None:
    """Configure structlog for the whole process. ``fmt`` is ``json`` or ``console``."""
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
            structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback),
        ]
    elif fmt == "json":
        renderer = [
            structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False)),
            redact,
            structlog.processors.JSONRenderer(),
        ]
    else:
        raise ValueError(f"unknown log format {fmt!r} (json or console)")
    structlog.configure(
        processors=[*shared, *renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str = "vaultsync") -> Any:
    return structlog.get_logger(name)
