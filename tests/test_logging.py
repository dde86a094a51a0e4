"""Redaction: no secret reaches a log line or an exception trace."""

from __future__ import annotations

import io
import json

from vaultsync import logging as vlog


def _lines(fmt: str, emit) -> str:
    out = io.StringIO()
    vlog.configure(fmt, "debug", stream=out)
    emit(vlog.get_logger("test"))
    return out.getvalue()


def test_fields_named_like_secrets_are_redacted_and_stable_fields_kept():
    text = _lines("json", lambda log: log.info("x", service="api", secret="db", destination="api.env",
                                                password="hunter2", secret_id="abc-123", client_token="t"))
    event = json.loads(text)
    assert event["password"] == event["secret_id"] == event["client_token"] == vlog.REDACTED
    assert (event["service"], event["secret"], event["destination"]) == ("api", "db", "api.env")
    assert {"timestamp", "level", "event"} <= set(event) and event["app"] == "vaultsync"


def test_registered_values_and_token_shapes_are_scrubbed_everywhere():
    vlog.register_secret("pg-pass-XYZ-123")
    text = _lines("json", lambda log: log.warning("login failed", error="bad password pg-pass-XYZ-123 for hvs.CAESIabcdefghijklmnopqrstuvwxyz",
                                                   nested={"detail": ["s.abcdefghijklmnopqrstuvwx"]}))
    assert "pg-pass-XYZ-123" not in text and "hvs.CAES" not in text and "s.abcdefghij" not in text
    vlog.forget_secret("pg-pass-XYZ-123")
    assert "pg-pass-XYZ-123" in vlog.scrub("pg-pass-XYZ-123")


def test_exception_traces_have_no_locals_and_no_secrets():
    vlog.register_secret("super-secret-value-42")

    def boom(value=("super-secret-value-42")):
        local_copy = value  # noqa: F841 - a local that must not be rendered
        raise RuntimeError(f"failed with {value}")

    def emit(log):
        try:
            boom()
        except RuntimeError:
            log.exception("crashed")

    for fmt in ("json", "console"):
        text = _lines(fmt, emit)
        assert "super-secret-value-42" not in text, fmt
        assert "RuntimeError" in text
    assert '"locals"' not in _lines("json", emit)


def test_scrub_cost_stays_flat_as_credentials_come_and_go():
    # Relative to what earlier tests in this process left registered (KV values stay for the
    # process's life by design): 2000 credentials that came and went add nothing.
    before = len(vlog._known)
    for i in range(2000):
        value = f"credential-{i:05d}-abcdef"
        vlog.register_secret(value)
        vlog.forget_secret(value)
    assert len(vlog._known) <= before


def test_overlapping_secrets_are_hidden_whole_longest_first():
    """A secret that contains another must not leave its tail behind, whatever order they arrive in."""
    short, long_, other = "ovl-pass-1", "ovl-pass-1-and-its-long-tail", "zz-unrelated-secret-9"
    for order in ((short, long_), (long_, short)):
        for v in order:
            vlog.register_secret(v)
        try:
            text = vlog.scrub(f"a={long_} b={short} c={long_[::-1]}")
            assert text == f"a={vlog.REDACTED} b={vlog.REDACTED} c={long_[::-1]}", text
            # Forgetting an unrelated value re-orders what is left: still longest first.
            vlog.register_secret(other)
            vlog.forget_secret(other)
            assert "-and-its-long-tail" not in vlog.scrub(f"x {long_}")
        finally:
            for v in order:
                vlog.forget_secret(v)
    assert long_ in vlog.scrub(long_)
