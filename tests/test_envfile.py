"""Strict parsing: what python-dotenv reads, or a file:line error that never shows the value."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from dotenv import dotenv_values

from tests.envcorpus import CORPUS
from vaultsync import envfile
from vaultsync.errors import EXIT_BAD_INPUT, ParseError

CANARY = "canary-Zx81-secret-value"


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_reads_what_python_dotenv_reads(name: str, tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_bytes(CORPUS[name])
    expected = dotenv_values(path, interpolate=False)
    assert envfile.parse(path).values() == expected
    assert all(isinstance(v, str) for v in expected.values())


def test_interpolation_only_when_asked(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_bytes(b"BASE=/srv\nUSES=${BASE}/app\nDEFAULTED=${BASE:-fallback}\nDOLLAR=$HOME\n")
    assert envfile.parse(path).values()["USES"] == "${BASE}/app"
    assert envfile.parse(path, interpolate=True).values()["USES"] == "/srv/app"
    assert envfile.parse(path, interpolate=True).values()["DEFAULTED"] == "/srv"
    assert envfile.parse(path, interpolate=True).values()["DOLLAR"] == "$HOME"  # $VAR is never expanded


@pytest.mark.parametrize("line", ["X=${VAULT_TOKEN}", "X=${VAULT_TOKEN:-none}", "X='${VAULT_TOKEN}'", "X=${LATER}\nLATER=1"])
def test_interpolation_never_reads_the_environment(line: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("VAULT_TOKEN", CANARY)
    path = tmp_path / ".env"
    path.write_bytes(f"A=1\n{line}\n".encode())
    with pytest.raises(ParseError) as err:
        envfile.parse(path, interpolate=True)
    name = "LATER" if "LATER" in line else "VAULT_TOKEN"
    assert str(err.value).startswith(f"{path}:2: X refers to ${{{name}}}")
    assert f"--interpolate-env {name}" in str(err.value) and CANARY not in str(err.value)


def test_a_reference_that_is_no_variable_name_is_not_echoed(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_bytes(b"PASSWORD=x${p@ss w0rd!}y\n")  # a password that happens to hold "${"
    with pytest.raises(ParseError) as err:
        envfile.parse(path, interpolate=True)
    assert str(err.value).startswith(f"{path}:1: PASSWORD holds a ${{...}}") and "p@ss" not in str(err.value)


def test_interpolate_env_allows_named_variables(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DOMAIN", "example.com")
    monkeypatch.delenv("UNSET_ONE", raising=False)
    path = tmp_path / ".env"
    path.write_bytes(b"DOMAIN=local\nURL=https://${DOMAIN}/\nHOST=${UNSET_ONE:-db}\n")
    values = envfile.parse(path, interpolate=True, interpolate_env=["DOMAIN", "UNSET_ONE"]).values()
    assert values["URL"] == "https://local/"  # the file's own key wins, as in python-dotenv
    assert values["HOST"] == "db"


def test_crlf_and_cr_multiline_values_read_like_python_dotenv(tmp_path: Path) -> None:
    for name in ("crlf_multiline", "cr_only"):
        path = tmp_path / f"{name}.env"
        path.write_bytes(CORPUS[name])
        values = envfile.parse(path).values()
        assert values == dotenv_values(path, interpolate=False)
        assert "\r" not in values["TLS_KEY"] and values["TLS_KEY"].count("\n") == 3, name


def test_duplicates_warn_and_last_wins_or_fail_when_strict(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_bytes(CORPUS["duplicates"])
    env = envfile.parse(path)
    assert env.values()["KEY"] == "second"
    assert env.duplicates == (("KEY", 1, 3),)
    with pytest.raises(ParseError) as err:
        envfile.parse(path, strict=True)
    assert str(err.value) == f"{path}:3: duplicate key KEY (first set on line 1)"


BAD = {
    "unterminated double": (f'OK=1\nPASSWORD="{CANARY}\nNEXT=2\n'.encode(), 2, "unterminated double quote in the value of PASSWORD"),
    "unterminated single": (f"\n\nexport TOKEN='{CANARY}\n".encode(), 3, "unterminated single quote in the value of TOKEN"),
    "bare word": (f"A=1\n{CANARY}\n".encode(), 2, "not an assignment"),
    "words": (f"A=1\nthis is {CANARY}\n".encode(), 2, "not an assignment"),
    "text after quoted value": (f'A="x" {CANARY}\n'.encode(), 1, "cannot parse the value of A"),
    "nul byte": (f"A=1\nB={CANARY}\x00\n".encode(), 2, "NUL byte"),
    "invalid utf-8": (b"A=1\nB=" + CANARY.encode() + b"\xff\xfe\n", 2, "invalid UTF-8"),
    "invalid key": (f"1BAD={CANARY}\n".encode(), 1, "invalid key name"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_names_file_and_line_never_the_value(case: str, tmp_path: Path) -> None:
    data, line, reason = BAD[case]
    path = tmp_path / "svc" / ".env"
    path.parent.mkdir()
    path.write_bytes(data)
    with pytest.raises(ParseError) as err:
        envfile.parse(path)
    assert err.value.exit_code == EXIT_BAD_INPUT
    assert str(err.value).startswith(f"{path}:{line}: ")
    assert reason in str(err.value)
    assert CANARY not in str(err.value)


def test_python_dotenv_would_have_skipped_these_lines() -> None:
    # Why strictness matters: python-dotenv drops the broken line (and what follows) silently.
    lenient = dotenv_values(stream=io.StringIO(BAD["unterminated double"][0].decode()))
    assert "PASSWORD" not in lenient


def test_missing_file_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ParseError) as err:
        envfile.parse(tmp_path / "nope.env")
    assert "cannot read file" in str(err.value)
