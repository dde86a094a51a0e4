"""A supervised long-lived child process: the application ``vaultsync exec`` and the daemon's
``[services.<name>.exec]`` run with its secrets in the environment.

What it guarantees (compare consul-template ``child/child.go`` and Vault Agent
``command/agent/exec/exec.go``; the mechanics here are our own):

* the child runs in its own process group, so stopping it reaches its children too;
* the child gets ``PR_SET_PDEATHSIG`` (SIGKILL): when vaultsync dies, even by SIGKILL, the kernel
  kills the child; no orphan keeps running with stale credentials;
* one supervisor thread owns the process from spawn to reap. It matters: the parent-death signal
  fires when the *thread* that forked exits, so the child is spawned by a thread that lives exactly
  as long as the supervision;
* restarts, signals and stops are requests to that thread, never blocking the caller (a restart
  may wait ``kill_timeout`` for a child that takes its time to exit);
* a child that exits on its own is reported through ``on_exit``; with ``restart_on_exit`` it is
  started again after a capped, jittered backoff that resets once a run lasted ``healthy_after``.

The secrets go in the environment only, never in argv (``/proc/<pid>/cmdline`` is world-readable).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import queue
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from vaultsync.errors import VaultsyncError
from vaultsync.leases import backoff_delay
from vaultsync.logging import get_logger

log = get_logger("vaultsync.child")

PR_SET_PDEATHSIG = 1
RESTART_BASE, RESTART_CAP = 1.0, 60.0
HEALTHY_AFTER = 10.0  # a run at least this long resets the crash-loop backoff

#: Never handed to a child: the daemon's own credentials and where they come from.
_CREDENTIAL_VARS = ("TOKEN", "SECRET_ID", "ROLE_ID", "WRAPPING_TOKEN")


class ChildError(VaultsyncError):
    """The command cannot be started (not found, not executable)."""


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name, use_errno=True) if name else None
    except OSError:
        return None


_LIBC = _libc()  # loaded before any fork: the pre-exec hook must not import or allocate much


def _die_with_parent(parent: int) -> Callable[[], None]:
    """The pre-exec hook: ask the kernel for SIGKILL when our parent (thread) dies; if it died
    between fork and here, the signal would never come: exit instead."""

    def hook() -> None:
        if _LIBC is not None:
            _LIBC.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:
            os._exit(125)

    return hook


def child_environment(values: Mapping[str, str], *, clear: bool, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The child's environment: ours (or nothing, with ``clear``) minus every Vault/OpenBao
    credential variable, plus the service's values (which win)."""
    env: dict[str, str] = {}
    if not clear:
        for key, value in (os.environ if base is None else base).items():
            prefix, _, rest = key.partition("_")
            if prefix in ("VAULT", "BAO") and any(word in rest for word in _CREDENTIAL_VARS):
                continue
            env[key] = value
    env.update(values)
    return env


def exit_status(returncode: int) -> int:
    """A shell's exit status for a Popen return code (a signal N is 128 + N)."""
    return 128 - returncode if returncode < 0 else returncode


def resolve_signal(name: str | int) -> signal.Signals:
    if isinstance(name, int):
        return signal.Signals(name)
    upper = name.upper()
    return signal.Signals[upper if upper.startswith("SIG") else "SIG" + upper]


@dataclass(frozen=True)
class RestartPlan:
    """Pure: how long to wait before starting a child again after it exited on its own."""

    base: float = RESTART_BASE
    cap: float = RESTART_CAP
    healthy_after: float = HEALTHY_AFTER

    def next(self, attempt: int, ran_for: float, rng: random.Random) -> tuple[int, float]:
        """(the attempt count after this exit, the delay before the next start)."""
        if ran_for >= self.healthy_after:
            attempt = 0
        return attempt + 1, backoff_delay(attempt, self.base, self.cap, rng=rng)


class Supervisor:
    """Owns one child process. ``start``/``restart``/``send``/``stop`` only queue a request for
    the supervisor thread, except ``stop(wait=True)``, which waits for the child to be gone."""

    _POLL = 0.1

    def __init__(
        self,
        argv: Sequence[str],
        *,
        name: str,
        kill_signal: str | int = "TERM",
        kill_timeout: float = 30.0,
        restart_on_exit: bool = False,
        on_exit: Callable[[int, bool], None] | None = None,
        on_start: Callable[[int], None] | None = None,
        restart_plan: RestartPlan = RestartPlan(),
        rng: random.Random | None = None,
        stdio: tuple[int | None, int | None, int | None] = (None, None, None),
    ) -> None:
        if isinstance(argv, (str, bytes)) or not argv or not all(isinstance(a, str) for a in argv):
            raise ValueError("argv must be a non-empty list of strings (no shell is used)")
        self.argv = tuple(argv)
        self.name = name
        self.kill_signal = resolve_signal(kill_signal)
        self.kill_timeout = kill_timeout
        self.restart_on_exit = restart_on_exit
        self.on_exit = on_exit  # (exit status, will restart) from the supervisor thread
        self.on_start = on_start  # (pid)
        self.plan = restart_plan
        self.rng = rng or random.SystemRandom()
        self.stdio = stdio
        self.starts = 0
        self._requests: queue.Queue[tuple[str, object]] = queue.Queue()
        self._proc: subprocess.Popen[bytes] | None = None
        self._env: dict[str, str] | None = None
        self._thread: threading.Thread | None = None
        self._done = threading.Event()
        self._lock = threading.Lock()

    # -- requests (any thread) ---------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def start(self, env: Mapping[str, str]) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=f"vaultsync-child-{self.name}", daemon=True)
                self._thread.start()
        self._requests.put(("start", dict(env)))

    def restart(self, env: Mapping[str, str]) -> None:
        """Stop the child (kill signal, then SIGKILL after ``kill_timeout``) and start it with ``env``."""
        self._requests.put(("restart", dict(env)))

    def update_env(self, env: Mapping[str, str]) -> None:
        """The environment of the next start (after a restart on exit), without touching the child."""
        self._requests.put(("env", dict(env)))

    def send(self, sig: str | int) -> None:
        self._requests.put(("signal", resolve_signal(sig)))

    def stop(self, *, grace: float | None = None, wait: bool = True) -> None:
        """Stop supervising: the child gets the kill signal, then SIGKILL (with its group) after
        ``grace`` (default ``kill_timeout``)."""
        if self._thread is None:
            return
        self._requests.put(("stop", self.kill_timeout if grace is None else grace))
        if wait:
            self._done.wait()

    # -- the supervisor thread ---------------------------------------------------------------

    def _loop(self) -> None:
        attempt, next_start, started_at = 0, None, 0.0
        try:
            while True:
                try:
                    kind, arg = self._requests.get(timeout=self._POLL)
                except queue.Empty:
                    kind, arg = "", None
                if kind == "stop":
                    self._terminate(float(arg))  # type: ignore[arg-type]
                    return
                if kind in ("start", "restart", "env"):
                    self._env = arg  # type: ignore[assignment]
                if kind == "restart" and self._proc is not None and self._proc.returncode is None:
                    self._terminate(self.kill_timeout)
                    next_start = time.monotonic()
                elif kind in ("start", "restart") and (self._proc is None or self._proc.returncode is not None):
                    next_start = time.monotonic() if next_start is None or kind == "restart" else next_start
                elif kind == "signal" and self.running:
                    self._signal(arg)  # type: ignore[arg-type]
                if self._proc is not None and self._proc.returncode is None and self._proc.poll() is not None:
                    status = exit_status(self._proc.returncode)
                    again = self.restart_on_exit
                    if again:
                        attempt, delay = self.plan.next(attempt, time.monotonic() - started_at, self.rng)
                        next_start = time.monotonic() + delay
                    if self.on_exit:
                        self.on_exit(status, again)
                if next_start is not None and time.monotonic() >= next_start and self._env is not None and not self.running:
                    next_start = None
                    started_at = time.monotonic()
                    if not self._spawn():
                        attempt, delay = self.plan.next(attempt, 0.0, self.rng)
                        next_start = time.monotonic() + delay if self.restart_on_exit else None
        finally:
            self._done.set()

    def _spawn(self) -> bool:
        assert self._env is not None
        try:
            proc = subprocess.Popen(
                self.argv, env=self._env, stdin=self.stdio[0], stdout=self.stdio[1], stderr=self.stdio[2],
                process_group=0, close_fds=True, preexec_fn=_die_with_parent(os.getpid()),
            )
        except OSError as exc:
            log.error("child cannot be started", child=self.name, command=self.argv[0], error=exc.strerror or str(exc))
            if self.on_exit:
                self.on_exit(127 if isinstance(exc, FileNotFoundError) else 126, self.restart_on_exit)
            return False
        self._proc = proc
        self.starts += 1
        log.info("child started", child=self.name, pid=proc.pid, command=self.argv[0])
        if self.on_start:
            self.on_start(proc.pid)
        return True

    def _signal(self, sig: signal.Signals) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        try:
            os.kill(proc.pid, sig)  # the leader, not reaped yet: its pid cannot have been reused
        except ProcessLookupError:
            pass

    def _terminate(self, grace: float) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        self._signal(self.kill_signal)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            log.warning("child did not stop in time: killing its process group", child=self.name, grace=grace)
        if proc.returncode is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
        log.info("child stopped", child=self.name, status=exit_status(proc.returncode))
