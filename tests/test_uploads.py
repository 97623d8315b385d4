"""In-memory uploads reach every host without a copy of the body per host.

DistributedStorage used to copy a 1 MiB in-memory upload into a new BytesIO for each
host (and BytesIO.getbuffer() copied a ContentFile's bytes once more): issue 12
measured 1.61x django-resto 1.3's client CPU for it. These tests hold the fix with
tracemalloc, against three real nginx.
"""

from __future__ import annotations

import os
import tracemalloc

import pytest
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import SimpleUploadedFile

from django_resto.storage import DistributedStorage
from django_resto.uploads import body_of
from django_resto.wire import BytesBody

pytestmark = [pytest.mark.real_server, pytest.mark.django_db(transaction=True)]

SIZE = 8 * 1024 * 1024


@pytest.mark.parametrize("make", [ContentFile, lambda data: SimpleUploadedFile("f.bin", data)])
def test_an_upload_made_from_bytes_is_sent_from_those_bytes(make):
    data = os.urandom(1024)
    with body_of(make(data)) as body:
        assert isinstance(body, BytesBody)
        assert body.data.obj is data  # the very object: nothing was copied


def test_an_upload_written_in_chunks_is_sent_whole():
    upload = SimpleUploadedFile("f.bin", b"")
    for _ in range(3):
        upload.file.write(b"abc" * 1000)
    with body_of(upload) as body:
        assert body.inline() == b"abc" * 3000


def test_a_distributed_save_does_not_copy_the_body_per_host(media_server_factory):
    servers = [media_server_factory("nginx") for _ in range(3)]
    storage = DistributedStorage(hosts=[server.host for server in servers], journal_alias="tests")
    storage.save("warm.bin", ContentFile(b"warm"))  # imports, connections
    upload = ContentFile(os.urandom(SIZE))
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        storage.save("big.bin", upload)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # One copy of the body per host would be 3 x 8 MiB; blocks of it are 256 KiB.
    assert peak < SIZE / 4, peak
    for server in servers:
        assert server.read("big.bin") == upload.file.getvalue()


def test_a_host_that_stops_reading_delays_the_phased_sends_after_it_by_its_deadline(
    media_server_factory,
):
    """A 1 MiB body is sent host after host from the calling thread (operations.py).

    A host that accepts and never reads holds the sends after it until its deadline
    (timeout + body / min_transfer_rate); they then go out, succeed, and the save
    returns with that host journaled: a second longer than the deadline at most.
    """
    import socket
    import time

    from django_resto.models import PendingReplication
    from django_resto.operations import PHASED_BODY

    stuck = socket.socket()
    stuck.bind(("127.0.0.1", 0))
    stuck.listen(8)  # never accepted: the kernel's buffers fill, then nothing is read
    try:
        servers = [media_server_factory("nginx") for _ in range(2)]
        hanging = f"127.0.0.1:{stuck.getsockname()[1]}"
        storage = DistributedStorage(
            hosts=[hanging, *(server.host for server in servers)],
            journal_alias="tests",
            timeout=0.5,
            min_transfer_rate=8 * 1024 * 1024,
            fatal_exceptions=False,
            breaker_window=0,
        )
        body = os.urandom(PHASED_BODY)
        started = time.monotonic()
        storage.save("late.bin", ContentFile(body))
        elapsed = time.monotonic() - started
    finally:
        stuck.close()
    deadline = 0.5 + PHASED_BODY / (8 * 1024 * 1024)
    assert deadline <= elapsed < deadline + 1.0, elapsed
    assert [server.read("late.bin") for server in servers] == [body, body]
    assert list(PendingReplication.objects.values_list("host", flat=True)) == [hanging]
