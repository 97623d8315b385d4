"""Metrics: exact values across processes, the view, the journal's backlog, and no cost off.

Multiprocess mode is tested as gunicorn uses it: separate OS processes save files
(to an answering host and a dead one) with ``PROMETHEUS_MULTIPROC_DIR`` set, and
this process adds up their files afterwards.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.files.storage import storages
from django.core.management import call_command
from django.db import connection
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_resto import journal, metrics
from django_resto.management.commands.resto_status import breaker_state
from django_resto.models import PendingReplication

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client import CollectorRegistry  # noqa: E402
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

#: A child process: configure Django (no journal: what is counted is the operations),
#: run the script's saves and deletes against the hosts, print its pid.
CHILD = textwrap.dedent(
    """
    import json, os, sys
    from django.conf import settings

    spec = json.loads(sys.argv[1])
    settings.configure(
        SECRET_KEY="metrics test",
        USE_TZ=True,
        INSTALLED_APPS=[],
        MEDIA_ROOT=spec["media_root"],
        MEDIA_URL="/media/",
        STORAGES={
            "media": {
                "BACKEND": "django_resto.storage.HybridStorage",
                "OPTIONS": {"hosts": spec["hosts"], "fatal_exceptions": False},
            },
        },
        LOGGING_CONFIG=None,
    )
    import django

    django.setup()
    from django.core.files.base import ContentFile
    from django.core.files.storage import storages

    storage = storages["media"]
    for verb, name in spec["script"]:
        if verb == "save":
            storage.save(name, ContentFile(name.encode()))
        else:
            storage.delete(name)
    print(os.getpid())
    """
)


def run_child(spec: dict[str, Any], multiproc_dir: Path) -> int:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DJANGO_SETTINGS_MODULE", "PROMETHEUS_MULTIPROC_DIR")
    }
    env["PROMETHEUS_MULTIPROC_DIR"] = str(multiproc_dir)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])


def collected(multiproc_dir: Path) -> CollectorRegistry:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(multiproc_dir))
    return registry


def test_counts_add_up_across_processes(test_servers, tmp_path):
    (up,) = test_servers(1)
    (dead,) = test_servers(1)
    dead.stop()
    multiproc_dir = tmp_path / "prometheus"
    multiproc_dir.mkdir()
    hosts = [up.host, dead.host]
    first = {
        "media_root": str(tmp_path / "a"),
        "hosts": hosts,
        "script": [("save", "a/1.txt"), ("save", "a/2.txt"), ("save", "a/3.txt")],
    }
    second = {
        "media_root": str(tmp_path / "b"),
        "hosts": hosts,
        "script": [("save", "b/1.txt"), ("save", "b/2.txt"), ("delete", "b/1.txt")],
    }
    pids = [run_child(first, multiproc_dir), run_child(second, multiproc_dir)]
    registry = collected(multiproc_dir)

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"storage": "media", **labels})

    # 5 saves and 1 delete; each operation on each host counted once, by the process
    # that ran it, and added up here.
    assert value("resto_operations_total", target=up.host, verb="PUT") == 5
    assert value("resto_operations_total", target=up.host, verb="DELETE") == 1
    assert value("resto_failures_total", target=up.host, verb="PUT") in (None, 0)
    # The dead host failed every one (refused, then held open by each process's breaker).
    assert value("resto_operations_total", target=dead.host, verb="PUT") == 5
    assert value("resto_failures_total", target=dead.host, verb="PUT") == 5
    assert value("resto_failures_total", target=dead.host, verb="DELETE") == 1
    assert value("resto_operation_duration_seconds_count", target=up.host, verb="PUT") == 5
    assert value("resto_operation_duration_seconds_sum", target=up.host, verb="PUT") > 0
    assert value("resto_breaker_open", target=dead.host) == 1
    assert sorted(up.files()) == ["a/1.txt", "a/2.txt", "a/3.txt", "b/2.txt"]

    # gunicorn's child_exit hook: a dead worker's breaker no longer counts; its
    # counters still do (they are totals).
    for pid in pids:
        mark_process_dead(pid, str(multiproc_dir))
    registry = collected(multiproc_dir)
    assert value("resto_breaker_open", target=dead.host) is None
    assert value("resto_operations_total", target=dead.host, verb="PUT") == 5


@pytest.mark.django_db
def test_the_view_serves_every_process_and_the_journal(test_servers, tmp_path, monkeypatch):
    (up,) = test_servers(1)
    multiproc_dir = tmp_path / "prometheus"
    multiproc_dir.mkdir()
    spec = {"media_root": str(tmp_path / "m"), "hosts": [up.host], "script": [("save", "x")]}
    run_child(spec, multiproc_dir)
    run_child(spec | {"script": [("save", "y")]}, multiproc_dir)
    journal.mark("media", ["h9:80"], "late.txt", "PUT", 1)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(multiproc_dir))

    response = metrics.metrics_view(RequestFactory().get("/metrics"))
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    lines = response.content.decode().splitlines()
    labels = f'storage="media",target="{up.host}",verb="PUT"'
    assert f"resto_operations_total{{{labels}}} 2.0" in lines
    assert 'resto_journal_rows{storage="media",target="h9:80"} 1.0' in lines
    assert "resto_journal_up 1.0" in lines

    openmetrics = metrics.metrics_view(
        RequestFactory().get("/metrics", HTTP_ACCEPT="application/openmetrics-text")
    )
    assert openmetrics["Content-Type"].startswith("application/openmetrics-text")
    assert openmetrics.content.decode().endswith("# EOF\n")


@pytest.mark.django_db
def test_the_view_in_one_process_serves_its_own_registry(monkeypatch):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    metrics.observe("single", "PUT", "h:1", True, 0.004)
    metrics.observe("single", "PUT", "h:1", False, 0.5)
    metrics.breaker("single", "h:1", True)
    body = metrics.metrics_view(RequestFactory().get("/metrics")).content.decode()
    lines = body.splitlines()
    assert 'resto_operations_total{storage="single",target="h:1",verb="PUT"} 2.0' in lines
    assert 'resto_failures_total{storage="single",target="h:1",verb="PUT"} 1.0' in lines
    assert (
        'resto_operation_duration_seconds_bucket{le="0.005",storage="single",target="h:1",'
        'verb="PUT"} 1.0'
    ) in lines
    assert 'resto_breaker_open{storage="single",target="h:1"} 1.0' in lines
    metrics.breaker("single", "h:1", False)
    body = metrics.metrics_view(RequestFactory().get("/metrics")).content.decode()
    assert 'resto_breaker_open{storage="single",target="h:1"} 0.0' in body.splitlines()


@pytest.mark.django_db
def test_the_collector_reads_the_backlog_in_one_query():
    journal.mark("a", ["h1", "h2"], "one", "PUT", 1)
    journal.mark("a", ["h1"], "two", "PUT", 2)
    journal.mark("b", ["h1"], "one", "DELETE", 3)
    hour_ago = timezone.now() - timedelta(hours=1)
    PendingReplication.objects.filter(storage="a", host="h1", name="one").update(
        first_attempt=hour_ago
    )
    PendingReplication.objects.filter(storage="a", host="h1", name="two").update(
        next_attempt=timezone.now() + timedelta(minutes=5)
    )
    registry = CollectorRegistry()
    registry.register(metrics.JournalCollector())
    with CaptureQueriesContext(connection) as captured:
        families = list(registry.collect())
    assert len(captured) == 1
    assert len(families) == 4

    def value(name: str, storage: str, host: str) -> float | None:
        return registry.get_sample_value(name, {"storage": storage, "target": host})

    assert value("resto_journal_rows", "a", "h1") == 2
    assert value("resto_journal_rows", "a", "h2") == 1
    assert value("resto_journal_rows", "b", "h1") == 1
    assert value("resto_journal_backed_off_rows", "a", "h1") == 1
    assert value("resto_journal_backed_off_rows", "a", "h2") == 0
    assert 3600 <= value("resto_journal_oldest_age_seconds", "a", "h1") < 3660
    assert value("resto_journal_oldest_age_seconds", "a", "h2") < 60
    assert registry.get_sample_value("resto_journal_up") == 1


def test_a_journal_that_cannot_be_read_says_so(monkeypatch):
    def fail() -> None:
        raise RuntimeError("database down")

    monkeypatch.setattr(metrics, "_backlog", fail)
    registry = CollectorRegistry()
    registry.register(metrics.JournalCollector())
    assert registry.get_sample_value("resto_journal_up") == 0
    assert registry.get_sample_value("resto_journal_rows", {"storage": "a", "target": "h"}) is None


def _per_call(func: Any) -> float:
    """Seconds one call takes: the best of a few runs of many, so load cannot inflate it."""
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(100_000):
            func("s", "PUT", "h:1", True, 0.01)
        best = min(best, (time.perf_counter() - started) / 100_000)
    return best


def test_metrics_off_cost_nothing(settings, monkeypatch):
    settings.RESTO_METRICS = False
    assert not metrics.enabled()
    assert metrics.observe("off", "PUT", "h:1", True, 0.01) is None
    assert metrics.breaker("off", "h:1", True) is None
    assert _per_call(metrics.observe) < 1e-6
    assert _per_call(lambda s, v, t, ok, sec: metrics.breaker(s, t, ok)) < 2e-6
    response = metrics.metrics_view(RequestFactory().get("/metrics"))
    assert response.status_code == 404
    # Nothing was recorded while off.
    assert prometheus_client.REGISTRY.get_sample_value(
        "resto_operations_total", {"storage": "off", "target": "h:1", "verb": "PUT"}
    ) in (None, 0)
    settings.RESTO_METRICS = True
    assert metrics.enabled()


ABSENT = textwrap.dedent(
    """
    import json, sys, time
    sys.modules["prometheus_client"] = None  # as if it were not installed
    from django.conf import settings

    settings.configure(RESTO_METRICS=True, INSTALLED_APPS=["django_resto"], LOGGING_CONFIG=None)
    import django

    django.setup()
    import django_resto.replicator, django_resto.storage  # the core imports without it
    from django.test import RequestFactory
    from django_resto import metrics

    metrics.observe("s", "PUT", "h:1", True, 0.01)
    metrics.breaker("s", "h:1", True)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(100_000):
            metrics.observe("s", "PUT", "h:1", True, 0.01)
        best = min(best, (time.perf_counter() - started) / 100_000)
    status = metrics.metrics_view(RequestFactory().get("/metrics")).status_code
    print(json.dumps({"enabled": metrics.enabled(), "per_call": best, "status": status}))
    """
)


def test_without_prometheus_client_nothing_is_recorded_and_nothing_fails():
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", ABSENT],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["enabled"], result["status"]) == (False, 404)
    assert result["per_call"] < 1e-6
    assert "prometheus_client is not installed" in done.stderr


# --- resto_status --json: the breaker and the backlog's ages ------------------------------


@pytest.mark.django_db
def test_status_shows_the_breaker_and_the_backlog_ages(settings, test_servers, monkeypatch):
    (server,) = test_servers(1)
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "django_resto.storage.HybridStorage",
            "OPTIONS": {"hosts": [server.host]},
        },
    }
    storages._storages.pop("default", None)
    journal.mark("default", [server.host], "old.txt", "PUT", 1)
    journal.mark("default", [server.host], "new.txt", "PUT", 2)
    PendingReplication.objects.filter(name="old.txt").update(
        first_attempt=timezone.now() - timedelta(hours=2)
    )
    PendingReplication.objects.filter(name="new.txt").update(
        next_attempt=timezone.now() + timedelta(minutes=1)
    )
    try:
        summary = status_json()
        [entry] = summary["storages"][0]["hosts"]
        assert (entry["backlog"], entry["backed_off"], entry["breaker"]) == (2, 1, "closed")
        assert 7200 <= entry["oldest_age_seconds"] < 7260
        assert entry["newest_age_seconds"] < 60

        monkeypatch.setattr(storages["default"].replicator, "breaker_state", lambda host: "open")
        [entry] = status_json()["storages"][0]["hosts"]
        assert entry["breaker"] == "open"
        out = io.StringIO()
        call_command("resto_status", stdout=out)
        assert "up (403), breaker open" in out.getvalue()
    finally:
        storages._storages.pop("default", None)


def status_json() -> dict[str, Any]:
    out = io.StringIO()
    call_command("resto_status", "--json", stdout=out)
    return json.loads(out.getvalue())


def test_a_storage_without_a_breaker_reports_it_closed():
    assert breaker_state(object(), "h:1") == "closed"
