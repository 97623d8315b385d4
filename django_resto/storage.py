"""The three storage backends: Hybrid, Async and Distributed.

Import paths and behaviour follow django-resto 1.x so that existing projects only
change their STORAGES entry; see the README for what changed and why.
"""

from __future__ import annotations

import concurrent.futures
import io
import logging
import os
import shutil
import tempfile
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import IO, Any, cast
from urllib.parse import urljoin

import requests
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.files import File
from django.core.files.storage import FileSystemStorage, Storage
from django.db import connections
from django.utils import deprecation, timezone
from django.utils.deconstruct import deconstructible
from django.utils.encoding import filepath_to_uri

from . import journal, ordering
from .exceptions import JournalError, ReplicationError, describe
from .fanout import FanOut, Outcome, call
from .names import relative_to, validate_name
from .settings import LOCAL_OPTIONS, Host, media_path, parse_host, resolve_options
from .transport import Body, BytesBody, FileBody, HostTransport, UnexpectedStatusCode
from .wire import INLINE_BODY

# A child of "django_resto": configs for either name hear the storages, as configs
# written for django-resto 1.3 (which logged on django_resto.storage) expect.
logger = logging.getLogger(__name__)

#: The word 1.3 used in "Failed to ..." for each verb, for filters that match on it.
FAILURE_WORDS = {"PUT": "upload", "DELETE": "delete", "SYNC": "sync"}

# RemovedInDjango60Warning: Django 6.0 removed FileSystemStorage.OS_OPEN_FLAGS, and
# with it the warning that HybridStorage repeats for its subclasses (see __init__).
_DEFAULT_OS_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
_OS_OPEN_FLAGS_WARNING: type[Warning] | None = (
    getattr(deprecation, "RemovedInDjango60Warning", None)
    if hasattr(FileSystemStorage, "OS_OPEN_FLAGS")
    else None
)

__all__ = ["AsyncStorage", "DistributedStorage", "HybridStorage", "ReplicationError"]


def operation(verb: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Tag a per-host method with the HTTP verb used in logs, errors and the journal."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        func.resto_operation = verb  # type: ignore[attr-defined]
        return func

    return decorate


def operation_of(func: Callable[..., Any]) -> str:
    return getattr(func, "resto_operation", getattr(func, "__name__", "call"))


class ReplicatedStorageMixin:
    """What every django_resto backend shares: hosts, transports and the failure policy.

    Options are read once, in ``__init__``, as django-storages does; an unknown
    option raises ImproperlyConfigured naming it.
    """

    #: Options the backend accepts on top of django_resto's own.
    extra_options: tuple[str, ...] = ()
    #: Hosts that must acknowledge a write unless ``min_replicas`` says otherwise.
    default_min_replicas = 0

    def _configure(self, options: dict[str, Any]) -> dict[str, Any]:
        """Resolve django_resto's options; return the ones meant for the parent class."""
        backend = f"{type(self).__module__}.{type(self).__qualname__}"
        resolved = resolve_options(backend, options, self.extra_options)
        self._options = dict(options)
        hosts: dict[str, Host] = {}
        for name in resolved["hosts"]:
            try:
                hosts[name] = parse_host(name)
            except ValueError as exc:
                raise ImproperlyConfigured(f"Invalid media host in {backend}: {exc}") from None
        self._hosts = hosts
        self.hosts: tuple[str, ...] = resolved["hosts"]
        self.timeout: float = resolved["timeout"]
        self.connect_timeout: float | None = resolved["connect_timeout"]
        self.min_transfer_rate: float = resolved["min_transfer_rate"]
        self.lock_timeout: float = resolved["lock_timeout"]
        self.journal_alias: str | None = resolved["journal_alias"]
        self.fatal_exceptions: bool = resolved["fatal_exceptions"]
        self.show_traceback: bool = resolved["show_traceback"]
        self.verify: bool | str = resolved["verify"]
        self._auth: tuple[str, str] | None = resolved["auth"]
        self._token: str | None = resolved["token"]
        self.token_header: str = resolved["token_header"]
        self.min_replicas: int = (
            resolved["min_replicas"]
            if resolved["min_replicas"] is not None
            else min(self.default_min_replicas, len(self.hosts))
        )
        if self.min_replicas > len(self.hosts):
            raise ImproperlyConfigured(
                f"min_replicas={self.min_replicas} in {backend} is more than the "
                f"{len(self.hosts)} configured host(s)."
            )
        self.max_workers: int = resolved["max_workers"] or max(4, 4 * (len(self.hosts) - 1))
        self.async_workers: int = resolved["async_workers"]
        self.replicate_with: str = resolved["replicate_with"]
        self.task_backend: str = resolved["task_backend"]
        self.task_queue: str = resolved["task_queue"]
        self.listing_prefix: str = resolved["listing_prefix"]
        self._fanout = FanOut(self.max_workers)
        self._transports: dict[str, HostTransport] = {}
        self._transports_lock = threading.Lock()
        return {key: value for key, value in options.items() if key in self.extra_options}

    def __getstate__(self) -> dict[str, Any]:
        # Locks, thread pools and sockets do not cross process boundaries (task
        # queues pickle the storage together with the bound method they call).
        state = self.__dict__.copy()
        for key in ("_transports_lock", "_async_executor", "_pending", "_pending_lock"):
            state.pop(key, None)
        state["_transports"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._transports_lock = threading.Lock()

    @property
    def journal_key(self) -> str:
        """The STORAGES alias this storage was configured under, which names its journal rows.

        The ``journal_alias`` option when given; else found by matching backend and
        OPTIONS, so it also works for the instance a FileField creates from the same
        settings. "" when the storage is not in STORAGES: the journal then refuses its
        failures (:meth:`record_outcomes`), since no command could ever drain them.
        """
        if self.journal_alias is not None:
            return self.journal_alias
        key = self.__dict__.get("_journal_key")
        if key is None:
            key = ""
            candidates = []
            for alias, config in getattr(settings, "STORAGES", {}).items():
                backend = config.get("BACKEND", "")
                if backend.rsplit(".", 1)[-1] != type(self).__name__:
                    continue
                candidates.append(alias)
                if dict(config.get("OPTIONS", {})) == self._options:
                    key = alias
                    break
            else:
                if len(candidates) == 1:
                    key = candidates[0]
            self._journal_key = key
        return key

    def save(self, name: str | None, content: IO[Any], max_length: int | None = None) -> str:
        # Django turns backslashes into slashes before anything else sees the name;
        # we refuse them instead (see names.py), so check the name as it was given.
        # Django's own check runs first thing in Storage.save, right below.
        if name is not None:
            validate_name(str(name), django_check=False)
        return super().save(name, content, max_length=max_length)  # type: ignore[misc]

    # --- transport ---------------------------------------------------------

    @property
    def media_prefix(self) -> str:
        """The URL path of MEDIA_URL, under which media servers keep the files."""
        # FileSystemStorage's (Hybrid, Async) or DistributedStorage's own.
        return media_path(getattr(self, "base_url", None))

    def transport(self, host: str) -> HostTransport:
        """The pooled HTTP transport to ``host`` (rebuilt if MEDIA_URL changed)."""
        prefix = self.media_prefix
        current = self._transports.get(host)
        if current is not None and current.prefix == prefix:
            return current
        with self._transports_lock:
            current = self._transports.get(host)
            if current is None or current.prefix != prefix:
                if host not in self._hosts:
                    raise ValueError(f"{host!r} is not one of this storage's hosts")
                current = HostTransport(
                    self._hosts[host],
                    prefix,
                    timeout=self.timeout,
                    connect_timeout=self.connect_timeout,
                    min_transfer_rate=self.min_transfer_rate,
                    verify=self.verify,
                    auth=self._auth,
                    token=self._token,
                    token_header=self.token_header,
                    pool_size=max(10, self.max_workers),
                )
                self._transports[host] = current
                # A storage dropped without close() (FileField and test code build them
                # freely; FileSystemStorage holds nothing to close) closes its pooled
                # sockets when collected, rather than leaving them to the garbage
                # collector's ResourceWarnings. The finalizer holds the transport only.
                weakref.finalize(self, current.close)
        return current

    def close(self) -> None:
        """Close pooled connections (they reopen on demand)."""
        for transport in list(self._transports.values()):
            transport.close()

    # --- per-host operations (stable: may be passed to execute/execute_one) --

    @operation("PUT")
    def put_file(self, host: str, name: str, body: Body | None = None) -> bool:
        """Upload ``name`` to one host; from the local master copy unless ``body`` is given.

        Returns True if the host created the file, False if it replaced one.
        """
        return self.start_put_file(host, name, body)()

    def start_put_file(self, host: str, name: str, body: Body | None = None) -> Callable[[], bool]:
        """:meth:`put_file` in two halves: the request is sent on return; the result waits."""
        if body is None:
            body = FileBody(self.path(name))  # type: ignore[attr-defined]
        finish = self.transport(host).start_put(name, body)

        def answered() -> bool:
            created = finish().created
            if not created:
                logger.info("PUT on existing file %s on %s", name, host)
            return created

        return answered

    @operation("DELETE")
    def delete_file(self, host: str, name: str) -> bool:
        """Delete ``name`` on one host; a file that was already missing is only a warning."""
        return self.start_delete_file(host, name)()

    def start_delete_file(self, host: str, name: str) -> Callable[[], bool]:
        """:meth:`delete_file` in two halves: the request is sent on return; the result waits."""
        finish = self.transport(host).start_delete(name)

        def answered() -> bool:
            existed = finish()
            if not existed:
                logger.warning("DELETE on missing file %s on %s", name, host)
            return existed

        return answered

    def _two_halves(self, func: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        """The start half of ``func`` if every host can be started from this thread.

        That holds for a DELETE and for a PUT whose body fits in a socket's send
        buffer: sending it never waits for the server. Larger bodies run in the
        fan-out's threads, where one slow host cannot hold up the others' uploads.
        A subclass that overrides put_file or delete_file gets its own method run.
        """
        if getattr(func, "__self__", None) is not self:
            return None
        method = getattr(func, "__func__", None)
        if method is ReplicatedStorageMixin.delete_file:
            return self.start_delete_file
        if method is ReplicatedStorageMixin.put_file:
            body = args[0] if args else None
            if isinstance(body, Body) and body.size <= INLINE_BODY:
                return self.start_put_file
        return None

    # --- ordering ------------------------------------------------------------

    def locked(self, name: str) -> AbstractContextManager[int]:
        """Hold the name's lock, shared by every process and app server; yield ``seq``.

        Everything that replicates ``name`` runs inside it and decides what to send
        only once it holds it (see ordering.py). Nested use in one thread is free.
        """
        key = self.journal_key
        probe = journal.probe(key, list(self.hosts), name) if key and journal.enabled() else None
        return ordering.ordered(key, name, timeout=self.lock_timeout, probe=probe)

    def _with_lock(
        self,
        name: str,
        operation: str,
        work: Callable[[int], list[Outcome]],
        *,
        hosts: Sequence[str] | None = None,
        raising: bool = True,
    ) -> list[Outcome]:
        """Run ``work(seq)`` under the name's lock; a lock not had in time fails every host.

        That failure goes through the policy like any other: journaled (the hosts may
        be behind, since nothing was sent), raised as ``fatal_exceptions`` says. A lock
        the journal's database cannot give at all is a JournalError.
        """
        try:
            with self.locked(name) as seq:
                return work(seq)
        except ordering.LockTimeout as exc:
            targets = self.hosts if hosts is None else hosts
            outcomes = [Outcome(host, error=exc) for host in targets]
            self.settle(operation, name, outcomes, seq=journal.now_seq(), raising=raising)
            return outcomes
        except ordering.LockUnavailable as exc:
            # Nothing was sent, and nothing can be journaled: the hosts may be behind.
            targets = self.hosts if hosts is None else hosts
            outcomes = [Outcome(host, error=exc) for host in targets]
            error = JournalError(operation, name, outcomes, detail=str(exc))
            if not raising:
                logger.error("%s", error, exc_info=True)
                return outcomes
            raise error from exc.__cause__

    # --- fan-out and failure policy -----------------------------------------

    def execute(self, func: Callable[..., Any], name: str, *args: Any, **kwargs: Any) -> Any:
        """Run ``func(host, name, *args, **kwargs)`` on every media server in parallel.

        Runs under the name's lock and applies the failure policy; returns the per-host
        outcomes. Stable API: override it (or :meth:`execute_one` on AsyncStorage) to
        change how work runs.
        """
        operation = operation_of(func)

        def work(seq: int) -> list[Outcome]:
            start = self._two_halves(func, args)
            if start is not None:
                outcomes = self._fanout.run_started(start, self.hosts, name, *args, **kwargs)
            else:
                outcomes = self._fanout.run(func, self.hosts, name, *args, **kwargs)
            self.settle(operation, name, outcomes, seq=seq)
            return outcomes

        return self._with_lock(name, operation, work)

    def _no_alias(self) -> str:
        return (
            f"the journal cannot record it: this {type(self).__name__} matches no STORAGES "
            "entry, so process_failed_media could never repair it. Configure it in STORAGES "
            "or give it the journal_alias option."
        )

    def settle(
        self,
        operation: str,
        name: str,
        outcomes: list[Outcome],
        *,
        seq: int | None = None,
        raising: bool = True,
    ) -> None:
        """Log each host's failure, record the outcomes, and raise as the policy says.

        With ``fatal_exceptions`` one ReplicationError names every failed host. A
        write acknowledged by fewer than ``min_replicas`` hosts always raises: the
        caller must not believe the file is stored when it is not. A failure the
        journal cannot record raises JournalError, even with ``raising=False``
        (background work), where it is logged instead.
        """
        failures = [outcome for outcome in outcomes if not outcome.ok]
        for outcome in failures:
            error = outcome.error
            logger.error(
                "Failed to %s %s on %s: %s",
                FAILURE_WORDS.get(operation, operation),
                name,
                outcome.host,
                describe(error),
                exc_info=(type(error), error, error.__traceback__)
                if self.show_traceback and error is not None
                else None,
            )
        acknowledged = len(outcomes) - len(failures)
        below_quorum = operation == "PUT" and acknowledged < self.min_replicas
        try:
            self.record_outcomes(
                operation,
                name,
                outcomes,
                seq=journal.now_seq() if seq is None else seq,
                below_quorum=below_quorum,
            )
        except journal.JournalUnavailable as exc:
            error = JournalError(operation, name, failures, total=len(outcomes), detail=str(exc))
            if raising:
                raise error from exc.__cause__
            logger.error("%s", error, exc_info=True)
        if not raising or not failures:
            return
        if below_quorum:
            raise ReplicationError(
                operation,
                name,
                failures,
                total=len(outcomes),
                detail=f"Only {acknowledged} acknowledged; at least {self.min_replicas} required",
            )
        if self.fatal_exceptions:
            raise ReplicationError(operation, name, failures, total=len(outcomes))

    def record_outcomes(
        self,
        operation: str,
        name: str,
        outcomes: list[Outcome],
        *,
        seq: int,
        below_quorum: bool = False,
    ) -> None:
        """Journal the hosts that may now be behind; forget those that caught up.

        Runs whatever ``fatal_exceptions`` says: the rows are what makes turning it
        off safe, so a failure that cannot be journaled raises JournalError. Override
        to journal elsewhere.
        """
        if not journal.enabled():
            return
        ok = [outcome.host for outcome in outcomes if outcome.ok]
        failed = [outcome for outcome in outcomes if not outcome.ok]
        key = self.journal_key
        if ok and key:
            known = ordering.known_rows(key, name)
            journal.safely(journal.clear, key, ok, name, seq, known=known)
        if not failed:
            return
        if not key:
            raise journal.JournalUnavailable(self._no_alias())
        for outcome in failed:
            journal.strictly(
                journal.mark,
                key,
                [outcome.host],
                name,
                operation,
                seq,
                error=describe(outcome.error),
                sources=ok if operation == "PUT" else [],
            )

    # --- repair -------------------------------------------------------------

    def expected_state(self, name: str) -> bool:
        """Whether ``name`` should exist on the media servers (it exists in the master copy)."""
        raise NotImplementedError("Only storages with a master copy can derive the state")

    @operation("SYNC")
    def converge(self, host: str, name: str) -> str:
        """Bring one host in line with the master copy for ``name``; return the verb used.

        Deriving the action when it runs, under the name's lock, rather than replaying
        the verb that was missed, is what makes retries safe in any order and from any
        process.
        """
        with self.locked(name):
            if self.expected_state(name):
                self.put_file(host, name)
                return "PUT"
            self.delete_file(host, name)
            return "DELETE"


@deconstructible(path="django_resto.storage.HybridStorage")
class HybridStorage(ReplicatedStorageMixin, FileSystemStorage):
    """Store files in MEDIA_ROOT first, then on every media server in parallel.

    Reads (open, exists, size, listdir, path, times) use the local master copy, the
    only copy guaranteed complete.
    """

    extra_options = LOCAL_OPTIONS

    def __init__(self, *args: Any, **options: Any) -> None:
        """Take FileSystemStorage's parameters, positionally too, and django_resto's options.

        ``HybridStorage("/srv/media")`` is ``HybridStorage(location="/srv/media")``, as
        with FileSystemStorage: the positional parameters are LOCAL_OPTIONS, in the
        order of FileSystemStorage's signature. django_resto's own options are keyword
        only, so no positional call can be misread as one of them.
        """
        if len(args) > len(LOCAL_OPTIONS):
            raise TypeError(
                f"{type(self).__name__}() takes at most {len(LOCAL_OPTIONS)} positional "
                f"arguments ({len(args)} given)"
            )
        for key, value in zip(LOCAL_OPTIONS, args, strict=False):
            if key in options:
                raise TypeError(f"{type(self).__name__}() got multiple values for {key!r}")
            options[key] = value
        local = self._configure(options)
        flags = getattr(self, "OS_OPEN_FLAGS", _DEFAULT_OS_OPEN_FLAGS)
        if _OS_OPEN_FLAGS_WARNING is None or flags == _DEFAULT_OS_OPEN_FLAGS:
            super().__init__(**local)
            return
        # Django warns with stacklevel=2, which names this file rather than the code
        # that built the storage; say it ourselves, pointing where FileSystemStorage's
        # own warning would, and keep Django from saying it a second time.
        warnings.warn(
            "Overriding OS_OPEN_FLAGS is deprecated. Use the allow_overwrite parameter instead.",
            _OS_OPEN_FLAGS_WARNING,
            stacklevel=2,
        )
        # An instance attribute hides the subclass's flags from Django's check only;
        # once removed, _save reads them from the class as Django would.
        self.__dict__["OS_OPEN_FLAGS"] = _DEFAULT_OS_OPEN_FLAGS
        try:
            super().__init__(**local)
        finally:
            del self.__dict__["OS_OPEN_FLAGS"]

    def _save(self, name: str, content: File) -> str:
        validate_name(name, django_check=False)  # Storage.save has just run Django's check
        try:
            # FileSystemStorage._save (django-stubs leave the private hook out).
            name = super()._save(name, content)  # type: ignore[misc]
        except FileNotFoundError as exc:
            written = self._deleted_after_writing(exc)
            if written is None:
                raise
            name = written
        self.replicate_saved(name)
        return name

    def _deleted_after_writing(self, exc: FileNotFoundError) -> str | None:
        """The name Django wrote, if ``exc`` says another process deleted it right after.

        FileSystemStorage chmods and stats the file it has just written; a delete in
        another process can remove it in between. The save did happen; the replication
        that follows finds the file gone and deletes it on the hosts, as the delete's
        own replication (waiting for the name's lock) does too.
        """
        path = exc.filename
        if not isinstance(path, str) or not os.path.isabs(path):
            return None
        location = os.path.join(os.path.abspath(self.location), "")
        if not path.startswith(location) or not os.path.isdir(os.path.dirname(path)):
            return None
        return os.path.relpath(path, self.location).replace(os.sep, "/")

    def delete(self, name: str) -> None:
        """Delete ``name`` locally, then on every media server.

        As with FileSystemStorage, ``name`` may be path-like or an absolute path
        inside the location, and an empty directory is removed (a full one raises
        OSError). A directory is the master copy's business only: the media servers
        create collections as PUTs need them and are not told of its removal, since
        a WebDAV DELETE of a collection is recursive, and whatever another process
        has put in it meanwhile would go too.
        """
        if not name:
            raise ValueError("The name must be given to delete().")
        name = validate_name(relative_to(self.location, name))
        directory = os.path.isdir(self.path(name))
        super().delete(name)
        if not directory:
            self.replicate_deleted(name)

    def replicate_saved(self, name: str) -> None:
        self.replicate(name)

    def replicate_deleted(self, name: str) -> None:
        self.replicate(name)

    def replicate(self, name: str) -> list[Outcome]:
        """Make every host hold what the master copy holds for ``name`` now.

        The master copy is looked at once the name's lock is held: a file deleted by
        another process since this one saved it is deleted on the hosts (the other
        process's own replication waits for the lock, then finds the same), and a save
        racing a delete can no longer land after it. One body serves every host: the
        master copy is stat'ed once, not once per host.
        """

        def work(seq: int) -> list[Outcome]:
            body = self._master_body(name)
            if body is None:
                return self.execute(self.delete_file, name)
            return self.execute(self.put_file, name, body)

        return self._with_lock(name, "PUT", work)

    def _master_body(self, name: str) -> FileBody | None:
        try:
            body = FileBody(self.path(name))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return body if os.path.isfile(body.path) else None

    def expected_state(self, name: str) -> bool:
        # Not exists(): with allow_overwrite, Django's exists() may answer False
        # for a file that is there.
        return os.path.isfile(self.path(name))


@deconstructible(path="django_resto.storage.AsyncStorage")
class AsyncStorage(HybridStorage):
    """Like HybridStorage, but replication runs in the background.

    Work goes to a bounded thread pool (``async_workers`` threads), so a burst of
    uploads queues instead of starting a thread each. Failures are logged and
    recorded, never raised: the request that saved the file has moved on. With
    ``replicate_with="tasks"`` the work goes to worker processes through Django's
    Tasks framework instead (see django_resto.tasks).
    """

    # Run later, replication must look at the master copy as it is then: converge
    # decides PUT or DELETE itself, for a save and a delete alike.
    def replicate_saved(self, name: str) -> None:
        self.execute(self.converge, name)

    replicate_deleted = replicate_saved

    def execute(self, func: Callable[..., Any], name: str, *args: Any, **kwargs: Any) -> Any:
        """Schedule ``func(host, name, ...)`` for every host; return the scheduled handles.

        The intent is journaled first, so a process killed before the work is done
        leaves rows that ``process_failed_media`` completes.
        """
        problem: JournalError | None = None
        if journal.enabled() and self.hosts:
            try:
                if not self.journal_key:
                    raise journal.JournalUnavailable(self._no_alias())
                journal.strictly(
                    journal.mark,
                    self.journal_key,
                    self.hosts,
                    name,
                    operation_of(func),
                    journal.now_seq(),
                    error="pending",
                    attempted=False,
                )
            except journal.JournalUnavailable as exc:
                problem = JournalError(operation_of(func), name, detail=str(exc))
        handles = [self.execute_one(func, host, name, *args, **kwargs) for host in self.hosts]
        if problem is not None:
            # Scheduled all the same (it may well succeed); the caller learns that a
            # failure of it would go unrecorded.
            raise problem
        return handles

    def execute_one(
        self, func: Callable[..., Any], host: str, name: str, *args: Any, **kwargs: Any
    ) -> Any:
        """Run one per-host operation in the background. Override to use a task queue.

        With ``replicate_with="tasks"`` it becomes a Django task enqueued when the
        current transaction commits, carrying names only (see django_resto.tasks), and
        None is returned; otherwise the thread pool runs it and a Future is returned.
        """
        if self.replicate_with == "tasks":
            from .tasks import enqueue_on_commit

            return enqueue_on_commit(self, func, host, name, *args, **kwargs)
        executor = self._async_pool()
        future = executor.submit(self._run_in_pool, func, host, name, *args, **kwargs)
        with self._pending_lock:
            self._pending.add(future)
        future.add_done_callback(self._forget)
        return future

    def _run_in_pool(
        self, func: Callable[..., Any], host: str, name: str, *args: Any, **kwargs: Any
    ) -> Outcome:
        """:meth:`run_one` in a pool thread, which no request cycle tidies up after.

        A connection to the journal's database that died (a restart, a failover) is
        dropped before the task, so the thread reconnects instead of failing every
        task after it; and the thread closes its connection when no work is left, so
        idle pool threads hold no database sessions.
        """
        alias = ordering.journal_database()
        db = connections[alias] if alias is not None else None
        if db is not None and db.connection is not None and db.errors_occurred:
            db.close_if_unusable_or_obsolete()
        try:
            return self.run_one(func, host, name, *args, **kwargs)
        finally:
            if db is not None:
                with self._pending_lock:
                    idle = len(self._pending) <= 1  # only this task's own future
                if idle:
                    db.close()

    def run_one(
        self, func: Callable[..., Any], host: str, name: str, *args: Any, **kwargs: Any
    ) -> Outcome:
        """Run ``func`` on one host now, under the name's lock, and apply the (non-raising)
        failure policy."""
        operation = operation_of(func)

        def work(seq: int) -> list[Outcome]:
            outcome = call(func, host, name, *args, **kwargs)
            self.settle(operation, name, [outcome], seq=seq, raising=False)
            return [outcome]

        return self._with_lock(name, operation, work, hosts=[host], raising=False)[0]

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every scheduled replication has finished.

        Returns False if ``timeout`` seconds passed first. Useful in tests and on
        shutdown; at interpreter exit the pool's threads also finish their queue.
        """
        if "_pending_lock" not in self.__dict__:
            return True  # nothing was ever scheduled in this process's pool
        deadline = None if timeout is None else (timeout + time.monotonic())
        while True:
            with self._pending_lock:
                pending = list(self._pending)
            if not pending:
                return True
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            _, not_done = concurrent.futures.wait(pending, timeout=remaining)
            if not_done and deadline is not None and time.monotonic() >= deadline:
                return False

    def _async_pool(self) -> concurrent.futures.ThreadPoolExecutor:
        executor = self.__dict__.get("_async_executor")
        if executor is None:
            with self._transports_lock:
                executor = self.__dict__.get("_async_executor")
                if executor is None:
                    self._pending: set[concurrent.futures.Future[Any]] = set()
                    self._pending_lock = threading.Lock()
                    executor = concurrent.futures.ThreadPoolExecutor(
                        max_workers=self.async_workers, thread_name_prefix="django_resto_async"
                    )
                    self._async_executor = executor
        return executor

    def _forget(self, future: concurrent.futures.Future[Any]) -> None:
        with self._pending_lock:
            self._pending.discard(future)


class RemoteFile(File):
    """A file read from a media server as a stream: never held whole in memory."""

    def __init__(self, response: requests.Response, name: str) -> None:
        self._response = response
        response.raw.decode_content = True
        super().__init__(cast(IO[bytes], response.raw), name)
        length = response.headers.get("Content-Length")
        if length is not None and length.isdigit():
            self.size = int(length)
        self.mode = "rb"

    def close(self) -> None:
        self._response.close()


@contextmanager
def body_of(content: File) -> Iterator[Body]:
    """Something every host can read in parallel, without loading big files in memory.

    Uploads larger than FILE_UPLOAD_MAX_MEMORY_SIZE already sit in a temporary file
    and small ones in a BytesIO; anything else is spooled to a temporary file once.
    """
    if hasattr(content, "temporary_file_path"):
        yield FileBody(content.temporary_file_path())
        return
    inner = getattr(content, "file", content)
    if isinstance(inner, io.BytesIO):
        buffer = inner.getbuffer()
        body = BytesBody(buffer)
        try:
            yield body
        finally:
            body.data.release()
            buffer.release()
        return
    with tempfile.NamedTemporaryFile(
        prefix="django_resto_", dir=settings.FILE_UPLOAD_TEMP_DIR
    ) as spool:
        if hasattr(content, "chunks"):
            for chunk in content.chunks():
                spool.write(chunk.encode() if isinstance(chunk, str) else chunk)
        else:
            shutil.copyfileobj(content, spool)
        spool.flush()
        yield FileBody(spool.name)


@deconstructible(path="django_resto.storage.DistributedStorage")
class DistributedStorage(ReplicatedStorageMixin, Storage):
    """Store files only on the media servers; no local master copy.

    A save must reach ``min_replicas`` hosts (one by default) or it raises, even
    with ``fatal_exceptions`` off: with no master copy, a save that reached no host
    would be a silent loss.
    """

    extra_options = ("base_url",)
    default_min_replicas = 1

    def __init__(self, **options: Any) -> None:
        local = self._configure(options)
        self._base_url: str | None = local.get("base_url")

    @property
    def base_url(self) -> str | None:
        value = self._base_url if self._base_url is not None else settings.MEDIA_URL
        if value and not value.endswith("/"):
            value += "/"
        return value

    def _save(self, name: str, content: File) -> str:
        validate_name(name, django_check=False)  # Storage.save has just run Django's check
        if not self.hosts:
            raise ImproperlyConfigured("DistributedStorage has no media hosts to store files on.")
        with body_of(content) as body:
            self.execute(self.put_file, name, body)
        return name

    def delete(self, name: str) -> None:
        if not name:
            raise ValueError("The name must be given to delete().")
        name = validate_name(name)
        self.execute(self.delete_file, name)

    def _ask(self, operation: str, name: str, func: Callable[[HostTransport, str], Any]) -> Any:
        """Ask one host, falling over to the next one when it cannot answer.

        With a single host, what it raised is raised as it is, as django-resto 1.3's
        reads did: there is no other host to name. With several, a ReplicationError
        names each one's failure.
        """
        name = validate_name(name)
        if not self.hosts:
            raise ImproperlyConfigured("DistributedStorage has no media hosts to read from.")
        failures: list[Outcome] = []
        for host in self.hosts:
            try:
                return func(self.transport(host), name)
            except (requests.RequestException, UnexpectedStatusCode) as exc:
                if len(self.hosts) == 1:
                    raise
                logger.warning(
                    "%s %s on %s failed, trying the next host: %s",
                    operation,
                    name,
                    host,
                    describe(exc),
                )
                failures.append(Outcome(host, error=exc))
        raise ReplicationError(operation, name, failures, total=len(self.hosts))

    def _head(self, name: str) -> requests.Response:
        response = self._ask("HEAD", name, lambda transport, name: transport.head(name))
        if response is None:
            raise FileNotFoundError(f"{name} does not exist on the media servers")
        return response

    def exists(self, name: str) -> bool:
        return self._ask("HEAD", name, lambda transport, name: transport.head(name)) is not None

    def _open(self, name: str, mode: str = "rb") -> File:
        if mode not in ("r", "rb"):
            raise ValueError(f"DistributedStorage opens files read-only, not with mode {mode!r}")
        response = self._ask("GET", name, lambda transport, name: transport.get(name))
        return RemoteFile(response, validate_name(name))

    def size(self, name: str) -> int:
        length = self._head(name).headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise OSError(f"The media server gave no size for {name}")
        return int(length)

    def get_modified_time(self, name: str) -> datetime:
        header = self._head(name).headers.get("Last-Modified")
        if not header:
            raise NotImplementedError(f"The media server gave no Last-Modified for {name}")
        moment = parsedate_to_datetime(header).astimezone(UTC)
        if settings.USE_TZ:
            return moment
        return timezone.make_naive(moment, timezone.get_default_timezone())

    def url(self, name: str | None) -> str:
        if self.base_url is None:
            raise ValueError("This file is not accessible via a URL.")
        url = filepath_to_uri(name)
        if url is not None:
            url = url.lstrip("/")
        return urljoin(self.base_url, url)

    def listdir(self, path: str) -> tuple[list[str], list[str]]:
        raise NotImplementedError(
            "DistributedStorage cannot list directories through the Storage API; "
            "use `manage.py resto_sync` to audit the media servers."
        )

    def path(self, name: str) -> str:
        raise NotImplementedError("DistributedStorage keeps no local copy: files have no path.")
