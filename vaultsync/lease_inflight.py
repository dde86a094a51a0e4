"""Which dynamic secrets have a request in flight (outside tester's finding 18).

After a hung server answers again, the recovery (``_kick_all``) re-issues every dynamic secret
whose last read failed or whose lease expired. A re-issue or renewal still waiting on the hung
server is answered at that same moment, so both issued credentials: two renders, two hook
runs, one database user revoked a little later. The recovery now leaves a secret alone while
a job of its own is in flight: that job ends by issuing, renewing or scheduling its own retry.
"""

from __future__ import annotations

import functools
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class InFlight:
    """A thread-safe count of running jobs per (service, secret); nested runs count twice."""

    def __init__(self) -> None:
        self._running: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    def enter(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._running[key] += 1

    def leave(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._running[key] -= 1
            if self._running[key] <= 0:
                del self._running[key]

    def busy(self, key: tuple[str, str]) -> bool:
        with self._lock:
            return self._running[key] > 0


def of(daemon: Any) -> InFlight:
    """The daemon's registry, made on first use (``dict.setdefault`` is atomic)."""
    return daemon.__dict__.setdefault("_lease_in_flight", InFlight())


def busy(daemon: Any, service: str, name: str) -> bool:
    return of(daemon).busy((service, name))


def tracked(method: F) -> F:
    """Mark ``method(self, service, name, ...)`` in flight for that secret while it runs."""

    @functools.wraps(method)
    def run(self: Any, service: str, name: str, *args: Any, **kwargs: Any) -> Any:
        registry = of(self)
        registry.enter((service, name))
        try:
            return method(self, service, name, *args, **kwargs)
        finally:
            registry.leave((service, name))

    return run  # type: ignore[return-value]
