"""Prometheus metrics: what the storages did, what the breakers hold, what the journal owes.

The replicator reports each operation on each target (:func:`observe`) and each
breaker's change (:func:`breaker`); the journal's backlog is not counted as it changes
but read when Prometheus scrapes (:class:`JournalCollector`, one aggregate query), so
it is right whichever process wrote or cleared the rows. :func:`metrics_view` serves
them all in the exposition format.

``prometheus_client`` is optional (``pip install 'django-resto[metrics]'``): without
it, or with ``RESTO_METRICS = False``, both functions return at once (well under a
microsecond) and the view answers 404, so the storages never pay for metrics nobody
scrapes. ``RESTO_METRICS`` defaults to True when the client is installed.

Under gunicorn each worker is a process with its own counters. Set
``PROMETHEUS_MULTIPROC_DIR`` to an empty directory before the workers start: every
process then writes its samples to files there and the view, in whichever worker
answers, adds them up. Tell gunicorn to forget a dead worker's breaker gauges in its
configuration file::

    from prometheus_client import multiprocess

    def child_exit(server, worker):
        multiprocess.mark_process_dead(worker.pid)

Metric names (label ``target``: the host as configured, as in the journal)::

    resto_operations_total{storage,target,verb}       counter, every operation
    resto_failures_total{storage,target,verb}         counter, those that failed
    resto_operation_duration_seconds{storage,target,verb}  histogram
    resto_breaker_open{storage,target}                gauge, 1 while held open (the
                                                      largest of the live processes)
    resto_journal_rows{storage,target}                gauge, rows waiting
    resto_journal_backed_off_rows{storage,target}     gauge, of which backed off
    resto_journal_oldest_age_seconds{storage,target}  gauge, age of the oldest row
    resto_journal_up                                  gauge, 0 when the query failed
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.http import HttpRequest, HttpResponse, HttpResponseNotFound

__all__ = ["JournalCollector", "breaker", "enabled", "metrics_view", "observe"]

logger = logging.getLogger("django_resto")

_client: ModuleType | None
try:
    _client = importlib.import_module("prometheus_client")
except ImportError:  # the optional extra is not installed
    _client = None

#: Seconds: from a small PUT on a LAN to a large file's upload.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_LABELS = ("storage", "target", "verb")


class _Metrics:
    """This process's metric objects, made once: the registry refuses a name twice."""

    def __init__(self, client: ModuleType) -> None:
        self.operations = client.Counter(
            "resto_operations", "Operations sent to media servers.", _LABELS
        )
        self.failures = client.Counter(
            "resto_failures", "Operations that failed on a media server.", _LABELS
        )
        self.latency = client.Histogram(
            "resto_operation_duration_seconds",
            "Time an operation took on one media server, failed or not.",
            _LABELS,
            buckets=LATENCY_BUCKETS,
        )
        # livemax: a host is held open if any live process holds it open; a dead
        # worker's value goes with it (mark_process_dead).
        self.breaker = client.Gauge(
            "resto_breaker_open",
            "1 while the process's breaker holds the media server open.",
            ("storage", "target"),
            multiprocess_mode="livemax",
        )
        # The labelled children, by (storage, target, verb): ``labels()`` takes a lock
        # and builds a key on every call, and each save calls it once per host.
        self.children: dict[tuple[str, str, str], tuple[Any, Any, Any]] = {}

    def child(self, storage: str, target: str, verb: str) -> tuple[Any, Any, Any]:
        key = (storage, target, verb)
        found = self.children.get(key)
        if found is None:
            found = (
                self.operations.labels(storage, target, verb),
                self.failures.labels(storage, target, verb),
                self.latency.labels(storage, target, verb),
            )
            self.children[key] = found
        return found


# None: not decided yet (settings may not be ready at import); then True or False.
_active: bool | None = None
_metrics: _Metrics | None = None
_deciding = threading.Lock()


def enabled() -> bool:
    """Whether metrics are recorded: the client is installed and RESTO_METRICS allows it."""
    return _metrics_or_none() is not None


def _metrics_or_none() -> _Metrics | None:
    global _active, _metrics
    if _active is False:
        return None
    if _active and _metrics is not None:
        return _metrics
    with _deciding:
        try:
            wanted = getattr(settings, "RESTO_METRICS", _client is not None)
        except ImproperlyConfigured:  # used outside a configured Django project
            wanted = _client is not None
        if wanted and _client is None:
            logger.warning(
                "RESTO_METRICS is on but prometheus_client is not installed: no metrics "
                "(pip install 'django-resto[metrics]')"
            )
            wanted = False
        if wanted and _metrics is None:
            assert _client is not None
            _metrics = _Metrics(_client)
        _active = bool(wanted)
    return _metrics if _active else None


def _forget_decision(*, setting: str, **kwargs: Any) -> None:
    global _active
    if setting == "RESTO_METRICS":
        _active = None


setting_changed.connect(_forget_decision)


def observe(storage: str, verb: str, target: str, ok: bool, seconds: float) -> None:
    """Count one operation of ``storage`` on ``target`` and how long it took."""
    if _active is False:  # the common case without metrics: one global read
        return
    metrics = _metrics_or_none()
    if metrics is None:
        return
    operations, failures, latency = metrics.child(storage, target, verb)
    operations.inc()
    if not ok:
        failures.inc()
    latency.observe(seconds)


def breaker(storage: str, target: str, is_open: bool) -> None:
    """Say whether this process's breaker holds ``target`` open for ``storage``."""
    if _active is False:
        return
    metrics = _metrics_or_none()
    if metrics is None:
        return
    metrics.breaker.labels(storage, target).set(1 if is_open else 0)


class JournalCollector:
    """The journal's backlog per storage and host, read from the database at scrape time.

    Counted where it is stored rather than in each process, so it stays right however
    many processes write and clear rows: one aggregate query per scrape.
    """

    def describe(self) -> Iterator[Any]:
        # Without describe() the registry would call collect(), querying the database,
        # merely to register the collector.
        yield from self._families()

    def collect(self) -> Iterator[Any]:
        rows, backed_off, age, up = self._families()
        try:
            backlog = _backlog()
        except Exception:
            logger.warning("Could not read the django_resto journal for metrics", exc_info=True)
            up.add_metric([], 0)
        else:
            up.add_metric([], 1)
            for (storage, host), (count, waiting, oldest) in sorted(backlog.items()):
                rows.add_metric([storage, host], count)
                backed_off.add_metric([storage, host], waiting)
                age.add_metric([storage, host], oldest)
        yield from (rows, backed_off, age, up)

    @staticmethod
    def _families() -> tuple[Any, Any, Any, Any]:
        assert _client is not None
        gauge = _client.metrics_core.GaugeMetricFamily
        labels = ["storage", "target"]
        return (
            gauge("resto_journal_rows", "Journal rows waiting for a repair.", labels=labels),
            gauge(
                "resto_journal_backed_off_rows",
                "Journal rows waiting for their back-off to end.",
                labels=labels,
            ),
            gauge(
                "resto_journal_oldest_age_seconds",
                "Age of the oldest journal row.",
                labels=labels,
            ),
            gauge("resto_journal_up", "1 when the journal could be read."),
        )


def _backlog() -> dict[tuple[str, str], tuple[int, int, float]]:
    """``{(storage, host): (rows, backed off, oldest age in seconds)}``; empty without a journal."""
    from django.db.models import Count, Min, Q
    from django.utils import timezone

    from . import journal

    if not journal.enabled():
        return {}
    from .models import PendingReplication

    now = timezone.now()
    found = (
        PendingReplication.objects.values("storage", "host")
        .annotate(
            count=Count("id"),
            waiting=Count("id", filter=Q(next_attempt__gt=now)),
            oldest=Min("first_attempt"),
        )
        .order_by()
    )
    return {
        (row["storage"], row["host"]): (
            row["count"],
            row["waiting"],
            max(0.0, (now - row["oldest"]).total_seconds()),
        )
        for row in found
    }


class _Scrape:
    """This process's registry and the journal, as one collector for the encoder."""

    def __init__(self, *collectors: Any) -> None:
        self.collectors = collectors

    def collect(self) -> Iterator[Any]:
        for collector in self.collectors:
            yield from collector.collect()


def _scraped() -> Any:
    assert _client is not None
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Every process's samples, from their files; this process's own registry
        # would only hold its share.
        registry = _client.CollectorRegistry()
        importlib.import_module("prometheus_client.multiprocess").MultiProcessCollector(registry)
        return _Scrape(registry, JournalCollector())
    return _Scrape(_client.REGISTRY, JournalCollector())


def metrics_view(request: HttpRequest) -> HttpResponse:
    """The metrics in Prometheus' exposition format (OpenMetrics if the scraper asks).

    Mount it where only Prometheus can reach it (an internal address, or behind your
    own authentication): it tells which media servers exist and how far behind they
    are. 404 while metrics are off, so a scrape of a site without them fails loudly.
    """
    if not enabled():
        return HttpResponseNotFound(
            "django_resto metrics are off (RESTO_METRICS, or prometheus_client not installed)",
            content_type="text/plain",
        )
    assert _client is not None
    encoder, content_type = _client.exposition.choose_encoder(request.headers.get("Accept", ""))
    return HttpResponse(encoder(_scraped()), content_type=content_type)
