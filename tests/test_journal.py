"""The journal's supersession rule and repairs that never resurrect or lose a file."""

from __future__ import annotations

import pytest
from django.core.files.base import ContentFile

from django_resto import journal
from django_resto.models import PendingReplication
from django_resto.repair import planned_action, repair_rows
from django_resto.storage import DistributedStorage, HybridStorage

pytestmark = pytest.mark.django_db


@pytest.fixture(params=["upsert", "orm"])
def both_paths(request, monkeypatch):
    """The one-statement upsert (SQLite, PostgreSQL) and the ORM's update-or-create
    (every other database) must write the same rows."""
    if request.param == "orm":
        monkeypatch.setattr(journal, "_UPSERT_VENDORS", ())
    return request.param


def row(host="h", name="n") -> PendingReplication:
    return PendingReplication.objects.get(storage="s", host=host, name=name)


def test_mark_creates_then_a_newer_operation_supersedes(both_paths):
    journal.mark("s", ["h"], "n", "PUT", 10, error="boom")
    journal.mark("s", ["h"], "n", "DELETE", 20, error="bang")
    current = row()
    assert (current.operation, current.seq, current.attempts, current.last_error) == (
        "DELETE",
        20,
        2,
        "bang",
    )
    assert PendingReplication.objects.count() == 1


def test_an_older_operation_never_overwrites_a_newer_row(both_paths):
    journal.mark("s", ["h"], "n", "DELETE", 20, error="newer")
    journal.mark("s", ["h"], "n", "PUT", 10, error="older, finished late")
    assert (row().operation, row().seq, row().last_error) == ("DELETE", 20, "newer")


def test_an_older_success_never_clears_a_newer_row(both_paths):
    journal.mark("s", ["h"], "n", "PUT", 20)
    assert journal.clear("s", ["h"], "n", 10) == 0
    assert row().seq == 20
    assert journal.clear("s", ["h"], "n", 20) == 1
    assert PendingReplication.objects.count() == 0


def test_intent_rows_count_no_attempt(both_paths):
    journal.mark("s", ["a", "b"], "n", "SYNC", 5, error="pending", attempted=False)
    assert sorted(PendingReplication.objects.values_list("host", "attempts", "last_attempt")) == [
        ("a", 0, None),
        ("b", 0, None),
    ]


def test_rows_are_per_storage_host_and_name(both_paths):
    journal.mark("s", ["a"], "n", "PUT", 1)
    journal.mark("s", ["b"], "n", "PUT", 1)
    journal.mark("s", ["a"], "m", "PUT", 1)
    journal.mark("t", ["a"], "n", "PUT", 1)
    assert PendingReplication.objects.count() == 4
    journal.clear("s", ["a", "b"], "n", 1)
    assert sorted(PendingReplication.objects.values_list("storage", "host", "name")) == [
        ("s", "a", "m"),
        ("t", "a", "n"),
    ]


def resto_storages(settings, backend, hosts, **options):
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": f"django_resto.storage.{backend}",
            "OPTIONS": {"hosts": hosts, "fatal_exceptions": False, **options},
        },
    }
    from django.core.files.storage import storages

    storages._storages.pop("default", None)
    return storages["default"]


@pytest.mark.parametrize("kind", ["nginx", "lighttpd"])
def test_put_delete_put_while_a_host_is_down_ends_with_the_latest_bytes(
    settings, media_server_factory, kind
):
    up, down = media_server_factory(kind), media_server_factory(kind)
    storage = resto_storages(settings, "HybridStorage", [up.host, down.host])
    assert isinstance(storage, HybridStorage)
    assert storage.journal_key == "default"
    down.stop()
    storage.save("doc.txt", ContentFile(b"version 1"))
    storage.delete("doc.txt")
    storage.save("doc.txt", ContentFile(b"version 2"))
    assert [(r.host, r.operation) for r in PendingReplication.objects.all()] == [(down.host, "PUT")]
    down.restart()
    report = repair_rows(PendingReplication.objects.all())
    assert (report.repaired, report.failed, report.actions) == (
        1,
        0,
        [("PUT", down.host, "doc.txt")],
    )
    assert down.read("doc.txt") == up.read("doc.txt") == b"version 2"
    assert PendingReplication.objects.count() == 0


@pytest.mark.parametrize("kind", ["nginx", "lighttpd"])
def test_delete_while_down_is_not_resurrected(settings, media_server_factory, kind):
    up, down = media_server_factory(kind), media_server_factory(kind)
    storage = resto_storages(settings, "HybridStorage", [up.host, down.host])
    storage.save("old.txt", ContentFile(b"old"))  # both have it
    down.stop()
    storage.delete("old.txt")
    storage.save("old.txt", ContentFile(b"again"))
    storage.delete("old.txt")  # the latest state: gone
    down.restart()
    assert down.read("old.txt") == b"old"  # stale until repaired
    (pending,) = PendingReplication.objects.all()
    assert planned_action(storage, pending) == "DELETE"
    report = repair_rows([pending])
    assert report.actions == [("DELETE", down.host, "old.txt")]
    assert not down.exists("old.txt") and not up.exists("old.txt")


def test_distributed_repair_copies_from_a_host_that_has_the_latest_write(
    settings, media_server_factory
):
    a, b, c = (media_server_factory("nginx") for _ in range(3))
    storage = resto_storages(settings, "DistributedStorage", [a.host, b.host, c.host])
    assert isinstance(storage, DistributedStorage)
    c.stop()
    storage.save("d.bin", ContentFile(b"v1"))
    storage.delete("d.bin")
    storage.save("d.bin", ContentFile(b"v2" * 100_000))
    (pending,) = PendingReplication.objects.all()
    assert (pending.host, pending.operation, pending.sources) == (c.host, "PUT", [a.host, b.host])
    c.restart()
    report = repair_rows([pending])
    assert report.actions == [("COPY", c.host, "d.bin")]
    assert c.read("d.bin") == a.read("d.bin") == b"v2" * 100_000
    assert PendingReplication.objects.count() == 0


def test_distributed_delete_while_down_is_repaired_as_delete(settings, media_server_factory):
    a, b = media_server_factory("nginx"), media_server_factory("lighttpd")
    storage = resto_storages(settings, "DistributedStorage", [a.host, b.host])
    storage.save("x/y.txt", ContentFile(b"y"))
    b.stop()
    storage.delete("x/y.txt")
    b.restart()
    report = repair_rows(PendingReplication.objects.all())
    assert report.actions == [("DELETE", b.host, "x/y.txt")]
    assert not b.exists("x/y.txt")


def test_failed_repair_keeps_the_row_and_counts_the_attempt(settings, media_server_factory):
    up, down = media_server_factory("nginx"), media_server_factory("nginx")
    storage = resto_storages(settings, "HybridStorage", [up.host, down.host], timeout=1)
    down.stop()
    storage.save("f.txt", ContentFile(b"f"))
    report = repair_rows(PendingReplication.objects.all())
    assert (report.repaired, report.failed) == (0, 1)
    assert "ConnectionError" in report.errors[0]
    pending = PendingReplication.objects.get()
    assert pending.attempts == 2
    assert "ConnectionError" in pending.last_error


def test_rows_of_unknown_storages_are_skipped():
    journal.mark("gone", ["h:1"], "n.txt", "PUT", 1)
    report = repair_rows(PendingReplication.objects.all())
    assert (report.repaired, report.failed, report.skipped) == (0, 0, 1)
    assert "storage 'gone' is not a configured django_resto storage" in report.errors[0]
    assert PendingReplication.objects.count() == 1


def _statements(captured) -> list[str]:
    return [query["sql"].split()[0].upper() for query in captured.captured_queries]


def test_a_successful_save_asks_the_journal_nothing_it_need_not(settings, media_server_factory):
    """SQLite: the number comes from the lock file, and a name never journaled has
    nothing to clear, so a healthy save runs no statement. PostgreSQL: the question
    "any rows to clear?" rides on the statement that takes the lock and its number."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    server = media_server_factory("nginx")
    storage = resto_storages(settings, "HybridStorage", [server.host])
    storage.save("warm.txt", ContentFile(b"warm"))
    with CaptureQueriesContext(connection) as captured:
        storage.save("one.txt", ContentFile(b"1"))
    expected = {"sqlite": [], "postgresql": ["SELECT", "SELECT"]}[connection.vendor]
    assert _statements(captured) == expected  # PostgreSQL: lock + number + probe, unlock


def test_the_probe_in_the_locks_statement_sees_a_row_and_the_save_clears_it(
    settings, media_server_factory
):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    server = media_server_factory("nginx")
    storage = resto_storages(settings, "HybridStorage", [server.host])
    journal.mark("default", [server.host], "doc.txt", "PUT", 1, error="was down")
    journal.mark("default", [server.host], "other.txt", "PUT", 1, error="was down")
    with CaptureQueriesContext(connection) as captured:
        storage.save("doc.txt", ContentFile(b"fresh"))
    assert server.read("doc.txt") == b"fresh"
    # The row of the name saved is cleared; another name's stays.
    assert list(PendingReplication.objects.values_list("name", flat=True)) == ["other.txt"]
    assert "DELETE" in _statements(captured)


def test_an_intent_keeps_the_last_attempt_and_a_failure_sets_it(both_paths):
    journal.mark("s", ["h"], "n", "PUT", 5, error="boom", sources=["a"])
    first = row()
    assert (first.attempts, first.sources, first.next_attempt) == (1, ["a"], None)
    assert first.last_attempt is not None
    journal.mark("s", ["h"], "n", "SYNC", 6, error="pending", attempted=False)
    again = row()
    assert (again.operation, again.seq, again.attempts, again.sources) == ("SYNC", 6, 1, [])
    assert again.last_attempt == first.last_attempt  # an intent is not an attempt
    assert again.first_attempt == first.first_attempt


def test_a_failed_save_journals_its_row_in_one_statement(settings, media_server_factory):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    up, down = media_server_factory("nginx"), media_server_factory("nginx")
    storage = resto_storages(settings, "HybridStorage", [up.host, down.host], breaker_window=0)
    storage.save("warm.txt", ContentFile(b"warm"))
    down.stop()
    with CaptureQueriesContext(connection) as captured:
        storage.save("one.txt", ContentFile(b"1"))
    statements = _statements(captured)
    # The lock's statement(s) as for a success, then the row: one INSERT ... ON CONFLICT.
    expected = {"sqlite": ["INSERT"], "postgresql": ["SELECT", "INSERT", "SELECT"]}
    assert statements == expected[connection.vendor]
    assert [(r.host, r.name) for r in PendingReplication.objects.all()] == [(down.host, "one.txt")]
