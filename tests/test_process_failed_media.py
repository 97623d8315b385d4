"""manage.py process_failed_media: exit codes, --dry-run, --json, --host, --limit."""

from __future__ import annotations

import io
import json

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.core.management import CommandError, call_command

from django_resto.models import PendingReplication

# The repair runs one thread per host: the journal must be committed for them to see it.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def setup(settings, media_server_factory):
    servers = [media_server_factory("nginx"), media_server_factory("lighttpd")]
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "django_resto.storage.HybridStorage",
            "OPTIONS": {"hosts": [s.host for s in servers], "fatal_exceptions": False},
        },
    }
    storages._storages.pop("default", None)
    storage = storages["default"]
    for server in servers:
        server.stop()
    storage.save("a/1.txt", ContentFile(b"1"))
    storage.save("a/2.txt", ContentFile(b"2"))
    storage.save("gone.txt", ContentFile(b"g"))
    storage.delete("gone.txt")
    yield storage, servers
    storages._storages.pop("default", None)


def run(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("process_failed_media", *args, stdout=out, stderr=err)
        code = 0
    except SystemExit as exit:
        code = exit.code
    return code, out.getvalue(), err.getvalue()


def test_rows_remain_while_hosts_are_down(setup):
    assert PendingReplication.objects.count() == 6
    code, out, err = run()
    assert code == 1
    assert out.strip().splitlines()[-1] == (
        "6 row(s) selected: 0 repaired, 6 failed, 0 skipped; 6 remaining."
    )
    assert len(err.strip().splitlines()) == 6
    assert all(": ConnectionError: " in line for line in err.strip().splitlines())
    # One failed write and one failed repair; gone.txt also had its failed delete.
    assert sorted(set(PendingReplication.objects.values_list("name", "attempts"))) == [
        ("a/1.txt", 2),
        ("a/2.txt", 2),
        ("gone.txt", 3),
    ]


def test_dry_run_changes_nothing(setup):
    _, servers = setup
    for server in servers:
        server.restart()
    before = list(PendingReplication.objects.values_list("host", "name", "attempts", "seq"))
    code, out, _ = run("--dry-run")
    assert code == 1
    lines = out.strip().splitlines()
    assert sorted(lines[:-1]) == sorted(
        f"would {verb} {name} on {server.host}"
        for server in servers
        for verb, name in [("PUT", "a/1.txt"), ("PUT", "a/2.txt"), ("DELETE", "gone.txt")]
    )
    after = list(PendingReplication.objects.values_list("host", "name", "attempts", "seq"))
    assert after == before
    assert [server.files() for server in servers] == [{}, {}]


def test_repairs_everything_and_exits_zero(setup):
    _, servers = setup
    for server in servers:
        server.restart()
        server.write("gone.txt", b"stale copy")
    code, out, _ = run("--json")
    assert code == 0
    summary = json.loads(out)
    assert {k: summary[k] for k in ("selected", "repaired", "failed", "remaining")} == {
        "selected": 6,
        "repaired": 6,
        "failed": 0,
        "remaining": 0,
    }
    assert sorted((a["action"], a["name"]) for a in summary["actions"]) == sorted(
        [("PUT", "a/1.txt"), ("PUT", "a/2.txt"), ("DELETE", "gone.txt")] * 2
    )
    for server in servers:
        assert server.files() == {"a/1.txt": b"1", "a/2.txt": b"2"}
    assert PendingReplication.objects.count() == 0


def test_host_and_limit(setup):
    _, servers = setup
    nginx, lighttpd = servers
    nginx.restart()
    code, _, _ = run("--host", nginx.host, "--limit", "2")
    assert code == 1  # one row of that host remains
    assert PendingReplication.objects.filter(host=nginx.host).count() == 1
    assert PendingReplication.objects.filter(host=lighttpd.host).count() == 3
    code, _, _ = run("--host", nginx.host)
    assert code == 0
    assert PendingReplication.objects.filter(host=lighttpd.host).count() == 3


def test_bad_arguments(setup):
    with pytest.raises(CommandError, match="--limit must be a positive number"):
        call_command("process_failed_media", "--limit", "0")
    with pytest.raises(CommandError, match="'nope' is not a django_resto storage"):
        call_command("process_failed_media", "--storage", "nope")


def test_empty_journal_exits_zero(db):
    code, out, _ = run()
    assert (code, out.strip()) == (
        0,
        "0 row(s) selected: 0 repaired, 0 failed, 0 skipped; 0 remaining.",
    )
