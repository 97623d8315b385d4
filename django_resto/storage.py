"""The three storage backends: Hybrid, Async and Distributed.

Import paths and behaviour follow django-resto 1.x so that existing projects only
change their STORAGES entry; see the README for what changed and why. Each backend is
a Storage adapter: it says what its master copy is and how to read it, and hands
replication to its :class:`~django_resto.replicator.Replicator`.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from stat import S_ISDIR
from typing import IO, TYPE_CHECKING, Any, cast
from urllib.parse import urljoin

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.files import File
from django.core.files.storage import FileSystemStorage, Storage
from django.utils import deprecation, timezone
from django.utils.deconstruct import deconstructible
from django.utils.encoding import filepath_to_uri

from . import repair as _repair
from .base import ReplicatedStorageMixin
from .exceptions import JournalError, ReplicationError, describe
from .fanout import Outcome
from .names import relative_to, validate_name
from .operations import verb_of
from .registry import Capabilities
from .replicator import FAILURE_WORDS
from .scheduling import Background
from .settings import LOCAL_OPTIONS
from .transport import (
    Body,
    FileBody,
    Response,
    Stat,
    TransportError,
    UnexpectedStatusCode,
)
from .uploads import body_of

if TYPE_CHECKING:
    from .models import PendingReplication
    from .targets import Target

# A child of "django_resto": configs for either name hear the storages, as configs
# written for django-resto 1.3 (which logged on django_resto.storage) expect. The
# replicator logs its failures here too.
logger = logging.getLogger(__name__)

# RemovedInDjango60Warning: Django 6.0 removed FileSystemStorage.OS_OPEN_FLAGS, and
# with it the warning that HybridStorage repeats for its subclasses (see __init__).
_DEFAULT_OS_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
_OS_OPEN_FLAGS_WARNING: type[Warning] | None = (
    getattr(deprecation, "RemovedInDjango60Warning", None)
    if hasattr(FileSystemStorage, "OS_OPEN_FLAGS")
    else None
)

__all__ = [
    "FAILURE_WORDS",
    "AsyncStorage",
    "DistributedStorage",
    "HybridStorage",
    "ReplicatedStorageMixin",
    "ReplicationError",
]

#: Kept for code written against 0.x of this package: the verb of a per-host callable.
operation_of = verb_of


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
        validate_name(name)
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
            try:
                body: Body | None = self.master_copy(name)
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                body = None
            if body is None:
                return self.execute(self.delete_file, name)
            return self.execute(self.put_file, name, body)

        return self.replicator.under_lock(name, "PUT", work)

    def master_copy(self, name: str) -> Body:
        path = self.path(name)
        # One stat answers both questions (a directory? how large?).
        found = os.stat(path)
        if S_ISDIR(found.st_mode):
            raise IsADirectoryError(f"{name} is a directory in the master copy")
        return FileBody(path, size=found.st_size)

    def expected_state(self, name: str) -> bool:
        # Not exists(): with allow_overwrite, Django's exists() may answer False
        # for a file that is there.
        return os.path.isfile(self.path(name))


@deconstructible(path="django_resto.storage.AsyncStorage")
class AsyncStorage(HybridStorage):
    """Like HybridStorage, but replication runs in the background.

    Work goes to a bounded thread pool (``async_workers`` threads, scheduling.py), so
    a burst of uploads queues instead of starting a thread each. Failures are logged
    and recorded, never raised: the request that saved the file has moved on. With
    ``replicate_with="tasks"`` the work goes to worker processes through Django's
    Tasks framework instead (see django_resto.tasks).
    """

    resto_capabilities = Capabilities(master_copy=True, background=True)

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
        try:
            self.replicator.record_intent(verb_of(func), name)
        except JournalError as exc:
            problem = exc
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
        return self.background.submit(self.run_one, func, host, name, *args, **kwargs)

    def run_one(
        self, func: Callable[..., Any], host: str, name: str, *args: Any, **kwargs: Any
    ) -> Outcome:
        """Run ``func`` on one host now, under the name's lock, and apply the (non-raising)
        failure policy."""
        return self.replicator.run_one(func, verb_of(func), host, name, *args, **kwargs)

    @property
    def background(self) -> Background:
        """This process's pool for the storage's background work, made on first use."""
        found = self.__dict__.get("_background")
        if found is None:
            found = self.__dict__.setdefault("_background", Background(self.async_workers))
        return cast(Background, found)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every scheduled replication has finished.

        Returns False if ``timeout`` seconds passed first. Useful in tests and on
        shutdown; at interpreter exit the pool's threads also finish their queue.
        """
        if "_background" not in self.__dict__:
            return True  # nothing was ever scheduled in this process's pool
        return self.background.wait(timeout)


class RemoteFile(File):
    """A file read from a media server as a stream: never held whole in memory."""

    def __init__(self, response: Response, name: str) -> None:
        self._response = response
        super().__init__(cast(IO[bytes], response), name)
        if response.size is not None:
            self.size = response.size
        self.mode = "rb"

    def close(self) -> None:
        self._response.close()


@deconstructible(path="django_resto.storage.DistributedStorage")
class DistributedStorage(ReplicatedStorageMixin, Storage):
    """Store files only on the media servers; no local master copy.

    A save must reach ``min_replicas`` hosts (one by default) or it raises, even
    with ``fatal_exceptions`` off: with no master copy, a save that reached no host
    would be a silent loss. A lagging host is repaired from a host that has the file.
    """

    resto_capabilities = Capabilities(master_copy=False, needs_hosts=True)

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
        validate_name(name)
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

    def _ask(self, operation: str, name: str, func: Callable[[Target, str], Any]) -> Any:
        """Ask one host, falling over to the next one when it cannot answer.

        Any target: a bucket (``storage:ALIAS``) fails with the transport's errors too
        (targets_storage.py), so a read falls over from a bucket that is down as from a
        dead media server.

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
            except (TransportError, UnexpectedStatusCode) as exc:
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

    def _head(self, name: str) -> Stat:
        stat: Stat | None = self._ask("HEAD", name, lambda transport, name: transport.stat(name))
        if stat is None:
            raise FileNotFoundError(f"{name} does not exist on the media servers")
        return stat

    def exists(self, name: str) -> bool:
        return bool(self._ask("HEAD", name, lambda transport, name: transport.exists(name)))

    def _open(self, name: str, mode: str = "rb") -> File:
        if mode not in ("r", "rb"):
            raise ValueError(f"DistributedStorage opens files read-only, not with mode {mode!r}")
        response = self._ask("GET", name, lambda transport, name: transport.open(name))
        return RemoteFile(response, validate_name(name))

    def size(self, name: str) -> int:
        length = self._head(name).size
        if length is None:
            raise OSError(f"The media server gave no size for {name}")
        return length

    def get_modified_time(self, name: str) -> datetime:
        header = self._head(name).modified
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

    def planned_repair(self, row: PendingReplication) -> str:
        return "COPY" if row.operation == "PUT" and row.sources else "DELETE"

    def repair(self, row: PendingReplication) -> str:
        """Copy the file from a host that acknowledged it, or delete it where it was deleted."""
        if row.operation != "PUT" or not row.sources:
            self.delete_file(row.host, row.name)
            return "DELETE"
        _repair.copy_from_sources(self, row)
        return "COPY"
