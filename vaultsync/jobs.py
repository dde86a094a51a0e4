"""The daemon's scheduler: typed job keys, and one-off jobs that survive their own crashes.

Each token, lease, KV secret, output and rotated key has one APScheduler job, rescheduled by
its own run for the time the maths gives. A job is named by a :class:`JobKey` (kind, service,
name); its string form is APScheduler's job id. Jobs that keep credentials alive run on their
own threads, so polls, renders and rotations can never delay them.
"""

from __future__ import annotations

import enum
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, JobSubmissionEvent
from apscheduler.executors.pool import ThreadPoolExecutor as APThreadPool
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import STATE_STOPPED

from vaultsync import recovery
from vaultsync.logging import get_logger

log = get_logger("vaultsync.daemon")


class Kind(str, enum.Enum):
    TOKEN = "token"
    LEASE = "lease"
    REVOKE = "revoke"
    KV = "kv"
    RENDER = "render"
    ROTATE = "rotate"
    RECOVER = "recover"
    PROBE = "probe"
    TOKEN_CHECK = "token-check"
    ADD = "add"


#: Jobs that keep credentials alive run on their own threads: polls, renders and rotations
#: (which may wait on a slow server or a big file) can never delay them.
LIFETIME_JOBS = frozenset(k.value for k in (Kind.TOKEN, Kind.LEASE, Kind.RECOVER, Kind.PROBE, Kind.TOKEN_CHECK))
LIFETIME_THREADS = 16
# A kept connection for every thread that may send at once (start-up's 8, the default jobs' 8, the
# lifetime jobs'): past the pool size each request opens and drops a connection of its own.
HTTP_POOL = 8 + 8 + LIFETIME_THREADS


@dataclass(frozen=True)
class JobKey:
    kind: Kind
    service: str | None = None
    name: str | None = None  # a secret, an output key (a path: may hold ':'), a rotated key
    unique: str | None = None  # several revocations of one secret may wait at once

    def __str__(self) -> str:
        return ":".join(p for p in (self.kind.value, self.service, self.unique, self.name) if p is not None)

    @classmethod
    def parse(cls, job_id: str) -> JobKey:
        kind, _, rest = job_id.partition(":")
        try:
            k = Kind(kind)
        except ValueError:  # a job id from elsewhere (tests): keep its kind text in the name
            return cls(Kind.ADD, None, job_id)
        if not rest:
            return cls(k)
        service, _, name = rest.partition(":")
        if k is Kind.REVOKE and name:
            unique, _, name = name.partition(":")
            return cls(k, service, name or None, unique)
        return cls(k, service, name or None)


def kind_of(job: JobKey | str) -> str:
    return job.kind.value if isinstance(job, JobKey) else job.split(":", 1)[0]


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


def new_scheduler() -> _Scheduler:
    return _Scheduler(
        # Renewals block on the server (a database lease's renewal runs ALTER ROLE, seconds when it is
        # busy): at thousands of leases 4 threads let a few slow answers hold up every other renewal.
        executors={"default": APThreadPool(8), "lifetimes": APThreadPool(LIFETIME_THREADS)},
        job_defaults={"coalesce": True, "max_instances": 2, "misfire_grace_time": None},
        timezone=timezone.utc,
    )


class JobsMixin:
    """One-off jobs for the Daemon: ``_at`` (schedule), crash and skip recovery."""

    scheduler: _Scheduler
    clock: Callable[[], float]
    rng: random.Random
    metrics: Any
    _stop: threading.Event
    _crashes: recovery.CrashBackoff
    _queued: dict[str, tuple[Callable[..., Any], tuple[Any, ...]]]

    def _init_jobs(self) -> None:
        self.scheduler = new_scheduler()
        self._queued = {}  # job id -> what it runs
        self.scheduler.add_listener(self._run_skipped, EVENT_JOB_MAX_INSTANCES)

    def _at(self, job: JobKey | str, when: float, fn: Callable[..., Any], *args: Any, instances: int = 2) -> None:
        """Run ``fn`` once at ``when`` as ``job`` (replacing a pending one). Two instances may
        run: a job often reschedules itself, possibly for "now", while it is still finishing,
        and APScheduler drops (not delays) a one-off run over the limit."""
        if self._stop.is_set():
            return
        job_id, kind = str(job), kind_of(job)
        due = max(when, self.clock())
        self._queued[job_id] = (fn, args)
        run_date = datetime.fromtimestamp(due, tz=timezone.utc)
        self.scheduler.add_job(self._guard(job_id, kind, fn, due), "date", run_date=run_date, id=job_id,
                               replace_existing=True, args=args, max_instances=instances,
                               executor="lifetimes" if kind in LIFETIME_JOBS else "default")

    def _guard(self, job_id: str, kind: str, fn: Callable[..., Any], due: float) -> Callable[..., Any]:
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
        self.metrics.job_crashes.labels(kind_of(event.job_id)).inc()
        log.warning("job run skipped while it was still running; running it again later", job=event.job_id)
        self._at(event.job_id, self.clock() + 1.0 + self.rng.uniform(0, 1.0), queued[0], *queued[1])

    def _cancel_service_jobs(self, service: str) -> None:
        """Drop a removed service's pending jobs (its revocations still run)."""
        for job in self.scheduler.get_jobs():
            key = JobKey.parse(job.id)
            if key.service == service and key.kind is not Kind.REVOKE:
                job.remove()
                self._queued.pop(job.id, None)
