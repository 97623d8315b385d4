"""Client CPU per 4 KiB PUT: the library's transport against general HTTP clients.

Small saves are bound by the client's per-request CPU, three times per save with three
hosts. This measures, on one real nginx on loopback and one keep-alive connection each,
what a PUT costs through HostTransport (django_resto.wire), a bare requests.Session,
urllib3's pool, and http.client: the evidence behind writing wire.py instead of
sending writes through requests. It also measures the local half of a Hybrid save,
Django's own FileSystemStorage.save, which no replication code can make cheaper.

    .venv/bin/python bench/overhead.py [--requests N] [--rounds N]
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import requests  # noqa: E402
import urllib3  # noqa: E402

from django_resto.settings import parse_host  # noqa: E402
from django_resto.transport import BytesBody, HostTransport  # noqa: E402
from tests.servers import NginxDav  # noqa: E402


def clients(server: NginxDav, data: bytes) -> dict[str, Callable[[], None]]:
    transport = HostTransport(parse_host(server.host), "/media/", timeout=5)
    body = BytesBody(data)
    session = requests.Session()
    session.trust_env = False
    url = f"{server.url}/media/overhead.bin"
    pool = urllib3.HTTPConnectionPool("127.0.0.1", server.port, maxsize=1)
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)

    def via_transport() -> None:
        transport.put("overhead.bin", body)

    def via_session() -> None:
        session.put(url, data=data, timeout=5, allow_redirects=False).close()

    def via_urllib3() -> None:
        pool.urlopen("PUT", "/media/overhead.bin", body=data, retries=False).release_conn()

    def via_http_client() -> None:
        connection.request("PUT", "/media/overhead.bin", body=data)
        response = connection.getresponse()
        response.read()
        if response.status not in (201, 204):
            raise RuntimeError(f"PUT answered {response.status}")

    return {
        "HostTransport.put (wire.py)": via_transport,
        "requests.Session.put": via_session,
        "urllib3 pool urlopen": via_urllib3,
        "http.client keep-alive": via_http_client,
    }


def local_save_cpu(root: Path, data: bytes, rounds: int, count: int) -> float:
    """Client CPU per Django FileSystemStorage.save, ms: what no replication can save."""
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(MEDIA_ROOT=str(root), USE_TZ=True)
        django.setup()
    from django.core.files.storage import FileSystemStorage
    from django.core.files.uploadedfile import SimpleUploadedFile

    storage = FileSystemStorage(location=root)
    samples = []
    for index in range(rounds):
        start = time.process_time()
        for number in range(count):
            storage.save(f"{index}/{number}.bin", SimpleUploadedFile("f.bin", data))
        samples.append((time.process_time() - start) / count * 1000)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="resto-bench-overhead-"))
    server = NginxDav(base).start()
    try:
        runs = clients(server, os.urandom(4096))
        cpu: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, put in runs.items():  # interleaved, so load changes hit all alike
                put()  # warm the connection
                start = time.process_time()
                for _ in range(args.requests):
                    put()
                cpu[name].append((time.process_time() - start) / args.requests * 1000)
        floor = statistics.median(cpu["http.client keep-alive"])
        print(f"client CPU per 4 KiB PUT, median of {args.rounds} rounds x {args.requests}:")
        for name, values in cpu.items():
            median = statistics.median(values)
            print(f"  {name:30} {median:6.3f} ms  ({median / floor:4.1f}x http.client)")
        local = local_save_cpu(base / "master", os.urandom(4096), args.rounds, args.requests)
        print(
            f"the local half of a Hybrid save, Django's FileSystemStorage.save of 4 KiB: "
            f"{local:.3f} ms (the same code in django-resto 1.3)"
        )
        return 0
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
