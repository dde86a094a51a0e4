"""vaultsync.logging's redaction, unit by unit: the exact forms a secret is scrubbed in, the
registration counts, the processor on each kind of field, and both log formats.
(`tests/test_redaction.py` pushes canaries through the real processes.)"""

from __future__ import annotations

import io
import json
import sys

import uuid

import pytest

from vaultsync import logging as vlog
from vaultsync.logging import REDACTED


def test_forms_of_a_value_with_every_special_character():
    # Each form named by what writes it (see _escaped_forms); several coincide for this value.
    assert vlog.secret_forms("p'q\"r$s`t\\u é") == {
        "p'q\"r$s`t\\u é",  # as is; dotenv double quotes would write the same minus the escapes below
        "p'q\\\"r$s`t\\\\u \\u00e9",  # JSON, ASCII
        "p'q\\\"r$s`t\\\\u é",  # JSON; dotenv double quotes
        "p\\'q\"r$s`t\\\\u é",  # Python repr; dotenv single quotes
        "p'q\\\"r\\$s\\`t\\\\u é",  # shell/systemd double quotes
        "p'q\\\"r\\$s`t\\\\u é",  # quoting.quote_systemd
        "p'\\''q\"r$s`t\\u é",  # shell single quotes
        "p'q\"r$$s`t\\u é",  # compose $$
        "p'q\\\"r$$s`t\\\\u é",  # compose double quotes
        "p%27q%22r%24s%60t%5Cu%20%C3%A9",  # urlquote
    }


def test_forms_of_a_multi_line_value_include_each_long_line():
    assert vlog.secret_forms("line-one-long\nshort\nline-three-long\r\nx") == {
        "line-one-long\nshort\nline-three-long\r\nx",
        "line-one-long\\nshort\\nline-three-long\\r\\nx",  # JSON, dotenv double quotes
        "line-one-long\\nshort\\nline-three-long\r\\nx",  # shell double quotes keep \r
        "line-one-long\\nshort\\nline-three-long",  # ... whose lines are split on \r too
        "line-one-long%0Ashort%0Aline-three-long%0D%0Ax",
        "line-one-long", "line-three-long",  # lines of 8+ characters; "short" and "x" would shred logs
    }
    assert vlog.secret_forms("1234567\n12345678") >= {"12345678"} and "1234567" not in vlog.secret_forms("1234567\n12345678")
    assert "a\rb-cdefghij" in vlog.secret_forms("a\rb-cdefghij") and "b-cdefghij" in vlog.secret_forms("a\rb-cdefghij")


def test_forms_of_other_values():
    assert vlog.secret_forms(None) == set() and vlog.secret_forms(True) == set() and vlog.secret_forms(False) == set()
    assert vlog.secret_forms("abc") == set() and vlog.secret_forms("abcd") == {"abcd"}  # 1-3 characters are everywhere
    assert vlog.secret_forms(12345) == set() and vlog.secret_forms(123456) == {"123456"}  # short numbers too
    assert vlog.secret_forms(1234.5) == {"1234.5"}
    forms = vlog.secret_forms({"a": "value-1", "b": [1.5, "value-2"]})
    assert {"value-1", "value-2", '{"a": "value-1", "b": [1.5, "value-2"]}', '{"a":"value-1","b":[1.5,"value-2"]}',
            "{'a': 'value-1', 'b': [1.5, 'value-2']}", '[1.5, "value-2"]', '[1.5,"value-2"]', "[1.5, 'value-2']"} <= forms
    assert "1.5" not in forms
    assert {"value-3", '["value-3", "é-value"]', '[\\"value-3\\", \\"\\u00e9-value\\"]'} <= vlog.secret_forms(("value-3", "é-value"))

    class Opaque:
        def __str__(self) -> str:
            return "opaque-secret"
    assert "opaque-secret" in vlog.secret_forms(Opaque())
    assert '{"o": "opaque-secret"}' in vlog.secret_forms({"o": Opaque()})  # JSON falls back to str()


def test_json_of_what_json_refuses_is_its_str():
    loop: list = []
    loop.append(loop)
    assert vlog._json(loop) == "[[...]]"
    assert vlog._json({"k": 1}) == '{"k": 1}' and vlog._json({"k": 1}, compact=True) == '{"k":1}'
    assert vlog._json("é") == '"é"'


def test_registrations_are_counted_per_holder():
    value = "counted-secret-1"
    vlog.register_secret(value)
    vlog.register_secret(value)
    vlog.forget_secret(value)
    assert vlog.scrub(value) == REDACTED  # the other holder still has it
    vlog.forget_secret(value)
    assert vlog.scrub(value) == value
    vlog.forget_secret(value)  # one too many: nothing to drop, nothing breaks
    assert vlog.scrub(value) == value
    vlog.register_secret(None)
    vlog.register_secret("ab")
    assert vlog.scrub("ab") == "ab"


def test_a_remembered_value_stays_scrubbed_whatever_the_order():
    """KV values are scrubbed for the life of the process: a holder that registered the same value
    (a rendered credential equal to a KV value) and forgets it must not un-hide it."""
    for first_registered in (True, False):
        value = f"kv-and-lease-{first_registered}-{uuid.uuid4().hex}"  # new each run: remembered values never go
        if first_registered:
            vlog.register_secret(value)
            vlog.remember_secret(value)
        else:
            vlog.remember_secret(value)
            vlog.register_secret(value)
        vlog.remember_secret(value)  # read again: still one registration of the process's own
        vlog.forget_secret(value)
        assert vlog.scrub(f"x {value}") == f"x {REDACTED}", first_registered
        vlog.forget_secret(value)
        assert vlog.scrub(f"x {value}") == f"x {REDACTED}", first_registered


def test_remembering_a_secret_that_contains_another_hides_both_whole():
    short = f"rem-{uuid.uuid4().hex[:8]}"
    vlog.remember_secret(short)
    vlog.remember_secret(f"{short}-with-a-tail")
    assert vlog.scrub(f"{short}-with-a-tail {short}") == f"{REDACTED} {REDACTED}"
    assert vlog._known[short] == 1
    vlog.remember_secret(None)
    assert vlog.scrub(f"x {short}") == f"x {REDACTED}"


def test_scrub_hides_token_shapes_but_not_dotted_names():
    assert vlog.scrub("t=hvs.CAESIabcdefghijklmnopqrst end") == f"t={REDACTED} end"
    assert vlog.scrub("?token%3Dhvs.CAESIabcdefghijklmnopqrst") == f"?token%3D{REDACTED}"
    assert vlog.scrub("apps.production-environment-name") == "apps.production-environment-name"


def test_excerpt_keeps_the_end_scrubbed():
    vlog.register_secret("excerpt-secret-99")
    try:
        assert vlog.excerpt("abcdef", limit=6) == "abcdef"
        assert vlog.excerpt("abcdefg", limit=6) == "…bcdefg"
        assert vlog.excerpt("start excerpt-secret-99", limit=100) == f"start {REDACTED}"
        # Scrubbed before cut: the secret is not left as a tail that no longer matches.
        assert vlog.excerpt("excerpt-secret-99 end", limit=12) == "…edacted] end"
        # A tail: its first, partial line is dropped (it may be a secret's end).
        assert vlog.excerpt("ret-99 leftover\nline two\nline three", limit=100, cut_at_start=True) == "line two\nline three"
        assert vlog.excerpt("one line only", limit=100, cut_at_start=True) == ""
    finally:
        vlog.forget_secret("excerpt-secret-99")


def test_redact_processor_on_each_kind_of_field():
    vlog.register_secret("proc-secret-77")
    try:
        event = {
            "event": "said proc-secret-77",
            "token": "anything", "Password": "x", "db_password": "y", "value": 7,  # a number named value: kept
            "data": None, "secret": "db",  # "secret" names a secret, not its value
            "nested": {"ok": "a proc-secret-77 b", "client_token": "z", "count": 3, "list": ["proc-secret-77", 5]},
            "tuple": ("proc-secret-77",), "number": 12, "flag": True,
        }
        out = vlog.redact(None, "info", event)
        assert out == {
            "event": f"said {REDACTED}",
            "token": REDACTED, "Password": REDACTED, "db_password": REDACTED, "value": 7, "data": None, "secret": "db",
            "nested": {"ok": f"a {REDACTED} b", "client_token": REDACTED, "count": 3, "list": [REDACTED, 5]},
            "tuple": [REDACTED], "number": 12, "flag": True,
        }
        assert vlog.redact(None, "info", {"mytoken": "kept", "token_ttl": "kept"}) == {"mytoken": "kept", "token_ttl": "kept"}
        assert vlog.redact(None, "info", {"exception": "Traceback: proc-secret-77"}) == {"exception": f"Traceback: {REDACTED}"}
        frames = [{"exc_type": "E", "exc_value": "boom proc-secret-77", "value": "proc-secret-77", "frames": [{"line": "proc-secret-77"}]},
                  "proc-secret-77", 3]
        assert vlog.redact(None, "info", {"exception": frames}) == {"exception": [
            {"exc_type": "E", "exc_value": f"boom {REDACTED}", "value": REDACTED, "frames": [{"line": REDACTED}]}, REDACTED, 3]}
        assert vlog.redact(None, "info", {"exception": {"value": "proc-secret-77"}}) == {"exception": {"value": REDACTED}}
        assert vlog._scrub_exception(None) is None
    finally:
        vlog.forget_secret("proc-secret-77")


def _log(fmt: str, level: str, emit) -> str:
    out = io.StringIO()
    vlog.configure(fmt, level, stream=out)
    emit(vlog.get_logger("unit"))
    return out.getvalue()


def test_json_lines_carry_app_level_and_utc_timestamp():
    text = _log("json", "info", lambda log: (log.debug("hidden"), log.info("shown", k="v"), log.error("bad")))
    events = [json.loads(line) for line in text.splitlines()]
    assert [e["event"] for e in events] == ["shown", "bad"]
    assert [e["level"] for e in events] == ["info", "error"]
    assert events[0]["k"] == "v" and events[0]["app"] == "vaultsync"
    assert events[0]["timestamp"].endswith("Z") and "T" in events[0]["timestamp"]
    assert json.loads(_log("json", "INFO", lambda log: log.info("x", app="other")))["app"] == "other"


def test_levels_filter():
    assert _log("json", "warning", lambda log: log.info("no")) == ""
    assert json.loads(_log("json", "warning", lambda log: log.warning("yes")))["event"] == "yes"
    assert json.loads(_log("json", "debug", lambda log: log.debug("dbg")))["level"] == "debug"


def test_json_exceptions_are_structured_without_locals():
    def emit(log):
        try:
            secret_local = "local-value"  # noqa: F841
            raise KeyError("why")
        except KeyError:
            log.exception("crashed")
    event = json.loads(_log("json", "info", emit))
    assert event["exception"][0]["exc_type"] == "KeyError" and "local-value" not in json.dumps(event)
    assert all("locals" not in frame for frame in event["exception"][0]["frames"])


def test_console_format_is_plain_text():
    def emit(log):
        log.info("hello", service="api", password="pw-secret")
        try:
            raise ValueError("broken")
        except ValueError:
            log.error("crashed", exc_info=True)
    text = _log("console", "info", emit)
    assert "\x1b[" not in text  # no colours
    first = text.splitlines()[0]
    assert "hello" in first and "service=api" in first and "pw-secret" not in text and "[info" in first
    assert "Traceback (most recent call last)" in text and "ValueError: broken" in text


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match=r"^unknown log format 'xml' \(json or console\)$"):
        vlog.configure("xml")


def test_default_stream_is_stderr(capsys):
    vlog.configure("json", "info")
    vlog.get_logger().info("to stderr")
    captured = capsys.readouterr()
    assert captured.out == "" and json.loads(captured.err)["event"] == "to stderr"
    vlog.configure("json", "info", stream=sys.stderr)


def test_defaults_are_json_at_info():
    out = io.StringIO()
    vlog.configure(stream=out)
    log = vlog.get_logger()
    log.debug("hidden")
    log.info("shown")
    assert [json.loads(line)["event"] for line in out.getvalue().splitlines()] == ["shown"]
    vlog.configure("json", "info", stream=sys.stderr)
