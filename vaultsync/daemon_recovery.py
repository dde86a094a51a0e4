"""The daemon's recovery path, as a part of :class:`vaultsync.daemon.Daemon` (a mixin): the server going away and
coming back, a token the server rejects, a KV secret that disappears, and the lease ids a
killed run left behind. The decisions are pure (:mod:`vaultsync.recovery`); this is the wiring.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from vaultsync import auth, lease_inflight, leasestate, recovery
from vaultsync.errors import VaultError
from vaultsync.daemon_state import DaemonParts
from vaultsync.jobs import JobKey, Kind
from vaultsync.lifetime import Backoff
from vaultsync.logging import get_logger

if TYPE_CHECKING:
    from vaultsync.daemon_state import ServiceState

log = get_logger("vaultsync.daemon")


class RecoveryMixin(DaemonParts):
    """Needs the Daemon's ``client``, ``clock``, ``rng``, ``settings``, ``services``, ``token``,
    ``reachability``, ``_at`` and the job methods it reschedules."""

    # (declared for readers and type checkers; the Daemon sets them)
    config_path: str | None
    reachability: recovery.Reachability
    _probes: Backoff  # while the server is down (a new one at each outage)

    def _on_http_result(self, status: int | None) -> None:
        """Every response passes here (from the request's thread): schedule, never act inline."""
        edge = self.reachability.observe(status)
        if edge == "down":
            log.warning("server not answering; probing it until it does")
            self._probes = Backoff(base=0.5, cap=recovery.PROBE_CAP, attempt=1)
            self._at(JobKey(Kind.PROBE), self.clock() + recovery.PROBE_CAP * self.rng.uniform(0.5, 1.0), self._probe)
        elif edge == "back":
            self._at(JobKey(Kind.RECOVER), self.clock(), self._server_back)
        elif (status == 403 and self.token.state is not None and self.token_problem is None
              and not self.token.logins.failing and self._token_checks.allow(self.clock())):
            # (a token known to be dead, or a re-login already waiting, has its own backed-off retry)
            self._at(JobKey(Kind.TOKEN_CHECK), self.clock(), self._check_token)

    def _probe(self) -> None:
        """While the server is down: one cheap unauthenticated request, capped at a few
        seconds apart, so that recovery starts soon after it answers (its answer, through
        :meth:`_on_http_result`, is what triggers the recovery)."""
        if self.reachability.up:
            return
        try:
            self.client.adapter.request("GET", "/v1/sys/health", raise_exception=False)
        except Exception:  # noqa: BLE001 - no answer: probe again
            pass
        if self.reachability.up:
            return
        delay = self._probes.failed(self.rng)
        self._at(JobKey(Kind.PROBE), self.clock() + delay, self._probe)

    def _server_back(self) -> None:
        log.info("server answering again: resetting backoffs, checking the token, polling now")
        if self.token.state is None:
            return  # still starting: start() logs in itself
        if self._check_token():
            self._kick_all()

    def _check_token(self) -> bool:
        """Look the token up; a token the server rejects is logged in again (AppRole) or put in
        a loud not-ready state (plain token). True when the token is usable now."""
        if self.token.state is None:
            return False
        try:
            auth.lookup_self(self.client)
        except VaultError as exc:
            if recovery.token_verdict(str(exc)) != "dead":
                return False  # no answer: the probe will bring us back here
            return self._token_dead("token rejected by the server (revoked or expired)")
        return True

    def _token_dead(self, why: str) -> bool:
        """The server refused our token: not ready (/status says why) until a login works.
        AppRole logs in again now (and retries, backed off, loudly once a minute). A plain token
        cannot be replaced by us: keep trying to read a new one (a rewritten token file is
        picked up), quietly but for one error a minute."""
        if self.token_problem is None:
            self.token_problem = why
            if self.settings.auth.method == "approle":
                log.warning("token rejected by the server: logging in again", reason=why)
            elif self._dead_token_log.allow(self.clock()):
                log.error("token rejected by the server: not ready until a valid token is given", reason=why)
        if not self._relogin_lock.acquire(blocking=False):
            return False  # another thread is logging in right now
        try:
            return self._relogin(why)
        finally:
            self._relogin_lock.release()

    def _kick_all(self) -> None:
        """After an outage or a new token: forget every backoff and run what was waiting now."""
        now = self.clock()
        logins_failed, renewals_failed = self.token.logins.succeeded(), self.token.life.renewals.succeeded()
        if logins_failed:
            self._at(JobKey(Kind.TOKEN), now, self._relogin, "server back")
        elif renewals_failed:
            self._at(JobKey(Kind.TOKEN), now, self._token_job)
        for name, st in list(self.services.items()):
            st.kv_reads.succeeded()
            self._at(JobKey(Kind.KV, name), now, self._kv_job, name)
            failed = set(st.issues)
            st.issues.clear()
            for lname in st.settings.dynamic:
                if lease_inflight.busy(self, name, lname):
                    continue  # its own job is waiting on the server: it issues, renews or retries itself
                lease = st.leases.get(lname)
                if lname in failed or (lease is not None and lease.life.expired(now)):
                    self._at(JobKey(Kind.LEASE, name, lname), now, self._reissue, name, lname)
                elif lease is not None and lease.life.renewals.succeeded():  # still valid: renewing keeps the same credentials
                    self._at(JobKey(Kind.LEASE, name, lname), now, self._renew_lease, name, lname)

    # -- KV secret gone ---------------------------------------------------------------------

    def _source_missing(self, service: str, st: ServiceState, version: int) -> None:
        """The KV secret was deleted, destroyed, or never written: keep the last good files, run
        no hook, say so, count it, and look again (backed off) until it is back. A service that
        wants the old behaviour (render without the KV keys) sets ``on_delete = "empty"``."""
        assert self.kv is not None
        delay = recovery.missing_source_delay(st.kv_missing, self.settings.daemon.poll_interval, self.rng)
        first = st.kv_missing == 0
        st.kv_missing += 1
        self._at(JobKey(Kind.KV, service), self.clock() + delay, self._kv_job, service)
        where = f"{self.kv.mount}/{st.settings.kv_path}"
        why = "deleted" if version or st.kv_loaded else "not found"
        if first or st.kv_missing % 10 == 0:
            log.warning("kv secret missing: keeping the last rendered files", service=service, path=where,
                        state=why, version=version or None, retry_in=round(delay, 2))
        for dest in st.settings.destinations:
            ds = st.destinations[dest.path]
            ds.last_result, ds.error = "source_missing", f"kv secret {where} is {why}; the last file is kept"
            self.metrics.renders.labels(service, dest.name, "source_missing").inc()

    # -- lease ids of a killed run ---------------------------------------------------------

    def _lease_file(self) -> Path:
        d = self.settings.daemon
        return Path(d.state_file) if d.state_file else leasestate.default_path(self.config_path)

    def _revoke_previous_run(self) -> None:
        """Revoke the leases the previous run recorded (a SIGKILLed daemon could not)."""
        path = self._lease_file()
        ids = leasestate.load(path)
        with self._held_lock:
            self._held.update(ids)  # until each revoke succeeds: a failed one is tried again next start
        for lease_id in ids:
            self._revoke(lease_id, "-", "previous run")
        if ids:
            log.info("leases of the previous run revoked", count=len(ids))

    def _hold(self, lease_id: str, alive: bool) -> None:
        if not lease_id or not self.settings.daemon.revoke_on_start:
            return
        with self._held_lock:
            (self._held.add if alive else self._held.discard)(lease_id)
            try:
                leasestate.save(self._lease_file(), self._held)
            except OSError as exc:
                log.warning("cannot record lease ids", error=f"{self._lease_file()}: {exc.strerror}")
