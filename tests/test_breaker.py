"""The dead-host breaker (django_resto/breaker.py): opens, fails fast, probes, closes.

Each test counts what the servers actually received, so "not sent" is a fact seen on
the server's side, not a guess from timings.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.files.base import ContentFile

from django_resto import breaker
from django_resto.breaker import HostHeldOpen
from django_resto.exceptions import ReplicationError
from django_resto.models import PendingReplication
from django_resto.storage import AsyncStorage, HybridStorage
from tests.dbconfig import subprocess_databases

pytestmark = pytest.mark.django_db(transaction=True)


def rows(host: str) -> list[tuple[str, str]]:
    return sorted(PendingReplication.objects.filter(host=host).values_list("name", "operation"))


def held(error: ReplicationError, host: str) -> HostHeldOpen | None:
    for outcome in error.failures:
        if outcome.host == host and isinstance(outcome.error, HostHeldOpen):
            return outcome.error
    return None


def test_a_refused_host_is_not_tried_again_within_the_window(test_servers):
    up, down = test_servers(2)
    down.stop()
    storage = HybridStorage(
        journal_alias="tests", hosts=[up.host, down.host], fatal_exceptions=False
    )
    for i in range(5):
        storage.save(f"f{i}.txt", ContentFile(b"x"))
    assert storage.replicator.breaker_state(down.host) == "open"
    assert storage.replicator.breaker_state(up.host) == "closed"
    # Every save is journaled for the dead host; the live one has them all.
    assert rows(down.host) == [(f"f{i}.txt", "PUT") for i in range(5)]
    assert [up.read(f"f{i}.txt") for i in range(5)] == [b"x"] * 5
    errors = PendingReplication.objects.filter(host=down.host).order_by("name")
    assert "Connection" in errors[0].last_error and "breaker" not in errors[0].last_error
    assert all("held open by the breaker" in row.last_error for row in errors[1:])


def test_a_hanging_host_costs_one_timeout_not_one_per_save(test_servers):
    fast, hung = test_servers(2)
    hung.hang()
    storage = HybridStorage(
        journal_alias="tests",
        hosts=[fast.host, hung.host],
        fatal_exceptions=False,
        timeout=0.5,
        breaker_window=30,
    )
    for i in range(20):
        storage.save(f"s{i}.bin", ContentFile(b"4" * 4096))
    # Only the first save's request reached the hanging host; 19 were never sent.
    assert hung.hanging == 1
    hung.release()
    assert hung.wait_for_requests(1)
    assert len(hung.requests) == 1
    assert len(rows(hung.host)) == 20
    assert len(fast.requests) == 20


def test_the_probe_after_the_window_closes_the_breaker(test_servers):
    up, flaky = test_servers(2)
    flaky.force_status(503)
    storage = HybridStorage(
        journal_alias="tests",
        hosts=[up.host, flaky.host],
        fatal_exceptions=False,
        breaker_window=0.2,
    )
    storage.save("a.txt", ContentFile(b"a"))  # 503: opens
    storage.save("b.txt", ContentFile(b"b"))  # held
    assert len(flaky.requests) == 1
    flaky.force_status(None)
    time.sleep(0.25)
    assert storage.replicator.breaker_state(flaky.host) == "half-open"
    storage.save("c.txt", ContentFile(b"c"))  # the probe: answered, so closed
    assert storage.replicator.breaker_state(flaky.host) == "closed"
    storage.save("d.txt", ContentFile(b"d"))
    assert [r.status for r in flaky.requests] == [503, 201, 201]
    assert rows(flaky.host) == [("a.txt", "PUT"), ("b.txt", "PUT")]


def test_a_failed_probe_opens_it_again_for_twice_as_long(test_servers):
    (down,) = test_servers(1)
    down.stop()
    storage = HybridStorage(
        journal_alias="tests",
        hosts=[down.host],
        fatal_exceptions=False,
        breaker_window=0.1,
        breaker_max_window=0.3,
    )
    windows = []
    for _ in range(4):
        storage.save("x.txt", ContentFile(b"x"))  # the first opens; then each one probes
        state = breaker.breaker_for(f"http://{down.host}")._state
        windows.append(round(state.window, 2))
        time.sleep(state.until - time.monotonic() + 0.02)
    assert windows == [0.1, 0.2, 0.3, 0.3]


def test_client_errors_prove_the_host_is_alive(test_servers):
    (strict,) = test_servers(1)
    strict.force_status(403)
    storage = HybridStorage(journal_alias="tests", hosts=[strict.host], fatal_exceptions=False)
    storage.save("a.txt", ContentFile(b"a"))
    storage.save("b.txt", ContentFile(b"b"))
    assert storage.replicator.breaker_state(strict.host) == "closed"
    assert [r.status for r in strict.requests] == [403, 403]


def test_fatal_exceptions_name_the_breaker(test_servers):
    up, down = test_servers(2)
    down.stop()
    storage = HybridStorage(journal_alias="tests", hosts=[up.host, down.host])
    with pytest.raises(ReplicationError):
        storage.save("a.txt", ContentFile(b"a"))
    with pytest.raises(ReplicationError) as info:
        storage.save("b.txt", ContentFile(b"b"))
    assert info.value.hosts == [down.host]
    assert "held open by the breaker after ConnectionError" in str(info.value)
    assert held(info.value, down.host) is not None


def test_quorum_counts_a_held_host_as_missing(test_servers):
    a, b, c = test_servers(3)
    c.stop()
    storage = HybridStorage(
        journal_alias="tests",
        hosts=[a.host, b.host, c.host],
        fatal_exceptions=False,
        min_replicas=3,
    )
    with pytest.raises(ReplicationError, match="Only 2 acknowledged"):
        storage.save("q1.txt", ContentFile(b"q"))
    with pytest.raises(ReplicationError, match="Only 2 acknowledged") as info:
        storage.save("q2.txt", ContentFile(b"q"))
    assert held(info.value, c.host) is not None


def test_background_work_fails_fast_too(test_servers):
    up, down = test_servers(2)
    down.stop()
    storage = AsyncStorage(journal_alias="tests", hosts=[up.host, down.host], async_workers=1)
    for i in range(3):
        storage.save(f"bg{i}.txt", ContentFile(b"x"))
    assert storage.wait(timeout=10)
    assert storage.replicator.breaker_state(down.host) == "open"
    assert len(rows(down.host)) == 3
    assert PendingReplication.objects.filter(host=up.host).count() == 0


def test_window_zero_turns_it_off(test_servers):
    up, down = test_servers(2)
    down.stop()
    storage = HybridStorage(
        journal_alias="tests",
        hosts=[up.host, down.host],
        fatal_exceptions=False,
        breaker_window=0,
    )
    storage.save("a.txt", ContentFile(b"a"))
    storage.save("b.txt", ContentFile(b"b"))
    assert storage.replicator.breaker_state(down.host) == "off"
    errors = PendingReplication.objects.filter(host=down.host).values_list("last_error", flat=True)
    assert all("breaker" not in error for error in errors)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"breaker_window": -1}, "breaker_window"),
        ({"breaker_window": "5"}, "breaker_window"),
        ({"breaker_window": 10, "breaker_max_window": 5}, "shorter than breaker_window=10"),
    ],
)
def test_bad_breaker_settings_are_refused(options, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        HybridStorage(hosts=["127.0.0.1:9"], **options)


def test_the_state_is_per_process(test_servers, media_root, settings):
    """Another OS process (another gunicorn worker) has its own breaker: it tries the host."""
    flaky = test_servers(1)[0]
    flaky.force_status(503)
    storage = HybridStorage(journal_alias="tests", hosts=[flaky.host], fatal_exceptions=False)
    storage.save("here.txt", ContentFile(b"1"))
    assert storage.replicator.breaker_state(flaky.host) == "open"
    config = {"databases": subprocess_databases(), "media_root": str(media_root)}
    script = textwrap.dedent(
        """
        import json, sys
        from tests.worker_setup import configure_django
        config = json.loads(sys.argv[1])
        configure_django(config, {}, "breaker-test")
        from django.core.files.base import ContentFile
        from django_resto.storage import HybridStorage
        storage = HybridStorage(
            journal_alias="tests", hosts=[config["host"]], fatal_exceptions=False
        )
        storage.save("there.txt", ContentFile(b"2"))
        print(storage.replicator.breaker_state(config["host"]))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps({**config, "host": flaky.host})],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    # The child sent its PUT (a second 503 on the server) and opened its own breaker.
    assert [r.path for r in flaky.requests] == ["/media/here.txt", "/media/there.txt"]
    assert done.stdout.split()[-1] == "open"
