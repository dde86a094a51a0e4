"""Where a service's secrets go: one small protocol, two kinds.

* :class:`EnvFileOutput`: today's destination: format, atomic write, then the change hook
  (a command or a signal to a pid file) on the hooks' own pool.
* :class:`ExecOutput`: a supervised child process (:mod:`vaultsync.child`) with the secrets in
  its environment, restarted or signalled when they change.

The service runtime (the daemon) decides *when* (every source has a reading, the wait window
says so) and hands the merged values to :meth:`Output.deliver`; an output decides *how*. A new
kind of output is one class here and one line in :func:`outputs_for`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from vaultsync import formats, render
from vaultsync.child import RestartPlan, Supervisor, child_environment
from vaultsync.config import Destination, ExecSettings, ServiceSettings
from vaultsync.errors import VaultsyncError
from vaultsync.hookrunner import HookRunner
from vaultsync.logging import get_logger
from vaultsync.safefs import check_trusted_program, read_trusted_text, resolve_owner

log = get_logger("vaultsync.daemon")

EXEC_KEY = "exec"  # the exec output's key among a service's outputs (destinations are keyed by path)


@dataclass(frozen=True)
class RenderOutcome:
    result: str  # success (delivered: written, started, restarted, signalled) | unchanged | failure
    error: str | None = None


class Output(Protocol):
    key: str  # unique within the service: a destination's path, or EXEC_KEY
    name: str  # for metrics and logs (bounded: a file name, or "exec")
    wait_min: float
    wait_max: float

    def deliver(self, values: Mapping[str, str]) -> RenderOutcome: ...

    def close(self, grace: float) -> None: ...


# --- env files ----------------------------------------------------------------------------


def write_destination(dest: Destination, values: Mapping[str, str], *, service: str) -> RenderOutcome:
    """Format and atomically write one destination. A failure leaves the previous file alone."""
    try:
        template = None
        if dest.style == "template":
            assert dest.template is not None
            template = read_trusted_text(dest.template, "template")  # owned by root or us, writable by no one else
        left_out: list[str] = []
        text = formats.render(dest.style, dict(values), template=template, destination=dest.path,
                              template_name=dest.template, warn=left_out.append)
        written = render.atomic_write(dest.path, text.encode("utf-8"), mode=dest.mode, backup=dest.backup,
                                      owner=resolve_owner(dest.owner, dest.group))
        for msg in left_out if written else ():  # once per change, not on every poll
            log.warning("key left out", service=service, detail=msg)
    except (VaultsyncError, OSError, ValueError) as exc:
        return RenderOutcome("failure", str(exc) if not isinstance(exc, OSError) else f"{dest.path}: {exc.strerror}")
    return RenderOutcome("success" if written else "unchanged")


class EnvFileOutput:
    def __init__(self, service: str, dest: Destination, hooks: HookRunner | None,
                 on_hook: Callable[[bool], None] | None = None) -> None:
        self.service, self.dest, self.hooks, self.on_hook = service, dest, hooks, on_hook
        self.key, self.name = dest.path, dest.name
        self.wait_min, self.wait_max = dest.wait_min, dest.wait_max

    def deliver(self, values: Mapping[str, str]) -> RenderOutcome:
        outcome = write_destination(self.dest, values, service=self.service)
        if outcome.result == "success" and (self.dest.command or self.dest.pidfile) and self.hooks is not None:
            # On the hooks' own pool: a slow hook never holds a renewal, a login or a poll.
            self.hooks.submit((self.service, self.dest.path), self._run_hook)
        return outcome

    def close(self, grace: float) -> None:
        """Nothing of its own: the hooks' pool is the daemon's, and the file stays."""

    def _run_hook(self) -> None:
        service, dest = self.service, self.dest
        try:
            if dest.command:
                check_trusted_program(dest.command[0], render.DEFAULT_HOOK_ENV["PATH"])  # else UnsafePath: "hook failed"
                result = render.run_command(dest.command, timeout=dest.command_timeout,
                                            cancel=self.hooks.cancel if self.hooks else None)
                ok = result.ok
                (log.info if ok else log.warning)("hook ran", service=service, destination=dest.name,
                                                  returncode=result.returncode, timed_out=result.timed_out,
                                                  seconds=round(result.duration, 3))
                log.debug("hook output", service=service, destination=dest.name, **result.output_excerpt())
            elif dest.pidfile:
                pid = render.signal_pidfile(dest.pidfile, dest.signal)
                ok = True
                log.info("signal sent", service=service, destination=dest.name, pid=pid, signal=dest.signal)
            else:
                return
        except Exception as exc:  # noqa: BLE001 - a hook must never break the job that rendered
            ok = False
            log.error("hook failed", service=service, destination=dest.name, error=str(exc))
        if self.on_hook:
            self.on_hook(ok)


# --- a supervised child ----------------------------------------------------------------------


class ExecOutput:
    """The first delivery starts the child; a later one with other values restarts it
    (``on_change = "restart"``) or signals it (``"signal"``: the next start gets the new values)."""

    def __init__(self, service: str, ex: ExecSettings, *, on_exit: Callable[[int, bool], None] | None = None,
                 restart_plan: RestartPlan = RestartPlan()) -> None:
        self.service, self.settings = service, ex
        self.key = self.name = EXEC_KEY
        self.wait_min, self.wait_max = ex.wait_min, ex.wait_max
        self.supervisor = Supervisor(ex.command, name=service, kill_signal=ex.kill_signal, kill_timeout=ex.kill_timeout,
                                     restart_on_exit=ex.restart_on_exit, on_exit=on_exit, restart_plan=restart_plan)
        self._last: dict[str, str] | None = None

    def deliver(self, values: Mapping[str, str]) -> RenderOutcome:
        values = dict(values)
        if values == self._last:
            return RenderOutcome("unchanged")
        env = child_environment(values, clear=self.settings.env_clear)
        first, self._last = self._last is None, values
        if first:
            self.supervisor.start(env)
            log.info("starting child", service=self.service, command=self.settings.command[0])
        elif self.settings.on_change == "restart":
            self.supervisor.restart(env)
            log.info("secrets changed: restarting child", service=self.service)
        else:
            self.supervisor.update_env(env)
            self.supervisor.send(self.settings.signal)
            log.info("secrets changed: signalling child", service=self.service, signal=self.settings.signal)
        return RenderOutcome("success")

    def forward(self, sig: int) -> bool:
        """Pass a signal we received on to the child; False when no child runs."""
        if not self.supervisor.running:
            return False
        self.supervisor.send(sig)
        return True

    def close(self, grace: float) -> None:
        self.supervisor.stop(grace=grace)


def outputs_for(svc: ServiceSettings, hooks: HookRunner | None, *,
                on_hook: Callable[[Destination, bool], None] | None = None,
                on_exit: Callable[[int, bool], None] | None = None) -> list[Output]:
    """Every output of a service, in delivery order: files first, so that a child signalled to
    re-read a rendered file finds the new one."""
    out: list[Output] = [
        EnvFileOutput(svc.name, d, hooks, (lambda ok, d=d: on_hook(d, ok)) if on_hook else None)  # type: ignore[misc]
        for d in svc.destinations
    ]
    if svc.exec is not None and svc.exec.command:
        out.append(ExecOutput(svc.name, svc.exec, on_exit=on_exit))
    return out
