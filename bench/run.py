"""Benchmark django_resto against the floor and django-resto 1.3 on three real nginx.

Usage (from the repository root, with the development virtualenv)::

    .venv/bin/python bench/run.py            # or: .venv/bin/python -m bench

The run starts three nginx WebDAV servers on 127.0.0.1 (``tests.servers.NginxDav``),
makes sure django-resto 1.3 is installed in its own virtualenv (``.venv-bench-legacy``:
both packages are imported as ``django_resto``, so they cannot share one), then runs
every workload in a fresh interpreter (``bench/worker.py``) for three clients — this
package, the floor (``bench/floor.py``: Django's own local save plus the same PUTs from
the cheapest client there is) and django-resto 1.3 — rotating which goes first, for a
few rounds. The journal drain and the audit come from ``bench/drain.py`` and
``bench/audit.py``, run once each at the end. It prints a Markdown report with the
ratios of issue 12 checked against its targets, and writes it to ``bench/results.md``.

Nothing is hard-coded but the workloads and the targets: every figure is measured in
the run that prints it. See bench/README.md for what is measured and why.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as ``python bench/run.py``
    sys.path.insert(0, str(REPO))

from tests.servers import NginxDav, free_port  # noqa: E402

BENCH = REPO / "bench"
WORKER = BENCH / "worker.py"
LEGACY_VENV = REPO / ".venv-bench-legacy"
LEGACY_REQUIREMENT = "django-resto==1.3"
LEGACY_VERSION = "1.3"

KIB = 1024
MIB = 1024 * KIB
MEDIUM = 1 * MIB
SMALL = 4 * KIB
BIG = 256 * MIB

BIG = 1024 * MIB
LARGE = 64 * MIB

NEW = "new"
FLOOR = "floor"
LEGACY = "legacy"
LABELS = {NEW: "this package", FLOOR: "the floor", LEGACY: "django-resto 1.3"}
CHILD_TIMEOUT = 300  # seconds, per workload process

#: The hanging-host workload: the read timeout both packages are given, and how many
#: saves it makes (issue 12: "20 x 4 KiB saves").
HANG_TIMEOUT = 0.5
HANG_SAVES = 20
#: Added by bench/delay_proxy.py before every answer of every server (issue 12: 5 ms).
DELAY_MS = 5.0
THREADS = 16


@dataclass(frozen=True)
class Plan:
    rounds: int
    medium_count: int
    medium_warmup: int
    small_count: int
    small_warmup: int
    big_size: int
    #: Saves per round of the 64 MiB workload, and of each delayed 4 KiB workload.
    large_count: int = 3
    delay_count: int = 200
    #: The threaded workload's saves (shared by its threads), per round.
    thread_count: int = 2000
    #: Rows for bench/drain.py and files for bench/audit.py (0: not run).
    drain_rows: int = 10_000
    audit_files: int = 300_000


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- the legacy virtualenv ---------------------------------------------------------------


def _probe(python: Path) -> dict[str, Any] | None:
    code = (
        "import json, importlib.metadata as m, django_resto, django, sys;"
        "print(json.dumps({'resto': m.version('django-resto'), 'django': django.get_version(),"
        "'path': django_resto.__file__, 'python': sys.version.split()[0]}))"
    )
    done = subprocess.run(
        [str(python), "-I", "-c", code], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        return None
    return json.loads(done.stdout)


def ensure_legacy_venv(venv: Path, django_version: str) -> tuple[Path, dict[str, Any]]:
    """Create (once) a virtualenv with django-resto 1.3 and the same Django as ours.

    The same Django on both sides means the comparison measures the two storage
    packages, not two Djangos: FileSystemStorage does the local half of a Hybrid save
    in both. django-resto 1.3 only uses Storage APIs that Django still has.
    """
    python = venv / "bin" / "python"
    wanted_django = f"Django=={django_version}"
    info = _probe(python) if python.exists() else None
    if info and info["resto"] == LEGACY_VERSION and info["django"] == django_version:
        return python, info
    if not python.exists():
        log(f"creating {venv} for {LEGACY_REQUIREMENT}")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    log(f"installing {LEGACY_REQUIREMENT} and {wanted_django} into {venv}")
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            LEGACY_REQUIREMENT,
            wanted_django,
        ],
        check=True,
    )
    info = _probe(python)
    if not info or info["resto"] != LEGACY_VERSION:
        raise SystemExit(f"could not install {LEGACY_REQUIREMENT} into {venv}: {info}")
    return python, info


# -- the run -----------------------------------------------------------------------------


def default_tmp_dir() -> str:
    """A tmpfs when there is one with room: see the README (the media servers' disks)."""
    shm = Path("/dev/shm")
    try:
        usage = shutil.disk_usage(shm)
        if os.access(shm, os.W_OK) and usage.free > 4 * 1024 * MIB:
            return str(shm)
    except OSError:
        pass
    return tempfile.gettempdir()


def _process_cpu(pid: int) -> float:
    """User + system CPU seconds of one process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_cpu(servers: list[NginxDav]) -> float | None:
    """CPU seconds used so far by the nginx processes (masters and workers) of ``servers``.

    The media servers share the client's cores here, so their CPU bounds what any
    client can reach; None where /proc cannot tell.
    """
    total = 0.0
    try:
        for server in servers:
            master = server.pid
            if master is None:
                return None
            children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
            for pid in [master, *map(int, children)]:
                total += _process_cpu(pid)
    except (OSError, ValueError, IndexError):
        return None
    return total


class Bench:
    def __init__(self, plan: Plan, tmp: Path, servers: list[NginxDav], legacy_python: Path):
        self.plan = plan
        self.tmp = tmp
        self.servers = servers
        self.by_host = {server.host: server for server in servers}
        self.pythons = {
            NEW: Path(sys.executable),
            FLOOR: Path(sys.executable),
            LEGACY: legacy_python,
        }
        #: Where a spec's host really is, when it is a proxy or a hanging listener.
        self.behind: dict[str, NginxDav] = {}
        self.results: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.runs = 0
        #: Run this package with the journal on (SQLite), as issue 12's figures are.
        self.journal = True
        self._hanging: list[socket.socket] = []
        self._proxy: subprocess.Popen[str] | None = None
        self._proxied: list[str] = []

    def env(self, package: str) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("PYTHONPATH", "PYTHONHOME", "DJANGO_SETTINGS_MODULE")
        }
        if package in (NEW, FLOOR):
            env["PYTHONPATH"] = str(REPO)
        return env

    def run(self, key: str, package: str, spec: dict[str, Any]) -> dict[str, Any]:
        """Run one workload in a fresh interpreter, check what arrived, clean up."""
        self.runs += 1
        work_dir = self.tmp / "work" / f"{self.runs:03d}-{key}-{package}"
        spec = {
            **spec,
            "work_dir": str(work_dir),
            "prefix": f"r{self.runs}",
            "floor": package == FLOOR,
        }
        if package == NEW and self.journal and not spec.get("no_journal"):
            # This package as it is deployed: django_resto installed, so every save also
            # takes the name's lock, draws its sequence number and clears the journal.
            db_dir = Path(tempfile.mkdtemp(prefix="django_resto_bench_db_"))
            spec.update(journal=True, db_dir=str(db_dir))
        started = time.perf_counter()
        servers_before = server_cpu(self.servers)
        try:
            done = subprocess.run(
                [str(self.pythons[package]), str(WORKER), json.dumps(spec)],
                capture_output=True,
                text=True,
                env=self.env(package),
                cwd=str(self.tmp),
                timeout=CHILD_TIMEOUT,
                check=False,
            )
            if done.returncode != 0:
                raise SystemExit(
                    f"workload {key} ({LABELS[package]}) failed:\n{done.stderr[-4000:]}"
                )
            result = json.loads(done.stdout)
            result["stderr"] = done.stderr[-2000:]
            self.check_package(package, result)
            self.check_files(spec, result)
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)
            if spec.get("db_dir"):
                shutil.rmtree(spec["db_dir"], ignore_errors=True)
            self.clean_servers()
        result["process_seconds"] = time.perf_counter() - started
        servers_after = server_cpu(self.servers)
        if servers_before is not None and servers_after is not None:
            # Per operation, warm-up included: the servers cannot tell them apart. The
            # big-file workloads add one 4 KiB warm-up save, negligible next to them.
            operations = spec.get("count", 1) + spec.get("warmup", 0)
            result["server_cpu"] = (servers_after - servers_before) / operations
        self.results.setdefault((key, package), []).append(result)
        if "duration" in result:
            figure = f"{result['duration']:.3f} s"
        else:
            figure = (
                f"median {statistics.median(result['durations']) * 1000:.2f} ms, "
                f"{result['count'] / result['wall']:.0f}/s"
            )
        log(f"  {key:<16} {LABELS[package]:<17} {figure}")
        return result

    def check_package(self, package: str, result: dict[str, Any]) -> None:
        if package == FLOOR or "django_resto_path" not in result:
            return  # the floor uses no django_resto
        path = Path(result["django_resto_path"]).resolve()
        if package == NEW:
            ok = path == (REPO / "django_resto").resolve()
        else:
            ok = result["django_resto_version"] == LEGACY_VERSION and path.is_relative_to(
                self.pythons[LEGACY].parent.parent.resolve()
            )
        if not ok:
            raise SystemExit(f"{LABELS[package]} run imported the wrong django_resto: {path}")

    def check_files(self, spec: dict[str, Any], result: dict[str, Any]) -> None:
        """Every file the workload saved is on every host it targeted, whole."""
        hosts = spec.get("check_hosts") or spec.get("hosts") or []
        for host in hosts:
            server = self.by_host.get(host) or self.behind[host]
            for name in result["names"]:
                path = server.path(name)
                size = path.stat().st_size if path.exists() else None
                if size != spec["size"]:
                    raise SystemExit(
                        f"{name} on {host}: expected {spec['size']} bytes, found {size}"
                    )

    def clean_servers(self) -> None:
        for server in self.servers:
            for child in server.root.iterdir():
                if child.is_dir():
                    shutil.rmtree(child)
                else:
                    child.unlink()

    def hosts(self, count: int) -> list[str]:
        return [server.host for server in self.servers[:count]]

    # -- workloads -----------------------------------------------------------------------

    def jobs(self, index: int) -> list[tuple[str, str, dict[str, Any]]]:
        """Round ``index``'s workloads, in order: (key, package, spec).

        The three clients take turns at going first (the order rotates every round),
        so drift within a round favours none of them.
        """
        plan = self.plan
        clients = [NEW, FLOOR, LEGACY]
        order = clients[index % 3 :] + clients[: index % 3]
        jobs: list[tuple[str, str, dict[str, Any]]] = []

        def add(key: str, packages: tuple[str, ...], spec: dict[str, Any]) -> None:
            jobs.extend((key, package, spec) for package in order if package in packages)

        every = (NEW, FLOOR, LEGACY)
        small = {"size": SMALL, "count": plan.small_count, "warmup": plan.small_warmup}
        medium = {"size": MEDIUM, "count": plan.medium_count, "warmup": plan.medium_warmup}
        hybrid = {"workload": "saves", "backend": "hybrid", "hosts": self.hosts(3)}
        distributed = {**hybrid, "backend": "distributed"}

        add("dist_1m", every, {**distributed, **medium})
        add("dist_4k", every, {**distributed, **small})
        add("hybrid_4k", every, {**hybrid, **small})
        # What the journal, the name's lock and its sequence number cost (the floor has
        # none of them): the same saves of this package without django_resto installed.
        add("dist_4k_nojournal", (NEW,), {**distributed, **small, "no_journal": True})
        add("hybrid_4k_nojournal", (NEW,), {**hybrid, **small, "no_journal": True})
        add("hybrid_1m", every, {**hybrid, **medium})
        large = {"size": LARGE, "count": plan.large_count, "warmup": 1, "upload": "temporary"}
        add("hybrid_64m", every, {**hybrid, **large})
        threaded = {**hybrid, "size": SMALL, "count": plan.thread_count, "warmup": 50}
        add("threads_1", every, threaded)
        add(f"threads_{THREADS}", every, {**threaded, "threads": THREADS})

        # One host that accepts and never answers; the same saves on healthy hosts are
        # "a normal save" in the target. No warm-up: the first save meets the hang.
        hang = {
            **hybrid,
            "size": SMALL,
            "count": HANG_SAVES,
            "warmup": 0,
            "settings": {"RESTO_TIMEOUT": HANG_TIMEOUT, "RESTO_FATAL_EXCEPTIONS": False},
        }
        add("hang_ref", (NEW,), hang)
        for package in order:
            if package in (NEW, LEGACY):  # the floor has no failure handling to measure
                hosts = [*self.hosts(2), self.hanging_host()]
                jobs.append(("hang", package, {**hang, "hosts": hosts, "check_hosts": hosts[:2]}))

        proxied = self.proxied_hosts()
        delayed = {**hybrid, "size": SMALL, "count": plan.delay_count, "warmup": 10}
        delayed_medium = {**hybrid, **medium}
        for count in (1, 3):
            add(f"delay_4k_{count}", every, {**delayed, "hosts": proxied[:count]})
            add(f"delay_1m_{count}", every, {**delayed_medium, "hosts": proxied[:count]})

        big = {"workload": "big", "backend": "hybrid", "hosts": self.hosts(3)}
        add("big", every, {**big, "size": plan.big_size})
        return jobs

    def hanging_host(self) -> str:
        """A port that completes TCP handshakes (the kernel's backlog) and never answers.

        One per run, so that no run finds connections another left in the backlog;
        they are closed at the end of the round.
        """
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(256)
        self._hanging.append(listener)
        return f"127.0.0.1:{listener.getsockname()[1]}"

    def reset_hanging(self) -> None:
        for listener in self._hanging:
            listener.close()
        self._hanging.clear()

    def proxied_hosts(self) -> list[str]:
        """The three servers behind bench/delay_proxy.py (started once, on first use)."""
        if self._proxy is None:
            ports = [free_port() for _ in self.servers]
            pairs = [
                f"{port}={server.port}" for port, server in zip(ports, self.servers, strict=True)
            ]
            self._proxy = subprocess.Popen(
                [
                    sys.executable,
                    str(BENCH / "delay_proxy.py"),
                    "--delay-ms",
                    str(DELAY_MS),
                    *pairs,
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert self._proxy.stdout is not None
            if self._proxy.stdout.readline().strip() != "ready":
                raise SystemExit("bench/delay_proxy.py did not start")
            self._proxied = [f"127.0.0.1:{port}" for port in ports]
            for host, server in zip(self._proxied, self.servers, strict=True):
                self.behind[host] = server
        return self._proxied

    def close(self) -> None:
        self.reset_hanging()
        if self._proxy is not None:
            self._proxy.terminate()
            self._proxy.wait()
            self._proxy = None

    def round(self, index: int) -> None:
        try:
            for key, package, spec in self.jobs(index):
                self.run(key, package, spec)
        finally:
            self.reset_hanging()

    def profile(self, key: str) -> str:
        """Run one workload of this package under cProfile; return the worker's profile."""
        keys = []
        for job_key, package, spec in self.jobs(0):
            keys.append(job_key)
            if job_key == key and package == NEW:
                return self.run(key, package, {**spec, "profile": True})["profile"]
        raise SystemExit(f"no workload {key!r}; choose one of {', '.join(dict.fromkeys(keys))}")

    # -- aggregation ---------------------------------------------------------------------

    def get(self, key: str, package: str) -> list[dict[str, Any]]:
        return self.results.get((key, package), [])

    def median_duration(self, key: str, package: str) -> float | None:
        """Median of every measured operation, pooled over the rounds."""
        samples = [d for result in self.get(key, package) for d in result.get("durations", [])]
        return statistics.median(samples) if samples else None

    def rate(self, key: str, package: str) -> float | None:
        """Operations per second: the median over rounds of count / wall time."""
        rates = [result["count"] / result["wall"] for result in self.get(key, package)]
        return statistics.median(rates) if rates else None

    def per_round(self, key: str, package: str, kind: str) -> list[float]:
        """One figure per round: median save time (``ms``), saves per second (``rate``),
        wall time of the whole workload (``wall``), client CPU per operation (``cpu``),
        or the big file's save time (``s``)."""
        results = self.get(key, package)
        if kind == "ms":
            return [statistics.median(r["durations"]) for r in results]
        if kind == "rate":
            return [r["count"] / r["wall"] for r in results]
        if kind == "wall":
            return [r["wall"] for r in results]
        if kind == "cpu":
            return [r["cpu"] / r.get("count", 1) for r in results]
        return [r["duration"] for r in results]

    def median(self, key: str, package: str, kind: str) -> float | None:
        values = self.per_round(key, package, kind)
        return statistics.median(values) if values else None

    def paired(self, a: tuple[str, str], b: tuple[str, str], kind: str) -> float | None:
        """Median over rounds of a's figure / b's figure in the same round.

        Each round runs the workloads being compared back to back, so a ratio taken
        within a round is robust to the machine getting busier or quieter between rounds.
        """
        ratios = [
            x / y
            for x, y in zip(self.per_round(*a, kind), self.per_round(*b, kind), strict=False)
            if y
        ]
        return statistics.median(ratios) if ratios else None

    def rss(self, key: str, package: str) -> int | None:
        """The worst peak RSS growth over the rounds."""
        values = [r["rss_growth"] for r in self.get(key, package) if "rss_growth" in r]
        return max(values) if values else None

    def server_cpu_per_op(self, key: str, package: str) -> float | None:
        values = [r["server_cpu"] for r in self.get(key, package) if "server_cpu" in r]
        return statistics.median(values) if values else None


# -- the scripts run once: the drain and the audit ------------------------------------------


def run_script(script: str, args: list[str]) -> dict[str, Any]:
    """Run bench/drain.py or bench/audit.py; return the figures it writes as JSON."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = [sys.executable, str(BENCH / script), *args, "--json", out.name]
        log(" ".join(["running", script, *args]))
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        return json.loads(Path(out.name).read_text())


# -- the report --------------------------------------------------------------------------


def fmt_ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1000:.3f} ms"


def fmt_s(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds:.3f} s"


def fmt_mib(size: float | None) -> str:
    return "—" if size is None else f"{size / MIB:.1f} MiB"


def fmt_ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def machine() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    nginx = subprocess.run(
        [shutil.which("nginx") or "/usr/sbin/nginx", "-v"],
        capture_output=True,
        text=True,
        check=False,
    ).stderr.strip()
    return {
        "cpu": f"{os.cpu_count()} cores, {cpu}",
        "kernel": platform.release(),
        "nginx": nginx.removeprefix("nginx version: "),
    }


@dataclass
class Target:
    """One row of issue 12's table: the figure, its limit, and what 1.3 and the floor did."""

    workload: str
    measure: str
    ours: str
    floor: str
    legacy: str
    value: float | None
    limit: float
    at_most: bool
    limit_text: str
    #: How ``value`` is shown: a ratio ("x") or in the unit of the limit.
    unit: str = "x"

    @property
    def ok(self) -> bool | None:
        if self.value is None:
            return None
        return self.value <= self.limit if self.at_most else self.value >= self.limit


def targets(b: Bench, scripts: dict[str, dict[str, Any]]) -> list[Target]:
    rows: list[Target] = []

    def cpu(key: str, package: str) -> str:
        return fmt_ms(b.median(key, package, "cpu"))

    def ratio(key: str, package: str, versus: str, kind: str = "cpu") -> float | None:
        return b.paired((key, package), (key, versus), kind)

    # 1. A host that never answers.
    ref = b.median("hang_ref", NEW, "wall")
    hang = b.median("hang", NEW, "wall")
    deadline = HANG_TIMEOUT + SMALL / (256 * 1024)  # settings: RESTO_MIN_TRANSFER_RATE
    limit = deadline + ref if ref is not None else None
    rows.append(
        Target(
            f"one host accepts, never answers; {HANG_SAVES} x 4 KiB Hybrid saves, "
            f"timeout {HANG_TIMEOUT} s, fatal_exceptions off",
            "wall time of the 20 saves",
            fmt_s(hang),
            "—",
            fmt_s(b.median("hang", LEGACY, "wall")),
            (hang / limit) if hang is not None and limit else None,
            1.0,
            True,
            f"≤ 1 request deadline ({deadline * 1000:.0f} ms) + 20 normal saves "
            f"({fmt_s(ref)}) = {fmt_s(limit)}",
        )
    )
    rows.append(
        Target(
            "DistributedStorage 1 MiB in-memory upload, 3 hosts",
            "client CPU per save, this / 1.3",
            cpu("dist_1m", NEW),
            cpu("dist_1m", FLOOR),
            cpu("dist_1m", LEGACY),
            ratio("dist_1m", NEW, LEGACY),
            0.5,
            True,
            "≤ 0.5x",
        )
    )
    rows.append(
        Target(
            "DistributedStorage 4 KiB, 3 hosts",
            "client CPU per save, this / floor",
            cpu("dist_4k", NEW),
            cpu("dist_4k", FLOOR),
            cpu("dist_4k", LEGACY),
            ratio("dist_4k", NEW, FLOOR),
            3.0,
            True,
            "≤ 3x",
        )
    )
    for key, label in (("dist_4k", "Distributed"), ("hybrid_4k", "Hybrid")):
        with_journal = b.median(key, NEW, "cpu")
        without = b.median(f"{key}_nojournal", NEW, "cpu")
        cost = None if with_journal is None or without is None else with_journal - without
        rows.append(
            Target(
                f"what the journal, the name's lock and its sequence number cost: {label} 4 KiB",
                "client CPU per save, journal on / off (this package)",
                f"{fmt_ms(with_journal)} / {fmt_ms(without)}",
                "—",
                "—",
                None,
                0.0,
                True,
                f"no target: {fmt_ms(cost)} per save; this / floor without them: "
                f"{fmt_ratio(b.paired((f'{key}_nojournal', NEW), (key, FLOOR), 'cpu'))}",
            )
        )
    for key, label, limit_x in (
        ("hybrid_4k", "4 KiB", 1.5),
        ("hybrid_1m", "1 MiB", 1.3),
        ("hybrid_64m", "64 MiB (a temporary upload)", 1.1),
    ):
        rows.append(
            Target(
                f"HybridStorage {label}, 3 hosts",
                "client CPU per save, this / floor",
                cpu(key, NEW),
                cpu(key, FLOOR),
                cpu(key, LEGACY),
                ratio(key, NEW, FLOOR),
                limit_x,
                True,
                f"≤ {limit_x}x",
            )
        )
    many = f"threads_{THREADS}"
    legacy_threads = b.paired((many, LEGACY), ("threads_1", LEGACY), "rate")
    rows.append(
        Target(
            f"{THREADS} threads in one process saving 4 KiB to 3 hosts (Hybrid)",
            f"saves/s with {THREADS} threads / with 1",
            f"{b.median(many, NEW, 'rate') or 0:.0f} vs "
            f"{b.median('threads_1', NEW, 'rate') or 0:.0f} saves/s",
            fmt_ratio(b.paired((many, FLOOR), ("threads_1", FLOOR), "rate")),
            f"{fmt_ratio(legacy_threads)}",
            b.paired((many, NEW), ("threads_1", NEW), "rate"),
            1.0,
            False,
            "≥ 1.0x",
        )
    )
    for size, label, limit_x in (("4k", "4 KiB", 1.05), ("1m", "1 MiB", 1.20)):
        one, three = f"delay_{size}_1", f"delay_{size}_3"

        def fan(package: str, one: str = one, three: str = three) -> float | None:
            return b.paired((three, package), (one, package), "ms")

        rows.append(
            Target(
                f"{DELAY_MS:.0f} ms before every answer of every server, Hybrid {label}",
                "save time, 3 hosts / 1 host",
                f"{fmt_ratio(fan(NEW))} ({fmt_ms(b.median(three, NEW, 'ms'))})",
                f"{fmt_ratio(fan(FLOOR))} ({fmt_ms(b.median(three, FLOOR, 'ms'))})",
                f"{fmt_ratio(fan(LEGACY))} ({fmt_ms(b.median(three, LEGACY, 'ms'))})",
                fan(NEW),
                limit_x,
                True,
                f"≤ {limit_x}x",
            )
        )
    drain = scripts.get("drain")
    if drain:
        rows.append(
            Target(
                f"process_failed_media, {drain['rows']:,} rows over 3 hosts (SQLite)",
                "rows per second",
                f"{drain['rows_per_s']:.0f} rows/s ({drain['cpu_us_per_row']:.0f} µs CPU/row)",
                f"{drain['floor_rows_per_s']:.0f} rows/s" if drain.get("floor_rows_per_s") else "—",
                "— (no journal)",
                drain["rows_per_s"],
                3000.0,
                False,
                "≥ 3,000 rows/s",
                "rows/s",
            )
        )
    audit = scripts.get("audit")
    if audit:
        for measure, value, limit_v, text in (
            ("wall time", audit["seconds"], 10.0, "≤ 10 s"),
            ("peak RSS", audit["peak_rss_mib"], 200.0, "≤ 200 MiB"),
        ):
            shown = f"{value:.2f} s" if measure == "wall time" else f"{value:.0f} MiB"
            rows.append(
                Target(
                    f"resto_sync audit, {audit['files']:,} files x 3 nginx",
                    measure,
                    shown,
                    "—",
                    "— (no audit)",
                    value,
                    limit_v,
                    True,
                    text,
                    "s" if measure == "wall time" else "MiB",
                )
            )
    size_big = f"{b.plan.big_size // MIB} MiB"
    rows.append(
        Target(
            f"{size_big} Hybrid save (a temporary upload), 3 hosts",
            "wall time, this / floor",
            fmt_s(b.median("big", NEW, "s")),
            fmt_s(b.median("big", FLOOR, "s")),
            fmt_s(b.median("big", LEGACY, "s")),
            b.paired(("big", NEW), ("big", FLOOR), "s"),
            1.15,
            True,
            "≤ 1.15x",
        )
    )
    worst = max(
        ((b.rss(key, NEW) or 0, key) for key in {k for k, p in b.results if p == NEW}),
        default=(0, ""),
    )
    rows.append(
        Target(
            f"peak RSS growth, any workload of this package (worst: {worst[1]})",
            "MiB",
            fmt_mib(worst[0]),
            "—",
            "—",
            worst[0] / MIB,
            32.0,
            True,
            "≤ 32 MiB",
            "MiB",
        )
    )
    rows.append(
        Target(
            "HybridStorage 4 KiB saves one after another, 3 hosts (kept from issue 3; "
            "this package without the journal, which 1.3 does not have, as issue 3 measured)",
            "saves per second, this / 1.3",
            f"{b.median('hybrid_4k_nojournal', NEW, 'rate') or 0:.0f}/s",
            f"{b.median('hybrid_4k', FLOOR, 'rate') or 0:.0f}/s",
            f"{b.median('hybrid_4k', LEGACY, 'rate') or 0:.0f}/s",
            b.paired(("hybrid_4k_nojournal", NEW), ("hybrid_4k", LEGACY), "rate"),
            5.0,
            False,
            "≥ 5x",
        )
    )
    return rows


def report(
    b: Bench, context: dict[str, Any], scripts: dict[str, dict[str, Any]]
) -> tuple[str, bool]:
    rows = targets(b, scripts)
    lines = [
        "# django_resto benchmark",
        "",
        f"Command: `{context['command']}` — run {context['date']}, "
        f"{context['rounds']} rounds, {context['elapsed']:.0f} s; "
        f"load average {context['load'][0]:.2f} before, {context['load'][1]:.2f} after.",
        "",
        f"Machine: {context['machine']['cpu']}, Linux {context['machine']['kernel']}; "
        f"three {context['machine']['nginx']} WebDAV servers (1 worker each) on 127.0.0.1, "
        f"files on {context['tmp_fs']}. "
        f"This package and the floor: Python {context['new']['python']}, Django "
        f"{context['new']['django']}. django-resto {context['legacy']['resto']}: Python "
        f"{context['legacy']['python']}, Django {context['legacy']['django']}, from "
        f"`{context['legacy_venv']}`.",
        "",
        "## Issue 12's targets",
        "",
        "| workload | measured | this package | the floor | django-resto 1.3 | ratio | target "
        "| result |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for row in rows:
        verdict = "n/a" if row.ok is None else ("PASS" if row.ok else "**FAIL**")
        if row.value is None:
            shown = "—"
        elif row.unit == "x":
            shown = f"{row.value:.2f}x"
        else:
            shown = f"{row.value:.2f} {row.unit}"
        lines.append(
            f"| {row.workload} | {row.measure} | {row.ours} | {row.floor} | {row.legacy} | "
            f"{shown} | {row.limit_text} | {verdict} |"
        )
    lines += ["", "## Every workload", ""]
    lines += [
        "| workload | client | median save | saves/s | client CPU per save | "
        "media servers' CPU per save | peak RSS growth |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for key in dict.fromkeys(k for k, _ in b.results):
        for package in (NEW, FLOOR, LEGACY):
            if not b.get(key, package):
                continue
            if key == "big":
                median, rate = fmt_s(b.median(key, package, "s")), "—"
            else:
                median = fmt_ms(b.median_duration(key, package))
                rate = f"{b.median(key, package, 'rate') or 0:.0f}"
            lines.append(
                f"| {key} | {LABELS[package]} | {median} | {rate} | "
                f"{fmt_ms(b.median(key, package, 'cpu'))} | "
                f"{fmt_ms(b.server_cpu_per_op(key, package))} | {fmt_mib(b.rss(key, package))} |"
            )
    lines += [
        "",
        "Ratios are medians of per-round ratios: each round runs the compared workloads "
        "back to back, and the three clients take turns at going first. Client CPU is "
        "`time.process_time()` of the worker (every thread, user + system) over the timed "
        "saves, per save. The floor is bench/floor.py: Django's own local save, then the "
        "same PUTs on one kept-alive socket per host, sent to every host before any answer "
        "is read, bodies by sendfile(2); it has no journal, lock, retry, deadline or "
        "quorum. The delay is bench/delay_proxy.py in front of each nginx (splice(2) for "
        "the request bodies, answers held back by the delay). Media servers' CPU per save "
        "includes warm-up saves.",
        "",
    ]
    all_ok = all(row.ok is not False for row in rows)
    return "\n".join(lines), all_ok


@contextmanager
def media_servers(tmp: Path, count: int) -> Iterator[list[NginxDav]]:
    with ExitStack() as stack:
        servers = []
        for _ in range(count):
            server = NginxDav(tmp, base_path="/media/")
            stack.enter_context(server)  # starts it; stops it on exit
            servers.append(server)
        yield servers


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of every workload")
    parser.add_argument(
        "--big-mib", type=int, default=BIG // MIB, help="size of the big file, in MiB"
    )
    parser.add_argument("--drain-rows", type=int, default=10_000, help="0: no drain run")
    parser.add_argument("--audit-files", type=int, default=300_000, help="0: no audit run")
    parser.add_argument("--legacy-venv", type=Path, default=LEGACY_VENV)
    parser.add_argument(
        "--tmp-dir", default=None, help="where servers and workloads keep files (a tmpfs)"
    )
    parser.add_argument("--output", type=Path, default=BENCH / "results.md")
    parser.add_argument(
        "--profile",
        metavar="WORKLOAD",
        help="instead of the benchmark, profile one workload of this package (cProfile, "
        "main thread) and print the hottest functions",
    )
    parser.add_argument(
        "--check", action="store_true", help="exit with status 1 if a target is missed"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.rounds <= 10:
        parser.error("--rounds must be between 1 and 10")
    if not 1 <= args.big_mib <= 2048:
        parser.error("--big-mib must be between 1 and 2048")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    if load_before > 0.5:
        log(f"the machine is busy (load average {load_before:.2f}): expect noisy figures")
    plan = Plan(
        rounds=args.rounds,
        medium_count=40,
        medium_warmup=5,
        small_count=1000,
        small_warmup=20,
        big_size=args.big_mib * MIB,
        drain_rows=args.drain_rows,
        audit_files=args.audit_files,
    )
    import django

    django_version = django.get_version()
    legacy_python, legacy_info = ensure_legacy_venv(args.legacy_venv, django_version)
    tmp_base = args.tmp_dir or default_tmp_dir()
    with tempfile.TemporaryDirectory(prefix="django_resto_bench_", dir=tmp_base) as tmp_name:
        tmp = Path(tmp_name)
        with media_servers(tmp, 3) as servers:
            log("media servers: " + ", ".join(server.host for server in servers))
            bench = Bench(plan, tmp, servers, legacy_python)
            try:
                if args.profile:
                    print(bench.profile(args.profile))
                    return 0
                for index in range(plan.rounds):
                    log(f"round {index + 1}/{plan.rounds}")
                    bench.round(index)
            finally:
                bench.close()
    scripts: dict[str, dict[str, Any]] = {}
    if plan.drain_rows:
        scripts["drain"] = run_script(
            "drain.py", ["--rows", str(plan.drain_rows), "--rounds", "3", "--floor"]
        )
    if plan.audit_files:
        scripts["audit"] = run_script("audit.py", ["--files", str(plan.audit_files), "--runs", "3"])
    fs = subprocess.run(
        ["df", "--output=fstype", tmp_base], capture_output=True, text=True, check=False
    ).stdout.split()
    command = "python bench/run.py" + (" " + " ".join(argv or sys.argv[1:])).rstrip()
    context = {
        "command": command.strip(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "rounds": plan.rounds,
        "elapsed": time.perf_counter() - started,
        "load": (load_before, os.getloadavg()[0]),
        "machine": machine(),
        "tmp_fs": f"{tmp_base} ({fs[-1] if fs else 'unknown'})",
        "new": {"python": platform.python_version(), "django": django_version},
        "legacy": legacy_info,
        "legacy_venv": os.path.relpath(args.legacy_venv, REPO),
    }
    text, all_ok = report(bench, context, scripts)
    print(text)
    args.output.write_text(text)
    log(f"written to {args.output}")
    return 0 if all_ok or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
