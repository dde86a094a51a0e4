"""vaultsync.formats' refusals, message by message: each names the destination and the key, never
the value, and says exactly why. (`tests/test_formats.py` checks each style against its reader.)"""

from __future__ import annotations

import pytest

from vaultsync import formats
from vaultsync.formats import FormatError


def test_format_error_names_destination_and_key():
    err = FormatError("/srv/app.env", "DB_PASS", "why")
    assert str(err) == "/srv/app.env: key 'DB_PASS': why" and (err.destination, err.key, err.reason) == ("/srv/app.env", "DB_PASS", "why")
    assert str(FormatError("/srv/app.env", None, "why")) == "/srv/app.env: why"
    assert str(FormatError("/srv/app.env", "", "why")) == "/srv/app.env: key '': why"


def test_check_key_messages():
    assert formats.check_key("A.b-c_1", "d") == "A.b-c_1"
    with pytest.raises(FormatError, match=r"^d: key 'A B': invalid variable name for the dotenv style: "):
        formats.check_key("A B", "d")  # the default style
    with pytest.raises(FormatError) as err:
        formats.check_key(7, "dest")
    assert str(err.value) == "dest: variable name of type int: must be a str" and err.value.key is None
    with pytest.raises(FormatError) as err:
        formats.check_key("A B", "dest", "compose")
    assert str(err.value) == "dest: key 'A B': invalid variable name for the compose style: must be letters, digits, '_', '.', '-'"
    assert err.value.key == "A B"
    with pytest.raises(FormatError, match=r"^dest: key 'a.b': invalid variable name for the shell style: must be "
                                          r"\[A-Za-z_\]\[A-Za-z0-9_\]\* \(a shell cannot assign other names\)$"):
        formats.check_key("a.b", "dest", "shell")
    with pytest.raises(FormatError, match=r"for the systemd style: must be .* \(systemd drops other names\)$"):
        formats.check_key("1A", "dest", "systemd")
    with pytest.raises(FormatError, match=r"^dest: key '': invalid variable name for the json style: must be a non-empty string$"):
        formats.check_key("", "dest", "json")
    assert formats.check_key("any thing=", "dest", "json") == "any thing="
    # An unknown style is checked by the common rule, not waved through.
    with pytest.raises(FormatError, match=r"for the odd style: must be letters, digits, '_', '.', '-'$"):
        formats.check_key("A B", "dest", "odd")
    assert formats.check_key("A", "dest", "odd") == "A"


@pytest.mark.parametrize("value, reason", [
    (5, "value must be a string, not int"),
    (None, "value must be a string, not NoneType"),
    ("a\x00b", "value contains a NUL byte, which no environment can hold"),
    ("\ud800", "value is not encodable as UTF-8 (lone surrogate)"),
])
@pytest.mark.parametrize("style", formats.GENERATED)
def test_value_refusals_are_exact(style, value, reason):
    assert formats.refusal(style, "K", value) == reason
    with pytest.raises(FormatError) as err:
        formats.render(style, {"K": value}, destination="/d")  # type: ignore[dict-item]
    assert str(err.value) == f"/d: key 'K': {reason}" and err.value.key == "K"


def test_refusal_of_keys_and_docker_values():
    assert formats.refusal("dotenv", "A B", "v") == "invalid variable name for the dotenv style: must be letters, digits, '_', '.', '-'"
    assert formats.refusal("dotenv", 3, "v") == "variable name of type int: must be a str"
    assert formats.refusal("dotenv", "K", "two\nlines") is None
    assert formats.refusal("docker", "K", "two\nlines") is not None
    assert formats.refusal("docker", "K", "plain") is None and formats.refusal("shell", "UID", "1") is None


def test_refusals_list_every_style_and_bash_reserved_names():
    out = formats.refusals({"OK": "v", "UID": "1", "BASH_ENV": "x", "NL": "a\nb", "bad key": "v"})
    assert out["shell"]["UID"] == out["shell"]["BASH_ENV"] == "skipped: bash reserves this name (read-only or set by the shell)"
    assert out["shell"]["bad key"].startswith("invalid variable name for the shell style")
    assert "UID" not in out["dotenv"] and "NL" not in out["dotenv"] and "NL" in out["docker"]
    assert set(out) == {"dotenv", "compose", "docker", "shell", "systemd"}  # json carries all of them
    assert all("OK" not in keys for keys in out.values())
    assert formats.refusals({"OK": "v"}) == {}
    assert formats.refusals({"UID": "1"}, styles=("dotenv",)) == {}
    assert formats.refusals({3: "v"}, styles=("json",)) == {"json": {"3": "variable name of type int: must be a str"}}


def test_render_style_errors():
    with pytest.raises(FormatError) as err:
        formats.render("xml", {}, destination="/d")
    assert str(err.value) == "/d: unknown style 'xml' (choose from dotenv, compose, docker, shell, systemd, json, template)"
    with pytest.raises(FormatError, match=r"^/d: the template style needs a template$"):
        formats.render("template", {}, destination="/d")
    with pytest.raises(FormatError, match=r"^/d: a template was given but the style is 'dotenv'$"):
        formats.render("dotenv", {}, template="x", destination="/d")
    with pytest.raises(FormatError) as err:
        formats.render("dotenv", {3: "v"}, destination="/d")  # type: ignore[dict-item]
    assert err.value.key is None and str(err.value) == "/d: variable name of type int: must be a str"


def test_render_outputs():
    values = {"B": "two words", "A": "x"}
    assert formats.render("docker", values, destination="d") == formats.HEADER + "A=x\nB=two words\n"
    assert formats.render("shell", values, destination="d") == "export A='x'\nexport B='two words'\n"
    assert formats.render("json", values, destination="d") == '{\n  "A": "x",\n  "B": "two words"\n}\n'
    assert formats.render("json", {}, destination="d") == "{}\n"
    assert formats.render("json", {"É": "é"}, destination="d") == '{\n  "É": "é"\n}\n'
    assert formats.render("dotenv", {}, destination="d") == formats.HEADER
    warned: list[str] = []
    text = formats.render("shell", {"UID": "0", "A": "x"}, destination="/d", warn=warned.append)
    assert text == "export A='x'\n# UID is not set here: bash reserves this name\n"
    assert warned == ["/d: key 'UID' left out of the shell style: bash reserves this name"]
    assert formats.render("shell", {"UID": "0"}, destination="/d") == "# UID is not set here: bash reserves this name\n"
    assert formats.render("template", {"A": "x"}, template="{{ A }}", destination="d") == "x"


def test_keys_of_mixed_types_fail_on_the_first_string_key_first():
    """Non-string keys sort after the strings (never a TypeError from comparing them): a bad value
    of a string key is reported before the non-string key."""
    with pytest.raises(FormatError) as err:
        formats.render("dotenv", {3: "v", "A": 5}, destination="/d")  # type: ignore[dict-item]
    assert err.value.key == "A" and err.value.reason == "value must be a string, not int"
    with pytest.raises(FormatError) as err:
        formats.render("json", {"B": "x", 3: "v", "A": "y"}, destination="/d")  # type: ignore[dict-item]
    assert err.value.key is None and err.value.reason == "variable name of type int: must be a str"
