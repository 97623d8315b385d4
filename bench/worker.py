"""One benchmark workload, run in a fresh interpreter by ``bench/run.py``.

Usage: ``python bench/worker.py '<json spec>'``; prints one JSON object on stdout.

This file is run by path, never imported as part of a package, and imports nothing
from the repository: the same script drives this package (from the development
virtualenv) and django-resto 1.3 (from its own virtualenv), and whichever
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
    settings.configure(
        SECRET_KEY="django_resto benchmark",
        DEBUG=False,
        USE_TZ=True,
        INSTALLED_APPS=apps,
        DATABASES={
            "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(work / "db.sqlite3")}
        },
        MEDIA_ROOT=str(work / "master"),
        MEDIA_URL="/media/",
        FILE_UPLOAD_TEMP_DIR=str(work / "upload"),
        # The same global settings drive both packages (1.3 reads RESTO_* only).
        RESTO_MEDIA_HOSTS=list(spec["hosts"]),
        RESTO_TIMEOUT=60,
        LOGGING_CONFIG=None,
        # A workload may set more (bench/compare.py turns the metrics off); settings a
        # package does not know are ignored by it.
        **spec.get("settings", {}),
    )
    django.setup()
    if spec.get("journal"):
        from django.core.management import call_command

        call_command("migrate", verbosity=0, interactive=False)


def make_storage(spec: dict[str, Any]) -> Any:
    from django_resto import storage

    backend = {"hybrid": storage.HybridStorage, "distributed": storage.DistributedStorage}[
        spec["backend"]
    ]
    # Both generations accept these keyword arguments (1.3: positional-or-keyword
    # parameters; 2.x: options).
    kwargs: dict[str, Any] = {"hosts": list(spec["hosts"])}
    if spec["backend"] == "hybrid":
        kwargs["location"] = str(Path(spec["work_dir"]) / "master")
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
    """CPU seconds used by this process so far, in every thread, user and system."""
    times = os.times()
    return times.user + times.system


def _payload(size: int, seed: int) -> bytes:
    # Not all zeros (nothing on the path compresses, but keep it honest anyway).
    block = bytes((seed + i) % 251 for i in range(4096))
    return (block * (size // len(block) + 1))[:size]


def timed_saves(spec: dict[str, Any]) -> dict[str, Any]:
    """``warmup`` unmeasured saves, then ``count`` measured ones, each of a new file."""
    from django.core.files.uploadedfile import SimpleUploadedFile

    store = make_storage(spec)
    size = spec["size"]
    data = _payload(size, 7)
    prefix = spec["prefix"]
    for i in range(spec["warmup"]):
        store.save(f"{prefix}/warm-{i}.bin", SimpleUploadedFile("w.bin", data))
    durations = []
    # What a form upload below FILE_UPLOAD_MAX_MEMORY_SIZE is: an in-memory file.
    uploads = [SimpleUploadedFile("f.bin", data) for _ in range(spec["count"])]
    names = []
    with PeakRSS() as peak:
        cpu = _cpu()
        wall = time.perf_counter()
        for i, upload in enumerate(uploads):
            start = time.perf_counter()
            names.append(store.save(f"{prefix}/{i}.bin", upload))
            durations.append(time.perf_counter() - start)
        wall = time.perf_counter() - wall
        cpu = _cpu() - cpu
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


def raw_put(spec: dict[str, Any]) -> dict[str, Any]:
    """The floor: PUTs of the same bytes on kept-alive requests Sessions, no storage at all.

    With one URL, one PUT per operation. With several, one operation is a PUT to every
    URL at once, one thread and one Session per URL: what the hardware allows a fan-out.
    """
    from concurrent.futures import ThreadPoolExecutor

    import requests

    data = _payload(spec["size"], 7)
    urls = [url.rstrip("/") for url in spec["urls"]]
    prefix = spec["prefix"]
    sessions = []
    for _ in urls:
        session = requests.Session()
        session.trust_env = False
        sessions.append(session)

    def put(index: int, name: str) -> None:
        response = sessions[index].put(f"{urls[index]}/{name}", data=data, timeout=60)
        if response.status_code not in (201, 204):
            raise RuntimeError(f"PUT {urls[index]}/{name} answered {response.status_code}")

    pool = ThreadPoolExecutor(max_workers=len(urls)) if len(urls) > 1 else None

    def operation(name: str) -> None:
        if pool is None:
            put(0, name)
        else:
            list(pool.map(put, range(len(urls)), [name] * len(urls)))

    for i in range(spec["warmup"]):
        operation(f"{prefix}/warm-{i}.bin")
    durations = []
    cpu = _cpu()
    wall = time.perf_counter()
    for i in range(spec["count"]):
        start = time.perf_counter()
        operation(f"{prefix}/{i}.bin")
        durations.append(time.perf_counter() - start)
    wall = time.perf_counter() - wall
    cpu = _cpu() - cpu
    if pool is not None:
        pool.shutdown()
    for session in sessions:
        session.close()
    return {
        "durations": durations,
        "wall": wall,
        "cpu": cpu,
        "count": len(durations),
        "median": statistics.median(durations),
        "names": [f"{prefix}/{i}.bin" for i in range(spec["count"])],
    }


def big_file(spec: dict[str, Any]) -> dict[str, Any]:
    """Save one large upload, as Django hands it over: a TemporaryUploadedFile on disk."""
    from django.core.files.uploadedfile import TemporaryUploadedFile

    store = make_storage(spec)
    size = spec["size"]
    # Warm up imports and connections with a small save first.
    from django.core.files.uploadedfile import SimpleUploadedFile

    store.save(f"{spec['prefix']}/warm.bin", SimpleUploadedFile("w.bin", b"x" * 4096))
    upload = TemporaryUploadedFile("big.bin", "application/octet-stream", size, None)
    block = _payload(CHUNK, 3)
    written = 0
    while written < size:
        written += upload.write(block[: min(CHUNK, size - written)])
    upload.flush()
    upload.seek(0)
    del block
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


WORKLOADS = {"saves": timed_saves, "raw_put": raw_put, "big": big_file}


def main() -> None:
    spec = json.loads(sys.argv[1])
    if spec["workload"] != "raw_put":
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
    if spec["workload"] != "raw_put":
        result.update(package_info())
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
