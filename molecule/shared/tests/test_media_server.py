"""What the users of a django_resto media server see, over real HTTP between containers.

Every scenario has three hosts: the media server (group ``media_servers``), a client on
the trusted internal network (``trusted_clients``) and a client on a second network that
reaches the media server but is not trusted (``outsiders``). The requests go from the
clients with curl; the files are then looked at on the media server's disk.

The same expectations hold for both web servers, except where the servers differ:
nginx creates missing parent directories on PUT and lists directories as JSON under
its listing prefix; lighttpd needs MKCOL for each parent first and lists with PROPFIND.
"""

from __future__ import annotations

import json
import os
import shlex
import uuid
from dataclasses import dataclass

import pytest
import testinfra
from testinfra.utils.ansible_runner import AnsibleRunner

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
RUNNER = AnsibleRunner(INVENTORY)


def _only_host(group: str) -> str:
    hosts = RUNNER.get_hosts(group)
    assert len(hosts) == 1, f"expected one host in {group}, got {hosts}"
    return hosts[0]


def _connect(name: str):
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}")


@dataclass(frozen=True)
class MediaServer:
    """The media server as the role was told to configure it (from the inventory)."""

    name: str
    software: str  # "nginx" or "lighttpd"
    scheme: str
    port: int
    url_prefix: str
    media_root: str
    user: str
    password: str
    max_upload_mib: int
    listing_prefix: str | None  # nginx only

    @classmethod
    def from_inventory(cls, name: str) -> MediaServer:
        variables = RUNNER.get_variables(name)
        software = variables["media_dav_server"]

        def var(key, default):
            # The shared contract (roles/media_dav), with the role's defaults.
            return variables.get("media_dav_" + key, default)

        tls = bool(var("tls_certificate", ""))
        return cls(
            name=name,
            software=software,
            scheme="https" if tls else "http",
            port=int(var("port", 80)),
            url_prefix=var("url_prefix", "/media/"),
            media_root=var("root", "/srv/media"),
            user=var("write_user", ""),
            password=var("write_password", ""),
            max_upload_mib=int(var("max_upload_mib", 64)),
            listing_prefix=(
                variables.get("nginx_dav_listing_prefix", "/_resto/list/")
                if software == "nginx"
                else None
            ),
        )

    def url(self, name: str = "", prefix: str | None = None) -> str:
        return f"{self.scheme}://{self.name}:{self.port}{prefix or self.url_prefix}{name}"

    def path(self, name: str) -> str:
        return f"{self.media_root}/{name}"


@dataclass(frozen=True)
class Client:
    """A container that talks to the media server with curl."""

    host: object
    cacert: str | None

    def _curl(self):
        # HTTP/1.1 as django_resto speaks it (through requests), also over TLS, where
        # lighttpd would otherwise negotiate HTTP/2.
        command = ["curl", "--http1.1", "--silent", "--show-error", "--max-time", "60"]
        return command + (["--cacert", self.cacert] if self.cacert else [])

    def request(self, method, url, *, body=None, credentials=None, headers=()):
        """Send one request; return (status, body of the answer)."""
        command = [*self._curl(), "-X", method] if method != "HEAD" else [*self._curl(), "--head"]
        if credentials:
            command += ["--user", f"{credentials[0]}:{credentials[1]}"]
        for header in headers:
            command += ["--header", header]
        if body is not None:
            command += ["--data-binary", body]
        command += ["--output", "/tmp/resto-answer", "--write-out", "%{http_code}", url]
        # curl leaves the output file alone when the answer has no body (204).
        result = self.host.run("rm -f /tmp/resto-answer && " + shlex.join(command))
        assert result.rc == 0, f"curl failed: {result.stderr}"
        answer = self.host.run("cat /tmp/resto-answer 2>/dev/null || true").stdout
        return int(result.stdout), answer

    def upload_file(self, url, size, credentials):
        """PUT a file of ``size`` bytes (made on the client) and return the status."""
        self.host.run_test(f"head -c {size} /dev/zero > /tmp/resto-big")
        command = [*self._curl(), "--upload-file", "/tmp/resto-big"]
        command += ["--user", f"{credentials[0]}:{credentials[1]}"] if credentials else []
        command += ["--output", "/dev/null", "--write-out", "%{http_code}", url]
        return int(self.host.check_output(shlex.join(command)))


@pytest.fixture(scope="module")
def server() -> MediaServer:
    return MediaServer.from_inventory(_only_host("media_servers"))


@pytest.fixture(scope="module")
def media(server):
    return _connect(server.name)


def _client(group):
    name = _only_host(group)
    return Client(_connect(name), RUNNER.get_variables(name).get("resto_test_cacert"))


@pytest.fixture(scope="module")
def trusted() -> Client:
    return _client("trusted_clients")


@pytest.fixture(scope="module")
def outsider() -> Client:
    return _client("outsiders")


@pytest.fixture
def credentials(server):
    return (server.user, server.password) if server.user else None


@pytest.fixture
def name() -> str:
    """A fresh file name, so that every test starts from a clean slate."""
    return f"test-{uuid.uuid4().hex[:12]}.txt"


def _put(trusted, server, name, body, credentials):
    status, _ = trusted.request("PUT", server.url(name), body=body, credentials=credentials)
    return status


# -- the service ---------------------------------------------------------------------


def test_service_is_running_and_enabled(media, server):
    service = media.service(server.software)
    assert service.is_running
    assert service.is_enabled


def test_configuration_test_passes(media, server):
    if server.software == "nginx":
        media.run_test("nginx -t")
    else:
        media.run_test("lighttpd -tt -f /etc/lighttpd/lighttpd.conf")


# -- reads: everybody ----------------------------------------------------------------


def test_outsider_reads_a_file(media, server, trusted, outsider, name, credentials):
    assert _put(trusted, server, name, "for everybody\n", credentials) == 201
    assert outsider.request("GET", server.url(name)) == (200, "for everybody\n")
    status, _ = outsider.request("HEAD", server.url(name))
    assert status == 200


def test_missing_file_is_not_found(server, outsider, name):
    assert outsider.request("GET", server.url(name))[0] == 404


# -- writes: trusted clients ---------------------------------------------------------


def test_trusted_put_creates_then_overwrites(media, server, trusted, name, credentials):
    assert _put(trusted, server, name, "first\n", credentials) == 201
    assert media.file(server.path(name)).content_string == "first\n"
    assert _put(trusted, server, name, "second\n", credentials) == 204
    on_disk = media.file(server.path(name))
    assert on_disk.content_string == "second\n"
    assert on_disk.user == "www-data"
    assert on_disk.mode == 0o644


def test_nested_put(media, server, trusted, credentials):
    top = f"dir-{uuid.uuid4().hex[:8]}"
    nested = f"{top}/b/c.txt"
    if server.software == "lighttpd":
        # WebDAV: a PUT into a missing collection is a conflict; create the parents first,
        # as django_resto does after a 409.
        assert _put(trusted, server, nested, "nested\n", credentials) == 409
        for collection in (f"{top}/", f"{top}/b/"):
            status, _ = trusted.request("MKCOL", server.url(collection), credentials=credentials)
            assert status == 201
    assert _put(trusted, server, nested, "nested\n", credentials) == 201
    assert media.file(server.path(nested)).content_string == "nested\n"
    assert media.file(server.path(f"{top}/b")).mode == 0o755


def test_trusted_delete(media, server, trusted, name, credentials):
    assert _put(trusted, server, name, "doomed\n", credentials) == 201
    status, _ = trusted.request("DELETE", server.url(name), credentials=credentials)
    assert status == 204
    assert not media.file(server.path(name)).exists
    assert trusted.request("GET", server.url(name))[0] == 404


def test_media_root_cannot_be_deleted(media, server, trusted, name, credentials):
    assert _put(trusted, server, name, "keep me\n", credentials) == 201
    status, _ = trusted.request("DELETE", server.url(""), credentials=credentials)
    assert status == 403
    assert media.file(server.path(name)).content_string == "keep me\n"


# -- writes: outsiders are refused ---------------------------------------------------


@pytest.mark.parametrize("method", ["PUT", "DELETE", "MKCOL"])
def test_outsider_cannot_write(media, server, trusted, outsider, name, credentials, method):
    assert _put(trusted, server, name, "untouched\n", credentials) == 201
    target = server.url(name) if method != "MKCOL" else server.url(f"{name}-dir/")
    body = "vandalized\n" if method == "PUT" else None
    # Even with the right credentials: the address decides first.
    for creds in (None, credentials):
        status, _ = outsider.request(method, target, body=body, credentials=creds)
        assert status == 403
    assert media.file(server.path(name)).content_string == "untouched\n"
    assert not media.file(server.path(f"{name}-dir")).exists


def test_outsider_cannot_create(media, server, outsider, name):
    status, _ = outsider.request("PUT", server.url(name), body="intruder\n")
    assert status == 403
    assert not media.file(server.path(name)).exists


# -- credentials ---------------------------------------------------------------------


def test_trusted_put_needs_credentials(media, server, trusted, name, credentials):
    if not credentials:
        pytest.skip("no write credentials configured in this scenario")
    assert _put(trusted, server, name, "anonymous\n", None) == 401
    assert _put(trusted, server, name, "wrong\n", (server.user, "wrong password")) == 401
    assert not media.file(server.path(name)).exists
    assert _put(trusted, server, name, "signed\n", credentials) == 201
    assert media.file(server.path(name)).content_string == "signed\n"


def test_reads_need_no_credentials(server, trusted, name, credentials):
    assert _put(trusted, server, name, "public\n", credentials) == 201
    assert trusted.request("GET", server.url(name)) == (200, "public\n")


# -- the listing used by django_resto's sync command ---------------------------------


def _list(client, server, directory, credentials):
    """Return (status, names) of the listing of ``directory`` as the library reads it."""
    if server.software == "nginx":
        status, body = client.request(
            "GET", server.url(directory, prefix=server.listing_prefix), credentials=credentials
        )
        names = [entry["name"] for entry in json.loads(body)] if status == 200 else []
    else:
        status, body = client.request(
            "PROPFIND", server.url(directory), credentials=credentials, headers=["Depth: 1"]
        )
        names = [name for name in body.split("<") if name.startswith("D:href>")]
        names = [href.split(">", 1)[1].rstrip("/").rsplit("/", 1)[-1] for href in names]
    return status, names


def test_listing_answers_the_trusted_client(server, trusted, credentials):
    top = f"list-{uuid.uuid4().hex[:8]}"
    if server.software == "lighttpd":
        assert trusted.request("MKCOL", server.url(f"{top}/"), credentials=credentials)[0] == 201
    assert _put(trusted, server, f"{top}/one.txt", "1\n", credentials) == 201
    status, names = _list(trusted, server, f"{top}/", credentials)
    assert status == (200 if server.software == "nginx" else 207)
    assert "one.txt" in names


def test_listing_needs_credentials(server, trusted, credentials):
    if not credentials:
        pytest.skip("no write credentials configured in this scenario")
    assert _list(trusted, server, "", None)[0] == 401


def test_listing_refuses_the_outsider(server, outsider, credentials):
    assert _list(outsider, server, "", None)[0] == 403
    assert _list(outsider, server, "", credentials)[0] == 403


# -- limits --------------------------------------------------------------------------


def test_upload_over_the_limit_is_refused(media, server, trusted, name, credentials):
    too_big = server.max_upload_mib * 1024 * 1024 + 1
    assert trusted.upload_file(server.url(name), too_big, credentials) == 413
    assert not media.file(server.path(name)).exists
    assert trusted.upload_file(server.url(name), 1000, credentials) == 201
