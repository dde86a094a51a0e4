"""The daemon's token: log in (through its :mod:`~vaultsync.auth_methods` method), renew it as
its :class:`~vaultsync.lifetime.Lifetime` plans, log in again at max TTL or when the server
rejects it, and re-issue every lease the old token owned (leases die with their token).
A part of :class:`vaultsync.daemon.Daemon`."""

from __future__ import annotations

from typing import Any

from vaultsync import auth, leases, recovery
from vaultsync.auth_methods import AuthMethod
from vaultsync.daemon_state import DaemonParts, TokenInfo
from vaultsync.errors import VaultError, VaultsyncError
from vaultsync.jobs import JobKey, Kind
from vaultsync.logging import get_logger
from vaultsync.vault import describe

log = get_logger("vaultsync.daemon")


class TokenMixin(DaemonParts):
    """Needs the Daemon's ``client``, ``clock``, ``rng``, ``settings``, ``metrics``, ``events``,
    ``services``, ``_at``, ``_lock`` and its lease jobs."""

    auth_method: AuthMethod
    login_error: str | None
    security_refusal: str | None = None  # why the last login was refused as a security event (auth.SecurityError)
    _login_gen: int
    _static_token_told: bool
    _dead_token_log: recovery.Throttle
    _lifetime: Any
    _reissue: Any
    _kick_all: Any
    _token_dead: Any

    def _login(self) -> bool:
        method = self.auth_method.name
        try:
            state = self.auth_method.login(self.client)
        except auth.SecurityError as exc:
            self.metrics.logins.labels(method, "failure").inc()
            log.error("login refused: security", error=str(exc))
            self.login_error = self.security_refusal = str(exc)
            return False
        except Exception as exc:  # noqa: BLE001
            err = exc if isinstance(exc, VaultsyncError) else describe(exc, f"{method} login")
            self.metrics.logins.labels(method, "failure").inc()
            self.events.emit("login_failed", "vaultsync", method=method)
            self.login_error = str(err)
            if self.token_problem is None:
                log.warning("login failed", method=method, error=str(err))
            elif self._dead_token_log.allow(self.clock()):  # loud, but once a minute
                log.error("token rejected by the server: not ready until a valid token is given" if method == "token"
                          else "token rejected and logging in again fails: not ready until a login works",
                          method=method, reason=self.token_problem, error=str(err))
            self.auth_method.login_failed()  # (AppRole: new credentials delivered since? read them next time)
            return False
        self.metrics.logins.labels(method, "success").inc()
        now = self.clock()
        if self.token.state is None or self.token.state.accessor != state.accessor:
            self._login_gen += 1
        if self.token_problem is not None:
            log.info("token accepted again", method=method)
            self.token_problem = None
            self._dead_token_log.reset()
        with self._lock:
            self.token = TokenInfo(state=state, life=self._lifetime(periodic=bool(state.period)))
            decision = self.token.life.issued(state.ttl, renewable=state.renewable, now=now, rng=self.rng)
        self.metrics.record_token(ttl=state.ttl, expires_at=self.token.life.expires_at, due=decision.at)
        log.info("logged in", method=method, ttl=state.ttl, renewable=state.renewable, policies=list(state.policies))
        self._schedule_token()
        return True

    def _schedule_token(self) -> None:
        life = self.token.life
        if life.action is leases.Action.NOTHING or life.due is None:
            return
        self._at(JobKey(Kind.TOKEN), life.due, self._token_job)

    def _token_job(self) -> None:
        tok = self.token
        d = tok.life.decision
        if d is None:
            return
        if d.action is leases.Action.REISSUE:
            self._relogin("max TTL reached" if d.max_ttl_reached else d.reason)
            return
        try:
            new = auth.renew_self(self.client, increment=tok.life.requested or None)
        except VaultError as exc:
            self.metrics.renewals.labels("token", "failure").inc()
            if recovery.token_verdict(str(exc)) == "dead":
                self._token_dead("token rejected on renewal")
                return
            delay = tok.life.renewal_failed(now=self.clock(), rng=self.rng)
            if delay is None:
                self._relogin("token expired")
                return
            log.warning("token renewal failed", error=str(exc), retry_in=round(delay, 2))
            self._at(JobKey(Kind.TOKEN), self.clock() + delay, self._token_job)
            return
        now = self.clock()
        self.metrics.renewals.labels("token", "success").inc()
        # Every lease dies with this token: at max TTL its lifetime plans the login (which re-issues
        # them) early enough that the services switch before the old token takes the old ones with it.
        with self._lock:
            decision = tok.life.renewed(new.ttl, renewable=new.renewable, now=now, rng=self.rng)
        self.metrics.record_token(ttl=new.ttl, expires_at=tok.life.expires_at, due=decision.at)
        log.info("token renewed", ttl=new.ttl, next=decision.action.value, in_s=round(decision.delay or 0, 2), max_ttl_reached=decision.max_ttl_reached)
        self._schedule_token()

    def _relogin(self, why: str) -> bool:
        if self.token_problem is None:  # a static token cannot be replaced by us: only read again (token_file)
            log.info("logging in again" if self.settings.auth.method == "approle" else "reading the token again", reason=why)
        gen = self._login_gen
        troubled = self.token.logins.failing or self.token_problem is not None
        if self._login():
            if self._login_gen != gen:
                # Leases die with the token that created them: re-issue every dynamic secret under
                # the new token now (the old ones are revoked after the grace period or with the old token).
                for svc in list(self.services.values()):
                    for name in list(svc.leases):
                        self._at(JobKey(Kind.LEASE, svc.settings.name, name), self.clock(), self._reissue, svc.settings.name, name)
            else:
                self._tell_static_token(why)  # the same token again (token method): its leases stay valid
            if troubled or self._login_gen != gen:
                self._kick_all()  # polls backed off behind the dead token run now
            return True
        self._tell_static_token(why)
        # Logins count their own failures: a backoff carried over from failed renewals put the
        # re-login minutes after the server came back.
        delay = self.token.logins.failed(self.rng)
        self.token.life.must_reissue()
        if self.token_problem is None:
            log.warning("login failed, retrying", retry_in=round(delay, 2))
        self._at(JobKey(Kind.TOKEN), self.clock() + delay, self._relogin, why)
        return False

    def _blame_token(self, error: str) -> str:
        return recovery.blame_the_token(error, expires_at=self.token.life.expires_at, now=self.clock(),
                                        token_problem=self.token_problem)

    def _tell_static_token(self, why: str) -> None:
        """Once: logging in again gave no new token. (A token_file that an agent rewrites does give
        one, and then there is nothing to say.)"""
        if self.settings.auth.method != "token" or self._static_token_told:
            return
        self._static_token_told = True
        log.error("static token cannot log in again", reason=why,
                  fix="give vaultsync a periodic token (vault token create -period=24h ...), a token_file that an "
                      "agent keeps fresh, or auth.method = 'approle'; it stops working when this token expires")
