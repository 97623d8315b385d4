"""HTTPS media servers: every storage against a real nginx that speaks only TLS on loopback.

The servers use a throwaway CA and a certificate for 127.0.0.1 made with the openssl CLI
(``tests.servers.make_tls_files``, through the session fixture ``tls_files``). Writes and
reads go through ``django_resto.wire`` (``ssl.SSLContext`` around a plain socket, and a
read/send loop instead of sendfile(2)). Both must honour ``verify`` the same way: a CA
file, a CA directory, True (certifi's bundle) or False.
"""

from __future__ import annotations

import base64
import os
import re
import socket
import ssl
import time
from urllib.parse import quote

import pytest
import requests
from django.core.files.base import ContentFile, File

from django_resto import wire
from django_resto.exceptions import ReplicationError
from django_resto.models import PendingReplication
from django_resto.storage import DistributedStorage, HybridStorage
from tests.servers import make_tls_files

pytestmark = [pytest.mark.real_server, pytest.mark.django_db(transaction=True)]

NESTED = "uploads/2026/11/x.jpg"
EMPTY = "empty/zero.bin"
BIG = "uploads/big.bin"
#: Larger than wire.INLINE_BODY and several STREAM_BLOCKs, with an odd tail: the body
#: goes through the TLS read/send loop in more than one block.
BIG_SIZE = 3 * 1024 * 1024 + 7
JPEG = b"\xff\xd8 not really a jpeg"
USER, PASSWORD = "writer", "pa55-over-TLS!"
LOG_WAIT = 5.0


@pytest.fixture
def tls_nginx(media_server_factory, tls_files):
    """``make(**kwargs)``: a started NginxDav that speaks only HTTPS, with our test CA."""

    def make(**kwargs):
        server = media_server_factory("nginx", tls=tls_files, **kwargs)
        assert server.host == server.url == f"https://127.0.0.1:{server.port}"
        return server

    return make


@pytest.fixture
def no_sendfile(monkeypatch):
    """Fail loudly if anything calls sendfile: it cannot work under TLS.

    Only the TLS tests use it, and none of them serves files over plain HTTP meanwhile
    (nginx runs in its own process, unaffected).
    """

    def refuse(self, *args, **kwargs):
        raise AssertionError("sendfile() on a TLS socket")

    monkeypatch.setattr(ssl.SSLSocket, "sendfile", refuse)
    monkeypatch.setattr(socket.socket, "sendfile", refuse)
    # wire.py sends file bodies with os.sendfile itself (bounded by the request's deadline).
    monkeypatch.setattr(os, "sendfile", refuse)


def served(server, name: str, verify) -> bytes:
    """GET ``name`` from the server over HTTPS, independently of the library."""
    response = requests.get(server.url + "/media/" + quote(name), verify=str(verify), timeout=10)
    assert response.status_code == 200, (name, response.status_code)
    return response.content


def media_log(server, expected: int) -> list[dict[str, str]]:
    """The media requests in nginx's access log, once it holds ``expected`` of them.

    Each is a dict with method, path, status, connection, requests and tls. nginx writes
    a request's line after sending the answer, so the last line may land a moment after
    the client has read that answer: wait for it (bounded).
    """
    deadline = time.monotonic() + LOG_WAIT
    while True:
        entries = []
        for line in server.access_log.read_text().splitlines():
            _address, request, rest = line.split('"')
            method, path, _version = request.split(" ")
            if not path.startswith("/media/"):
                continue  # the readiness probe
            status, _bytes, *fields = rest.split()
            entry = {"method": method, "path": path, "status": status}
            entry.update(field.split("=", 1) for field in fields)
            entries.append(entry)
        if len(entries) >= expected or time.monotonic() > deadline:
            return entries
        time.sleep(0.01)


def summary(entries: list[dict[str, str]]) -> list[tuple[str, str, str, str]]:
    return [(e["method"], e["path"], e["status"], e["tls"]) for e in entries]


def journal() -> list[tuple[str, str, str]]:
    return sorted(PendingReplication.objects.values_list("host", "name", "operation"))


# -- saves and deletes with a CA file ----------------------------------------------------


@pytest.mark.parametrize("count", [1, 3])
def test_hybrid_storage_over_tls(tls_nginx, tls_files, media_root, tmp_path, no_sendfile, count):
    servers = [tls_nginx() for _ in range(count)]
    storage = HybridStorage(
        journal_alias="tests",
        hosts=[server.host for server in servers],
        verify=str(tls_files.ca_cert),
    )
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(BIG_SIZE))
    saved = {
        storage.save(NESTED, ContentFile(JPEG)): JPEG,
        storage.save(EMPTY, ContentFile(b"")): b"",
    }
    with big.open("rb") as handle:
        saved[storage.save(BIG, File(handle))] = big.read_bytes()
    assert list(saved) == [NESTED, EMPTY, BIG]  # no renames
    assert len(saved[BIG]) == BIG_SIZE
    for server in servers:
        assert server.files() == dict(sorted(saved.items()))
        assert served(server, NESTED, tls_files.ca_cert) == JPEG
        assert summary(media_log(server, 4)) == [
            ("PUT", "/media/" + NESTED, "201", "TLSv1.3"),
            ("PUT", "/media/" + EMPTY, "201", "TLSv1.3"),
            ("PUT", "/media/" + BIG, "201", "TLSv1.3"),
            ("GET", "/media/" + NESTED, "200", "TLSv1.3"),
        ]
    for name, data in saved.items():
        assert (media_root / name).read_bytes() == data
    for name in saved:
        storage.delete(name)
    for server in servers:
        assert server.names() == []
        assert summary(media_log(server, 7)[4:]) == [
            ("DELETE", "/media/" + name, "204", "TLSv1.3") for name in saved
        ]
    assert [name for name in saved if (media_root / name).exists()] == []
    assert journal() == []
    for server in servers:
        assert storage.transport(server.host).pool.https is True


def test_distributed_storage_over_tls(tls_nginx, tls_files, tmp_path, no_sendfile):
    servers = [tls_nginx() for _ in range(2)]
    storage = DistributedStorage(
        journal_alias="tests",
        hosts=[server.host for server in servers],
        verify=str(tls_files.ca_cert),
    )
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(BIG_SIZE))
    assert storage.save(NESTED, ContentFile(JPEG)) == NESTED
    with big.open("rb") as handle:
        assert storage.save(BIG, File(handle)) == BIG
    assert storage.save(EMPTY, ContentFile(b"")) == EMPTY
    expected = {BIG: big.read_bytes(), EMPTY: b"", NESTED: JPEG}
    for server in servers:
        assert server.files() == expected
    for name, data in expected.items():
        assert storage.exists(name) is True
        assert storage.size(name) == len(data)
        with storage.open(name) as handle:
            assert handle.read() == data
    assert storage.exists("uploads/missing.jpg") is False
    assert storage.url(NESTED) == "/media/" + NESTED
    for name in expected:
        storage.delete(name)
    for server in servers:
        assert server.names() == []
    assert [storage.exists(name) for name in expected] == [False, False, False]
    assert journal() == []


# -- certificate verification ------------------------------------------------------------


@pytest.mark.parametrize("given", ["verify=True", "default"])
def test_certifi_does_not_trust_the_test_ca(tls_nginx, media_root, given):
    """verify=True (the default) uses certifi's bundle, where our throwaway CA is not."""
    server = tls_nginx()
    options = {"verify": True} if given == "verify=True" else {}
    storage = HybridStorage(
        journal_alias="tests", hosts=[server.host], fatal_exceptions=True, **options
    )
    assert storage.verify is True
    with pytest.raises(ReplicationError) as info:
        storage.save(NESTED, ContentFile(JPEG))
    assert re.fullmatch(
        re.escape(
            f"PUT '{NESTED}' failed on 1 of 1 media server(s): {server.host} (SSLError: "
            f"PUT {server.url}/media/{NESTED}: [SSL: CERTIFICATE_VERIFY_FAILED] certificate "
            "verify failed: unable to get local issuer certificate (_ssl.c:"
        )
        + r"\d+\)\)",
        str(info.value),
    ), str(info.value)
    assert info.value.hosts == [server.host]
    error = info.value.failures[0].error
    assert isinstance(error, ConnectionError)
    assert isinstance(error.__cause__, ssl.SSLCertVerificationError)
    assert server.names() == []
    assert media_log(server, 0) == []  # the handshake failed: no request reached nginx
    assert journal() == [(server.host, NESTED, "PUT")]
    assert (media_root / NESTED).read_bytes() == JPEG  # the master copy is kept


def test_certifi_does_not_trust_the_test_ca_not_fatal(tls_nginx, resto_log):
    """With fatal_exceptions=False the save returns; the failure is logged and journaled."""
    server = tls_nginx()
    storage = HybridStorage(journal_alias="tests", hosts=[server.host], fatal_exceptions=False)
    assert storage.save(NESTED, ContentFile(JPEG)) == NESTED
    assert server.names() == []
    assert journal() == [(server.host, NESTED, "PUT")]
    (record,) = [r for r in resto_log.records if r.levelname == "ERROR"]
    assert record.getMessage().startswith(f"Failed to upload {NESTED} on {server.host}: SSLError: ")
    assert "CERTIFICATE_VERIFY_FAILED" in record.getMessage()


def test_certifi_refuses_reads_too(tls_nginx):
    server = tls_nginx()
    server.write(NESTED, JPEG)
    storage = DistributedStorage(journal_alias="tests", hosts=[server.host], verify=True)
    # A read that one host answers raises what that host raised (as 1.3 did).
    with pytest.raises(ConnectionError) as info:
        storage.exists(NESTED)
    assert "CERTIFICATE_VERIFY_FAILED" in str(info.value)
    assert media_log(server, 0) == []


def test_hostname_is_checked(media_server_factory, tmp_path):
    """A certificate from a trusted CA, but for another name, is refused by writes and reads."""
    other = make_tls_files(tmp_path / "other", subject_alt_names="DNS:media.invalid")
    server = media_server_factory("nginx", tls=other)
    hybrid = HybridStorage(journal_alias="tests", hosts=[server.host], verify=str(other.ca_cert))
    with pytest.raises(ReplicationError) as info:
        hybrid.save(NESTED, ContentFile(JPEG))
    assert "SSLError" in str(info.value)
    assert "IP address mismatch" in str(info.value)
    distributed = DistributedStorage(
        journal_alias="tests", hosts=[server.host], verify=str(other.ca_cert)
    )
    with pytest.raises(ConnectionError) as info:  # the one host's own error
        distributed.exists(NESTED)
    assert "IP address mismatch" in str(info.value)
    assert server.names() == []
    assert media_log(server, 0) == []


def test_verify_false_accepts_any_certificate(tls_nginx, tmp_path):
    """verify=False: TLS without any certificate check, for tests only.

    The connection is encrypted but not authenticated: anyone who can answer on the
    media server's address (a man in the middle) gets the files and the credentials
    sent with every write. Production configurations give a CA file or directory, or
    rely on the default (True, certifi's bundle) with a publicly trusted certificate.
    """
    server = tls_nginx()
    hybrid = HybridStorage(journal_alias="tests", hosts=[server.host], verify=False)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(BIG_SIZE))
    assert hybrid.save(NESTED, ContentFile(JPEG)) == NESTED
    with big.open("rb") as handle:
        assert hybrid.save(BIG, File(handle)) == BIG
    assert server.files() == {BIG: big.read_bytes(), NESTED: JPEG}
    distributed = DistributedStorage(journal_alias="tests", hosts=[server.host], verify=False)
    assert distributed.exists(NESTED) is True
    assert distributed.size(BIG) == BIG_SIZE
    with distributed.open(NESTED) as handle:
        assert handle.read() == JPEG
    hybrid.delete(NESTED)
    hybrid.delete(BIG)
    assert server.names() == []
    assert journal() == []


@pytest.mark.parametrize("how", ["option", "RESTO_VERIFY"])
def test_ca_directory(tls_nginx, tls_files, settings, how):
    """verify=<a c_rehash-style directory>: OpenSSL's CApath, for writes and reads."""
    server = tls_nginx()
    ca_dir = str(tls_files.ca_dir)
    assert sorted(os.listdir(ca_dir))[0].endswith(".0")
    if how == "option":
        options = {"verify": ca_dir}
    else:
        settings.RESTO_VERIFY = ca_dir
        options = {}
    hybrid = HybridStorage(journal_alias="tests", hosts=[server.host], **options)
    distributed = DistributedStorage(journal_alias="tests", hosts=[server.host], **options)
    assert hybrid.verify == distributed.verify == ca_dir
    assert hybrid.save(NESTED, ContentFile(JPEG)) == NESTED
    assert distributed.save(EMPTY, ContentFile(b"")) == EMPTY
    assert server.files() == {EMPTY: b"", NESTED: JPEG}
    assert distributed.exists(NESTED) is True
    with distributed.open(NESTED) as handle:
        assert handle.read() == JPEG
    hybrid.delete(NESTED)
    distributed.delete(EMPTY)
    assert server.names() == []
    assert journal() == []


def test_ca_file_from_settings(tls_nginx, tls_files, settings):
    settings.RESTO_VERIFY = str(tls_files.ca_cert)
    server = tls_nginx()
    storage = DistributedStorage(journal_alias="tests", hosts=[server.host])
    assert storage.save(NESTED, ContentFile(JPEG)) == NESTED
    assert storage.exists(NESTED) is True
    assert server.files() == {NESTED: JPEG}


# -- credentials -------------------------------------------------------------------------


def test_credentials_over_tls(tls_nginx, tls_files, resto_log):
    server = tls_nginx(credentials=(USER, PASSWORD))
    verify = str(tls_files.ca_cert)
    writer = HybridStorage(
        journal_alias="tests", hosts=[server.host], verify=verify, auth=(USER, PASSWORD)
    )
    assert writer.save(NESTED, ContentFile(JPEG)) == NESTED
    assert server.files() == {NESTED: JPEG}
    assert served(server, NESTED, tls_files.ca_cert) == JPEG  # reading needs no credentials

    wrong_password = "not-" + PASSWORD
    intruder = HybridStorage(
        journal_alias="tests",
        hosts=[server.host],
        verify=verify,
        auth=(USER, wrong_password),
        fatal_exceptions=True,
    )
    with pytest.raises(ReplicationError) as info:
        intruder.save("uploads/intruder.txt", ContentFile(b"evil"))
    message = str(info.value)
    assert message == (
        f"PUT 'uploads/intruder.txt' failed on 1 of 1 media server(s): {server.host} "
        f"(UnexpectedStatusCode: PUT {server.url}/media/uploads/intruder.txt on host "
        f"{server.host} answered unexpected status 401 Unauthorized)"
    )
    secrets = [
        PASSWORD,
        wrong_password,
        base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode(),
        base64.b64encode(f"{USER}:{wrong_password}".encode()).decode(),
    ]
    texts = [message, repr(info.value), *(describe_error(o.error) for o in info.value.failures)]
    texts += [record.getMessage() for record in resto_log.records]
    assert [secret for secret in secrets for text in texts if secret in text] == []
    assert server.names() == [NESTED]

    anonymous = HybridStorage(journal_alias="tests", hosts=[server.host], verify=verify)
    with pytest.raises(ReplicationError, match="401 Unauthorized"):
        anonymous.delete(NESTED)
    assert server.names() == [NESTED]

    writer.delete(NESTED)
    assert server.names() == []
    assert journal() == [(server.host, "uploads/intruder.txt", "PUT")]
    assert [(e["method"], e["status"]) for e in media_log(server, 5)] == [
        ("PUT", "201"),
        ("GET", "200"),
        ("PUT", "401"),
        ("DELETE", "401"),
        ("DELETE", "204"),
    ]


def describe_error(error: BaseException | None) -> str:
    return f"{type(error).__name__}: {error!r} {error}"


# -- connections -------------------------------------------------------------------------


@pytest.mark.parametrize("check_idle", [False, True], ids=["reuse", "idle-check"])
@pytest.mark.parametrize("protocol", ["TLSv1.2", "TLSv1.3"])
def test_keep_alive_over_tls(tls_nginx, tls_files, monkeypatch, protocol, check_idle):
    """Five saves to one host share one TLS connection (one handshake).

    With ``idle-check`` the pool probes every idle connection before reusing it (the
    select(2) for a close by the server): TLS records such as TLS 1.3 session tickets
    must not make a live connection look closed.
    """
    if check_idle:
        monkeypatch.setattr(wire, "CHECK_IDLE_AFTER", 0.0)
    server = tls_nginx(tls_protocols=protocol)
    storage = HybridStorage(
        journal_alias="tests", hosts=[server.host], verify=str(tls_files.ca_cert)
    )
    names = [
        storage.save(f"uploads/k{index}.txt", ContentFile(b"k%d" % index)) for index in range(5)
    ]
    assert names == [f"uploads/k{index}.txt" for index in range(5)]
    pool = storage.transport(server.host).pool
    assert (pool.opened, pool.sent) == (1, 5)
    assert server.files() == {name: b"k%d" % index for index, name in enumerate(names)}
    logged = media_log(server, 5)
    assert [(e["method"], e["status"], e["tls"]) for e in logged] == [("PUT", "201", protocol)] * 5
    assert len({e["connection"] for e in logged}) == 1  # one TLS connection, one handshake
    assert [e["requests"] for e in logged] == ["1", "2", "3", "4", "5"]


@pytest.mark.parametrize(
    "size",
    [
        pytest.param(1, id="small"),
        pytest.param(wire.INLINE_BODY + 1, id="just-above-inline"),
        pytest.param(BIG_SIZE, id="big"),
    ],
)
@pytest.mark.parametrize("scheme", ["https", "http"])
def test_stale_connection_is_retried(
    media_server_factory, tls_files, tmp_path, monkeypatch, scheme, size
):
    """The server closed our kept-alive connection (here: a restart on the same port)
    while the pool believed it fresh (used less than CHECK_IDLE_AFTER ago, so it is reused
    without a probe; in production: an nginx reload or restart under steady traffic): the
    write goes once more on a new connection instead of failing. Plain HTTP is the
    control."""
    # However long the restart takes on a loaded machine, the dead connection is reused.
    monkeypatch.setattr(wire, "CHECK_IDLE_AFTER", 3600.0)
    server = media_server_factory("nginx", tls=tls_files if scheme == "https" else None)
    assert server.url.startswith(f"{scheme}://")
    storage = HybridStorage(
        journal_alias="tests", hosts=[server.host], verify=str(tls_files.ca_cert)
    )
    storage.save("first.txt", ContentFile(b"first"))
    server.restart()
    data = os.urandom(size)
    source = tmp_path / "data.bin"
    source.write_bytes(data)
    # Over TLS the body of a large PUT on a closed connection fails with SSLEOFError,
    # not BrokenPipeError: it must be retried all the same.
    with source.open("rb") as handle:
        saved = storage.save("second.bin", File(handle))
    assert saved == "second.bin"
    assert server.read("second.bin") == data
    assert storage.transport(server.host).pool.opened == 2
    assert journal() == []
