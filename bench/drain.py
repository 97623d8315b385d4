"""How fast ``process_failed_media`` drains a large journal: rows per second.

Usage (from the repository root, with the development virtualenv)::

    .venv/bin/python bench/drain.py [--rows N] [--rounds N] [--compare LABEL=PATH] [--check]

A host that was down for an hour comes back with thousands of journal rows; how soon
it is in line again is how fast the drain goes through them. The run starts three
nginx WebDAV servers on 127.0.0.1 (``tests.servers.NginxDav``, through bench/run.py's
helpers), then, for a few rounds, in a fresh interpreter with a fresh SQLite journal
(a file, WAL, ``synchronous=NORMAL``, as the test settings have it), writes the master
copies, inserts ``--rows`` journal rows spread over the three hosts (a PUT missed by
each), and times one ``manage.py process_failed_media`` from start to exit. After each
run the journal must be empty and every host must hold every file.

``--compare LABEL=PATH`` times another checkout of the package too (a directory holding
``django_resto/``, such as ``git worktree add /tmp/wt-old HEAD``), under the same
servers, in alternating order; its interpreter is this one, with PATH first on
``PYTHONPATH``. The report gives rows per second, client CPU per row and the database
statements per row by kind (counted with an execute wrapper on every connection, in the
timed run: a counter costs about a microsecond a statement). ``--check`` exits 1 when
this package drains fewer than 3,000 rows per second (the target of issue 12).

The same script is the worker: ``bench/drain.py --worker CONFIG.json``.
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
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
NEW = "this tree"
#: bench/floor.py's client: the same PUTs, one after another, on kept-alive sockets.
FLOOR = "the floor"
STORAGE_ALIAS = "bench"
SIZE = 1024
#: Rows per second this package must reach (issue 12), on SQLite, 3 nginx on loopback.
TARGET = 3000.0
CHILD_TIMEOUT = 600  # seconds, per worker process


def log(message: str) -> None:
    print(f"[drain {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# == the worker: one checkout, one fresh journal, one fresh interpreter ==================


def _configure(config: dict[str, Any]) -> None:
    import django
    from django.conf import settings

    settings.configure(
        SECRET_KEY="django_resto drain benchmark",
        DEBUG=False,
        USE_TZ=True,
        INSTALLED_APPS=["django_resto"],
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": config["database"],
                "OPTIONS": {
                    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL",
                    "timeout": 30,
                },
            }
        },
        MEDIA_ROOT=config["media_root"],
        MEDIA_URL="/media/",
        STORAGES={
            "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
            "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
            STORAGE_ALIAS: {
                "BACKEND": "django_resto.storage.HybridStorage",
                # Generous: a PUT that timed out on the shared machine would stay in
                # the journal, and the run would fail its check instead of being slow.
                "OPTIONS": {"hosts": list(config["hosts"]), "timeout": 30},
            },
        },
        LOGGING_CONFIG=None,
    )
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)


def _statement_kind(sql: str) -> str:
    text = sql.lstrip().upper()
    if "DJANGO_RESTO_SEQUENCE" in text or "NEXTVAL" in text or "ADVISORY" in text:
        return "lock number"
    if text.startswith("SELECT 1 FROM"):
        return "row check"
    for verb in ("SELECT", "DELETE", "UPDATE", "INSERT"):
        if text.startswith(verb):
            return verb.lower()
    return "other"


class _Counter:
    """Counts every statement of every connection by kind (an execute wrapper)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        kind = _statement_kind(sql)
        self.counts[kind] = self.counts.get(kind, 0) + 1
        return execute(sql, params, many, context)

    def install(self) -> None:
        from django.db import connection
        from django.db.backends.signals import connection_created

        # Repairs run one thread per host, each with its own connection.
        connection_created.connect(self._on_connection, weak=False)
        connection.execute_wrappers.append(self)

    def _on_connection(self, sender: Any, connection: Any, **kwargs: Any) -> None:
        if self not in connection.execute_wrappers:
            connection.execute_wrappers.append(self)


def _write_files(config: dict[str, Any]) -> tuple[list[str], list[str], Path]:
    hosts = list(config["hosts"])
    rows = int(config["rows"])
    names = [f"d/{index // 100:03d}/{index:06d}.bin" for index in range(-(-rows // len(hosts)))]
    root = Path(config["media_root"])
    data = bytes(i % 251 for i in range(SIZE))
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return hosts, names, root


def _print_result(
    rows: int,
    files: int,
    wall: float,
    cpu: float,
    load: float,
    statements: dict[str, int],
    where: str,
    sqlite: str,
) -> None:
    """The worker's figures, as the parent reads them (one JSON object on stdout)."""
    import django

    result = {
        "rows": rows,
        "files": files,
        "wall": wall,
        "rate": rows / wall,
        "cpu_per_row": cpu / rows,
        "statements": statements,
        "load": load,
        "django_resto": where,
        "django": django.get_version(),
        "sqlite": sqlite,
        "python": platform.python_version(),
    }
    print(json.dumps(result))


def run_floor(config: dict[str, Any]) -> int:
    """The same repairs' PUTs from the cheapest client: what the journal and the lock cost.

    Each row's file goes to its host by sendfile(2) on that host's one kept-alive
    socket, one row after another, with no journal to read or clear and no lock.
    """
    sys.path.insert(0, str(BENCH))
    import floor

    load = os.getloadavg()[0]
    hosts, names, root = _write_files(config)
    rows = int(config["rows"])
    clients = {host: floor.FloorClient([host]) for host in hosts}
    cpu = time.process_time()
    wall = time.perf_counter()
    for index in range(rows):
        name = names[index // len(hosts)]
        clients[hosts[index % len(hosts)]].put(name, path=str(root / name))
    wall = time.perf_counter() - wall
    cpu = time.process_time() - cpu
    for client in clients.values():
        client.close()
    _print_result(rows, len(names), wall, cpu, load, {}, FLOOR, "")
    return 0


def run_worker(config_path: str) -> int:
    config = json.loads(Path(config_path).read_text())
    if config.get("floor"):
        return run_floor(config)
    load = os.getloadavg()[0]
    _configure(config)
    import io

    from django.core.management import call_command

    import django_resto
    from django_resto.models import PendingReplication
    from django_resto.ordering import next_seq

    hosts, names, _ = _write_files(config)
    rows = int(config["rows"])
    # One number older than every repair's: the repairs' own numbers settle the rows.
    seq = next_seq()
    PendingReplication.objects.bulk_create(
        [
            PendingReplication(
                storage=STORAGE_ALIAS,
                host=hosts[index % len(hosts)],
                name=names[index // len(hosts)],
                operation="PUT",
                seq=seq,
                attempts=1,
                last_error="the host was down",
            )
            for index in range(rows)
        ],
        batch_size=500,
    )
    counter = _Counter()
    counter.install()
    out, err = io.StringIO(), io.StringIO()
    cpu = time.process_time()
    wall = time.perf_counter()
    try:
        call_command("process_failed_media", stdout=out, stderr=err)
        status = 0
    except SystemExit as exit:
        status = int(exit.code or 0)
    wall = time.perf_counter() - wall
    cpu = time.process_time() - cpu
    left = PendingReplication.objects.count()
    if status or left:
        raise SystemExit(f"{left} row(s) left (status {status}): {err.getvalue()[-2000:]}")
    import sqlite3

    where = str(Path(django_resto.__file__).resolve().parent)
    _print_result(rows, len(names), wall, cpu, load, counter.counts, where, sqlite3.sqlite_version)
    return 0


# == the parent: servers, rounds, report =================================================


def _side_path(side: str, compared: dict[str, Path]) -> Path:
    return REPO if side in (NEW, FLOOR) else compared[side]


def run_one(
    side: str, path: Path, round_index: int, rows: int, servers: list[Any], tmp: Path, db_dir: Path
) -> dict[str, Any]:
    label = f"{round_index:02d}-{side.replace(' ', '-')}"
    work = Path(tempfile.mkdtemp(prefix=f"drain-{label}-", dir=tmp))
    database = Path(tempfile.mkdtemp(prefix=f"drain-{label}-", dir=db_dir))
    try:
        (work / "master").mkdir()
        config = {
            "database": str(database / "db.sqlite3"),
            "media_root": str(work / "master"),
            "hosts": [server.host for server in servers],
            "rows": rows,
            "floor": side == FLOOR,
        }
        config_path = work / "config.json"
        config_path.write_text(json.dumps(config))
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("PYTHONPATH", "PYTHONHOME", "DJANGO_SETTINGS_MODULE")
        }
        env["PYTHONPATH"] = str(path)
        done = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--worker", str(config_path)],
            capture_output=True,
            text=True,
            env=env,
            cwd=str(work),
            timeout=CHILD_TIMEOUT,
            check=False,
        )
        if done.returncode != 0:
            raise SystemExit(f"worker {label} failed:\n{done.stderr[-4000:]}")
        result = json.loads(done.stdout)
        if side != FLOOR and Path(result["django_resto"]) != (path / "django_resto").resolve():
            raise SystemExit(f"worker {label} imported {result['django_resto']}, not {path}")
        for server in servers:
            held = sum(len(files) for _, _, files in os.walk(server.root / "d"))
            expected = len(range(servers.index(server), rows, len(servers)))
            if held != expected:
                raise SystemExit(
                    f"worker {label}: {server.host} holds {held} files, not {expected}"
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(database, ignore_errors=True)
        for server in servers:
            shutil.rmtree(server.root / "d", ignore_errors=True)
    log(
        f"  round {round_index} {side:<12} {result['rate']:6.0f} rows/s, "
        f"{result['cpu_per_row'] * 1e6:.0f} µs client CPU/row, load {result['load']:.2f}"
    )
    return result


def _per_row(runs: list[dict[str, Any]], kind: str) -> float:
    return statistics.median(r["statements"].get(kind, 0) / r["rows"] for r in runs)


def report(results: dict[str, list[dict[str, Any]]], context: dict[str, Any]) -> tuple[str, bool]:
    lines = [
        "# Drain benchmark: `process_failed_media` over a large journal",
        "",
        f"Command: `{context['command']}` — run {context['date']}, {context['rounds']} rounds "
        f"of {context['rows']} rows per side, {context['elapsed']:.0f} s; load average "
        f"{context['load'][0]:.2f} before, {context['load'][1]:.2f} after.",
        "",
        f"Machine: {context['cpu']}, Linux {platform.release()}, Python "
        f"{platform.python_version()}, Django {context['django']}, SQLite {context['sqlite']} "
        f"(a file on {context['db_fs']}, WAL, synchronous=NORMAL); three nginx WebDAV servers "
        "(1 worker each) on 127.0.0.1; master copies and media on "
        f"{context['tmp_fs']}. Each row is one {SIZE}-byte file missed by one host; the timed "
        "span is one `call_command('process_failed_media')`, reading, repairing and deleting "
        "every row.",
        "",
        "| checkout | rows/s (median) | range | client CPU µs/row | statements/row by kind |",
        "|---|---:|---:|---:|---|",
    ]
    medians = {}
    for side, runs in results.items():
        rates = [r["rate"] for r in runs]
        medians[side] = statistics.median(rates)
        kinds = sorted({k for r in runs for k in r["statements"]})
        per_row = ", ".join(f"{kind} {_per_row(runs, kind):.3f}" for kind in kinds)
        cpu = statistics.median(r["cpu_per_row"] for r in runs) * 1e6
        where = "bench/floor.py" if side == FLOOR else runs[0]["django_resto"]
        lines.append(
            f"| {side} ({where}) | {medians[side]:.0f} | "
            f"{min(rates):.0f} to {max(rates):.0f} | {cpu:.0f} | {per_row} |"
        )
    ok = medians.get(NEW, 0.0) >= TARGET
    lines += [
        "",
        f"Target: this tree drains at least {TARGET:.0f} rows/s: "
        f"{medians.get(NEW, 0.0):.0f} rows/s, {'PASS' if ok else '**FAIL**'}.",
        "",
    ]
    return "\n".join(lines), ok


def _fs_type(path: Path) -> str:
    out = subprocess.run(
        ["df", "--output=fstype", str(path)], capture_output=True, text=True, check=False
    ).stdout.split()
    return out[-1] if out else "unknown"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/drain.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", metavar="CONFIG", help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, default=10_000, help="journal rows (10,000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per checkout (3)")
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="LABEL=PATH",
        help="also time the django_resto of this checkout (repeatable)",
    )
    parser.add_argument("--tmp-dir", type=Path, default=None, help="media files (a tmpfs)")
    parser.add_argument("--db-dir", type=Path, default=None, help="journal databases (a disk)")
    parser.add_argument("--output", type=Path, default=BENCH / "drain-results.md")
    parser.add_argument(
        "--floor", action="store_true", help="also time the same PUTs from bench/floor.py"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--check", action="store_true", help=f"exit 1 below {TARGET:.0f} rows/s")
    args = parser.parse_args(argv)
    if args.worker is None:
        if not 1 <= args.rounds <= 10:
            parser.error("--rounds must be between 1 and 10")
        if args.rows < 3:
            parser.error("--rows must be at least 3")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        return run_worker(args.worker)
    if str(REPO) not in sys.path:  # run as ``python bench/drain.py``
        sys.path.insert(0, str(REPO))
    from bench.run import default_tmp_dir, machine, media_servers

    compared: dict[str, Path] = {}
    for item in args.compare:
        label, _, path = item.partition("=")
        if not label or not path or not (Path(path) / "django_resto").is_dir():
            raise SystemExit(f"--compare {item!r}: want LABEL=PATH, PATH holding django_resto/")
        compared[label] = Path(path).resolve()
    sides = [NEW, *compared, *([FLOOR] if args.floor else [])]
    tmp = Path(args.tmp_dir or default_tmp_dir())
    db_dir = Path(args.db_dir or tempfile.gettempdir())
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    results: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    run_dir = Path(tempfile.mkdtemp(prefix="drain-servers-", dir=tmp))
    try:
        with media_servers(run_dir, 3) as servers:
            for index in range(args.rounds):
                # Alternate the order, so a machine getting busier or quieter favours no side.
                order = sides if index % 2 == 0 else sides[::-1]
                for side in order:
                    path = _side_path(side, compared)
                    results[side].append(
                        run_one(side, path, index, args.rows, servers, run_dir, db_dir)
                    )
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    first = results[NEW][0]
    context = {
        "command": " ".join(["python bench/drain.py", *(argv or sys.argv[1:])]),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "rounds": args.rounds,
        "rows": args.rows,
        "elapsed": time.perf_counter() - started,
        "load": (load_before, os.getloadavg()[0]),
        "cpu": machine()["cpu"],
        "django": first["django"],
        "sqlite": first["sqlite"],
        "db_fs": _fs_type(db_dir),
        "tmp_fs": _fs_type(tmp),
    }
    text, ok = report(results, context)
    print(text)
    args.output.write_text(text)
    if args.json is not None:
        floor_runs = results.get(FLOOR)
        args.json.write_text(
            json.dumps(
                {
                    "rows": args.rows,
                    "rows_per_s": statistics.median(r["rate"] for r in results[NEW]),
                    "cpu_us_per_row": statistics.median(r["cpu_per_row"] for r in results[NEW])
                    * 1e6,
                    "floor_rows_per_s": statistics.median(r["rate"] for r in floor_runs)
                    if floor_runs
                    else None,
                }
            )
        )
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
