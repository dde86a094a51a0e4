"""The real consumers of each style, as functions ``text -> {key: value}`` for the tests.

* dotenv: python-dotenv itself, every way a service reads a file (path and stream,
  interpolating or not, as noted per call).
* compose, docker: ``tools/envcheck``, a Go program around compose-go's dotenv parser and the
  docker CLI's ``pkg/kvfile`` (the code behind ``env_file:`` and ``docker run --env-file``),
  built once per machine into ``~/.cache/vaultsync/envcheck-<hash>/`` (``make envcheck``).
* shell: bash, ``bash --posix`` and dash, sourcing the file.
* systemd: ``read_systemd`` is a transcription of the state machine in systemd's
  ``src/basic/env-file.c`` (parse_env_file_internal, v254 and later: up to 253 a comment ending in
  ``\\`` also swallows the next line) plus its name check (env_name_is_valid).
  EnvironmentFile= itself needs a running manager, but Debian's systemd ships
  ``30-systemd-environment-d-generator``, which reads ``environment.d`` files with the same
  parser: ``read_systemd_checked`` runs it and checks the transcription against it on every
  value it can compare (it then expands ``$NAME``, and drops an empty ``K=""``, which
  EnvironmentFile= keeps; those are checked by the transcription alone).
* json: ``json.loads``.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from dotenv import dotenv_values

from tests import gotools



# --- envcheck (compose-go, docker CLI) -------------------------------------------------------


def envcheck_path() -> Path:
    """Where the binary for the current tools/envcheck sources lives (the Makefile builds it there)."""
    return gotools.tool_path("envcheck")


def build_envcheck() -> Path:
    return gotools.build_tool("envcheck")


class Envcheck:
    def __init__(self, binary: Path) -> None:
        self.binary = binary

    def read(self, reader: str, text: str) -> dict[str, str] | None:
        """What ``reader`` (compose | docker) parses out of ``text``; None if it refuses the file."""
        with tempfile.NamedTemporaryFile("wb", suffix=".env", delete=False) as f:
            f.write(text.encode("utf-8"))
        try:
            proc = subprocess.run([str(self.binary), reader, f.name], capture_output=True, timeout=60,
                                  env={"PATH": "/usr/bin:/bin"})
        finally:
            os.unlink(f.name)
        if proc.returncode != 0:
            return None
        return json.loads(proc.stdout.decode("utf-8"))


# --- python-dotenv ---------------------------------------------------------------------------


def read_dotenv(text: str, folder: Path, *, interpolate: bool = True) -> list[dict[str, str | None]]:
    """python-dotenv from a path (text mode) and from a stream."""
    path = folder / "read.env"
    path.write_bytes(text.encode("utf-8"))
    return [
        dict(dotenv_values(path, interpolate=interpolate)),
        dict(dotenv_values(stream=io.StringIO(text), interpolate=interpolate)),
    ]


# --- shells ----------------------------------------------------------------------------------

SHELLS = [argv for argv in (["bash"], ["bash", "--posix"], ["dash"]) if shutil.which(argv[0])]


def read_shell(argv: list[str], text: str, folder: Path) -> dict[str, str]:
    """Source the file under a `set -e` shell and dump the exported environment."""
    path = folder / "secrets.sh"
    path.write_bytes(text.encode("utf-8"))
    proc = subprocess.run(
        [shutil.which(argv[0]), *argv[1:], "-c", 'set -e; . "$1"; exec /usr/bin/env -0', argv[0], str(path)],
        env={}, cwd=folder, capture_output=True, timeout=30,
    )
    assert proc.returncode == 0, (argv, proc.stderr.decode(errors="replace")[-500:])
    out: dict[str, str] = {}
    for item in proc.stdout.split(b"\0"):
        if item:
            key, _, value = item.partition(b"=")
            out[key.decode()] = value.decode("utf-8", errors="surrogateescape")
    return out


# What a shell puts in the environment by itself (not from the file).
SHELL_OWN = {"PWD", "SHLVL", "_", "OLDPWD"}


# --- systemd ---------------------------------------------------------------------------------

_SD_WHITESPACE = " \t\n\r"
_SD_NEWLINE = "\n\r"
_SD_COMMENTS = "#;"
_SD_NEED_ESCAPE = '"\\`$'
_SD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def read_systemd(text: str) -> dict[str, str]:
    """EnvironmentFile= as systemd's env-file.c reads it (see the module docstring)."""
    out: dict[str, str] = {}
    state = "pre_key"
    key: list[str] = []
    value: list[str] = []
    key_ws: int | None = None  # index where trailing whitespace of the key starts
    value_ws: int | None = None

    def push(strip_value: bool) -> None:
        k = "".join(key[: key_ws] if key_ws is not None else key)
        v = value[: value_ws] if (strip_value and value_ws is not None) else value
        if _SD_NAME.fullmatch(k):  # strv_env_clean drops invalid names
            out[k] = "".join(v)

    for c in text:
        if state == "pre_key":
            if c in _SD_COMMENTS:
                state = "comment"
            elif c not in _SD_WHITESPACE:
                state, key, key_ws = "key", [c], None
        elif state == "key":
            if c in _SD_NEWLINE:
                state, key = "pre_key", []
            elif c == "=":
                state, value, value_ws = "pre_value", [], None
            else:
                if c not in _SD_WHITESPACE:
                    key_ws = None
                elif key_ws is None:
                    key_ws = len(key)
                key.append(c)
        elif state == "pre_value":
            if c in _SD_NEWLINE:
                push(False)
                state = "pre_key"
            elif c == "'":
                state = "single"
            elif c == '"':
                state = "double"
            elif c == "\\":
                state = "value_escape"
            elif c not in _SD_WHITESPACE:
                state = "value"
                value.append(c)
        elif state == "value":
            if c in _SD_NEWLINE:
                push(True)
                state = "pre_key"
            elif c == "\\":
                state, value_ws = "value_escape", None
            else:
                if c not in _SD_WHITESPACE:
                    value_ws = None
                elif value_ws is None:
                    value_ws = len(value)
                value.append(c)
        elif state == "value_escape":
            state = "value"
            if c not in _SD_NEWLINE:
                value.append(c)
        elif state == "single":
            if c == "'":
                state = "pre_value"
            else:
                value.append(c)
        elif state == "double":
            if c == '"':
                state = "pre_value"
            elif c == "\\":
                state = "double_escape"
            else:
                value.append(c)
        elif state == "double_escape":
            state = "double"
            if c in _SD_NEED_ESCAPE:
                value.append(c)
            elif c != "\n":
                value.extend(("\\", c))
        elif state == "comment":
            if c == "\\":
                state = "comment_escape"
            elif c in _SD_NEWLINE:
                state = "pre_key"
        elif state == "comment_escape":
            state = "pre_key" if c in _SD_NEWLINE else "comment"
    if state in ("pre_value", "value", "value_escape", "single", "double", "double_escape"):
        push(state == "value")
    return out


_SD_GENERATOR = Path("/usr/lib/systemd/user-environment-generators/30-systemd-environment-d-generator")
_SD_OUT_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


def _sd_unquote(value: str) -> str:
    """Undo the generator's output quoting: "..." with C escapes (\\n, \\001, \\xNN, \\")."""
    if not (len(value) >= 2 and value[0] == value[-1] == '"'):
        return value
    out = bytearray()
    body, i = value[1:-1], 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out += c.encode("utf-8")
            i += 1
            continue
        nxt = body[i + 1]
        if nxt in "01234567":
            out.append(int(body[i + 1:i + 4], 8))
            i += 4
        elif nxt == "x":
            out.append(int(body[i + 2:i + 4], 16))
            i += 4
        else:
            out += _SD_OUT_ESCAPES.get(nxt, nxt).encode("utf-8")
            i += 2
    return out.decode("utf-8")


def read_systemd_generator(text: str, folder: Path) -> dict[str, str]:
    """What systemd's own env-file parser (through the environment.d generator) reads from ``text``."""
    if not _SD_GENERATOR.exists():
        pytest.fail(f"{_SD_GENERATOR} (Debian's systemd package) is needed to check the systemd style", pytrace=False)
    conf = folder / "xdg" / "environment.d"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "zz-vaultsync.conf").write_bytes(text.encode("utf-8"))  # after the system's files: ours win
    proc = subprocess.run([str(_SD_GENERATOR)], env={"XDG_CONFIG_HOME": str(folder / "xdg")}, capture_output=True,
                          timeout=30)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-500:]
    out = {}
    for line in proc.stdout.decode("utf-8").split("\n"):
        if line:
            key, _, value = line.partition("=")
            out[key] = _sd_unquote(value)
    return out


def read_systemd_checked(text: str, folder: Path) -> dict[str, str]:
    """``read_systemd(text)``, after checking it agrees with systemd's own parser where they can be compared."""
    ours = read_systemd(text)
    real = read_systemd_generator(text, folder)
    system = read_systemd_generator("", folder)  # what /etc and /usr/lib environment.d set by themselves
    comparable = {k: v for k, v in ours.items() if v and "$" not in v}
    assert {k: real.get(k) for k in comparable} == comparable, "read_systemd disagrees with systemd's parser"
    unexplained = set(real) - set(ours) - set(system)
    assert not unexplained, f"systemd's parser found keys read_systemd did not: {sorted(unexplained)}"
    return ours
