"""The replication core: one Replicator per storage, between the Storage API and the hosts.

A backend (storage.py) is a Storage adapter: it says what its master copy is and
how to read it. Everything else a replicated write needs lives here, once, for
every backend: the resolved options, the targets (one pooled HTTP transport per
media host), the fan-out, the per-name lock shared by every process (ordering.py),
the failure policy (log, quorum, raise) and the journal.

The storage it serves is asked only for what a backend knows: ``media_prefix``
(the URL path the hosts keep files under) and, for repairs, ``master_body`` and
``expected_state``.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from django.core.exceptions import ImproperlyConfigured

from . import journal, metrics, ordering, registry
from .breaker import Breaker, breaker_for
from .exceptions import JournalError, JournalUnavailable, ReplicationError, describe
from .fanout import FanOut, Outcome, call
from .operations import Operation
from .settings import Host, parse_host, resolve_options
from .targets import DavTarget, Target

logger = logging.getLogger("django_resto.storage")

#: The word 1.3 used in "Failed to ..." for each verb, for filters that match on it.
FAILURE_WORDS = {"PUT": "upload", "DELETE": "delete", "SYNC": "sync"}

#: The resolved options a storage shows as its own attributes (``storage.timeout``).
OPTION_NAMES = (
    "hosts",
    "timeout",
    "connect_timeout",
    "min_transfer_rate",
    "lock_timeout",
    "journal_alias",
    "breaker_window",
    "breaker_max_window",
    "fatal_exceptions",
    "show_traceback",
    "verify",
    "token_header",
    "min_replicas",
    "max_workers",
    "async_workers",
    "replicate_with",
    "task_backend",
    "task_queue",
    "task_retries",
    "listing_prefix",
)


class Adapter(Protocol):
    """What a Replicator asks of the storage it serves (storage.py's backends)."""

    @property
    def media_prefix(self) -> str: ...

    def record_outcomes(
        self,
        operation: str,
        name: str,
        outcomes: list[Outcome],
        *,
        seq: int,
        below_quorum: bool = False,
    ) -> None: ...


class Replicator:
    """Hosts, targets, fan-out, ordering, failure policy and journal of one storage.

    Options are read once, when the storage is built, as django-storages does; an
    unknown option raises ImproperlyConfigured naming it.
    """

    def __init__(
        self,
        storage: Adapter,
        options: dict[str, Any],
        *,
        extra_options: tuple[str, ...] = (),
        default_min_replicas: int = 0,
    ) -> None:
        backend = type(storage)
        label = f"{backend.__module__}.{backend.__qualname__}"
        resolved = resolve_options(label, options, extra_options)
        self.storage = storage
        self.options = dict(options)
        hosts: dict[str, Host] = {}
        #: ``storage:ALIAS`` hosts, by host: replicas kept in another Django storage.
        self._storage_aliases: dict[str, str] = {}
        for name in resolved["hosts"]:
            if name.startswith("storage:"):
                # Imported only then: the core needs nothing of it for media servers.
                from .targets_storage import alias_of, configuration_problem

                alias = alias_of(name) or ""
                problem = configuration_problem(alias)
                if problem is not None:
                    raise ImproperlyConfigured(f"Invalid storage target in {label}: {problem}.")
                self._storage_aliases[name] = alias
                # Its breaker is keyed by the entry itself, which names no URL.
                hosts[name] = Host(name=name, origin=name)
                continue
            try:
                hosts[name] = parse_host(name)
            except ValueError as exc:
                raise ImproperlyConfigured(f"Invalid media host in {label}: {exc}") from None
        self._hosts = hosts
        self.hosts: tuple[str, ...] = resolved["hosts"]
        self.timeout: float = resolved["timeout"]
        self.connect_timeout: float | None = resolved["connect_timeout"]
        self.min_transfer_rate: float = resolved["min_transfer_rate"]
        self.lock_timeout: float = resolved["lock_timeout"]
        self.journal_alias: str | None = resolved["journal_alias"]
        self.breaker_window: float = resolved["breaker_window"]
        self.breaker_max_window: float = resolved["breaker_max_window"]
        if self.breaker_max_window < self.breaker_window:
            raise ImproperlyConfigured(
                f"breaker_max_window={self.breaker_max_window:g} in {label} is shorter than "
                f"breaker_window={self.breaker_window:g}."
            )
        self.fatal_exceptions: bool = resolved["fatal_exceptions"]
        self.show_traceback: bool = resolved["show_traceback"]
        self.verify: bool | str = resolved["verify"]
        self.auth: tuple[str, str] | None = resolved["auth"]
        self.token: str | None = resolved["token"]
        self.token_header: str = resolved["token_header"]
        self.min_replicas: int = (
            resolved["min_replicas"]
            if resolved["min_replicas"] is not None
            else min(default_min_replicas, len(self.hosts))
        )
        if self.min_replicas > len(self.hosts):
            raise ImproperlyConfigured(
                f"min_replicas={self.min_replicas} in {label} is more than the "
                f"{len(self.hosts)} configured host(s)."
            )
        self.max_workers: int = resolved["max_workers"] or max(4, 4 * (len(self.hosts) - 1))
        self.async_workers: int = resolved["async_workers"]
        self.replicate_with: str = resolved["replicate_with"]
        self.task_backend: str = resolved["task_backend"]
        self.task_queue: str = resolved["task_queue"]
        self.task_retries: int = resolved["task_retries"]
        self.listing_prefix: str = resolved["listing_prefix"]
        self.fanout = FanOut(self.max_workers)
        self._targets: dict[str, Target] = {}
        self._lock = threading.Lock()
        self._journal_key: str | None = None
        # This process's breakers of the hosts (breaker.py), looked up once each.
        self._breakers: dict[str, Breaker] = {}

    def __getstate__(self) -> dict[str, Any]:
        # Locks and sockets do not cross process boundaries (task queues pickle the
        # storage together with the bound method they call); targets reopen on demand.
        state = self.__dict__.copy()
        del state["_lock"]
        state["_targets"] = {}
        state["_breakers"] = {}  # another process has breakers of its own
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # --- the journal's name for this storage ------------------------------------------

    @property
    def journal_key(self) -> str:
        """The STORAGES alias the storage was configured under, which names its rows.

        The ``journal_alias`` option when given; else found in STORAGES (registry.py).
        "" when the storage is not there: the journal then refuses its failures
        (:meth:`record`), since no command could ever drain them.
        """
        if self.journal_alias is not None:
            return self.journal_alias
        if self._journal_key is None:
            self._journal_key = registry.alias_for(type(self.storage), self.options)
        return self._journal_key

    def no_alias(self) -> str:
        return (
            f"the journal cannot record it: this {type(self.storage).__name__} matches no "
            "STORAGES entry, so process_failed_media could never repair it. Configure it in "
            "STORAGES or give it the journal_alias option."
        )

    # --- targets ----------------------------------------------------------------------

    def target(self, host: str) -> Target:
        """The target for ``host``: its pooled HTTP transport (rebuilt if MEDIA_URL changed),
        or for a ``storage:ALIAS`` host the storage it names."""
        if host in self._storage_aliases:
            return self._storage_target(host)
        prefix = self.storage.media_prefix
        current = self._targets.get(host)
        if isinstance(current, DavTarget) and current.prefix == prefix:
            return current
        with self._lock:
            current = self._targets.get(host)
            if not isinstance(current, DavTarget) or current.prefix != prefix:
                if host not in self._hosts:
                    raise ValueError(f"{host!r} is not one of this storage's hosts")
                current = DavTarget(
                    self._hosts[host],
                    prefix,
                    timeout=self.timeout,
                    connect_timeout=self.connect_timeout,
                    min_transfer_rate=self.min_transfer_rate,
                    verify=self.verify,
                    auth=self.auth,
                    token=self.token,
                    token_header=self.token_header,
                    pool_size=max(10, self.max_workers),
                )
                self._targets[host] = current
                # A storage dropped without close() (FileField and test code build them
                # freely; FileSystemStorage holds nothing to close) closes its pooled
                # sockets when collected, rather than leaving them to the garbage
                # collector's ResourceWarnings. The finalizer holds the transport only.
                weakref.finalize(self, current.close)
        return current

    def _storage_target(self, host: str) -> Target:
        """The StorageTarget of a ``storage:ALIAS`` host (made on first use).

        It holds the instance STORAGES gives for the alias, the one the rest of the site
        uses; MEDIA_URL means nothing to it. Its threads (a few, whatever the fan-out's
        size: each keeps a boto3 session) end with :meth:`close` or with the storage.
        """
        current = self._targets.get(host)
        if current is not None:
            return current
        from django.core.files.storage import storages

        from .targets_storage import storage_target

        with self._lock:
            current = self._targets.get(host)
            if current is None:
                current = storage_target(
                    host,
                    storages[self._storage_aliases[host]],
                    pool_size=max(4, self.async_workers),
                )
                self._targets[host] = current
                weakref.finalize(self, current.close)
        return current

    def close(self) -> None:
        """Close pooled connections and storage targets' threads (they reopen on demand)."""
        for target in list(self._targets.values()):
            target.close()

    # --- ordering ---------------------------------------------------------------------

    def locked(self, name: str) -> AbstractContextManager[int]:
        """Hold the name's lock, shared by every process and app server; yield ``seq``.

        Everything that replicates ``name`` runs inside it and decides what to send
        only once it holds it (see ordering.py). Nested use in one thread is free.
        """
        key = self.journal_key
        probe = None
        # The probe rides on the statement that takes the lock (PostgreSQL) or draws its
        # number (SQLite); a nested use takes neither, so it needs none.
        if key and not ordering.holds(key, name) and journal.enabled():
            probe = journal.probe(key, list(self.hosts), name)
        return ordering.ordered(key, name, timeout=self.lock_timeout, probe=probe)

    def under_lock(
        self,
        name: str,
        verb: str,
        work: Callable[[int], list[Outcome]],
        *,
        hosts: Sequence[str] | None = None,
        raising: bool = True,
    ) -> list[Outcome]:
        """Run ``work(seq)`` under the name's lock; a lock not had in time fails every host.

        That failure goes through the policy like any other: journaled (the hosts may
        be behind, since nothing was sent), raised as ``fatal_exceptions`` says. A lock
        the journal's database cannot give at all is a JournalError.
        """
        try:
            with self.locked(name) as seq:
                return work(seq)
        except ordering.LockTimeout as exc:
            targets = self.hosts if hosts is None else hosts
            outcomes = [Outcome(host, error=exc) for host in targets]
            self.settle(verb, name, outcomes, seq=journal.now_seq(), raising=raising)
            return outcomes
        except ordering.LockUnavailable as exc:
            # Nothing was sent, and nothing can be journaled: the hosts may be behind.
            targets = self.hosts if hosts is None else hosts
            outcomes = [Outcome(host, error=exc) for host in targets]
            error = JournalError(verb, name, outcomes, detail=str(exc))
            if not raising:
                logger.error("%s", error, exc_info=True)
                return outcomes
            raise error from exc.__cause__

    # --- running an operation ---------------------------------------------------------

    def fan_out(self, operation: Operation, hosts: Sequence[str] | None = None) -> list[Outcome]:
        """Run ``operation`` on every host (or ``hosts``) at once; one outcome per host.

        A host whose breaker is open gets its failure at once, and is not sent anything.
        """
        chosen = self.hosts if hosts is None else hosts
        if not self.breaker_window:
            return self._send(operation, chosen)
        held: dict[str, Outcome] = {}
        for host in chosen:
            refusal = self.breaker(host).admit(host)
            if refusal is not None:
                held[host] = Outcome(host, error=refusal)
        sent = self._send(operation, [host for host in chosen if host not in held])
        for outcome in sent:
            self._learn(outcome)
        if not held:  # every breaker closed: the common case, already in host order
            return sent
        answered = {outcome.host: outcome for outcome in sent}
        return [held.get(host) or answered[host] for host in chosen]

    def _send(self, operation: Operation, hosts: Sequence[str]) -> list[Outcome]:
        if operation.phased:
            return self.fanout.run_started(lambda host: operation.start(self.target(host)), hosts)
        return self.fanout.run(lambda host: operation.run(self.target(host)), hosts)

    # --- the dead-host breaker (breaker.py) -------------------------------------------

    def breaker(self, host: str) -> Breaker:
        found = self._breakers.get(host)
        if found is None:
            found = self._breakers[host] = breaker_for(self._hosts[host].origin)
        return found

    def breaker_state(self, host: str) -> str:
        """ "closed", "open" or "half-open"; "off" when this storage does not use one."""
        return self.breaker(host).state() if self.breaker_window else "off"

    def _learn(self, outcome: Outcome) -> None:
        if self.breaker(outcome.host).record(
            outcome.error, window=self.breaker_window, max_window=self.breaker_max_window
        ):
            metrics.breaker(self.journal_key, outcome.host, outcome.error is not None)

    def execute(self, operation: Operation) -> list[Outcome]:
        """Run ``operation`` on every host under the name's lock, and apply the policy."""

        def work(seq: int) -> list[Outcome]:
            outcomes = self.fan_out(operation)
            self.settle(operation.verb, operation.name, outcomes, seq=seq)
            return outcomes

        return self.under_lock(operation.name, operation.verb, work)

    def run_one(
        self, func: Callable[..., Any], verb: str, host: str, name: str, *args: Any, **kwargs: Any
    ) -> Outcome:
        """Run ``func(host, name, ...)`` on one host now, under the name's lock, and apply
        the (non-raising) failure policy: the background's way of running work."""

        def work(seq: int) -> list[Outcome]:
            refusal = self.breaker(host).admit(host) if self.breaker_window else None
            if refusal is not None:
                outcome = Outcome(host, error=refusal)
            else:
                outcome = call(func, host, name, *args, **kwargs)
                if self.breaker_window:
                    self._learn(outcome)
            self.settle(verb, name, [outcome], seq=seq, raising=False)
            return [outcome]

        return self.under_lock(name, verb, work, hosts=[host], raising=False)[0]

    # --- failure policy and journal ---------------------------------------------------

    def settle(
        self,
        verb: str,
        name: str,
        outcomes: list[Outcome],
        *,
        seq: int | None = None,
        raising: bool = True,
    ) -> None:
        """Log each host's failure, record the outcomes, and raise as the policy says.

        With ``fatal_exceptions`` one ReplicationError names every failed host. A
        write acknowledged by fewer than ``min_replicas`` hosts always raises: the
        caller must not believe the file is stored when it is not. A failure the
        journal cannot record raises JournalError, even with ``raising=False``
        (background work), where it is logged instead.
        """
        key = self.journal_key
        for outcome in outcomes:
            metrics.observe(key, verb, outcome.host, outcome.ok, outcome.elapsed)
        failures = [outcome for outcome in outcomes if not outcome.ok]
        for outcome in failures:
            error = outcome.error
            logger.error(
                "Failed to %s %s on %s: %s",
                FAILURE_WORDS.get(verb, verb),
                name,
                outcome.host,
                describe(error),
                exc_info=(type(error), error, error.__traceback__)
                if self.show_traceback and error is not None
                else None,
            )
        acknowledged = len(outcomes) - len(failures)
        below_quorum = verb == "PUT" and acknowledged < self.min_replicas
        try:
            self.storage.record_outcomes(
                verb,
                name,
                outcomes,
                seq=journal.now_seq() if seq is None else seq,
                below_quorum=below_quorum,
            )
        except JournalUnavailable as exc:
            error = JournalError(verb, name, failures, total=len(outcomes), detail=str(exc))
            if raising:
                raise error from exc.__cause__
            logger.error("%s", error, exc_info=True)
        if not raising or not failures:
            return
        if below_quorum:
            raise ReplicationError(
                verb,
                name,
                failures,
                total=len(outcomes),
                detail=f"Only {acknowledged} acknowledged; at least {self.min_replicas} required",
            )
        if self.fatal_exceptions:
            raise ReplicationError(verb, name, failures, total=len(outcomes))

    def record(self, verb: str, name: str, outcomes: list[Outcome], *, seq: int) -> None:
        """Journal the hosts that may now be behind; forget those that caught up.

        Runs whatever ``fatal_exceptions`` says: the rows are what makes turning it
        off safe, so a failure that cannot be journaled raises JournalUnavailable.
        """
        if not journal.enabled():
            return
        ok = [outcome.host for outcome in outcomes if outcome.ok]
        failed = [outcome for outcome in outcomes if not outcome.ok]
        key = self.journal_key
        if ok and key:
            known = ordering.known_rows(key, name)
            journal.safely(journal.clear, key, ok, name, seq, known=known)
        if not failed:
            return
        if not key:
            raise JournalUnavailable(self.no_alias())
        for outcome in failed:
            journal.strictly(
                journal.mark,
                key,
                [outcome.host],
                name,
                verb,
                seq,
                error=describe(outcome.error),
                sources=ok if verb == "PUT" else [],
            )

    def record_intent(self, verb: str, name: str) -> None:
        """Journal every host as behind before background work is handed out.

        A process killed before the work is done leaves rows that
        ``process_failed_media`` completes. Raises JournalError if it cannot.
        """
        if not journal.enabled() or not self.hosts:
            return
        try:
            if not self.journal_key:
                raise JournalUnavailable(self.no_alias())
            journal.strictly(
                journal.mark,
                self.journal_key,
                self.hosts,
                name,
                verb,
                journal.now_seq(),
                error="pending",
                attempted=False,
            )
        except JournalUnavailable as exc:
            raise JournalError(verb, name, detail=str(exc)) from None
