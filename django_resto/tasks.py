"""Replication through Django's Tasks framework: one task per (host, name), names only.

AsyncStorage's thread pool lives and dies with the web process: a deploy or a crash
drops whatever it had not sent yet (the journal keeps the intent, so nothing is lost,
but the hosts lag until ``process_failed_media`` runs). With
``replicate_with="tasks"`` each (host, name) becomes a task that a worker process runs
instead.

A task carries the STORAGES alias, the host and the file name, never the bytes: the
worker rebuilds the storage from its own settings, reads the master copy when the task
runs and derives PUT or DELETE from it (``converge``). So a task that runs late, twice,
or after a newer one for the same file still leaves the host right, and the queue
holds a few dozen bytes per upload whatever the file size.

Tasks are enqueued when the transaction that saved (or deleted) the file commits: a
worker must not look at a file whose database row it cannot see yet, and a rolled-back
upload replicates nothing. The intent row in the journal is written before, in the same
transaction, so an enqueue that fails or a worker killed mid-task leaves a row that
``process_failed_media`` completes.

A task whose transfer fails enqueues itself again, deferred (``run_after``) to the
back-off its journal row now carries, the ``next_attempt`` that ``process_failed_media
--watch`` honours too: one schedule, whichever runs first. The row's ``attempts`` bound
it (``task_retries``), so that a host that stays down costs a few tasks per file, not a
task every few minutes for ever; past them, on a backend that cannot defer, or when the
enqueue fails, the row simply stays for ``process_failed_media``, as it always did.

``django.tasks`` (Django >= 6.0) is used when present, else the ``django-tasks``
backport. Without either this module still imports; using the tasks mode then raises
ImproperlyConfigured, and the system check ``django_resto.E006`` reports it earlier.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import transaction

from . import journal, registry
from .exceptions import describe
from .repair import BACKOFF_BASE, MAX_BACKOFF

logger = logging.getLogger("django_resto")

__all__ = [
    "FRAMEWORK",
    "enqueue_on_commit",
    "get_task",
    "replicate",
    "schedule_retry",
    "task_for",
]

_task: Callable[..., Any] | None
_task_errors: tuple[type[BaseException], ...]
try:  # Django >= 6.0 ships the framework.
    from django.tasks import task as _task
    from django.tasks.exceptions import TaskException as _TaskException

    FRAMEWORK: str | None = "django.tasks"
    _task_errors = (ImproperlyConfigured, _TaskException)
except ImportError:
    try:  # The backport, for Django < 6.0.
        from django_tasks import task as _task
        from django_tasks.exceptions import TaskException as _BackportTaskException

        FRAMEWORK = "django_tasks"
        _task_errors = (ImproperlyConfigured, _BackportTaskException)
    except ImportError:
        _task = None
        FRAMEWORK = None
        _task_errors = (ImproperlyConfigured,)

MISSING_FRAMEWORK = (
    "replicate_with='tasks' needs Django's Tasks framework: use Django >= 6.0, or install "
    "the django-tasks backport (pip install 'django-resto[tasks]') on older versions."
)


def replicate(storage_alias: str, host: str, name: str) -> dict[str, Any]:
    """Bring ``host`` in line with the master copy for ``name``: the worker's side.

    The result is logged and journaled by ``run_one`` exactly as with the thread pool,
    and a failed transfer is not raised: the journal owns retries, and the Tasks
    framework has none of its own. The task retries itself (``schedule_retry``) at the
    row's back-off, as the same call with the same names, so that a retry of a file
    deleted or replaced meanwhile derives its action from the master copy again. A
    configuration that cannot run the task at all (unknown alias) does raise, so the
    task shows as failed.
    """
    storage = registry.storage(storage_alias)
    capabilities = registry.capabilities_of(storage)
    if storage is None or capabilities is None or not capabilities.background:
        raise ImproperlyConfigured(
            f"STORAGES[{storage_alias!r}] is not a django_resto AsyncStorage in this "
            f"process: cannot replicate {name!r} to {host}. The journal keeps the row."
        )
    if host not in storage.hosts:
        # The host was removed from the settings since the task was enqueued; the row
        # stays, and process_failed_media reports it as skipped.
        logger.warning(
            "Not replicating %s to %s: no longer a host of STORAGES[%r]",
            name,
            host,
            storage_alias,
        )
        return {"host": host, "name": name, "ok": False, "error": "not a configured host"}
    outcome = storage.run_one(storage.converge, host, name)
    retry_at = None if outcome.ok else schedule_retry(storage, host, name)
    return {
        "host": host,
        "name": name,
        "ok": outcome.ok,
        "operation": outcome.result if outcome.ok else None,
        "error": "" if outcome.ok else describe(outcome.error),
        # JSON, as every backend stores results: when the retry is due, if one was enqueued.
        "retry_at": retry_at.isoformat() if retry_at is not None else None,
    }


#: Backends already said (at INFO) to be unable to defer a retry: once per process, not
#: once per failed task, which would be one line per file while a host is down.
_said_no_defer: set[str] = set()


def schedule_retry(storage: Any, host: str, name: str) -> datetime | None:
    """Enqueue ``replicate`` again for a failed (host, name), deferred to its row's back-off.

    Returns when it is due, or None when no retry was enqueued. Never raises: the row
    the failure wrote is left whatever happens here, so a database or a queue that
    fails now costs a retry from ``process_failed_media``, not the row.
    """
    try:
        task = task_for(storage)
        backend = task.get_backend()
        if not getattr(backend, "supports_defer", False):
            if storage.task_backend not in _said_no_defer:
                _said_no_defer.add(storage.task_backend)
                logger.info(
                    "TASKS[%r] cannot defer a task (%s.supports_defer is False): failed "
                    "replications are not retried as tasks, and wait in the journal for "
                    "process_failed_media (run it with --watch to drain them)",
                    storage.task_backend,
                    type(backend).__name__,
                )
            return None
        when = _back_off(storage, host, name)
        if when is not None:
            task.using(run_after=when).enqueue(storage.journal_key, host, name)
        return when
    except Exception as exc:
        logger.error(
            "Could not enqueue a retry of the replication of %s to %s (process_failed_media "
            "will repair it): %s",
            name,
            host,
            describe(exc),
            exc_info=(type(exc), exc, exc.__traceback__) if storage.show_traceback else None,
        )
        return None


def _back_off(storage: Any, host: str, name: str) -> datetime | None:
    """The failed row's back-off, if this task is the one to retry it (see
    journal.back_off_failure); a row past ``task_retries`` is left to the drain."""
    retries = storage.task_retries
    when, attempts = journal.back_off_failure(
        storage.journal_key, host, name, limit=retries, base=BACKOFF_BASE, cap=MAX_BACKOFF
    )
    if attempts is not None:
        logger.warning(
            "Not retrying %s on %s as a task after %d failed attempts (task_retries=%d): "
            "the journal keeps it for process_failed_media",
            name,
            host,
            attempts,
            retries,
        )
    return when


if _task is not None:
    # Declared on TASKS["default"], as any app's task is; ``task_for`` moves it to the
    # storage's ``task_backend`` and ``task_queue``. The worker finds it again by its
    # import path, django_resto.tasks.replicate.
    replicate = _task(replicate)


def get_task() -> Any:
    """The ``replicate`` Task, or ImproperlyConfigured when no framework is installed."""
    if _task is None:
        raise ImproperlyConfigured(MISSING_FRAMEWORK)
    return replicate


def task_for(storage: Any) -> Any:
    """``replicate`` bound to the storage's ``task_backend`` and ``task_queue``.

    Validated now, while the request that saved the file is still running: a typo in
    the backend alias, or a queue the backend does not serve, is a configuration error
    to raise, not a failure to log later from inside the commit.
    """
    try:
        return get_task().using(backend=storage.task_backend, queue_name=storage.task_queue)
    except _task_errors as exc:
        raise ImproperlyConfigured(
            f"Cannot enqueue replication tasks on task_backend={storage.task_backend!r}, "
            f"task_queue={storage.task_queue!r}: {exc}"
        ) from exc


def enqueue_on_commit(
    storage: Any, func: Callable[..., Any], host: str, name: str, *args: Any, **kwargs: Any
) -> None:
    """Enqueue ``replicate(alias, host, name)`` when the current transaction commits.

    Outside a transaction (autocommit) it is enqueued at once. A failed enqueue (broker
    or database down) is logged, not raised: the upload has succeeded and the journal
    row written before keeps the host in ``process_failed_media``'s list.
    """
    if args or kwargs or func != storage.converge:
        raise TypeError(
            "replicate_with='tasks' only schedules converge(host, name): tasks carry names, "
            "and the worker derives PUT or DELETE from the master copy. Override "
            "execute_one to queue other work."
        )
    alias = storage.journal_key
    if not alias:
        raise ImproperlyConfigured(
            "replicate_with='tasks' needs the storage to be configured in STORAGES: a worker "
            "rebuilds it from its alias, and this one matches no STORAGES entry."
        )
    task = task_for(storage)

    def enqueue() -> None:
        try:
            task.enqueue(alias, host, name)
        except Exception as exc:
            logger.error(
                "Could not enqueue the replication of %s to %s (process_failed_media "
                "will repair it): %s",
                name,
                host,
                describe(exc),
                exc_info=(type(exc), exc, exc.__traceback__) if storage.show_traceback else None,
            )

    transaction.on_commit(enqueue)
