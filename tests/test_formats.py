"""Env-file styles, each checked against its real reader (tests/readers.py): python-dotenv,
compose-go's and docker's env-file parsers (tools/envcheck), bash/dash, systemd's rules, JSON."""

from __future__ import annotations

import io
import json
import random
import subprocess
from pathlib import Path

import pytest
from dotenv import dotenv_values

from tests import readers
from vaultsync.errors import BadInput
from vaultsync.formats import GENERATED, HEADER, STYLES, FormatError, quote_dotenv, quote_shell, refusals, render

ROOT = Path(__file__).resolve().parent.parent
DEST = "/srv/app/.env"

PEM = (
    "-----BEGIN PRIVATE KEY-----\n"
    "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\n"
    "a+b/c==\n"
    "-----END PRIVATE KEY-----\n"
)

# Values every reader must get back byte for byte (where the style can carry them).
NASTY = [
    "",
    "plain",
    "with space",
    "  leading and trailing  ",
    " ",
    "\t",
    "tab\tinside",
    "single'quote",
    "'",
    "''",
    "'quoted'",
    'double"quote',
    '"',
    '"quoted"',
    "back\\slash",
    "\\",
    "\\\\",
    "trailing backslash\\",
    "\\'",
    '\\"',
    "\\n literal",
    "dollar$",
    "$",
    "$$",
    "$HOME",
    "${",
    "${HOME",
    "$(rm -rf /)",
    "`id`",
    "$((1+1))",
    "a#b",
    "#leading hash",
    "a #comment",
    "a=b=c",
    "=",
    "multi\nline",
    "\n",
    "\n\nblank lines\n\n",
    PEM,
    "crlf\r\nline",
    "cr\ronly",
    "\r",
    "unicode é ü 漢字 🔑",
    "\u00a0nbsp\u00a0",
    "\u2028line sep",
    "\ufeffbom",
    "ctrl\x01\x07\x1b[31m",
    "semi;colon&amp|pipe>redir<in",
    "*glob?[x]",
    "~tilde",
    "!bang",
    "export X=1",
    "a\\\nb",
    "${X:foo}",
    "$X{Y}",
    "{}",
    "}${",
]
# Values python-dotenv would expand even inside single quotes.
DOTENV_EXPANDED = ["${HOME}", "x${HOME}y", "${}", "${X:-default}", "${X:-}", "a${B}c${D}", "${:-$}{X}"]


def as_mapping(values):
    return {f"V{i:03d}": v for i, v in enumerate(values)}


def no_secret_in(message: str, value: str) -> None:
    if len(value) >= 3:
        assert value not in message


@pytest.fixture(scope="session")
def envcheck():
    return readers.Envcheck(readers.build_envcheck())


def read_back(style, text, folder, envcheck, shell=("bash",)):
    """What the style's reader gets out of ``text``."""
    if style == "dotenv":
        reads = readers.read_dotenv(text, folder)
        assert all(r == reads[0] for r in reads), reads
        return reads[0]
    if style in ("compose", "docker"):
        got = envcheck.read(style, text)
        assert got is not None, f"{style} refused the file"
        return got
    if style == "shell":
        env = readers.read_shell(list(shell), text, folder)
        return {k: v for k, v in env.items() if k not in readers.SHELL_OWN}
    if style == "systemd":
        return readers.read_systemd(text)
    if style == "json":
        return json.loads(text)
    raise AssertionError(style)


# --------------------------------------------------------------------------
# Common rules
# --------------------------------------------------------------------------


@pytest.mark.parametrize("style", GENERATED)
def test_sorted_with_trailing_newline_and_header(style):
    text = render(style, {"B": "2", "A": "1", "_C": "3", "a": "4"}, destination=DEST)
    assert text.endswith("\n") and not text.endswith("\n\n")
    if style == "json":
        assert list(json.loads(text)) == ["A", "B", "_C", "a"]
        return
    lines = text.splitlines()
    if style != "shell":
        assert lines[0] + "\n" == HEADER and "source" in HEADER
        lines = lines[1:]
    else:
        assert not text.startswith("#")
    keys = [line.split("=", 1)[0].removeprefix("export ") for line in lines]
    assert keys == ["A", "B", "_C", "a"]


@pytest.mark.parametrize("style", GENERATED)
def test_empty_mapping(style):
    assert render(style, {}, destination=DEST) == {"json": "{}\n", "shell": ""}.get(style, HEADER)


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("key", ["A B", "", "A=B", "é", "A\nB", "$A", "A#B", "A'B"])
def test_invalid_keys(style, key):
    if style == "json" and key:
        return  # any string is a JSON key
    with pytest.raises(FormatError) as info:
        render(style, {key: "v"}, template="x" if style == "template" else None, destination=DEST)
    assert DEST in str(info.value) and "invalid variable name" in str(info.value)
    assert info.value.key == key


@pytest.mark.parametrize("style", ["dotenv", "compose", "docker", "json"])
@pytest.mark.parametrize("key", ["NODE-ENV", "com.example.key", "1ABC", "a.b-c_d"])
def test_dashed_and_dotted_keys_where_the_reader_takes_them(style, key, tmp_path, envcheck):
    text = render(style, {key: "v$1 'x'"}, destination=DEST)
    assert read_back(style, text, tmp_path, envcheck) == {key: "v$1 'x'"}


@pytest.mark.parametrize("style", ["shell", "systemd"])
@pytest.mark.parametrize("key", ["NODE-ENV", "com.example.key", "1ABC"])
def test_shell_names_only_for_shell_and_systemd(style, key):
    with pytest.raises(FormatError) as info:
        render(style, {key: "v"}, destination=DEST)
    assert info.value.key == key and "[A-Za-z_][A-Za-z0-9_]*" in str(info.value)


def test_non_string_key_and_value():
    with pytest.raises(FormatError):
        render("dotenv", {1: "v"}, destination=DEST)  # type: ignore[dict-item]
    with pytest.raises(FormatError) as info:
        render("dotenv", {"K": 1}, destination=DEST)  # type: ignore[dict-item]
    assert "'K'" in str(info.value)


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("value", ["nul\x00SECRETVALUE", "surrogate\ud800SECRETVALUE"])
def test_unrepresentable_in_any_style(style, value):
    with pytest.raises(FormatError) as info:
        render(style, {"TOKEN": value}, template="{{ TOKEN }}" if style == "template" else None, destination=DEST)
    assert "'TOKEN'" in str(info.value) and DEST in str(info.value)
    assert "SECRETVALUE" not in str(info.value)


def test_format_error_is_bad_input():
    assert issubclass(FormatError, BadInput)
    err = FormatError("/x", "K", "why")
    assert (err.destination, err.key, err.reason) == ("/x", "K", "why")
    assert str(err) == "/x: key 'K': why"


def test_unknown_style_and_template_misuse():
    with pytest.raises(FormatError, match="unknown style 'yaml'"):
        render("yaml", {}, destination=DEST)
    with pytest.raises(FormatError, match="needs a template"):
        render("template", {}, destination=DEST)
    with pytest.raises(FormatError, match="template was given"):
        render("dotenv", {}, template="{{ A }}", destination=DEST)


# --------------------------------------------------------------------------
# Every style, the whole nasty corpus, against its real reader
# --------------------------------------------------------------------------

ALL_NASTY = NASTY + DOTENV_EXPANDED


@pytest.mark.parametrize("style", ["dotenv", "compose", "systemd", "json"])
def test_carries_every_value(style, tmp_path, envcheck, monkeypatch):
    for name in ("HOME", "X", "B", "D"):
        monkeypatch.delenv(name, raising=False)
    values = as_mapping(ALL_NASTY)
    text = render(style, values, destination=DEST)
    assert read_back(style, text, tmp_path, envcheck) == values
    for key, value in values.items():  # one per file: no value leans on a neighbour
        assert read_back(style, render(style, {key: value}, destination=DEST), tmp_path, envcheck) == {key: value}


@pytest.mark.parametrize("shell", [" ".join(a) for a in readers.SHELLS])
def test_shell_round_trip_by_sourcing(shell, tmp_path):
    marker = tmp_path / "pwned"
    evil = [
        f"$(touch {marker})",
        f"`touch {marker}`",
        f"'; touch {marker}; '",
        f"'\"$(touch {marker})\"'",
        f"\\'$(touch {marker})",
        f"x\n touch {marker}\n",
    ]
    values = as_mapping(ALL_NASTY + evil)
    text = render("shell", values, destination=DEST)
    env = readers.read_shell(shell.split(), text, tmp_path)
    assert not marker.exists()
    for key, value in values.items():
        assert env.get(key) == value, (shell, key)


def test_dotenv_keeps_dollar_brace_literal_under_interpolation(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", "/home/x")
    values = {"A": "${HOME}", "B": "x${HOME}y", "C": "${X:-default}", "D": "$${HOME}", "E": "${:-$}"}
    text = render("dotenv", values, destination=DEST)
    for read in readers.read_dotenv(text, tmp_path):
        assert read == values


def test_dotenv_quoting_shape():
    assert quote_dotenv("a'b\\c") == "'a\\'b\\\\c'"
    assert quote_dotenv("line1\nline2") == "'line1\nline2'"  # PEM stays readable
    assert quote_dotenv("a\r\nb\"\\") == '"a\\r\\nb\\"\\\\"'
    assert quote_dotenv("${A}") == "'${:-$}{A}'"
    assert render("dotenv", {"A": "x"}, destination=DEST) == HEADER + "A='x'\n"


def test_dotenv_fuzz_agrees_with_python_dotenv(monkeypatch, tmp_path):
    alphabet = ["$", "{", "}", ":", "-", "'", '"', "\\", "\n", "\r", " ", "\t", "#", "=", "a", "X", "é", "`"]
    alphabet += ["${", ":-", "}", "${a}", "$a"]
    rng = random.Random(20240601)
    monkeypatch.setenv("a", "ENVIRONMENT")
    for _ in range(2000):
        value = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        text = render("dotenv", {"K": value}, destination=DEST)
        assert dotenv_values(stream=io.StringIO(text)) == {"K": value}, repr(value)


def test_shell_quoting_shape():
    assert quote_shell("it's") == "'it'\\''s'"
    assert render("shell", {"A": "x y"}, destination=DEST) == "export A='x y'\n"


@pytest.mark.parametrize("key", ["UID", "EUID", "PPID", "SHELLOPTS", "BASHOPTS", "BASH_VERSINFO", "BASH_ENV", "RANDOM"])
def test_shell_leaves_out_bash_reserved_names_with_a_warning(key, tmp_path):
    warnings = []
    text = render("shell", {key: "1000", "GID": "1000"}, destination=DEST, warn=warnings.append)
    assert f"# {key} is not set here: bash reserves this name\n" in text
    assert len(warnings) == 1 and key in warnings[0] and "1000" not in warnings[0]
    for shell in readers.SHELLS:  # `set -e` survives: nothing aborts
        env = readers.read_shell(shell, text, tmp_path)
        assert env["GID"] == "1000"


@pytest.mark.parametrize("key", ["PIPESTATUS", "OPTIND"])
def test_shell_never_writes_a_name_the_shells_read_back_differently(key, tmp_path):
    """bash resets PIPESTATUS after every command; OPTIND must be a number (dash aborts)."""
    text = render("shell", {key: "v1", "GID": "1000"}, destination=DEST, warn=lambda _m: None)
    for shell in readers.SHELLS:
        env = readers.read_shell(shell, text, tmp_path)
        assert env.get(key) == "v1" or f"export {key}=" not in text, (shell, env.get(key))


def test_bash_really_refuses_uid(tmp_path):
    """Why: `export UID=...` is an error that aborts a `set -e` bash script."""
    path = tmp_path / "x.sh"
    path.write_text("export UID='1000'\n")
    proc = subprocess.run(["bash", "-c", 'set -e; . "$1"; echo reached', "bash", str(path)], capture_output=True, text=True)
    assert "reached" not in proc.stdout and "readonly" in proc.stderr


# --------------------------------------------------------------------------
# docker
# --------------------------------------------------------------------------

DOCKER_SAFE = [v for v in ALL_NASTY if "\n" not in v and "\r" not in v]


def test_docker_values_verbatim(tmp_path, envcheck):
    values = as_mapping(DOCKER_SAFE)
    text = render("docker", values, destination=DEST)
    assert envcheck.read("docker", text) == values
    assert "V001=plain\n" in text and "V007=single'quote\n" in text


@pytest.mark.parametrize("value", ["multi\nline", "cr\rinside", "trailing cr\r", "\n"])
def test_docker_refuses_only_line_breaks(value):
    secret = "SECRETVALUE" + value
    with pytest.raises(FormatError) as info:
        render("docker", {"API_KEY": secret}, destination=DEST)
    message = str(info.value)
    assert "line break" in message and "'API_KEY'" in message and DEST in message
    assert "SECRETVALUE" not in message


def test_docker_rejects_overlong_line(envcheck):
    ok = "x" * (64 * 1024 - len("K=") - 1)
    assert render("docker", {"K": ok}, destination=DEST) == HEADER + f"K={ok}\n"
    assert envcheck.read("docker", f"K={ok}\n") == {"K": ok}
    with pytest.raises(FormatError, match="64 KiB"):
        render("docker", {"K": ok + "x"}, destination=DEST)
    assert envcheck.read("docker", f"K={ok}x\n") is None  # docker really refuses it


def test_docker_and_compose_really_disagree(envcheck):
    """Why two styles: the same line reads differently in docker run and compose."""
    for value in ("'quoted'", "pa$word", "a #b", " padded "):
        line = f"K={value}\n"
        assert envcheck.read("docker", line) == {"K": value}
        assert envcheck.read("compose", line) != {"K": value}


# --------------------------------------------------------------------------
# plan-time refusals
# --------------------------------------------------------------------------


def test_refusals_name_keys_and_reasons_never_values():
    found = refusals({"UID": "1000", "PEM": "SECRETVALUE\nx", "NODE-ENV": "SECRETVALUE", "OK": "SECRETVALUE"})
    assert set(found) == {"docker", "shell", "systemd"}
    assert set(found["docker"]) == {"PEM"}
    assert set(found["shell"]) == {"UID", "NODE-ENV"}
    assert set(found["systemd"]) == {"NODE-ENV"}
    assert "SECRETVALUE" not in repr(found)


# --------------------------------------------------------------------------
# compose: also through compose-go's whole project loader (env_file: as `docker compose config`)
# --------------------------------------------------------------------------

from tests.test_compose import composecheck  # noqa: E402,F401 - the session fixture building tools/composecheck


def test_compose_style_through_the_project_loader(composecheck, tmp_path):
    values = as_mapping(ALL_NASTY + ["${HOME}", "$HOME", "$$HOME", "${V001}", "$V001"])
    (tmp_path / "rendered.env").write_text(render("compose", values, destination=DEST), encoding="utf-8")
    (tmp_path / "compose.yaml").write_text("services:\n  app:\n    image: alpine\n    env_file: rendered.env\n")
    (tmp_path / "project.env").write_text("HOME=/from/project\nV001=from-project\n")
    proc = subprocess.run([str(composecheck), "compose", "-env-file", str(tmp_path / "project.env"),
                           str(tmp_path / "compose.yaml")], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    env = json.loads(proc.stdout)["services"]["app"].get("environment") or {}
    assert {k: ("" if v is None else v) for k, v in env.items()} == values
