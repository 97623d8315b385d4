"""Every backend against real nginx and real lighttpd processes on loopback, 1 and 3 hosts."""

from __future__ import annotations

import hashlib
import os
import time
from urllib.parse import quote

import pytest
import requests
from django.core.files.base import ContentFile, File

from django_resto.exceptions import ReplicationError
from django_resto.models import PendingReplication
from django_resto.storage import AsyncStorage, DistributedStorage, HybridStorage

pytestmark = [pytest.mark.real_server, pytest.mark.django_db(transaction=True)]

BACKENDS = [HybridStorage, AsyncStorage, DistributedStorage]
NAMES = {
    "uploads/2026/11/x.jpg": b"\xff\xd8 not really a jpeg",
    "uploads/2026/11/héllo wörld #1 (100%).txt": "ünïcödé".encode(),
    "日本/写真+1.png": b"png?",
    "empty/zero.bin": b"",
}


def settle(storage) -> None:
    if isinstance(storage, AsyncStorage):
        assert storage.wait(timeout=60)


def served(server, name: str) -> bytes:
    response = requests.get(server.url + "/media/" + quote(name), timeout=10)
    assert response.status_code == 200, (server.kind, name, response.status_code)
    return response.content


@pytest.mark.parametrize("count", [1, 3])
@pytest.mark.parametrize("kind", ["nginx", "lighttpd"])
@pytest.mark.parametrize("backend", BACKENDS, ids=lambda cls: cls.__name__)
def test_save_serve_delete(media_server_factory, media_root, tmp_path, backend, kind, count):
    servers = [media_server_factory(kind) for _ in range(count)]
    storage = backend(journal_alias="tests", hosts=[server.host for server in servers])
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(5 * 1024 * 1024 + 7))
    saved = {}
    for name, data in NAMES.items():
        saved[storage.save(name, ContentFile(data, name=name))] = data
    with open(big, "rb") as handle:
        saved[storage.save("uploads/big.bin", File(handle))] = big.read_bytes()
    settle(storage)
    assert sorted(saved) == sorted([*NAMES, "uploads/big.bin"])  # no renames
    for server in servers:
        for name, data in saved.items():
            assert server.read(name) == data, (server.kind, name)
            assert served(server, name) == data
    if backend is not DistributedStorage:
        for name, data in saved.items():
            assert (media_root / name).read_bytes() == data
    else:
        assert storage.exists("uploads/big.bin")
        assert storage.size("uploads/big.bin") == big.stat().st_size
        with storage.open("uploads/big.bin") as handle:
            digest = hashlib.sha256()
            for chunk in handle.chunks():
                digest.update(chunk)
        assert digest.hexdigest() == hashlib.sha256(big.read_bytes()).hexdigest()
    for name in saved:
        storage.delete(name)
    settle(storage)
    for server in servers:
        assert [name for name in saved if server.exists(name)] == []
    assert PendingReplication.objects.count() == 0


@pytest.mark.parametrize("kind", ["nginx", "lighttpd"])
def test_overwrite_on_real_servers(media_server_factory, kind, resto_log):
    (server,) = [media_server_factory(kind)]
    server.write("a/b.txt", b"old")
    storage = HybridStorage(journal_alias="tests", hosts=[server.host], allow_overwrite=True)
    storage.save("a/b.txt", ContentFile(b"new"))
    assert server.read("a/b.txt") == b"new"
    assert f"PUT on existing file a/b.txt on {server.host}" in resto_log.messages


@pytest.mark.parametrize("kind", ["nginx", "lighttpd"])
def test_one_real_server_down_of_three(media_server_factory, kind):
    servers = [media_server_factory(kind) for _ in range(3)]
    servers[2].stop()
    storage = HybridStorage(
        journal_alias="tests", hosts=[server.host for server in servers], breaker_window=0.2
    )
    with pytest.raises(ReplicationError) as info:
        storage.save("uploads/x.txt", ContentFile(b"x"))
    assert info.value.hosts == [servers[2].host]
    assert "ConnectionError" in str(info.value)
    assert [server.read("uploads/x.txt") for server in servers[:2]] == [b"x", b"x"]
    assert list(PendingReplication.objects.values_list("host", "name", "operation")) == [
        (servers[2].host, "uploads/x.txt", "PUT")
    ]
    servers[2].restart()
    # Within the breaker's window the host is not tried; once it has passed, the next
    # save is the probe, and the restarted server takes it.
    time.sleep(0.25)
    storage.save("uploads/y.txt", ContentFile(b"y"))
    assert servers[2].read("uploads/y.txt") == b"y"


@pytest.mark.parametrize("kind", ["nginx", "lighttpd"])
def test_credentials_on_real_servers(media_server_factory, kind):
    server = media_server_factory(kind, credentials=("writer", "s3cret"))
    anonymous = HybridStorage(journal_alias="tests", hosts=[server.host])
    with pytest.raises(ReplicationError, match="401"):
        anonymous.save("a.txt", ContentFile(b"a"))
    writer = HybridStorage(journal_alias="tests", hosts=[server.host], auth=("writer", "s3cret"))
    writer.save("uploads/b.txt", ContentFile(b"b"))
    assert server.read("uploads/b.txt") == b"b"
    assert served(server, "uploads/b.txt") == b"b"  # reading needs no credentials
    writer.delete("uploads/b.txt")
    assert not server.exists("uploads/b.txt")
