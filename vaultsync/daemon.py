"""``vaultsync daemon``: keep the token and every lease alive, deliver each service's secrets to
its outputs (env files, a supervised child), rotate owned keys.

This module is the Daemon's lifecycle only (start, signals, reload, shutdown, health, status)
and ``render_once``; its jobs live in parts: :mod:`~vaultsync.daemon_token` (login, renewal,
re-login), :mod:`~vaultsync.daemon_leases` (dynamic secrets), :mod:`~vaultsync.daemon_services`
(KV polls, outputs, rotation), :mod:`~vaultsync.daemon_recovery` (outages, rejected tokens),
:mod:`~vaultsync.jobs` (the scheduler, typed job keys). *When* comes from each
:class:`~vaultsync.lifetime.Lifetime` and :class:`~vaultsync.lifetime.Backoff` (pure); every
failure backs off (capped, jittered) and never past the expiry of what it protects.

Lock order: ``self._lock`` (daemon-wide state) may be taken while holding a service's
``lock``; never the other way around.
"""

from __future__ import annotations

import os
import random
import resource
import signal
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from vaultsync import __version__, auth, auth_methods, config, config_checks, events, recovery
from vaultsync.config import ServiceSettings, Settings
from vaultsync.daemon_leases import LeaseMixin
from vaultsync.daemon_recovery import RecoveryMixin
from vaultsync.daemon_services import ServiceMixin, destination_problem
from vaultsync.daemon_state import Lease, ServiceState, TokenInfo, service_values  # noqa: F401 - re-exported
from vaultsync.daemon_token import TokenMixin
from vaultsync.errors import ConfigError, VaultError, VaultsyncError
from vaultsync.hookrunner import HookRunner
from vaultsync.jobs import HTTP_POOL, JobKey, JobsMixin, Kind, _Scheduler  # noqa: F401 - _Scheduler: re-exported
from vaultsync.lifetime import BACKOFF_BASE, BACKOFF_CAP, Backoff, Lifetime
from vaultsync.logging import get_logger
from vaultsync.metrics import HealthServer, Metrics, read_status_token
from vaultsync.outputs import ExecOutput
from vaultsync.outputs import RenderOutcome, write_destination  # noqa: F401 - re-exported for callers and tests
from vaultsync.vault import KV, describe, make_client, resolve_kv_version

log = get_logger("vaultsync.daemon")

HOOK_WORKERS = 8
#: On SIGTERM a running hook gets this long before it is killed with its process group
#: (a 25 s `docker compose restart` held the daemon's exit for 25 s; docker stop waits 10).
HOOK_STOP_GRACE = 5.0
DEAD_TOKEN_LOG_EVERY = 60.0  # a dead plain token is logged as an error once a minute at most
TOKEN_CHECK_EVERY = 5.0  # 403s trigger a token lookup at most this often
#: `vaultsync exec` passes these on to the child (Vault Agent's exec and envconsul do the same).
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


# --- the daemon --------------------------------------------------------------------------


class Daemon(TokenMixin, LeaseMixin, ServiceMixin, RecoveryMixin, JobsMixin):
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
        config_checks.check_for_writing(settings)  # unknown owner/group, missing hook program: exit 2
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
        self._probes = Backoff(base=0.5, cap=recovery.PROBE_CAP)
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
        self.auth_method = auth_methods.for_settings(settings)
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
        self._init_jobs()
        #: `vaultsync exec`: the child's end is ours (its exit status becomes ours, signals go to it).
        self.exit_with_child = False
        self.exit_code = 0
        self.http: HealthServer | None = None
        if serve_http and settings.daemon.metrics_addr:
            self.http = HealthServer(settings.daemon.metrics_addr, self.metrics, self.ready, self.status,
                                     status_token=read_status_token(settings.daemon.status_token_file))

    def _lifetime(self, **kw: Any) -> Lifetime:
        # Leave the old credentials valid for the revoke grace period (+1 s) after the new ones exist.
        return Lifetime(lead=self.settings.daemon.lease_revoke_grace + 1.0, **kw)

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
        connects = Backoff()
        while not self._stop.is_set():
            if self._connect():
                break
            if self.security_refusal is not None:  # a consumed or foreign wrapping token: a retry cannot help
                raise auth.SecurityError(f"login refused: {self.security_refusal} (not retried: deliver new credentials "
                                         "and start the daemon again)")
            delay = connects.failed(self.rng)
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
            self.kv = KV(self.client, s.kv.mount, resolve_kv_version(self.client, s.kv.mount, s.kv.version))
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
            self._at(JobKey(Kind.KV, svc.name), self.clock() + self._crashes.crashed(str(JobKey(Kind.ADD, svc.name)), self.rng),
                     self._kv_job, svc.name)

    def run_forever(self) -> int:
        """Main thread: signals in, stop on SIGTERM/SIGINT, reload on SIGHUP (with
        ``exit_with_child``: forwarded to the child instead). Returns the exit status."""
        if self.exit_with_child:
            for sig in FORWARDED_SIGNALS:
                signal.signal(sig, self._forward)
        else:
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
        return self.exit_code

    def _forward(self, signum: int, _frame: Any) -> None:
        """`vaultsync exec`: the child decides what a signal means; its exit status becomes ours.
        Before it runs (still waiting for secrets) SIGTERM/SIGINT end us, as they would have it."""
        children = [o for st in list(self.services.values()) for o in st.outputs.values() if isinstance(o, ExecOutput)]
        if not any([o.forward(signum) for o in children]) and signum in (signal.SIGTERM, signal.SIGINT):
            self.exit_code = 128 + signum
            self._stop.set()

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
        for st in list(self.services.values()):  # children stop before the leases they use are revoked
            for output in st.outputs.values():
                output.close(getattr(st.settings.exec, "kill_timeout", 0.0))
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

    # -- reload ----------------------------------------------------------------------------------

    def reload(self) -> None:
        """SIGHUP: read the config again and apply the difference without a restart."""
        try:
            new = config.load(self.config_path, overrides=self.overrides)
            config_checks.check_for_writing(new)
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
        if stale := config_checks.start_only_changes(old.daemon, new.daemon):
            log.warning("reload: daemon settings changed that apply only at start; restart needed to apply them",
                        settings=[f"daemon.{k}" for k in stale])
            new = replace(new, daemon=replace(new.daemon, **{k: getattr(old.daemon, k) for k in stale}))
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
                self._at(JobKey(Kind.KV, name), self.clock(), self._kv_job, name)
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
                # Never logged in (or not since a rejection): say why, not just "not authenticated".
                "error": self.token_problem or (self.login_error if tok.state is None else None),
                "expires_at": tok.life.expires_at,
                "time_left": None if tok.life.expires_at is None else round(tok.life.expires_at - now, 1),
                "last_renewal": tok.life.last_renewal,
            },
            "services": {},
        }
        for name, st in sorted(list(self.services.items())):
            out["services"][name] = {
                "kv": {"path": st.settings.kv_path, "version": st.kv_version, "found": st.kv_data is not None,
                       "missing": st.kv_missing > 0},
                "leases": {
                    ln: {"expires_at": ls.life.expires_at,
                         "time_left": None if ls.life.expires_at is None else round(ls.life.expires_at - now, 1),
                         "renewable": ls.renewable, "last_renewal": ls.life.last_renewal, "next": ls.life.action.value}
                    for ln, ls in sorted(st.leases.items())
                },
                "destinations": {
                    key: {"result": ds.last_result, "last_success": ds.last_success, "error": ds.error}
                    for key, ds in st.destinations.items()
                },
            }
        return out
