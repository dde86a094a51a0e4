"""The daemon's scheduler survives the moment ``shutdown()`` races a one-off job falling due.

APScheduler's ``shutdown()`` marks the scheduler stopped before it takes the job-store lock; a
one-off job processed in that window is then looked for among the *pending* jobs, and the
loop's thread died with ``JobLookupError`` (seen as a traceback at the end of a CI run). The
window is made certain here by marking the scheduler stopped exactly as ``shutdown()`` does.
"""

from __future__ import annotations

import threading
from datetime import datetime, timezone

import pytest
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import STATE_STOPPED

from vaultsync.daemon import _Scheduler


def _due_job_while_stopping(scheduler: BackgroundScheduler) -> threading.Event:
    ran = threading.Event()
    scheduler.start(paused=True)
    scheduler.add_job(ran.set, "date", run_date=datetime.now(timezone.utc), id="probe")
    scheduler.state = STATE_STOPPED  # the first thing shutdown() does, without the lock
    return ran


def test_apscheduler_alone_dies_in_that_window():
    scheduler = BackgroundScheduler(timezone=timezone.utc)
    _due_job_while_stopping(scheduler)
    try:
        with pytest.raises(JobLookupError):
            scheduler._process_jobs()
    finally:
        scheduler._executors["default"].shutdown(wait=True)


def test_the_daemon_scheduler_finishes_quietly_and_the_job_still_ran():
    scheduler = _Scheduler(timezone=timezone.utc)
    ran = _due_job_while_stopping(scheduler)
    try:
        assert scheduler._process_jobs() is None
        assert ran.wait(5), "the due job was not run"
    finally:
        scheduler._executors["default"].shutdown(wait=True)
