"""The per-name lock, the database's sequence and a journal that must not fail silently.

Cross-process claims are tested with separate OS processes (``python -c`` children
configured against the same test database), never with threads alone: threads of one
interpreter share locks that gunicorn workers and app servers do not.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from django.core.exceptions import SuspiciousFileOperation
from django.core.files.base import ContentFile
from django.core.files.storage import FileSystemStorage, storages
from django.db import connection

from django_resto import journal, ordering
from django_resto.exceptions import JournalError, ReplicationError
from django_resto.models import PendingReplication
from django_resto.names import MAX_NAME_LENGTH
from django_resto.storage import AsyncStorage, DistributedStorage, HybridStorage
from tests.dbconfig import subprocess_databases

REPO = Path(__file__).resolve().parent.parent

CHILD = """
import json, sys, time
import django
from django.conf import settings
config = json.loads(sys.argv[1])
settings.configure(
    INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "django_resto"],
    DATABASES=config["databases"], USE_TZ=True, LOGGING_CONFIG=None,
)
django.setup()
from django_resto import journal, ordering
if config["job"] == "hold":
    with ordering.ordered("s", config["name"], timeout=5) as seq:
        print(json.dumps({"held": seq}), flush=True)
        time.sleep(config["seconds"])
elif config["job"] == "try":
    try:
        with ordering.ordered("s", config["name"], timeout=config["seconds"]):
            print(json.dumps("got it"), flush=True)
    except ordering.LockTimeout:
        print(json.dumps("timed out"), flush=True)
elif config["job"] == "numbers":
    print(json.dumps([ordering.next_seq() for _ in range(config["count"])]), flush=True)
"""


def child(job: str, **config) -> subprocess.Popen[str]:
    payload = json.dumps({"job": job, "databases": subprocess_databases(), **config})
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, payload], cwd=REPO, stdout=subprocess.PIPE, text=True
    )


def test_the_strategy_follows_the_journal_database(db):
    expected = {"postgresql": "postgresql", "sqlite": "sqlite"}[connection.vendor]
    assert ordering.strategy() == expected


def test_numbers_grow_and_nested_use_shares_the_lock_and_its_number(db):
    first = ordering.next_seq()
    with ordering.ordered("s", "a.txt", timeout=1) as outer:
        assert outer > first
        with ordering.ordered("s", "a.txt", timeout=1) as inner:
            assert inner == outer
        with ordering.ordered("s", "b.txt", timeout=1) as other:
            assert other > outer
    with ordering.ordered("s", "a.txt", timeout=1) as again:
        assert again > outer


@pytest.mark.django_db(transaction=True)
def test_a_lock_held_by_another_process_times_out_here_and_other_names_pass():
    holder = child("hold", name="busy.txt", seconds=3)
    try:
        assert "held" in json.loads(holder.stdout.readline())
        started = time.monotonic()
        with (
            pytest.raises(ordering.LockTimeout, match=r"'busy.txt'.*lock_timeout=0.3s"),
            ordering.ordered("s", "busy.txt", timeout=0.3),
        ):
            pass
        assert 0.3 <= time.monotonic() - started < 2.5
        with ordering.ordered("s", "free.txt", timeout=0.3):
            pass
    finally:
        holder.wait(timeout=10)
    # Released when the holder left its block: the name is free again.
    with ordering.ordered("s", "busy.txt", timeout=1):
        pass


@pytest.mark.django_db(transaction=True)
def test_a_lock_waits_for_another_process_to_release_it():
    holder = child("hold", name="wait.txt", seconds=0.5)
    try:
        assert "held" in json.loads(holder.stdout.readline())
        started = time.monotonic()
        with ordering.ordered("s", "wait.txt", timeout=10):
            waited = time.monotonic() - started
    finally:
        holder.wait(timeout=10)
    assert waited >= 0.3


@pytest.mark.django_db(transaction=True)
def test_two_names_that_share_a_lock_keep_it_until_both_are_done(monkeypatch):
    # Force a hash collision: "other.txt" gets the lock of "shared.txt" in this process.
    real = ordering._digest
    monkeypatch.setattr(ordering, "_digest", lambda storage, name: real(storage, "shared.txt"))

    def attempt() -> str:
        return json.loads(child("try", name="shared.txt", seconds=0.3).communicate(timeout=30)[0])

    with ordering.ordered("s", "shared.txt", timeout=1):
        with ordering.ordered("s", "other.txt", timeout=1):
            pass
        # Leaving the inner name must not free the lock the outer one still holds.
        assert attempt() == "timed out"
    assert attempt() == "got it"


@pytest.mark.django_db(transaction=True)
def test_numbers_from_several_processes_never_repeat_and_grow_in_each():
    children = [child("numbers", count=300) for _ in range(3)]
    mine = [ordering.next_seq() for _ in range(300)]
    drawn = [json.loads(c.communicate(timeout=60)[0]) for c in children]
    for numbers in [mine, *drawn]:
        assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    every = [n for numbers in [mine, *drawn] for n in numbers]
    assert len(set(every)) == 1200


def test_numbers_do_not_follow_a_clock_set_back(db, monkeypatch):
    before = ordering.next_seq()
    monkeypatch.setattr(time, "time_ns", lambda: 1)
    assert ordering.next_seq() > before


# --- the storages under the lock ---------------------------------------------------------


def in_storages(settings, alias, backend, **options):
    settings.STORAGES = {
        **settings.STORAGES,
        alias: {"BACKEND": f"django_resto.storage.{backend}", "OPTIONS": options},
    }
    storages._storages.pop(alias, None)
    return storages[alias]


@pytest.mark.django_db(transaction=True)
def test_a_save_that_cannot_get_the_lock_is_journaled_for_every_host(settings, test_servers):
    servers = test_servers(2)
    storage = in_storages(
        settings, "locked", "HybridStorage", hosts=[s.host for s in servers], lock_timeout=0.2
    )
    holder = child("hold", name="x.txt", seconds=3)
    try:
        json.loads(holder.stdout.readline())
        # "s" is the holder's storage key: take the same one.
        storage.journal_alias = "s"
        with pytest.raises(ReplicationError, match="LockTimeout") as caught:
            storage.save("x.txt", ContentFile(b"x"))
    finally:
        holder.wait(timeout=10)
    assert sorted(caught.value.hosts) == sorted(s.host for s in servers)
    assert [server.read("x.txt") for server in servers] == [None, None]
    rows = PendingReplication.objects.filter(storage="s", name="x.txt")
    assert sorted(rows.values_list("host", flat=True)) == sorted(s.host for s in servers)
    assert all("LockTimeout" in row.last_error for row in rows)


@pytest.mark.django_db(transaction=True)
def test_a_save_whose_file_another_process_deleted_deletes_it_and_does_not_raise(
    settings, test_servers, monkeypatch
):
    (server,) = test_servers()
    server.write("gone.txt", b"an older copy")
    storage = in_storages(
        settings, "race", "HybridStorage", hosts=[server.host], fatal_exceptions=False
    )
    original = FileSystemStorage._save

    def save_then_lose_it(self, name, content):
        saved = original(self, name, content)
        Path(self.path(saved)).unlink()  # a concurrent delete, between write and replication
        return saved

    monkeypatch.setattr(FileSystemStorage, "_save", save_then_lose_it)
    assert storage.save("gone.txt", ContentFile(b"new")) == "gone.txt"
    assert not server.exists("gone.txt")
    assert [r.method for r in server.requests] == ["DELETE"]
    assert not PendingReplication.objects.exists()


# --- names the journal cannot hold -------------------------------------------------------


def long_name(length: int) -> str:
    """A valid name of ``length`` characters, in directories short enough for any disk."""
    name = ""
    while len(name) + 100 < length:
        name += "d" * 99 + "/"
    return name + "é" * (length - len(name))


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("backend", ["HybridStorage", "AsyncStorage", "DistributedStorage"])
def test_a_name_longer_than_the_journal_holds_is_refused_before_any_write(
    settings, test_servers, media_root, backend
):
    (server,) = test_servers()
    storage = in_storages(settings, "long", backend, hosts=[server.host], fatal_exceptions=False)
    name = long_name(MAX_NAME_LENGTH + 1)
    with pytest.raises(SuspiciousFileOperation, match=f"at most {MAX_NAME_LENGTH}"):
        storage.save(name, ContentFile(b"x"))
    assert server.requests == []
    assert list(media_root.rglob("*")) == []
    # The longest name that fits is stored and journaled whole, on either database.
    fits = long_name(MAX_NAME_LENGTH)
    server.force_status(503, methods="PUT")
    if backend == "DistributedStorage":
        with pytest.raises(ReplicationError):
            storage.save(fits, ContentFile(b"x"))
    else:
        storage.save(fits, ContentFile(b"x"))
    if isinstance(storage, AsyncStorage):
        assert storage.wait(timeout=10)
    (row,) = PendingReplication.objects.all()
    assert row.name == fits


# --- a journal that cannot write ---------------------------------------------------------


@pytest.fixture
def journal_read_only():
    with journal_read_only_block():
        yield


@contextmanager
def journal_read_only_block():
    """Triggers refuse every write to the journal's table (a full disk, a read-only
    replica): reads still work, every INSERT, UPDATE and DELETE fails."""
    table = connection.ops.quote_name(PendingReplication._meta.db_table)
    events = ("INSERT", "UPDATE", "DELETE")
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "CREATE FUNCTION resto_refuse() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'the journal is read-only'; END $$"
            )
            cursor.execute(
                f"CREATE TRIGGER resto_refuse BEFORE INSERT OR UPDATE OR DELETE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION resto_refuse()"
            )
        else:
            for event in events:
                cursor.execute(
                    f"CREATE TRIGGER resto_refuse_{event.lower()} BEFORE {event} ON {table} "
                    "BEGIN SELECT RAISE(ABORT, 'the journal is read-only'); END"
                )
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute(f"DROP TRIGGER resto_refuse ON {table}")
                cursor.execute("DROP FUNCTION resto_refuse()")
            else:
                for event in events:
                    cursor.execute(f"DROP TRIGGER resto_refuse_{event.lower()}")


@pytest.mark.django_db(transaction=True)
def test_a_failure_the_journal_cannot_record_raises_even_without_fatal_exceptions(
    settings, test_servers, media_root, journal_read_only
):
    up, down = test_servers(2)
    down.force_status(503)
    storage = in_storages(
        settings, "j", "HybridStorage", hosts=[up.host, down.host], fatal_exceptions=False
    )
    with pytest.raises(JournalError, match="the journal is read-only") as caught:
        storage.save("a.txt", ContentFile(b"a"))
    assert caught.value.hosts == [down.host]
    assert "Could not write the django_resto journal" in str(caught.value)
    assert (media_root / "a.txt").read_bytes() == b"a"  # the master copy is intact
    assert up.read("a.txt") == b"a"


@pytest.mark.django_db(transaction=True)
def test_a_success_that_cannot_clear_its_row_only_logs(settings, test_servers, resto_log):
    (up,) = test_servers()
    storage = in_storages(settings, "j", "HybridStorage", hosts=[up.host])
    # A stale row (the host is in line already) that the success will try to clear.
    journal.mark("j", [up.host], "a.txt", "PUT", journal.now_seq(), error="old")
    with journal_read_only_block():
        assert storage.save("a.txt", ContentFile(b"a")) == "a.txt"
    assert up.read("a.txt") == b"a"
    assert "Could not write the django_resto journal" in resto_log.text
    assert PendingReplication.objects.filter(name="a.txt").exists()  # stale, harmless


@pytest.mark.django_db(transaction=True)
def test_async_intent_that_cannot_be_journaled_raises_after_scheduling(
    settings, test_servers, journal_read_only
):
    (up,) = test_servers()
    storage = in_storages(settings, "j", "AsyncStorage", hosts=[up.host])
    with pytest.raises(JournalError):
        storage.save("a.txt", ContentFile(b"a"))
    assert storage.wait(timeout=10)
    assert up.read("a.txt") == b"a"  # scheduled all the same


@pytest.fixture
def journal_sequence_gone():
    """What the lock needs from the database renamed away: on PostgreSQL the sequence
    (no operation can be numbered); on SQLite, whose numbers come from the lock file,
    the journal's table, which the lock asks about a name that may have rows."""
    quote = connection.ops.quote_name
    if connection.vendor == "postgresql":
        rename = "ALTER SEQUENCE {} RENAME TO {}"
        name = "django_resto_seq"
    else:
        rename = "ALTER TABLE {} RENAME TO {}"
        name = "django_resto_pendingreplication"
        ordering.note_rows("j", "a.txt")
    with connection.cursor() as cursor:
        cursor.execute(rename.format(quote(name), quote(name + "_away")))
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute(rename.format(quote(name + "_away"), quote(name)))


@pytest.mark.django_db(transaction=True)
def test_a_lock_the_database_cannot_give_is_a_journal_error_naming_why(
    settings, test_servers, media_root, journal_sequence_gone
):
    (server,) = test_servers()
    storage = in_storages(
        settings, "j", "HybridStorage", hosts=[server.host], fatal_exceptions=False
    )
    with pytest.raises(JournalError, match=r"could not take the lock of 'a\.txt'") as caught:
        storage.save("a.txt", ContentFile(b"a"))
    assert caught.value.hosts == [server.host]
    assert (media_root / "a.txt").read_bytes() == b"a"
    assert server.requests == []  # nothing sent without the lock


# --- storages outside STORAGES ----------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_storage_outside_storages_has_its_failures_refused_with_a_clear_message(
    test_servers,
):
    (down,) = test_servers()
    down.force_status(503)
    storage = HybridStorage(hosts=[down.host], fatal_exceptions=False)
    assert storage.journal_key == ""
    with pytest.raises(JournalError, match="journal_alias"):
        storage.save("a.txt", ContentFile(b"a"))
    assert not PendingReplication.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_journal_alias_names_the_rows_of_a_storage_outside_storages(test_servers):
    (down,) = test_servers()
    down.force_status(503, methods="PUT")
    storage = DistributedStorage(hosts=[down.host], journal_alias="uploads")
    assert storage.journal_key == "uploads"
    with pytest.raises(ReplicationError):
        storage.save("a.txt", ContentFile(b"a"))
    assert list(PendingReplication.objects.values_list("storage", "name")) == [("uploads", "a.txt")]


def test_a_storage_outside_storages_saves_normally_when_nothing_fails(db, test_servers):
    (up,) = test_servers()
    storage = HybridStorage(hosts=[up.host])
    assert storage.save("ok.txt", ContentFile(b"ok")) == "ok.txt"
    assert up.read("ok.txt") == b"ok"


# --- background threads and the database -------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_async_threads_reconnect_after_their_database_connection_died(settings, test_servers):
    (server,) = test_servers()
    storage = in_storages(settings, "bg", "AsyncStorage", hosts=[server.host], async_workers=1)
    storage.save("first.txt", ContentFile(b"1"))
    assert storage.wait(timeout=10)
    pool = storage.background.executor

    def connected() -> bool:
        from django.db import connection as thread_connection

        return thread_connection.connection is not None

    # An idle pool thread holds no database session.
    assert pool.submit(connected).result(timeout=10) is False

    def kill_underneath() -> None:
        # The connection dies under Django (a database restart, a failover): Django
        # still believes it is open.
        from django.db import connection as thread_connection

        thread_connection.ensure_connection()
        thread_connection.connection.close()

    server.delay(0.2)
    storage.save("second.txt", ContentFile(b"2"))  # keeps the thread busy: no idle close
    pool.submit(kill_underneath)
    storage.save("third.txt", ContentFile(b"3"))  # fails: its connection is dead
    # Queued behind it, so the thread is never idle in between: it must notice the
    # broken connection itself, not merely close an idle one.
    for index in range(3):
        storage.save(f"after-{index}.txt", ContentFile(b"x"))
    server.delay(0)
    assert storage.wait(timeout=10)
    # The thread reconnected: every save after the failure replicated and settled.
    assert all(server.read(f"after-{index}.txt") == b"x" for index in range(3))
    left = set(PendingReplication.objects.values_list("name", flat=True))
    assert left == {"third.txt"}  # the intent row of the one task that met the dead link
    assert pool.submit(connected).result(timeout=10) is False
