"""Benchmark of ``manage.py resto_sync``: an audit of 10,000 files on 3 real nginx hosts.

Target (issue 3): the audit of 10,000 files x 3 nginx hosts on loopback takes at most
5 s. The files are laid out as uploads usually are (``uploads/YYYY/MM/DD/``, about a
hundred directories); the command runs as an operator would run it, in a fresh
process, so the figure includes Python's and Django's start-up.

    .venv/bin/python bench/audit.py [--files N] [--runs N] [--layout days|flat]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.servers import NginxDav  # noqa: E402

TARGET_SECONDS = 5.0


def names(count: int, layout: str) -> list[str]:
    if layout == "flat":
        return [f"uploads/f{i:05d}.jpg" for i in range(count)]
    return [
        f"uploads/2026/{i // 1000 % 12 + 1:02d}/{i // 100 % 10 + 1:02d}/img_{i:05d}.jpg"
        for i in range(count)
    ]


def write_tree(roots: list[Path], files: list[str]) -> None:
    for index, name in enumerate(files):
        data = b"x" * (100 + index % 50)
        for root in roots:
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--layout", choices=["days", "flat"], default="days")
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="resto-bench-audit-"))
    servers: list[NginxDav] = []
    try:
        servers = [NginxDav(base, credentials=("bench", "bench")).start() for _ in range(3)]
        master = base / "master"
        files = names(args.files, args.layout)
        write_tree([master, *(server.root for server in servers)], files)
        (base / "audit_settings.py").write_text(
            "from tests.settings import *  # noqa: F403\n"
            f"MEDIA_ROOT = {str(master)!r}\n"
            "DATABASES = {'default': {'ENGINE': 'django.db.backends.sqlite3', "
            f"'NAME': {str(base / 'db.sqlite3')!r}}}}}\n"
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
        walls = []
        for run in range(args.runs):
            start = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "django", "resto_sync", "--json"],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            wall = time.perf_counter() - start
            if done.returncode != 0:
                print(done.stdout[-2000:], done.stderr[-2000:])
                print(f"resto_sync exited {done.returncode}: the trees should be equal")
                return 1
            summary = json.loads(done.stdout)["storages"][0]
            audited = [host["remote_files"] for host in summary["hosts"]]
            if audited != [len(files)] * 3:
                print(f"expected {len(files)} files on each host, the audit saw {audited}")
                return 1
            walls.append(wall)
            methods = sorted({host["method"] for host in summary["hosts"]})
            print(
                f"run {run + 1}: {wall:.2f} s wall for {len(files)} files x 3 hosts "
                f"(audit itself {summary['elapsed']:.2f} s, listing: {', '.join(methods)})"
            )
        best, worst = min(walls), max(walls)
        median = sorted(walls)[len(walls) // 2]
        verdict = "PASS" if median <= TARGET_SECONDS else "FAIL"
        print(
            f"resto_sync audit, {len(files)} files x 3 nginx ({args.layout} layout): "
            f"median {median:.2f} s ({best:.2f} to {worst:.2f}), target <= "
            f"{TARGET_SECONDS:.0f} s: {verdict}"
        )
        return 0 if verdict == "PASS" else 1
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
