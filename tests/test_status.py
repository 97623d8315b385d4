# The fixture media_server_factory is imported from tests.servers, and pytest passes it
# back as an argument of the same name, which pyflakes reads as a redefinition.
# ruff: noqa: F811
"""``manage.py resto_status``: reachability, latency and journal backlog per media server."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from django_resto import journal
from django_resto.management.commands.resto_status import Command
from django_resto.models import PendingReplication
from tests.servers import MediaServer, media_server_factory  # noqa: F401 - fixture

Factory = Callable[..., MediaServer]


def configure(settings, hosts: list[str], backend: str = "HybridStorage", alias: str = "default"):
    settings.STORAGES = {
        alias: {
            "BACKEND": f"django_resto.storage.{backend}",
            "OPTIONS": {"hosts": hosts, "timeout": 5},
        },
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


def run(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    try:
        # An instance, not the name: one test uninstalls the app, hiding its commands.
        call_command(Command(), *args, stdout=out, stderr=io.StringIO())
    except SystemExit as exc:
        return int(exc.code), out.getvalue()
    return 0, out.getvalue()


def run_json(*args: str) -> tuple[int, dict[str, Any]]:
    status, out = run("--json", *args)
    return status, json.loads(out)


def add_rows(host: str, names: list[str], age: timedelta, storage: str = "default") -> None:
    for name in names:
        journal.mark(storage, [host], name, "PUT", journal.now_seq(), error="boom")
    PendingReplication.objects.filter(storage=storage, host=host, name__in=names).update(
        first_attempt=timezone.now() - age
    )


@pytest.mark.real_server
@pytest.mark.django_db
def test_json_with_a_stopped_server(media_server_factory: Factory, settings):
    nginx = media_server_factory("nginx")
    lighttpd = media_server_factory("lighttpd")
    stopped = media_server_factory("nginx")
    configure(settings, [nginx.host, lighttpd.host, stopped.host])
    stopped.stop()
    add_rows(lighttpd.host, ["a.txt", "b.txt"], timedelta(hours=3))
    add_rows(lighttpd.host, ["c.txt"], timedelta(minutes=5))
    add_rows(lighttpd.host, ["other.txt"], timedelta(days=9), storage="elsewhere")
    status, summary = run_json()
    assert status == 1
    assert summary["ok"] is False
    [storage] = summary["storages"]
    assert (storage["storage"], storage["backend"], storage["journal"]) == (
        "default",
        "HybridStorage",
        True,
    )
    first, second, third = storage["hosts"]
    assert set(first) == {
        "host",
        "configured",
        "reachable",
        "status",
        "latency_ms",
        "error",
        "backlog",
        "backed_off",
        "oldest",
        "oldest_age_seconds",
        "newest_age_seconds",
        "breaker",
    }
    # nginx answers 403 for a directory without autoindex: reachable all the same.
    assert (first["host"], first["reachable"], first["status"], first["error"]) == (
        nginx.host,
        True,
        403,
        None,
    )
    assert 0 < first["latency_ms"] < 5000
    assert (first["backlog"], first["oldest"], first["oldest_age_seconds"]) == (0, None, None)
    assert (second["host"], second["reachable"], second["backlog"]) == (lighttpd.host, True, 2 + 1)
    assert 3 * 3600 <= second["oldest_age_seconds"] < 3 * 3600 + 60
    assert second["oldest"].endswith("+00:00")
    assert (third["host"], third["reachable"], third["status"], third["latency_ms"]) == (
        stopped.host,
        False,
        None,
        None,
    )
    assert third["error"].startswith("ConnectionError: ")
    assert third["configured"] is True


@pytest.mark.real_server
@pytest.mark.django_db
def test_table_output(media_server_factory: Factory, settings):
    up = media_server_factory("nginx")
    down = media_server_factory("lighttpd")
    configure(settings, [up.host, down.host])
    down.stop()
    add_rows(up.host, ["x"], timedelta(hours=2, minutes=5))
    status, out = run()
    assert status == 1
    lines = out.splitlines()
    assert lines[0].split() == ["STORAGE", "HOST", "STATE", "LATENCY", "BACKLOG", "OLDEST"]
    cells = lines[1].split()
    assert cells[:4] == ["default", up.host, "up", "(403)"]
    assert cells[5:] == ["ms", "1", "2h", "5m"]
    assert lines[2].split() == ["default", down.host, "UNREACHABLE", "-", "0", "-"]
    assert lines[3].startswith(f"  {down.host}: ConnectionError: ")
    assert len(lines) == 4


@pytest.mark.django_db
def test_backlog_alone_exits_0_unless_asked(media_server_factory: Factory, settings):
    server = media_server_factory("test")
    configure(settings, [server.host])
    assert run_json()[0] == 0
    add_rows(server.host, ["late.txt"], timedelta(minutes=1))
    status, summary = run_json()
    assert status == 0
    assert summary["ok"] is True
    assert summary["storages"][0]["hosts"][0]["backlog"] == 1
    status, summary = run_json("--fail-on-backlog")
    assert status == 1
    assert summary["ok"] is False


@pytest.mark.django_db
def test_any_http_answer_counts_as_reachable(media_server_factory: Factory, settings):
    server = media_server_factory("test")
    configure(settings, [server.host])
    server.force_status(503)
    status, summary = run_json()
    assert status == 0
    entry = summary["storages"][0]["hosts"][0]
    assert (entry["reachable"], entry["status"]) == (True, 503)
    assert [(r.method, r.path) for r in server.requests] == [("HEAD", "/media/")]


@pytest.mark.django_db
def test_a_hanging_server_times_out(media_server_factory: Factory, settings):
    server = media_server_factory("test")
    configure(settings, [server.host])
    server.hang()
    try:
        status, summary = run_json("--timeout", "0.3")
    finally:
        server.release()
    assert status == 1
    entry = summary["storages"][0]["hosts"][0]
    assert entry["reachable"] is False
    assert entry["error"].startswith("ReadTimeout: ")


@pytest.mark.django_db
def test_rows_of_hosts_no_longer_configured_are_shown(media_server_factory: Factory, settings):
    server = media_server_factory("test")
    configure(settings, [server.host])
    add_rows("retired:8080", ["old.txt"], timedelta(days=2, hours=1))
    status, summary = run_json()
    assert status == 0  # an unconfigured host is not probed, so not "unreachable"
    hosts = summary["storages"][0]["hosts"]
    assert [(h["host"], h["configured"], h["backlog"]) for h in hosts] == [
        (server.host, True, 0),
        ("retired:8080", False, 1),
    ]
    assert hosts[1]["reachable"] is None
    status, out = run()
    retired = next(line for line in out.splitlines() if "retired:8080" in line)
    assert retired.split() == ["default", "retired:8080", "not", "configured", "-", "1", "2d", "1h"]


@pytest.mark.django_db
def test_every_resto_storage_by_default_and_storage_option(media_server_factory: Factory, settings):
    first, second = media_server_factory("test"), media_server_factory("test")
    settings.STORAGES = {
        "default": {
            "BACKEND": "django_resto.storage.HybridStorage",
            "OPTIONS": {"hosts": [first.host]},
        },
        "remote": {
            "BACKEND": "django_resto.storage.DistributedStorage",
            "OPTIONS": {"hosts": [second.host]},
        },
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    _, summary = run_json()
    assert [(s["storage"], s["backend"]) for s in summary["storages"]] == [
        ("default", "HybridStorage"),
        ("remote", "DistributedStorage"),
    ]
    _, summary = run_json("--storage", "remote")
    assert [s["storage"] for s in summary["storages"]] == ["remote"]
    with pytest.raises(CommandError, match="'nope' is not in STORAGES") as caught:
        run("--storage", "nope")
    assert caught.value.returncode == 2
    with pytest.raises(CommandError, match="not a django_resto storage"):
        run("--storage", "staticfiles")
    with pytest.raises(CommandError, match="--timeout must be positive"):
        run("--timeout", "0")


@pytest.mark.django_db
def test_without_journal(media_server_factory: Factory, settings):
    server = media_server_factory("test")
    configure(settings, [server.host])
    settings.INSTALLED_APPS = [app for app in settings.INSTALLED_APPS if app != "django_resto"]
    status, summary = run_json()
    assert status == 0
    assert summary["storages"][0]["journal"] is False
    assert summary["storages"][0]["hosts"][0]["backlog"] is None
    status, out = run()
    assert out.splitlines()[-1] == (
        "(no journal: add django_resto to INSTALLED_APPS to record backlogs)"
    )
    assert out.splitlines()[1].split()[-2:] == ["n/a", "-"]
