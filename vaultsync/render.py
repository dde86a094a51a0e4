"""The side-effecting edge of rendering: atomic file writes, change hooks, and
the ``wait {min, max}`` coalescing window.

* :func:`atomic_write` replaces a file so that readers see either the old or
  the new content, never a torn mix, and never a moment with wider
  permissions than asked for.
* :func:`run_command` runs a user's hook (``docker compose restart x``,
  ``systemctl reload y``) as an argv list, without a shell, with a minimal
  environment, and kills it (and its children) on timeout.
* :func:`signal_pidfile` sends a signal to the process named by a pid file.
* :class:`WaitWindow` is a pure state machine; the daemon's scheduler asks it
  when to render after a burst of changes.
"""

from __future__ import annotations

import errno
import os
import secrets
import selectors
import signal
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vaultsync.errors import VaultsyncError

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
_DIR_MODE = 0o700

#: The whole environment a hook gets unless the caller passes one: the parent's
#: environment may hold VAULT_TOKEN, role secret ids and the like.
DEFAULT_HOOK_ENV: Mapping[str, str] = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}

_TAIL_BYTES = 4096
_PID_MAX = 4_194_304  # Linux's largest possible pid_max (2**22)


class HookError(VaultsyncError):
    """A hook could not be started or a signal could not be delivered."""


class PidfileError(HookError):
    """The pid file is missing, unreadable, malformed, or names no live process."""


# --------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------


def _make_parents(folder: Path, owner: tuple[int, int] | None) -> None:
    """Create ``folder`` and any missing ancestors with mode 0700.

    ``os.makedirs(mode=...)`` applies the mode to the last folder only, and
    through the umask; we create each level ourselves and chmod it. Folders
    we create are chowned to ``owner`` too, so the service the file is for can
    reach it; existing folders are left alone.
    """
    missing: list[Path] = []
    current = folder
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for path in reversed(missing):
        try:
            os.mkdir(path, _DIR_MODE)
        except FileExistsError:
            if not path.is_dir():
                raise
            continue  # someone else created it meanwhile: not ours to change
        os.chmod(path, _DIR_MODE)
        if owner is not None:
            os.chown(path, owner[0], owner[1])


def _unchanged(path: Path, data: bytes, mode: int, owner: tuple[int, int] | None) -> bool:
    """True if ``path`` is a regular file with exactly ``data``, ``mode`` and owner.

    Symlinks are never "unchanged": we do not follow them (a link planted in
    the folder must not redirect our write), so the link is replaced by a file.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
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
        if owner is not None:
            uid, gid = owner
            if (uid != -1 and st.st_uid != uid) or (gid != -1 and st.st_gid != gid):
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


def _effective_owner(path: Path, owner: tuple[int, int] | None) -> tuple[int, int]:
    """The (uid, gid) the new file gets; -1 means "as created".

    Ids that are not given (``owner=None`` or -1) are taken from the file
    being replaced: the daemon runs as root, and a file an admin chowned to
    the service must not silently become root's on the next render.
    """
    uid, gid = owner if owner is not None else (-1, -1)
    if uid != -1 and gid != -1:
        return uid, gid
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return uid, gid
    if not stat.S_ISREG(st.st_mode):
        return uid, gid
    return (st.st_uid if uid == -1 else uid), (st.st_gid if gid == -1 else gid)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _link_backup(path: Path) -> Path | None:
    """Hard-link the current ``path`` to a fresh hidden name beside it.

    ``os.link`` cannot overwrite, so the link goes to a unique temporary name
    and is later ``os.replace``d onto ``<path>.bak`` — an atomic swap of the
    old backup. Returns None if there is no regular file to back up. The link
    shares the old file's inode, hence its mode and owner: no widening.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    for _ in range(100):
        candidate = path.with_name(f".{path.name}.bak.{secrets.token_hex(6)}{_TEMP_SUFFIX}")
        try:
            os.link(path, candidate, follow_symlinks=False)
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(errno.EEXIST, "could not find a free temporary backup name", str(path))


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
    regular file holding exactly ``data`` with ``mode`` (and ``owner``, if
    given): the service's file keeps its inode and mtime, so file watchers
    do not fire for nothing.

    Otherwise: missing parent folders are created (0700); a temporary file is
    made in the same folder (so ``os.replace`` is a rename, atomic on POSIX)
    with ``mode``/``owner`` applied *before* any byte is written (the umask
    cannot widen it, and the secret is never readable by others even for a
    moment); the data is written, flushed and fsynced; with ``backup`` the old
    file is hard-linked to ``<path>.bak`` (replacing an older backup); the
    temp file is renamed over ``path``; the folder is fsynced so the rename
    survives a power cut.

    ``owner`` is ``(uid, gid)``; an id that is -1, or both when ``owner`` is
    None, is kept from the file being replaced (else left as created), so a
    file chowned to its service stays the service's.
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
    folder = target.parent
    _make_parents(folder, owner)

    if _unchanged(target, data, mode, owner):
        return False
    ids = _effective_owner(target, owner)

    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=_TEMP_SUFFIX)
    tmp = Path(tmp_name)
    bak_tmp: Path | None = None
    try:
        try:
            if ids != (-1, -1):
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
            bak_tmp = _link_backup(target)
            if bak_tmp is not None:
                os.replace(bak_tmp, target.with_name(target.name + ".bak"))
                bak_tmp = None
        os.replace(tmp, target)
    except BaseException:
        for leftover in (tmp, bak_tmp):
            if leftover is not None:
                try:
                    os.unlink(leftover)
                except FileNotFoundError:
                    pass
        raise
    _fsync_dir(folder)
    return True


def remove_stale_temp_files(path: str | os.PathLike[str]) -> int:
    """Remove temporary files an interrupted :func:`atomic_write` of ``path``
    left behind (``.<name>.*.tmp`` beside it); return how many.

    Meant for daemon start-up, before any write to ``path`` is in flight:
    a process killed by SIGKILL cannot clean up after itself.
    """
    target = Path(os.fspath(path))
    prefix = f".{target.name}."
    removed = 0
    try:
        entries = list(os.scandir(target.parent))
    except FileNotFoundError:
        return 0
    for entry in entries:
        name = entry.name
        if name.startswith(prefix) and name.endswith(_TEMP_SUFFIX) and entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
                removed += 1
            except FileNotFoundError:
                pass
    return removed


# --------------------------------------------------------------------------
# Hooks
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class HookResult:
    """How a hook ended.

    ``returncode`` is negative when a signal ended it (``-9`` after a
    timeout kill). ``stdout_tail``/``stderr_tail`` hold the last few KiB of
    output (decoded as UTF-8, undecodable bytes replaced); ``*_truncated``
    says whether earlier output was dropped. The output is the user's
    command's and may be logged.
    """

    argv: tuple[str, ...]
    returncode: int
    duration: float
    timed_out: bool
    stdout_tail: str
    stderr_tail: str
    stdout_truncated: bool = False
    stderr_truncated: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


@dataclass
class _Tail:
    """Keeps only the last ``limit`` bytes of a stream."""

    limit: int
    data: bytearray = field(default_factory=bytearray)
    truncated: bool = False

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        if len(self.data) > self.limit:
            del self.data[: len(self.data) - self.limit]
            self.truncated = True

    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


_CANCEL_CHECK = 0.2  # how often a hook's wait looks at its cancel event


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the hook's process group (its pgid is its pid: new session).

    Only while the leader is not yet reaped: until then its pid, hence the
    group id, cannot have been reused by an unrelated process.
    """
    if proc.returncode is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_command(
    argv: Sequence[str],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    tail_bytes: int = _TAIL_BYTES,
    cancel: threading.Event | None = None,
) -> HookResult:
    """Run ``argv`` (no shell) and wait at most ``timeout`` seconds.

    The environment is exactly ``env``, or :data:`DEFAULT_HOOK_ENV` when it is
    None: never the parent's. stdin is /dev/null. The command runs in a new
    session (its own process group); on timeout the whole group is
    SIGKILLed, children included. Output is read as it comes and only the
    last ``tail_bytes`` of each stream are kept, so a chatty hook cannot eat
    the daemon's memory.

    A hook that leaves a background child holding its stdout/stderr open is
    waited for until the timeout (and then killed with its group): hooks that
    start daemons should redirect their output.

    ``cancel``, once set, ends the wait early the same way (the daemon is shutting
    down: a hook of 25 s must not hold SIGTERM for 25 s); the result says timed_out.

    Raises :class:`HookError` if the command cannot be started (not found, not
    executable). A non-zero exit is not an error here: see ``HookResult.ok``.
    """
    if isinstance(argv, (str, bytes)):
        raise TypeError("argv must be a sequence of arguments, not a string (no shell is used)")
    args = tuple(argv)
    if not args:
        raise ValueError("argv must not be empty")
    for arg in args:
        if not isinstance(arg, str):
            raise TypeError(f"argv items must be str, not {type(arg).__name__}")
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0 (got {timeout})")
    environment = dict(DEFAULT_HOOK_ENV if env is None else env)

    start = time.monotonic()
    deadline = start + timeout
    try:
        proc = subprocess.Popen(
            args,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as exc:
        raise HookError(f"cannot run hook {args[0]!r}: {exc.strerror or exc}") from None

    assert proc.stdout is not None and proc.stderr is not None
    stdout_tail, stderr_tail = _Tail(tail_bytes), _Tail(tail_bytes)
    timed_out = False
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ, stdout_tail)
            selector.register(proc.stderr, selectors.EVENT_READ, stderr_tail)
            while selector.get_map():
                left = deadline - time.monotonic()
                if left <= 0 or (cancel is not None and cancel.is_set()):
                    timed_out = True
                    break
                for key, _ in selector.select(left if cancel is None else min(left, _CANCEL_CHECK)):
                    chunk = os.read(key.fd, 65536)
                    if chunk:
                        key.data.add(chunk)
                    else:
                        selector.unregister(key.fileobj)
        while not timed_out and proc.returncode is None:
            left = deadline - time.monotonic()
            if left <= 0 or (cancel is not None and cancel.is_set()):
                timed_out = True
                break
            try:
                proc.wait(timeout=left if cancel is None else min(left, _CANCEL_CHECK))
            except subprocess.TimeoutExpired:
                pass
        if timed_out:
            _kill_group(proc)
            proc.wait()
    except BaseException:
        _kill_group(proc)
        proc.wait()
        raise
    finally:
        proc.stdout.close()
        proc.stderr.close()

    return HookResult(
        argv=args,
        returncode=proc.returncode,
        duration=time.monotonic() - start,
        timed_out=timed_out,
        stdout_tail=stdout_tail.text(),
        stderr_tail=stderr_tail.text(),
        stdout_truncated=stdout_tail.truncated,
        stderr_truncated=stderr_tail.truncated,
    )


_SIGNAL_PREFIX = "SIG"


def _resolve_signal(signame: str | int | signal.Signals) -> signal.Signals:
    if isinstance(signame, signal.Signals):
        return signame
    if isinstance(signame, int) and not isinstance(signame, bool):
        try:
            return signal.Signals(signame)
        except ValueError:
            raise ValueError(f"unknown signal number {signame}") from None
    if isinstance(signame, str):
        name = signame.strip().upper()
        if not name.startswith(_SIGNAL_PREFIX):
            name = _SIGNAL_PREFIX + name
        try:
            return signal.Signals[name]
        except KeyError:
            raise ValueError(f"unknown signal {signame!r}") from None
    raise TypeError(f"signal must be a name or number, not {type(signame).__name__}")


def signal_pidfile(pidfile: str | os.PathLike[str], signame: str | int | signal.Signals) -> int:
    """Send ``signame`` (``"HUP"``, ``"SIGHUP"``, a number) to the pid in ``pidfile``.

    Returns the pid signalled. The first line of the file must be a decimal
    pid between 2 and the kernel's maximum: 0 and negative numbers would
    signal whole process groups and 1 is init, so a corrupted pid file must
    not be able to aim there. Raises :class:`PidfileError` for a missing,
    unreadable or malformed file and for a process that is gone (stale pid
    file) or that we may not signal; ``ValueError`` for an unknown signal.
    """
    sig = _resolve_signal(signame)
    shown = os.fspath(pidfile)
    try:
        with open(pidfile, "rb") as fh:
            raw = fh.read(4096)
    except FileNotFoundError:
        raise PidfileError(f"pid file {shown} does not exist") from None
    except OSError as exc:
        raise PidfileError(f"cannot read pid file {shown}: {exc.strerror or exc}") from None
    first = raw.split(b"\n", 1)[0].strip()
    if not first.isdigit() or not first.isascii():
        raise PidfileError(f"pid file {shown} does not start with a pid")
    pid = int(first)
    if not 1 < pid <= _PID_MAX:
        raise PidfileError(f"pid file {shown} holds pid {pid}, which is not a valid target")
    if pid == os.getpid():
        raise PidfileError(f"pid file {shown} names this very process ({pid})")
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        raise PidfileError(f"process {pid} from pid file {shown} is not running (stale pid file)") from None
    except PermissionError:
        raise PidfileError(f"not allowed to signal process {pid} from pid file {shown}") from None
    return pid


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
