"""Hook output and redaction (issue 10, finding 2): no secret reaches a log through a hook.

The end-to-end test renders a corpus of canary values in every style, runs a hook that prints
the whole file on stdout and stderr and fails, and searches every log line, at every level and
in both formats, for any piece of any canary.
"""

from __future__ import annotations

import io
import sys

import pytest

from tests.envcorpus import PEM
from vaultsync import formats
from vaultsync import logging as vlog
from vaultsync import render

MARK = "ZQX"  # every canary repeats it, so a cut piece of one still shows

CANARIES: dict[str, object] = {
    "QUOTES": f"{MARK}1-it's {MARK}1 a \\ back {MARK}1 \"dq\" {MARK}1 $HOME {MARK}1 `tick` {MARK}1",
    "PEM": PEM.replace("PRIVATE KEY", f"{MARK}2 KEY").replace("\n1Tn0", f"\n{MARK}2").replace("\nMIIB", f"\n{MARK}2"),
    "HASHES": f"{MARK}3 = spaced # {MARK}3 hash {MARK}3 ",
    "CRLF": f"{MARK}4a-first-line\r\n{MARK}4b-second-line",
    "NUMBER": 918273645501,
    "NESTED": {"user": f"{MARK}6-user-abcdef", "n": 7654321987, "list": [f"{MARK}6-item-ghijkl"]},
    "UNICODE": f"{MARK}7 grüße 🐍 {MARK}7-日本語",
    "DOLLARS": f"{MARK}8$${MARK}8${{{MARK}8}}",
    "LONG": f"{MARK}9-" * 1500,
    "PLAIN": f"{MARK}A-plain.value/with:colons@{MARK}A",  # longer than the hook output tail: the tail cuts into it
}
NUMBERS = ("918273645501", "7654321987")


def _leaks(text: str) -> list[str]:
    found = [MARK] if MARK in text else []
    return found + [n for n in NUMBERS if n in text]


def _as_rendered(value: object) -> str:
    import json

    return value if isinstance(value, str) else json.dumps(value)


def _template(keys) -> str:
    return "".join(f"{k}={{{{ {k} }}}}\n" for k in keys)  # raw values: the worst case


def _carried_by(style: str) -> dict[str, object]:
    """The canaries a style can carry (docker refuses newlines and leading quotes, by design)."""
    kept = {}
    for key, value in CANARIES.items():
        try:
            formats.render(style, {key: _as_rendered(value)}, template=_template([key]) if style == "template" else None,
                           destination="probe")
        except formats.FormatError:
            continue
        kept[key] = value
    return kept


def test_token_shape_after_a_word_character_is_scrubbed():
    text = vlog.scrub("GET /callback?token%3Dhvs.CAESIabcdefghijklmnopqrstuvwxyz012 and xs.abcdefghijklmnopqrstuvw9Z")
    assert "CAESI" not in text and "abcdefghijklmnop" not in text, text


def test_non_string_values_are_scrubbed_in_their_json_and_str_forms():
    value = {"port": 918273645501, "inner": {"k": "nested-secret-value"}}
    vlog.register_secret(value)
    try:
        line = f"{value} | {918273645501} | {__import__('json').dumps(value)} | nested-secret-value"
        assert _leaks(vlog.scrub(line)) == [] and "nested-secret" not in vlog.scrub(line)
    finally:
        vlog.forget_secret(value)


def test_escaped_forms_of_each_style_are_scrubbed():
    value = f"{MARK}-it's a \\ back \"slash\" $x ${{y}} `z`\n{MARK} and a second line of it"
    vlog.register_secret(value)
    vlog.register_secret(value.replace("\n", " "))
    try:
        for style in formats.STYLES:
            template = _template(["K"]) if style == "template" else None
            one_line = style == "docker"  # docker refuses line breaks (by design)
            out = formats.render(style, {"K": value.replace("\n", " ") if one_line else value}, template=template,
                                 destination="x")
            assert MARK in out and MARK not in vlog.scrub(out), (style, vlog.scrub(out))
    finally:
        vlog.forget_secret(value)
        vlog.forget_secret(value.replace("\n", " "))


def test_hook_output_is_scrubbed_before_it_is_cut(tmp_path):
    """The tail of a chatty hook starts in the middle of a PEM: the cut piece must not leak."""
    vlog.register_secret(CANARIES["PEM"])
    try:
        pem = CANARIES["PEM"]
        for cut in range(5, 60, 7):  # where the kept tail starts, inside the PEM
            trailing = 4095 - len(pem) + cut  # tail = last 4096 bytes = pem[cut:] + trailing + "\n"
            script = f"import sys; sys.stdout.write('x' * 5000 + {pem!r} + 'y' * {trailing} + '\\n')"
            result = render.run_command([sys.executable, "-c", script], timeout=10)
            assert result.stdout_tail.startswith(pem[cut:cut + 10])
            excerpt = result.output_excerpt()
            assert result.stdout_truncated and not _leaks(excerpt["stdout"] or ""), excerpt
            assert len(excerpt["stdout"] or "") <= 513
    finally:
        vlog.forget_secret(CANARIES["PEM"])


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_every_style_through_a_failing_hook_leaks_no_canary_at_any_level(kv2, root, cli, tmp_path, log_format):
    styles = [s for s in formats.STYLES]
    assert {"dotenv", "docker", "shell", "template"} <= set(styles)
    body = ""
    for style in styles:
        service = f"leak-{style}"
        root.secrets.kv.v2.create_or_update_secret(path=f"compose/{service}", secret=_carried_by(style), mount_point=kv2)
    for level in ("debug", "info", "warning", "error"):
        work = tmp_path / f"{level}"
        work.mkdir()
        body = ""
        for style in styles:
            service = f"leak-{style}"
            dest = work / f"{service}.out"
            extra = ""
            if style == "template":
                (work / "t.tmpl").write_text(_template(_carried_by(style)))
                extra = 'template = "t.tmpl"\n'
            body += (f'[services.{service}]\n[[services.{service}.destinations]]\npath = "{dest.name}"\nstyle = "{style}"\n{extra}'
                     f'command = ["/bin/sh", "-c", "cat {dest}; cat {dest} >&2; exit 3"]\n')
        cfg = work / "vaultsync.toml"
        cfg.write_text(f'[kv]\nmount = "{kv2}"\nprefix = "compose"\n\n{body}')
        res = cli("--config", str(cfg), "--log-format", log_format, "--log-level", level, "render")
        assert res.code == 4, res.stderr[-2000:]  # every file rendered, every hook failed (exit 3)
        for style in styles:
            assert MARK in (work / f"leak-{style}.out").read_text()  # the hooks really had canaries to print
        assert _leaks(res.stdout + res.stderr) == [], (level, style, res.stderr[:3000])
        if level == "debug":
            assert "hook output" in res.stderr  # the excerpt is logged, scrubbed
        else:
            assert "hook output" not in res.stderr


def test_excerpt_is_bounded_and_scrubs_registered_values():
    vlog.register_secret("a-registered-value-123")
    try:
        text = vlog.excerpt("z" * 5000 + " a-registered-value-123", limit=100)
        assert "a-registered" not in text and len(text) <= 101
    finally:
        vlog.forget_secret("a-registered-value-123")


def test_logs_at_every_level_never_show_hook_output_above_debug():
    out = io.StringIO()
    vlog.configure("json", "info", stream=out)
    vlog.get_logger("t").debug("hook output", stdout="zzz")
    assert out.getvalue() == ""


def test_token_shape_spares_lower_case_file_and_host_names():
    for name in ("apps.production-environment.env", "vaults.example-company-internal"):
        assert vlog.scrub(name) == name
    for token in ("s.Xk2mP9qLw8Zr4Tn6Yb3Vc7Hd", "hvb.AAAAAQJ-abcdefghijklmnopqrstuv", "r.abcdefghijklmnopqrstuvw1"):
        assert vlog.scrub(f"?token%3D{token}&y=1") == f"?token%3D{vlog.REDACTED}&y=1"
