"""Per-name ordering across processes and machines: one lock per (storage, name).

Every replication of a name — a save, an overwrite, a delete, background work, a
repair — runs inside :func:`ordered`, and decides what to send (master copy present:
PUT it; absent: DELETE) once it holds the lock. Without it, a PUT opened before
another process unlinked the file can land after that process's DELETE: both
succeed, nothing is journaled, and the deleted file lives on the media servers.

The lock lives where every application server already meets: the journal's
database.

- **PostgreSQL**: a session-level advisory lock on a 64-bit hash of (storage, name),
  so it holds across processes and machines. ``pg_try_advisory_lock`` never waits
  inside the database (a timed-out wait there would abort the caller's transaction);
  a contended lock is polled until ``lock_timeout``.
- **SQLite** is one machine: a byte-range ``fcntl`` lock in one lock file beside the
  database, one byte per name hash, plus an in-process lock per byte (POSIX record
  locks belong to a process, so they cannot keep two threads of one process apart).
  Never a database-wide lock held during network I/O.
- Anything else: the in-process lock only (the system check ``django_resto.W007``
  says so): correct for one process, not for several.

The lock also issues the operation's sequence number (:func:`next_seq`), inside the
lock, so the journal's order is the order in which operations held the lock, whatever
the clocks of the machines say: on PostgreSQL from a SEQUENCE; on SQLite from a
counter in the lock file (the same machine is all SQLite orders), which a process's
first number sets above every row's. Beside it, SQLite's rows file keeps a byte per
name hash, set before any journal row is written for such a name: a success whose
byte is not set has no row to clear and asks the database nothing, so a healthy save
on SQLite runs no statement at all (:func:`note_rows`).

Nested use in one thread (an operation that calls another, such as ``execute``
inside ``replicate``) takes the lock once and shares its number.

A drain's repairs may share one number between names (:func:`shared_number`): a number
drawn before a name's lock is older than the lock, so a row it clears was written by
an operation whose hold of the lock ended before the repair's began. It can only clear
less than a number drawn inside the lock, never more, and it saves drawing one per
repair (on PostgreSQL, a statement).
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import logging
import os
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from django.apps import apps
from django.db import connections, router

__all__ = [
    "LockTimeout",
    "LockUnavailable",
    "known_rows",
    "next_seq",
    "ordered",
    "shared_number",
    "strategy",
]

logger = logging.getLogger(__name__)

#: A test-only switch (the drills set it in a worker process to show that their check
#: can fail): no lock is taken and numbers come from the clock, as before ordering.
DISABLED = False

# Byte offsets in the SQLite lock file: 2**24 names before two share a byte (sharing
# only serializes them, it never breaks the exclusion).
_SLOTS = 1 << 24
#: Where the database's numbers start: above any ``time.time_ns()`` until 2116, so that
#: rows numbered by the clock (before migration 0002, or by a process still running older
#: code during an upgrade) are older than every operation the database numbers.
FIRST_SEQ = 1 << 62
_POLL_FIRST = 0.001
_POLL_MAX = 0.05
#: Seconds a shared number serves (see shared_number) before a lock draws the next:
#: a repair that waited on a slow host must not settle with a number so old that rows
#: failed again meanwhile all wait for the next pass.
SHARED_FOR = 1.0


class LockTimeout(TimeoutError):
    """The per-name lock was held elsewhere for longer than ``lock_timeout``."""


class LockUnavailable(Exception):
    """The journal's database could not give the lock or its number (it is down...)."""


@dataclass
class _Held:
    key: tuple[str, str]
    seq: int
    rows: bool | None = None  # the probe's answer, where the lock ran it
    depth: int = 1


@dataclass
class _Shared:
    """The number the locks of one :func:`shared_number` block share, once drawn."""

    seq: int | None = None
    drawn: float = 0.0  # time.monotonic() when it was

    def current(self) -> int | None:
        """The number, unless there is none yet or it is older than SHARED_FOR."""
        if self.seq is not None and time.monotonic() - self.drawn < SHARED_FOR:
            return self.seq
        return None

    def keep(self, seq: int) -> int:
        if seq != self.seq:
            self.seq, self.drawn = seq, time.monotonic()
        return seq


_local = threading.local()


@contextmanager
def shared_number() -> Iterator[None]:
    """The locks this thread takes meanwhile share one number, drawn by the first of them.

    For repairs only, which write no row of their own a later operation could be
    ordered against: their number only bounds the rows their success clears (see the
    module's docstring). A number older than SHARED_FOR is not handed out again but
    replaced, so that the rows operations wrote meanwhile do not survive the repairs
    that made them obsolete (they would be repaired once more, on the next pass).
    """
    previous = getattr(_local, "shared", None)
    _local.shared = _Shared()
    try:
        yield
    finally:
        _local.shared = previous


def _held() -> dict[tuple[str, str], _Held]:
    held = getattr(_local, "held", None)
    if held is None:
        held = _local.held = {}
    return held


def _digest(storage: str, name: str) -> int:
    raw = hashlib.blake2b(f"{storage}\0{name}".encode(), digest_size=8).digest()
    return int.from_bytes(raw, "big", signed=True)


def journal_database() -> str | None:
    """The database alias the journal writes to, or None without the journal."""
    if not apps.is_installed("django_resto"):
        return None
    from .models import PendingReplication

    return router.db_for_write(PendingReplication)


def strategy(alias: str | None = None) -> str:
    """Which lock protects names.

    "postgresql" and "sqlite" (a file) hold across processes; "memory" (an in-memory
    SQLite database, which only one process can open) and "process" (any other
    database, or no journal) hold within this process only.
    """
    if alias is None:
        alias = journal_database()
    if alias is None:
        return "process"
    vendor = connections[alias].vendor
    if vendor == "postgresql":
        return "postgresql"
    if vendor == "sqlite":
        return "sqlite" if _sqlite_lock_path(alias) is not None else "memory"
    return "process"


# --- sequence numbers ------------------------------------------------------------


#: SQLite's counter: an upsert, so that a table emptied by a test runner's flush starts
#: again (RETURNING is added by the caller).
_SQLITE_NEXT = (
    "INSERT INTO django_resto_sequence (id, value) VALUES (1, %s) "
    "ON CONFLICT (id) DO UPDATE SET value = value + 1"
)


def next_seq(alias: str | None = None) -> int:
    """A number larger than every one issued before it, by any process on any machine.

    PostgreSQL: a SEQUENCE (non-transactional, no row lock). SQLite in a file: the
    counter in the lock file (:func:`_file_next`), outside any transaction of the
    database. Elsewhere (an in-memory SQLite database, another database): one counter
    row, incremented in place. Without the journal (no database): the clock, which is
    then only compared within this process.
    """
    if DISABLED:
        return time.time_ns()
    if alias is None:
        alias = journal_database()
    if alias is None:
        return time.time_ns()
    connection = connections[alias]
    if connection.vendor == "sqlite":
        if _sqlite_lock_path(alias) is not None:
            return _file_next(alias)
        return _sqlite_next(alias, None)[0]
    if connection.vendor != "postgresql":
        return _orm_next_seq(alias)
    with connection.cursor() as cursor:
        cursor.execute("SELECT nextval('django_resto_seq')")
        row = cursor.fetchone()
    assert row is not None
    return int(row[0])


def _draw(
    alias: str | None, probe: tuple[str, Sequence[Any]] | None, digest: int, kind: str
) -> tuple[int, bool | None]:
    """A new number, and on SQLite the probe's answer, each as cheaply as it comes.

    A database file: the number from the lock file (:func:`_file_next`), and the probe
    asked only if the name's byte in the rows file says it may have rows
    (:func:`note_rows`); a healthy save then runs no statement at all. An in-memory
    database (one process): the counter's upsert, which returns the probe as a second
    column, as PostgreSQL's lock statement does.
    """
    if alias is not None and kind == "sqlite" and not DISABLED:
        seq = _file_next(alias)
        if probe is None:
            return seq, None
        if not _may_have_rows(alias, digest):
            return seq, False
        return seq, _ask(alias, probe)
    if probe is None or DISABLED or alias is None or kind != "memory":
        return next_seq(alias), None
    return _sqlite_next(alias, probe)


def _ask(alias: str, probe: tuple[str, Sequence[Any]]) -> bool:
    with connections[alias].cursor() as cursor:
        cursor.execute(f"SELECT {probe[0]}", list(probe[1]))
        row = cursor.fetchone()
    return bool(row and row[0])


def _sqlite_next(alias: str, probe: tuple[str, Sequence[Any]] | None) -> tuple[int, bool | None]:
    """SQLite's counter upsert, with the probe's answer as a second column if given."""
    sql, params = f"{_SQLITE_NEXT} RETURNING value", [FIRST_SEQ]
    if probe is not None:
        sql, params = f"{sql}, {probe[0]}", [*params, *probe[1]]
    with connections[alias].cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    assert row is not None
    return int(row[0]), (bool(row[1]) if probe is not None else None)


def _orm_next_seq(alias: str) -> int:
    """The counter row through the ORM, for databases without a tested fast path."""
    from django.db import transaction

    from .models import JournalSequence

    with transaction.atomic(using=alias):
        counter = JournalSequence.objects.using(alias).select_for_update().filter(pk=1).first()
        if counter is None:
            counter = JournalSequence.objects.using(alias).create(id=1, value=FIRST_SEQ)
        else:
            counter.value += 1
            counter.save(update_fields=["value"])
        return counter.value


# --- the lock --------------------------------------------------------------------


def holds(storage: str, name: str) -> bool:
    """Whether this thread holds the lock of (storage, name) already (a nested use)."""
    return (storage, name) in _held()


def known_rows(storage: str, name: str) -> bool | None:
    """What the probe given to the lock this thread holds on (storage, name) answered.

    None when no probe ran (a database without one, none given, a number shared by a
    drain's batch, or no lock held).
    """
    held = _held().get((storage, name))
    return None if held is None else held.rows


@contextmanager
def ordered(
    storage: str,
    name: str,
    *,
    timeout: float,
    probe: tuple[str, Sequence[Any]] | None = None,
) -> Iterator[int]:
    """Hold the lock of (``storage``, ``name``) and yield the operation's sequence number.

    Raises :class:`LockTimeout` when the lock cannot be had within ``timeout``
    seconds: the caller journals that as a failure of the operation.

    ``probe`` is an SQL expression (and its parameters) that PostgreSQL evaluates in
    the statement that takes the lock, and SQLite in the one that draws the number,
    saving a statement per save; its answer is
    :func:`known_rows`. The journal asks whether the name has rows to clear: one that
    appears after it was asked can only come from a later operation, which a success
    must not clear anyway.
    """
    key = (storage, name)
    held = _held()
    current = held.get(key)
    if current is not None:
        current.depth += 1
        try:
            yield current.seq
        finally:
            current.depth -= 1
        return
    if DISABLED:
        yield next_seq()
        return
    alias = journal_database()
    kind = strategy(alias)
    digest = _digest(storage, name)
    wait = _Wait(storage, name, timeout)
    local = _STRIPES[digest % _SLOTS % len(_STRIPES)]
    if not local.acquire(timeout=timeout):
        raise wait.timed_out("this process")
    try:
        try:
            seq, rows, fd = _acquire(
                kind, alias, digest, wait, probe, getattr(_local, "shared", None)
            )
        except LockTimeout:
            raise
        except Exception as exc:
            raise LockUnavailable(
                f"could not take the lock of {name!r} in the journal database: {exc}"
            ) from exc
        held[key] = _Held(key, seq, rows)
        try:
            yield seq
        finally:
            del held[key]
            _release(kind, alias, digest, fd)
    finally:
        local.release()


class _Wait:
    """One wait for a lock held elsewhere: polled, with a growing pause, up to a deadline."""

    def __init__(self, storage: str, name: str, timeout: float) -> None:
        self.storage = storage
        self.name = name
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.pause = _POLL_FIRST

    def timed_out(self, holder: str) -> LockTimeout:
        return LockTimeout(
            f"the lock of {self.name!r} (storage {self.storage!r}) was held by {holder} for "
            f"more than lock_timeout={self.timeout:g}s"
        )

    def sleep_or_give_up(self) -> None:
        """Sleep before the next try; LockTimeout once the deadline has passed."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise self.timed_out("another process")
        time.sleep(min(self.pause, left))
        self.pause = min(self.pause * 2, _POLL_MAX)


def _acquire(
    kind: str,
    alias: str | None,
    digest: int,
    wait: _Wait,
    probe: tuple[str, Sequence[Any]] | None,
    shared: _Shared | None,
) -> tuple[int, bool | None, int | None]:
    """The lock's number, the probe's answer and the lock file (SQLite) to unlock in."""
    if kind == "postgresql":
        assert alias is not None
        return *_pg_acquire(alias, digest, wait, probe, shared), None
    fd = None
    if kind == "sqlite":
        assert alias is not None
        fd = _file_acquire(alias, digest % _SLOTS, wait)
    try:
        if shared is not None:
            drawn = shared.current()
            if drawn is not None:
                return shared.keep(drawn), None, fd
        seq, rows = _draw(alias, probe, digest, kind)
        return (seq if shared is None else shared.keep(seq)), rows, fd
    except BaseException:
        _release(kind, alias, digest, fd)
        raise


def _release(kind: str, alias: str | None, digest: int, fd: int | None = None) -> None:
    try:
        _unlock(kind, alias, digest, fd)
    except Exception:
        # A connection that died took its session's advisory locks with it.
        logger.warning("Could not release a django_resto name lock", exc_info=True)


def _unlock(kind: str, alias: str | None, digest: int, fd: int | None = None) -> None:
    if kind == "postgresql":
        assert alias is not None
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [digest])
    elif kind == "sqlite":
        assert alias is not None
        slot = digest % _SLOTS
        slots = _slots()
        slots[slot] -= 1
        if not slots[slot]:
            del slots[slot]
            fcntl.lockf(_lock_file(alias) if fd is None else fd, fcntl.LOCK_UN, 1, slot)


def _pg_acquire(
    alias: str,
    digest: int,
    wait: _Wait,
    probe: tuple[str, Sequence[Any]] | None,
    shared: _Shared | None = None,
) -> tuple[int, bool | None]:
    # Lock, number and probe in one round trip; the number is drawn only once the lock
    # is ours (a shared one already drawn is only handed back).
    drawn = shared.current() if shared is not None else None
    number = "nextval('django_resto_seq')" if drawn is None else "%s::bigint"
    sql = f"SELECT CASE WHEN pg_try_advisory_lock(%s) THEN {number} END"
    params: list[Any] = [digest] if drawn is None else [digest, drawn]
    if probe is not None:
        sql += f", {probe[0]}"
        params.extend(probe[1])
    while True:
        with connections[alias].cursor() as cursor:
            cursor.execute(sql, params)
            row = cursor.fetchone()
        if row is not None and row[0] is not None:
            seq = int(row[0]) if shared is None else shared.keep(int(row[0]))
            return seq, (bool(row[1]) if probe is not None else None)
        wait.sleep_or_give_up()


# --- SQLite: byte-range locks in one file ----------------------------------------

_files: dict[str, int] = {}
_files_lock = threading.Lock()
# The in-process half: a fixed set of stripes (a lock per name would grow for ever in a
# long-lived worker). Names that share a byte of the lock file share a stripe, so two
# threads of one process never hold the same byte at once; other names that share a
# stripe only wait for each other within this process. Re-entrant, for a thread that
# would hold two names of one stripe (the byte is then locked once, see _file_acquire).
_STRIPES = [threading.RLock() for _ in range(4096)]


def _sqlite_lock_path(alias: str) -> str | None:
    # The handler's settings, not connections[alias]: the same dict (the test runner's
    # switch to the test database shows in both), without a thread-local lookup, on a
    # path every save takes several times.
    return _lock_path_of(str(connections.settings[alias].get("NAME") or ""))


@functools.lru_cache(maxsize=16)
def _lock_path_of(name: str) -> str | None:
    if not name or name == ":memory:" or name.startswith("file:") or "mode=memory" in name:
        return None
    return f"{name}.resto-locks"


def _lock_file(alias: str) -> int:
    path = _sqlite_lock_path(alias)
    assert path is not None
    return _open_cached(path)


def _open_cached(path: str) -> int:
    """One descriptor per file for the process's life: closing any descriptor of a file
    would drop every POSIX lock this process holds on it."""
    fd = _files.get(path)
    if fd is None:
        with _files_lock:
            fd = _files.get(path)
            if fd is None:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                _files[path] = fd
    return fd


def _slots() -> dict[int, int]:
    """The lock-file bytes this thread holds, and how many of its names hold each."""
    slots = getattr(_local, "slots", None)
    if slots is None:
        slots = _local.slots = {}
    return slots


def _file_acquire(alias: str, slot: int, wait: _Wait) -> int:
    """Lock byte ``slot`` of the lock file; return the file, for the unlock."""
    fd = _lock_file(alias)
    slots = _slots()
    if slots.get(slot):
        # This thread holds the byte already for another name (a hash collision):
        # POSIX locks belong to the process, so locking it again would be a no-op and
        # unlocking it for one name would free it for both.
        slots[slot] += 1
        return fd
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, slot)
            break
        except (BlockingIOError, PermissionError):
            wait.sleep_or_give_up()
    slots[slot] = 1
    return fd


# --- SQLite: the numbers, and which names may have rows, in files ---------------------
#
# A number drawn from the counter row was a write transaction on every save: the
# largest part of what the journal cost a small save, and, inside a request's
# transaction (ATOMIC_REQUESTS), a write lock held until the request committed. SQLite
# is one machine, so the number can come from where its locks already are: an 8-byte
# counter in the lock file, past every name's byte, incremented under a lock of its own.

#: Where the counter lives in the lock file: past every name's byte.
_COUNTER_AT = _SLOTS
_COUNTER = struct.Struct(">q")
#: How far above the database's counter row the file's numbers start: a process still
#: running the code that drew from the row (during an upgrade) then numbers its
#: operations below every new one, which can only leave a row to repair, never clear one
#: that should stay (a newer number clears, an older one cannot).
_GENERATION_GAP = 1 << 40
#: One byte per name hash in the rows file: 1 once a row may have been written for a
#: name with that hash. A success whose name's byte is 0 has nothing to clear and asks
#: nothing; one with 1 asks the database, as every success used to.
_ROW_SLOTS = 1 << 20
_counter_lock = threading.Lock()
_seeded: set[str] = set()


def _file_next(alias: str) -> int:
    """The next number, from the counter in the lock file (see above).

    The first draw of a process also looks at the database: the numbers go on above
    every row's and above the counter row's (plus the gap), so that a lock file that is
    new, or older than the journal (a database restored from a backup, a lost page
    cache), never hands out a number some row already outranks.
    """
    path = _sqlite_lock_path(alias)
    assert path is not None
    fd = _open_cached(path)
    floor = 0 if path in _seeded else _database_floor(alias)
    with _counter_lock:  # POSIX locks cannot keep two threads of one process apart
        fcntl.lockf(fd, fcntl.LOCK_EX, _COUNTER.size, _COUNTER_AT)
        try:
            raw = os.pread(fd, _COUNTER.size, _COUNTER_AT)
            current = _COUNTER.unpack(raw)[0] if len(raw) == _COUNTER.size else 0
            value = max(current, floor) + 1
            os.pwrite(fd, _COUNTER.pack(value), _COUNTER_AT)
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN, _COUNTER.size, _COUNTER_AT)
    if path not in _seeded:
        _note_existing_rows(alias)
        _seeded.add(path)
    return value


def _database_floor(alias: str) -> int:
    """Above which the file's numbers must go: the journal's rows, the counter row."""
    # Plain statements: the ORM's first compilation of each query cost a process's first
    # save several milliseconds.
    from .models import JournalSequence, PendingReplication

    quote = connections[alias].ops.quote_name
    with connections[alias].cursor() as cursor:
        cursor.execute(f"SELECT value FROM {quote(JournalSequence._meta.db_table)} WHERE id = 1")
        counter = cursor.fetchone()
        cursor.execute(f"SELECT MAX(seq) FROM {quote(PendingReplication._meta.db_table)}")
        rows = cursor.fetchone()
    top = rows[0] if rows and rows[0] is not None else 0
    return max((counter[0] if counter else FIRST_SEQ) + _GENERATION_GAP, top)


def _rows_path(alias: str) -> str:
    path = _sqlite_lock_path(alias)
    assert path is not None
    return path[: -len("locks")] + "rows"


def _rows_file(alias: str) -> int:
    return _open_cached(_rows_path(alias))


def note_rows(storage: str, name: str) -> None:
    """Say, before writing one, that (storage, name) may have journal rows (SQLite).

    Written before the row, so that a success that finds the byte at 0 can only have
    looked before the row existed: the same as a probe asked then, which a row written
    afterwards by another operation (with a newer number) must not be cleared by anyway.
    Bytes are never reset; a name that shares one with a name once journaled only asks
    the database, as before.
    """
    if DISABLED:
        return
    alias = journal_database()
    if alias is None or strategy(alias) != "sqlite":
        return
    try:
        _note(_rows_file(alias), storage, name)
    except OSError:
        # The row is still written; only a success may then leave it for the drain.
        logger.warning("Could not note a journal row in %s", _rows_path(alias), exc_info=True)


def _note(fd: int, storage: str, name: str) -> None:
    os.pwrite(fd, b"\x01", _digest(storage, name) % _ROW_SLOTS)


def _may_have_rows(alias: str, digest: int) -> bool:
    try:
        # Past the end of the file (a byte never set) reads as nothing: no rows.
        return os.pread(_rows_file(alias), 1, digest % _ROW_SLOTS) not in (b"", b"\x00")
    except OSError:
        return True  # cannot tell: ask the database


def _note_existing_rows(alias: str) -> None:
    """An empty rows file meets the rows written before it (by older code, or before a
    restore): their names' bytes are set, so that the successes that follow clear them.
    A file with any byte set was seen to by an earlier process of this machine."""
    from .models import PendingReplication

    fd = _rows_file(alias)
    if os.fstat(fd).st_size:
        return
    table = connections[alias].ops.quote_name(PendingReplication._meta.db_table)
    with connections[alias].cursor() as cursor:
        cursor.execute(f"SELECT DISTINCT storage, name FROM {table}")
        for storage, name in cursor:
            _note(fd, storage, name)


def _forget_files_after_fork() -> None:
    # A forked child shares the parent's open file description but not its locks;
    # it opens its own, so its locks are its own.
    global _counter_lock
    _files.clear()
    _local.__dict__.clear()
    _counter_lock = threading.Lock()  # another thread may have held it at the fork


os.register_at_fork(after_in_child=_forget_files_after_fork)
