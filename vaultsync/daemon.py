"""``vaultsync daemon``: keep the token and every lease alive, render env files, rotate owned keys.

Wiring only: *when* comes from :mod:`vaultsync.leases` (pure timing maths), *how a
file is written* from :mod:`vaultsync.render` and :mod:`vaultsync.formats`, logins
from :mod:`vaultsync.auth`. Each token, lease, KV secret, destination and rotated key
has one APScheduler job, rescheduled after each attempt at the time the maths gives.
Every failure backs off (exponential, capped, jittered) and never past the expiry of
what it protects; nothing retries in a loop.

Lock order: ``self._lock`` (daemon-wide state) may be taken while holding a service's
``lock``; never the other way around.
"""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import stat
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

import hvac
import hvac.exceptions
from apscheduler.events import EVENT_JOB_MAX_INSTANCES, JobSubmissionEvent
from apscheduler.executors.pool import ThreadPoolExecutor as APThreadPool
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import STATE_STOPPED

from vaultsync import __version__, auth, config, events, formats, leases, recovery, render, rotation, tracing
from vaultsync.config import Destination, ServiceSettings, Settings
from vaultsync.daemon_recovery import RecoveryMixin
from vaultsync.errors import ConfigError, SourceMissing, VaultError, VaultsyncError
from vaultsync.hookrunner import HookRunner
from vaultsync.logging import forget_secret, get_logger, register_secret
from vaultsync.metrics import HealthServer, Metrics, read_status_token
from vaultsync.safefs import resolve_owner
from vaultsync.vault import KV, describe, detect_kv_version, make_client, renew_lease, revoke_lease

log = get_logger("vaultsync.daemon")

BACKOFF_BASE, BACKOFF_CAP = 1.0, 300.0
HOOK_WORKERS = 8
#: On SIGTERM a running hook gets this long before it is killed with its process group
#: (a 25 s `docker compose restart` held the daemon's exit for 25 s; docker stop waits 10).
HOOK_STOP_GRACE = 5.0
#: Jobs that keep credentials alive run on their own threads: polls, renders and rotations
#: (which may wait on a slow server or a big file) can never delay them.
LIFETIME_JOBS = frozenset({"token", "lease", "recover", "probe", "token-check"})
LIFETIME_THREADS = 16
# A kept connection for every thread that may send at once (start-up's 8, the default jobs' 8, the
# lifetime jobs'): past the pool size each request opens and drops a connection of its own.
HTTP_POOL = 8 + 8 + LIFETIME_THREADS
DEAD_TOKEN_LOG_EVERY = 60.0  # a dead plain token is logged as an error once a minute at most
TOKEN_CHECK_EVERY = 5.0  # 403s trigger a token lookup at most this often


# --- state ---------------------------------------------------------------------------


@dataclass
class Lease:
    """One dynamic secret's current lease."""

    service: str
    name: str
    path: str
    lease_id: str = field(repr=False)
    data: dict[str, Any] = field(repr=False)
    ttl: float
    renewable: bool
    expires_at: float
    decision: leases.RenewalDecision
    granted: float = 0.0  # the TTL the last issue/renewal returned
    last_renewal: float | None = None
    attempt: int = 0  # consecutive failures


@dataclass
class DestinationState:
    last_result: str = "pending"
    last_success: float | None = None
    error: str | None = None
    window: render.WaitWindow | None = None


@dataclass
class ServiceState:
    settings: ServiceSettings
    kv_data: dict[str, Any] | None = field(default=None, repr=False)
    kv_version: int = 0
    kv_loaded: bool = False  # a read succeeded (the secret may still be absent)
    kv_attempt: int = 0
    kv_missing: int = 0  # consecutive reads that found the secret deleted or never written
    issue_attempts: dict[str, int] = field(default_factory=dict)  # consecutive failed reads per dynamic secret
    leases: dict[str, Lease] = field(default_factory=dict)
    destinations: dict[str, DestinationState] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)


@dataclass
class TokenInfo:
    state: auth.TokenState | None = None  # as of login: its ttl is what renewals ask for
    expires_at: float | None = None  # None: never (or unknown before login)
    granted: float = 0.0  # the TTL the last login/renewal returned
    decision: leases.RenewalDecision | None = None
    last_renewal: float | None = None
    attempt: int = 0  # consecutive failed renewals
    login_attempt: int = 0  # consecutive failed logins (a separate count: see issue 11)


def service_values(svc: ServiceState) -> dict[str, str]:
    """What a service's destinations render: its KV keys, then ``<NAME>_<FIELD>`` of each
    dynamic secret (e.g. ``DB_USERNAME``). Non-string KV values are JSON-encoded."""
    values: dict[str, str] = {}
    for key, value in (svc.kv_data or {}).items():
        values[key] = value if isinstance(value, str) else json.dumps(value)
    for name, lease in sorted(svc.leases.items()):
        for field_name, value in lease.data.items():
            values[f"{name}_{field_name}".upper()] = value if isinstance(value, str) else json.dumps(value)
    return values


# --- the daemon --------------------------------------------------------------------------


class _Scheduler(BackgroundScheduler):
    """APScheduler's loop, minus one shutdown race: ``shutdown()`` marks the scheduler stopped
    without its job-store lock, so a one-off job fired at that moment is looked up among the
    *pending* jobs, is not found, and the loop's thread dies with a traceback on stderr."""

    def _process_jobs(self) -> float | None:
        try:
            return super()._process_jobs()
        except JobLookupError:
            if self.state == STATE_STOPPED:
                return None
            raise


class Daemon(RecoveryMixin):
    def __init__(
        self,
        settings: Settings,
        *,
        config_path: str | None = None,
        overrides: dict[str, Any] | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        serve_http: bool = True,
    ) -> None:
        self.settings = settings
        self.config_path = config_path
        self.overrides = overrides or {}  # command-line flags, applied again on reload
        self.metrics = metrics or Metrics()
        self.events = events.Emitter.from_settings(settings.events, self.metrics.registry)
        self.clock = clock
        # Jitter needs no secrecy: SystemRandom costs a getrandom() call per draw (8% of start-up CPU at 1,000 leases).
        self.rng = rng or random.Random()
        self.holder = f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.reachability = recovery.Reachability()
        # An AppRole daemon starts without a token: a VAULT_TOKEN or `vault login` token on the host
        # is someone else's and must not ride along with its login or its unwrap.
        self.client = make_client(settings.vault, pool_size=HTTP_POOL,
                                  adapter=self.metrics.counting_adapter(HTTP_POOL, on_result=self._on_http_result),
                                  token="" if settings.auth.method == "approle" else None)
        self.kv: KV | None = None
        self.token = TokenInfo()
        self.services: dict[str, ServiceState] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._started = threading.Event()  # every configured service was read and rendered once
        self._secret_id: str | None = None  # kept for logins after max TTL (its file may be gone)
        self._secret_id_stat: tuple[int, int] | None = None  # (inode, mtime) of the file it came from
        self._static_token_told = False  # said once that a static token cannot log in again
        self.login_error: str | None = None  # why the last login failed (for `vaultsync render`'s message)
        self._login_gen = 0  # bumped by every login that yields a different token
        self.token_problem: str | None = None  # why the token is unusable (rejected, no login since), or None
        self._dead_token_log = recovery.Throttle(DEAD_TOKEN_LOG_EVERY)
        self._token_checks = recovery.Throttle(TOKEN_CHECK_EVERY)
        self._crashes = recovery.CrashBackoff(BACKOFF_BASE, BACKOFF_CAP)
        self.hooks = HookRunner(HOOK_WORKERS)
        self._held: set[str] = set()  # lease ids alive (recorded for revoke_on_start)
        self._held_lock = threading.Lock()
        self._relogin_lock = threading.Lock()  # one re-login after a rejected token, not one per 403
        self.scheduler = _Scheduler(
            # Renewals block on the server (a database lease's renewal runs ALTER ROLE, seconds when it is
            # busy): at thousands of leases 4 threads let a few slow answers hold up every other renewal.
            executors={"default": APThreadPool(8), "lifetimes": APThreadPool(LIFETIME_THREADS)},
            job_defaults={"coalesce": True, "max_instances": 2, "misfire_grace_time": None},
            timezone=timezone.utc,
        )
        self._queued: dict[str, tuple[Callable[..., Any], tuple[Any, ...]]] = {}  # job id -> what it runs
        self.scheduler.add_listener(self._run_skipped, EVENT_JOB_MAX_INSTANCES)
        self.http: HealthServer | None = None
        if serve_http and settings.daemon.metrics_addr:
            self.http = HealthServer(settings.daemon.metrics_addr, self.metrics, self.ready, self.status,
                                     status_token=read_status_token(settings.daemon.status_token_file))

    # -- scheduling helpers ---------------------------------------------------------------

    def _at(self, job_id: str, when: float, fn: Callable[..., Any], *args: Any, instances: int = 2) -> None:
        """Run ``fn`` once at ``when`` as job ``job_id`` (replacing a pending one). Two instances
        may run: a job often reschedules itself, possibly for "now", while it is still finishing,
        and APScheduler drops (not delays) a one-off run over the limit."""
        if self._stop.is_set():
            return
        due = max(when, self.clock())
        self._queued[job_id] = (fn, args)
        run_date = datetime.fromtimestamp(due, tz=timezone.utc)
        kind = job_id.split(":", 1)[0]
        self.scheduler.add_job(self._guard(job_id, fn, due), "date", run_date=run_date, id=job_id, replace_existing=True,
                               args=args, max_instances=instances,
                               executor="lifetimes" if kind in LIFETIME_JOBS else "default")

    def _guard(self, job_id: str, fn: Callable[..., Any], due: float) -> Callable[..., Any]:
        kind = job_id.split(":", 1)[0]

        def run(*args: Any) -> None:
            if self._stop.is_set():
                # Shutting down: a run still queued behind hung requests is dropped (8 threads x
                # 3 rounds of a 30 s timeout held SIGTERM for 87 s against a hung server).
                return
            self.metrics.job_lateness.labels(kind).observe(max(0.0, self.clock() - due))
            if self._queued.get(job_id, (None,))[0] is fn:
                self._queued.pop(job_id, None)
            try:
                fn(*args)
            except Exception:  # noqa: BLE001 - a job must never die silently or kill the scheduler
                delay = self._crashes.crashed(job_id, self.rng)
                self.metrics.job_crashes.labels(kind).inc()
                log.exception("job crashed, running it again later", job=job_id, retry_in=round(delay, 2))
                self._at(job_id, self.clock() + delay, fn, *args)
            else:
                self._crashes.succeeded(job_id)

        return run

    def _run_skipped(self, event: JobSubmissionEvent) -> None:
        """APScheduler skips (drops) a one-off run while two instances of the job still run:
        a job chain would end silently. Count it and run it again a little later."""
        queued = self._queued.pop(event.job_id, None)
        if queued is None:
            return
        kind = event.job_id.split(":", 1)[0]
        self.metrics.job_crashes.labels(kind).inc()
        log.warning("job run skipped while it was still running; running it again later", job=event.job_id)
        self._at(event.job_id, self.clock() + 1.0 + self.rng.uniform(0, 1.0), queued[0], *queued[1])

    def _retry_delay(self, attempt: int, expires_at: float | None) -> float | None:
        now = self.clock()
        if expires_at is None:
            return leases.backoff_delay(attempt, BACKOFF_BASE, BACKOFF_CAP, rng=self.rng)
        return leases.retry_delay_before_expiry(attempt, expires_at, now, rng=self.rng, base=BACKOFF_BASE, cap=BACKOFF_CAP)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Log in (retrying with backoff until it works or we are stopped), read and render
        everything once, then hand over to the scheduler."""
        os.umask(0o077)
        try:
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core dump full of secrets
        except (ValueError, OSError):
            pass
        if self.http:
            self.http.start()
            log.info("serving metrics", addr=self.http.address)
        self.metrics.prime(self.settings.auth.method, self.settings.services.values())
        self.metrics.vault_up.set(0)
        attempt = 0
        while not self._stop.is_set():
            if self._connect():
                break
            delay = leases.backoff_delay(attempt, BACKOFF_BASE, BACKOFF_CAP, rng=self.rng)
            attempt += 1
            log.warning("start-up failed, retrying", retry_in=round(delay, 2))
            self._stop.wait(delay)
        if self._stop.is_set():
            return
        self.scheduler.start()
        if self.settings.daemon.revoke_on_start:
            self._revoke_previous_run()
        # Services are independent: read and render them in parallel (same pool size as the scheduler).
        # Hooks run on their own pool: start-up does not wait for them.
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(self._add_service_safely, self.settings.services.values()))
        self._started.set()
        log.info("daemon started", services=len(self.services), version=__version__)

    def _connect(self) -> bool:
        """Log in and find the KV version; False on a failure worth retrying (a 503 from a
        server still starting, a timeout). Configuration errors still end the daemon."""
        if self.token.state is None and not self._login():
            return False
        s = self.settings
        try:
            self.kv = KV(self.client, s.kv.mount, s.kv.version or detect_kv_version(self.client, s.kv.mount))
        except ConfigError:
            raise
        except VaultError as exc:
            log.warning("kv mount lookup failed", mount=s.kv.mount, error=str(exc))
            return False
        return True

    def _add_service_safely(self, svc: ServiceSettings) -> None:
        if self._stop.is_set():
            return  # SIGTERM during start-up: do not read the rest against a server that may hang
        try:
            self._add_service(svc)
        except Exception:  # noqa: BLE001 - one service's fault must not stop the others or the daemon
            log.exception("service could not be started; retrying", service=svc.name)
            self._at(f"kv:{svc.name}", self.clock() + self._crashes.crashed(f"add:{svc.name}", self.rng),
                     self._kv_job, svc.name)

    def run_forever(self) -> int:
        """Main thread: signals in, stop on SIGTERM/SIGINT, reload on SIGHUP."""
        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        signal.signal(signal.SIGINT, lambda *_: self._stop.set())
        signal.signal(signal.SIGHUP, lambda *_: self._reload.set())
        self.start()
        while not self._stop.is_set():
            self._stop.wait(0.5)
            if self._reload.is_set():
                self._reload.clear()
                try:
                    self.reload()
                except Exception:  # noqa: BLE001 - a bad reload must never end the running daemon
                    log.exception("reload failed, keeping the running config")
        self.shutdown()
        return 0

    def stop(self) -> None:
        self._stop.set()

    def shutdown(self) -> None:
        """Finish in-flight jobs, optionally revoke leases and token, stop serving."""
        self._stop.set()
        self.hooks.close()  # no new hooks; running ones get HOOK_STOP_GRACE from now
        hooks_deadline = time.monotonic() + HOOK_STOP_GRACE
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        self.hooks.shutdown(grace=max(0.0, hooks_deadline - time.monotonic()))
        if self.settings.daemon.revoke_on_exit:
            for svc in list(self.services.values()):
                for lease in list(svc.leases.values()):
                    self._revoke(lease.lease_id, lease.service, lease.name)
            if self.token.state and self.token.state.ttl:
                try:
                    self.client.auth.token.revoke_self()
                    log.info("token revoked")
                except Exception as exc:  # noqa: BLE001
                    log.warning("token revoke failed", error=str(describe(exc, "revoke token")))
        self.events.close()  # flush queued events before exit (SIGTERM lands here)
        if self.http:
            self.http.stop()
        log.info("daemon stopped")

    # -- token ---------------------------------------------------------------------------------

    def _login(self) -> bool:
        s = self.settings
        method = s.auth.method
        try:
            if method == "approle" and self._secret_id is None:
                self._secret_id_stat = _file_id(s.auth.secret_id_file)
                self._secret_id = auth.read_secret_id(self.client, s.auth)
            state = auth.login(self.client, s.vault, s.auth, secret_id=self._secret_id)
        except auth.SecurityError as exc:
            self.metrics.logins.labels(method, "failure").inc()
            log.error("login refused: security", error=str(exc))
            self.login_error = str(exc)
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
            current = _file_id(s.auth.secret_id_file)
            if method == "approle" and current is not None and current != self._secret_id_stat:
                self._secret_id = None  # new credentials were delivered since we read ours: use them next time
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
            self.token = TokenInfo(state=state, expires_at=now + state.ttl if state.ttl else None, granted=state.ttl)
            self.token.decision = leases.plan_new_lease(state.ttl, renewable=state.renewable, now=now, rng=self.rng)
        self.metrics.record_token(ttl=state.ttl, expires_at=self.token.expires_at, due=self.token.decision.at)
        log.info("logged in", method=method, ttl=state.ttl, renewable=state.renewable, policies=list(state.policies))
        self._schedule_token()
        return True

    def _schedule_token(self) -> None:
        d = self.token.decision
        if d is None or d.action is leases.Action.NOTHING or d.at is None:
            return
        self._at("token", d.at, self._token_job)

    def _token_job(self) -> None:
        d = self.token.decision
        if d is None:
            return
        if d.action is leases.Action.REISSUE:
            self._relogin("max TTL reached" if d.max_ttl_reached else d.reason)
            return
        state = self.token.state
        assert state is not None
        try:
            new = auth.renew_self(self.client, increment=state.ttl or None)
        except VaultError as exc:
            self.metrics.renewals.labels("token", "failure").inc()
            if recovery.token_verdict(str(exc)) == "dead":
                self._token_dead("token rejected on renewal")
                return
            self.token.attempt += 1
            delay = self._retry_delay(self.token.attempt, self.token.expires_at)
            if delay is None:
                self._relogin("token expired")
                return
            log.warning("token renewal failed", error=str(exc), retry_in=round(delay, 2))
            self._at("token", self.clock() + delay, self._token_job)
            return
        now = self.clock()
        self.metrics.renewals.labels("token", "success").inc()
        decision = leases.plan_after_renewal(
            state.ttl or None, new.ttl, self.token.granted or None, d.grace,
            now=now, rng=self.rng, renewable=new.renewable, periodic=bool(state.period),
        )
        # Every lease dies with this token: log in (and re-issue them) early enough that the services
        # switch to the new credentials before the old token takes the old ones with it.
        decision = leases.reissue_early(decision, now=now, lead=self.settings.daemon.lease_revoke_grace + 1.0)
        with self._lock:
            self.token = TokenInfo(state=state, expires_at=now + new.ttl if new.ttl else None, granted=new.ttl,
                                   decision=decision, last_renewal=now)
        self.metrics.record_token(ttl=new.ttl, expires_at=self.token.expires_at, due=decision.at)
        log.info("token renewed", ttl=new.ttl, next=decision.action.value, in_s=round(decision.delay or 0, 2), max_ttl_reached=decision.max_ttl_reached)
        self._schedule_token()

    def _relogin(self, why: str) -> bool:
        if self.token_problem is None:
            log.info("logging in again", reason=why)
        gen = self._login_gen
        troubled = self.token.login_attempt > 0 or self.token_problem is not None
        if self._login():
            if self._login_gen != gen:
                # Leases die with the token that created them: re-issue every dynamic secret under
                # the new token now (the old ones are revoked after the grace period or with the old token).
                for svc in list(self.services.values()):
                    for name in list(svc.leases):
                        self._at(f"lease:{svc.settings.name}:{name}", self.clock(), self._reissue, svc.settings.name, name)
            else:
                self._tell_static_token(why)  # the same token again (token method): its leases stay valid
            if troubled or self._login_gen != gen:
                self._kick_all()  # polls backed off behind the dead token run now
            return True
        self._tell_static_token(why)
        # Logins count their own failures: a backoff carried over from failed renewals put the
        # re-login minutes after the server came back.
        attempt = self.token.login_attempt
        self.token.login_attempt += 1
        delay = leases.backoff_delay(attempt, BACKOFF_BASE, BACKOFF_CAP, rng=self.rng)
        self.token.decision = replace(self.token.decision, action=leases.Action.REISSUE) if self.token.decision else None
        if self.token_problem is None:
            log.warning("login failed, retrying", retry_in=round(delay, 2))
        self._at("token", self.clock() + delay, self._relogin, why)
        return False

    def _tell_static_token(self, why: str) -> None:
        """Once: logging in again gave no new token. (A token_file that an agent rewrites does give
        one, and then there is nothing to say.)"""
        if self.settings.auth.method != "token" or self._static_token_told:
            return
        self._static_token_told = True
        log.error("static token cannot log in again", reason=why,
                  fix="give vaultsync a periodic token (vault token create -period=24h ...), a token_file that an "
                      "agent keeps fresh, or auth.method = 'approle'; it stops working when this token expires")

    # -- services ------------------------------------------------------------------------------

    def _add_service(self, svc: ServiceSettings) -> None:
        st = ServiceState(settings=svc)
        for dest in svc.destinations:
            ds = st.destinations[dest.path] = DestinationState(
                window=render.WaitWindow(dest.wait_min, max(dest.wait_max, dest.wait_min)) if dest.wait_min else None)
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
            self._at(f"rotate:{svc.name}:{spec.key}", self.clock(), self._rotate_job, svc.name, spec.key)

    def _remove_service(self, name: str, *, revoke: bool) -> None:
        with self._lock:
            st = self.services.pop(name, None)
        if st is None:
            return
        for job in self.scheduler.get_jobs():
            if job.id.split(":")[1:2] == [name] and not job.id.startswith("revoke:"):
                job.remove()
                self._queued.pop(job.id, None)
        grace = self.settings.daemon.lease_revoke_grace
        for lease in st.leases.values():
            if revoke:
                self._revoke(lease.lease_id, name, lease.name, lease.data)
            elif lease.lease_id:  # replaced by the re-added service's new lease: revoke after the grace
                self._at(f"revoke:{name}:{lease.name}:{uuid.uuid4().hex[:8]}", self.clock() + grace, self._revoke,
                         lease.lease_id, name, lease.name, lease.data)
        self.metrics.forget_service(st.settings)

    # -- KV ----------------------------------------------------------------------------------------

    def _kv_job(self, service: str, initial: bool = False) -> None:
        st = self.services.get(service)
        if st is None or self.kv is None:
            return
        try:
            secret = self.kv.read(st.settings.kv_path)
        except VaultError as exc:
            st.kv_attempt += 1
            # Back off beyond the poll interval while the server fails, up to the cap.
            delay = max(leases.backoff_delay(st.kv_attempt - 1, BACKOFF_BASE, BACKOFF_CAP, rng=self.rng), self.settings.daemon.poll_interval)
            log.warning("kv read failed", service=service, error=str(exc), retry_in=round(delay, 2))
            self._at(f"kv:{service}", self.clock() + delay, self._kv_job, service)
            return
        recovering = st.kv_attempt > 0
        st.kv_attempt = 0
        interval = self.settings.daemon.poll_interval
        if secret.data is None and not _renders_without_kv(st.settings):
            self._source_missing(service, st, secret.version)
            return
        if st.kv_missing:
            log.warning("kv secret is back", service=service, version=secret.version)
            st.kv_missing = 0
        self._at(f"kv:{service}", self.clock() + interval * self.rng.uniform(0.9, 1.0), self._kv_job, service)
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
        if (changed or recovering or first_load) and not initial:
            log.info("kv secret changed", service=service, version=secret.version)
            if changed:
                self.events.emit("kv_version_changed", service, path=st.settings.kv_path, version=secret.version)
            self._render_all(service, reason="kv changed" if changed else "server back")
        elif not initial:
            self._verify_all(service)

    # -- dynamic secrets and their leases -----------------------------------------------------

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
            attempt = st.issue_attempts.get(name, 0)
            st.issue_attempts[name] = attempt + 1
            delay = self._retry_delay(attempt, old.expires_at if old else None)
            if delay is None:  # the old lease is gone already: keep trying, backed off
                delay = leases.backoff_delay(attempt, BACKOFF_BASE, BACKOFF_CAP, rng=self.rng)
            log.warning("dynamic secret read failed", service=service, secret=name, error=str(err), retry_in=round(delay, 2))
            self._at(f"lease:{service}:{name}", self.clock() + delay, self._reissue, service, name)
            return False
        if gen != self._login_gen or self.services.get(service) is not st:
            # Issued under a token replaced meanwhile, or for a service a reload replaced: the
            # job queued by that login/reload does the real re-issue. Drop this one.
            if resp.get("lease_id"):
                self._revoke(resp["lease_id"], service, name)
            return False
        now = self.clock()
        st.issue_attempts.pop(name, None)
        data = dict(resp.get("data") or {})
        for value in data.values():
            register_secret(value)
        lease_id = resp.get("lease_id") or ""
        ttl = float(resp.get("lease_duration") or 0)
        decision = leases.plan_new_lease(ttl, renewable=bool(resp.get("renewable")), now=now, rng=self.rng)
        lease = Lease(service, name, path, lease_id, data, ttl, bool(resp.get("renewable")), now + ttl, decision, granted=ttl)
        with st.lock:
            old = st.leases.get(name)
            st.leases[name] = lease
        self._hold(lease_id, True)
        self.metrics.record_lease(service, name, ttl=ttl, expires_at=lease.expires_at, due=decision.at)
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
                self._at(f"revoke:{service}:{name}:{uuid.uuid4().hex[:8]}", revoke_at, self._revoke, old.lease_id, service, name, old.data)
            else:
                self._forget_values(old.data)
                self._hold(old.lease_id, False)
        return True

    def _reissue(self, service: str, name: str) -> None:
        st = self.services.get(service)
        old = st.leases.get(name) if st else None
        tok = self.token
        if (self.settings.auth.method == "approle" and old is not None and old.ttl and tok.decision is not None
                and tok.decision.action is leases.Action.REISSUE
                and tok.expires_at is not None and tok.expires_at - self.clock() < old.ttl):
            # The token is at its max TTL and would die (taking the new lease with it) before this
            # lease's term: log in first; that re-issues every lease under the new token, this one too.
            if self._relogin("a lease is due and the token would not outlive it"):
                return
        self._issue(service, name)

    def _schedule_lease(self, lease: Lease) -> None:
        d = lease.decision
        if d.action is leases.Action.NOTHING or d.at is None:
            return
        fn = self._renew_lease if d.action is leases.Action.RENEW else self._reissue
        self._at(f"lease:{lease.service}:{lease.name}", d.at, fn, lease.service, lease.name)

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
            lease.attempt += 1
            delay = self._retry_delay(lease.attempt, lease.expires_at)
            if delay is None:
                log.warning("lease expired during failures, re-issuing", service=service, secret=name)
                self._issue(service, name)
                return
            log.warning("lease renewal failed", service=service, secret=name, error=str(err), retry_in=round(delay, 2))
            self._at(f"lease:{service}:{name}", self.clock() + delay, self._renew_lease, service, name)
            return
        if self.services.get(service) is not st or st.leases.get(name) is not lease:
            return  # replaced while the request was in flight: the new lease has its own job
        now = self.clock()
        self.metrics.renewals.labels("lease", "success").inc()
        returned = float(resp.get("lease_duration") or 0)
        decision = leases.plan_after_renewal(lease.ttl, returned, lease.granted, lease.decision.grace,
                                             now=now, rng=self.rng, renewable=bool(resp.get("renewable", True)))
        # Leave the old credentials valid for the revoke grace period (+1 s) after the new ones exist.
        decision = leases.reissue_early(decision, now=now, lead=self.settings.daemon.lease_revoke_grace + 1.0)
        lease.decision, lease.expires_at, lease.granted = decision, now + returned, returned
        lease.last_renewal, lease.attempt = now, 0
        self.metrics.record_lease(service, name, ttl=returned, expires_at=lease.expires_at, due=decision.at)
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

    # -- rendering -------------------------------------------------------------------------------

    def _render_all(self, service: str, *, reason: str) -> None:
        st = self.services.get(service)
        if st is None:
            return
        missing = [n for n in st.settings.dynamic if n not in st.leases]
        if not st.kv_loaded or missing:
            # Never replace a good file with a partial one: wait until every source was read.
            log.warning("render postponed: secrets not read yet", service=service, kv_read=st.kv_loaded, missing=missing)
            return
        for dest in st.settings.destinations:
            ds = st.destinations[dest.path]
            if ds.window is not None and ds.last_success is not None:
                due = ds.window.on_change(self.clock())
                # (two instances: a change arriving while the previous render's hook runs is not skipped)
                self._at(f"render:{service}:{dest.path}", due, self._render_one, service, dest.path, reason)
            else:
                self._render_one(service, dest.path, reason)

    def _verify_all(self, service: str) -> None:
        """Each poll, check every destination still holds what it should (an unchanged
        render writes nothing, and refreshes the last-success time the stale-render alert
        watches); a file someone changed or removed is put back."""
        st = self.services.get(service)
        if st is None or not st.kv_loaded or any(n not in st.leases for n in st.settings.dynamic):
            return
        now = self.clock()
        for dest in st.settings.destinations:
            ds = st.destinations[dest.path]
            if ds.window is None or not ds.window.pending or ds.window.due(now + 0.5):
                # (a pending render that is overdue was lost: do it now)
                self._render_one(service, dest.path, "poll")

    def _render_one(self, service: str, path: str, reason: str) -> None:
        st = self.services.get(service)
        if st is None:
            return
        dest = next(d for d in st.settings.destinations if d.path == path)
        ds = st.destinations[path]
        with st.lock:  # one render of a service at a time; others wait, none is lost
            outcome = write_destination(dest, service_values(st), service=service)
            if ds.window is not None and outcome.result != "failure":
                ds.window.rendered()
        now = self.clock()
        self.metrics.renders.labels(service, dest.name, outcome.result).inc()
        ds.last_result, ds.error = outcome.result, outcome.error
        if outcome.result == "failure":
            log.error("render failed", service=service, destination=dest.name, error=outcome.error, reason=reason)
            self.events.emit("render_failed", service, destination=dest.name)
            return
        ds.last_success = now
        self.metrics.last_render_success.labels(service, dest.name).set(now)
        if outcome.result == "success":
            log.info("rendered", service=service, destination=dest.name, reason=reason)
            if dest.command or dest.pidfile:
                # On the hooks' own pool: a slow hook never holds a renewal, a login or a poll.
                self.hooks.submit((service, dest.path), lambda: self._run_hook(service, dest))

    def _run_hook(self, service: str, dest: Destination) -> None:
        try:
            if dest.command:
                result = render.run_command(dest.command, timeout=dest.command_timeout, cancel=self.hooks.cancel)
                ok = result.ok
                (log.info if ok else log.warning)("hook ran", service=service, destination=dest.name, returncode=result.returncode,
                                                  timed_out=result.timed_out, seconds=round(result.duration, 3))
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
        self.metrics.hooks.labels(service, dest.name, "success" if ok else "failure").inc()

    # -- rotation ----------------------------------------------------------------------------------

    def _rotate_job(self, service: str, key: str, attempt: int = 0) -> None:
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
            delay = leases.backoff_delay(attempt + 1, BACKOFF_BASE, min(BACKOFF_CAP, spec.every), rng=self.rng)
            log.warning("rotation failed", service=service, key=key, error=str(exc), retry_in=round(delay, 2))
            self._at(f"rotate:{service}:{key}", now + delay, self._rotate_job, service, key, attempt + 1)
            return
        if result.status == "rotated":
            self.metrics.rotations.labels(service, "success").inc()
            log.info("rotated", service=service, key=key, version=result.version)
            self.events.emit("rotated", service, key, version=result.version)
            self._kv_job(service)  # read the new version, render, run hooks
        else:
            self.metrics.rotations.labels(service, "skipped").inc()
        # A little jitter so that several daemons do not wake in lockstep.
        self._at(f"rotate:{service}:{key}", result.next_due + self.rng.uniform(0, 1.0), self._rotate_job, service, key)

    # -- reload ----------------------------------------------------------------------------------

    def reload(self) -> None:
        """SIGHUP: read the config again and apply the difference without a restart."""
        try:
            new = config.load(self.config_path, overrides=self.overrides)
        except VaultsyncError as exc:
            log.error("reload failed, keeping the running config", error=str(exc))
            return
        problems = [p for svc in new.services.values() for d in svc.destinations if (p := destination_problem(d.path))]
        if problems:
            log.error("reload refused, keeping the running config", error=problems[0], problems=len(problems))
            return
        old = self.settings
        if (new.vault, new.auth, new.kv) != (old.vault, old.auth, old.kv):
            log.warning("reload: vault/auth/kv settings changed; restart the daemon to apply them")
            new = replace(new, vault=old.vault, auth=old.auth, kv=old.kv)
        self.settings = new
        removed = set(old.services) - set(new.services)
        added = set(new.services) - set(old.services)
        changed = {n for n in set(old.services) & set(new.services) if old.services[n] != new.services[n]}
        for name in removed | changed:
            self._remove_service(name, revoke=name in removed)
        self.metrics.prime(new.auth.method, [new.services[n] for n in added | changed])
        for name in sorted(added | changed):
            self._add_service_safely(new.services[name])
        if new.daemon.poll_interval != old.daemon.poll_interval:
            for name in self.services:
                self._at(f"kv:{name}", self.clock(), self._kv_job, name)
        log.info("config reloaded", added=sorted(added), removed=sorted(removed), changed=sorted(changed))

    # -- health and status ---------------------------------------------------------------------

    def ready(self) -> bool:
        if self.token.state is None or self.token_problem is not None or not self._started.is_set():
            return False
        if self.metrics.registry.get_sample_value("vaultsync_vault_up") == 0:
            return False  # the last request did not reach the server (down, sealed, no leader)
        services = list(self.services.values())
        return not any(st.kv_missing for st in services) and all(
            ds.last_success is not None for st in services for ds in st.destinations.values())

    def status(self) -> dict[str, Any]:
        now = self.clock()
        tok = self.token
        out: dict[str, Any] = {
            "version": __version__,
            "ready": self.ready(),
            "token": {
                "method": self.settings.auth.method,
                "authenticated": tok.state is not None and self.token_problem is None,
                "error": self.token_problem,
                "expires_at": tok.expires_at,
                "time_left": None if tok.expires_at is None else round(tok.expires_at - now, 1),
                "last_renewal": tok.last_renewal,
            },
            "services": {},
        }
        for name, st in sorted(list(self.services.items())):
            out["services"][name] = {
                "kv": {"path": st.settings.kv_path, "version": st.kv_version, "found": st.kv_data is not None,
                       "missing": st.kv_missing > 0},
                "leases": {
                    ln: {"expires_at": ls.expires_at, "time_left": round(ls.expires_at - now, 1), "renewable": ls.renewable,
                         "last_renewal": ls.last_renewal, "next": ls.decision.action.value}
                    for ln, ls in sorted(st.leases.items())
                },
                "destinations": {
                    d.path: {"result": st.destinations[d.path].last_result, "last_success": st.destinations[d.path].last_success,
                             "error": st.destinations[d.path].error}
                    for d in st.settings.destinations
                },
            }
        return out


def _renders_without_kv(svc: ServiceSettings) -> bool:
    """A service renders without its KV keys when its secret is absent only if asked to
    (``on_delete = "empty"``, or a KV source marked optional)."""
    return getattr(svc, "on_delete", "keep") == "empty" or bool(getattr(svc, "optional", False))


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


def _file_id(path: str | None) -> tuple[int, int] | None:
    try:
        st = os.stat(path) if path else None
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns) if st else None


# --- one destination, no scheduler (also `vaultsync render`) -----------------------------------


@dataclass(frozen=True)
class RenderOutcome:
    result: str  # success (written) | unchanged | failure
    error: str | None = None


def write_destination(dest: Destination, values: dict[str, str], *, service: str) -> RenderOutcome:
    """Format and atomically write one destination. A failure leaves the previous file alone."""
    try:
        template = None
        if dest.style == "template":
            assert dest.template is not None
            with open(dest.template, encoding="utf-8") as f:
                template = f.read()
        left_out: list[str] = []
        text = formats.render(dest.style, values, template=template, destination=dest.path, template_name=dest.template,
                              warn=left_out.append)
        written = render.atomic_write(dest.path, text.encode("utf-8"), mode=dest.mode, backup=dest.backup,
                                      owner=resolve_owner(dest.owner, dest.group))
        for msg in left_out if written else ():  # once per change, not on every poll
            log.warning("key left out", service=service, detail=msg)
    except (VaultsyncError, OSError, ValueError) as exc:
        return RenderOutcome("failure", str(exc) if not isinstance(exc, OSError) else f"{dest.path}: {exc.strerror}")
    return RenderOutcome("success" if written else "unchanged")


def render_once(settings: Settings, errors: dict[str, str] | None = None) -> dict[str, dict[str, str]]:
    """`vaultsync render`: log in, read each service's secrets once, render every destination,
    run hooks for files that changed. Returns {service: {destination: result}}; ``errors``, if
    given, gets {service: message} for services that failed before rendering (e.g. SourceMissing).
    Dynamic secrets are issued fresh each run (their leases are left to expire)."""
    d = Daemon(settings, serve_http=False)
    if not d._login():
        raise VaultError(f"login failed: {d.login_error}")
    d.kv = KV(d.client, settings.kv.mount, settings.kv.version or detect_kv_version(d.client, settings.kv.mount))
    d._stop.set()  # no scheduler: nothing gets scheduled
    results: dict[str, dict[str, str]] = {}
    for svc in settings.services.values():
        st = ServiceState(settings=svc, destinations={dd.path: DestinationState() for dd in svc.destinations})
        d.services[svc.name] = st
        assert d.kv is not None
        try:
            secret = d.kv.read(svc.kv_path)
            if secret.data is None and not _renders_without_kv(svc):
                # Deleted, destroyed or never written: never blank a file over it (on_delete = "empty" does).
                missing = SourceMissing(svc.name, f"{d.kv.mount}/{svc.kv_path}")
                log.warning("kv secret missing: file left alone", service=svc.name, path=missing.path)
                if errors is not None:
                    errors[svc.name] = str(missing)
                results[svc.name] = {dest.path: "source_missing" for dest in svc.destinations}
                continue
            st.kv_data, st.kv_version, st.kv_loaded = secret.data, secret.version, True
            for name in svc.dynamic:
                if not d._issue(svc.name, name, initial=True):
                    raise VaultError(f"could not read dynamic secret {name!r} (see the log)")
        except VaultsyncError as exc:  # this service fails; the others are still rendered
            log.error("render failed", service=svc.name, error=str(exc))
            if errors is not None:
                errors[svc.name] = str(exc)
            results[svc.name] = {dest.path: "failure" for dest in svc.destinations}
            continue
        for dest in svc.destinations:
            with tracing.span("vaultsync.render.destination", service=svc.name, destination=dest.name) as sp:
                d._render_one(svc.name, dest.path, "render command")
                tracing.set_attributes(sp, result=st.destinations[dest.path].last_result)
        results[svc.name] = {dest.path: st.destinations[dest.path].last_result for dest in svc.destinations}
    d.hooks.drain()  # a one-shot run ends after the hooks of the files it changed
    d.hooks.shutdown()
    return results
