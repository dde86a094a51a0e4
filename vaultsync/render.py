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
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vaultsync import logging as vlog
from vaultsync import safefs
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

#: The whole environment a hook gets unless the caller passes one: the parent's
#: environment may hold VAULT_TOKEN, role secret ids and the like.
DEFAULT_HOOK_ENV: Mapping[str, str] = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}

_TAIL_BYTES = 4096
_EXCERPT_CHARS = 512
_PID_MAX = 4_194_304  # Linux's largest possible pid_max (2**22)


class HookError(VaultsyncError):
    """A hook could not be started or a signal could not be delivered."""


class PidfileError(HookError):
    """The pid file is missing, unreadable, malformed, or names no live process."""


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

    def output_excerpt(self, limit: int = _EXCERPT_CHARS) -> dict[str, str | None]:
        """The hook's output for a *debug* log line: the end of each stream, at most ``limit``
        characters, scrubbed of every known secret before it is cut (a hook that prints the
        file it was called for prints every secret in it)."""
        return {
            "stdout": vlog.excerpt(self.stdout_tail, limit=limit, cut_at_start=self.stdout_truncated) or None,
            "stderr": vlog.excerpt(self.stderr_tail, limit=limit, cut_at_start=self.stderr_truncated) or None,
        }


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


def _read_pidfile(pidfile: str | os.PathLike[str]) -> tuple[bytes, os.stat_result]:
    """The pid file's first bytes and its stat, opened through a trusted folder without
    following a symlink; refused unless owned by root or vaultsync's user and writable by
    no one else (whoever can write it chooses which process we signal)."""
    shown = os.fspath(pidfile)
    path = Path(shown)
    try:
        folder = safefs.open_folder(path.parent, owner=safefs.default_owner())
    except FileNotFoundError:
        raise PidfileError(f"pid file {shown} does not exist") from None
    except safefs.UnsafePath as exc:
        raise PidfileError(f"pid file {shown}: {exc}") from None
    try:
        fd = os.open(path.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=folder)
    except FileNotFoundError:
        raise PidfileError(f"pid file {shown} does not exist") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PidfileError(f"pid file {shown} is a symlink; refusing to follow it") from None
        raise PidfileError(f"cannot read pid file {shown}: {exc.strerror or exc}") from None
    finally:
        os.close(folder)
    try:
        try:
            st = safefs.check_trusted_file(fd, shown)
        except safefs.UnsafePath as exc:
            raise PidfileError(f"pid file {exc}; refusing to signal the process it names") from None
        return os.read(fd, 4096), st
    finally:
        os.close(fd)


def process_start_time(pid: int) -> float | None:
    """When process ``pid`` started (unix time, to about a clock tick), from /proc; None when
    the platform has no /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rpartition(b")")[2].split()  # the name in (...) may hold spaces
        with open("/proc/stat", "rb") as fh:
            btime = next(int(line.split()[1]) for line in fh if line.startswith(b"btime "))
    except FileNotFoundError:
        return None
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    return btime + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime, in ticks since boot


#: A process writes its pid file after it starts; /proc's boot time is whole seconds.
_START_SLACK = 2.0


def signal_pidfile(pidfile: str | os.PathLike[str], signame: str | int | signal.Signals) -> int:
    """Send ``signame`` (``"HUP"``, ``"SIGHUP"``, a number) to the pid in ``pidfile``.

    Returns the pid signalled. The file must be owned by root or vaultsync's user and
    writable by no one else, reached without following an untrusted symlink. Its first line
    must be a decimal pid between 2 and the kernel's maximum: 0 and negative numbers would
    signal whole process groups and 1 is init. The process must have started before the pid
    file was last written (else the pid was reused by another process after the service
    died); it is pinned with a pidfd while this is checked, so it cannot be swapped either.
    Raises :class:`PidfileError` for all of these and for a process that is gone or that we
    may not signal; ``ValueError`` for an unknown signal.
    """
    sig = _resolve_signal(signame)
    shown = os.fspath(pidfile)
    raw, st = _read_pidfile(pidfile)
    first = raw.split(b"\n", 1)[0].strip()
    if not first.isdigit() or not first.isascii():
        raise PidfileError(f"pid file {shown} does not start with a pid")
    pid = int(first)
    if not 1 < pid <= _PID_MAX:
        raise PidfileError(f"pid file {shown} holds pid {pid}, which is not a valid target")
    if pid == os.getpid():
        raise PidfileError(f"pid file {shown} names this very process ({pid})")
    pidfd = None
    try:
        if hasattr(os, "pidfd_open"):
            try:
                pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                raise PidfileError(f"process {pid} from pid file {shown} is not running (stale pid file)") from None
        started = process_start_time(pid)
        if started is not None and started > st.st_mtime + _START_SLACK:
            raise PidfileError(f"process {pid} started after pid file {shown} was written: the pid was reused "
                               "(stale pid file); not signalling it")
        try:
            if pidfd is not None:
                signal.pidfd_send_signal(pidfd, sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            raise PidfileError(f"process {pid} from pid file {shown} is not running (stale pid file)") from None
        except PermissionError:
            raise PidfileError(f"not allowed to signal process {pid} from pid file {shown}") from None
    finally:
        if pidfd is not None:
            os.close(pidfd)
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
