"""SQLite's sequence numbers and row notes: files beside the database, not statements.

A healthy save on SQLite used to write the counter row (a write transaction) only to
learn its number, and to ask whether its name had rows to clear. The number now comes
from a counter in the lock file, and a byte per name hash in the rows file says whether
a row may exist; these tests pin down what that must never break: numbers above every
row a journal already holds, rows written before the files existed still cleared, and
a file that cannot be read or written failing towards asking the database.

Numbers across separate processes are tested in tests/test_ordering.py (children on the
same database) and by the drills of tests/test_ordering_drill.py.
"""

from __future__ import annotations

import logging
import os
import threading

import pytest
from django.core.files.base import ContentFile
from django.db import connection
from django.test.utils import CaptureQueriesContext

from django_resto import journal, ordering
from django_resto.models import JournalSequence, PendingReplication
from tests.test_journal import resto_storages

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        connection.vendor != "sqlite",
        reason="SQLite's own files; PostgreSQL numbers from a SEQUENCE (tests/test_ordering.py)",
    ),
]

ALIAS = "default"


@pytest.fixture
def fresh_files():
    """The lock and rows files as a first process on a new machine finds them: no
    counter, no byte set, and the database not looked at yet."""
    lock_fd = ordering._lock_file(ALIAS)
    rows_fd = ordering._rows_file(ALIAS)
    before = os.pread(lock_fd, 8, ordering._COUNTER_AT)
    os.pwrite(lock_fd, bytes(8), ordering._COUNTER_AT)
    os.ftruncate(rows_fd, 0)
    ordering._seeded.discard(ordering._sqlite_lock_path(ALIAS))
    yield
    # Never lower than before: numbers drawn by earlier tests stay older.
    after = os.pread(lock_fd, 8, ordering._COUNTER_AT)
    os.pwrite(lock_fd, max(before, after), ordering._COUNTER_AT)


def _row(name: str, seq: int, host: str = "127.0.0.1:9") -> PendingReplication:
    """A row written without journal.mark: by older code, or before a restore."""
    return PendingReplication.objects.create(
        storage=ALIAS, host=host, name=name, operation="PUT", seq=seq
    )


def test_a_new_lock_file_numbers_above_every_row_and_the_counter_row(fresh_files):
    counter = ordering.FIRST_SEQ + 5
    JournalSequence.objects.update_or_create(pk=1, defaults={"value": counter})
    newest = counter + ordering._GENERATION_GAP + 1_000_000
    _row("old.txt", newest)
    first = ordering.next_seq()
    assert first == newest + 1
    assert ordering.next_seq() == first + 1


def test_a_new_lock_file_starts_the_gap_above_the_counter_row(fresh_files):
    # A process still running code that draws from the row numbers below every new one.
    JournalSequence.objects.update_or_create(pk=1, defaults={"value": ordering.FIRST_SEQ + 7})
    assert ordering.next_seq() == ordering.FIRST_SEQ + 7 + ordering._GENERATION_GAP + 1


def test_a_row_written_before_the_lock_file_existed_is_cleared_by_a_save(
    fresh_files, settings, media_server_factory
):
    server = media_server_factory("nginx")
    storage = resto_storages(settings, "HybridStorage", [server.host])
    _row("doc.txt", 1, host=server.host)
    storage.save("doc.txt", ContentFile(b"fresh"))
    assert server.read("doc.txt") == b"fresh"
    assert not PendingReplication.objects.filter(name="doc.txt").exists()


def test_a_rows_file_deleted_alone_is_noted_again_from_the_journal(settings, media_server_factory):
    server = media_server_factory("nginx")
    storage = resto_storages(settings, "HybridStorage", [server.host])
    storage.save("warm.txt", ContentFile(b"warm"))  # the counter is set, and stays
    _row("kept.txt", 1, host=server.host)
    os.ftruncate(ordering._rows_file(ALIAS), 0)  # as if deleted while every process stopped
    ordering._seeded.discard(ordering._sqlite_lock_path(ALIAS))  # a process starting
    storage.save("kept.txt", ContentFile(b"new"))
    assert not PendingReplication.objects.filter(name="kept.txt").exists()


def test_a_row_written_past_journal_mark_is_left_for_the_drain(settings, media_server_factory):
    """The contract: rows are written through journal.mark. One that is not (here, after
    the files were set up) is not seen by a success, so it stays, stale, until a drain
    repairs it; that costs a PUT, never a lost repair."""
    server = media_server_factory("nginx")
    storage = resto_storages(settings, "HybridStorage", [server.host])
    storage.save("warm.txt", ContentFile(b"warm"))  # this process has set up its files
    name = "unnoted.txt"
    if ordering._may_have_rows(ALIAS, ordering._digest(ALIAS, name)):
        pytest.skip("an earlier row's note shares this name's byte")
    _row(name, 1, host=server.host)
    storage.save(name, ContentFile(b"x"))
    assert PendingReplication.objects.filter(name=name).count() == 1


def test_mark_notes_the_name_and_a_success_then_asks_and_clears(settings, media_server_factory):
    server = media_server_factory("nginx")
    storage = resto_storages(settings, "HybridStorage", [server.host])
    storage.save("warm.txt", ContentFile(b"warm"))
    name = "noted.txt"
    digest = ordering._digest(ALIAS, name)
    journal.mark(ALIAS, [server.host], name, "PUT", ordering.next_seq(), error="was down")
    assert ordering._may_have_rows(ALIAS, digest)
    with CaptureQueriesContext(connection) as captured:
        storage.save(name, ContentFile(b"x"))
    statements = [query["sql"].split()[0].upper() for query in captured.captured_queries]
    # The probe, then the clear (Django's delete, in a transaction on SQLite).
    assert statements == ["SELECT", "BEGIN", "DELETE", "COMMIT"]
    assert not PendingReplication.objects.exists()


def test_a_rows_file_that_cannot_be_read_makes_the_lock_ask_the_database(monkeypatch):
    ordering.next_seq()  # this process has set up its files
    monkeypatch.setattr(ordering, "_rows_file", lambda alias: -1)  # EBADF on every read
    probe = journal.probe(ALIAS, ["127.0.0.1:9"], "any.txt")
    with (
        CaptureQueriesContext(connection) as captured,
        ordering.ordered(ALIAS, "any.txt", timeout=1, probe=probe),
    ):
        assert ordering.known_rows(ALIAS, "any.txt") is False
    assert [query["sql"].split()[0] for query in captured.captured_queries] == ["SELECT"]


def test_a_rows_file_that_cannot_be_written_still_journals_the_row(monkeypatch, caplog):
    monkeypatch.setattr(ordering, "_rows_file", lambda alias: -1)
    with caplog.at_level(logging.WARNING, logger="django_resto.ordering"):
        journal.mark(ALIAS, ["127.0.0.1:9"], "kept.txt", "PUT", ordering.next_seq(), error="x")
    assert PendingReplication.objects.filter(name="kept.txt").count() == 1
    assert "Could not note a journal row" in caplog.text


def test_threads_of_one_process_never_share_a_number():
    # POSIX locks do not keep the threads of one process apart: the in-process lock does.
    drawn: list[list[int]] = [[] for _ in range(8)]

    def draw(mine: list[int]) -> None:
        mine.extend(ordering.next_seq() for _ in range(300))

    threads = [threading.Thread(target=draw, args=(mine,)) for mine in drawn]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [number for mine in drawn for number in mine]
    assert len(set(every)) == len(every) == 2400
    assert all(mine == sorted(mine) for mine in drawn)
