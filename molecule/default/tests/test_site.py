"""The whole site, as its users and its operator see it, over real HTTP between containers.

The application server (group ``app_servers``) runs the example site under gunicorn,
with django_resto replicating to both media servers (``media_servers``: one nginx, one
lighttpd). A visitor uses the site's form from the application server itself (curl with
a cookie jar and the CSRF token, like a browser); the files are then fetched from each
media server by the outsider (``outsiders``, on a network the media servers do not
trust) and compared byte for byte with what was uploaded.

The tests run in the order of this file; the failure drill comes last.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import uuid
from dataclasses import dataclass

import pytest
import testinfra
from testinfra.utils.ansible_runner import AnsibleRunner

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
RUNNER = AnsibleRunner(INVENTORY)

SITE = "http://localhost:8000/"
# The wrapper roles/app installs: a management command as the site's user, with its settings.
MANAGE = "/usr/local/bin/resto-manage"
# What the example site's index page lists for each upload (gallery/index.html).
UPLOAD_ROW = re.compile(
    r'<tr id="upload-(?P<pk>\d+)">\s*<td><a class="upload-link" href="[^"]*" '
    r'data-name="(?P<name>[^"]+)"'
)
CSRF_FIELD = re.compile(r'name="csrfmiddlewaretoken" value="(?P<token>[^"]+)"')


def _hosts(group: str) -> list[str]:
    hosts = RUNNER.get_hosts(group)
    assert hosts, f"no host in {group}"
    return hosts


def _connect(name: str):
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}")


def _curl(*arguments: str) -> str:
    # HTTP/1.1 as django_resto speaks it (through requests).
    return shlex.join(
        ["curl", "--http1.1", "--silent", "--show-error", "--max-time", "60", *arguments]
    )


@dataclass(frozen=True)
class MediaServer:
    """A media server as the inventory describes it, and its container."""

    name: str
    software: str  # "nginx" or "lighttpd"
    port: int
    url_prefix: str
    media_root: str
    user: str
    password: str
    host: object

    @classmethod
    def from_inventory(cls, name: str) -> MediaServer:
        variables = RUNNER.get_variables(name)
        return cls(
            name=name,
            software=variables["media_dav_server"],
            port=int(variables["media_dav_port"]),
            url_prefix=variables["media_dav_url_prefix"],
            media_root=variables["media_dav_root"],
            user=variables["media_dav_write_user"],
            password=variables["media_dav_write_password"],
            host=_connect(name),
        )

    @property
    def address(self) -> str:
        """The server as django_resto's hosts name it."""
        return f"{self.name}:{self.port}"

    def url(self, name: str) -> str:
        return f"http://{self.name}:{self.port}{self.url_prefix}{name}"

    def path(self, name: str) -> str:
        return f"{self.media_root}/{name}"


def fetch(client, url: str) -> tuple[int, str | None]:
    """GET ``url`` from ``client``: the status, and the SHA-256 of the body when 200."""
    body = f"/tmp/resto-site-{uuid.uuid4().hex[:8]}"
    status = int(client.check_output(_curl("--output", body, "--write-out", "%{http_code}", url)))
    digest = client.check_output(f"sha256sum {body} | cut -d' ' -f1") if status == 200 else None
    client.run(f"rm -f {body}")
    return status, digest


def request(client, method: str, url: str, *, body: str | None = None, credentials=None) -> int:
    """Send one request from ``client`` and return the status."""
    command = ["-X", method, "--output", "/dev/null", "--write-out", "%{http_code}"]
    if credentials:
        command += ["--user", f"{credentials[0]}:{credentials[1]}"]
    if body is not None:
        command += ["--data-binary", body]
    return int(client.check_output(_curl(*command, url)))


class Site:
    """A visitor of the example site, on the application server: curl with a cookie jar."""

    def __init__(self, host) -> None:
        self.host = host
        self.jar = f"/tmp/resto-site-cookies-{uuid.uuid4().hex[:8]}"

    def _curl(self, *arguments: str) -> str:
        return _curl("--cookie", self.jar, "--cookie-jar", self.jar, *arguments)

    def index(self) -> tuple[int, str]:
        page = "/tmp/resto-site-page"
        status = self.host.check_output(
            self._curl("--output", page, "--write-out", "%{http_code}", SITE)
        )
        return int(status), self.host.check_output(f"cat {page}")

    def uploads(self) -> dict[str, int]:
        """The uploads the index page lists: {storage name: primary key}."""
        status, page = self.index()
        assert status == 200
        return {match["name"]: int(match["pk"]) for match in UPLOAD_ROW.finditer(page)}

    def _token(self) -> str:
        status, page = self.index()
        assert status == 200
        match = CSRF_FIELD.search(page)
        assert match, "no CSRF token in the form"
        return match["token"]

    def _post(self, path: str, *fields: str) -> int:
        token = self._token()
        command = ["--referer", SITE, "--form", f"csrfmiddlewaretoken={token}"]
        for field in fields:
            command += ["--form", field]
        command += ["--output", "/dev/null", "--write-out", "%{http_code}", SITE + path]
        return int(self.host.check_output(self._curl(*command)))

    def upload(self, path: str, title: str) -> int:
        """POST the file at ``path`` (on the application server) through the upload form."""
        return self._post("", f"title={title}", f"file=@{path}")

    def delete(self, pk: int) -> int:
        return self._post(f"{pk}/delete/")


@dataclass
class Upload:
    """A file made on the application server, and its name once uploaded."""

    path: str
    sha256: str
    name: str = ""
    pk: int = 0


def make_file(host, size: int = 300_000) -> Upload:
    path = f"/tmp/site-{uuid.uuid4().hex[:12]}.bin"
    host.run_test(f"head -c {size} /dev/urandom > {path}")
    return Upload(path, host.check_output(f"sha256sum {path} | cut -d' ' -f1"))


def upload_through_site(site: Site, upload: Upload) -> int:
    """Upload through the form; fill in the storage name and the primary key."""
    status = site.upload(upload.path, title=os.path.basename(upload.path))
    if status == 302:
        basename = os.path.basename(upload.path)
        found = {name: pk for name, pk in site.uploads().items() if name.endswith("/" + basename)}
        assert len(found) == 1, f"{basename} is not listed once on the index page: {found}"
        ((upload.name, upload.pk),) = found.items()
    return status


def manage(app, *arguments: str):
    return app.run(shlex.join([MANAGE, *arguments]))


def journal(app, name: str) -> list[dict]:
    """The journal's rows about ``name`` (earlier runs may have left others behind)."""
    code = (
        "import json; from django_resto.models import PendingReplication as P; "
        "print(json.dumps(list(P.objects.values('host', 'name', 'operation', 'attempts'))))"
    )
    result = manage(app, "shell", "--verbosity", "0", "-c", code)
    assert result.rc == 0, result.stderr
    return [row for row in json.loads(result.stdout) if row["name"] == name]


# -- fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app():
    (name,) = _hosts("app_servers")
    return _connect(name)


@pytest.fixture(scope="module")
def outsider():
    (name,) = _hosts("outsiders")
    return _connect(name)


@pytest.fixture(scope="module")
def servers() -> list[MediaServer]:
    found = [MediaServer.from_inventory(name) for name in _hosts("media_servers")]
    assert sorted(server.software for server in found) == ["lighttpd", "nginx"]
    return found


@pytest.fixture(scope="module")
def lighttpd(servers) -> MediaServer:
    return next(server for server in servers if server.software == "lighttpd")


@pytest.fixture
def site(app) -> Site:
    return Site(app)


def assert_everywhere(upload: Upload, servers, outsider, app) -> None:
    """The master copy and every media server hold the upload's bytes, served by GET."""
    master = app.file(f"/var/lib/resto/media/{upload.name}")
    assert master.exists
    assert master.sha256sum == upload.sha256
    for server in servers:
        assert fetch(outsider, server.url(upload.name)) == (200, upload.sha256), server.name
        assert server.host.file(server.path(upload.name)).sha256sum == upload.sha256


# -- the deployment ------------------------------------------------------------------


def test_site_runs_under_systemd(app):
    gunicorn = app.service("resto-gunicorn")
    assert gunicorn.is_running
    assert gunicorn.is_enabled
    for timer in ("resto-process-failed-media.timer", "resto-sync.timer"):
        assert app.service(timer).is_enabled
        assert app.service(timer).is_running  # "active (waiting)"


def test_settings_are_private(app):
    env = app.file("/etc/resto/env")
    assert (env.user, env.group, env.mode) == ("root", "resto", 0o640)
    assert app.file("/opt/resto/venv").user == "root"


def test_site_replicates_to_the_media_servers_of_the_inventory(app, servers):
    env = app.file("/etc/resto/env").content_string
    (hosts,) = re.findall(r'^RESTO_MEDIA_HOSTS="([^"]*)"$', env, re.MULTILINE)
    assert sorted(hosts.split(",")) == sorted(server.address for server in servers)
    assert 'RESTO_FATAL_EXCEPTIONS="false"' in env


def test_media_servers_answer(app, servers):
    result = manage(app, "resto_status", "--json")
    assert result.rc == 0, result.stdout + result.stderr
    (storage,) = json.loads(result.stdout)["storages"]
    assert {host["host"]: host["reachable"] for host in storage["hosts"]} == {
        server.address: True for server in servers
    }


# -- uploads and deletes through the site --------------------------------------------


def test_upload_reaches_both_media_servers(app, site, servers, outsider):
    upload = make_file(app)
    assert upload_through_site(site, upload) == 302
    assert upload.name.startswith("uploads/")
    assert_everywhere(upload, servers, outsider, app)
    assert journal(app, upload.name) == []


def test_delete_removes_the_file_everywhere(app, site, servers, outsider):
    upload = make_file(app, size=50_000)
    assert upload_through_site(site, upload) == 302
    assert_everywhere(upload, servers, outsider, app)

    assert site.delete(upload.pk) == 302
    assert upload.name not in site.uploads()
    assert not app.file(f"/var/lib/resto/media/{upload.name}").exists
    for server in servers:
        assert fetch(outsider, server.url(upload.name)) == (404, None), server.name
        assert not server.host.file(server.path(upload.name)).exists
    assert journal(app, upload.name) == []


# -- the outsider ---------------------------------------------------------------------


def test_outsider_cannot_write(app, site, servers, outsider):
    upload = make_file(app, size=20_000)
    assert upload_through_site(site, upload) == 302
    intruder = f"uploads/intruder-{uuid.uuid4().hex[:8]}.txt"
    for server in servers:
        credentials = (server.user, server.password)
        # The address decides first: the right credentials do not help.
        existing, new = server.url(upload.name), server.url(intruder)
        for creds in (None, credentials):
            assert request(outsider, "PUT", existing, body="vandal", credentials=creds) == 403
            assert request(outsider, "DELETE", existing, credentials=creds) == 403
            assert request(outsider, "PUT", new, body="intruder", credentials=creds) == 403
        assert not server.host.file(server.path(intruder)).exists
    assert_everywhere(upload, servers, outsider, app)
    assert site.delete(upload.pk) == 302


# -- failure drill: a media server goes down, the journal catches up -----------------


def test_failure_drill(app, site, servers, lighttpd, outsider):
    upload = make_file(app, size=120_000)
    lighttpd.host.run_test("systemctl stop lighttpd")
    try:
        # Availability first (RESTO_FATAL_EXCEPTIONS off): the upload succeeds...
        assert upload_through_site(site, upload) == 302
        status, page = site.index()
        assert status == 200
        assert upload.name in page
        # ...the master copy and nginx have the file, lighttpd does not...
        assert app.file(f"/var/lib/resto/media/{upload.name}").sha256sum == upload.sha256
        for server in servers:
            if server is not lighttpd:
                assert fetch(outsider, server.url(upload.name)) == (200, upload.sha256)
        assert not lighttpd.host.file(lighttpd.path(upload.name)).exists
        # ...and the journal holds what lighttpd missed (the timer's runs cannot drain it).
        rows = journal(app, upload.name)
        assert [(row["host"], row["name"], row["operation"]) for row in rows] == [
            (lighttpd.address, upload.name, "PUT")
        ]
        status = manage(app, "resto_status", "--json")
        assert status.rc == 1  # a configured host is unreachable
        (storage,) = json.loads(status.stdout)["storages"]
        by_host = {host["host"]: host for host in storage["hosts"]}
        assert by_host[lighttpd.address]["reachable"] is False
        assert by_host[lighttpd.address]["backlog"] == 1
    finally:
        lighttpd.host.run_test("systemctl start lighttpd")

    # The timer may get there first; either way the journal drains.
    result = manage(app, "process_failed_media", "--json")
    assert result.rc == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["remaining"] == 0
    assert journal(app, upload.name) == []
    assert_everywhere(upload, servers, outsider, app)

    # The audit, contents included, finds nothing left to do.
    result = manage(app, "resto_sync", "--checksum", "--json")
    assert result.rc == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout)
    assert summary["ok"] is True
    (storage,) = summary["storages"]
    assert sorted(host["host"] for host in storage["hosts"]) == sorted(s.address for s in servers)
    for host in storage["hosts"]:
        counts = host["counts"]
        assert host["reachable"] is True
        differences = counts["missing"] + counts["extra"] + counts["mismatched"]
        assert differences + counts["checksum_mismatched"] + counts["errors"] == 0, host
