"""Benchmark django_resto against django-resto 1.3 on three real nginx DAV servers.

Usage (from the repository root, with the development virtualenv)::

    .venv/bin/python bench/run.py            # or: .venv/bin/python -m bench

The run starts three nginx WebDAV servers on 127.0.0.1 (``tests.servers.NginxDav``),
makes sure django-resto 1.3 is installed in its own virtualenv (``.venv-bench-legacy``:
both packages are imported as ``django_resto``, so they cannot share one), then runs
every workload in a fresh interpreter (``bench/worker.py``), alternating the two
packages, for a few rounds. It prints a Markdown report, with the ratios checked
against the project's targets, and writes it to ``bench/results.md``.

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

from tests.servers import NginxDav  # noqa: E402

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

NEW = "new"
LEGACY = "legacy"
LABELS = {NEW: "this package", LEGACY: "django-resto 1.3"}
CHILD_TIMEOUT = 180  # seconds, per workload process

# The targets of the issue, as (limit, direction).
TARGET_FANOUT = 1.15  # 3-host / 1-host, 1 MiB save: at most
TARGET_FLOOR = 2.0  # 3-host 1 MiB save / raw PUT: at most
TARGET_SMALL = 5.0  # small saves per second, this / 1.3: at least
TARGET_RSS = 32 * MIB  # peak RSS growth, any workload of this package: at most
TARGET_BIG = 0.5  # 256 MiB save time, this / 1.3: at most
RSS_KEYS = {
    "medium_1": "1 MiB to 1 host",
    "medium_3": "1 MiB to 3 hosts",
    "small": "4 KiB saves",
    "small_journal": "4 KiB saves with the journal",
    "big_hybrid": "big file, Hybrid",
    "big_distributed": "big file, Distributed",
}


@dataclass(frozen=True)
class Plan:
    rounds: int
    medium_count: int
    medium_warmup: int
    small_count: int
    small_warmup: int
    big_size: int


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
        self.pythons = {NEW: Path(sys.executable), LEGACY: legacy_python}
        self.results: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.runs = 0

    def env(self, package: str) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("PYTHONPATH", "PYTHONHOME", "DJANGO_SETTINGS_MODULE")
        }
        if package == NEW:
            env["PYTHONPATH"] = str(REPO)
        return env

    def run(self, key: str, package: str, spec: dict[str, Any]) -> dict[str, Any]:
        """Run one workload in a fresh interpreter, check what arrived, clean up."""
        self.runs += 1
        work_dir = self.tmp / "work" / f"{self.runs:03d}-{key}-{package}"
        spec = {**spec, "work_dir": str(work_dir), "prefix": f"r{self.runs}"}
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
            self.check_package(package, result)
            self.check_files(spec, result)
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)
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
        if "django_resto_path" not in result:
            return  # the raw PUT floor uses no storage
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
        hosts = spec.get("hosts") or [url.split("/")[2] for url in spec["urls"]]
        for host in hosts:
            server = self.by_host[host]
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

    def urls(self, count: int) -> list[str]:
        return [f"{server.url}/media/" for server in self.servers[:count]]

    # -- workloads -----------------------------------------------------------------------

    def jobs(self, index: int) -> list[tuple[str, str, dict[str, Any]]]:
        """Round ``index``'s workloads, in order: (key, package, spec)."""
        plan = self.plan
        # Alternate which package goes first, so drift within a round favours neither.
        order = [NEW, LEGACY] if index % 2 == 0 else [LEGACY, NEW]
        medium = {"size": MEDIUM, "count": plan.medium_count, "warmup": plan.medium_warmup}
        small = {"size": SMALL, "count": plan.small_count, "warmup": plan.small_warmup}
        hybrid = {"workload": "saves", "backend": "hybrid"}
        jobs: list[tuple[str, str, dict[str, Any]]] = [
            ("raw_1", NEW, {"workload": "raw_put", "urls": self.urls(1), **medium}),
            ("raw_3", NEW, {"workload": "raw_put", "urls": self.urls(3), **medium}),
        ]
        for count in (1, 3):
            jobs += [
                (f"medium_{count}", package, {**hybrid, "hosts": self.hosts(count), **medium})
                for package in order
            ]
        jobs += [
            ("small", package, {**hybrid, "hosts": self.hosts(3), **small}) for package in order
        ]
        jobs.append(
            ("small_journal", NEW, {**hybrid, "hosts": self.hosts(3), "journal": True, **small})
        )
        for backend in ("hybrid", "distributed"):
            big = {"workload": "big", "backend": backend, "hosts": self.hosts(3)}
            jobs += [
                (f"big_{backend}", package, {**big, "size": plan.big_size}) for package in order
            ]
        return jobs

    def round(self, index: int) -> None:
        for key, package, spec in self.jobs(index):
            self.run(key, package, spec)

    def profile(self, key: str) -> str:
        """Run one workload of this package under cProfile; return the worker's profile."""
        for job_key, package, spec in self.jobs(0):
            if job_key == key and package == NEW:
                return self.run(key, package, {**spec, "profile": True})["profile"]
        raise SystemExit(f"no workload {key!r}; choose one of {', '.join(RSS_KEYS)}")

    # -- aggregation ---------------------------------------------------------------------

    def get(self, key: str, package: str) -> list[dict[str, Any]]:
        return self.results.get((key, package), [])

    def median_duration(self, key: str, package: str) -> float | None:
        """Median of every measured operation, pooled over the rounds."""
        samples = [d for result in self.get(key, package) for d in result["durations"]]
        return statistics.median(samples) if samples else None

    def rate(self, key: str, package: str) -> float | None:
        """Operations per second: the median over rounds of count / wall time."""
        rates = [result["count"] / result["wall"] for result in self.get(key, package)]
        return statistics.median(rates) if rates else None

    def big_time(self, key: str, package: str) -> float | None:
        times = [result["duration"] for result in self.get(key, package)]
        return statistics.median(times) if times else None

    def per_round(self, key: str, package: str, kind: str) -> list[float]:
        """One figure per round: median save time, saves per second, or big-file time."""
        results = self.get(key, package)
        if kind == "ms":
            return [statistics.median(r["durations"]) for r in results]
        if kind == "rate":
            return [r["count"] / r["wall"] for r in results]
        return [r["duration"] for r in results]

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

    def cpu_per_op(self, key: str, package: str) -> float | None:
        results = self.get(key, package)
        if not results:
            return None
        return statistics.median(r["cpu"] / r.get("count", 1) for r in results)

    def server_cpu_per_op(self, key: str, package: str) -> float | None:
        values = [r["server_cpu"] for r in self.get(key, package) if "server_cpu" in r]
        return statistics.median(values) if values else None

    def floor(self, key: str, package: str, versus: tuple[str, str], kind: str) -> float | None:
        """The lowest ratio ``key`` / ``versus`` the servers' own CPU allows on this machine.

        Even with a client that costs nothing, ``key`` cannot take less wall time than
        its media servers' CPU time spread over every core; divided by what ``versus``
        measured in the same round, that is the best ratio any client can reach here.
        """
        cores = os.cpu_count() or 1
        ratios = []
        for mine, theirs in zip(self.get(key, package), self.get(*versus), strict=False):
            if "server_cpu" not in mine:
                continue
            if kind == "rate":
                measured = theirs["count"] / theirs["wall"]  # ops per second
                best = cores / mine["server_cpu"] if mine["server_cpu"] else None
                if best:
                    ratios.append(best / measured)
                continue
            measured = (
                statistics.median(theirs["durations"]) if kind == "ms" else theirs["duration"]
            )
            if measured:
                ratios.append(mine["server_cpu"] / cores / measured)
        return statistics.median(ratios) if ratios else None

    def rss(self, key: str, package: str) -> int | None:
        """The worst peak RSS growth over the rounds."""
        values = [r["rss_growth"] for r in self.get(key, package) if "rss_growth" in r]
        return max(values) if values else None


# -- the report --------------------------------------------------------------------------


def fmt_ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1000:.2f} ms"


def fmt_s(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds:.2f} s"


def fmt_rate(rate: float | None) -> str:
    return "—" if rate is None else f"{rate:.0f} saves/s"


def fmt_mib(size: int | None) -> str:
    return "—" if size is None else f"{size / MIB:.1f} MiB"


def fmt_ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def pair(values: tuple[str, str]) -> str:
    return f"{values[0]} / {values[1]}"


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


def report(bench: Bench, context: dict[str, Any]) -> tuple[str, bool]:
    b = bench
    size_big = f"{b.plan.big_size // MIB} MiB"

    def spread(key: str, package: str, kind: str) -> str:
        values = b.per_round(key, package, kind)
        if len(values) < 2:
            return ""
        scale, digits = {"ms": (1000, 2), "rate": (1, 0), "s": (1, 2)}[kind]
        low, high = min(values) * scale, max(values) * scale
        return f" ({low:.{digits}f} to {high:.{digits}f})"

    def row(label: str, key: str, kind: str, legacy: bool = True) -> str:
        packages = (NEW, LEGACY) if legacy else (NEW,)
        if kind == "ms":
            values = {p: b.median_duration(key, p) for p in packages}
            shown = {p: fmt_ms(v) for p, v in values.items()}
            cpu = {p: fmt_ms(b.cpu_per_op(key, p)) for p in packages}
            servers = {p: fmt_ms(b.server_cpu_per_op(key, p)) for p in packages}
        elif kind == "rate":
            values = {p: b.rate(key, p) for p in packages}
            shown = {p: fmt_rate(v) for p, v in values.items()}
            cpu = {p: fmt_ms(b.cpu_per_op(key, p)) for p in packages}
            servers = {p: fmt_ms(b.server_cpu_per_op(key, p)) for p in packages}
        else:
            values = {p: b.big_time(key, p) for p in packages}
            shown = {p: fmt_s(v) for p, v in values.items()}
            cpu = {p: fmt_s(b.cpu_per_op(key, p)) for p in packages}
            servers = {p: fmt_s(b.server_cpu_per_op(key, p)) for p in packages}
        shown = {p: shown[p] + spread(key, p, kind) for p in packages}
        rss = {p: fmt_mib(b.rss(key, p)) for p in packages}
        if legacy:
            return (
                f"| {label} | {shown[NEW]} | {shown[LEGACY]} | "
                f"{fmt_ratio(b.paired((key, NEW), (key, LEGACY), kind))} | "
                f"{pair((cpu[NEW], cpu[LEGACY]))} | {pair((servers[NEW], servers[LEGACY]))} | "
                f"{pair((rss[NEW], rss[LEGACY]))} |"
            )
        return f"| {label} | {shown[NEW]} | — | — | {cpu[NEW]} | {servers[NEW]} | {rss[NEW]} |"

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
        f"This package: Python {context['new']['python']}, Django {context['new']['django']}. "
        f"django-resto {context['legacy']['resto']}: Python {context['legacy']['python']}, "
        f"Django {context['legacy']['django']}, from `{context['legacy_venv']}`.",
        "",
        "## Measurements",
        "",
        "| Workload | this package | django-resto 1.3 | this / 1.3 | "
        "client CPU per op (this / 1.3) | media servers' CPU per op (this / 1.3) | "
        "peak RSS growth (this / 1.3) |",
        "|---|---:|---:|---:|---:|---:|---:|",
        row("Raw keep-alive PUT, 1 MiB, 1 host (floor; median)", "raw_1", "ms", False),
        row(
            "Raw keep-alive PUTs, 1 MiB, 3 hosts in parallel threads (median)",
            "raw_3",
            "ms",
            False,
        ),
        row("HybridStorage save, 1 MiB, 1 host (median)", "medium_1", "ms"),
        row("HybridStorage save, 1 MiB, 3 hosts (median)", "medium_3", "ms"),
        row("HybridStorage saves, 4 KiB, 3 hosts, one after another", "small", "rate"),
        row(
            "— the same with django_resto installed (journal on, SQLite)",
            "small_journal",
            "rate",
            False,
        ),
        row(f"HybridStorage save, {size_big}, 3 hosts", "big_hybrid", "s"),
        row(f"DistributedStorage save, {size_big}, 3 hosts", "big_distributed", "s"),
        "",
    ]

    targets: list[tuple[str, str, str, str, str, bool | None]] = []

    def target(
        label: str,
        value: float | None,
        limit: float,
        at_most: bool,
        text: str,
        raw: float | None = None,
        best: float | None = None,
    ) -> None:
        raw_text = "—" if raw is None else fmt_ratio(raw)
        best_text = "—" if best is None else fmt_ratio(best)
        if value is None:
            targets.append((label, "—", text, raw_text, best_text, None))
            return
        ok = value <= limit if at_most else value >= limit
        shown = fmt_mib(int(value)) if "MiB" in text else fmt_ratio(value)
        if not ok and best is not None and (best > limit if at_most else best < limit):
            best_text += " (out of reach)"
        targets.append((label, shown, text, raw_text, best_text, ok))

    # What the machine allows a fan-out: three raw PUTs at once against one.
    raw_fanout = b.paired(("raw_3", NEW), ("raw_1", NEW), "ms")
    target(
        "1 MiB save, 3 hosts / 1 host",
        b.paired(("medium_3", NEW), ("medium_1", NEW), "ms"),
        TARGET_FANOUT,
        True,
        "≤ 1.15x",
        raw_fanout,
        b.floor("medium_3", NEW, ("medium_1", NEW), "ms"),
    )
    target(
        "1 MiB save to 3 hosts / raw PUT to 1 host",
        b.paired(("medium_3", NEW), ("raw_1", NEW), "ms"),
        TARGET_FLOOR,
        True,
        "≤ 2x",
        raw_fanout,
        b.floor("medium_3", NEW, ("raw_1", NEW), "ms"),
    )
    target(
        "4 KiB saves per second, this / 1.3",
        b.paired(("small", NEW), ("small", LEGACY), "rate"),
        TARGET_SMALL,
        False,
        "≥ 5x",
        best=b.floor("small", NEW, ("small", LEGACY), "rate"),
    )
    rss_all = [
        (b.rss(key, NEW), name) for key, name in RSS_KEYS.items() if b.rss(key, NEW) is not None
    ]
    worst = max(rss_all) if rss_all else (None, "")
    target(
        f"Peak RSS growth, any workload of this package (worst: {worst[1]})",
        worst[0],
        TARGET_RSS,
        True,
        "≤ 32 MiB",
    )
    for backend, name in (("hybrid", "Hybrid"), ("distributed", "Distributed")):
        key = f"big_{backend}"
        target(
            f"{size_big} {name} save time, this / 1.3",
            b.paired((key, NEW), (key, LEGACY), "s"),
            TARGET_BIG,
            True,
            "≤ 0.5x",
            best=b.floor(key, NEW, (key, LEGACY), "s"),
        )
    lines += [
        "## Targets",
        "",
        "| Target | measured | limit | raw PUTs, 3 hosts in parallel / 1 host | "
        "best any client can reach here | result |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for label, shown, text, raw_text, best_text, ok in targets:
        verdict = "n/a" if ok is None else ("PASS" if ok else "**FAIL**")
        lines.append(f"| {label} | {shown} | {text} | {raw_text} | {best_text} | {verdict} |")
    lines += [
        "",
        "Ratios are medians of per-round ratios: each round runs the compared workloads "
        "back to back, alternating which package goes first. "
        "The raw-PUT column is what bare PUTs reach: three at once against one. "
        "The best-reachable column is a bound from the media servers' own CPU: the three "
        "nginx run on this machine's cores, so a workload cannot take less wall time than "
        "its servers' CPU time (measured from /proc over the same workload) divided by "
        "the number of cores, even with a client that costs nothing; for a rate, the "
        'bound is the cores divided by the servers\' CPU per save. "out of reach" marks '
        "a target this machine cannot meet whatever the client does. "
        "In parentheses: the lowest to the highest round. "
        "Medians of 1 MiB saves pool every measured save of every round "
        f"({b.plan.medium_count} per round after {b.plan.medium_warmup} warm-up saves); "
        f"4 KiB rates are the median over rounds of {b.plan.small_count} saves / wall time; "
        f"{size_big} times are the median over rounds; peak RSS growth is the worst round. "
        "Media servers' CPU per operation includes warm-up operations. "
        "Client CPU is user + system time of the whole process (every thread) per operation.",
        "",
    ]
    all_ok = all(ok is not False for *_, ok in targets)
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
    parser.add_argument("--legacy-venv", type=Path, default=LEGACY_VENV)
    parser.add_argument(
        "--tmp-dir", default=None, help="where servers and workloads keep files (a tmpfs)"
    )
    parser.add_argument("--output", type=Path, default=BENCH / "results.md")
    parser.add_argument(
        "--profile",
        metavar="WORKLOAD",
        choices=list(RSS_KEYS),
        help="instead of the benchmark, profile one workload of this package (cProfile, "
        f"main thread) and print the hottest functions: {', '.join(RSS_KEYS)}",
    )
    parser.add_argument(
        "--check", action="store_true", help="exit with status 1 if a target is missed"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.rounds <= 10:
        parser.error("--rounds must be between 1 and 10")
    if not 1 <= args.big_mib <= 1024:
        parser.error("--big-mib must be between 1 and 1024")
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
            if args.profile:
                print(bench.profile(args.profile))
                return 0
            for index in range(plan.rounds):
                log(f"round {index + 1}/{plan.rounds}")
                bench.round(index)
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
    text, all_ok = report(bench, context)
    print(text)
    args.output.write_text(text)
    log(f"written to {args.output}")
    return 0 if all_ok or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
