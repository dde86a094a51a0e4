"""Env-file styles, checked against the real readers: python-dotenv, bash, dash,
and (when it can be built) compose-go through tools/composecheck."""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest
from dotenv import dotenv_values

from vaultsync.errors import BadInput
from vaultsync.formats import STYLES, FormatError, quote_dotenv, quote_shell, render

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


# --------------------------------------------------------------------------
# Common rules
# --------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["dotenv", "docker", "shell"])
def test_sorted_with_trailing_newline(style):
    text = render(style, {"B": "2", "A": "1", "_C": "3", "a": "4"}, destination=DEST)
    assert text.endswith("\n") and not text.endswith("\n\n")
    keys = [line.split("=", 1)[0].removeprefix("export ") for line in text.splitlines()]
    assert keys == ["A", "B", "_C", "a"]


@pytest.mark.parametrize("style", ["dotenv", "docker", "shell"])
def test_empty_mapping(style):
    assert render(style, {}, destination=DEST) == ""


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("key", ["1ABC", "A-B", "A B", "", "A=B", "é", "A.B", "A\nB", "$A"])
def test_invalid_keys(style, key):
    with pytest.raises(FormatError) as info:
        render(style, {key: "v"}, template="x", destination=DEST)
    assert DEST in str(info.value) and "invalid variable name" in str(info.value)
    assert info.value.key == key


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
        render(style, {"TOKEN": value}, template="$TOKEN", destination=DEST)
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
        render("dotenv", {}, template="$A", destination=DEST)


# --------------------------------------------------------------------------
# dotenv
# --------------------------------------------------------------------------


def read_dotenv_everyway(text: str, tmp_path: Path) -> list[dict]:
    """Every way a service may read the file: stream or path, with or without interpolation."""
    path = tmp_path / "read.env"
    path.write_bytes(text.encode("utf-8"))
    return [
        dict(dotenv_values(stream=io.StringIO(text), interpolate=False)),
        dict(dotenv_values(stream=io.StringIO(text))),
        dict(dotenv_values(path, interpolate=False)),
        dict(dotenv_values(path)),
    ]


def test_dotenv_round_trip_nasty_corpus(tmp_path):
    values = as_mapping(NASTY)
    text = render("dotenv", values, destination=DEST)
    for read in read_dotenv_everyway(text, tmp_path):
        assert read == values


def test_dotenv_round_trip_one_by_one(tmp_path):
    # One value per file too: a value must not depend on its neighbours to parse.
    for value in NASTY:
        text = render("dotenv", {"K": value}, destination=DEST)
        for read in read_dotenv_everyway(text, tmp_path):
            assert read == {"K": value}, (text, read)


def test_dotenv_quoting_shape():
    assert quote_dotenv("a'b\\c") == "'a\\'b\\\\c'"
    assert quote_dotenv("line1\nline2") == "'line1\nline2'"  # PEM stays readable
    assert quote_dotenv("a\r\nb\"\\") == '"a\\r\\nb\\"\\\\"'
    assert render("dotenv", {"A": "x"}, destination=DEST) == "A='x'\n"


@pytest.mark.parametrize("value", DOTENV_EXPANDED)
def test_dotenv_rejects_what_python_dotenv_expands(value, monkeypatch):
    with pytest.raises(FormatError) as info:
        render("dotenv", {"DB_PASSWORD": value}, destination=DEST)
    message = str(info.value)
    assert "'DB_PASSWORD'" in message and DEST in message and "shell" in message
    no_secret_in(message, value)
    # ... and the rejection is needed: quoted anyway, python-dotenv changes it.
    for name in ("HOME", "X", "B", "D", ""):
        monkeypatch.delenv(name, raising=False)
    line = f"K={quote_dotenv(value)}\n"
    assert dotenv_values(stream=io.StringIO(line))["K"] != value


def test_dotenv_fuzz_agrees_with_python_dotenv(monkeypatch, tmp_path):
    """Random strings over the characters that matter: each one either renders
    and reads back identically every way, or is rejected and would really have
    been changed by python-dotenv's interpolation."""
    alphabet = ["$", "{", "}", ":", "-", "'", '"', "\\", "\n", "\r", " ", "\t", "#", "=", "a", "X", "é", "`"]
    alphabet += ["${", ":-", "}", "${a}", "$a"]  # make interpolation patterns common
    rng = random.Random(20240601)
    for name in list(os.environ):  # variables a random ${NAME} could resolve
        if set(name) <= set("".join(alphabet)):
            monkeypatch.delenv(name)
    accepted = rejected = 0
    for _ in range(3000):
        value = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        try:
            text = render("dotenv", {"K": value}, destination=DEST)
        except FormatError:
            rejected += 1
            line = f"K={quote_dotenv(value)}\n"
            assert dotenv_values(stream=io.StringIO(line), interpolate=False)["K"] == value
            assert dotenv_values(stream=io.StringIO(line))["K"] != value, repr(value)
        else:
            accepted += 1
            assert dotenv_values(stream=io.StringIO(text), interpolate=False) == {"K": value}, repr(value)
            assert dotenv_values(stream=io.StringIO(text)) == {"K": value}, repr(value)
    assert accepted > 1000 and rejected > 50


# --------------------------------------------------------------------------
# shell
# --------------------------------------------------------------------------

SHELLS = [s for s in ("bash", "dash", "sh") if shutil.which(s)]


def source_and_dump(shell: str, path: Path, cwd: Path) -> dict[str, str]:
    proc = subprocess.run(
        [shutil.which(shell), "-c", '. "$1" && exec env -0', shell, str(path)],
        env={"PATH": "/usr/bin:/bin"},
        cwd=cwd,
        capture_output=True,
        check=True,
        timeout=30,
    )
    out: dict[str, str] = {}
    for item in proc.stdout.split(b"\0"):
        if item:
            key, _, value = item.partition(b"=")
            out[key.decode()] = value.decode("utf-8", errors="surrogateescape")
    return out


@pytest.mark.parametrize("shell", SHELLS)
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
    values = as_mapping(NASTY + DOTENV_EXPANDED + evil)
    path = tmp_path / "secrets.sh"
    path.write_text(render("shell", values, destination=DEST), encoding="utf-8")
    env = source_and_dump(shell, path, tmp_path)
    assert not marker.exists()
    for key, value in values.items():
        assert env.get(key) == value, (shell, key)


def test_shell_quoting_shape():
    assert quote_shell("it's") == "'it'\\''s'"
    assert render("shell", {"A": "x y"}, destination=DEST) == "export A='x y'\n"


# --------------------------------------------------------------------------
# docker
# --------------------------------------------------------------------------

DOCKER_SAFE = [
    "",
    "plain",
    "with inner space",
    "p@ss#word",
    "#leading hash",
    "a=b=c",
    "back\\slash\\n",
    "ends with quote'",
    'mid"quote',
    "$",
    "a$",
    "$1",
    "$(notrun)",
    "cost: 5$ only",
    "$-x",
    "`id`",
    "unicode é 漢字 🔑",
    "a#b#c",
]

DOCKER_REJECTED = {
    "multi\nline": "line break",
    "cr\rinside": "line break",
    " leading": "whitespace",
    "trailing ": "whitespace",
    "\ttab": "whitespace",
    "'single quoted'": "quote",
    '"double quoted"': "quote",
    "'": "quote",
    "pass #word": "'#'",
    "pass\t#word": "'#'",  # conservative: compose cuts only at " #", python-dotenv at any "\s#"
    "pa$word": "interpolates",
    "pa$$word": "interpolates",
    "${HOME}": "interpolates",
    "$_x": "interpolates",
    "$HOME": "interpolates",
}


def read_like_docker_run(text: str) -> dict[str, str]:
    """docker run --env-file: lines, leading whitespace trimmed, '#' comments,
    split at the first '=', value verbatim (recent CLIs also strip one pair of
    matching surrounding quotes)."""
    out = {}
    for line in text.split("\n"):
        line = line.lstrip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key] = value
    return out


def test_docker_safe_values_verbatim():
    values = as_mapping(DOCKER_SAFE)
    text = render("docker", values, destination=DEST)
    assert read_like_docker_run(text) == values
    assert text.splitlines()[0] == "V000="


@pytest.mark.parametrize(("value", "why"), DOCKER_REJECTED.items())
def test_docker_rejects_ambiguous_values(value, why):
    secret = value[:1] + "SECRETVALUE" + value[1:]  # still rejected for the same reason
    with pytest.raises(FormatError) as info:
        render("docker", {"API_KEY": secret}, destination=DEST)
    message = str(info.value)
    assert why in message and "'API_KEY'" in message and DEST in message
    assert "SECRETVALUE" not in message


def test_docker_rejects_overlong_line():
    ok = "x" * (64 * 1024 - len("K=") - 1)
    assert render("docker", {"K": ok}, destination=DEST) == f"K={ok}\n"
    with pytest.raises(FormatError, match="64 KiB|65536"):
        render("docker", {"K": ok + "x"}, destination=DEST)


@pytest.fixture(scope="session")
def composecheck(tmp_path_factory):
    """tools/composecheck (compose-go's own loader), built once; fails without Go."""
    found = os.environ.get("VAULTSYNC_COMPOSECHECK") or shutil.which("composecheck")
    if found:
        return found
    source = ROOT / "tools" / "composecheck"
    go = shutil.which("go") or ("/usr/local/go/bin/go" if os.path.exists("/usr/local/go/bin/go") else None)
    if not go or not (source / "main.go").exists():
        pytest.fail("compose-go reference reader unavailable: install Go and keep tools/composecheck", pytrace=False)
    binary = tmp_path_factory.mktemp("composecheck") / "composecheck"
    proc = subprocess.run(
        [go, "build", "-o", str(binary), "."], cwd=source, capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        pytest.fail(f"could not build tools/composecheck: {proc.stderr[-500:]}")
    return str(binary)


def compose_env_file(composecheck: str, text: str, folder: Path) -> dict[str, str] | None:
    """The environment compose gives the service, or None if compose refuses the file."""
    (folder / "rendered.env").write_text(text, encoding="utf-8")
    (folder / "compose.yaml").write_text(
        "services:\n  app:\n    image: alpine\n    env_file: rendered.env\n", encoding="utf-8"
    )
    proc = subprocess.run(
        [composecheck, "compose", str(folder / "compose.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin"},
    )
    if proc.returncode != 0:
        assert "rendered.env" in proc.stderr, proc.stderr  # refused our file, not something else
        return None
    return json.loads(proc.stdout)["services"]["app"].get("environment") or {}


def test_docker_style_reads_back_in_compose(composecheck, tmp_path):
    values = as_mapping(DOCKER_SAFE)
    text = render("docker", values, destination=DEST)
    env = compose_env_file(composecheck, text, tmp_path)
    assert env is not None
    assert {k: ("" if v is None else v) for k, v in env.items()} == values


def test_docker_rejections_are_real_compose_differences(composecheck, tmp_path):
    """Each single-line value we reject is one compose really reads differently
    from docker run (so the rule is not stricter than needed), except the
    ones marked conservative."""
    conservative = {"pass\t#word"}
    single_line = [v for v in DOCKER_REJECTED if "\n" not in v and "\r" not in v and v not in conservative]
    for i, value in enumerate(single_line):
        folder = tmp_path / str(i)
        folder.mkdir()
        text = f"K={value}\n"
        env = compose_env_file(composecheck, text, folder)
        docker_run = read_like_docker_run(text)["K"]
        assert env is None or env.get("K") != docker_run or docker_run != value, value


# --------------------------------------------------------------------------
# template
# --------------------------------------------------------------------------


def test_template_substitutes_verbatim():
    values = {"USER": "app", "PASSWORD": "p$a'ss\"${X}\n", "HOST": "db"}
    template = "url=postgres://$USER:${PASSWORD}@$HOST/app\ncost=$$5"
    assert render("template", values, template=template, destination=DEST) == (
        "url=postgres://app:p$a'ss\"${X}\n@db/app\ncost=$5"
    )


def test_template_missing_key_names_it():
    with pytest.raises(FormatError) as info:
        render("template", {"USER": "SECRETVALUE"}, template="$USER:$PASSWORD", destination=DEST)
    assert info.value.key == "PASSWORD"
    assert "'PASSWORD'" in str(info.value) and DEST in str(info.value)
    assert "SECRETVALUE" not in str(info.value)


def test_template_invalid_placeholder():
    with pytest.raises(FormatError, match="invalid template.*line 2"):
        render("template", {"A": "SECRETVALUE"}, template="ok $A\nbad $ here", destination=DEST)


def test_template_nasty_values_pass_through():
    values = as_mapping(NASTY + DOTENV_EXPANDED)
    template = "".join(f"[${{{k}}}]" for k in values)
    expected = "".join(f"[{v}]" for v in values.values())
    assert render("template", values, template=template, destination=DEST) == expected
