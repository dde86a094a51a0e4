"""``vaultsync render``: render every destination once (cron, CI) and run the hooks of the
files that changed, then say per destination what became of the file *and* of its hook.

A one-shot run has nobody to renew or revoke what it issues, so it refuses services with
dynamic secrets unless ``allow_dynamic`` (each run would leave a new lease, and a database
user, until its TTL), and a token it got by logging in itself is revoked at the end, unless
leases hang off it (revoking the token would revoke the credentials just rendered).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vaultsync import render, tracing
from vaultsync.config import Destination, Settings
from vaultsync.daemon_state import ServiceState, renders_without_kv, service_values
from vaultsync.errors import ConfigError, SourceMissing, VaultError, VaultsyncError
from vaultsync.logging import get_logger
from vaultsync.outputs import write_destination
from vaultsync.safefs import check_trusted_program
from vaultsync.vault import KV, resolve_kv_version

log = get_logger()

#: Every file was rendered (or was already right) but a hook failed: distinct from 1, a failed
#: render, so a cron wrapper can tell "the service did not pick it up" from "nothing was written".
EXIT_HOOK_FAILED = 4
NO_SERVICES = "no [services.<name>] in the config: nothing to do"


@dataclass
class DestinationReport:
    result: str  # success | unchanged | failure | source_missing
    hook: str | None = None  # None: no hook ran; success | failure
    error: str | None = None

    @property
    def shown(self) -> str:
        """The one-word result of ``--output json``: ``hook_failure`` when the file was written
        but its hook failed."""
        return "hook_failure" if self.hook == "failure" else self.result


@dataclass
class RenderReport:
    services: dict[str, dict[str, DestinationReport]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # service -> why it was not rendered

    @property
    def exit_code(self) -> int:
        reports = [r for dests in self.services.values() for r in dests.values()]
        if self.errors or any(r.result in ("failure", "source_missing") for r in reports):
            return 1
        return EXIT_HOOK_FAILED if any(r.hook == "failure" for r in reports) else 0

    def as_dict(self) -> dict[str, dict[str, str]]:
        return {svc: {path: r.shown for path, r in dests.items()} for svc, dests in self.services.items()}

    def as_lines(self) -> list[str]:
        lines = []
        for svc, dests in self.services.items():
            for path, r in dests.items():
                hook = {"success": ", hook ran", "failure": f", hook failed: {r.error}"}.get(r.hook or "", "")
                lines.append(f"{svc}: {path}: {r.result}{hook}")
        return lines


def refuse_dynamic(settings: Settings) -> None:
    with_dynamic = sorted(name for name, svc in settings.services.items() if svc.dynamic)
    if with_dynamic:
        raise ConfigError(
            f"service {', '.join(with_dynamic)} has dynamic secrets: a one-shot render would issue a new lease each "
            "run that nobody renews or revokes (it lives until its TTL). Run `vaultsync daemon` for them, or pass "
            "--allow-dynamic-leases to render them anyway")


def render_all(settings: Settings, *, allow_dynamic: bool = False) -> RenderReport:
    if not settings.services:
        raise ConfigError(NO_SERVICES)
    if not allow_dynamic:
        refuse_dynamic(settings)
    report = RenderReport()
    with tracing.span("vaultsync.render") as sp:
        _render_services(settings, report)
        tracing.set_attributes(sp, services=len(report.services), failures=sum(
            r.result == "failure" for dests in report.services.values() for r in dests.values()))
    return report


def _render_services(settings: Settings, report: RenderReport) -> None:
    from vaultsync.daemon import Daemon  # the daemon's login and reads

    d = Daemon(settings, serve_http=False)
    try:
        if not d._login():
            raise VaultError(f"login failed: {d.login_error}")
        d.kv = kv = KV(d.client, settings.kv.mount, resolve_kv_version(d.client, settings.kv.mount, settings.kv.version))
        d._stop.set()  # no scheduler: nothing gets scheduled
        for svc in settings.services.values():
            st = d.services[svc.name] = ServiceState(settings=svc)
            try:
                secret = kv.read(svc.kv_path)
                if secret.data is None and not renders_without_kv(svc):
                    # Deleted, destroyed or never written: never blank a file over it.
                    missing = SourceMissing(svc.name, f"{kv.mount}/{svc.kv_path}")
                    log.warning("kv secret missing: file left alone", service=svc.name, path=missing.path)
                    report.errors[svc.name] = str(missing)
                    report.services[svc.name] = {dest.path: DestinationReport("source_missing") for dest in svc.destinations}
                    continue
                st.kv_data, st.kv_version, st.kv_loaded = secret.data, secret.version, True
                for name in svc.dynamic:
                    if not d._issue(svc.name, name, initial=True):
                        raise VaultError(f"could not read dynamic secret {name!r} (see the log)")
                values = service_values(st)  # (a dynamic field named like a KV key fails this service)
            except VaultsyncError as exc:  # this service fails; the others are still rendered
                log.error("render failed", service=svc.name, error=str(exc))
                report.errors[svc.name] = str(exc)
                report.services[svc.name] = {dest.path: DestinationReport("failure") for dest in svc.destinations}
                continue
            report.services[svc.name] = {dest.path: _render_destination(svc.name, dest, values) for dest in svc.destinations}
        _revoke_own_token(d, settings)
    finally:
        d.hooks.shutdown()


def _render_destination(service: str, dest: Destination, values: dict[str, str]) -> DestinationReport:
    with tracing.span("vaultsync.render.destination", service=service, destination=dest.name) as sp:
        outcome = write_destination(dest, values, service=service)
        tracing.set_attributes(sp, result=outcome.result)
    if outcome.result == "failure":
        log.error("render failed", service=service, destination=dest.name, error=outcome.error)
        return DestinationReport("failure", error=outcome.error)
    if outcome.result != "success" or not (dest.command or dest.pidfile):
        return DestinationReport(outcome.result)
    log.info("rendered", service=service, destination=dest.name, reason="render command")
    error = run_hook(service, dest)
    return DestinationReport(outcome.result, hook="failure" if error else "success", error=error)


def run_hook(service: str, dest: Destination) -> str | None:
    """Run the destination's command or signal its pid file; None when that worked, else why not
    (never the command's output: it may echo what it was given)."""
    try:
        if dest.command:
            check_trusted_program(dest.command[0], render.DEFAULT_HOOK_ENV["PATH"])  # as the daemon does
            result = render.run_command(dest.command, timeout=dest.command_timeout)
            log.debug("hook output", service=service, destination=dest.name, **result.output_excerpt())
            if result.timed_out:
                error = f"{dest.command[0]} timed out after {dest.command_timeout:g}s"
            elif result.returncode:
                error = f"{dest.command[0]} exited with {result.returncode}"
            else:
                error = None
        else:
            assert dest.pidfile is not None
            pid = render.signal_pidfile(dest.pidfile, dest.signal)
            log.info("signal sent", service=service, destination=dest.name, pid=pid, signal=dest.signal)
            error = None
    except Exception as exc:  # noqa: BLE001 - one destination's hook never stops the others
        error = str(exc) or type(exc).__name__
    (log.error if error else log.info)("hook ran" if not error else "hook failed", service=service,
                                       destination=dest.name, **({"error": error} if error else {}))
    return error


def _revoke_own_token(d: Any, settings: Settings) -> None:
    """A token this run got by logging in (AppRole) is revoked, so cron does not pile up live
    tokens; a static token is the operator's, and leases issued under ours die with it."""
    if settings.auth.method != "approle" or any(st.leases for st in d.services.values()):
        return
    try:
        d.client.auth.token.revoke_self()
        log.info("login token revoked")
    except Exception as exc:  # noqa: BLE001 - it still expires at its TTL
        log.warning("could not revoke the login token", error=str(exc))
