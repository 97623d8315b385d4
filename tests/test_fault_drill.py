"""The fault drill (issue 3): over a thousand uploads while the media servers misbehave.

A seeded random sequence of saves, overwrites and deletes goes through a HybridStorage
to three real nginx processes and one in-process ``TestHttpServer`` on loopback, while
faults are injected on a schedule drawn from the same seed:

* nginx #2 is stopped for a stretch of operations, then restarted on the same port;
  nginx #3 is stopped for a shorter stretch that overlaps the 5xx stretch below;
* nginx #1 is restarted between two operations (its pooled connections go stale);
* the test server answers 500 to everything for a stretch, and 502/503 to single
  requests sprinkled elsewhere;
* the test server hangs every PUT past the storage's timeout for a stretch, and the
  hung PUTs are let through afterwards: a PUT whose file was deleted in the meantime
  lands after the DELETE that cleared its journal row (a "zombie" only an audit finds);
* an ``AsyncStorage`` worker process (tests/drill_worker.py) writes through the same
  STORAGES alias while the test server is slow, and is killed with SIGKILL mid-way,
  its queued replications lost;
* at the end, a few bytes are flipped on nginx #3's disk (same size: only a checksum
  audit sees it).

Then one ``process_failed_media`` and one ``resto_sync --repair --delete-extra
--checksum`` run, and every server's tree must equal the master copy byte for byte.
On the way the drill checks that each fault really produced a failure, that every
difference between a host and the master copy is either journaled or one of the
differences the journal cannot know of (listed above), and that the audit finds
exactly those. The counts are printed at the end, with or without ``-s``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.core.management import call_command

from django_resto.models import PendingReplication
from tests.dbconfig import subprocess_databases

pytestmark = [pytest.mark.real_server, pytest.mark.django_db(transaction=True)]

#: Override with RESTO_DRILL_SEED=N to explore other sequences and schedules.
SEED = int(os.environ.get("RESTO_DRILL_SEED", "20261123"))
OPERATIONS = 1200
ALIAS = "drill"
#: The storage's per-request timeout: every PUT hung by the test server costs this much.
TIMEOUT = 0.5
#: Operations in the hang stretch (only their PUTs hang; about three quarters are PUTs).
HANG_OPERATIONS = 16
#: Probability of a single 502/503 from the test server on an operation outside its stretches.
SPRINKLE = 0.03
MAX_SIZE = 64 * 1024
#: Drill names handed to the worker; half of them are rewritten by the drill afterwards.
HANDOFF = 16
WORKER_OPERATIONS = 200
BIT_ROT = 3
REPO = Path(__file__).resolve().parent.parent


# --- observing failures -------------------------------------------------------------


class FailureLog(logging.Handler):
    """Collects the storages' "Failed to VERB NAME on HOST: ERROR" records."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.current: list[tuple[str, str, str]] = []  # (host, name, kind) of this operation
        self.kinds: Counter[tuple[str, str]] = Counter()  # (host label, kind) over the drill
        self.labels: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if not str(record.msg).startswith("Failed to ") or len(record.args or ()) != 4:
            return
        _verb, name, host, description = record.args  # type: ignore[misc]
        kind = str(description).split(":", 1)[0]
        status = re.search(r"unexpected status (\d+)", str(description))
        if status:
            kind = f"HTTP {status.group(1)}"
        self.current.append((str(host), str(name), kind))
        self.kinds[(self.labels.get(str(host), str(host)), kind)] += 1

    def take(self) -> list[tuple[str, str, str]]:
        taken, self.current = self.current, []
        return taken


# --- the schedule -------------------------------------------------------------------


@dataclass
class Schedule:
    """Which operations each fault covers: half-open ranges of operation indexes."""

    outage2: range
    force500: range
    outage3: range
    hang: range
    worker_at: int
    bounce_at: int

    @classmethod
    def draw(cls, rng: random.Random) -> Schedule:
        start2 = rng.randint(80, 200)
        outage2 = range(start2, start2 + rng.randint(100, 140))
        start500 = rng.randint(380, 430)
        force500 = range(start500, start500 + rng.randint(60, 90))
        start3 = start500 + rng.randint(30, 50)
        outage3 = range(start3, start3 + rng.randint(30, 50))
        start_hang = rng.randint(560, 600)
        hang = range(start_hang, start_hang + HANG_OPERATIONS)
        return cls(
            outage2=outage2,
            force500=force500,
            outage3=outage3,
            hang=hang,
            worker_at=rng.randint(660, 720),
            bounce_at=rng.randint(800, 880),
        )

    def test_server_faulted(self, index: int) -> bool:
        return index in self.force500 or index in self.hang


# --- trees --------------------------------------------------------------------------


def master_tree(root: str) -> dict[str, bytes]:
    """``{name: bytes}`` of every file below ``root`` (directories left out)."""
    tree = {}
    for dirpath, _dirnames, filenames in os.walk(root):
        for filename in filenames:
            path = os.path.join(dirpath, filename)
            tree[os.path.relpath(path, root).replace(os.sep, "/")] = Path(path).read_bytes()
    return tree


def differences(master: dict[str, bytes], tree: dict[str, bytes]) -> dict[str, set[str]]:
    return {
        "missing": {name for name in master if name not in tree},
        "extra": {name for name in tree if name not in master},
        "different": {name for name in master if name in tree and tree[name] != master[name]},
    }


def all_names(diff: dict[str, set[str]]) -> set[str]:
    return diff["missing"] | diff["extra"] | diff["different"]


def journal_rows() -> set[tuple[str, str]]:
    return set(PendingReplication.objects.values_list("host", "name"))


# --- the drill ----------------------------------------------------------------------


@dataclass
class Drill:
    storage: Any
    nginx: list[Any]
    test_server: Any
    failures: FailureLog
    rng: random.Random
    #: The master copy as the drill wrote it: name -> bytes (worker-touched names apart).
    model: dict[str, bytes] = field(default_factory=dict)
    #: Handed to the worker and never touched again by the drill.
    frozen: set[str] = field(default_factory=set)
    #: Handed to the worker, then rewritten by the drill's next operations.
    rewrite: list[str] = field(default_factory=list)
    created: int = 0
    ops: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    #: PUTs the test server hung: name -> bytes it holds (and writes once released).
    hung: dict[str, bytes] = field(default_factory=dict)
    zombies: set[str] = field(default_factory=set)
    unexpected: list[tuple[int, str, str, str]] = field(default_factory=list)

    @property
    def hosts(self) -> list[Any]:
        return [*self.nginx, self.test_server]

    def new_name(self) -> str:
        self.created += 1
        dirs = "/".join(f"d{self.rng.randrange(6)}" for _ in range(self.rng.randint(1, 3)))
        # Some names need percent-encoding on the wire and in the JSON listings.
        stem = f"photo {self.created} é" if self.rng.random() < 0.06 else f"f{self.created}"
        return f"uploads/{dirs}/{stem}.bin"

    def payload(self) -> bytes:
        size = 0 if self.rng.random() < 0.05 else self.rng.randint(1, MAX_SIZE)
        return self.rng.randbytes(size)

    def choose(self, index: int, schedule: Schedule) -> tuple[str, str]:
        """The next operation: (kind, name). Depends on the seed and the model only."""
        roll = self.rng.random()
        if self.rewrite:
            return "rewrite", self.rewrite.pop(0)
        hanging = index in schedule.hang
        # While PUTs hang, never PUT a name twice: the order in which two released PUTs
        # of one name land would be up to the scheduler.
        candidates = sorted(name for name in self.model if not hanging or name not in self.hung)
        last_chance = index == schedule.hang.stop - 1 and not self.zombies
        if hanging and (roll < 0.3 or last_chance):
            deletable = sorted(name for name in self.hung if name in self.model)
            if deletable:
                return "delete", self.rng.choice(deletable)
        if roll < 0.45 or len(candidates) < 40:
            return "save", self.new_name()
        if roll < 0.75:
            return "overwrite", self.rng.choice(candidates)
        return "delete", self.rng.choice(candidates)

    def run_one(self, index: int, schedule: Schedule) -> None:
        sprinkle = self.rng.random() < SPRINKLE and not schedule.test_server_faulted(index)
        status = self.rng.choice((502, 503))
        kind, name = self.choose(index, schedule)
        expected: set[str] = set()
        if index in schedule.outage2:
            expected.add(self.nginx[1].host)
        if index in schedule.outage3:
            expected.add(self.nginx[2].host)
        if index in schedule.force500:
            expected.add(self.test_server.host)
        if sprinkle:
            self.test_server.fail_next(status)
            self.faults[f"test server: single {status}"] += 1
            expected.add(self.test_server.host)
        self.failures.take()
        if kind == "delete":
            self.storage.delete(name)
            del self.model[name]
            if index in schedule.hang and name in self.hung:
                # Its PUT is still hung: it lands after this DELETE cleared its row.
                self.zombies.add(name)
        else:
            data = self.payload()
            saved = self.storage.save(name, ContentFile(data, name=name))
            assert saved == name  # allow_overwrite: a name is never changed
            self.model[name] = data
            if index in schedule.hang:
                self.hung[name] = data
                expected.add(self.test_server.host)
        self.ops[kind] += 1
        failed = {host for host, _, _ in self.failures.take()}
        # Every injected fault must have hit; anything else is noted (a timeout on a
        # loaded machine would be honest; another error would be a finding).
        assert expected <= failed, (index, kind, name, expected, failed)
        for host in sorted(failed - expected):
            self.unexpected.append((index, kind, name, host))

    def begin_faults(self, index: int, schedule: Schedule) -> None:
        nginx2, nginx3 = self.nginx[1], self.nginx[2]
        if index == schedule.outage2.start:
            nginx2.stop()
            self.faults["nginx #2 stopped"] += 1
        if index == schedule.outage2.stop:
            nginx2.restart()
        if index == schedule.outage3.start:
            nginx3.stop()
            self.faults["nginx #3 stopped"] += 1
        if index == schedule.outage3.stop:
            nginx3.restart()
        if index == schedule.force500.start:
            self.test_server.force_status(500)
            self.faults["test server: 500 stretch"] += 1
        if index == schedule.force500.stop:
            self.test_server.force_status(None)
        if index == schedule.hang.start:
            self.test_server.hang(methods="PUT")
            self.faults["test server: PUTs hung past the timeout"] += 1
        if index == schedule.hang.stop:
            self.release_hung()
        if index == schedule.bounce_at:
            self.nginx[0].restart()
            self.faults["nginx #1 restarted between operations"] += 1

    def release_hung(self) -> None:
        """Let the hung PUTs through, and wait until each has written its file."""
        self.test_server.release()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if all(self.test_server.read(n) == data for n, data in self.hung.items()):
                break
            time.sleep(0.02)
        landed = {n for n, data in self.hung.items() if self.test_server.read(n) == data}
        assert landed == set(self.hung), "the released PUTs did not all land"
        self.faults["hung PUTs (each timed out, then landed late)"] += len(self.hung)

    def bit_rot(self, rows: set[tuple[str, str]]) -> list[str]:
        """Flip one byte of a few files on nginx #3's disk (sizes unchanged)."""
        nginx3 = self.nginx[2]
        candidates = sorted(
            name
            for name, data in self.model.items()
            if data and (nginx3.host, name) not in rows and nginx3.read(name) == data
        )
        rotten = self.rng.sample(candidates, BIT_ROT)
        for name in rotten:
            data = bytearray(self.model[name])
            data[self.rng.randrange(len(data))] ^= 0x5A
            nginx3.write(name, bytes(data))
        self.faults["bytes flipped on nginx #3's disk"] += len(rotten)
        return rotten


# --- the SIGKILLed worker -----------------------------------------------------------


@dataclass
class WorkerRun:
    events: list[dict[str, Any]]
    returncode: int
    done: int
    in_flight: str | None
    pending_rows: int
    journal_key: str


def run_worker(
    drill: Drill, handoff: list[str], tmp_path: Path, media_root: str, kill_after: int
) -> WorkerRun:
    """Run the AsyncStorage worker while the test server is slow; SIGKILL it mid-way."""
    config = {
        "databases": subprocess_databases(),  # the test database, shared with the worker
        "media_root": media_root,
        "alias": ALIAS,
        "options": {
            "hosts": [server.host for server in drill.hosts],
            "fatal_exceptions": False,
            "allow_overwrite": True,
            "timeout": 10,
            "async_workers": 2,
        },
        "seed": drill.rng.randrange(2**32),
        "handoff": handoff,
        "operations": WORKER_OPERATIONS,
        "pause": 0.015,
    }
    config_path = tmp_path / "worker.json"
    config_path.write_text(json.dumps(config))
    # Replication to the test server takes 0.15 s: the worker's queue falls behind.
    drill.test_server.delay(0.15)
    events: list[dict[str, Any]] = []
    enough = threading.Event()

    def read(stream: Any) -> None:
        for line in stream:
            event = json.loads(line)
            events.append(event)
            # Killed as soon as it announces operation ``kill_after``: mid-operation,
            # between writing the master copy and journaling its intent, or just after.
            if event["event"] == "begin" and event["i"] >= kill_after:
                enough.set()
            if event["event"] == "finished":
                enough.set()

    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)
    with (tmp_path / "worker.stderr").open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.drill_worker", str(config_path)],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    reader = threading.Thread(target=read, args=(process.stdout,), daemon=True)
    reader.start()
    try:
        reached = enough.wait(60)
        process.send_signal(signal.SIGKILL)
        returncode = process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    reader.join(10)
    drill.test_server.reset_faults()
    # A reboot of the slow server: replications still waiting in its handlers are dropped.
    drill.test_server.restart()
    stderr_text = (tmp_path / "worker.stderr").read_text(errors="replace")
    assert reached, f"the worker did not get to operation {kill_after}:\n{stderr_text}"
    assert not any(e["event"] == "finished" for e in events), "the worker finished unkilled"
    assert returncode == -signal.SIGKILL, (returncode, stderr_text)
    begun = {e["i"]: e for e in events if e["event"] == "begin"}
    done = {e["i"] for e in events if e["event"] == "done"}
    in_flight = [begun[i]["name"] for i in begun if i not in done]
    assert len(in_flight) <= 1
    for i in done:
        drill.ops[f"worker {begun[i]['op']}"] += 1
    drill.faults["async worker killed with SIGKILL"] += 1
    pending = PendingReplication.objects.filter(storage=ALIAS, last_error="pending").count()
    return WorkerRun(
        events=events,
        returncode=returncode,
        done=len(done),
        in_flight=in_flight[0] if in_flight else None,
        pending_rows=pending,
        journal_key=events[0].get("journal_key", "") if events else "",
    )


# --- the test -----------------------------------------------------------------------


def run_command(name: str, *args: str) -> tuple[int, dict[str, Any], str]:
    """Run a management command with --json output; return (exit status, summary, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command(name, *args, stdout=out, stderr=err)
        code = 0
    except SystemExit as exit:
        code = int(exit.code or 0)
    return code, json.loads(out.getvalue()), err.getvalue()


@pytest.fixture
def drill_storage(settings, media_server_factory):
    nginx = [media_server_factory("nginx") for _ in range(3)]
    test_server = media_server_factory("test")
    settings.STORAGES = {
        **settings.STORAGES,
        ALIAS: {
            "BACKEND": "django_resto.storage.HybridStorage",
            "OPTIONS": {
                "hosts": [server.host for server in [*nginx, test_server]],
                "fatal_exceptions": False,
                "allow_overwrite": True,
                "timeout": TIMEOUT,
                # Each fault here must cause exactly the failures the drill expects of
                # it; the breaker adds failures on purpose (tests/test_breaker.py).
                "breaker_window": 0,
            },
        },
    }
    storages._storages.pop(ALIAS, None)
    yield storages[ALIAS], nginx, test_server
    storages[ALIAS].close()
    storages._storages.pop(ALIAS, None)


def test_fault_drill(drill_storage, media_root, tmp_path, capsys):
    started = time.monotonic()
    storage, nginx, test_server = drill_storage
    assert storage.journal_key == ALIAS
    failures = FailureLog()
    logger = logging.getLogger("django_resto")
    logger.addHandler(failures)
    try:
        report = _drill(storage, nginx, test_server, failures, media_root, tmp_path)
    finally:
        logger.removeHandler(failures)
    report["runtime"] = f"{time.monotonic() - started:.1f} s"
    with capsys.disabled():
        sys.stdout.write("\n" + format_report(report) + "\n")


def _drill(storage, nginx, test_server, failures, media_root, tmp_path) -> dict[str, Any]:
    rng = random.Random(SEED)
    schedule = Schedule.draw(rng)
    drill = Drill(storage, nginx, test_server, failures, rng)
    labels = {server.host: f"nginx #{i}" for i, server in enumerate(nginx, 1)}
    labels[test_server.host] = "test server"
    failures.labels = labels
    worker: WorkerRun | None = None
    timings: dict[str, float] = {}
    clock = time.monotonic()

    for index in range(OPERATIONS):
        drill.begin_faults(index, schedule)
        if index == schedule.worker_at:
            handoff = sorted(rng.sample(sorted(drill.model), HANDOFF))
            for name in handoff:
                del drill.model[name]
            kill_after = rng.randint(60, 90)
            begin = time.monotonic()
            worker = run_worker(drill, handoff, tmp_path, str(media_root), kill_after)
            timings["worker"] = time.monotonic() - begin
            assert worker.journal_key == ALIAS
            # The worker's intent rows outlive it: the journal knows what it left undone.
            assert worker.pending_rows > 0
            # Half the handed-off names are rewritten by the drill (its newer operation
            # supersedes the dead worker's rows); the others stay as the worker left them.
            rng.shuffle(handoff)
            drill.rewrite = handoff[: HANDOFF // 2]
            drill.frozen = set(handoff[HANDOFF // 2 :])
        drill.run_one(index, schedule)
    assert worker is not None
    timings["drill"] = time.monotonic() - clock - timings["worker"]
    # Stale keep-alive connections after nginx #1's restart are retried, not failures.
    bounce_unexpected = [
        u for u in drill.unexpected if u[3] == nginx[0].host and 0 <= u[0] - schedule.bounce_at < 3
    ]
    assert bounce_unexpected == []

    # Every fault is over; nginx #3's disk rots a little.
    test_server.reset_faults()
    assert all(server.running for server in nginx) and test_server.running
    rows_after_drill = journal_rows()
    rotten = drill.bit_rot(rows_after_drill)

    # Every difference between a host and the master copy is journaled, or is one of
    # those the journal cannot know: zombies, bit rot, the worker's interrupted save.
    master = master_tree(str(media_root))
    for name, data in drill.model.items():
        assert master.get(name) == data, name
    others = set(master) - set(drill.model)
    assert others <= drill.frozen | {n for n in others if n.startswith("worker/")}
    explained = {test_server.host: drill.zombies, nginx[2].host: set(rotten)}
    unexplained: dict[str, set[str]] = {}
    pre_repair: dict[str, dict[str, set[str]]] = {}
    for server in drill.hosts:
        diff = pre_repair[labels[server.host]] = differences(master, server.files())
        names = all_names(diff) - {n for h, n in rows_after_drill if h == server.host}
        names -= explained.get(server.host, set())
        names -= {worker.in_flight}
        if names:
            unexplained[labels[server.host]] = names
    assert unexplained == {}, "differences without a journal row"
    assert drill.zombies, "the hang stretch planted no zombie"
    assert drill.zombies <= pre_repair["test server"]["extra"]
    rows_by_host = Counter(labels[h] for h, _ in rows_after_drill)
    for host in (nginx[1].host, nginx[2].host, test_server.host):
        assert rows_by_host[labels[host]] > 0, labels[host]
    pending_left = PendingReplication.objects.filter(last_error="pending").count()
    assert pending_left > 0, "the dead worker's intent rows were all superseded"

    # 1. process_failed_media, once: the journal is drained.
    clock = time.monotonic()
    code, repaired, err = run_command("process_failed_media", "--json")
    timings["process_failed_media"] = time.monotonic() - clock
    assert (code, repaired["failed"], repaired["remaining"]) == (0, 0, 0), err
    assert repaired["repaired"] == len(rows_after_drill)
    assert PendingReplication.objects.count() == 0

    # What only an audit can find: exactly the differences the journal could not know.
    pre_sync: dict[str, dict[str, set[str]]] = {}
    for server in drill.hosts:
        pre_sync[server.host] = differences(master, server.files())
    expected_extra = {test_server.host: drill.zombies}
    expected_content = {nginx[2].host: set(rotten)}
    for server in drill.hosts:
        diff = pre_sync[server.host]
        leftover = all_names(diff) - {worker.in_flight}
        want = expected_extra.get(server.host, set()) | expected_content.get(server.host, set())
        assert leftover == want, labels[server.host]

    # 2. resto_sync --repair, once; it must find what we just listed, and fix it.
    clock = time.monotonic()
    code, synced, err = run_command(
        "resto_sync", "--storage", ALIAS, "--repair", "--delete-extra", "--checksum", "--json"
    )
    timings["resto_sync"] = time.monotonic() - clock
    assert code == 0, (synced, err)
    assert synced["ok"] is True
    (storage_report,) = synced["storages"]
    found: dict[str, dict[str, set[str]]] = {}
    for host_report in storage_report["hosts"]:
        host = host_report["host"]
        found[host] = {
            "missing": set(host_report["missing"]),
            "extra": set(host_report["extra"]),
            "different": set(host_report["mismatched"]) | set(host_report["checksum_mismatched"]),
        }
        assert found[host] == pre_sync[host], labels[host]
        fixed = set(host_report["repaired"]) | set(host_report["deleted"])
        assert fixed == all_names(pre_sync[host]), labels[host]
        assert host_report["counts"]["remaining"] == 0
    assert set(found) == {server.host for server in drill.hosts}

    # 3. Byte for byte.
    master = master_tree(str(media_root))
    compared = 0
    for server in drill.hosts:
        tree = server.files()
        assert differences(master, tree) == {"missing": set(), "extra": set(), "different": set()}
        assert tree == master, labels[server.host]
        compared += len(tree)
    assert PendingReplication.objects.count() == 0

    return {
        "seed": SEED,
        "schedule": schedule,
        "operations": drill.ops,
        "faults": drill.faults,
        "failures": failures.kinds,
        "unexpected": drill.unexpected,
        "worker": worker,
        "rows": rows_by_host,
        "rows_total": len(rows_after_drill),
        "pending_left": pending_left,
        "zombies": len(drill.zombies),
        "pre_repair": pre_repair,
        "repaired": repaired,
        "pre_sync": {labels[h]: d for h, d in pre_sync.items()},
        "synced": storage_report,
        "labels": labels,
        "files": len(master),
        "bytes": sum(len(data) for data in master.values()),
        "compared": compared,
        "timings": timings,
    }


def format_report(report: dict[str, Any]) -> str:
    def counts(counter: Counter[str]) -> str:
        return ", ".join(f"{key}: {value}" for key, value in sorted(counter.items()))

    ops: Counter[str] = report["operations"]
    worker: WorkerRun = report["worker"]
    labels = report["labels"]
    lines = [
        f"=== fault drill (seed {report['seed']}) ===",
        f"operations: {sum(ops.values())} ({counts(ops)})",
        f"faults injected: {sum(report['faults'].values())}",
    ]
    lines += [f"  {kind}: {count}" for kind, count in sorted(report["faults"].items())]
    s = report["schedule"]
    lines.append(
        f"  schedule: nginx #2 down ops {s.outage2.start}-{s.outage2.stop - 1}, "
        f"500s {s.force500.start}-{s.force500.stop - 1}, "
        f"nginx #3 down {s.outage3.start}-{s.outage3.stop - 1}, "
        f"hang {s.hang.start}-{s.hang.stop - 1}, worker at {s.worker_at}, "
        f"nginx #1 restart at {s.bounce_at}"
    )
    lines.append(
        f"  worker: {worker.done} operations done before SIGKILL "
        f"(interrupted: {worker.in_flight or 'none'}), "
        f"{worker.pending_rows} intent rows left at its death"
    )
    failures = Counter({f"{host} {kind}": n for (host, kind), n in report["failures"].items()})
    lines.append(f"failed replications observed: {sum(failures.values())} ({counts(failures)})")
    lines.append(f"  not injected by the drill: {len(report['unexpected'])}")
    lines.append(
        f"journal rows after the drill: {report['rows_total']} ({counts(report['rows'])}); "
        f"{report['pending_left']} of them the dead worker's intents"
    )
    repaired = report["repaired"]
    verbs = Counter(action["action"] for action in repaired["actions"])
    lines.append(
        f"process_failed_media: {repaired['repaired']} rows repaired ({counts(verbs)}), "
        f"{repaired['failed']} failed, {repaired['remaining']} remaining"
    )
    synced = report["synced"]
    lines.append(
        f"resto_sync --repair --delete-extra --checksum: {synced['reference_files']} "
        f"master files, per host:"
    )
    for host in synced["hosts"]:
        c = host["counts"]
        lines.append(
            f"  {labels[host['host']]} [{host['method']}]: {c['missing']} missing, "
            f"{c['extra']} extra, {c['mismatched']} size / {c['checksum_mismatched']} content "
            f"mismatched -> {c['repaired']} uploaded, {c['deleted']} deleted, "
            f"{c['remaining']} remaining"
        )
    lines.append(
        f"files compared byte for byte: {report['compared']} "
        f"({report['files']} files x {len(labels)} servers, "
        f"{report['bytes'] * len(labels) / 1e6:.1f} MB), all equal to the master copy"
    )
    phases = ", ".join(f"{phase} {seconds:.1f} s" for phase, seconds in report["timings"].items())
    lines.append(f"runtime: {report['runtime']} ({phases})")
    return "\n".join(lines)
