"""Draining by batches: the same journal as row by row, in a few dozen statements.

The repairs here are scripted (a HybridStorage whose ``repair`` follows a table, as
other processes' failures and successes would) so that the end state of a batched
drain can be compared with the row-by-row drain django_resto had before, including
rows that a newer operation supersedes while the drain runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.core.files.storage import storages
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_resto import journal
from django_resto.models import PendingReplication
from django_resto.repair import drain, repair_rows
from django_resto.storage import HybridStorage

# The hosts' threads read the journal on their own connections: rows must be committed.
pytestmark = pytest.mark.django_db(transaction=True)

ALIAS = "scripted"
HOSTS = ["h1:80", "h2:80"]

#: What repairing a row does, by name: "ok" (PUT), "copy" (only the row's operation
#: settled, as DistributedStorage's COPY), "fail", or ("mark", other) / ("clear", other):
#: meanwhile another process fails (or succeeds) on ``other`` on the same host.
Script = dict[str, Any]


class ScriptedStorage(HybridStorage):
    """A HybridStorage whose repairs follow ``script`` instead of talking HTTP."""

    script: Script = {}
    repaired: list[tuple[str, str]] = []

    def repair(self, row: PendingReplication) -> str:
        self.repaired.append((row.host, row.name))
        step = self.script.get(row.name, "ok")
        if step == "fail":
            raise PermissionError(f"{row.name} is not ours to write")
        if isinstance(step, tuple):
            action, other = step
            # Another process's operation on ``other``, numbered now: newer than any
            # repair so far, older than the repairs after this one.
            seq = journal.now_seq()
            if action == "mark":
                journal.mark(ALIAS, [row.host], other, "PUT", seq, error="newer failure")
            else:
                journal.clear(ALIAS, [row.host], other, seq)
        return "COPY" if step == "copy" else "PUT"


@pytest.fixture
def scripted(settings) -> Iterator[Callable[[Script], ScriptedStorage]]:
    settings.STORAGES = {
        **settings.STORAGES,
        ALIAS: {"BACKEND": f"{__name__}.ScriptedStorage", "OPTIONS": {"hosts": HOSTS}},
    }

    def make(script: Script) -> ScriptedStorage:
        storages._storages.pop(ALIAS, None)
        storage = storages[ALIAS]
        assert isinstance(storage, ScriptedStorage)
        storage.script = script
        storage.repaired = []
        return storage

    yield make
    storages._storages.pop(ALIAS, None)


def journal_rows(names: list[str], hosts: list[str] = HOSTS) -> None:
    """One row per (host, name), each numbered as a failed operation would be."""
    for name in names:
        for host in hosts:
            journal.mark(ALIAS, [host], name, "PUT", journal.now_seq(), error="down")


def seqs() -> dict[tuple[str, str], int]:
    return {(r.host, r.name): r.seq for r in PendingReplication.objects.all()}


def end_state(start: dict[tuple[str, str], int]) -> dict[tuple[str, str], tuple[str, str, int]]:
    """Each row left: its operation, whether a newer operation wrote it, its attempts.

    Numbers differ between two runs (the counter goes on), so a row's ``seq`` is told
    as "as read" or "newer" than it was when the drain began.
    """
    return {
        (r.host, r.name): (
            r.operation,
            "as read" if start.get((r.host, r.name)) == r.seq else "newer",
            r.attempts,
        )
        for r in PendingReplication.objects.all()
    }


def row_by_row(storage: ScriptedStorage) -> None:
    """The drain before batching: read every row, then repair and clear each in turn."""
    rows = list(PendingReplication.objects.order_by("pk"))
    for host in sorted({row.host for row in rows}):
        for row in (r for r in rows if r.host == host):
            try:
                with storage.locked(row.name) as seq:
                    verb = storage.repair(row)
                    settled = row.seq if verb == "COPY" else seq
                    journal.clear(row.storage, [host], row.name, settled)
            except Exception as exc:
                journal.mark(row.storage, [host], row.name, row.operation, row.seq, error=str(exc))


def test_a_batched_drain_ends_like_a_row_by_row_one(scripted, monkeypatch):
    # Small batches, so that a batch's deletes wait while the next rows are repaired.
    monkeypatch.setattr(journal, "BATCH_SIZE", 3)
    names = [f"f{index:02d}" for index in range(12)]
    script: Script = {
        "f01": "fail",
        # Repaired in an earlier batch, its delete done: failed again since, it stays.
        "f04": ("mark", "f00"),
        # Repaired in this batch, its delete not sent yet: failed again since, it stays.
        "f05": ("mark", "f03"),
        # Not repaired yet: failed again before its repair, which settles that too.
        "f06": ("mark", "f09"),
        # A COPY settles only the operation it copied: newer than that, the row stays.
        "f07": ("mark", "f08"),
        "f08": "copy",
        # Another process's success cleared a row not repaired yet.
        "f10": ("clear", "f11"),
    }

    journal_rows(names)
    storage = scripted(script)
    start = seqs()
    row_by_row(storage)
    expected = end_state(start)
    expected_calls = sorted(storage.repaired)

    PendingReplication.objects.all().delete()
    journal_rows(names)
    storage = scripted(script)
    start = seqs()
    report = drain(PendingReplication.objects.all())
    got = end_state(start)

    # The same rows survive, for the same reasons: the failed one, and on both hosts
    # the three failed again after (or, for the COPY, beyond) their repair.
    assert sorted(got) == sorted(expected)
    assert sorted({name for _, name in got}) == ["f00", "f01", "f03", "f08"]
    assert {key: value[:2] for key, value in got.items()} == {
        key: value[:2] for key, value in expected.items()
    }
    for host in HOSTS:
        assert got[(host, "f01")] == ("PUT", "as read", 2)  # the failure, the repair's
        assert got[(host, "f00")] == ("PUT", "newer", 1)  # cleared, then failed anew
        assert got[(host, "f08")] == ("PUT", "newer", 2)  # updated before its COPY
        # The one difference: row by row, f03 was deleted at its repair and written
        # anew by the newer failure; batched, its delete was still waiting, so the
        # newer failure updated the row, which keeps counting (and its first_attempt).
        assert expected[(host, "f03")] == ("PUT", "newer", 1)
        assert got[(host, "f03")] == ("PUT", "newer", 2)
    assert (report.repaired, report.failed, report.skipped) == (2 * 12 - 2, 2, 0)
    # f11 was cleared by another process before its turn: both drains repaired it
    # anyway (the row had been read), and deleting nothing there is right.
    assert sorted(storage.repaired) == expected_calls


def test_a_row_marked_again_while_its_batch_is_pending_survives(scripted, monkeypatch):
    monkeypatch.setattr(journal, "BATCH_SIZE", 10)
    journal_rows(["a", "b", "c"], hosts=HOSTS[:1])
    before = PendingReplication.objects.get(name="a")
    scripted({"c": ("mark", "a")})
    report = drain(PendingReplication.objects.all())
    assert report.repaired == 3
    after = PendingReplication.objects.get()
    assert (after.pk, after.name) == (before.pk, "a")  # the same row, written anew
    assert after.seq > before.seq
    assert after.next_attempt is None  # a new failure: due at once


def test_a_row_failed_again_after_its_batch_drew_its_number_waits_for_the_next_drain(
    scripted, monkeypatch
):
    # A batch's repairs share the number its first lock drew (ordering.shared_number):
    # a failure numbered after it, before its own row's repair, is newer than what that
    # repair settles. The row stays, one repair more; row by row it would be cleared.
    monkeypatch.setattr(journal, "BATCH_SIZE", 10)
    journal_rows(["a", "b", "c"], hosts=HOSTS[:1])
    storage = scripted({"a": ("mark", "c")})
    report = drain(PendingReplication.objects.all())
    assert report.repaired == 3
    assert storage.repaired == [(HOSTS[0], name) for name in ("a", "b", "c")]
    left = PendingReplication.objects.get()
    assert (left.name, left.last_error) == ("c", "newer failure")
    storage = scripted({})
    drain(PendingReplication.objects.all())
    assert storage.repaired == [(HOSTS[0], "c")]
    assert not PendingReplication.objects.exists()


def test_repairing_given_rows_clears_them_by_batches_too(scripted, monkeypatch):
    # The admin's "Retry now" hands over the rows it selected.
    monkeypatch.setattr(journal, "BATCH_SIZE", 2)
    journal_rows(["a", "b", "c", "d", "e"])
    scripted({"b": "fail", "e": ("mark", "a")})
    report = repair_rows(list(PendingReplication.objects.all()))
    assert (report.repaired, report.failed) == (8, 2)
    assert sorted(PendingReplication.objects.values_list("name", flat=True)) == [
        "a",
        "a",
        "b",
        "b",
    ]


def test_draining_1000_rows_takes_a_few_journal_statements(scripted):
    rows = 1000
    storage = scripted({})
    PendingReplication.objects.bulk_create(
        PendingReplication(
            storage=ALIAS, host=HOSTS[0], name=f"n/{index:04d}", operation="PUT", seq=1
        )
        for index in range(rows)
    )
    # One host: its rows are repaired by this thread, on the connection captured here.
    with CaptureQueriesContext(connection) as captured:
        report = drain(PendingReplication.objects.all())
    assert report.repaired == rows
    assert PendingReplication.objects.count() == 0
    assert len(storage.repaired) == rows
    statements = [query["sql"] for query in captured.captured_queries]
    lock = [sql for sql in statements if _is_lock(sql)]
    others = [sql for sql in statements if not _is_lock(sql)]
    batches = math.ceil(rows / journal.BATCH_SIZE)
    # SQLite locks and numbers in a file: no statement. PostgreSQL locks and unlocks
    # each name with a statement (a batch's number drawn in its first), the price of
    # ordering across machines.
    assert len(lock) == (2 * rows if connection.vendor == "postgresql" else 0)
    # The bound and the hosts, then per batch a read and a delete (in a transaction:
    # BEGIN and COMMIT on SQLite), and the read that finds the end. Row by row, it was
    # three statements per row besides the lock.
    assert len(others) <= 2 + batches * 4 + 1, "\n".join(others)
    reads = [sql for sql in others if sql.startswith("SELECT") and "LIMIT 500" in sql]
    deletes = [sql for sql in others if "DELETE" in sql]
    assert (len(reads), len(deletes)) == (batches + 1, batches)


def _is_lock(sql: str) -> bool:
    return any(word in sql for word in ("django_resto_sequence", "nextval", "advisory"))


def test_the_one_shot_command_reads_in_batches_across_hosts(scripted, monkeypatch):
    from django.core.management import call_command

    monkeypatch.setattr(journal, "BATCH_SIZE", 4)
    names = [f"m{index:02d}" for index in range(10)]
    journal_rows(names)
    storage = scripted({"m03": "fail"})
    with pytest.raises(SystemExit) as exit:
        call_command("process_failed_media", "--json", stdout=_Sink(), stderr=_Sink())
    assert exit.value.code == 1  # the failed rows remain
    assert sorted(storage.repaired) == sorted((h, n) for h in HOSTS for n in names)
    assert sorted(PendingReplication.objects.values_list("host", "name")) == [
        (host, "m03") for host in HOSTS
    ]


class _Sink:
    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass


def test_batches_read_every_row_once_while_rows_are_deleted():
    for index in range(11):
        journal.mark("s", ["h"], f"n{index:02d}", "PUT", index + 1)
    seen = []
    for batch in journal.batches(PendingReplication.objects.all(), size=4):
        seen.extend(row.name for row in batch)
        PendingReplication.objects.filter(pk__in=[row.pk for row in batch]).delete()
    assert seen == [f"n{index:02d}" for index in range(11)]


def test_clear_repaired_keeps_rows_written_after_the_repair():
    for name, seq in [("old", 5), ("newer", 50), ("same", 10)]:
        journal.mark("s", ["h"], name, "PUT", seq)
    rows = {row.name: row for row in PendingReplication.objects.all()}
    journal.clear_repaired([(rows["old"].pk, 10), (rows["newer"].pk, 10), (rows["same"].pk, 10)])
    assert list(PendingReplication.objects.values_list("name", flat=True)) == ["newer"]
    journal.clear_repaired([])  # nothing to do, nothing sent


def test_a_failed_repair_backs_off_and_a_new_failure_makes_it_due(scripted):
    journal_rows(["x"], hosts=HOSTS[:1])
    scripted({"x": "fail"})
    before = timezone.now()
    drain(PendingReplication.objects.all(), max_backoff=1000)
    row = PendingReplication.objects.get()
    # Failed twice (the operation, the repair): 2**2 s, jittered between half and all.
    assert row.attempts == 2
    assert before + timedelta(seconds=2) <= row.next_attempt
    assert row.next_attempt <= timezone.now() + timedelta(seconds=4)
    assert not PendingReplication.objects.filter(journal.due(timezone.now())).exists()
    journal.mark(ALIAS, [row.host], "x", "DELETE", journal.now_seq(), error="again")
    assert PendingReplication.objects.get().next_attempt is None
    assert PendingReplication.objects.filter(journal.due(timezone.now())).exists()


def test_an_older_failure_does_not_reset_a_newer_rows_back_off():
    journal.mark("s", ["h"], "n", "PUT", 20)
    later = timezone.now() + timedelta(minutes=5)
    PendingReplication.objects.update(next_attempt=later)
    journal.mark("s", ["h"], "n", "PUT", 10, error="an older operation, finished late")
    assert PendingReplication.objects.get().next_attempt == later


@pytest.mark.parametrize(
    ("attempts", "low", "high"), [(0, 0.5, 1), (1, 1, 2), (3, 4, 8), (10, 30, 60), (500, 30, 60)]
)
def test_retry_delay_doubles_up_to_the_cap(attempts, low, high):
    delays = [journal.retry_delay(attempts, base=1, cap=60, jitter=lambda j=j: j) for j in (0, 1)]
    assert delays == [low, high]
