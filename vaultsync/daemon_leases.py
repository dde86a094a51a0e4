"""The daemon's dynamic secrets: read one (issue), renew its lease as its
:class:`~vaultsync.lifetime.Lifetime` plans, re-issue it at max TTL or when it is gone, and
revoke the superseded lease after the grace period. A part of :class:`vaultsync.daemon.Daemon`."""

from __future__ import annotations

import uuid
from typing import Any

import hvac.exceptions

from vaultsync import lease_inflight, leases, recovery
from vaultsync.daemon_state import DaemonParts, Lease
from vaultsync.jobs import JobKey, Kind
from vaultsync.lifetime import Backoff
from vaultsync.logging import forget_secret, get_logger, register_secret
from vaultsync.vault import describe, renew_lease, revoke_lease

log = get_logger("vaultsync.daemon")


class LeaseMixin(DaemonParts):
    """Needs the Daemon's ``client``, ``clock``, ``rng``, ``settings``, ``metrics``, ``events``,
    ``services``, ``token``, ``_at``, ``_hold`` and its render and login jobs."""

    _login_gen: int
    _hold: Any
    _lifetime: Any
    _relogin: Any
    _render_all: Any

    @lease_inflight.tracked
    def _issue(self, service: str, name: str, path: str | None = None, *, initial: bool = False) -> bool:
        """Read a dynamic secret anew (first time, or re-issue); True when it worked.
        Renders the service unless this is the start-up read (the caller renders then)."""
        st = self.services.get(service)
        if st is None:
            return False
        path = path or st.settings.dynamic[name]
        gen = self._login_gen
        try:
            resp = self.client.adapter.get(f"/v1/{path.strip('/')}")
        except Exception as exc:  # noqa: BLE001
            err = describe(exc, f"read {path}")
            old = st.leases.get(name)
            now = self.clock()
            alive = old is not None and not old.life.expired(now)
            # Never past the old lease's expiry while it lives; once it is gone, keep trying, backed off.
            delay = st.issues.setdefault(name, Backoff()).failed(self.rng, now=now, expires_at=old.life.expires_at if alive else None)
            assert delay is not None
            log.warning("dynamic secret read failed", service=service, secret=name, error=self._blame_token(str(err)),
                        retry_in=round(delay, 2))
            self._at(JobKey(Kind.LEASE, service, name), self.clock() + delay, self._reissue, service, name)
            return False
        if gen != self._login_gen or self.services.get(service) is not st:
            # Issued under a token replaced meanwhile, or for a service a reload replaced: the
            # job queued by that login/reload does the real re-issue. Drop this one.
            if resp.get("lease_id"):
                self._revoke(resp["lease_id"], service, name)
            return False
        now = self.clock()
        st.issues.pop(name, None)
        data = dict(resp.get("data") or {})
        for value in data.values():
            register_secret(value)
        lease_id = resp.get("lease_id") or ""
        ttl = float(resp.get("lease_duration") or 0)
        lease = Lease(service, name, path, lease_id, data, bool(resp.get("renewable")), self._lifetime())
        decision = lease.life.issued(ttl, renewable=lease.renewable, now=now, rng=self.rng)
        with st.lock:
            old = st.leases.get(name)
            st.leases[name] = lease
        self._hold(lease_id, True)
        self.metrics.record_lease(service, name, ttl=ttl, expires_at=lease.life.expires_at, due=decision.at)
        log.info("dynamic secret issued", service=service, secret=name, ttl=ttl, renewable=lease.renewable)
        self._schedule_lease(lease)  # before rendering: nothing a render does can drop the lease
        if not initial:
            if old is not None:
                self.events.emit("lease_reissued", service, name, ttl_seconds=ttl)
            self._render_all(service, reason=f"{name} re-issued" if old else f"{name} issued")
        if old is not None:
            # Revoke the superseded lease after the grace period, unless it expires before then anyway.
            revoke_at = now + self.settings.daemon.lease_revoke_grace
            if old.lease_id and (not old.ttl or revoke_at < old.expires_at - 0.5):
                self._at(JobKey(Kind.REVOKE, service, name, uuid.uuid4().hex[:8]), revoke_at, self._revoke, old.lease_id, service, name, old.data)
            else:
                self._forget_values(old.data)
                self._hold(old.lease_id, False)
        return True

    def _reissue(self, service: str, name: str) -> None:
        st = self.services.get(service)
        old = st.leases.get(name) if st else None
        tok = self.token.life
        if (self.settings.auth.method == "approle" and old is not None and old.ttl and tok.action is leases.Action.REISSUE
                and tok.expires_at is not None and tok.expires_at - self.clock() < old.ttl):
            # The token is at its max TTL and would die (taking the new lease with it) before this
            # lease's term: log in first; that re-issues every lease under the new token, this one too.
            if self._relogin("a lease is due and the token would not outlive it"):
                return
        self._issue(service, name)

    def _schedule_lease(self, lease: Lease) -> None:
        life = lease.life
        if life.action is leases.Action.NOTHING or life.due is None:
            return
        fn = self._renew_lease if life.action is leases.Action.RENEW else self._reissue
        self._at(JobKey(Kind.LEASE, lease.service, lease.name), life.due, fn, lease.service, lease.name)

    @lease_inflight.tracked
    def _renew_lease(self, service: str, name: str) -> None:
        st = self.services.get(service)
        lease = st.leases.get(name) if st else None
        if lease is None:
            return
        try:
            resp = renew_lease(self.client, lease.lease_id, int(lease.ttl))  # id in the path: scoped by policy
        except Exception as exc:  # noqa: BLE001
            self.metrics.renewals.labels("lease", "failure").inc()
            err = describe(exc, f"renew lease of {service}/{name}")
            if isinstance(exc, (hvac.exceptions.InvalidRequest, hvac.exceptions.Forbidden)) or recovery.lease_gone(str(err)):
                # Revoked (revoke-prefix), expired, or our token lost it: the credentials are dead, get new ones now.
                log.warning("lease cannot be renewed, re-issuing", service=service, secret=name, error=str(err))
                self._issue(service, name)
                return
            delay = lease.life.renewal_failed(now=self.clock(), rng=self.rng)
            if delay is None:
                log.warning("lease expired during failures, re-issuing", service=service, secret=name)
                self._issue(service, name)
                return
            log.warning("lease renewal failed", service=service, secret=name, error=str(err), retry_in=round(delay, 2))
            self._at(JobKey(Kind.LEASE, service, name), self.clock() + delay, self._renew_lease, service, name)
            return
        if self.services.get(service) is not st or st.leases.get(name) is not lease:
            return  # replaced while the request was in flight: the new lease has its own job
        now = self.clock()
        self.metrics.renewals.labels("lease", "success").inc()
        returned = float(resp.get("lease_duration") or 0)
        decision = lease.life.renewed(returned, renewable=bool(resp.get("renewable", True)), now=now, rng=self.rng)
        self.metrics.record_lease(service, name, ttl=returned, expires_at=lease.life.expires_at, due=decision.at)
        log.info("lease renewed", service=service, secret=name, ttl=returned, next=decision.action.value,
                 in_s=round(decision.delay or 0, 2), max_ttl_reached=decision.max_ttl_reached)
        self._schedule_lease(lease)

    def _revoke(self, lease_id: str, service: str, name: str, data: dict[str, Any] | None = None) -> None:
        try:
            revoke_lease(self.client, lease_id)
            log.info("old lease revoked", service=service, secret=name)
            self._hold(lease_id, False)
        except Exception as exc:  # noqa: BLE001
            log.warning("lease revoke failed", service=service, secret=name, error=str(describe(exc, "revoke lease")))
        if data:
            self._forget_values(data)

    @staticmethod
    def _forget_values(data: dict[str, Any]) -> None:
        for value in data.values():
            forget_secret(value)
