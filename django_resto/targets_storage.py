"""Replicas in any Django storage: an S3 bucket (django-storages) beside the media servers.

A ``hosts`` entry ``storage:ALIAS`` names a STORAGES alias; its storage becomes one
more target of the fan-out, under the same failure policy, quorum, journal and
per-name lock as the WebDAV hosts. Everything goes through the storage's own API
(``save``, ``delete``, ``exists``, ``size``, ``open``, ``listdir``), so any Django
storage can hold replicas; one that is shaped like django-storages' ``S3Storage``
(a ``bucket_name`` and a boto3 ``connection``) is asked through its boto3 client
for what the Storage API has no word for: a HEAD with the ETag, a streamed GET, and
the ListObjectsV2 pages that make an audit of 100,000 objects a hundred requests.

A replica must live under the master's name, so a storage that would rename on a
collision (``get_available_name`` giving another name: ``file_overwrite=False``,
FileSystemStorage without ``allow_overwrite``) is refused when the storage is
configured, and so is one that would store other bytes than the master's (gzip).

Nothing here imports boto3 or django-storages: their exceptions are recognised by
their attributes, and the module is only imported when a ``storage:`` host is
configured, so the core keeps no S3 dependency.
"""

from __future__ import annotations

import concurrent.futures
import copy
import logging
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any, ClassVar, TypeVar

from django.core.exceptions import SuspiciousFileOperation
from django.core.files import File
from django.core.files.storage import Storage, storages

from . import registry
from .exceptions import UnexpectedStatusCode, describe
from .hosts import Host
from .listing import DEFAULT_WORKERS, Entry, Listing, ListingError
from .names import validate_name
from .targets import Features
from .transport import Body, PutResult, Stat, TransportError
from .wire import ReadStream

__all__ = [
    "PREFIX",
    "ObjectEntry",
    "S3Target",
    "StorageTarget",
    "StorageTimeout",
    "StorageUnreachable",
    "alias_of",
    "configuration_problem",
    "storage_target",
]

logger = logging.getLogger("django_resto")

#: How a ``hosts`` entry names a storage: ``storage:ALIAS``.
PREFIX = "storage:"

#: The name asked of ``get_available_name`` to learn whether a storage renames.
_PROBE_NAME = "django_resto/probe.bin"
# An S3 ETag that is the MD5 of the object: single-part uploads without SSE-KMS/SSE-C.
_MD5_ETAG = re.compile(r'"?([0-9a-f]{32})"?')
# Attributes under which storages keep credentials: scrubbed from every message.
_SECRET_ATTRIBUTES = (
    "access_key",
    "secret_key",
    "security_token",
    "account_key",
    "sas_token",
    "connection_string",
    "password",
)
# Request parameters a HEAD or GET needs when the storage writes them (SSE-C keys).
_READ_PARAMETERS = (
    "SSECustomerAlgorithm",
    "SSECustomerKey",
    "SSECustomerKeyMD5",
    "RequestPayer",
)

T = TypeVar("T")


class StorageUnreachable(TransportError, ConnectionError):
    """A storage target could not be reached (refused, reset, no route).

    A TransportError, as a media server's would be: the breaker opens on it, the
    journal's drain stops the host's pass, DistributedStorage reads the next target.
    """


class StorageTimeout(TransportError, TimeoutError):
    """A storage target did not answer in time (its client's own timeouts)."""


def alias_of(host: str) -> str | None:
    """The STORAGES alias a ``storage:ALIAS`` host names; None for a media server."""
    return host[len(PREFIX) :] if host.startswith(PREFIX) else None


# --- configuration ------------------------------------------------------------------


def configuration_problem(alias: str) -> str | None:
    """Why STORAGES[alias] cannot hold replicas, as a sentence; None if it can.

    Shared by the storages (which raise ImproperlyConfigured) and the system check
    (which lists every problem at once). The target storage is created to ask it,
    which for django-storages opens no connection.
    """
    where = f"{PREFIX}{alias}"
    if not alias:
        return f"{where!r} names no STORAGES alias"
    configured = registry.configured()
    if alias not in configured:
        return f"{where!r} names {alias!r}, which is not in STORAGES"
    if registry.backend_class(alias) is not None:
        return (
            f"{where!r} names a django_resto storage: a replica must be a plain storage "
            "(S3Storage, FileSystemStorage...), not one that replicates itself"
        )
    try:
        storage = storages[alias]
    except Exception as exc:
        return f"{where!r}: STORAGES[{alias!r}] cannot be created ({describe(exc)})"
    try:
        renamed = _renamed(storage)
    except Exception as exc:
        return (
            f"{where!r}: cannot tell whether STORAGES[{alias!r}] would rename a file whose "
            f"name is taken ({describe(exc)})"
        )
    if renamed is not None:
        return (
            f"{where!r} would store a file under another name when the name is taken "
            f"({_PROBE_NAME!r} became {renamed!r}): a replica must live under the master's "
            "name. Set file_overwrite=True (django-storages) or allow_overwrite=True "
            "(FileSystemStorage)"
        )
    if getattr(storage, "gzip", False):
        return (
            f"{where!r} compresses what it stores (gzip=True): a replica must hold the "
            "master's bytes, which the audit compares"
        )
    return None


def _renamed(storage: Storage) -> str | None:
    """The name ``storage`` would pick for a taken name, if not that name; else None.

    Asked of a shallow copy whose ``exists`` says the first name it is asked about is
    taken: whatever ``get_available_name`` does (django-storages' ``file_overwrite``,
    FileSystemStorage's ``allow_overwrite``, a subclass of either), its answer shows it,
    without a request to the storage.
    """
    probe = copy.copy(storage)
    asked: list[str] = []

    def exists(name: str) -> bool:
        asked.append(name)
        return len(asked) == 1

    probe.exists = exists  # type: ignore[method-assign]
    chosen = probe.get_available_name(_PROBE_NAME)
    return None if chosen == _PROBE_NAME else chosen


# --- what a stored file is read as ------------------------------------------------------


class _BodyFile(File):
    """A body opened for one upload, sized from the body, so no storage seeks to learn it."""

    def __init__(self, handle: Any, name: str, size: int) -> None:
        super().__init__(handle, name)
        self.size = size


class StoredStream(ReadStream):
    """A file read from a storage target: what the storage streams, its size, its errors
    translated like every other call of the target."""

    def __init__(
        self,
        reader: Any,
        size: int | None,
        translate: Callable[[BaseException], BaseException],
    ) -> None:
        super().__init__()
        self._reader = reader
        self.size = size
        self._translate = translate

    def read(self, size: int | None = -1) -> bytes:
        try:
            data = self._reader.read() if size is None or size < 0 else self._reader.read(size)
        except Exception as exc:
            translated = self._translate(exc)
            if translated is exc:
                raise
            raise translated from exc
        return data.encode() if isinstance(data, str) else data

    def close(self) -> None:
        try:
            self._reader.close()
        finally:
            super().close()


@dataclass(frozen=True)
class ObjectEntry(Entry):
    """A listed object, with the ETag the store reported for it (S3)."""

    etag: str | None = None

    @property
    def md5(self) -> str | None:
        """The object's MD5 when its ETag is one (a single-part upload), else None.

        An ETag of 32 hex digits may still not be the MD5 (SSE-KMS), so a mismatch is
        confirmed by downloading before it is believed (sync.py).
        """
        found = _MD5_ETAG.fullmatch(self.etag or "")
        return found.group(1) if found else None


# --- the targets --------------------------------------------------------------------


class _Runtime:
    """The target's threads and the lock that guards them: dropped when pickled."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.executor: concurrent.futures.ThreadPoolExecutor | None = None


class StorageTarget:
    """A replica kept in a Django storage, through the Storage API only.

    Every call into the storage runs on the target's own few threads (``pool_size``):
    a write can then be started from the fan-out's thread like a WebDAV PUT, and a
    storage that keeps a client per thread (django-storages, about 10 MiB per boto3
    session) keeps a bounded number of them however many threads use the target.
    """

    features: ClassVar[Features] = Features(listing=True, checksums=False, collections=False)
    #: What an audit reports as the listing method.
    method: ClassVar[str] = "listdir"

    def __init__(self, label: str, storage: Storage, *, pool_size: int = 4) -> None:
        # A Host, so that code written for media servers (the breaker, the reports) can
        # name it; its origin is the label, which names no URL.
        self.host = Host(name=label, origin=label)
        self.storage = storage
        self.pool_size = pool_size
        self._secrets = [
            value
            for attribute in _SECRET_ATTRIBUTES
            if isinstance(value := getattr(storage, attribute, None), str) and len(value) >= 4
        ]
        self._runtime = _Runtime()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.label}>"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_runtime"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._runtime = _Runtime()

    @property
    def label(self) -> str:
        return self.host.name

    # --- threads and errors ---------------------------------------------------------

    def _submit(self, func: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        runtime = self._runtime
        with runtime.lock:
            if runtime.executor is None:
                runtime.executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=self.pool_size, thread_name_prefix="django_resto_storage"
                )
            return runtime.executor.submit(func, *args)

    def _run(self, verb: str, name: str, func: Callable[..., T], *args: Any) -> T:
        """``func(*args)`` on the target's threads, its failure translated (see _translate)."""
        return self._submit(self._call, verb, name, func, *args).result()

    def _call(self, verb: str, name: str, func: Callable[..., T], *args: Any) -> T:
        try:
            return func(*args)
        except Exception as exc:
            translated = self._translate(verb, name, exc)
            if translated is exc:
                raise
            raise translated from exc

    def _translate(self, verb: str, name: str, error: BaseException) -> BaseException:
        """The exception the replication core understands for a failure of the storage.

        Django storages raise OSErrors (the breaker's and the fall-over's language)
        already; the S3 kind translates boto3's own.
        """
        return error

    def scrub(self, text: str) -> str:
        """``text`` without the storage's credentials, for a message that may be logged."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def close(self) -> None:
        """Let the target's threads finish and go (they come back on demand)."""
        runtime = self._runtime
        with runtime.lock:
            executor, runtime.executor = runtime.executor, None
        if executor is not None:
            executor.shutdown(wait=False)

    # --- writes -----------------------------------------------------------------------

    def start_put(self, name: str, body: Body) -> Callable[[], PutResult]:
        return self._submit(self._call, "PUT", name, self._put, name, body).result

    def put(self, name: str, body: Body) -> PutResult:
        return self.start_put(name, body)()

    def _put(self, name: str, body: Body) -> PutResult:
        existed = self._exists(name)
        handle = body.open()  # a missing master copy fails here, as it does for DAV
        try:
            saved = self.storage.save(name, _BodyFile(handle, name, body.size))
        finally:
            handle.close()
        if saved != name:
            # get_available_name changed since configuration (a subclass, a setting):
            # the copy under the other name is nobody's, and the replica is missing.
            self.storage.delete(saved)
            raise SuspiciousFileOperation(
                f"{self.label} stored {name!r} as {saved!r}; a replica must keep the "
                "master's name (file_overwrite=True)"
            )
        return PutResult(created=not existed)

    def start_delete(self, name: str) -> Callable[[], bool]:
        return self._submit(self._call, "DELETE", name, self._delete, name).result

    def delete(self, name: str) -> bool:
        return self.start_delete(name)()

    def _delete(self, name: str) -> bool:
        existed = self._exists(name)
        if existed:
            self.storage.delete(name)
        return existed

    def _exists(self, name: str) -> bool:
        return bool(self.storage.exists(name))

    # --- reads ------------------------------------------------------------------------

    def stat(self, name: str) -> Stat | None:
        return self._run("HEAD", name, self._stat, name)

    def exists(self, name: str) -> bool:
        return self._run("HEAD", name, self.storage.exists, name)

    def _stat(self, name: str) -> Stat | None:
        if not self.storage.exists(name):
            return None
        try:
            modified: str | None = _http_date(self.storage.get_modified_time(name))
        except NotImplementedError:
            modified = None
        return Stat(size=self.storage.size(name), modified=modified, etag=None)

    def open(self, name: str, *, headers: dict[str, str] | None = None) -> StoredStream:
        """``name`` as a stream; ``headers`` are for HTTP targets: a storage reads as stored."""
        return self._run("GET", name, self._open, name)

    def _open(self, name: str) -> StoredStream:
        handle = self.storage.open(name, "rb")
        try:
            size: int | None = handle.size
        except (AttributeError, OSError):
            size = None
        return StoredStream(handle, size, lambda exc: self._translate("GET", name, exc))

    def probe(self) -> int | None:
        """Ask the storage something cheap: the status it answered, when it speaks HTTP.

        Raises what the storage raised (translated) when it cannot be reached.
        """
        return self._run("HEAD", "", self._probe)

    def _probe(self) -> int | None:
        self.storage.exists("")
        return None

    # --- listing ----------------------------------------------------------------------

    def list(
        self,
        *,
        expected: Iterable[str] | None = None,
        workers: int = DEFAULT_WORKERS,
        mtimes: bool = False,
        **_: Any,
    ) -> Listing:
        """Every file of the storage, walked with ``listdir``, sized with ``size``.

        A storage that cannot list (``listdir`` not implemented) has each expected
        name asked for instead, like a media server without a listing: extra files
        are then not found. Keyword arguments for media servers (``method``,
        ``prefix``) mean nothing here. Raises ListingError if the storage fails.
        """
        listing = Listing(host=self.label, method=self.method)
        workers = max(1, min(workers, self.pool_size))
        try:
            try:
                self._walk(listing, workers, mtimes)
            except NotImplementedError:
                listing.method = "stat"
                listing.complete = False
                listing.notes.append(
                    f"{type(self.storage).__name__} cannot list its files: each expected file "
                    "is asked for, extra files cannot be detected."
                )
                self._probe_names(listing, sorted(expected or ()))
        except ListingError:
            raise
        except Exception as exc:
            raise ListingError(self.label, self.scrub(describe(exc))) from exc
        return listing

    def _walk(self, listing: Listing, workers: int, mtimes: bool) -> None:
        """Breadth-first, a directory per call, on the target's threads."""

        def one(directory: str) -> tuple[list[str], dict[str, Entry]]:
            dirs, files = self.storage.listdir(directory)
            found: dict[str, Entry] = {}
            for file_name in files:
                name = directory + file_name
                if not self._valid(name, listing):
                    continue
                found[name] = Entry(self.storage.size(name), self._mtime(name) if mtimes else None)
            return [f"{directory}{d}/" for d in dirs], found

        pending = [self._submit(self._call, "LIST", "", one, "")]
        while pending:
            future = pending.pop(0)
            listing.requests += 1
            subdirs, found = future.result()
            listing.files.update(found)
            pending.extend(self._submit(self._call, "LIST", d, one, d) for d in subdirs)

    def _mtime(self, name: str) -> datetime | None:
        try:
            return self.storage.get_modified_time(name)
        except NotImplementedError:
            return None

    def _probe_names(self, listing: Listing, names: Sequence[str]) -> None:
        futures = {name: self._submit(self._call, "HEAD", name, self._stat, name) for name in names}
        for name, future in futures.items():
            listing.requests += 1
            stat = future.result()
            if stat is not None:
                listing.files[name] = Entry(stat.size)

    @staticmethod
    def _valid(name: str, listing: Listing) -> bool:
        """Whether a listed name is one the storages could have written (and could act on)."""
        try:
            validate_name(name)
        except SuspiciousFileOperation:
            listing.notes.append(f"Ignored a name no storage could have written: {name!r}")
            return False
        return True


class S3Target(StorageTarget):
    """A replica in a bucket through django-storages' S3Storage.

    Writes go through the storage (``save`` streams the body with the storage's
    ``transfer_config``; see docs/object-storage.md for one that keeps boto3's
    multipart buffers small); HEAD, GET and the listing go through the storage's
    boto3 client, which says what the Storage API cannot: the ETag, a stream, and a
    thousand objects per request. botocore's failures become the transport's:
    a connection failure a StorageUnreachable (a TransportError: the breaker opens,
    DistributedStorage falls over), a refused request an UnexpectedStatusCode.
    """

    features: ClassVar[Features] = Features(listing=True, checksums=True, collections=False)
    method: ClassVar[str] = "s3"

    @property
    def bucket(self) -> str:
        return str(self.storage.bucket_name)  # type: ignore[attr-defined]

    @property
    def root(self) -> str:
        """The key prefix of the storage's ``location``: "" or ``"media/"``."""
        location = str(getattr(self.storage, "location", "") or "").strip("/")
        return f"{location}/" if location else ""

    @property
    def client(self) -> Any:
        """The storage's boto3 client (one per thread, as django-storages keeps them)."""
        return self.storage.connection.meta.client  # type: ignore[attr-defined]

    def _where(self, name: str) -> str:
        return f"s3://{self.bucket}/{self.root}{name}"

    def _read_parameters(self, key: str) -> dict[str, Any]:
        parameters = getattr(self.storage, "get_object_parameters", None)
        given = parameters(key) if parameters is not None else {}
        return {k: v for k, v in given.items() if k in _READ_PARAMETERS}

    def _translate(self, verb: str, name: str, error: BaseException) -> BaseException:
        status = _status_of(error)
        if status is not None:
            # S3's error code (SignatureDoesNotMatch, NoSuchBucket...); a HEAD has no body
            # to carry one, and botocore then gives the status again as the code.
            details = getattr(error, "response", {}).get("Error", {})
            code = str(details.get("Code", ""))
            if code.isdigit():
                code = str(details.get("Message", ""))
            return UnexpectedStatusCode(
                self.label, verb, self._where(name), status, self.scrub(code)
            )
        kind = type(error).__module__.split(".")[0]
        if kind not in ("botocore", "boto3", "urllib3", "s3transfer"):
            return error
        cause = error.__cause__ or error.__context__
        if kind == "boto3" and cause is not None:  # S3UploadFailedError wraps the real one
            return self._translate(verb, name, cause)
        message = f"{verb} {self._where(name)} on {self.label}: {self.scrub(describe(error))}"
        if "Timeout" in type(error).__name__:
            return StorageTimeout(message)
        return StorageUnreachable(message)

    def _exists(self, name: str) -> bool:
        return self._head(name) is not None

    def _head(self, name: str) -> dict[str, Any] | None:
        key = self.root + name
        try:
            return dict(
                self.client.head_object(Bucket=self.bucket, Key=key, **self._read_parameters(key))
            )
        except Exception as exc:
            if _status_of(exc) == 404:
                return None
            raise

    def _stat(self, name: str) -> Stat | None:
        head = self._head(name)
        if head is None:
            return None
        modified = head.get("LastModified")
        return Stat(
            size=head.get("ContentLength"),
            modified=_http_date(modified) if isinstance(modified, datetime) else None,
            etag=head.get("ETag"),
        )

    def _open(self, name: str) -> StoredStream:
        key = self.root + name
        try:
            answer = self.client.get_object(
                Bucket=self.bucket, Key=key, **self._read_parameters(key)
            )
        except Exception as exc:
            if _status_of(exc) == 404:
                raise FileNotFoundError(f"{name} does not exist on {self.label}") from None
            raise
        return StoredStream(
            answer["Body"],
            answer.get("ContentLength"),
            lambda exc: self._translate("GET", name, exc),
        )

    def _probe(self) -> int | None:
        answer = self.client.head_bucket(Bucket=self.bucket)
        return int(answer.get("ResponseMetadata", {}).get("HTTPStatusCode", 200))

    def list(
        self,
        *,
        expected: Iterable[str] | None = None,
        workers: int = DEFAULT_WORKERS,
        mtimes: bool = False,
        **_: Any,
    ) -> Listing:
        """Every object below the storage's location, a thousand per ListObjectsV2 page.

        Each entry keeps its ETag (:class:`ObjectEntry`), which ``resto_sync
        --checksum`` compares with the master copy's MD5 without a download.
        """
        listing = Listing(host=self.label, method=self.method)
        try:
            self._run("LIST", "", self._list_pages, listing, mtimes)
        except Exception as exc:
            raise ListingError(self.label, self.scrub(describe(exc))) from exc
        return listing

    def _list_pages(self, listing: Listing, mtimes: bool) -> None:
        root = self.root
        skip = len(root)
        files = listing.files
        paginator = self._listing_client().get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=root):
            listing.requests += 1
            for item in page.get("Contents", ()):
                name = item["Key"][skip:]
                if name.endswith("/") or not self._valid(name, listing):
                    continue  # a "folder" marker some tools create, or a foreign key
                files[name] = ObjectEntry(
                    item.get("Size"),
                    _timestamp(item.get("LastModified")) if mtimes else None,
                    item.get("ETag"),
                )

    def _listing_client(self) -> Any:
        """A client of the storage's bucket whose answers keep their timestamps as text.

        botocore parses every LastModified of a listing with dateutil, which is most of
        the time an audit of 100,000 objects takes. A session of its own, with botocore's
        ``timestamp_parser`` parser default, skips that without changing what the
        storage's own client answers. It is built from the settings S3Storage builds its
        connection from; a storage without them is listed with its own client.
        """
        storage: Any = self.storage
        needed = ("access_key", "secret_key", "security_token", "endpoint_url", "client_config")
        if not all(hasattr(storage, attribute) for attribute in needed):
            return self.client
        import boto3  # type: ignore[import-untyped]
        import botocore.session  # type: ignore[import-untyped]

        core = botocore.session.get_session()
        core.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=str)
        profile = getattr(storage, "session_profile", None)
        if profile:
            session = boto3.Session(botocore_session=core, profile_name=profile)
        else:
            session = boto3.Session(
                botocore_session=core,
                aws_access_key_id=storage.access_key,
                aws_secret_access_key=storage.secret_key,
                aws_session_token=storage.security_token,
            )
        return session.client(
            "s3",
            region_name=getattr(storage, "region_name", None),
            use_ssl=getattr(storage, "use_ssl", True),
            endpoint_url=storage.endpoint_url,
            config=storage.client_config,
            verify=getattr(storage, "verify", None),
        )


def _status_of(error: BaseException) -> int | None:
    """The HTTP status of a botocore ClientError (or anything shaped like one); else None."""
    response = getattr(error, "response", None)
    if not isinstance(response, dict):
        return None
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return status if isinstance(status, int) else None


def _timestamp(value: object) -> datetime | None:
    """A listed LastModified: text from the listing client (ISO 8601), else a datetime."""
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    return None


def _http_date(moment: datetime) -> str:
    """``moment`` as an HTTP date, the form Stat carries (a media server's Last-Modified)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return format_datetime(moment.astimezone(UTC), usegmt=True)


def storage_target(label: str, storage: Storage, *, pool_size: int = 4) -> StorageTarget:
    """The target for ``storage``: S3Target for an S3Storage-shaped one, else StorageTarget."""
    s3_shaped = hasattr(storage, "bucket_name") and hasattr(type(storage), "connection")
    kind = S3Target if s3_shaped else StorageTarget
    return kind(label, storage, pool_size=pool_size)
