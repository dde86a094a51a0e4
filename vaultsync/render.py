"""The side-effecting edge of rendering: atomic file writes, change hooks, and
the ``wait {min, max}`` coalescing window.

* :func:`atomic_write` replaces a file so that readers see either the old or
  the new content, never a torn mix, and never a moment with wider
  permissions than asked for.
* the change hooks (:func:`run_command`, :func:`signal_pidfile`) live in
  :mod:`vaultsync.hooks` and are re-exported here.
* :class:`WaitWindow` is a pure state machine; the daemon's scheduler asks it
  when to render after a burst of changes.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

from vaultsync import safefs
from vaultsync.errors import VaultsyncError
from vaultsync.hooks import (  # noqa: F401 - the hooks lived here; callers still import them from render
    DEFAULT_HOOK_ENV,
    HookError,
    HookResult,
    PidfileError,
    process_start_time,
    run_command,
    signal_pidfile,
)

__all__ = [
    "DEFAULT_HOOK_ENV",
    "HookError",
    "PidfileError",
    "HookResult",
    "atomic_write",
    "remove_stale_temp_files",
    "run_command",
    "signal_pidfile",
    "WaitWindow",
]

_TEMP_SUFFIX = ".tmp"


# --------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------


def _unchanged(folder: int, name: str, data: bytes, mode: int, owner: tuple[int, int]) -> bool:
    """True if ``name`` in ``folder`` is a regular file with exactly ``data``, ``mode`` and owner.

    Symlinks are never "unchanged": we do not follow them (a link planted in
    the folder must not redirect our write), so the link is replaced by a file.
    """
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=folder)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a symlink
            return False
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or stat.S_IMODE(st.st_mode) != mode or st.st_size != len(data):
            return False
        if (st.st_uid, st.st_gid) != owner:
            return False
        chunks = []
        remaining = st.st_size + 1  # +1 notices a file that grew meanwhile
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks) == data
    finally:
        os.close(fd)


def _create_temp(folder: int, name: str) -> tuple[int, str]:
    """A new, empty, 0600 temp file beside ``name`` (O_EXCL: never one someone planted)."""
    for _ in range(100):
        tmp = f".{name}.{secrets.token_hex(6)}{_TEMP_SUFFIX}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=folder)
        except FileExistsError:
            continue
        return fd, tmp
    raise FileExistsError(errno.EEXIST, "could not find a free temporary name", name)


def _link_backup(folder: int, name: str) -> str | None:
    """Hard-link the current ``name`` to a fresh hidden name beside it.

    ``os.link`` cannot overwrite, so the link goes to a unique temporary name
    and is later ``os.replace``d onto ``<name>.bak`` — an atomic swap of the
    old backup. Returns None if there is no regular file to back up. The link
    shares the old file's inode, hence its mode and owner: no widening.
    """
    try:
        st = os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    for _ in range(100):
        candidate = f".{name}.bak.{secrets.token_hex(6)}{_TEMP_SUFFIX}"
        try:
            os.link(name, candidate, src_dir_fd=folder, dst_dir_fd=folder, follow_symlinks=False)
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(errno.EEXIST, "could not find a free temporary backup name", name)


def _unlink_quietly(folder: int, name: str | None) -> None:
    if name is not None:
        try:
            os.unlink(name, dir_fd=folder)
        except FileNotFoundError:
            pass


def atomic_write(
    path: str | os.PathLike[str],
    data: bytes,
    *,
    mode: int = 0o600,
    backup: bool = False,
    owner: tuple[int, int] | None = None,
) -> bool:
    """Atomically replace ``path`` with ``data``; return False if nothing changed.

    Nothing is written (and False returned) when ``path`` already is a
    regular file holding exactly ``data`` with ``mode`` and ``owner``: the
    service's file keeps its inode and mtime, so file watchers do not fire
    for nothing.

    The folder is opened component by component without following symlinks
    others control, and refused when another user can write it
    (:func:`vaultsync.safefs.open_folder`); missing folders are created (0700,
    owned by ``owner``). Everything after that is relative to the folder's
    descriptor: a temporary file is made beside ``path`` (so the rename is
    atomic) with ``owner`` and ``mode`` applied *before* any byte is written;
    the data is written and fsynced; with ``backup`` the old file is
    hard-linked to ``<path>.bak``; the temp file is renamed over ``path``;
    the folder is fsynced so the rename survives a power cut.

    ``owner`` is ``(uid, gid)``, default the user vaultsync runs as; an id of
    -1 means that default too. It is never taken from the file being
    replaced: whoever planted that file must not get the next secret.
    On any error before the rename the temporary files are removed and
    ``path`` is untouched. A process killed mid-write (SIGKILL) can leave a
    ``.<name>.*.tmp`` file behind; see :func:`remove_stale_temp_files`.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, not {type(data).__name__}")
    data = bytes(data)
    if mode != stat.S_IMODE(mode):
        raise ValueError(f"mode must be permission bits only (got {mode:#o})")
    target = Path(os.fspath(path))
    if not target.name:
        raise ValueError(f"not a file path: {target}")
    mine = safefs.default_owner()
    ids = (mine[0] if owner is None or owner[0] == -1 else owner[0], mine[1] if owner is None or owner[1] == -1 else owner[1])
    name = target.name
    folder = safefs.open_folder(target.parent, owner=ids, create=True)
    try:
        if _unchanged(folder, name, data, mode, ids):
            return False
        fd, tmp = _create_temp(folder, name)
        bak_tmp: str | None = None
        try:
            try:
                st = os.fstat(fd)
                if (st.st_uid, st.st_gid) != ids:
                    os.fchown(fd, *ids)  # before chmod: chown may clear mode bits
                os.fchmod(fd, mode)
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            if backup:
                bak_tmp = _link_backup(folder, name)
                if bak_tmp is not None:
                    os.replace(bak_tmp, name + ".bak", src_dir_fd=folder, dst_dir_fd=folder)
                    bak_tmp = None
            os.replace(tmp, name, src_dir_fd=folder, dst_dir_fd=folder)
        except BaseException:
            _unlink_quietly(folder, tmp)
            _unlink_quietly(folder, bak_tmp)
            raise
        os.fsync(folder)
        return True
    finally:
        os.close(folder)


def remove_stale_temp_files(path: str | os.PathLike[str]) -> int:
    """Remove temporary files an interrupted :func:`atomic_write` of ``path``
    left behind (``.<name>.*.tmp`` beside it); return how many.

    Meant for daemon start-up, before any write to ``path`` is in flight:
    a process killed by SIGKILL cannot clean up after itself. A folder that is
    missing, unsafe or not a folder is left alone here (0 is returned): the
    render of that destination reports why.
    """
    target = Path(os.fspath(path))
    prefix = f".{target.name}."
    removed = 0
    try:
        folder = safefs.open_folder(target.parent, owner=safefs.default_owner())
    except (OSError, VaultsyncError):
        return 0
    try:
        for entry in os.scandir(folder):
            name = entry.name
            if name.startswith(prefix) and name.endswith(_TEMP_SUFFIX) and entry.is_file(follow_symlinks=False):
                try:
                    os.unlink(name, dir_fd=folder)
                    removed += 1
                except FileNotFoundError:
                    pass
    finally:
        os.close(folder)
    return removed


# --------------------------------------------------------------------------
# wait {min, max}
# --------------------------------------------------------------------------


@dataclass
class WaitWindow:
    """consul-template's ``wait { min, max }`` as a pure state machine.

    After a change, render once things have been quiet for ``min_s`` seconds,
    but never later than ``max_s`` after the *first* unrendered change, so a
    secret that changes constantly still gets rendered. ``max_s=None`` means
    ``4 * min_s`` (consul-template's default). ``min_s=0`` renders at once.

    No clock and no threads: the caller passes ``now`` and schedules a job for
    the time :meth:`on_change` returns (replacing the previous job).
    """

    min_s: float
    max_s: float | None = None
    _first_change: float | None = field(default=None, init=False, repr=False)
    _due_at: float | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_s is None:
            self.max_s = 4 * self.min_s
        if self.min_s < 0 or self.max_s < self.min_s:
            raise ValueError(f"need 0 <= min <= max (got min={self.min_s}, max={self.max_s})")

    @property
    def pending(self) -> bool:
        """True if a change has not been rendered yet."""
        return self._due_at is not None

    @property
    def due_at(self) -> float | None:
        """When to render, or None if nothing is pending."""
        return self._due_at

    def on_change(self, now: float) -> float:
        """Record a change at ``now``; return the (new) time to render at."""
        assert self.max_s is not None
        if self._first_change is None:
            self._first_change = now
        self._due_at = min(now + self.min_s, self._first_change + self.max_s)
        return self._due_at

    def due(self, now: float) -> bool:
        """True if a change is pending and its render time has come."""
        return self._due_at is not None and now >= self._due_at

    def rendered(self) -> None:
        """Forget pending changes (call after a successful render)."""
        self._first_change = None
        self._due_at = None
