"""One benchmark workload, run in a fresh interpreter by ``bench/run.py``.

Usage: ``python bench/worker.py '<json spec>'``; prints one JSON object on stdout.

This file is run by path, never imported as part of a package, and imports nothing
from the repository but its neighbour ``floor.py`` (the floor client, found next to
this file on ``sys.path``): the same script drives this package (from the development
virtualenv), django-resto 1.3 (from its own virtualenv) and the floor, and whichever
``django_resto`` is first on ``sys.path`` is the one measured. The result says which
one it was, so a mix-up cannot go unnoticed.

Peak memory is measured inside the process: the kernel's high-water mark (VmHWM) is
reset through ``/proc/self/clear_refs`` just before the measured operation, so the
growth reported is the peak during that operation minus the resident size before it.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

MIB = 1024 * 1024
CHUNK = MIB


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakRSS:
    """Peak resident set growth, in bytes, of the code run inside ``with``."""

    def __enter__(self) -> PeakRSS:
        self.reset = False
        try:
            with open("/proc/self/clear_refs", "w") as clear_refs:
                clear_refs.write("5")  # 5: reset the peak RSS (VmHWM) to the current RSS
            self.reset = True
        except OSError:
            pass
        self.before_kib = _status_kib("VmRSS") if self.reset else None
        if self.before_kib is None:
            self.reset = False
            self.before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.reset:
            peak = _status_kib("VmHWM") or 0
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.growth = max(0, peak - self.before_kib) * 1024
        self.method = "VmHWM reset" if self.reset else "ru_maxrss"


def configure(spec: dict[str, Any]) -> None:
    import django
    from django.conf import settings

    work = Path(spec["work_dir"])
    (work / "master").mkdir(parents=True, exist_ok=True)
    (work / "upload").mkdir(parents=True, exist_ok=True)
    apps = []
    if spec.get("journal"):
        apps.append("django_resto")
    values: dict[str, Any] = {
        "SECRET_KEY": "django_resto benchmark",
        "DEBUG": False,
        "USE_TZ": True,
        "INSTALLED_APPS": apps,
        # The journal's database: a file on a disk (``db_dir``, the system's temporary
        # directory) when the runner gives one, else next to the workload's files; WAL
        # and synchronous=NORMAL, as the test settings and docs/operators.md have it.
        "DATABASES": {
            "default": {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": str(Path(spec.get("db_dir") or work) / "db.sqlite3"),
                "OPTIONS": {"init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL"},
            }
        },
        "MEDIA_ROOT": str(work / "master"),
        "MEDIA_URL": "/media/",
        "FILE_UPLOAD_TEMP_DIR": str(work / "upload"),
        # The same global settings drive both packages (1.3 reads RESTO_* only).
        "RESTO_MEDIA_HOSTS": list(spec["hosts"]),
        "RESTO_TIMEOUT": 60,
        "LOGGING_CONFIG": None,
    }
    # A workload may set more or other values (bench/compare.py turns the metrics off,
    # the hanging-host workload shortens the timeout); settings a package does not know
    # are ignored by it.
    values.update(spec.get("settings", {}))
    settings.configure(**values)
    django.setup()
    if spec.get("journal"):
        from django.core.management import call_command

        call_command("migrate", verbosity=0, interactive=False)


def make_storage(spec: dict[str, Any]) -> Any:
    if spec.get("floor"):
        import floor

        if spec["backend"] == "hybrid":
            return floor.FloorHybrid(spec["hosts"], location=str(Path(spec["work_dir"]) / "master"))
        return floor.FloorDistributed(spec["hosts"])
    from django_resto import storage

    backend = {"hybrid": storage.HybridStorage, "distributed": storage.DistributedStorage}[
        spec["backend"]
    ]
    # Both generations accept these keyword arguments (1.3: positional-or-keyword
    # parameters; 2.x: options).
    kwargs: dict[str, Any] = {"hosts": list(spec["hosts"])}
    if spec["backend"] == "hybrid":
        kwargs["location"] = str(Path(spec["work_dir"]) / "master")
    if spec.get("journal"):
        # A storage built outside STORAGES journals its failures under this name (this
        # package refuses to lose a failure it cannot journal).
        kwargs["journal_alias"] = "bench"
    return backend(**kwargs)


def package_info() -> dict[str, Any]:
    import django

    import django_resto

    try:
        from importlib.metadata import version

        dist_version = version("django-resto")
    except Exception:
        dist_version = None
    where = os.path.dirname(django_resto.__file__)
    return {
        "django_resto_path": where,
        "django_resto_version": dist_version,
        "django": django.get_version(),
        "python": sys.version.split()[0],
    }


def _cpu() -> float:
    """CPU seconds used by this process so far, in every thread, user and system.

    ``process_time`` (CLOCK_PROCESS_CPUTIME_ID) has nanosecond resolution where
    ``os.times`` counts 10 ms ticks: 40 saves of 1 MiB take about that much CPU.
    """
    return time.process_time()


def _payload(size: int, seed: int) -> bytes:
    # Not all zeros (nothing on the path compresses, but keep it honest anyway).
    block = bytes((seed + i) % 251 for i in range(4096))
    return (block * (size // len(block) + 1))[:size]


def _temporary_upload(size: int) -> Any:
    """A file as Django's upload handlers leave one above FILE_UPLOAD_MAX_MEMORY_SIZE."""
    from django.core.files.uploadedfile import TemporaryUploadedFile

    upload = TemporaryUploadedFile("big.bin", "application/octet-stream", size, None)
    block = _payload(min(CHUNK, size), 3)
    written = 0
    while written < size:
        written += upload.write(block[: min(len(block), size - written)])
    upload.flush()
    upload.seek(0)
    return upload


def timed_saves(spec: dict[str, Any]) -> dict[str, Any]:
    """``warmup`` unmeasured saves, then ``count`` measured ones, each of a new file.

    ``upload`` says what the storage is handed: ``memory`` (default), what a form
    upload below FILE_UPLOAD_MAX_MEMORY_SIZE is, or ``temporary``, a file on disk
    written beforehand (not timed). ``threads`` > 1 runs the saves from that many
    threads at once, as a threaded gunicorn worker would; the durations are then each
    thread's, and the rate is every save over the wall time.
    """
    from concurrent.futures import ThreadPoolExecutor

    from django.core.files.uploadedfile import SimpleUploadedFile

    store = make_storage(spec)
    size = spec["size"]
    data = _payload(size, 7)
    prefix = spec["prefix"]
    for i in range(spec["warmup"]):
        store.save(f"{prefix}/warm-{i}.bin", SimpleUploadedFile("w.bin", data))
    durations: list[float] = []
    if spec.get("upload") == "temporary":
        uploads = [_temporary_upload(size) for _ in range(spec["count"])]
    else:
        uploads = [SimpleUploadedFile("f.bin", data) for _ in range(spec["count"])]
    names: list[str] = [""] * len(uploads)
    threads = spec.get("threads", 1)

    def save(i: int) -> None:
        start = time.perf_counter()
        names[i] = store.save(f"{prefix}/{i}.bin", uploads[i])
        durations.append(time.perf_counter() - start)

    with PeakRSS() as peak:
        cpu = _cpu()
        wall = time.perf_counter()
        if threads > 1:
            with ThreadPoolExecutor(max_workers=threads) as pool:
                list(pool.map(save, range(len(uploads))))
        else:
            for i in range(len(uploads)):
                save(i)
        wall = time.perf_counter() - wall
        cpu = _cpu() - cpu
    for upload in uploads:
        upload.close()
    return {
        "durations": durations,
        "wall": wall,
        "cpu": cpu,
        "count": len(durations),
        "median": statistics.median(durations),
        "rss_growth": peak.growth,
        "rss_method": peak.method,
        "names": names,
    }


def big_file(spec: dict[str, Any]) -> dict[str, Any]:
    """Save one large upload, as Django hands it over: a TemporaryUploadedFile on disk."""
    store = make_storage(spec)
    size = spec["size"]
    # Warm up imports and connections with a small save first.
    from django.core.files.uploadedfile import SimpleUploadedFile

    store.save(f"{spec['prefix']}/warm.bin", SimpleUploadedFile("w.bin", b"x" * 4096))
    upload = _temporary_upload(size)
    # Not timed: the file was just written, so it sits in the page cache for both
    # packages alike, as a freshly received upload would.
    name = f"{spec['prefix']}/big.bin"
    with PeakRSS() as peak:
        cpu = _cpu()
        start = time.perf_counter()
        saved = store.save(name, upload)
        duration = time.perf_counter() - start
        cpu = _cpu() - cpu
    upload.close()
    return {
        "duration": duration,
        "cpu": cpu,
        "rss_growth": peak.growth,
        "rss_method": peak.method,
        "names": [saved],
    }


WORKLOADS = {"saves": timed_saves, "big": big_file}


def main() -> None:
    spec = json.loads(sys.argv[1])
    configure(spec)
    if spec.get("profile"):
        import cProfile
        import io
        import pstats

        profiler = cProfile.Profile()
        result = profiler.runcall(WORKLOADS[spec["workload"]], spec)
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("cumulative").print_stats(35)
        stats.sort_stats("tottime").print_stats(20)
        result["profile"] = out.getvalue()
    else:
        result = WORKLOADS[spec["workload"]](spec)
    if not spec.get("floor"):
        result.update(package_info())
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
