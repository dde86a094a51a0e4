"""The daemon's services: each one's KV polling, its outputs (gated on every source having a
reading, coalesced by the wait window, then delivered), and its rotated keys. A part of
:class:`vaultsync.daemon.Daemon`."""

from __future__ import annotations

import os
import stat
import uuid
from typing import Any

from vaultsync import render, rotation
from vaultsync import service_values as service_values_
from vaultsync.config import Destination, ServiceSettings
from vaultsync.daemon_state import DaemonParts, DestinationState, ServiceState, renders_without_kv, service_values
from vaultsync.errors import VaultError, VaultsyncError
from vaultsync.jobs import JobKey, Kind
from vaultsync.lifetime import BACKOFF_BASE, BACKOFF_CAP, Backoff
from vaultsync.logging import get_logger, register_secret
from vaultsync.outputs import EXEC_KEY, RenderOutcome, outputs_for

log = get_logger("vaultsync.daemon")


class ServiceMixin(DaemonParts):
    """Needs the Daemon's ``kv``, ``clock``, ``rng``, ``settings``, ``metrics``, ``events``,
    ``services``, ``hooks``, ``_at``, ``_lock``, ``_stop`` and its lease jobs."""

    hooks: Any
    holder: str
    exit_with_child: bool
    exit_code: int
    _issue: Any
    _revoke: Any
    _source_missing: Any
    _forget_values: Any
    _cancel_service_jobs: Any

    def _add_service(self, svc: ServiceSettings) -> None:
        st = ServiceState(settings=svc)
        for output in outputs_for(svc, self.hooks, on_hook=lambda dest, ok: self._hook_done(svc.name, dest, ok),
                                  on_exit=lambda status, again: self._child_exited(svc.name, status, again)):
            st.outputs[output.key] = output
            st.destinations[output.key] = DestinationState(
                window=render.WaitWindow(output.wait_min, max(output.wait_max, output.wait_min)) if output.wait_min else None)
        for dest in svc.destinations:
            ds = st.destinations[dest.path]
            problem = destination_problem(dest.path)
            try:
                if problem is None:
                    render.remove_stale_temp_files(dest.path)
            except OSError as exc:
                problem = f"{dest.path}: {exc.strerror}"
            if problem:  # this destination fails (and says why); the others, and the daemon, go on
                ds.last_result, ds.error = "failure", problem
                log.error("destination cannot be written", service=svc.name, destination=dest.name, error=problem)
        with self._lock:
            self.services[svc.name] = st
        self._kv_job(svc.name, initial=True)
        for name, path in svc.dynamic.items():
            if self._stop.is_set():  # SIGTERM during start-up: 8 services of 10 slow issues each held it past 60 s
                return
            self._issue(svc.name, name, path, initial=True)
        self._render_all(svc.name, reason="start")
        for spec in svc.rotate:
            self._at(JobKey(Kind.ROTATE, svc.name, spec.key), self.clock(), self._rotate_job, svc.name, spec.key)

    def _remove_service(self, name: str, *, revoke: bool) -> None:
        with self._lock:
            st = self.services.pop(name, None)
        if st is None:
            return
        self._cancel_service_jobs(name)
        for output in st.outputs.values():
            output.close(getattr(st.settings.exec, "kill_timeout", 0.0))  # a removed service's child stops with it
        grace = self.settings.daemon.lease_revoke_grace
        for lease in st.leases.values():
            if revoke:
                self._revoke(lease.lease_id, name, lease.name, lease.data)
            elif lease.lease_id:  # replaced by the re-added service's new lease: revoke after the grace
                self._at(JobKey(Kind.REVOKE, name, lease.name, uuid.uuid4().hex[:8]), self.clock() + grace, self._revoke,
                         lease.lease_id, name, lease.name, lease.data)
        self.metrics.forget_service(st.settings)

    def _kv_job(self, service: str, initial: bool = False) -> None:
        st = self.services.get(service)
        if st is None or self.kv is None:
            return
        try:
            secret = self.kv.read(st.settings.kv_path)
        except VaultError as exc:
            # Back off beyond the poll interval while the server fails, up to the cap.
            delay = st.kv_reads.failed(self.rng, floor=self.settings.daemon.poll_interval)
            log.warning("kv read failed", service=service, error=self._blame_token(str(exc)), retry_in=round(delay, 2))
            self._at(JobKey(Kind.KV, service), self.clock() + delay, self._kv_job, service)
            return
        recovering = st.kv_reads.succeeded()
        interval = self.settings.daemon.poll_interval
        if secret.data is None and not renders_without_kv(st.settings):
            self._source_missing(service, st, secret.version)
            return
        if st.kv_missing:
            log.warning("kv secret is back", service=service, version=secret.version)
            st.kv_missing = 0
        self._at(JobKey(Kind.KV, service), self.clock() + interval * self.rng.uniform(0.9, 1.0), self._kv_job, service)
        with st.lock:
            changed = secret.data != st.kv_data or (secret.version and secret.version != st.kv_version)
            if changed:
                for value in (secret.data or {}).values():
                    register_secret(value)
                self._forget_values(st.kv_data or {})
            st.kv_data, st.kv_version = secret.data, secret.version
            first_load, st.kv_loaded = not st.kv_loaded, True
        if secret.version:
            self.metrics.secret_version.labels(service, "kv").set(secret.version)
        for key in rotation.missing_owned_keys(st.settings.rotate, secret.data) if changed else ():
            log.error("rotated key missing from kv: regenerating it now", service=service, key=key)
            self._at(JobKey(Kind.ROTATE, service, key), self.clock(), self._rotate_job, service, key)
        if (changed or recovering or first_load) and not initial:
            if changed or first_load:  # after an outage the same version is re-checked, not "changed"
                log.info("kv secret changed", service=service, version=secret.version)
            if changed:
                self.events.emit("kv_version_changed", service, path=st.settings.kv_path, version=secret.version)
            self._render_all(service, reason="kv changed" if changed else "server back")
        elif not initial:
            self._verify_all(service)

    def _render_all(self, service: str, *, reason: str) -> None:
        st = self.services.get(service)
        if st is None:
            return
        missing = [n for n in st.settings.dynamic if n not in st.leases]
        if not st.kv_loaded or missing:
            # Never replace a good file with a partial one: wait until every source was read.
            log.warning("render postponed: secrets not read yet", service=service, kv_read=st.kv_loaded, missing=missing)
            return
        for key in list(st.outputs):
            ds = st.destinations[key]
            if ds.window is not None and ds.last_success is not None:
                due = ds.window.on_change(self.clock())
                # (two instances: a change arriving while the previous render's hook runs is not skipped)
                self._at(JobKey(Kind.RENDER, service, key), due, self._render_one, service, key, reason)
            else:
                self._render_one(service, key, reason)

    def _verify_all(self, service: str) -> None:
        """Each poll, check every destination still holds what it should (an unchanged
        render writes nothing, and refreshes the last-success time the stale-render alert
        watches); a file someone changed or removed is put back."""
        st = self.services.get(service)
        if st is None or not st.kv_loaded or any(n not in st.leases for n in st.settings.dynamic):
            return
        now = self.clock()
        for key in list(st.outputs):
            ds = st.destinations[key]
            if ds.window is None or not ds.window.pending or ds.window.due(now + 0.5):
                # (a pending render that is overdue was lost: do it now)
                self._render_one(service, key, "poll")

    def _render_one(self, service: str, key: str, reason: str) -> None:
        st = self.services.get(service)
        output = st.outputs.get(key) if st else None
        if st is None or output is None:
            return
        ds = st.destinations[key]
        with st.lock:  # one render of a service at a time; others wait, none is lost
            try:
                outcome = output.deliver(service_values(st))
            except service_values_.KeyCollision as exc:  # the service's files stay as they are
                outcome = RenderOutcome("failure", str(exc))
            if ds.window is not None and outcome.result != "failure":
                ds.window.rendered()
        now = self.clock()
        self.metrics.renders.labels(service, output.name, outcome.result).inc()
        ds.last_result, ds.error = outcome.result, outcome.error
        if outcome.result == "failure":
            log.error("render failed", service=service, destination=output.name, error=outcome.error, reason=reason)
            self.events.emit("render_failed", service, destination=output.name)
            return
        ds.last_success = now
        self.metrics.last_render_success.labels(service, output.name).set(now)
        if outcome.result == "success":
            log.info("rendered", service=service, destination=output.name, reason=reason)

    def _hook_done(self, service: str, dest: Destination, ok: bool) -> None:
        self.metrics.hooks.labels(service, dest.name, "success" if ok else "failure").inc()

    def _child_exited(self, service: str, status: int, again: bool) -> None:
        """A supervised child ended on its own (not stopped by us)."""
        (log.warning if status else log.info)("child exited", service=service, status=status, restarting=again)
        self.metrics.hooks.labels(service, EXEC_KEY, "success" if status == 0 else "failure").inc()
        if self.exit_with_child and not again:
            self.exit_code = status
            self._stop.set()

    def _rotate_job(self, service: str, key: str) -> None:
        st = self.services.get(service)
        spec = next((r for r in st.settings.rotate if r.key == key), None) if st else None
        if st is None or spec is None or self.kv is None:
            return
        now = self.clock()
        try:
            result = rotation.rotate_if_due(self.kv, service, st.settings.kv_path, spec, holder=self.holder, now=now,
                                            lock_ttl=self.settings.daemon.lock_ttl)
        except VaultsyncError as exc:
            self.metrics.rotations.labels(service, "failure").inc()
            backoff = st.rotations.setdefault(key, Backoff(cap=max(BACKOFF_BASE, min(BACKOFF_CAP, spec.every))))
            delay = backoff.failed(self.rng)
            log.warning("rotation failed", service=service, key=key, error=str(exc), retry_in=round(delay, 2))
            self._at(JobKey(Kind.ROTATE, service, key), now + delay, self._rotate_job, service, key)
            return
        st.rotations.pop(key, None)
        if result.status == "rotated":
            self.metrics.rotations.labels(service, "success").inc()
            log.info("rotated", service=service, key=key, version=result.version)
            self.events.emit("rotated", service, key, version=result.version)
            self._kv_job(service)  # read the new version, render, run hooks
        else:
            self.metrics.rotations.labels(service, "skipped").inc()
        # A little jitter so that several daemons do not wake in lockstep.
        self._at(JobKey(Kind.ROTATE, service, key), result.next_due + self.rng.uniform(0, 1.0), self._rotate_job, service, key)


def destination_problem(path: str) -> str | None:
    """Why ``path`` can never be written (a parent is a regular file...), or None. Checked
    before a reload is applied, and per destination at start-up (an error there, not a crash)."""
    current = os.path.dirname(os.path.abspath(path))
    while True:
        try:
            st = os.stat(current)
        except FileNotFoundError:
            parent = os.path.dirname(current)
            if parent == current:
                return None
            current = parent
            continue
        except OSError as exc:
            return f"{path}: cannot use folder {current}: {exc.strerror}"
        if not stat.S_ISDIR(st.st_mode):
            return f"{path}: {current} is not a folder"
        return None
