"""HybridStorage and AsyncStorage where FileSystemStorage was, and code written for 1.3 (#14).

Each section is one point of the issue: FileSystemStorage's positional parameters,
path-like names, absolute names and directories in delete(), the OS_OPEN_FLAGS
deprecation, the 1.3 logger and messages, and the exceptions 1.3 code catches.
Django's own tests/file_storage run against HybridStorage in scripts/django-storage-contract.
"""

from __future__ import annotations

import inspect
import logging
import os
import pickle
import tempfile
import warnings
from pathlib import Path, PurePosixPath, PureWindowsPath

import django
import pytest
import requests
from django.core.exceptions import SuspiciousFileOperation
from django.core.files.base import ContentFile
from django.core.files.storage import FileSystemStorage

from django_resto.exceptions import (
    JournalError,
    JournalStatusError,
    ReplicationError,
    ReplicationStatusError,
    UnexpectedStatusCode,
)
from django_resto.fanout import Outcome
from django_resto.journal import JournalUnavailable
from django_resto.models import PendingReplication
from django_resto.settings import LOCAL_OPTIONS
from django_resto.storage import AsyncStorage, DistributedStorage, HybridStorage

pytestmark = pytest.mark.django_db

DJANGO_HAS_OS_OPEN_FLAGS = django.VERSION < (6, 0)


def hosts(servers) -> list[str]:
    return [server.host for server in servers]


def status_error(host: str, status: int = 500) -> UnexpectedStatusCode:
    return UnexpectedStatusCode(host, "PUT", f"/media/{host}", status, "Internal Server Error")


# --- FileSystemStorage's positional parameters -------------------------------------------


def test_local_options_follow_filesystemstorage_signature():
    """The positional order is FileSystemStorage's; a Django that changes it must fail here."""
    parameters = list(inspect.signature(FileSystemStorage.__init__).parameters)[1:]
    assert tuple(parameters) == LOCAL_OPTIONS


@pytest.mark.parametrize("cls", [HybridStorage, AsyncStorage])
def test_location_and_the_rest_positionally(cls, tmp_path):
    storage = cls(str(tmp_path), "/files/", 0o640, 0o750, True)
    assert storage.location == str(tmp_path)
    assert storage.base_url == "/files/"
    assert (storage.file_permissions_mode, storage.directory_permissions_mode) == (0o640, 0o750)
    assert storage._allow_overwrite is True
    # Deconstructed as called, like FileSystemStorage: a migration rebuilds the same storage.
    path, args, kwargs = cls(str(tmp_path)).deconstruct()
    assert (path, args, kwargs) == (f"django_resto.storage.{cls.__name__}", (str(tmp_path),), {})


def test_positional_location_with_hosts_replicates(test_servers, tmp_path):
    (server,) = test_servers()
    storage = HybridStorage(str(tmp_path), hosts=[server.host], journal_alias="tests")
    assert storage.save("a.txt", ContentFile(b"a")) == "a.txt"
    assert (tmp_path / "a.txt").read_bytes() == server.read("a.txt") == b"a"


def test_positional_misuse_is_a_type_error(tmp_path):
    with pytest.raises(TypeError, match="at most 5 positional"):
        HybridStorage(str(tmp_path), None, None, None, False, "extra")
    with pytest.raises(TypeError, match="multiple values for 'location'"):
        HybridStorage(str(tmp_path), location=str(tmp_path))


def test_positional_location_matches_its_storages_entry(settings, tmp_path):
    """The journal finds the alias of a storage built positionally, as with keywords."""
    settings.STORAGES = {
        **settings.STORAGES,
        "media": {
            "BACKEND": "django_resto.storage.HybridStorage",
            "OPTIONS": {"location": str(tmp_path)},
        },
    }
    assert HybridStorage(str(tmp_path)).journal_key == "media"


# --- path-like names ------------------------------------------------------------------------


def test_hybrid_accepts_path_names(test_servers, media_root):
    servers = test_servers(2)
    storage = HybridStorage(journal_alias="tests", hosts=hosts(servers))
    name = storage.save(Path("a/b.txt"), ContentFile(b"b"))
    assert name == "a/b.txt"
    assert [server.read("a/b.txt") for server in servers] == [b"b", b"b"]
    assert storage.exists(Path("a/b.txt"))
    with storage.open(Path("a/b.txt")) as handle:
        assert handle.read() == b"b"
    storage.delete(Path("a/b.txt"))
    assert not (media_root / "a/b.txt").exists()
    assert [server.exists("a/b.txt") for server in servers] == [False, False]
    assert PendingReplication.objects.count() == 0


def test_distributed_accepts_path_names(test_servers):
    servers = test_servers(2)
    storage = DistributedStorage(journal_alias="tests", hosts=hosts(servers))
    assert storage.save(PurePosixPath("p/q.txt"), ContentFile(b"q")) == "p/q.txt"
    assert storage.exists(Path("p/q.txt"))
    assert storage.size(Path("p/q.txt")) == 1
    with storage.open(Path("p/q.txt")) as handle:
        assert handle.read() == b"q"
    storage.delete(Path("p/q.txt"))
    assert [server.exists("p/q.txt") for server in servers] == [False, False]


@pytest.mark.parametrize(
    "name", [Path("../x"), Path("a/../../x"), PureWindowsPath("a\\b"), Path("a/\nb")]
)
def test_path_names_are_validated_like_strings(test_servers, name):
    (server,) = test_servers()
    hybrid = HybridStorage(journal_alias="tests", hosts=[server.host])
    distributed = DistributedStorage(journal_alias="tests", hosts=[server.host])
    for storage in (hybrid, distributed):
        with pytest.raises(SuspiciousFileOperation):
            storage.save(name, ContentFile(b"x"))
        with pytest.raises(SuspiciousFileOperation):
            storage.delete(name)
    for method in (distributed.exists, distributed.open, distributed.size):
        with pytest.raises(SuspiciousFileOperation):
            method(name)
    assert server.requests == []


def test_bytes_names_are_refused(test_servers):
    (server,) = test_servers()
    storage = DistributedStorage(journal_alias="tests", hosts=[server.host])
    with pytest.raises(SuspiciousFileOperation, match="path-like"):
        storage.exists(b"a.txt")  # type: ignore[arg-type]
    assert server.requests == []


# --- delete(): absolute names and directories --------------------------------------------


def test_delete_of_an_absolute_name_inside_the_location(test_servers, media_root):
    servers = test_servers(2)
    storage = HybridStorage(journal_alias="tests", hosts=hosts(servers))
    storage.save("d/f.txt", ContentFile(b"f"))
    storage.delete(str(media_root / "d" / "f.txt"))
    assert not (media_root / "d/f.txt").exists()
    # The hosts are told the relative name, as for any delete.
    assert [server.exists("d/f.txt") for server in servers] == [False, False]
    assert [r.path for r in servers[0].requests if r.method == "DELETE"] == ["/media/d/f.txt"]


def test_delete_of_an_empty_directory_removes_it_locally_only(test_servers, media_root):
    """As FileSystemStorage does, os.rmdir; the hosts get no request, above all no DELETE
    of a collection, which WebDAV makes recursive."""
    servers = test_servers(2)
    storage = HybridStorage(journal_alias="tests", hosts=hosts(servers))
    storage.save("keep/x.txt", ContentFile(b"x"))
    for server in servers:
        server.clear_log()
    empty = tempfile.mkdtemp(dir=storage.location)
    storage.delete(empty)
    assert not os.path.exists(empty)
    (media_root / "rel").mkdir()
    storage.delete(Path("rel"))
    assert not (media_root / "rel").exists()
    assert [server.requests for server in servers] == [[], []]
    assert PendingReplication.objects.count() == 0


def test_delete_of_a_full_directory_raises_and_sends_nothing(test_servers, media_root):
    (server,) = test_servers()
    storage = HybridStorage(journal_alias="tests", hosts=[server.host])
    storage.save("full/x.txt", ContentFile(b"x"))
    server.clear_log()
    with pytest.raises(OSError):
        storage.delete(str(media_root / "full"))
    assert (media_root / "full/x.txt").exists()
    assert server.read("full/x.txt") == b"x"
    assert server.requests == []


@pytest.mark.django_db(transaction=True)
def test_async_delete_of_a_directory_schedules_nothing(test_servers, media_root):
    (server,) = test_servers()
    storage = AsyncStorage(journal_alias="tests", hosts=[server.host])
    (media_root / "empty").mkdir()
    storage.delete(str(media_root / "empty"))
    assert storage.wait(timeout=10)  # our addition to 1.3's API, kept
    assert not (media_root / "empty").exists()
    assert server.requests == []
    assert PendingReplication.objects.count() == 0


@pytest.mark.parametrize("where", ["outside", "location", "dotdot", "sibling"])
def test_delete_refuses_other_absolute_names(test_servers, media_root, where):
    (server,) = test_servers()
    storage = HybridStorage(journal_alias="tests", hosts=[server.host])
    name = {
        "outside": "/etc/passwd",
        "location": str(media_root),
        "dotdot": f"{media_root}/a/../../x",
        "sibling": f"{media_root}-other/x",
    }[where]
    with pytest.raises(SuspiciousFileOperation):
        storage.delete(name)
    assert media_root.is_dir()
    assert server.requests == []


# --- OS_OPEN_FLAGS ---------------------------------------------------------------------------


def test_os_open_flags_is_ignored_and_silent_as_in_django_6(tmp_path):
    """Django 6.0 removed OS_OPEN_FLAGS: an override warns nothing and changes nothing."""
    if DJANGO_HAS_OS_OPEN_FLAGS:
        assert hasattr(FileSystemStorage, "OS_OPEN_FLAGS")  # Django 5.2: the next test
        return

    class Overwriting(HybridStorage):
        OS_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        storage = Overwriting(location=str(tmp_path))
        storage.save("o.txt", ContentFile(b"first"))
        second = storage.save("o.txt", ContentFile(b"second"))
    assert caught == []
    assert not hasattr(FileSystemStorage, "OS_OPEN_FLAGS")
    assert second != "o.txt"  # the override did not make Django overwrite
    assert (tmp_path / "o.txt").read_bytes() == b"first"


def test_os_open_flags_override_warns_once_at_the_callers_line(tmp_path):
    if not DJANGO_HAS_OS_OPEN_FLAGS:
        assert not hasattr(FileSystemStorage, "OS_OPEN_FLAGS")  # Django 6: the test above
        return
    from django.utils.deprecation import RemovedInDjango60Warning

    class Overwriting(HybridStorage):
        OS_OPEN_FLAGS = FileSystemStorage.OS_OPEN_FLAGS & ~os.O_EXCL

        def get_available_name(self, name, max_length=None):
            return name

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        storage = Overwriting(location=str(tmp_path))
        HybridStorage(location=str(tmp_path))  # no override, no warning
    assert [(w.category, w.filename, str(w.message)) for w in caught] == [
        (
            RemovedInDjango60Warning,
            __file__,
            "Overriding OS_OPEN_FLAGS is deprecated. Use the allow_overwrite parameter instead.",
        )
    ]
    # The subclass's flags are still the ones Django opens files with.
    assert "OS_OPEN_FLAGS" not in vars(storage)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RemovedInDjango60Warning)
        storage.save("o.txt", ContentFile(b"first"))
        assert storage.save("o.txt", ContentFile(b"second")) == "o.txt"
    assert (tmp_path / "o.txt").read_bytes() == b"second"


# --- 1.3's logger and messages ---------------------------------------------------------------


@pytest.fixture
def storage_log():
    """Records on the django_resto.storage logger, where 1.3 logged."""

    class Collect(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.DEBUG)
            self.records: list[logging.LogRecord] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.records.append(record)

    handler = Collect()
    logger = logging.getLogger("django_resto.storage")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def test_the_1_3_logger_hears_the_1_3_messages(test_servers, storage_log, resto_log):
    servers = test_servers(2)
    storage = HybridStorage(
        journal_alias="tests", hosts=hosts(servers), fatal_exceptions=False, allow_overwrite=True
    )
    servers[1].write("over.txt", b"old")
    storage.save("over.txt", ContentFile(b"new"))
    storage.delete("over.txt")
    storage.delete("never.txt")
    servers[1].force_status(500)
    storage.save("up.txt", ContentFile(b"u"))
    storage.delete("up.txt")
    messages = [record.getMessage() for record in storage_log.records]
    host = servers[1].host
    assert f"PUT on existing file over.txt on {host}" in messages
    assert f"DELETE on missing file never.txt on {servers[0].host}" in messages
    assert any(m.startswith(f"Failed to upload up.txt on {host}: ") for m in messages)
    assert any(m.startswith(f"Failed to delete up.txt on {host}: ") for m in messages)
    # The verb, name, host and error stay separate arguments, for handlers that parse them.
    failed = [r for r in storage_log.records if r.levelno == logging.ERROR]
    assert [r.args[:3] for r in failed] == [("upload", "up.txt", host), ("delete", "up.txt", host)]
    # The package logger hears the same records: it is their parent.
    assert {r.name for r in resto_log.records} >= {"django_resto.storage"}
    assert all(r.name.startswith("django_resto") for r in resto_log.records)


def test_modules_log_on_their_own_child_loggers():
    from django_resto import journal, ordering, storage, transport

    for module in (journal, ordering, storage, transport):
        assert module.logger.name == module.__name__
        assert module.logger.parent is logging.getLogger("django_resto")


# --- the exceptions 1.3 code catches ---------------------------------------------------------


def test_a_save_refused_by_status_is_caught_by_except_unexpected_status_code(test_servers):
    servers = test_servers(3)
    servers[0].force_status(507, methods="PUT")
    servers[2].force_status(403, methods="PUT")
    storage = HybridStorage(journal_alias="tests", hosts=hosts(servers))
    try:
        storage.save("s.txt", ContentFile(b"s"))
    except UnexpectedStatusCode as error:  # the clause 1.3 code has
        caught = error
    assert isinstance(caught, ReplicationError)
    assert type(caught) is ReplicationStatusError
    assert caught.hosts == [servers[0].host, servers[2].host]
    # UnexpectedStatusCode's attributes are the first failed host's; all stay reachable.
    assert (caught.host, caught.method, caught.status) == (servers[0].host, "PUT", 507)
    assert [error.status for error in caught.exceptions] == [507, 403]
    assert [outcome.error for outcome in caught.failures] == list(caught.exceptions)
    assert str(caught).startswith("PUT 's.txt' failed on 2 of 3 media server(s): ")


def test_mixed_failures_are_a_group_for_except_star(test_servers, monkeypatch):
    servers = test_servers(3)
    servers[1].force_status(500, methods="PUT")
    servers[2].stop()
    storage = HybridStorage(journal_alias="tests", hosts=hosts(servers), timeout=2)
    with pytest.raises(ReplicationError) as info:
        storage.save("m.txt", ContentFile(b"m"))
    error = info.value
    # Not every host answered a status: a plain except UnexpectedStatusCode must not claim it.
    assert not isinstance(error, UnexpectedStatusCode)
    assert isinstance(error, ExceptionGroup)
    statuses, network = [], []
    try:
        raise error
    except* UnexpectedStatusCode as group:
        statuses.append(group)
    except* ConnectionError as group:
        network.append(group)
    # Each part is a ReplicationError about its own hosts (a status part is a status error).
    (status_part,) = statuses
    assert type(status_part) is ReplicationStatusError
    assert status_part.hosts == [servers[1].host]
    (network_part,) = network
    assert type(network_part) is ReplicationError
    assert network_part.hosts == [servers[2].host]
    # A group is never an OSError; subgroup() is the non-except* way to the network errors.
    assert not isinstance(error, OSError)
    assert error.subgroup(OSError).hosts == [servers[2].host]


def test_replication_errors_pickle_as_what_they_are():
    failures = [
        Outcome("a:80", error=status_error("a:80")),
        Outcome("b:80", error=status_error("b:80", 502)),
    ]
    for error in (
        ReplicationError("PUT", "x", failures, total=3),
        ReplicationError("PUT", "x", [Outcome("a:80", error=requests.ConnectionError("down"))]),
        JournalError("DELETE", "x", failures, detail="db down"),
    ):
        clone = pickle.loads(pickle.dumps(error))
        assert type(clone) is type(error)
        assert (clone.operation, clone.name, clone.hosts, clone.total, clone.detail) == (
            error.operation,
            error.name,
            error.hosts,
            error.total,
            error.detail,
        )
        assert str(clone) == str(error)


def test_journal_errors_keep_being_replication_errors():
    failures = [Outcome("a:80", error=status_error("a:80"))]
    error = JournalError("PUT", "x", failures, total=2, detail="the journal is down")
    assert type(error) is JournalStatusError
    assert isinstance(error, JournalError)
    assert isinstance(error, ReplicationError)
    assert isinstance(error, UnexpectedStatusCode)
    assert error.status == 500
    assert str(error).endswith(". the journal is down")
    # An intent that could not be recorded: no host failed; the group holds the reason.
    intent = JournalError("SYNC", "x", detail="could not write the journal")
    assert type(intent) is JournalError
    assert intent.hosts == []
    assert str(intent) == "SYNC 'x': could not write the journal"
    (reason,) = intent.exceptions
    assert isinstance(reason, JournalUnavailable)


def test_a_read_from_a_single_host_raises_what_it_raised(test_servers):
    (server,) = test_servers()
    storage = DistributedStorage(journal_alias="tests", hosts=[server.host])
    server.force_status(503)
    with pytest.raises(UnexpectedStatusCode) as info:
        storage.exists("r.txt")
    assert type(info.value) is UnexpectedStatusCode
    assert info.value.status == 503
    server.stop()
    with pytest.raises(ConnectionError):
        storage.open("r.txt")


def test_a_read_that_every_host_refused_by_status(test_servers):
    servers = test_servers(2)
    for server in servers:
        server.force_status(503)
    storage = DistributedStorage(journal_alias="tests", hosts=hosts(servers))
    with pytest.raises(UnexpectedStatusCode) as info:
        storage.size("r.txt")
    assert isinstance(info.value, ReplicationError)
    assert info.value.hosts == hosts(servers)
    assert str(info.value).startswith("HEAD 'r.txt' failed on 2 of 2 media server(s)")
