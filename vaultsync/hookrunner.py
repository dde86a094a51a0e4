"""Change hooks on their own bounded pool, away from renewals, logins and polls.

A hook may take its whole timeout (a ``docker compose restart`` of 25 s); on the
scheduler's threads ten of them starved the token and lease renewals. Here at most
``workers`` hooks run at once, each destination has at most one run in flight, and
changes that arrive while it runs coalesce into exactly one more run afterwards
(the file is already rendered; the hook only needs to see the latest one).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from vaultsync.logging import get_logger

log = get_logger("vaultsync.hooks")


class HookRunner:
    def __init__(self, workers: int = 4) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vaultsync-hook")
        self._lock = threading.Lock()
        self._running: set[Hashable] = set()
        self._again: dict[Hashable, Callable[[], None]] = {}  # key -> the latest run asked for meanwhile
        self._futures: set[Future[None]] = set()
        self._closed = False
        #: Set when the daemon stops and its grace is over: running hooks are killed (with their
        #: process group) instead of holding SIGTERM for their whole timeout.
        self.cancel = threading.Event()

    def submit(self, key: Hashable, run: Callable[[], None]) -> None:
        """Run ``run`` for destination ``key`` soon; if one is in flight, once more after it."""
        with self._lock:
            if self._closed:
                return
            if key in self._running:
                self._again[key] = run  # the latest: a reload may have changed the command
                return
            self._running.add(key)
            future = self._pool.submit(self._loop, key, run)
            self._futures.add(future)
        future.add_done_callback(self._done)

    def _done(self, future: Future[None]) -> None:
        with self._lock:
            self._futures.discard(future)

    def _loop(self, key: Hashable, run: Callable[[], None]) -> None:
        while True:
            try:
                run()
            except Exception:  # noqa: BLE001 - one hook's bug must not stop the others
                log.exception("hook crashed", destination=str(key))
            with self._lock:
                if key in self._again and not self._closed:
                    run = self._again.pop(key)
                    continue
                self._running.discard(key)
                return

    def drain(self, timeout: float | None = None) -> None:
        """Wait for every queued and running hook (``vaultsync render`` exits after its hooks)."""
        with self._lock:
            pending = list(self._futures)
        for future in pending:
            future.result(timeout=timeout)

    def close(self) -> None:
        """Start no more hooks (shutdown has begun); those running go on."""
        with self._lock:
            self._closed = True
            self._again.clear()

    def shutdown(self, grace: float | None = None) -> None:
        """Drop hooks not started yet; wait ``grace`` seconds (None: for ever) for running ones,
        then cancel them (see ``render.run_command(cancel=...)``) and wait for that."""
        self.close()
        with self._lock:
            pending = list(self._futures)
        deadline = None if grace is None else time.monotonic() + grace
        for future in pending:
            try:
                future.result(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                log.warning("hooks still running at shutdown: killing them", running=len(self._running))
                self.cancel.set()
                break
            except Exception:  # noqa: BLE001 - _loop logs a hook's own errors
                pass
        self._pool.shutdown(wait=True, cancel_futures=True)
