"""Benchmark of S3 replicas (issue 11): saves to 2 nginx + 1 bucket against 3 nginx, and
the audit of a bucket of 100,000 objects.

    .venv/bin/python bench/s3.py [--small N] [--big-mib N] [--objects N]
                                 [--skip-saves] [--skip-audit]

Everything runs on 127.0.0.1: three real nginx WebDAV servers (``tests.servers.NginxDav``)
and SeaweedFS's ``weed mini`` (``tests.seaweed.SeaweedS3``, the test suite's S3 server).

* **Saves.** A HybridStorage saves 4 KiB files (``--small`` of them, after 20 unmeasured
  ones) and one 64 MiB file (a TemporaryUploadedFile on disk, as Django hands a big
  upload over), once to three nginx and once to two nginx and a bucket. Each
  configuration runs in a fresh interpreter (this file, ``--worker``); the figures are
  the median wall time of a save, the client's CPU time per save (every thread, user and
  system: what the web process pays), and its peak resident memory growth during the
  measured saves (``bench.worker.PeakRSS``). Target: at most 32 MiB growth at any size,
  which the bucket meets with the transfer config docs/object-storage.md recommends
  (multipart above 8 MiB, 5 MiB parts, two of them in memory at most).
* **Audit.** ``--objects`` objects (100,000) are written to the bucket and to a master
  copy, laid out as uploads are (``uploads/YYYY/MM/DD/``); then ``manage.py resto_sync
  --host storage:bucket --json`` runs in a fresh process, as an operator would run it,
  three times. Target: at most 10 s.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MIB = 1024 * 1024
RSS_TARGET = 32 * MIB
AUDIT_TARGET = 10.0
#: The transfer config docs/object-storage.md recommends, as the worker builds it.
THRESHOLD = 8 * MIB
PART = 5 * MIB


# --- the worker: one configuration, in a fresh interpreter ---------------------------------


def _storages(spec: dict[str, Any]) -> dict[str, Any]:
    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config

    from tests.seaweed import ACCESS_KEY, REGION, SECRET_KEY

    transfer = TransferConfig(
        multipart_threshold=THRESHOLD, multipart_chunksize=PART, max_concurrency=2
    )
    transfer.max_in_memory_upload_chunks = 2
    return {
        "default": {
            "BACKEND": "django_resto.storage.HybridStorage",
            "OPTIONS": {"hosts": spec["hosts"], "timeout": 60},
        },
        "staticfiles": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
        "bucket": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": "media",
                "endpoint_url": spec["endpoint"],
                "access_key": ACCESS_KEY,
                "secret_key": SECRET_KEY,
                "region_name": REGION,
                "location": spec["location"],
                "file_overwrite": True,
                "client_config": Config(s3={"addressing_style": "path"}),
                "transfer_config": transfer,
            },
        },
    }


def _cpu() -> float:
    times = os.times()
    return times.user + times.system


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    import django
    from django.conf import settings

    work = Path(spec["work_dir"])
    settings.configure(
        SECRET_KEY="django_resto s3 benchmark",
        USE_TZ=True,
        INSTALLED_APPS=[],  # no journal: the figures are the replication's, as in run.py
        DATABASES={},
        MEDIA_ROOT=str(work / "master"),
        MEDIA_URL="/media/",
        FILE_UPLOAD_TEMP_DIR=str(work / "upload"),
        STORAGES=_storages(spec),
        LOGGING_CONFIG=None,
    )
    django.setup()
    from django.core.files.storage import storages
    from django.core.files.uploadedfile import SimpleUploadedFile, TemporaryUploadedFile

    from bench.worker import PeakRSS

    store = storages["default"]
    block = bytes(i % 251 for i in range(4096))
    for i in range(20):
        store.save(f"warm/{i}.bin", SimpleUploadedFile("w.bin", block))
    uploads = [SimpleUploadedFile("f.bin", block) for _ in range(spec["small"])]
    durations = []
    with PeakRSS() as small_peak:
        cpu = _cpu()
        for i, upload in enumerate(uploads):
            start = time.perf_counter()
            store.save(f"small/{i}.bin", upload)
            durations.append(time.perf_counter() - start)
        small_cpu = _cpu() - cpu
    size = spec["big"]
    upload = TemporaryUploadedFile("big.bin", "application/octet-stream", size, None)
    chunk = (block * 256)[:MIB]
    written = 0
    while written < size:
        written += upload.write(chunk[: min(MIB, size - written)])
    upload.flush()
    upload.seek(0)
    with PeakRSS() as big_peak:
        cpu = _cpu()
        start = time.perf_counter()
        store.save("big/big.bin", upload)
        big_wall = time.perf_counter() - start
        big_cpu = _cpu() - cpu
    upload.close()
    store.close()
    return {
        "small_median": statistics.median(durations),
        "small_cpu": small_cpu / len(durations),
        "small_rss": small_peak.growth,
        "big_wall": big_wall,
        "big_cpu": big_cpu,
        "big_rss": big_peak.growth,
        "rss_method": big_peak.method,
    }


# --- the runner -------------------------------------------------------------------------


def _run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if done.returncode != 0:
        raise RuntimeError(f"worker failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout))


def _check_replicas(roots: list[Path], client: Any, location: str, count: int) -> None:
    """Every target holds every save: the figures are for work that was done."""
    for root in roots:
        found = sum(1 for path in root.rglob("*.bin") if path.is_file())
        if found != count:
            raise RuntimeError(f"{root} holds {found} files, expected {count}")
    if client is not None:
        listed = 0
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket="media", Prefix=f"{location}/"
        ):
            listed += len(page.get("Contents", ()))
        if listed != count:
            raise RuntimeError(f"the bucket holds {listed} objects, expected {count}")


def saves(base: Path, servers: list[Any], s3: Any, args: argparse.Namespace) -> list[str]:
    rows = []
    layouts = {
        "3 nginx": [server.host for server in servers],
        "2 nginx + 1 bucket": [server.host for server in servers[:2]] + ["storage:bucket"],
    }
    results = {}
    for index, (label, hosts) in enumerate(layouts.items()):
        work = base / f"saves-{index}"
        (work / "master").mkdir(parents=True)
        (work / "upload").mkdir()
        location = f"bench-saves-{index}"
        spec = {
            "hosts": hosts,
            "endpoint": s3.endpoint,
            "location": location,
            "work_dir": str(work),
            "small": args.small,
            "big": args.big_mib * MIB,
        }
        result = _run_worker(spec)
        used = [server.root for server in servers if server.host in hosts]
        _check_replicas(
            used,
            s3.client() if "storage:bucket" in hosts else None,
            location,
            args.small + 21,
        )
        for server in servers:
            for child in server.root.iterdir():
                shutil.rmtree(child)
        results[label] = result
        print(f"{label}: {json.dumps(result)}", file=sys.stderr)
    rows.append(
        "| Layout | 4 KiB save (median) | CPU per 4 KiB save | "
        f"{args.big_mib} MiB save | CPU for it | peak RSS growth, 4 KiB / {args.big_mib} MiB |"
    )
    rows.append("|---|---|---|---|---|---|")
    for label, r in results.items():
        rows.append(
            f"| {label} | {r['small_median'] * 1000:.2f} ms | {r['small_cpu'] * 1000:.2f} ms | "
            f"{r['big_wall']:.2f} s | {r['big_cpu']:.2f} s | "
            f"{r['small_rss'] / MIB:.1f} / {r['big_rss'] / MIB:.1f} MiB |"
        )
    worst = max(max(r["small_rss"], r["big_rss"]) for r in results.values())
    verdict = "PASS" if worst <= RSS_TARGET else "FAIL"
    rows.append("")
    rows.append(
        f"Peak RSS growth at most {worst / MIB:.1f} MiB (target <= 32 MiB): {verdict} "
        f"({results['3 nginx']['rss_method']})."
    )
    return rows


def _names(count: int) -> list[str]:
    return [
        f"uploads/2026/{i // 1000 % 12 + 1:02d}/{i // 100 % 10 + 1:02d}/img_{i:06d}.jpg"
        for i in range(count)
    ]


def audit(base: Path, s3: Any, args: argparse.Namespace) -> list[str]:
    master = base / "audit-master"
    location = "bench-audit"
    names = _names(args.objects)
    client = s3.client()
    start = time.perf_counter()
    for index, name in enumerate(names):
        path = master / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * (100 + index % 50))

    def put(item: tuple[int, str]) -> None:
        index, name = item
        client.put_object(Bucket="media", Key=f"{location}/{name}", Body=b"x" * (100 + index % 50))

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(put, enumerate(names)))
    print(
        f"wrote {len(names)} objects and files in {time.perf_counter() - start:.0f} s",
        file=sys.stderr,
    )
    (base / "audit_settings.py").write_text(
        "from tests.settings import *  # noqa: F403\n"
        "from bench.s3 import _storages\n"
        f"MEDIA_ROOT = {str(master)!r}\n"
        "DATABASES = {'default': {'ENGINE': 'django.db.backends.sqlite3', "
        f"'NAME': {str(base / 'db.sqlite3')!r}}}}}\n"
        f"STORAGES = _storages({{'hosts': ['storage:bucket'], 'endpoint': {s3.endpoint!r}, "
        f"'location': {location!r}}})\n"
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
    elapsed = []
    for run in range(3):
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "django", "resto_sync", "--host", "storage:bucket", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"resto_sync exited {done.returncode}:\n{done.stderr[-2000:]}")
        host = json.loads(done.stdout)["storages"][0]["hosts"][0]
        if host["remote_files"] != len(names) or not host["ok"]:
            raise RuntimeError(f"the audit saw {host['remote_files']} objects: {host}")
        walls.append(wall)
        elapsed.append(json.loads(done.stdout)["storages"][0]["elapsed"])
        print(f"audit run {run + 1}: {wall:.2f} s wall", file=sys.stderr)
    median = statistics.median(walls)
    verdict = "PASS" if median <= AUDIT_TARGET else "FAIL"
    return [
        f"Audit of {len(names)} objects in a bucket (`resto_sync --host storage:bucket`, fresh "
        f"process): median {median:.2f} s wall ({min(walls):.2f} to {max(walls):.2f}; the "
        f"audit itself {statistics.median(elapsed):.2f} s), target <= 10 s: {verdict}."
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=200)
    parser.add_argument("--big-mib", type=int, default=64)
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--skip-audit", action="store_true")
    parser.add_argument("--skip-saves", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        json.dump(worker(json.loads(args.worker)), sys.stdout)
        return 0

    from tests.seaweed import SeaweedS3
    from tests.servers import NginxDav

    base = Path(tempfile.mkdtemp(prefix="resto-bench-s3-"))
    servers: list[Any] = []
    s3 = None
    try:
        servers = [NginxDav(base, base_path="/media/").start() for i in range(3)]
        (base / "seaweedfs").mkdir()
        s3 = SeaweedS3(base / "seaweedfs").start()
        rows = [] if args.skip_saves else saves(base, servers, s3, args)
        if not args.skip_audit:
            rows += ["", *audit(base, s3, args)]
        print("\n".join(rows))
    finally:
        for server in servers:
            server.stop()
        if s3 is not None:
            s3.stop()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
