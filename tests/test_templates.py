"""The template style: Jinja2 in a sandbox, strict about missing keys, quoting filters per reader."""

from __future__ import annotations

import io
import json
import urllib.parse

import pytest
from dotenv import dotenv_values

from tests import readers
from vaultsync.formats import FormatError, render

DEST = "/srv/app/.env"
TPL = "/etc/vaultsync/app.env.j2"
NASTY = "p@ss:w/rd 'q' \"dq\" $HOME ${X} `id` \\ #x\nline2"


def tpl(source, values):
    return render("template", values, template=source, destination=DEST, template_name=TPL)


def test_substitutes_and_keeps_the_authors_layout():
    values = {"DB_USERNAME": "v-app-1", "DB_PASSWORD": NASTY, "HOST": "db"}
    out = tpl("# mine\nurl=postgres://{{ DB_USERNAME }}@{{ HOST }}/app\n", values)
    assert out == "# mine\nurl=postgres://v-app-1@db/app\n"


def test_url_filter_builds_a_database_url_from_a_lease():
    values = {"DB_USERNAME": "v-app-1", "DB_PASSWORD": NASTY}
    out = tpl("postgres://{{ DB_USERNAME | urlquote }}:{{ DB_PASSWORD | urlquote }}@db:5432/app", values)
    parsed = urllib.parse.urlsplit(out)
    assert urllib.parse.unquote(parsed.password) == NASTY and parsed.hostname == "db"


def test_quoting_filters_match_their_readers(tmp_path):
    values = {"A": NASTY}
    dotenv_text = tpl("A={{ A | dotenv }}\n", values)
    assert dotenv_values(stream=io.StringIO(dotenv_text)) == values
    shell_text = tpl("export A={{ A | shell }}\n", values)
    assert readers.read_shell(["bash"], shell_text, tmp_path)["A"] == NASTY
    assert readers.read_systemd(tpl("A={{ A | systemd }}\n", values)) == values
    assert json.loads(tpl("{\"a\": {{ A | json }}}", values)) == {"a": NASTY}
    envcheck = readers.Envcheck(readers.build_envcheck())
    assert envcheck.read("compose", tpl("A={{ A | compose }}\n", values)) == values


def test_every_secret_reachable_even_with_dotted_names():
    values = {"com.example.key": "dotted", "NODE-ENV": "prod"}
    assert tpl('{{ secrets["com.example.key"] }} {{ secrets["NODE-ENV"] }}', values) == "dotted prod"


def test_missing_key_names_file_line_and_key_never_a_value():
    with pytest.raises(FormatError) as info:
        tpl("ok={{ USER }}\nbad={{ PASSWORD }}\n", {"USER": "SECRETVALUE"})
    message = str(info.value)
    assert f"template {TPL}:2" in message and "PASSWORD" in message and DEST in message
    assert "SECRETVALUE" not in message


def test_syntax_error_names_file_and_line():
    with pytest.raises(FormatError, match=rf"template {TPL}:3: syntax error"):
        tpl("a\nb\n{{ A | }}\n", {"A": "SECRETVALUE"})


def test_runtime_errors_never_show_a_value():
    for source in ("{{ A + 1 }}", "{{ A | docker }}", "{{ A | int(base=99) }}x{{ A.foo() }}"):
        with pytest.raises(FormatError) as info:
            tpl(source, {"A": "SECRETVALUE\n"})
        assert "SECRETVALUE" not in str(info.value) and TPL in str(info.value)


def test_sandbox_blocks_python_internals(tmp_path):
    marker = tmp_path / "pwned"
    source = "{{ A.__class__.__mro__[1].__subclasses__() }}{{ cycler.__init__.__globals__.os.system('touch %s') }}" % marker
    with pytest.raises(FormatError):
        tpl(source, {"A": "x"})
    assert not marker.exists()


@pytest.mark.parametrize("source", [
    "{{ secrets[A] }}",  # a value used as a key: Jinja's message quotes the key
    "{{ A | selectattr(A) | list }}",
    "{{ secrets | attr(A) }}",
    "{{ A | max(attribute=A) }}",
    "{{ A | groupby(A) }}",
])
def test_a_value_used_as_a_name_is_never_echoed(source):
    with pytest.raises(FormatError) as info:
        tpl(source, {"A": "SECRETVALUE"})
    assert "SECRETVALUE" not in str(info.value) and f"template {TPL}:1" in str(info.value)


def test_names_the_template_spells_are_shown():
    with pytest.raises(FormatError, match=r"'NO_SUCH'"):
        tpl('{{ secrets["NO_SUCH"] }}', {"A": "x"})
    with pytest.raises(FormatError, match=r"'nope'"):
        tpl("{{ A.nope }}", {"A": "x"})
    with pytest.raises(FormatError, match=r"no attribute or key 7"):
        tpl("{{ A.split()[7] }}", {"A": "x"})
