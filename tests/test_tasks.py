"""AsyncStorage with replicate_with="tasks": Django's Tasks framework instead of threads.

With the immediate backend the task runs inside the commit, which shows what is
enqueued and when. With django-tasks-db a real ``db_worker`` process runs the tasks from
the test database, so the path a production worker takes (import the task by its path,
rebuild the storage from STORAGES, read the master copy) is the one tested. The media
servers are real nginx processes on 127.0.0.1.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import django
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.db import transaction
from django.test import override_settings
from django.utils import timezone

from django_resto import tasks as resto_tasks
from django_resto.checks import check_storages
from django_resto.models import PendingReplication
from django_resto.repair import repair_rows
from django_resto.storage import AsyncStorage
from tests.dbconfig import subprocess_databases

# transaction=True: commits must really happen (on_commit), and the worker process must
# see the rows.
pytestmark = pytest.mark.django_db(transaction=True)

REPO = Path(__file__).resolve().parent.parent
ASYNC = "django_resto.storage.AsyncStorage"
TASK_PATH = "django_resto.tasks.replicate"
#: Bound on every wait for the worker or the servers; a pass takes a few seconds.
WAIT = 60.0
STOP_TIMEOUT = 10.0


def require_framework(*, worker: bool = False) -> None:
    """Fail (not skip) when the test extra is missing: CI must run these tests."""
    if resto_tasks.FRAMEWORK is None:
        pytest.fail("No tasks framework: pip install -e '.[test]'", pytrace=False)
    if worker and importlib.util.find_spec("django_tasks_db") is None:
        pytest.fail("django-tasks-db is missing: pip install -e '.[test]'", pytrace=False)


def pending() -> set[tuple[str, str]]:
    return set(PendingReplication.objects.values_list("host", "name"))


def configure(settings: Any, servers: list[Any], **options: Any) -> tuple[Any, dict[str, Any]]:
    """Put an AsyncStorage in tasks mode under STORAGES["resto"]; return it and its entry."""
    entry = {
        "BACKEND": ASYNC,
        "OPTIONS": {
            "hosts": [server.host for server in servers],
            "replicate_with": "tasks",
            **options,
        },
    }
    settings.STORAGES = {**settings.STORAGES, "resto": entry}
    return storages["resto"], entry


def wait_until(
    predicate: Callable[[], bool], what: str, diagnostics: Callable[[], str] = str
) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"Waited {WAIT:.0f}s for {what}.\n{diagnostics()}", pytrace=False)
        time.sleep(0.05)


@pytest.fixture
def enqueued() -> Iterator[list[tuple[str, str, str, list[Any], dict[str, Any]]]]:
    """(task path, backend, queue, args, kwargs) of each task enqueued in this process."""
    require_framework()
    signals = importlib.import_module(f"{resto_tasks.FRAMEWORK}.signals")
    seen: list[tuple[str, str, str, list[Any], dict[str, Any]]] = []

    def record(sender: Any, task_result: Any, **kwargs: Any) -> None:
        task = task_result.task
        seen.append(
            (
                task.module_path,
                task.backend,
                task.queue_name,
                list(task_result.args),
                dict(task_result.kwargs),
            )
        )

    signals.task_enqueued.connect(record, weak=False)
    yield seen
    signals.task_enqueued.disconnect(record)


@pytest.fixture
def deferring(settings: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """TASKS["dummy"], a backend that keeps tasks (run_after included) until a test runs them.

    Returned as the backend, whose ``results`` are the tasks enqueued on it. The note
    about backends that cannot defer is said once per process: each test starts afresh.
    """
    require_framework()
    monkeypatch.setattr(resto_tasks, "_said_no_defer", set())
    framework = importlib.import_module(resto_tasks.FRAMEWORK or "")
    settings.TASKS = {
        **settings.TASKS,
        "dummy": {"BACKEND": f"{resto_tasks.FRAMEWORK}.backends.dummy.DummyBackend"},
    }
    backend = framework.task_backends["dummy"]
    assert backend.supports_defer
    backend.clear()
    return backend


def run(result: Any) -> dict[str, Any]:
    """Run a kept task as a worker would: by its import path, with its (JSON) arguments."""
    return result.task.call(*result.args, **result.kwargs)


def tasks_for(backend: Any, host: str) -> list[Any]:
    return [result for result in backend.results if result.args[1] == host]


def back_off_of(host: str, name: str) -> datetime:
    next_attempt = PendingReplication.objects.get(host=host, name=name).next_attempt
    assert next_attempt is not None
    return next_attempt


class Worker:
    """A ``db_worker`` process on the test database; its output goes to ``log``."""

    def __init__(self, process: subprocess.Popen[bytes], log: Path) -> None:
        self.process = process
        self.log = log

    def output(self) -> str:
        return f"--- db_worker output ---\n{self.log.read_text(errors='replace')}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> int:
        """SIGTERM (the worker finishes its task and exits), then SIGKILL if it does not."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait(STOP_TIMEOUT)

    def kill(self) -> int:
        self.process.kill()
        return self.process.wait(STOP_TIMEOUT)


@pytest.fixture
def db_worker(transactional_db: None, tmp_path: Path, media_root: Path) -> Iterator[Any]:
    """Start ``python -m django db_worker`` against this test's database and MEDIA_ROOT.

    Depending on transactional_db makes the worker stop before the database is flushed.
    """
    require_framework(worker=True)
    workers: list[Worker] = []

    def start(entry: dict[str, Any], *, queue: str = "resto") -> Worker:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings_worker",
            "RESTO_WORKER_DATABASES": json.dumps(subprocess_databases()),
            "RESTO_WORKER_MEDIA_ROOT": str(media_root),
            "RESTO_WORKER_STORAGES": json.dumps({"resto": entry}),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        }
        command = [
            sys.executable,
            "-m",
            "django",
            "db_worker",
            "--backend=db",
            f"--queue-name={queue}",
            "--interval=0.05",
            "--no-startup-delay",
            "--no-reload",
            "--verbosity=2",
        ]
        log = tmp_path / f"db_worker-{len(workers)}.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                command,
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal is for pytest only
            )
        worker = Worker(process, log)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()


# --- immediate backend: what is enqueued, and when ------------------------------------------


@pytest.mark.real_server
def test_tasks_are_enqueued_on_commit_one_per_host_with_names_only(
    settings, media_server_factory, enqueued, media_root
):
    servers = [media_server_factory("nginx") for _ in range(2)]
    storage, _ = configure(settings, servers)
    payload = b"\x00\xffpixels" * 512
    with transaction.atomic():
        name = storage.save("uploads/a.jpg", ContentFile(payload))
        # Journaled in the transaction, but no worker may act before the commit.
        assert pending() == {(server.host, name) for server in servers}
        assert enqueued == []
        assert [server.exists(name) for server in servers] == [False, False]
    assert enqueued == [
        (TASK_PATH, "default", "default", ["resto", server.host, name], {}) for server in servers
    ]
    for *_, args, _kwargs in enqueued:
        assert all(isinstance(arg, str) for arg in args)
        assert len(json.dumps(args)) < 100  # names, not the 5 kB of bytes
    assert [server.read(name) for server in servers] == [payload, payload]
    assert pending() == set()

    # Autocommit: enqueued at once. The worker derives DELETE from the master copy.
    enqueued.clear()
    storage.delete(name)
    assert [args for *_, args, _kwargs in enqueued] == [
        ["resto", server.host, name] for server in servers
    ]
    assert [server.exists(name) for server in servers] == [False, False]
    assert pending() == set()


@pytest.mark.real_server
def test_rolled_back_upload_enqueues_nothing(settings, media_server_factory, enqueued):
    server = media_server_factory("nginx")
    storage, _ = configure(settings, [server])

    class Rollback(Exception):
        pass

    with pytest.raises(Rollback), transaction.atomic():
        storage.save("uploads/rolled-back.txt", ContentFile(b"x"))
        raise Rollback
    assert enqueued == []
    assert pending() == set()  # the intent row went with the transaction
    assert server.names() == []


@pytest.mark.real_server
def test_failure_in_the_task_is_journaled_not_raised(
    settings, media_server_factory, enqueued, resto_log
):
    servers = [media_server_factory("nginx") for _ in range(2)]
    storage, _ = configure(settings, servers, timeout=2)
    servers[1].stop()
    storage.save("a.txt", ContentFile(b"a"))
    assert servers[0].read("a.txt") == b"a"
    assert pending() == {(servers[1].host, "a.txt")}
    assert "ConnectionError" in PendingReplication.objects.get().last_error
    assert any(
        r.getMessage().startswith(f"Failed to sync a.txt on {servers[1].host}")
        for r in resto_log.records
    )


def test_a_failed_enqueue_is_logged_and_the_row_kept(settings, monkeypatch, resto_log):
    require_framework()
    storage, _ = configure(settings, [], hosts=["127.0.0.1:9"])

    def broken(self: Any, *args: Any, **kwargs: Any) -> None:
        raise ConnectionError("queue unreachable")

    monkeypatch.setattr(type(resto_tasks.task_for(storage)), "enqueue", broken)
    storage.save("a.txt", ContentFile(b"a"))  # does not raise: the upload succeeded
    assert pending() == {("127.0.0.1:9", "a.txt")}
    assert any(
        "Could not enqueue the replication of a.txt to 127.0.0.1:9" in r.getMessage()
        and "queue unreachable" in r.getMessage()
        for r in resto_log.records
    )


# --- retries: a failed task enqueues itself again at its row's back-off -------------------


@pytest.mark.real_server
def test_a_failed_task_retries_itself_at_the_rows_back_off(
    settings, media_server_factory, deferring, resto_log
):
    up, down = media_server_factory("nginx"), media_server_factory("nginx")
    storage, _ = configure(settings, [up, down], task_backend="dummy", breaker_window=0)
    down.stop()
    storage.save("a.txt", ContentFile(b"payload"))
    first = tasks_for(deferring, down.host)
    assert [result.task.run_after for result in first] == [None]
    assert run(tasks_for(deferring, up.host)[0])["ok"]

    before = timezone.now()
    answer = run(first[0])
    assert answer["ok"] is False
    row = PendingReplication.objects.get()
    assert (row.host, row.name, row.attempts) == (down.host, "a.txt", 1)
    # The drain's back-off for a first failure (repair.BACKOFF_BASE * 2, jittered):
    # --watch waits for the same moment.
    after = timezone.now()
    assert before + timedelta(seconds=1) <= row.next_attempt <= after + timedelta(seconds=2)
    retry = tasks_for(deferring, down.host)[1:]
    assert [(r.task.module_path, r.task.backend, r.task.queue_name) for r in retry] == [
        (TASK_PATH, "dummy", "default")
    ]
    assert retry[0].args == ["resto", down.host, "a.txt"]  # names only, as the first
    assert retry[0].task.run_after == row.next_attempt
    assert answer["retry_at"] == row.next_attempt.isoformat()

    down.start()
    answer = run(retry[0])
    assert (answer["ok"], answer["operation"], answer["retry_at"]) == (True, "PUT", None)
    assert down.read("a.txt") == b"payload"
    assert pending() == set()
    assert len(deferring.results) == 3  # the success enqueued nothing
    assert not [r for r in resto_log.records if "cannot defer" in r.getMessage()]


@pytest.mark.real_server
@pytest.mark.parametrize("since", ["deleted", "replaced"])
def test_a_retry_converges_to_the_master_copy_as_it_is_when_it_runs(
    settings, media_server_factory, deferring, since
):
    server = media_server_factory("nginx")
    storage, _ = configure(settings, [server], task_backend="dummy", breaker_window=0)
    server.write("a.txt", b"stale")
    server.stop()
    storage.save("a.txt", ContentFile(b"first"))
    assert run(deferring.results[0])["ok"] is False
    retry = deferring.results[1]
    assert retry.task.run_after == back_off_of(server.host, "a.txt")

    # Neither operation's own task runs: the retry alone must find what to do.
    storage.delete("a.txt")
    if since == "replaced":
        assert storage.save("a.txt", ContentFile(b"second")) == "a.txt"
    server.start()
    answer = run(retry)
    assert answer["ok"] is True
    if since == "deleted":
        assert answer["operation"] == "DELETE"
        assert not server.exists("a.txt")
    else:
        assert answer["operation"] == "PUT"
        assert server.read("a.txt") == b"second"
    # Repaired under the lock after the newer operations: their rows are settled too.
    assert pending() == set()


@pytest.mark.real_server
@pytest.mark.parametrize("retries", [0, 2])
def test_retries_stop_at_task_retries_and_the_row_waits_for_the_drain(
    settings, media_server_factory, deferring, resto_log, retries
):
    server = media_server_factory("nginx")
    storage, _ = configure(
        settings, [server], task_backend="dummy", breaker_window=0, task_retries=retries
    )
    server.stop()
    storage.save("a.txt", ContentFile(b"a"))
    ran = 0
    while ran < len(deferring.results):
        assert run(deferring.results[ran])["ok"] is False
        ran += 1
        assert ran <= retries + 1, "more retries than task_retries"
    assert ran == retries + 1  # the task itself, then its retries
    row = PendingReplication.objects.get()
    assert row.attempts == retries + 1
    assert row.next_attempt is None  # due: process_failed_media tries it at its next pass
    given_up = [r for r in resto_log.records if r.getMessage().startswith("Not retrying a.txt")]
    assert len(given_up) == 1
    assert given_up[0].levelname == "WARNING"
    assert (
        f"after {retries + 1} failed attempts (task_retries={retries})" in given_up[0].getMessage()
    )

    server.start()
    report = repair_rows(PendingReplication.objects.all())
    assert (report.repaired, report.failed) == (1, 0)
    assert server.read("a.txt") == b"a"


@pytest.mark.real_server
def test_a_backend_that_cannot_defer_leaves_the_row_and_says_so_once(
    settings, media_server_factory, enqueued, resto_log, monkeypatch
):
    monkeypatch.setattr(resto_tasks, "_said_no_defer", set())
    server = media_server_factory("nginx")
    # TASKS["default"]: the immediate backend, which runs tasks at once and cannot defer.
    storage, _ = configure(settings, [server], breaker_window=0)
    assert not resto_tasks.task_for(storage).get_backend().supports_defer
    server.stop()
    storage.save("a.txt", ContentFile(b"a"))
    storage.save("b.txt", ContentFile(b"b"))
    assert len(enqueued) == 2  # the two uploads' tasks, no retry
    rows = list(PendingReplication.objects.order_by("name"))
    assert [(row.name, row.attempts, row.next_attempt) for row in rows] == [
        ("a.txt", 1, None),
        ("b.txt", 1, None),
    ]
    said = [r for r in resto_log.records if "cannot defer" in r.getMessage()]
    assert [r.levelname for r in said] == ["INFO"]
    assert "TASKS['default']" in said[0].getMessage()
    assert "process_failed_media" in said[0].getMessage()


@pytest.mark.real_server
def test_a_retry_that_cannot_be_enqueued_keeps_the_row(
    settings, media_server_factory, deferring, resto_log, monkeypatch
):
    server = media_server_factory("nginx")
    storage, _ = configure(settings, [server], task_backend="dummy", breaker_window=0)
    server.stop()
    storage.save("a.txt", ContentFile(b"a"))
    task = deferring.results[0]

    def broken(self: Any, *args: Any, **kwargs: Any) -> None:
        raise ConnectionError("queue unreachable")

    monkeypatch.setattr(type(task.task), "enqueue", broken)
    answer = run(task)  # does not raise: the failure is journaled, the row is there
    assert (answer["ok"], answer["retry_at"]) == (False, None)
    assert pending() == {(server.host, "a.txt")}
    assert len(deferring.results) == 1
    assert any(
        r.levelname == "ERROR"
        and "Could not enqueue a retry of the replication of a.txt" in r.getMessage()
        and "queue unreachable" in r.getMessage()
        for r in resto_log.records
    )


# --- configuration errors ----------------------------------------------------------------


def test_a_storage_outside_storages_cannot_use_tasks():
    require_framework()
    storage = AsyncStorage(hosts=["127.0.0.1:9"], replicate_with="tasks")
    assert storage.journal_key == ""
    with pytest.raises(ImproperlyConfigured, match="configured in STORAGES"):
        storage.save("a.txt", ContentFile(b"a"))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"task_backend": "missing"}, "task_backend='missing'"),
        ({"task_queue": "not-served"}, "task_queue='not-served'"),
    ],
)
def test_unknown_backend_or_queue_raises_at_save(settings, options, message):
    require_framework()
    storage, _ = configure(settings, [], hosts=["127.0.0.1:9"], **options)
    with pytest.raises(ImproperlyConfigured, match=message):
        storage.save("a.txt", ContentFile(b"a"))


def test_only_converge_can_become_a_task(settings):
    require_framework()
    storage, _ = configure(settings, [], hosts=["127.0.0.1:9"])
    with pytest.raises(TypeError, match="tasks carry names"):
        storage.execute(storage.put_file, "a.txt")


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("replicate_with", "celery"),
        ("replicate_with", True),
        ("task_backend", ""),
        ("task_backend", None),
        ("task_queue", " default"),
        ("task_queue", ["default"]),
        ("task_retries", -1),
        ("task_retries", True),
        ("task_retries", 1.5),
        ("task_retries", "8"),
        ("task_retries", None),
    ],
)
def test_invalid_options(option, value):
    with pytest.raises(ImproperlyConfigured, match=f"OPTIONS\\['{option}'\\] must be"):
        AsyncStorage(**{option: value})


def test_defaults_and_global_settings(settings):
    storage = AsyncStorage()
    assert (storage.replicate_with, storage.task_backend, storage.task_queue) == (
        "threads",
        "default",
        "default",
    )
    settings.RESTO_REPLICATE_WITH = "tasks"
    settings.RESTO_TASK_BACKEND = "db"
    settings.RESTO_TASK_QUEUE = "media"
    storage = AsyncStorage()
    assert (storage.replicate_with, storage.task_backend, storage.task_queue) == (
        "tasks",
        "db",
        "media",
    )
    with pytest.raises(ImproperlyConfigured, match="RESTO_REPLICATE_WITH must be"):
        settings.RESTO_REPLICATE_WITH = "thread"
        AsyncStorage()


def test_task_retries_default_global_setting_and_option(settings):
    assert AsyncStorage().task_retries == 8
    settings.RESTO_TASK_RETRIES = 3
    assert AsyncStorage().task_retries == 3
    assert AsyncStorage(task_retries=0).task_retries == 0  # OPTIONS wins
    with pytest.raises(ImproperlyConfigured, match="RESTO_TASK_RETRIES must be"):
        settings.RESTO_TASK_RETRIES = -2
        AsyncStorage()


def test_the_built_in_framework_wins_over_the_backport():
    """Django 6 with django-tasks also installed (the tasks extra lists it everywhere)."""
    require_framework()
    expected = "django.tasks" if django.VERSION >= (6, 0) else "django_tasks"
    chosen = resto_tasks.FRAMEWORK
    assert chosen == expected
    assert type(resto_tasks.get_task()).__module__ == f"{expected}.base"


@override_settings(
    STORAGES={
        "default": {
            "BACKEND": ASYNC,
            "OPTIONS": {"hosts": ["media-1:8080"], "replicate_with": "tasks"},
        }
    }
)
def test_check_passes_when_a_framework_is_installed():
    require_framework()
    assert check_storages() == []


def test_without_any_framework_the_module_imports_and_tasks_mode_is_refused(tmp_path):
    """Hide django.tasks and django_tasks from a fresh interpreter (this one has them)."""
    script = textwrap.dedent(
        """
        import json, sys
        for hidden in ("django.tasks", "django_tasks", "django_tasks_db"):
            sys.modules[hidden] = None  # makes their import fail
        import django
        from django.conf import settings
        settings.configure(
            INSTALLED_APPS=["django_resto"],
            MEDIA_ROOT=sys.argv[1],
            STORAGES={"default": {
                "BACKEND": "django_resto.storage.AsyncStorage",
                "OPTIONS": {"hosts": ["127.0.0.1:9"], "replicate_with": "tasks"},
            }},
        )
        django.setup()
        import django_resto.tasks
        from django.core.exceptions import ImproperlyConfigured
        from django.core.files.storage import storages
        from django_resto.checks import check_storages
        storage = storages["default"]
        try:
            storage.execute_one(storage.converge, "127.0.0.1:9", "a.txt")
        except ImproperlyConfigured as exc:
            refused = str(exc)
        else:
            refused = None
        print(json.dumps({
            "framework": django_resto.tasks.FRAMEWORK,
            "checks": [message.id for message in check_storages()],
            "refused": refused,
        }))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["framework"] is None
    assert answer["checks"] == ["django_resto.E006"]
    assert "Django >= 6.0" in answer["refused"]
    assert "django-resto[tasks]" in answer["refused"]


# --- a real worker process ---------------------------------------------------------------


@pytest.mark.real_server
def test_db_worker_replicates_saves_and_deletes(
    settings, media_server_factory, db_worker, enqueued, media_root
):
    from django_tasks_db.models import DBTaskResult

    servers = [media_server_factory("nginx") for _ in range(3)]
    storage, entry = configure(settings, servers, task_backend="db", task_queue="resto")
    worker = db_worker(entry)
    files = {f"uploads/{i % 3}/file-{i}.bin": os.urandom(1000 + 7919 * i) for i in range(8)}
    for name, data in files.items():
        assert storage.save(name, ContentFile(data)) == name
    assert sorted(args for *_, args, _kwargs in enqueued) == sorted(
        ["resto", server.host, name] for name in files for server in servers
    )
    assert {(path, backend, queue) for path, backend, queue, *_ in enqueued} == {
        (TASK_PATH, "db", "resto")
    }

    def diagnostics() -> str:
        tasks = list(DBTaskResult.objects.values_list("status", "args_kwargs", "traceback"))
        return f"journal: {sorted(pending())}\ntasks: {tasks}\n{worker.output()}"

    wait_until(
        lambda: all(server.files() == files for server in servers) and not pending(),
        "the worker to replicate every file to every host",
        diagnostics,
    )
    for name in files:
        storage.delete(name)
    wait_until(
        lambda: all(server.names() == [] for server in servers) and not pending(),
        "the worker to delete every file on every host",
        diagnostics,
    )
    wait_until(
        lambda: not DBTaskResult.objects.exclude(status="SUCCESSFUL").exists(),
        "every task to be marked successful",
        diagnostics,
    )
    results = list(DBTaskResult.objects.all())
    assert len(results) == 2 * len(files) * len(servers)
    assert {result.return_value["operation"] for result in results} == {"PUT", "DELETE"}
    assert worker.alive(), worker.output()
    assert worker.stop() == 0, worker.output()  # SIGTERM: a graceful stop
    assert PendingReplication.objects.count() == 0


@pytest.mark.real_server
def test_worker_killed_midway_leaves_rows_that_repair_completes(
    settings, media_server_factory, db_worker, media_root
):
    from django_tasks_db.models import DBTaskResult

    fast, frozen = media_server_factory("nginx"), media_server_factory("nginx")
    # A long timeout: the worker must still be waiting on the frozen host when killed.
    storage, entry = configure(
        settings, [fast, frozen], task_backend="db", task_queue="resto", timeout=30
    )
    files = {f"uploads/k{i}.txt": f"kill test {i}".encode() * 100 for i in range(4)}
    # SIGSTOP: the kernel still accepts connections on nginx's socket, nobody answers.
    os.killpg(frozen.pid, signal.SIGSTOP)
    try:
        worker = db_worker(entry)
        for name, data in files.items():
            storage.save(name, ContentFile(data))

        def stuck_on_frozen() -> bool:
            running = DBTaskResult.objects.filter(status="RUNNING")
            return any(frozen.host in task.args_kwargs["args"] for task in running)

        wait_until(stuck_on_frozen, "the worker to block on the frozen host", worker.output)
        assert worker.kill() == -signal.SIGKILL
    finally:
        os.killpg(frozen.pid, signal.SIGCONT)

    # The task being run is lost with the worker (the framework leaves it RUNNING) and
    # others never ran: the journal still names every host that may be behind.
    assert DBTaskResult.objects.filter(status="RUNNING").count() == 1
    rows = list(PendingReplication.objects.all())
    assert {(frozen.host, name) for name in files} <= {(row.host, row.name) for row in rows}
    report = repair_rows(rows)
    assert (report.failed, report.skipped, report.errors) == (0, 0, [])
    assert report.repaired == len(rows)
    assert fast.files() == files
    assert frozen.files() == files
    assert PendingReplication.objects.count() == 0


@pytest.mark.real_server
def test_db_worker_retries_a_failed_task_when_its_back_off_ends(
    settings, media_server_factory, db_worker, media_root
):
    from django_tasks_db.models import DBTaskResult

    up, down = media_server_factory("nginx"), media_server_factory("nginx")
    # No breaker: the retry, a second or two later, must reach the host, not be refused.
    storage, entry = configure(
        settings, [up, down], task_backend="db", task_queue="resto", breaker_window=0
    )
    down.stop()
    worker = db_worker(entry)
    storage.save("a.txt", ContentFile(b"retried"))

    def diagnostics() -> str:
        tasks = list(DBTaskResult.objects.values_list("status", "run_after", "args_kwargs"))
        rows = list(PendingReplication.objects.values_list("host", "attempts", "next_attempt"))
        return f"journal: {rows}\ntasks: {tasks}\n{worker.output()}"

    def retries() -> list[Any]:
        return [task for task in DBTaskResult.objects.all() if task.task.run_after is not None]

    wait_until(lambda: bool(retries()), "the failed task to enqueue its retry", diagnostics)
    (retry,) = retries()
    assert retry.args_kwargs["args"] == ["resto", down.host, "a.txt"]
    assert retry.task.run_after == back_off_of(down.host, "a.txt")
    assert up.read("a.txt") == b"retried"

    down.start()
    wait_until(
        lambda: down.read("a.txt") == b"retried" and not pending(),
        "the retry to replicate the file once the host is back",
        diagnostics,
    )
    assert worker.stop() == 0, worker.output()
