"""Run one call on every host in parallel and report what happened on each.

The fan-out never raises for a host's failure: it returns one :class:`Outcome` per
host, in the order the hosts were given, and lets the caller decide what a failure
means (raise, log, journal, count towards a quorum). It knows nothing about HTTP.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Outcome:
    """What one call did on one host."""

    host: str
    result: Any = None
    error: BaseException | None = None
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


def call(func: Callable[..., Any], host: str, *args: Any, **kwargs: Any) -> Outcome:
    """Call ``func(host, *args, **kwargs)`` and capture its result or its exception."""
    start = time.perf_counter()
    try:
        result = func(host, *args, **kwargs)
    except Exception as exc:
        return Outcome(host, error=exc, elapsed=time.perf_counter() - start)
    return Outcome(host, result=result, elapsed=time.perf_counter() - start)


class FanOut:
    """A bounded thread pool that runs a call on many hosts at once.

    The calling thread runs the first host itself while the pool runs the others:
    a single-host setup costs no thread hand-off at all, and N hosts need only N-1
    workers per operation in flight.
    """

    def __init__(self, max_workers: int) -> None:
        self.max_workers = max_workers
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"max_workers": self.max_workers}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["max_workers"])  # type: ignore[misc]

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            with self._lock:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(
                        max_workers=self.max_workers, thread_name_prefix="django_resto"
                    )
        return self._executor

    def run(
        self, func: Callable[..., Any], hosts: Sequence[str], *args: Any, **kwargs: Any
    ) -> list[Outcome]:
        """Run ``func(host, *args, **kwargs)`` for every host; return outcomes in host order."""
        if not hosts:
            return []
        futures: list[Future[Outcome]] = [
            self._pool().submit(call, func, host, *args, **kwargs) for host in hosts[1:]
        ]
        first = call(func, hosts[0], *args, **kwargs)
        return [first, *(future.result() for future in futures)]

    def run_started(
        self,
        start: Callable[..., Callable[[], Any]],
        hosts: Sequence[str],
        *args: Any,
        **kwargs: Any,
    ) -> list[Outcome]:
        """Start the call on every host from this thread, then wait for each in turn.

        ``start(host, *args, **kwargs)`` must set the work going without waiting for it
        and return a callable that waits and returns the result (a request written to
        a socket, and the reading of its answer). Every host then works at once while
        no thread is handed anything, which for small requests costs less than the
        hand-offs of :meth:`run`. A failure to start is that host's outcome; the
        others still run.
        """
        started: list[tuple[str, float, Callable[[], Any] | None, Exception | None]] = []
        for host in hosts:
            begun = time.perf_counter()
            try:
                started.append((host, begun, start(host, *args, **kwargs), None))
            except Exception as exc:
                started.append((host, begun, None, exc))
        outcomes = []
        for host, begun, finish, error in started:
            result = None
            if finish is not None:
                try:
                    result = finish()
                except Exception as exc:
                    error = exc
            outcomes.append(
                Outcome(host, result=result, error=error, elapsed=time.perf_counter() - begun)
            )
        return outcomes

    def shutdown(self, wait: bool = True) -> None:
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown(wait=wait)
                self._executor = None
