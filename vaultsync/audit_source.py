"""Reading audit log files: streamed line by line in bounded memory, rotated files followed.

A line longer than ``max_line`` bytes is skipped up to its newline (reported as oversized), so one
enormous line cannot take the memory a whole file would. ``.gz`` files (rotated by logrotate) are read
through gzip. :func:`follow` tails a file the way ``tail -F`` does: a file replaced (new inode) or cut
shorter (copytruncate) is reopened from its start and reported as rotated.
"""

from __future__ import annotations

import gzip
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from vaultsync.audit import OVERSIZED, ROTATED, Aggregator

MAX_LINE = 4 * 1024 * 1024
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Line:
    data: bytes
    number: int
    complete: bool  # False: the file ended before this line's newline


def _open(path: str) -> BinaryIO:
    if path.endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb", buffering=_CHUNK)


def lines(f: BinaryIO, *, max_line: int = MAX_LINE, start_number: int = 0,
          on_oversized: Callable[[int], None] = lambda n: None) -> Iterator[Line]:
    """Lines of ``f`` without their newline; never holds more than ``max_line`` bytes of one line."""
    number = start_number
    while True:
        data = f.readline(max_line + 1)
        if not data:
            return
        number += 1
        if len(data) > max_line and not data.endswith(b"\n"):
            on_oversized(number)
            while data and not data.endswith(b"\n"):  # skip the rest of this line, chunk by chunk
                data = f.readline(max_line + 1)
            continue
        complete = data.endswith(b"\n")
        yield Line(data.rstrip(b"\r\n") if complete else data, number, complete)


def read_files(paths: list[str], agg: Aggregator, *, progress: Callable[[int], None] | None = None,
               max_line: int = MAX_LINE) -> None:
    """Feed every line of ``paths`` (in order: oldest rotated file first) to ``agg``."""
    for path in paths:
        with _open(path) as f:
            raw = f if not path.endswith(".gz") else None
            last = 0
            for line in lines(f, max_line=max_line, on_oversized=lambda n, p=path: agg.note(OVERSIZED, f"{p}:{n}")):
                agg.feed(line.data, f"{path}:{line.number}", complete=line.complete)
                if progress is not None and raw is not None and line.number % 2048 == 0:
                    pos = raw.tell()
                    progress(pos - last)
                    last = pos
            if progress is not None:
                progress((os.path.getsize(path) if raw is not None else 0) - last)


def total_size(paths: list[str]) -> int:
    return sum(os.path.getsize(p) for p in paths if not p.endswith(".gz"))


def follow(path: str, agg: Aggregator, *, poll: float = 1.0, from_start: bool = False,
           stop: Callable[[], bool] = lambda: False, sleep: Callable[[float], None] = time.sleep,
           max_line: int = MAX_LINE) -> None:
    """Tail ``path`` until ``stop()``: new complete lines go to ``agg``; rotation is followed."""
    f: BinaryIO | None = None
    inode, number, pending = None, 0, b""
    while not stop():
        if f is None:
            try:
                f = open(path, "rb")
            except FileNotFoundError:
                sleep(poll)
                continue
            st = os.fstat(f.fileno())
            inode, number, pending = st.st_ino, 0, b""
            if not from_start:
                f.seek(0, os.SEEK_END)
            from_start = True  # a file that appears later (rotation) is read whole
        data = f.read(_CHUNK)
        if data:
            pending += data
            *complete, pending = pending.split(b"\n")
            for raw in complete:
                number += 1
                if len(raw) > max_line:
                    agg.note(OVERSIZED, f"{path}:{number}")
                else:
                    agg.feed(raw, f"{path}:{number}")
            if len(pending) > max_line:
                number += 1
                agg.note(OVERSIZED, f"{path}:{number}")
                pending = b""
            continue
        if _rotated(path, inode, f):
            agg.note(ROTATED, f"{path}:{number}")
            f.close()
            f = None
            continue
        sleep(poll)
    if f is not None:
        f.close()


def _rotated(path: str, inode: int | None, f: BinaryIO) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False  # moved away, the new one is not there yet: keep reading the old one
    return st.st_ino != inode or st.st_size < f.tell()
