"""Benchmark of ``manage.py resto_sync``: an audit of N files on 3 real nginx hosts.

Targets: the audit of 10,000 files x 3 nginx hosts on loopback takes at most 5 s
(issue 3); of 300,000 files, at most 10 s and 200 MiB peak RSS of the resto_sync
process (issue 12). The files are laid out as uploads usually are
(``uploads/YYYY/MM/DD/``, a hundred files per directory: 3,000 directories for
300,000 files); the command runs as an
operator would run it, in a fresh process, so the figures include Python's and
Django's start-up. The peak RSS is the child's own (``wait4``'s rusage), so the
migrate run and earlier runs do not count.

The four trees (master copy and three document roots) live on tmpfs (/dev/shm)
and are hard links of 1,000 files of 1,000 to 1,999 bytes (sizes Python cannot
share, as real ones are not: small ints are cached): 1.2 million names take
seconds, not minutes, to create. They are kept in /dev/shm/resto-bench-audit-trees
and moved into each run's nginx roots (a rename), so a second benchmark reuses them;
``--fresh`` rebuilds them, ``--drop-trees`` deletes them afterwards.

    .venv/bin/python bench/audit.py [--files N] [--runs N] [--layout days|flat] [--check]

``--json PATH`` also writes the figures there (median wall ``seconds``, max
``peak_rss_mib``, each run's), as bench/run.py reads them. Exit status: 1 when the
audit fails, or when ``--check`` is given and a target is missed; else 0, so that a
report of a missed target is still a report.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.servers import NginxDav  # noqa: E402

#: (files at least, wall seconds, peak RSS MiB or None): the strictest that applies.
TARGETS = [(300_000, 10.0, 200.0), (0, 5.0, None)]
SHM = Path("/dev/shm") if os.path.isdir("/dev/shm") else Path(tempfile.gettempdir())
CACHE = SHM / "resto-bench-audit-trees"
TREES = ("master", "0", "1", "2")
SIZES = 1000  # distinct contents, each hard-linked as often as needed


def target_for(count: int) -> tuple[float, float | None]:
    for floor, wall, rss in TARGETS:
        if count >= floor:
            return wall, rss
    raise AssertionError("unreachable")


def names(count: int, layout: str) -> list[str]:
    if layout == "flat":
        return [f"uploads/f{i:05d}.jpg" for i in range(count)]
    # A hundred files a day directory, ten days a month, twelve months a year: a year
    # holds 12,000 files, so the 10,000-file tree is one year's (as in issue 3).
    return [
        f"uploads/{2026 + i // 12_000}/{i // 1000 % 12 + 1:02d}/{i // 100 % 10 + 1:02d}/"
        f"img_{i:05d}.jpg"
        for i in range(count)
    ]


def build_trees(files: list[str], key: str, fresh: bool) -> Path:
    """The cached trees for ``key``, built on first use (or with ``fresh``).

    A ``complete`` marker is written last, so an interrupted build is rebuilt (and so
    is a cache whose trees a killed run left in its servers' roots).
    """
    home = CACHE / key
    whole = (home / "complete").exists() and all((home / tree).is_dir() for tree in TREES)
    if whole and not fresh:
        return home
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    blobs = home / "blobs"
    blobs.mkdir()
    for size in range(SIZES):
        (blobs / str(size)).write_bytes(b"x" * (1000 + size))
    start = time.perf_counter()
    made: set[str] = set()
    link = os.link
    for tree in TREES:
        root = str(home / tree)
        os.mkdir(root)
        made.clear()
        for index, name in enumerate(files):
            directory, _, _ = name.rpartition("/")
            if directory not in made:
                os.makedirs(f"{root}/{directory}", exist_ok=True)
                made.add(directory)
            link(f"{blobs}/{index % SIZES}", f"{root}/{name}")
    (home / "complete").write_text(f"{len(files)}\n")
    print(f"built {len(TREES)} trees of {len(files)} files in {time.perf_counter() - start:.1f} s")
    return home


def run_child(
    command: list[str], env: dict[str, str], timeout: float
) -> tuple[int, str, str, dict[str, float]]:
    """Run ``command``: (exit code, stdout, stderr, wall, CPU and peak RSS figures).

    ``wait4`` gives this child's own rusage; RUSAGE_CHILDREN would report the
    largest of every child waited for so far (the migrate run, earlier runs).
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        child = subprocess.Popen(command, env=env, stdout=out, stderr=err)
        killer = threading.Timer(timeout, child.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(child.pid, 0)
        finally:
            killer.cancel()
        wall = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        figures = {
            "wall": wall,
            "cpu": usage.ru_utime + usage.ru_stime,
            "rss_mib": usage.ru_maxrss / 1024,  # KiB on Linux
        }
        return child.returncode, out.read().decode(), err.read().decode(), figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--layout", choices=["days", "flat"], default="days")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--fresh", action="store_true", help="rebuild the cached trees")
    parser.add_argument("--drop-trees", action="store_true", help="delete the trees afterwards")
    parser.add_argument(
        "--json", metavar="PATH", help="also write the figures there (for bench/run.py)"
    )
    args = parser.parse_args()

    files = names(args.files, args.layout)
    home = build_trees(files, f"{args.files}-{args.layout}-{SIZES}", args.fresh)
    base = Path(tempfile.mkdtemp(prefix="resto-bench-audit-", dir=SHM))
    servers: list[NginxDav] = []
    moved: list[tuple[Path, Path]] = []  # (cached tree, where it is now)
    try:
        servers = [NginxDav(base, credentials=("bench", "bench")) for _ in range(3)]
        master = base / "master"
        for tree, root in zip(TREES, [master, *(server.root for server in servers)], strict=True):
            if root.exists():
                root.rmdir()  # the server's empty root, replaced by the cached tree
            (home / tree).rename(root)
            moved.append((home / tree, root))
        for server in servers:
            server.start()
        (base / "audit_settings.py").write_text(
            "from tests.settings import *  # noqa: F403\n"
            f"MEDIA_ROOT = {str(master)!r}\n"
            "DATABASES = {'default': {'ENGINE': 'django.db.backends.sqlite3', "
            f"'NAME': {str(base / 'db.sqlite3')!r}, "
            "'OPTIONS': {'init_command': 'PRAGMA journal_mode=WAL'}}}\n"
            "STORAGES = {'default': {'BACKEND': 'django_resto.storage.HybridStorage', "
            f"'OPTIONS': {{'hosts': {[s.host for s in servers]!r}, "
            "'auth': ('bench', 'bench')}},\n"
            "    'staticfiles': {'BACKEND': 'django.core.files.storage.FileSystemStorage'}}\n"
        )
        env = dict(
            os.environ,
            PYTHONPATH=f"{base}{os.pathsep}{REPO}",
            DJANGO_SETTINGS_MODULE="audit_settings",
        )
        subprocess.run(
            [sys.executable, "-m", "django", "migrate", "-v0"], env=env, check=True, timeout=120
        )
        runs = []
        for run in range(args.runs):
            code, stdout, stderr, figures = run_child(
                [sys.executable, "-m", "django", "resto_sync", "--json"], env, timeout=600
            )
            if code != 0:
                print(stdout[-2000:], stderr[-2000:])
                print(f"resto_sync exited {code}: the trees should be equal")
                return 1
            summary = json.loads(stdout)["storages"][0]
            audited = [host["remote_files"] for host in summary["hosts"]]
            if audited != [len(files)] * 3:
                print(f"expected {len(files)} files on each host, the audit saw {audited}")
                return 1
            runs.append(figures)
            methods = sorted({host["method"] for host in summary["hosts"]})
            print(
                f"run {run + 1}: {figures['wall']:.2f} s wall, {figures['cpu']:.2f} s CPU, "
                f"{figures['rss_mib']:.0f} MiB peak RSS for {len(files)} files x 3 hosts "
                f"(audit itself {summary['elapsed']:.2f} s, listing: {', '.join(methods)})"
            )
    finally:
        for server in servers:
            server.stop()
        for cached, now in moved:
            now.rename(cached)
        shutil.rmtree(base, ignore_errors=True)
        if args.drop_trees:
            shutil.rmtree(home, ignore_errors=True)

    def median(key: str) -> float:
        return sorted(figures[key] for figures in runs)[len(runs) // 2]

    wall_target, rss_target = target_for(len(files))
    wall, rss = median("wall"), max(figures["rss_mib"] for figures in runs)
    verdicts = [wall <= wall_target] + ([rss <= rss_target] if rss_target is not None else [])
    verdict = "PASS" if all(verdicts) else "FAIL"
    walls = sorted(figures["wall"] for figures in runs)
    print(
        f"resto_sync audit, {len(files)} files x 3 nginx ({args.layout} layout): "
        f"median {wall:.2f} s wall ({walls[0]:.2f} to {walls[-1]:.2f}), "
        f"median {median('cpu'):.2f} s CPU, peak RSS {rss:.0f} MiB; target <= "
        f"{wall_target:.0f} s"
        + (f" and <= {rss_target:.0f} MiB" if rss_target is not None else "")
        + f": {verdict}"
    )
    if args.json:
        figures = {
            "files": len(files),
            "layout": args.layout,
            "seconds": wall,
            "cpu_seconds": median("cpu"),
            "peak_rss_mib": rss,
            "runs": runs,
            "target_seconds": wall_target,
            "target_rss_mib": rss_target,
            "pass": verdict == "PASS",
        }
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 1 if args.check and verdict == "FAIL" else 0


if __name__ == "__main__":
    raise SystemExit(main())
