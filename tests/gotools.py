"""The small Go checkers under tools/ (compose-go, the docker CLI's env-file reader, the
collector's stanza library): built once per machine into the vaultsync cache, keyed by a hash of
their sources so an edit rebuilds them (the Makefile pre-builds envcheck under the same name)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parent.parent / "tools"


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vaultsync"


def tool_path(name: str, tag: str = "") -> Path:
    """Where the binary for the current ``tools/<name>`` sources lives."""
    digest = hashlib.sha256()
    for part in ("go.mod", "go.sum", "main.go"):
        digest.update((TOOLS / name / part).read_bytes())
    stem = f"{name}-{tag}-" if tag else f"{name}-"
    return cache_dir() / f"{stem}{digest.hexdigest()[:12]}" / name


def build_tool(name: str, tag: str = "") -> Path:
    """The binary of ``tools/<name>``, built first if this machine has none; fails loudly without Go."""
    binary = tool_path(name, tag)
    if os.access(binary, os.X_OK):
        return binary
    go = shutil.which("go") or ("/usr/local/go/bin/go" if os.access("/usr/local/go/bin/go", os.X_OK) else None)
    if go is None:
        pytest.fail(f"the Go toolchain (>= 1.24) is needed to build tools/{name}: install Go and put `go` on PATH",
                    pytrace=False)
    binary.parent.mkdir(parents=True, exist_ok=True)
    tmp = binary.with_name(f"{name}.tmp.{os.getpid()}")
    proc = subprocess.run([go, "build", "-trimpath", "-buildvcs=false", "-mod=readonly", "-o", str(tmp), "."],
                          cwd=TOOLS / name, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"building tools/{name} failed:\n{proc.stdout}\n{proc.stderr[-2000:]}", pytrace=False)
    os.replace(tmp, binary)
    return binary
