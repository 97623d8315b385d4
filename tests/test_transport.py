"""HostTransport against the in-process server: statuses, MKCOL, quoting, auth, faults."""

from __future__ import annotations

import os
import pickle
import socket
import time

import pytest

from django_resto.hosts import parse_host
from django_resto.transport import (
    BytesBody,
    FileBody,
    HostTransport,
    PutResult,
    UnexpectedStatusCode,
)


def transport_for(server, **kwargs) -> HostTransport:
    kwargs.setdefault("timeout", 2)
    return HostTransport(parse_host(server.host), "/media/", **kwargs)


def methods(server, count: int) -> list[tuple[str, str, int]]:
    """The request log, once ``count`` requests are in it (the server logs after answering)."""
    assert server.wait_for_requests(count, timeout=5)
    return [(r.method, r.path, r.status) for r in server.requests]


def last(server, count: int):
    assert server.wait_for_requests(count, timeout=5)
    return server.requests[-1]


def test_put_created_then_replaced(test_servers):
    (server,) = test_servers()
    transport = transport_for(server)
    assert transport.put("a.txt", BytesBody(b"one")) == PutResult(created=True)
    assert transport.put("a.txt", BytesBody(b"two")) == PutResult(created=False)
    assert server.read("a.txt") == b"two"


def test_nested_put_costs_one_request_on_a_permissive_server(test_servers):
    (server,) = test_servers()
    transport_for(server).put("uploads/2026/11/x.jpg", BytesBody(b"x"))
    assert methods(server, 1) == [("PUT", "/media/uploads/2026/11/x.jpg", 201)]


def test_strict_server_gets_mkcol_parents_first_then_the_put_again(test_servers):
    (server,) = test_servers(strict=True)
    result = transport_for(server).put("uploads/2026/x.jpg", BytesBody(b"x"))
    assert result == PutResult(created=True, collections_created=2)
    # The innermost collection is tried first; the walk goes up on 409, then creates
    # the missing collections parents first.
    assert methods(server, 5) == [
        ("PUT", "/media/uploads/2026/x.jpg", 409),
        ("MKCOL", "/media/uploads/2026/", 409),
        ("MKCOL", "/media/uploads/", 201),
        ("MKCOL", "/media/uploads/2026/", 201),
        ("PUT", "/media/uploads/2026/x.jpg", 201),
    ]
    assert server.read("uploads/2026/x.jpg") == b"x"
    # Once the collections exist, a second file in them costs one request.
    server.clear_log()
    transport_for(server).put("uploads/2026/y.jpg", BytesBody(b"y"))
    assert methods(server, 1) == [("PUT", "/media/uploads/2026/y.jpg", 201)]
    # A new month below existing collections costs one MKCOL, not one per level.
    server.clear_log()
    transport_for(server).put("uploads/2026/12/z.jpg", BytesBody(b"z"))
    assert methods(server, 3) == [
        ("PUT", "/media/uploads/2026/12/z.jpg", 409),
        ("MKCOL", "/media/uploads/2026/12/", 201),
        ("PUT", "/media/uploads/2026/12/z.jpg", 201),
    ]


def test_strict_server_without_media_collection(test_servers, tmp_path):
    (server,) = test_servers(strict=True, base_path="/")
    transport = HostTransport(parse_host(server.host), "/media/", timeout=2)
    transport.put("a/b.txt", BytesBody(b"b"))
    assert methods(server, 5) == [
        ("PUT", "/media/a/b.txt", 409),
        ("MKCOL", "/media/a/", 409),
        ("MKCOL", "/media/", 201),
        ("MKCOL", "/media/a/", 201),
        ("PUT", "/media/a/b.txt", 201),
    ]
    assert server.read("media/a/b.txt") == b"b"


@pytest.mark.parametrize(
    "name",
    ["héllo wörld.txt", "100%.txt", "a#b.txt", "what?.txt", "a+b.txt", "日本/写真.png", "~x.txt"],
)
def test_names_are_quoted_and_arrive_intact(test_servers, name):
    (server,) = test_servers()
    transport = transport_for(server)
    transport.put(name, BytesBody(name.encode()))
    assert server.read(name) == name.encode()
    assert transport.stat(name) is not None
    assert transport.delete(name) is True
    assert not server.exists(name)


def test_file_body_streams_from_disk(test_servers, tmp_path):
    (server,) = test_servers()
    source = tmp_path / "big.bin"
    source.write_bytes(bytes(range(256)) * 4096 * 3)  # 3 MiB
    transport_for(server).put("big.bin", FileBody(source))
    assert server.read("big.bin") == source.read_bytes()
    assert last(server, 1).headers.get("Content-Length") == str(3 * 1024 * 1024)


def test_empty_body_is_sent_with_content_length_zero(test_servers, tmp_path):
    (server,) = test_servers()
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    transport_for(server).put("empty.txt", FileBody(empty))
    assert server.read("empty.txt") == b""
    assert last(server, 1).headers.get("Content-Length") == "0"


@pytest.mark.parametrize("status", [200, 202, 301, 403, 500, 507])
def test_put_unexpected_status_names_host_method_url_status(test_servers, status):
    (server,) = test_servers()
    server.fail_next(status, methods="PUT")
    with pytest.raises(UnexpectedStatusCode) as info:
        transport_for(server).put("x y.txt", BytesBody(b"x"))
    error = info.value
    assert (error.host, error.method, error.status) == (server.host, "PUT", status)
    assert error.url == f"{server.url}/media/x%20y.txt"
    assert str(error).startswith(f"PUT {server.url}/media/x%20y.txt on host {server.host}")
    assert str(status) in str(error)
    assert pickle.loads(pickle.dumps(error)).status == status


def test_409_on_a_flat_name_is_not_retried(test_servers):
    (server,) = test_servers(base_path="/")
    server.fail_next(409, methods="PUT")
    transport = HostTransport(parse_host(server.host), "/", timeout=2)
    with pytest.raises(UnexpectedStatusCode, match="409"):
        transport.put("flat.txt", BytesBody(b"x"))
    assert methods(server, 1) == [("PUT", "/flat.txt", 409)]


def test_mkcol_failure_is_reported(test_servers):
    (server,) = test_servers(strict=True)
    server.fail_next(409, methods="PUT")
    server.fail_next(500, methods="MKCOL")
    with pytest.raises(UnexpectedStatusCode) as info:
        transport_for(server).put("a/b.txt", BytesBody(b"x"))
    assert (info.value.method, info.value.status) == ("MKCOL", 500)


def test_delete_statuses(test_servers):
    (server,) = test_servers()
    transport = transport_for(server)
    server.write("a.txt", b"a")
    assert transport.delete("a.txt") is True
    assert transport.delete("a.txt") is False  # 404: already gone
    server.fail_next(200, methods="DELETE")
    assert transport.delete("whatever.txt") is True
    for status in (202, 403, 500):
        server.fail_next(status, methods="DELETE")
        with pytest.raises(UnexpectedStatusCode) as info:
            transport.delete("a.txt")
        assert (info.value.method, info.value.status) == ("DELETE", status)


def test_stat_and_open(test_servers):
    (server,) = test_servers()
    server.write("a.txt", b"hello")
    transport = transport_for(server)
    stat = transport.stat("a.txt")
    assert stat is not None and stat.size == 5
    assert stat.modified is not None and stat.modified.endswith(" GMT")
    assert transport.stat("missing.txt") is None
    with transport.open("a.txt") as response:
        assert response.size == 5
        assert response.read() == b"hello"
    with pytest.raises(FileNotFoundError, match=f"missing.txt does not exist on {server.host}"):
        transport.open("missing.txt")
    # Reads and writes share one pool: every request above went over one connection.
    assert (transport.pool.opened, transport.pool.sent) == (1, 4)


@pytest.mark.parametrize("kind", ["nginx", "lighttpd"])
def test_exists_reads_the_status_only_and_keeps_the_connection(media_server_factory, kind):
    """A save's question before its write (DistributedStorage.exists), on real servers:
    the HEAD answer's Content-Length announces a body that never comes, so the answer
    ends with its head, and the connection carries the next requests."""
    server = media_server_factory(kind)
    transport = HostTransport(parse_host(server.host), "/media/", timeout=2)
    transport.put("here.txt", BytesBody(b"x" * 4096))
    assert transport.exists("here.txt") is True
    assert transport.exists("missing.txt") is False
    assert transport.exists("here.txt") is True
    assert transport.put("here.txt", BytesBody(b"y")) == PutResult(created=False)
    assert (transport.pool.opened, transport.pool.sent) == (1, 5)


def test_exists_unexpected_status(test_servers):
    (server,) = test_servers()
    transport = transport_for(server)
    server.fail_next(503)
    with pytest.raises(UnexpectedStatusCode) as info:
        transport.exists("a.txt")
    assert (info.value.method, info.value.status) == ("HEAD", 503)
    assert transport.exists("a.txt") is False  # the connection after a 503 still serves


def test_stat_and_open_unexpected_status(test_servers):
    (server,) = test_servers()
    server.write("a.txt", b"hello")
    transport = transport_for(server)
    server.fail_next(503, count=2)
    with pytest.raises(UnexpectedStatusCode) as info:
        transport.stat("a.txt")
    assert (info.value.method, info.value.status) == ("HEAD", 503)
    with pytest.raises(UnexpectedStatusCode) as info:
        transport.open("a.txt")
    assert (info.value.method, info.value.status) == ("GET", 503)


def test_a_download_streams_and_returns_its_connection_only_when_read_to_the_end(test_servers):
    (server,) = test_servers()
    data = os.urandom(3 * 1024 * 1024 + 5)
    server.write("big.bin", data)
    transport = transport_for(server)
    response = transport.open("big.bin")
    assert response.size == len(data)
    first = response.read(1000)
    assert 0 < len(first) <= 1000  # a short read is allowed; never the whole file at once
    assert transport.pool._idle == []  # the connection is still the download's
    rest = response.read()
    assert first + rest == data
    assert len(transport.pool._idle) == 1  # read to its end: back in the pool
    response.close()
    # Closed before its end, a download's connection is closed, not reused.
    partial = transport.open("big.bin")
    assert partial.read(10)
    partial.close()
    assert transport.pool._idle == []
    assert transport.stat("big.bin") is not None
    assert transport.pool.opened == 2


def test_connection_refused(test_servers):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    transport = HostTransport(parse_host(f"127.0.0.1:{port}"), "/media/", timeout=2)
    with pytest.raises(ConnectionError):
        transport.put("a.txt", BytesBody(b"x"))
    with pytest.raises(ConnectionError):
        transport.stat("a.txt")


def test_hanging_server_times_out(test_servers):
    (server,) = test_servers()
    server.hang()
    transport = transport_for(server, timeout=0.3)
    with pytest.raises(TimeoutError):
        transport.put("a.txt", BytesBody(b"x"))
    assert server.hanging == 1  # one request, not retried
    server.release()


def test_one_dropped_connection_is_retried_once(test_servers):
    (server,) = test_servers()
    transport = transport_for(server)
    server.drop_next(1, methods="PUT")
    assert transport.put("a.txt", BytesBody(b"x")).created is True
    assert [(method, status) for method, _, status in methods(server, 2)] == [
        ("PUT", None),
        ("PUT", 201),
    ]
    assert server.read("a.txt") == b"x"


def test_a_server_that_always_drops_connections_fails(test_servers):
    (server,) = test_servers()
    server.drop_connections(True)
    with pytest.raises(ConnectionError):
        transport_for(server).put("a.txt", BytesBody(b"x"))
    assert [(method, status) for method, _, status in methods(server, 2)] == [
        ("PUT", None),
        ("PUT", None),
    ]


def test_keep_alive_reuses_one_connection(test_servers):
    (server,) = test_servers()
    transport = transport_for(server)
    for index in range(5):
        transport.put(f"{index}.txt", BytesBody(b"x"))
    transport.delete("0.txt")
    assert (transport.pool.opened, transport.pool.sent) == (1, 6)
    # The server saw the same: six requests, one TCP connection.
    assert server.wait_for_requests(6, timeout=5)
    assert {record.connection for record in server.requests} == {1}


def test_basic_auth_only_on_write_methods(test_servers):
    (server,) = test_servers(credentials=("writer", "s3cret"))
    server.write("public.txt", b"p")
    anonymous = transport_for(server)
    with pytest.raises(UnexpectedStatusCode, match="401"):
        anonymous.put("a.txt", BytesBody(b"x"))
    writer = transport_for(server, auth=("writer", "s3cret"))
    assert writer.put("a.txt", BytesBody(b"x")).created
    assert writer.stat("public.txt") is not None
    assert last(server, 3).method == "HEAD"
    assert "Authorization" not in last(server, 3).headers  # reads carry no credentials
    assert writer.delete("a.txt") is True


def test_token_header(test_servers):
    (server,) = test_servers()
    transport_for(server, token="abc123").put("a.txt", BytesBody(b"x"))
    assert last(server, 1).headers["Authorization"] == "Bearer abc123"
    transport_for(server, token="abc123", token_header="X-Media-Token").delete("a.txt")
    assert last(server, 2).headers["X-Media-Token"] == "abc123"


def test_credentials_never_in_errors(test_servers):
    (server,) = test_servers(credentials=("writer", "s3cret"))
    server.fail_next(500, methods="PUT")
    with pytest.raises(UnexpectedStatusCode) as info:
        transport_for(server, auth=("writer", "s3cret"), token="t0ken").put("a", BytesBody(b"x"))
    assert "s3cret" not in str(info.value) and "t0ken" not in str(info.value)
    assert "s3cret" not in repr(info.value.args)


def test_empty_put_answered_500_gets_parents_like_lighttpd(test_servers):
    # lighttpd answers 500, not 409, to an empty PUT into a missing collection.
    (server,) = test_servers(strict=True)
    server.fail_next(500, methods="PUT")
    result = transport_for(server).put("a/empty.txt", BytesBody(b""))
    assert result == PutResult(created=True, collections_created=1)
    assert [(m, s) for m, _, s in methods(server, 3)] == [
        ("PUT", 500),
        ("MKCOL", 201),
        ("PUT", 201),
    ]


def test_a_500_with_a_body_is_not_mistaken_for_a_missing_parent(test_servers):
    (server,) = test_servers(strict=True)
    server.fail_next(500, methods="PUT")
    with pytest.raises(UnexpectedStatusCode, match="500"):
        transport_for(server).put("a/full.txt", BytesBody(b"x"))
    assert [m for m, _, _ in methods(server, 1)] == ["PUT"]


def test_transport_pickles_without_its_pool(test_servers):
    (server,) = test_servers()
    transport = transport_for(server)
    transport.put("a.txt", BytesBody(b"x"))
    assert transport.pool.opened == 1
    clone = pickle.loads(pickle.dumps(transport))
    assert clone._pool is None  # sockets do not cross processes; a new pool opens on demand
    assert clone.put("a.txt", BytesBody(b"y")).created is False
    assert clone.pool.opened == 1


def test_one_transport_shared_by_many_threads(test_servers):
    """Each thread holds a pooled connection for one request at a time: no request
    sees another's answer, and connections are reused rather than opened per request."""
    from concurrent.futures import ThreadPoolExecutor

    (server,) = test_servers()
    transport = transport_for(server, pool_size=8)

    def work(worker: int) -> list[bool]:
        results = []
        for index in range(25):
            name = f"t{worker}/{index}.txt"
            results.append(transport.put(name, BytesBody(f"{worker}-{index}".encode())).created)
            if index % 5 == 4:
                results.append(transport.delete(name))
        return results

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(work, range(8)))
    assert all(all(results) for results in outcomes)
    assert transport.pool.sent == 8 * 30
    assert transport.pool.opened <= 8  # never more connections than threads at once
    for worker in range(8):
        for index in range(25):
            expected = None if index % 5 == 4 else f"{worker}-{index}".encode()
            assert server.read(f"t{worker}/{index}.txt") == expected


def test_started_writes_on_several_hosts_are_answered_in_order(test_servers):
    servers = test_servers(3)
    transports = [transport_for(server) for server in servers]
    body = BytesBody(b"x" * 1000)
    finishes = [transport.start_put("s/a.bin", body) for transport in transports]
    # Every request is on the wire before any answer is read.
    for server in servers:
        assert server.wait_for_requests(1, timeout=5)
    assert [finish() for finish in finishes] == [PutResult(created=True)] * 3
    deletes = [transport.start_delete("s/a.bin") for transport in transports]
    assert [finish() for finish in deletes] == [True, True, True]
    assert all(server.read("s/a.bin") is None for server in servers)


def test_idle_probe_works_for_descriptors_above_1023(test_servers, monkeypatch):
    """select(2) cannot watch a descriptor above 1023, which a busy application server
    reaches; the idle probe must still see a live connection as live and reuse it."""
    import os
    import resource

    from django_resto import wire

    monkeypatch.setattr(wire, "CHECK_IDLE_AFTER", 0)  # probe before every reuse
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1200
    if soft < wanted:
        assert hard == resource.RLIM_INFINITY or hard >= wanted, "raise the fd hard limit"
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    filler = []
    try:
        while not filler or filler[-1] < 1100:
            filler.append(os.open(os.devnull, os.O_RDONLY))
        (server,) = test_servers()
        transport = transport_for(server)
        for index in range(3):
            transport.put(f"{index}.txt", BytesBody(b"x"))
        assert transport.pool._idle[0].sock.fileno() > 1023
        assert (transport.pool.opened, transport.pool.sent) == (1, 3)
        transport.close()
    finally:
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_min_transfer_rate_reaches_the_pool_and_survives_pickling(test_servers):
    (server,) = test_servers()
    assert transport_for(server).pool.min_transfer_rate == 256 * 1024  # the settings' default
    transport = transport_for(server, timeout=1.5, min_transfer_rate=1024.0)
    assert (transport.pool.read_timeout, transport.pool.min_transfer_rate) == (1.5, 1024.0)
    assert pickle.loads(pickle.dumps(transport)).pool.min_transfer_rate == 1024.0


def test_write_deadline_is_the_timeout_plus_the_body_at_the_minimum_rate(test_servers):
    # 2 s + 10 KiB at 1 KiB/s: a 12 s deadline, although each read may only wait 2 s.
    (server,) = test_servers()
    transport = transport_for(server, timeout=2, min_transfer_rate=1024)
    began = time.monotonic()
    pending = transport.start_write("PUT", "/media/d.bin", BytesBody(b"x" * 10 * 1024))
    assert began + 12 <= pending.deadline <= time.monotonic() + 12
    assert pending.answer().status == 201
    delete = transport.start_write("DELETE", "/media/d.bin")
    assert delete.deadline <= time.monotonic() + 2  # no body: the timeout alone
    assert delete.answer().status == 204
