"""The real consumers of each style, as functions ``text -> {key: value}`` for the tests.

* dotenv: python-dotenv itself, every way a service reads a file (path and stream,
  interpolating or not, as noted per call).
* compose, docker: ``tools/envcheck``, a Go program around compose-go's dotenv parser and the
  docker CLI's ``pkg/kvfile`` (the code behind ``env_file:`` and ``docker run --env-file``),
  built once per machine into ``~/.cache/vaultsync/envcheck-<hash>/`` (``make envcheck``).
* shell: bash, ``bash --posix`` and dash, sourcing the file.
* systemd: no part of Debian's systemd 252 parses an EnvironmentFile= without a running
  manager (``systemd --user`` exits at once in this container; ``systemd-analyze verify``
  does not read env files). ``read_systemd`` is a transcription of the state machine in
  systemd's ``src/basic/env-file.c`` (parse_env_file_internal) plus its name check
  (env_name_is_valid): a faithful reading, not systemd itself.
* json: ``json.loads``.
"""

from __future__ import annotations

import hashlib
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

ROOT = Path(__file__).resolve().parent.parent
ENVCHECK_DIR = ROOT / "tools" / "envcheck"


# --- envcheck (compose-go, docker CLI) -------------------------------------------------------


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vaultsync"


def envcheck_path() -> Path:
    """Where the binary for the current tools/envcheck sources lives (the Makefile builds it there)."""
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum", "main.go"):
        digest.update((ENVCHECK_DIR / name).read_bytes())
    return _cache_dir() / f"envcheck-{digest.hexdigest()[:12]}" / "envcheck"


def build_envcheck() -> Path:
    binary = envcheck_path()
    if binary.exists():
        return binary
    go = shutil.which("go") or ("/usr/local/go/bin/go" if os.path.exists("/usr/local/go/bin/go") else None)
    if go is None:
        pytest.fail("Go (>= 1.24) is needed to build tools/envcheck (compose-go and docker CLI env-file parsers)",
                    pytrace=False)
    binary.parent.mkdir(parents=True, exist_ok=True)
    tmp = binary.with_name(f"envcheck.tmp.{os.getpid()}")
    proc = subprocess.run([go, "build", "-trimpath", "-o", str(tmp), "."], cwd=ENVCHECK_DIR,
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"building tools/envcheck failed:\n{proc.stderr[-2000:]}", pytrace=False)
    os.replace(tmp, binary)
    return binary


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
