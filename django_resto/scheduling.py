"""AsyncStorage's background: a bounded thread pool that knows what it still has to do.

A burst of uploads queues instead of starting a thread each, ``wait()`` can tell
when everything scheduled has finished (tests, shutdown), and the pool's threads,
which no request cycle tidies up after, look after their own database connection.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable
from typing import Any

from django.db import connections

from . import ordering

__all__ = ["Background"]


class Background:
    """A thread pool of ``workers`` threads, created on first use, that tracks its work."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending: set[concurrent.futures.Future[Any]] = set()
        self._lock = threading.Lock()

    # Threads and locks do not cross process boundaries; a copy starts with none.
    def __getstate__(self) -> dict[str, Any]:
        return {"workers": self.workers}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["workers"])  # type: ignore[misc]

    @property
    def executor(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._executor is None:
            with self._lock:
                if self._executor is None:
                    self._executor = concurrent.futures.ThreadPoolExecutor(
                        max_workers=self.workers, thread_name_prefix="django_resto_async"
                    )
        return self._executor

    def submit(
        self, func: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[Any]:
        future = self.executor.submit(self._run, func, *args, **kwargs)
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._forget)
        return future

    def _run(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``func`` in a pool thread, minding the journal database's connection.

        A connection that died (a restart, a failover) is dropped before the work, so
        the thread reconnects instead of failing every task after it; and the thread
        closes its connection when no work is left, so idle pool threads hold no
        database sessions.
        """
        alias = ordering.journal_database()
        db = connections[alias] if alias is not None else None
        if db is not None and db.connection is not None and db.errors_occurred:
            db.close_if_unusable_or_obsolete()
        try:
            return func(*args, **kwargs)
        finally:
            if db is not None:
                with self._lock:
                    idle = len(self._pending) <= 1  # only this task's own future
                if idle:
                    db.close()

    def _forget(self, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._pending.discard(future)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until everything submitted has finished; False if ``timeout`` passed first."""
        deadline = None if timeout is None else (timeout + time.monotonic())
        while True:
            with self._lock:
                pending = list(self._pending)
            if not pending:
                return True
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            _, not_done = concurrent.futures.wait(pending, timeout=remaining)
            if not_done and deadline is not None and time.monotonic() >= deadline:
                return False
