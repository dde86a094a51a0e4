"""Change hooks: run a user's command after a render, or signal the process in a pid file.

* :func:`run_command` runs a hook (``docker compose restart x``, ``systemctl reload y``) as an
  argv list, without a shell, with a minimal environment, and kills it (and its children) on
  timeout.
* :func:`signal_pidfile` sends a signal to the process named by a pid file it trusts.

(Split out of :mod:`vaultsync.render`, which re-exports these names.)
"""

from __future__ import annotations

import errno
import os
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vaultsync import logging as vlog
from vaultsync import safefs
from vaultsync.errors import VaultsyncError

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
