"""``process_failed_media --watch``: drains what it can, backs off, stops on SIGTERM.

The loop runs in this process (a helper thread signals it once the output says
enough passes ran) or, for the stop in the middle of a repair, in a child process
whose signal handling is the real one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.core.files.storage import storages
from django.core.management import CommandError, call_command
from django.utils import timezone

from django_resto import journal
from django_resto.models import PendingReplication
from tests.dbconfig import subprocess_databases

pytestmark = pytest.mark.django_db(transaction=True)

REPO = Path(__file__).resolve().parent.parent
ALIAS = "resto"
WATCH_TIMEOUT = 30.0


class Lines:
    """A command's stdout, readable line by line from another thread."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._buffer = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> None:
        with self._lock:
            self._buffer += text
            *done, self._buffer = self._buffer.split("\n")
            self.lines.extend(done)

    def flush(self) -> None:
        pass

    def snapshot(self) -> list[str]:
        with self._lock:
            return list(self.lines)


def passes(lines: list[str]) -> list[dict[str, Any]]:
    """The JSON line of each pass (the last line, ``{"stopped": true}``, is not one)."""
    return [json.loads(line) for line in lines if line.startswith('{"') and '"pass"' in line]


def watch(*args: str, until: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]]:
    """Run ``--watch --json`` here; SIGTERM this process once ``until(passes)`` holds.

    The handler is the command's own (it is installed before the first pass prints),
    so the signal stops the loop instead of pytest.
    """
    out, err = Lines(), Lines()
    done = threading.Event()

    def signal_when_done() -> None:
        deadline = time.monotonic() + WATCH_TIMEOUT
        while not done.is_set():
            seen = passes(out.snapshot())
            if (seen and until(seen)) or time.monotonic() > deadline:
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.01)

    helper = threading.Thread(target=signal_when_done, daemon=True)
    helper.start()
    try:
        call_command("process_failed_media", "--watch", "--json", *args, stdout=out, stderr=err)
    finally:
        done.set()
        helper.join()
    lines = out.snapshot()
    assert json.loads(lines[-1]) == {"stopped": True}
    seen = passes(lines)
    assert until(seen), f"gave up after {WATCH_TIMEOUT}s: {seen}"
    return seen


@pytest.fixture
def hosts(settings, test_servers, media_root):
    """An answering host and a dead one (its port refuses), as a HybridStorage's hosts."""
    up, down = test_servers(2)
    down.stop()
    settings.STORAGES = {
        **settings.STORAGES,
        ALIAS: {
            "BACKEND": "django_resto.storage.HybridStorage",
            "OPTIONS": {"hosts": [up.host, down.host], "fatal_exceptions": False},
        },
    }
    storages._storages.pop(ALIAS, None)
    yield up, down
    storages._storages.pop(ALIAS, None)


def missed(media_root: Path, names: list[str], hosts: list[str]) -> None:
    """Master copies of ``names``, and journal rows saying ``hosts`` missed them."""
    for name in names:
        path = media_root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(name.encode())
        journal.mark(ALIAS, hosts, name, "PUT", journal.now_seq(), error="down")


NAMES = [f"w/{index}.txt" for index in range(5)]


def test_a_pass_drains_the_live_host_and_sends_a_dead_one_one_request(hosts, media_root):
    up, down = hosts
    missed(media_root, NAMES, [up.host, down.host])
    seen = watch("--interval", "0.2", until=lambda seen: len(seen) >= 3)

    assert up.files() == {name: name.encode() for name in NAMES}
    assert not PendingReplication.objects.filter(host=up.host).exists()
    first, *later = seen
    assert (first["repaired"], first["failed"], first["unreachable"]) == (5, 1, [down.host])
    for number, line in enumerate(later, start=2):
        assert line["pass"] == number
        assert (line["repaired"], line["failed"], line["unreachable"]) == (0, 1, [down.host])
        assert line["remaining"] == 5
    # One row of the dead host tried per pass, oldest first; each backed off (at least
    # 2 s: 2**2 s jittered), so the next pass tries the next one. The others wait,
    # untried, with no back-off of their own.
    rows = list(PendingReplication.objects.filter(host=down.host).order_by("pk"))
    tried = [row for row in rows if row.attempts == 2]
    assert tried == rows[: len(seen)]
    now = timezone.now()
    assert all(row.next_attempt > now for row in tried)
    assert all(row.attempts == 1 and row.next_attempt is None for row in rows[len(seen) :])
    assert seen[-1]["backed_off"] == len(seen)


def test_a_host_that_comes_back_is_drained_and_backed_off_rows_follow(hosts, media_root):
    _, down = hosts
    missed(media_root, NAMES, [down.host])
    restarted = threading.Event()

    def until(seen: list[dict[str, Any]]) -> bool:
        if len(seen) >= 2 and not restarted.is_set():
            down.start()  # the same port again
            restarted.set()
        return restarted.is_set() and seen[-1]["remaining"] == 0

    # A short cap, so that the rows the dead host backed off are due again soon.
    seen = watch("--interval", "0.05", "--max-backoff", "0.3", until=until)
    assert down.files() == {name: name.encode() for name in NAMES}
    assert PendingReplication.objects.count() == 0
    assert sum(line["repaired"] for line in seen) == len(NAMES)


def test_a_new_failure_makes_a_backed_off_row_due_at_once(hosts, media_root):
    _, down = hosts
    missed(media_root, NAMES[:1], [down.host])
    later = timezone.now() + timezone.timedelta(hours=1)
    PendingReplication.objects.update(next_attempt=later, attempts=7)
    seen = watch("--interval", "0.05", until=lambda seen: len(seen) >= 1)
    assert (seen[0]["repaired"], seen[0]["failed"], seen[0]["backed_off"]) == (0, 0, 1)

    down.start()
    journal.mark(ALIAS, [down.host], NAMES[0], "PUT", journal.now_seq(), error="again")
    seen = watch("--interval", "0.05", until=lambda seen: len(seen) >= 1)
    assert (seen[0]["repaired"], seen[0]["remaining"]) == (1, 0)
    assert down.read(NAMES[0]) == NAMES[0].encode()


def test_rows_replicated_with_tasks_are_drained_by_the_watch(settings, test_servers, media_root):
    """The tasks mode needs no task of its own to drain: a failed task leaves a row."""
    from django_resto import tasks

    if tasks.FRAMEWORK is None or "default" not in getattr(settings, "TASKS", {}):
        pytest.skip("no Django Tasks framework installed")
    (server,) = test_servers(1)
    server.stop()
    settings.STORAGES = {
        **settings.STORAGES,
        ALIAS: {
            "BACKEND": "django_resto.storage.AsyncStorage",
            # TASKS["default"] runs each task at once, in this process.
            "OPTIONS": {"hosts": [server.host], "replicate_with": "tasks"},
        },
    }
    storages._storages.pop(ALIAS, None)
    try:
        from django.core.files.base import ContentFile

        storages[ALIAS].save("t/a.txt", ContentFile(b"a"))
        row = PendingReplication.objects.get()
        assert (row.host, row.next_attempt) == (server.host, None)
        server.start()
        seen = watch("--interval", "0.05", until=lambda seen: seen[-1]["remaining"] == 0)
    finally:
        storages._storages.pop(ALIAS, None)
    assert seen[0]["repaired"] == 1
    assert server.read("t/a.txt") == b"a"


def test_sigterm_in_a_repair_finishes_that_row_then_exits_0(media_root, test_servers, tmp_path):
    (server,) = test_servers(1)
    names = [f"s/{index}.txt" for index in range(4)]
    entry = {"BACKEND": "django_resto.storage.HybridStorage", "OPTIONS": {"hosts": [server.host]}}
    missed(media_root, names, [server.host])
    server.hang(methods="PUT")
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings_worker",
        "RESTO_WORKER_DATABASES": json.dumps(subprocess_databases()),
        "RESTO_WORKER_MEDIA_ROOT": str(media_root),
        "RESTO_WORKER_STORAGES": json.dumps({ALIAS: entry}),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    command = [sys.executable, "-m", "django", "process_failed_media", "--watch"]
    log = tmp_path / "watch.log"
    with log.open("wb") as output:
        child = subprocess.Popen(
            [*command, "--interval", "0.1"],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        assert server.wait_until_hanging(1, timeout=20), log.read_text()
        child.send_signal(signal.SIGTERM)
        time.sleep(0.3)  # the handler runs while the PUT waits for its answer
        server.release()
        code = child.wait(timeout=20)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    output_text = log.read_text()
    assert code == 0, output_text
    assert output_text.rstrip().endswith("stopped"), output_text
    puts = [record for record in server.requests if record.method == "PUT"]
    assert len(puts) == 1  # the row in hand, and no other started
    assert server.files() == {names[0]: names[0].encode()}
    assert sorted(PendingReplication.objects.values_list("name", flat=True)) == names[1:]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--watch", "--limit", "3"], "--watch repairs every due row"),
        (["--watch", "--dry-run"], "--watch repairs every due row"),
        (["--interval", "0"], "--interval must be positive"),
        (["--max-backoff", "-1"], "--max-backoff must be positive"),
    ],
)
def test_bad_watch_arguments(args, message):
    with pytest.raises(CommandError, match=message):
        call_command("process_failed_media", *args)
