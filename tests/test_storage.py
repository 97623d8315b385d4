"""The storages' behaviour and failure policy, against in-process servers with faults."""

from __future__ import annotations

import logging
import pickle
import socket
import tracemalloc

import pytest
from django.core.exceptions import SuspiciousFileOperation
from django.core.files.base import ContentFile, File
from django.core.files.uploadedfile import SimpleUploadedFile, TemporaryUploadedFile

from django_resto.exceptions import ReplicationError, UnexpectedStatusCode
from django_resto.models import PendingReplication
from django_resto.storage import AsyncStorage, DistributedStorage, HybridStorage

# Tests where replication threads write the journal use transaction=True: the test
# case's own transaction would otherwise hold SQLite's write lock against them.
pytestmark = pytest.mark.django_db


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def hosts(servers) -> list[str]:
    return [server.host for server in servers]


def rows() -> list[tuple[str, str, str]]:
    return sorted(PendingReplication.objects.values_list("host", "name", "operation"))


# --- Hybrid ------------------------------------------------------------------------------


def test_hybrid_saves_locally_then_on_every_host(test_servers, media_root):
    servers = test_servers(3)
    storage = HybridStorage(journal_alias="tests", hosts=hosts(servers))
    name = storage.save("uploads/2026/11/x.jpg", ContentFile(b"jpeg bytes"))
    assert name == "uploads/2026/11/x.jpg"
    assert (media_root / name).read_bytes() == b"jpeg bytes"
    assert [server.read(name) for server in servers] == [b"jpeg bytes"] * 3
    assert storage.url(name) == "/media/uploads/2026/11/x.jpg"
    assert rows() == []


def test_hybrid_reads_are_local(test_servers, media_root):
    (server,) = test_servers()
    storage = HybridStorage(journal_alias="tests", hosts=[server.host])
    storage.save("a.txt", ContentFile(b"abc"))
    server.clear_log()
    assert storage.exists("a.txt")
    assert storage.size("a.txt") == 3
    assert storage.open("a.txt").read() == b"abc"
    assert storage.listdir("") == ([], ["a.txt"])
    assert storage.path("a.txt") == str(media_root / "a.txt")
    storage.get_modified_time("a.txt")
    assert server.requests == []


def test_hybrid_delete_removes_local_then_remote(test_servers, media_root):
    servers = test_servers(2)
    storage = HybridStorage(journal_alias="tests", hosts=hosts(servers))
    storage.save("a/b.txt", ContentFile(b"b"))
    storage.delete("a/b.txt")
    assert not (media_root / "a/b.txt").exists()
    assert [server.exists("a/b.txt") for server in servers] == [False, False]


def test_hybrid_delete_of_a_file_missing_remotely_only_warns(test_servers, resto_log):
    (server,) = test_servers()
    storage = HybridStorage(journal_alias="tests", hosts=[server.host])
    storage.delete("never-there.txt")
    warnings = [r for r in resto_log.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        f"DELETE on missing file never-there.txt on {server.host}"
    ]
    assert not [r for r in resto_log.records if r.levelno >= logging.ERROR]


def test_put_on_existing_file_is_logged(test_servers, resto_log):
    (server,) = test_servers()
    server.write("a.txt", b"stale")
    HybridStorage(journal_alias="tests", hosts=[server.host], allow_overwrite=True).save(
        "a.txt", ContentFile(b"new")
    )
    assert server.read("a.txt") == b"new"
    assert f"PUT on existing file a.txt on {server.host}" in resto_log.messages


def test_available_name_uses_the_master_copy(test_servers):
    (server,) = test_servers()
    storage = HybridStorage(journal_alias="tests", hosts=[server.host])
    first = storage.save("dup.txt", ContentFile(b"1"))
    second = storage.save("dup.txt", ContentFile(b"2"))
    assert first == "dup.txt"
    assert second != first and second.startswith("dup_") and second.endswith(".txt")
    assert server.read(second) == b"2"


@pytest.mark.parametrize(
    ("fault", "error_type", "detail"),
    [
        ("403", UnexpectedStatusCode, "answered unexpected status 403"),
        ("500", UnexpectedStatusCode, "answered unexpected status 500"),
        ("202", UnexpectedStatusCode, "answered unexpected status 202"),
        ("refused", "ConnectionError", "ConnectionError"),
        ("hang", "ReadTimeout", "ReadTimeout"),
    ],
)
def test_one_failed_host_of_three_fatal(test_servers, resto_log, fault, error_type, detail):
    servers = test_servers(3)
    broken = servers[1]
    if fault == "refused":
        broken.stop()
    elif fault == "hang":
        broken.hang()
    else:
        broken.force_status(int(fault), methods="PUT")
    storage = HybridStorage(journal_alias="tests", hosts=hosts(servers), timeout=0.5)
    with pytest.raises(ReplicationError) as info:
        storage.save("x.txt", ContentFile(b"x"))
    error = info.value
    assert error.hosts == [broken.host]
    assert (error.operation, error.name, error.total) == ("PUT", "x.txt", 3)
    assert str(error).startswith(f"PUT 'x.txt' failed on 1 of 3 media server(s): {broken.host} (")
    assert detail in str(error)
    failed = error.failures[0].error
    expected = error_type if isinstance(error_type, str) else error_type.__name__
    assert expected in [cls.__name__ for cls in type(failed).__mro__]
    # The other two hosts and the master copy have the file; the journal has the third.
    assert servers[0].read("x.txt") == servers[2].read("x.txt") == b"x"
    assert rows() == [(broken.host, "x.txt", "PUT")]
    errors = [r for r in resto_log.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].getMessage().startswith(f"Failed to upload x.txt on {broken.host}: ")
    assert errors[0].exc_info is None  # show_traceback is off
    if fault == "hang":
        broken.release()


def test_not_fatal_logs_and_journals_without_raising(test_servers, resto_log):
    servers = test_servers(3)
    servers[0].force_status(500)
    servers[2].read_only = True
    storage = HybridStorage(
        journal_alias="tests", hosts=hosts(servers), fatal_exceptions=False, show_traceback=True
    )
    assert storage.save("x.txt", ContentFile(b"x")) == "x.txt"
    assert [server.exists("x.txt") for server in servers] == [False, True, False]
    assert rows() == sorted([(servers[0].host, "x.txt", "PUT"), (servers[2].host, "x.txt", "PUT")])
    errors = [r for r in resto_log.records if r.levelno == logging.ERROR]
    assert sorted(r.getMessage().split(": ")[0] for r in errors) == sorted(
        f"Failed to upload x.txt on {server.host}" for server in (servers[0], servers[2])
    )
    assert all(r.exc_info is not None for r in errors)  # show_traceback is on
    row = PendingReplication.objects.get(host=servers[2].host)
    assert row.attempts == 1
    assert "403" in row.last_error


def test_every_failed_host_is_named(test_servers):
    servers = test_servers(3)
    for server in servers:
        server.force_status(507, methods="DELETE")
    storage = HybridStorage(journal_alias="tests", hosts=hosts(servers))
    storage.save("a.txt", ContentFile(b"a"))
    with pytest.raises(ReplicationError) as info:
        storage.delete("a.txt")
    assert info.value.hosts == hosts(servers)
    assert "failed on 3 of 3 media server(s)" in str(info.value)
    assert rows() == [
        (server.host, "a.txt", "DELETE") for server in sorted(servers, key=lambda s: s.host)
    ]


def test_success_clears_an_older_journal_row(test_servers):
    servers = test_servers(2)
    # The journal's rule, not the breaker's (test_breaker.py): the next operation goes out.
    storage = HybridStorage(
        journal_alias="tests", hosts=hosts(servers), fatal_exceptions=False, breaker_window=0
    )
    servers[1].force_status(500)
    storage.save("a.txt", ContentFile(b"1"))
    assert rows() == [(servers[1].host, "a.txt", "PUT")]
    servers[1].force_status(None)
    storage.delete("a.txt")
    assert rows() == []


def test_quorum_write_succeeds_with_enough_hosts(test_servers):
    servers = test_servers(3)
    servers[2].force_status(500)
    storage = HybridStorage(
        journal_alias="tests", hosts=hosts(servers), fatal_exceptions=False, min_replicas=2
    )
    assert storage.save("q.txt", ContentFile(b"q")) == "q.txt"
    assert rows() == [(servers[2].host, "q.txt", "PUT")]


def test_quorum_write_below_w_raises_even_when_not_fatal(test_servers):
    servers = test_servers(3)
    servers[1].force_status(500)
    servers[2].force_status(500)
    storage = HybridStorage(
        journal_alias="tests", hosts=hosts(servers), fatal_exceptions=False, min_replicas=2
    )
    with pytest.raises(ReplicationError, match="Only 1 acknowledged; at least 2 required"):
        storage.save("q.txt", ContentFile(b"q"))
    assert [host for host, _, _ in rows()] == sorted([servers[1].host, servers[2].host])


@pytest.mark.parametrize(
    "name", ["/etc/passwd", "../x", "a/../../x", "a\\b", "a\x00b", "a\nb", "a//b"]
)
def test_bad_names_never_leave_the_process(test_servers, name):
    (server,) = test_servers()
    for storage in (
        HybridStorage(journal_alias="tests", hosts=[server.host]),
        DistributedStorage(journal_alias="tests", hosts=[server.host]),
    ):
        with pytest.raises(SuspiciousFileOperation):
            storage.save(name, ContentFile(b"x"))
        with pytest.raises(SuspiciousFileOperation):
            storage.delete(name)
    distributed = DistributedStorage(journal_alias="tests", hosts=[server.host])
    for method in (distributed.exists, distributed.open, distributed.size):
        with pytest.raises(SuspiciousFileOperation):
            method(name)
    assert server.requests == []


def test_no_hosts_means_local_only(media_root):
    storage = HybridStorage()
    assert storage.hosts == ()
    assert storage.save("a.txt", ContentFile(b"a")) == "a.txt"
    assert (media_root / "a.txt").read_bytes() == b"a"


def test_big_file_streams_to_three_hosts_in_bounded_memory(test_servers, tmp_path):
    servers = test_servers(3)
    storage = HybridStorage(journal_alias="tests", hosts=hosts(servers))
    size = 48 * 1024 * 1024
    source = tmp_path / "big.bin"
    with open(source, "wb") as out:
        for index in range(size // (1024 * 1024)):
            out.write(bytes([index % 256]) * (1024 * 1024))
    tracemalloc.start()
    try:
        with open(source, "rb") as handle:
            name = storage.save("big.bin", File(handle))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Python-level allocations of the whole operation, the in-process servers included:
    # a backend that read the file (or three copies of it) would peak above 48 MiB.
    assert peak < 8 * 1024 * 1024, peak
    expected = source.read_bytes()
    assert [server.read(name) == expected for server in servers] == [True] * 3


@pytest.mark.django_db(transaction=True)
def test_storages_deconstruct_and_pickle(test_servers):
    (server,) = test_servers()
    for cls in (HybridStorage, AsyncStorage, DistributedStorage):
        storage = cls(hosts=[server.host], timeout=3, journal_alias="tests")
        path, args, kwargs = storage.deconstruct()
        assert path == f"django_resto.storage.{cls.__name__}"
        assert (args, kwargs) == (
            (),
            {"hosts": [server.host], "timeout": 3, "journal_alias": "tests"},
        )
        storage.save(f"{cls.__name__}.txt", ContentFile(b"x"))  # opens sessions and pools
        if isinstance(storage, AsyncStorage):
            assert storage.wait(timeout=10)
        clone = pickle.loads(pickle.dumps(storage))
        assert clone.hosts == (server.host,)
        clone.save(f"{cls.__name__}-clone.txt", ContentFile(b"y"))
        if isinstance(clone, AsyncStorage):
            assert clone.wait(timeout=10)
        assert server.read(f"{cls.__name__}-clone.txt") == b"y"


# --- Async ---------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_async_replicates_in_the_background(test_servers, media_root):
    servers = test_servers(3)
    storage = AsyncStorage(journal_alias="tests", hosts=hosts(servers), async_workers=2)
    names = [storage.save(f"uploads/{i}.txt", ContentFile(str(i).encode())) for i in range(20)]
    assert storage.wait(timeout=20)
    for server in servers:
        assert {name: server.read(name) for name in names} == {
            name: (media_root / name).read_bytes() for name in names
        }
    assert rows() == []
    assert storage.background.executor._max_workers == 2


@pytest.mark.django_db(transaction=True)
def test_async_records_intent_until_done_and_never_raises(test_servers, resto_log):
    servers = test_servers(2)
    servers[1].hang()
    storage = AsyncStorage(journal_alias="tests", hosts=hosts(servers), timeout=0.5)
    storage.save("a.txt", ContentFile(b"a"))  # returns at once, though a host hangs
    assert servers[1].wait_until_hanging(1, timeout=5)
    # While replication is in flight, the hanging host's intent is journaled.
    assert (servers[1].host, "a.txt", "SYNC") in rows()
    assert storage.wait(timeout=10)
    servers[1].release()
    assert servers[0].read("a.txt") == b"a"
    assert rows() == [(servers[1].host, "a.txt", "SYNC")]
    assert "ReadTimeout" in PendingReplication.objects.get().last_error
    assert any(
        r.getMessage().startswith(f"Failed to sync a.txt on {servers[1].host}")
        for r in resto_log.records
    )


@pytest.mark.django_db(transaction=True)
def test_async_put_then_delete_ends_deleted(test_servers):
    servers = test_servers(2)
    # A generous timeout: a failure here must mean a wrong order, not a slow machine.
    storage = AsyncStorage(journal_alias="tests", hosts=hosts(servers), async_workers=4, timeout=30)
    for _ in range(10):
        storage.save("flip.txt", ContentFile(b"x"))
        storage.delete("flip.txt")
    assert storage.wait(timeout=20)
    assert [server.exists("flip.txt") for server in servers] == [False, False]
    assert rows() == []


@pytest.mark.django_db(transaction=True)
def test_async_wait_timeout(test_servers):
    (server,) = test_servers()
    server.hang()
    storage = AsyncStorage(journal_alias="tests", hosts=[server.host], timeout=5)
    storage.save("a.txt", ContentFile(b"a"))
    assert storage.wait(timeout=0.2) is False
    server.release()
    assert storage.wait(timeout=10) is True


# --- Distributed ---------------------------------------------------------------------------


def test_distributed_stores_only_remotely(test_servers, media_root):
    servers = test_servers(3)
    storage = DistributedStorage(journal_alias="tests", hosts=hosts(servers))
    name = storage.save("uploads/x.jpg", SimpleUploadedFile("x.jpg", b"pixels"))
    assert [server.read(name) for server in servers] == [b"pixels"] * 3
    assert list(media_root.iterdir()) == []
    assert storage.exists(name) is True
    assert storage.exists("nope.jpg") is False
    assert storage.size(name) == 6
    with storage.open(name) as handle:
        assert handle.read() == b"pixels"
    assert storage.get_modified_time(name).tzinfo is not None
    assert storage.url(name) == "/media/uploads/x.jpg"
    storage.delete(name)
    assert [server.exists(name) for server in servers] == [False] * 3


def test_distributed_temporary_upload_and_available_name(test_servers):
    servers = test_servers(2)
    storage = DistributedStorage(journal_alias="tests", hosts=hosts(servers))
    upload = TemporaryUploadedFile("big.bin", "application/octet-stream", 5, None)
    upload.write(b"12345")
    upload.seek(0)
    assert storage.save("big.bin", upload) == "big.bin"
    second = storage.save("big.bin", ContentFile(b"other"))
    assert second != "big.bin"  # exists() asked a media server
    assert servers[1].read("big.bin") == b"12345"
    assert servers[1].read(second) == b"other"


def test_distributed_reads_fall_over_to_the_next_host(test_servers):
    servers = test_servers(3)
    storage = DistributedStorage(journal_alias="tests", hosts=hosts(servers))
    storage.save("a.txt", ContentFile(b"abc"))
    servers[0].stop()
    servers[1].force_status(503)
    assert storage.exists("a.txt") is True
    assert storage.size("a.txt") == 3
    assert storage.open("a.txt").read() == b"abc"


def test_distributed_reads_fail_when_no_host_answers(test_servers):
    servers = test_servers(2)
    storage = DistributedStorage(journal_alias="tests", hosts=hosts(servers))
    for server in servers:
        server.stop()
    with pytest.raises(ReplicationError, match=r"HEAD 'a\.txt' failed on 2 of 2"):
        storage.exists("a.txt")


def test_distributed_open_streams(test_servers):
    (server,) = test_servers()
    server.write("big.bin", b"z" * (8 * 1024 * 1024))
    storage = DistributedStorage(journal_alias="tests", hosts=[server.host])
    handle = storage.open("big.bin")
    assert handle.size == 8 * 1024 * 1024
    assert handle.read(10) == b"z" * 10  # the rest is still on the wire
    assert sum(len(chunk) for chunk in handle.chunks()) == 8 * 1024 * 1024 - 10
    handle.close()
    with pytest.raises(ValueError, match="read-only"):
        storage.open("big.bin", "wb")
    with pytest.raises(FileNotFoundError):
        storage.open("missing.bin")


def test_distributed_write_that_reaches_no_host_raises_even_when_not_fatal(test_servers):
    servers = test_servers(2)
    for server in servers:
        server.force_status(500, methods="PUT")
    storage = DistributedStorage(
        journal_alias="tests", hosts=hosts(servers), fatal_exceptions=False
    )
    with pytest.raises(ReplicationError, match="Only 0 acknowledged; at least 1 required"):
        storage.save("lost.txt", ContentFile(b"x"))


def test_distributed_not_fatal_partial_write_journals_the_sources(test_servers):
    servers = test_servers(3)
    servers[0].force_status(500, methods="PUT")
    storage = DistributedStorage(
        journal_alias="tests", hosts=hosts(servers), fatal_exceptions=False
    )
    assert storage.save("p.txt", ContentFile(b"p")) == "p.txt"
    row = PendingReplication.objects.get()
    assert (row.host, row.operation) == (servers[0].host, "PUT")
    assert row.sources == [servers[1].host, servers[2].host]


def test_distributed_without_hosts(settings):
    from django.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured, match="no media hosts"):
        DistributedStorage().save("a.txt", ContentFile(b"a"))


def test_distributed_listdir_and_path_are_not_available(test_servers):
    (server,) = test_servers()
    storage = DistributedStorage(journal_alias="tests", hosts=[server.host])
    with pytest.raises(NotImplementedError, match="resto_sync"):
        storage.listdir("")
    with pytest.raises(NotImplementedError, match="no local copy"):
        storage.path("a.txt")


# --- how the fan-out runs --------------------------------------------------------------


def test_small_writes_start_on_every_host_from_the_calling_thread(
    test_servers, media_root, monkeypatch
):
    """Bodies up to operations.PHASED_BODY and DELETEs need no thread; bigger bodies use
    the pool."""
    import threading

    from django_resto import wire
    from django_resto.operations import PHASED_BODY
    from django_resto.transport import HostTransport

    servers = test_servers(3)
    storage = HybridStorage(journal_alias="tests", hosts=hosts(servers))
    threads: list[tuple[str, str]] = []
    put = HostTransport.start_put
    delete = HostTransport.start_delete

    def spy_put(self, name, body):
        threads.append(("PUT", threading.current_thread().name))
        return put(self, name, body)

    def spy_delete(self, name):
        threads.append(("DELETE", threading.current_thread().name))
        return delete(self, name)

    monkeypatch.setattr(HostTransport, "start_put", spy_put)
    monkeypatch.setattr(HostTransport, "start_delete", spy_delete)
    main = threading.current_thread().name
    # Inline (head and body in one send), then a body sent by sendfile: both phased.
    for size in (wire.INLINE_BODY, PHASED_BODY):
        storage.save(f"small-{size}.bin", ContentFile(b"s" * size))
        storage.delete(f"small-{size}.bin")
        assert threads == [("PUT", main)] * 3 + [("DELETE", main)] * 3
        threads.clear()
    storage.save("big.bin", ContentFile(b"b" * (PHASED_BODY + 1)))
    assert [verb for verb, _ in threads] == ["PUT"] * 3
    names = sorted(name for _, name in threads)
    assert names.count(main) == 1  # the calling thread runs the first host itself
    assert all(name.startswith("django_resto") for name in names if name != main)
    assert [server.read("big.bin") for server in servers] == [b"b" * (PHASED_BODY + 1)] * 3


def test_a_subclass_put_file_is_run_not_bypassed(test_servers, media_root):
    """The two-halves shortcut applies to the stock put_file only."""
    servers = test_servers(2)
    calls: list[str] = []

    class Audited(HybridStorage):
        def put_file(self, host, name, body=None):
            calls.append(host)
            return super().put_file(host, name, body)

    storage = Audited(hosts=hosts(servers))
    storage.save("a.txt", ContentFile(b"a"))
    assert sorted(calls) == sorted(hosts(servers))
    assert [server.read("a.txt") for server in servers] == [b"a", b"a"]


def test_a_host_that_cannot_be_started_does_not_stop_the_others(test_servers, media_root):
    servers = test_servers(2)
    down = f"127.0.0.1:{free_port()}"
    storage = HybridStorage(
        journal_alias="tests", hosts=[servers[0].host, down, servers[1].host], fatal_exceptions=True
    )
    with pytest.raises(ReplicationError) as info:
        storage.save("a.txt", ContentFile(b"a"))
    assert info.value.hosts == [down]
    assert "ConnectionError" in str(info.value)
    assert [server.read("a.txt") for server in servers] == [b"a", b"a"]
