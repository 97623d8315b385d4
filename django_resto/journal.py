"""Writing and clearing journal rows, with the supersession rule in one place.

Each operation carries ``seq``, the number the database issued to it inside the
name's lock (ordering.py), never a clock reading: a machine whose clock runs ahead
could otherwise clear rows written after it. A failure writes the row for
(storage, host, name) unless a newer operation already did; a success deletes the
row only if no newer operation wrote it since. So whatever order threads and
processes finish in, a row exists exactly while the host may be behind.

A failure that cannot be written is not swallowed: :class:`JournalError` reaches the
caller, whatever ``fatal_exceptions`` says, because without the row nothing would
ever repair that host. A success that cannot clear its row only leaves a stale row
behind (the repair finds the host in line), so that is logged.

A drain reads rows by batches (:func:`batches`) and deletes the ones it repaired by
batches (:func:`clear_repaired`), each under the same rule as :func:`clear`: a row that
an operation newer than the repair wrote meanwhile survives. A failed repair backs its
row off (``next_attempt``, :func:`retry_delay`); a fresh failure (:func:`mark`) makes
the row due again at once, since it says something new happened to the host.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.apps import apps
from django.db import IntegrityError, connections, router, transaction
from django.db.models import F, Q
from django.utils import timezone

from .exceptions import JournalUnavailable

if TYPE_CHECKING:
    from django.db.models import QuerySet

    from .models import PendingReplication

logger = logging.getLogger(__name__)

#: Rows one query reads, and repaired rows one statement deletes, when draining: large
#: enough that 10,000 rows take a few dozen statements instead of tens of thousands,
#: small enough that a batch's rows and their statement stay a few hundred kilobytes.
BATCH_SIZE = 500


def enabled() -> bool:
    """The journal exists only when django_resto is an installed app (it has a table)."""
    return apps.is_installed("django_resto")


def now_seq() -> int:
    """A fresh operation number from the journal's database (see ordering.next_seq)."""
    from .ordering import next_seq

    return next_seq()


def _model():
    from .models import PendingReplication

    return PendingReplication


def mark(
    storage: str,
    hosts: Iterable[str],
    name: str,
    operation: str,
    seq: int,
    *,
    error: str = "",
    sources: list[str] | None = None,
    attempted: bool = True,
    next_attempt: datetime | None = None,
) -> None:
    """Record that ``hosts`` may be behind on ``name`` since operation ``seq``.

    ``next_attempt`` is for a failed repair backing its row off; every other failure
    leaves it empty, so that a row a newer operation wrote is due again at once
    whatever back-off an older failure had earned it.
    """
    from .ordering import note_rows

    model = _model()
    now = timezone.now()
    moment = now if attempted else None
    # Once each: one upsert may not touch a row twice (PostgreSQL refuses it).
    hosts = list(dict.fromkeys(hosts))
    if hosts:
        note_rows(storage, name)  # before the row: see ordering.note_rows
    fields: dict[str, Any] = {
        "operation": operation,
        "seq": seq,
        "last_error": error[:4000],
        "sources": list(sources or []),
        "next_attempt": next_attempt,
    }
    if attempted:
        fields["last_attempt"] = moment
    connection = connections[router.db_for_write(model)]
    if hosts and connection.vendor in _UPSERT_VENDORS:
        # A new row's own columns, after those an update rewrites (_UPSERT_COLUMNS).
        values = {**fields, "last_attempt": moment, "attempts": int(attempted)}
        values["first_attempt"] = now
        prepared = [
            _prepared(model, column, values[column], connection) for column in _UPSERT_COLUMNS
        ]
        params: list[Any] = []
        for host in hosts:
            params += [storage, host, name, *prepared]
        params.append(int(attempted))
        with connection.cursor() as cursor:
            cursor.execute(_upsert_sql(connection.alias, len(hosts), attempted), params)
        return
    for host in hosts:
        rows = model.objects.filter(storage=storage, host=host, name=name)
        _upsert(model, rows, storage, host, name, seq, attempted, fields)


#: Databases whose ``INSERT ... ON CONFLICT ... DO UPDATE ... WHERE`` writes a failure in
#: one statement; elsewhere the ORM's update-or-create (``_upsert``) does it in three
#: or four. On a save whose host is down (or an AsyncStorage save, which marks every
#: host before its work is handed out) the ORM's were most of the save's cost: about
#: 1.5 ms against 0.1 ms.
_UPSERT_VENDORS = ("sqlite", "postgresql")
#: The columns the upsert inserts after (storage, host, name), in its parameters' order.
_UPSERT_COLUMNS = (
    "operation",
    "seq",
    "last_error",
    "sources",
    "next_attempt",
    "last_attempt",
    "attempts",
    "first_attempt",
)


#: The upsert's columns that are datetimes: adapted by the backend itself, as the
#: field would after its checks for naive values, which cost more than the statement's
#: other parameters together (timezone.now() is aware).
_DATETIME_COLUMNS = frozenset({"next_attempt", "last_attempt", "first_attempt"})


def _prepared(model: Any, column: str, value: Any, connection: Any) -> Any:
    if column in _DATETIME_COLUMNS:
        return connection.ops.adapt_datetimefield_value(value)
    if column == "sources":
        return model._meta.get_field(column).get_db_prep_save(value, connection)
    return value  # str and int, as the caller gives them


@functools.lru_cache(maxsize=64)
def _upsert_sql(alias: str, host_count: int, attempted: bool) -> str:
    """The supersession rule as one upsert: a row written by a newer operation is left."""
    model = _model()
    quote = connections[alias].ops.quote_name
    table = quote(model._meta.db_table)

    def column(field: str) -> str:
        return quote(model._meta.get_field(field).column)

    inserted = ("storage", "host", "name", *_UPSERT_COLUMNS)
    updated = ["operation", "seq", "last_error", "sources", "next_attempt"]
    if attempted:
        updated.append("last_attempt")  # an intent (not attempted) leaves the last try's
    rows = ", ".join(["(" + ", ".join(["%s"] * len(inserted)) + ")"] * host_count)
    return (
        f"INSERT INTO {table} ({', '.join(column(f) for f in inserted)}) VALUES {rows} "
        f"ON CONFLICT ({column('storage')}, {column('host')}, {column('name')}) DO UPDATE SET "
        + ", ".join(f"{column(f)} = EXCLUDED.{column(f)}" for f in updated)
        + f", {column('attempts')} = {table}.{column('attempts')} + %s"
        f" WHERE {table}.{column('seq')} <= EXCLUDED.{column('seq')}"
    )


def _upsert(
    model: Any,
    rows: Any,
    storage: str,
    host: str,
    name: str,
    seq: int,
    attempted: bool,
    fields: dict[str, Any],
) -> None:
    """Update the row if no newer operation wrote it, else create it; never lose it.

    Other processes insert and clear the same row concurrently: an insert that meets
    the unique constraint means another one created the row just now, so the update is
    tried again (or the row, if newer, left as it is); if a success cleared it in
    between, the insert is tried again. An insert that keeps being refused (a
    constraint or a trigger of the database's own) raises.
    """
    bump = F("attempts") + (1 if attempted else 0)
    refused: IntegrityError | None = None
    for _ in range(3):
        # Only a newer (or the same) operation may overwrite what a row says.
        if rows.filter(seq__lte=seq).update(attempts=bump, **fields) or rows.exists():
            return
        try:
            with transaction.atomic():
                model.objects.create(
                    storage=storage,
                    host=host,
                    name=name,
                    attempts=1 if attempted else 0,
                    **fields,
                )
            return
        except IntegrityError as exc:
            refused = exc
    assert refused is not None
    raise refused


def clear(
    storage: str, hosts: Iterable[str], name: str, seq: int, *, known: bool | None = None
) -> int:
    """Forget rows that operation ``seq`` (or a later state of the host) made obsolete.

    ``known`` is what the caller already asked (``probe``, with the lock): False, the
    name had no rows and nothing is sent to the database; True, it had, and the rows
    are deleted without asking again.
    """
    hosts = list(hosts)
    if not hosts or known is False:
        return 0
    # Nearly every successful operation has nothing to clear, and building an ORM
    # query costs more than running it (about 0.6 ms, as much as the three PUTs of a
    # small save): ask with one prepared statement first.
    if known is None and not _any_row(storage, hosts, name, seq):
        return 0
    rows = _model().objects.filter(storage=storage, host__in=hosts, name=name, seq__lte=seq)
    deleted, _ = rows.delete()
    return deleted


def batches(
    rows: QuerySet[PendingReplication], *, size: int | None = None
) -> Iterator[list[PendingReplication]]:
    """``rows`` in primary key order, ``size`` (BATCH_SIZE) at a time, one query per batch.

    Keyset pages (``pk > last``), not offsets: the drain deletes rows as it goes, and
    an offset would skip as many rows as were deleted before it.
    """
    size = size or BATCH_SIZE
    last = None
    while True:
        page = rows if last is None else rows.filter(pk__gt=last)
        batch = list(page.order_by("pk")[:size])
        if batch:
            yield batch
        if len(batch) < size:
            return
        last = batch[-1].pk


def due(moment: datetime) -> Q:
    """Rows whose back-off has ended by ``moment`` (or that never had one)."""
    return Q(next_attempt__isnull=True) | Q(next_attempt__lte=moment)


def clear_repaired(settled: Sequence[tuple[int, int]]) -> None:
    """Delete repaired rows by primary key, each if no newer operation wrote it since.

    ``settled`` holds ``(pk, seq)`` pairs, ``seq`` being what the repair settled (the
    number its batch drew, in this name's lock or an earlier one: ordering.shared_number;
    never newer than the repair's hold of the lock, as for :func:`clear`). Deleting after
    the repair, outside its lock, loses nothing: every operation that writes the row
    after the repair was numbered after it, so its row has a larger ``seq`` and stays. A row
    cleared and written anew between the batch's read and the repair has another
    primary key and stays too, where :func:`clear` would have deleted it: one more
    repair, which finds the host in line. A row failed again while its delete waits is
    updated rather than written anew, so it keeps its ``attempts`` and
    ``first_attempt``, where an immediate clear would have reset them.

    One statement, run for every pair in one transaction: SQLite runs it in-process
    and psycopg pipelines it, so a batch costs one round trip, not one per row.
    """
    if not settled:
        return
    alias = router.db_for_write(_model())
    with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
        cursor.executemany(_clear_sql(alias), [list(pair) for pair in settled])


@functools.lru_cache(maxsize=8)
def _clear_sql(alias: str) -> str:
    opts = _model()._meta
    quote = connections[alias].ops.quote_name
    pk = quote(opts.pk.column)
    seq = quote(opts.get_field("seq").column)
    return f"DELETE FROM {quote(opts.db_table)} WHERE {pk} = %s AND {seq} <= %s"


def retry_delay(
    attempts: int, *, base: float, cap: float, jitter: Callable[[], float] = random.random
) -> float:
    """Seconds a row that failed ``attempts`` times waits: ``base * 2**attempts``, capped.

    Jittered between half and all of it, so that the rows of a host that was down
    together do not all come due in the same second once it is back.
    """
    delay = min(cap, base * 2.0 ** min(attempts, 64))
    return delay * (0.5 + jitter() / 2)


def back_off_failure(
    storage: str, host: str, name: str, *, limit: int, base: float, cap: float
) -> tuple[datetime | None, int | None]:
    """Give the row a failure just wrote its back-off, unless someone else will try it.

    Returns the moment it is due, or None; and, when it was left for having failed more
    than ``limit`` times, its ``attempts`` (else None). No moment either when the row is
    gone (in line since), already backed off (whoever did tries it next), or rewritten
    by a newer operation since it was read: only the caller that moves the row from
    due-now to backed-off may retry it, so however many callers fail on one row, each
    failure adds one to its ``attempts`` and the retries stay bounded by ``limit``. The
    delay is the drain's (:func:`retry_delay`), so ``--watch`` waits for the same moment.
    """
    # The database the rows are written to: a lagging replica could miss the row.
    model = _model()
    rows = model.objects.using(router.db_for_write(model)).filter(
        storage=storage, host=host, name=name
    )
    row = rows.only("pk", "attempts", "next_attempt").first()
    if row is None or row.next_attempt is not None:
        return None, None
    if row.attempts > limit:
        return None, row.attempts
    when = timezone.now() + timedelta(seconds=retry_delay(row.attempts, base=base, cap=cap))
    claimed = rows.filter(pk=row.pk, attempts=row.attempts, next_attempt__isnull=True).update(
        next_attempt=when
    )
    return (when if claimed else None), None


def _any_row(storage: str, hosts: list[str], name: str, seq: int) -> bool:
    # The database the rows are written to: a lagging replica could miss a row.
    alias = router.db_for_write(_model())
    with connections[alias].cursor() as cursor:
        cursor.execute(_any_row_sql(alias, len(hosts)), [storage, name, seq, *hosts])
        return cursor.fetchone() is not None


def probe(storage: str, hosts: list[str], name: str) -> tuple[str, list[str]] | None:
    """An SQL expression: does ``name`` have a row for any of ``hosts``? (see ordering)

    Asked by host, so that PostgreSQL looks each (storage, host, name) up in the unique
    index instead of scanning the storage's backlog.
    """
    if not hosts:
        return None
    alias = router.db_for_write(_model())
    return f"EXISTS ({_any_row_sql(alias, len(hosts), with_seq=False)})", [storage, name, *hosts]


@functools.lru_cache(maxsize=64)
def _any_row_sql(alias: str, host_count: int, with_seq: bool = True) -> str:
    """The existence query, built once per database and number of hosts, not per save."""
    opts = _model()._meta
    quote = connections[alias].ops.quote_name
    column = {f: quote(opts.get_field(f).column) for f in ("storage", "host", "name", "seq")}
    # No LIMIT (not every database has it): the unique constraint on (storage, host,
    # name) already bounds the answer to one row per host.
    seq = f"AND {column['seq']} <= %s " if with_seq else ""
    return (
        f"SELECT 1 FROM {quote(opts.db_table)} WHERE {column['storage']} = %s "
        f"AND {column['name']} = %s {seq}"
        f"AND {column['host']} IN ({', '.join(['%s'] * host_count)})"
    )


def safely(func, *args, **kwargs) -> None:
    """Run a journal write whose failure loses nothing (a clear), logging a problem."""
    try:
        func(*args, **kwargs)
    except Exception:
        logger.exception("Could not write the django_resto journal")


def strictly(func, *args, **kwargs) -> None:
    """Run a journal write that must not be lost; re-raise a failure, naming its cause."""
    try:
        func(*args, **kwargs)
    except Exception as exc:
        raise JournalUnavailable(f"Could not write the django_resto journal: {exc}") from exc
