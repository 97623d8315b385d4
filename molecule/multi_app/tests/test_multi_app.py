"""Two application servers, one database, one master copy, over real HTTP between containers.

Both application servers (group ``app_servers``) run the example site under gunicorn,
on one PostgreSQL database (``database_servers``) and one master copy (a docker volume
mounted on MEDIA_ROOT in both, the NAS stand-in). nginx (``media_servers``) is a media
server and the site's front: it proxies everything outside ``/media/`` to both
gunicorns. lighttpd is the second media server.

The visitor is the outsider (``outsiders``), on a network that reaches the two media
servers and nothing else: it uses the site through the front with curl, a cookie jar and
the form's CSRF token, as a browser does. Every request it sends to the site carries a
``probe`` query string, which gunicorn's access log (the journal of resto-gunicorn)
shows: that is how a test knows which application server answered.

The tests run in the order of this file; the failure drill comes last.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest
import testinfra
from testinfra.utils.ansible_runner import AnsibleRunner

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
RUNNER = AnsibleRunner(INVENTORY)

MANAGE = "/usr/local/bin/resto-manage"
MEDIA_ROOT = "/var/lib/resto/media"
GUNICORN = "resto-gunicorn"
# What the example site's index page lists for each upload (gallery/index.html); the
# link's text is the upload's title.
UPLOAD_ROW = re.compile(
    r'<tr id="upload-(?P<pk>\d+)">\s*<td><a class="upload-link" href="[^"]*" '
    r'data-name="(?P<name>[^"]+)">(?P<title>[^<]*)</a>'
)
CSRF_FIELD = re.compile(r'name="csrfmiddlewaretoken" value="(?P<token>[^"]+)"')


def _hosts(group: str) -> list[str]:
    hosts = sorted(RUNNER.get_hosts(group))
    assert hosts, f"no host in {group}"
    return hosts


def _connect(name: str):
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}")


def _curl(*arguments: str, timeout: int = 60) -> list[str]:
    # HTTP/1.1 as django_resto speaks it (through requests).
    return ["curl", "--http1.1", "--silent", "--show-error", "--max-time", str(timeout), *arguments]


def _tag() -> str:
    return uuid.uuid4().hex[:12]


@dataclass(frozen=True)
class MediaServer:
    """A media server as the inventory describes it, and its container."""

    name: str
    software: str  # "nginx" or "lighttpd"
    port: int
    url_prefix: str
    media_root: str
    credentials: tuple[str, str]
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
            credentials=(variables["media_dav_write_user"], variables["media_dav_write_password"]),
            host=_connect(name),
        )

    @property
    def address(self) -> str:
        """The server as django_resto's hosts name it."""
        return f"{self.name}:{self.port}"

    def url(self, name: str) -> str:
        return f"http://{self.name}:{self.port}{self.url_prefix}{name}"

    def sha256(self, names) -> dict[str, str]:
        return sha256_files(self.host, self.media_root, names)


@dataclass(frozen=True)
class AppServer:
    name: str
    host: object

    def manage(self, *arguments: str):
        return self.host.run(shlex.join([MANAGE, *arguments]))

    def served(self, tag: str) -> int:
        """How many requests tagged ``tag`` this server's gunicorn answered."""
        log = self.host.run(
            f"journalctl --unit {GUNICORN} --no-pager --output cat | grep -c -- {tag}"
        )
        return int(log.stdout.strip() or 0)

    def stop(self) -> None:
        self.host.run_test(f"systemctl stop {GUNICORN}")

    def start(self) -> None:
        self.host.run_test(f"systemctl start {GUNICORN}")

    def journal(self) -> list[tuple[str, str, str]]:
        """The journal's rows, as this server's site sees them: (host, name, operation)."""
        code = (
            "import json; from django_resto.models import PendingReplication as P; "
            "print(json.dumps(list(P.objects.values_list('host', 'name', 'operation'))))"
        )
        result = self.manage("shell", "--verbosity", "0", "-c", code)
        assert result.rc == 0, result.stderr
        return sorted(tuple(row) for row in json.loads(result.stdout))


def sha256_files(host, root: str, names) -> dict[str, str]:
    """{name: SHA-256} of the files under ``root`` that exist, in one command."""
    names = list(names)
    result = host.run(
        "cd " + shlex.quote(root) + " && sha256sum -- " + " ".join(shlex.quote(n) for n in names)
    )
    found = {}
    for line in result.stdout.splitlines():
        digest, _, name = line.partition("  ")
        found[name] = digest
    return found


def status_of(
    client, method: str, url: str, *, body: str | None = None, credentials=None, host=None
) -> int:
    """Send one request from ``client`` and return the status."""
    command = ["-X", method, "--output", "/dev/null", "--write-out", "%{http_code}"]
    if host:
        command += ["--header", f"Host: {host}"]
    if credentials:
        command += ["--user", f"{credentials[0]}:{credentials[1]}"]
    if body is not None:
        command += ["--data-binary", body]
    if method == "PROPFIND":
        command += ["--header", "Depth: 1"]
    return int(client.check_output(shlex.join(_curl(*command, url))))


def fetch(client, url: str) -> tuple[int, str | None]:
    """GET ``url`` from ``client``: the status, and the SHA-256 of the body when 200."""
    body = f"/tmp/resto-multi-{_tag()}"
    status = int(
        client.check_output(shlex.join(_curl("--output", body, "--write-out", "%{http_code}", url)))
    )
    digest = client.check_output(f"sha256sum {body} | cut -d' ' -f1") if status == 200 else None
    client.run(f"rm -f {body}")
    return status, digest


@dataclass
class Upload:
    """A file made on the visitor's machine, and what the site made of it."""

    path: str
    sha256: str
    title: str = field(default_factory=_tag)
    filename: str = ""  # the name the browser sends; the file's own by default
    name: str = ""  # the storage name, once uploaded
    pk: int = 0


def make_files(host, count: int, size: int = 60_000) -> list[Upload]:
    directory = f"/tmp/resto-multi-{_tag()}"
    host.run_test(
        f"mkdir -p {directory} && for i in $(seq {count}); do "
        f"head -c {size} /dev/urandom > {directory}/file-$i.bin; done"
    )
    digests = sha256_files(host, directory, [f"file-{i}.bin" for i in range(1, count + 1)])
    return [
        Upload(path=f"{directory}/{name}", sha256=digest, filename=name)
        for name, digest in sorted(digests.items())
    ]


class Visitor:
    """A browser on the outsider: curl with a cookie jar, through the front."""

    def __init__(self, host, front: str) -> None:
        self.host = host
        self.front = front
        self.jar = f"/tmp/resto-multi-cookies-{_tag()}"

    def _curl(self, *arguments: str, timeout: int = 60) -> list[str]:
        return _curl("--cookie", self.jar, "--cookie-jar", self.jar, *arguments, timeout=timeout)

    def index(self, tag: str = "") -> tuple[int, str]:
        page = f"/tmp/resto-multi-page-{_tag()}"
        url = self.front + (f"?probe={tag}" if tag else "")
        status = self.host.check_output(
            shlex.join(self._curl("--output", page, "--write-out", "%{http_code}", url))
        )
        text = self.host.check_output(f"cat {page}; rm -f {page}") if int(status) == 200 else ""
        return int(status), text

    def index_until_up(self, tag: str = "", seconds: float = 30) -> str:
        """The index page; the front may need a moment to retry a gunicorn it saw down."""
        deadline = time.monotonic() + seconds
        while True:
            status, page = self.index(tag)
            if status == 200 or time.monotonic() > deadline:
                assert status == 200, f"the front answered {status}"
                return page
            time.sleep(1)

    def uploads(self) -> dict[str, tuple[str, int]]:
        """The uploads the index page lists: {title: (storage name, primary key)}."""
        page = self.index_until_up()
        return {m["title"]: (m["name"], int(m["pk"])) for m in UPLOAD_ROW.finditer(page)}

    def token(self) -> str:
        match = CSRF_FIELD.search(self.index_until_up())
        assert match, "no CSRF token in the form"
        return match["token"]

    def _upload_command(self, upload: Upload, token: str, tag: str) -> list[str]:
        # Posted from the form's page: the cookie jar is only read, so that requests in
        # parallel can share it.
        return _curl(
            "--cookie", self.jar,
            "--referer", self.front,
            "--form", f"csrfmiddlewaretoken={token}",
            "--form", f"title={upload.title}",
            "--form", f"file=@{upload.path};filename={upload.filename}",
            "--output", "/dev/null", "--write-out", "%{http_code}",
            f"{self.front}?probe={tag}",
        )  # fmt: skip

    def upload(self, upload: Upload, tag: str) -> int:
        token = self.token()
        return int(self.host.check_output(shlex.join(self._upload_command(upload, token, tag))))

    def upload_all_at_once(self, uploads: list[Upload], tag: str) -> list[int]:
        """POST every upload at the same moment, each on its own connection."""
        token = self.token()
        out = f"/tmp/resto-multi-status-{_tag()}"
        jobs = " ".join(
            f"{shlex.join(self._upload_command(upload, token, tag))} > {out}.{i} &"
            for i, upload in enumerate(uploads)
        )
        self.host.run_test(f"{jobs} wait")
        files = " ".join(f"{out}.{i}" for i in range(len(uploads)))
        # One status per file, without a line break: one line, in the order of uploads.
        statuses = self.host.check_output(f"for f in {files}; do cat $f; echo; done; rm -f {files}")
        return [int(status) for status in statuses.split()]

    def delete(self, pk: int, tag: str) -> int:
        token = self.token()
        command = self._curl(
            "--referer", self.front,
            "--form", f"csrfmiddlewaretoken={token}",
            "--output", "/dev/null", "--write-out", "%{http_code}",
            f"{self.front}{pk}/delete/?probe={tag}",
        )  # fmt: skip
        return int(self.host.check_output(shlex.join(command)))

    def find(self, uploads: list[Upload]) -> None:
        """Fill in the storage name and primary key of each upload, from the index page."""
        listed = self.uploads()
        for upload in uploads:
            assert upload.title in listed, f"{upload.title} ({upload.filename}) is not listed"
            upload.name, upload.pk = listed[upload.title]


# -- fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def apps() -> list[AppServer]:
    found = [AppServer(name, _connect(name)) for name in _hosts("app_servers")]
    assert len(found) == 2
    return found


@pytest.fixture(scope="module")
def servers() -> list[MediaServer]:
    found = [MediaServer.from_inventory(name) for name in _hosts("media_servers")]
    assert sorted(server.software for server in found) == ["lighttpd", "nginx"]
    return found


@pytest.fixture(scope="module")
def nginx(servers) -> MediaServer:
    return next(server for server in servers if server.software == "nginx")


@pytest.fixture(scope="module")
def lighttpd(servers) -> MediaServer:
    return next(server for server in servers if server.software == "lighttpd")


@pytest.fixture(scope="module")
def outsider():
    (name,) = _hosts("outsiders")
    return _connect(name)


@pytest.fixture(scope="module")
def database():
    (name,) = _hosts("database_servers")
    return _connect(name)


@pytest.fixture(scope="module")
def front(nginx) -> str:
    """The site, as visitors reach it: the nginx media server's own port."""
    return f"http://{nginx.name}:{nginx.port}/"


@pytest.fixture
def visitor(outsider, front) -> Visitor:
    return Visitor(outsider, front)


@contextlib.contextmanager
def only_through(app: AppServer, apps: list[AppServer]):
    """Stop the other application servers' gunicorn: the front can only reach ``app``."""
    others = [other for other in apps if other is not app]
    for other in others:
        other.stop()
    try:
        yield
    finally:
        for other in others:
            other.start()


def assert_replicated(uploads: list[Upload], apps, servers, visitor=None) -> None:
    """Both views of the master copy and both media servers hold each upload's bytes."""
    expected = {upload.name: upload.sha256 for upload in uploads}
    for app in apps:
        assert sha256_files(app.host, MEDIA_ROOT, expected) == expected, app.name
    for server in servers:
        assert server.sha256(expected) == expected, server.name
    if visitor is not None:
        for upload in uploads:
            url = visitor.front + "media/" + upload.name
            assert fetch(visitor.host, url) == (200, upload.sha256)


def assert_in_sync(app: AppServer, servers) -> None:
    """resto_sync, contents included, finds no difference on any media server."""
    result = app.manage("resto_sync", "--checksum", "--json")
    assert result.rc == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout)
    assert summary["ok"] is True
    (storage,) = summary["storages"]
    assert sorted(h["host"] for h in storage["hosts"]) == sorted(s.address for s in servers)
    for host in storage["hosts"]:
        counts = host["counts"]
        assert host["reachable"] is True
        differences = counts["missing"] + counts["extra"] + counts["mismatched"]
        assert differences + counts["checksum_mismatched"] + counts["errors"] == 0, host


# -- the deployment ------------------------------------------------------------------


def test_both_application_servers_run_the_site(apps):
    for app in apps:
        gunicorn = app.host.service(GUNICORN)
        assert gunicorn.is_running, app.name
        assert gunicorn.is_enabled, app.name
        # The journal drains as long as one application server is up: here by the
        # watch service (app_process_failed_media_mode: watch), the timer stopped.
        watch = app.host.service("resto-watch.service")
        assert watch.is_enabled and watch.is_running, app.name
        timer = app.host.service("resto-process-failed-media.timer")
        assert not timer.is_enabled and not timer.is_running, app.name


def test_resto_sync_runs_on_the_first_application_server_only(apps):
    first, second = apps
    assert first.host.service("resto-sync.timer").is_enabled
    assert first.host.service("resto-sync.timer").is_running
    assert not second.host.service("resto-sync.timer").is_enabled
    assert not second.host.service("resto-sync.timer").is_running
    # The command is there all the same.
    assert second.host.file("/etc/systemd/system/resto-sync.service").exists


def test_the_site_is_on_postgresql_over_tls(apps, database):
    assert database.service("postgresql@15-main").is_running
    code = (
        "from django.db import connection; cursor = connection.cursor(); "
        "cursor.execute('SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()'); "
        "print(connection.vendor, connection.settings_dict['HOST'], cursor.fetchone()[0])"
    )
    for app in apps:
        result = app.manage("shell", "--verbosity", "0", "-c", code)
        assert result.rc == 0, result.stderr
        assert result.stdout.split() == ["postgresql", database.backend.host, "True"], app.name
        env = app.host.file("/etc/resto/env").content_string
        assert 'DJANGO_SETTINGS_MODULE="django_resto_deploy_settings"' in env
        assert (app.host.file("/etc/resto/env").mode) == 0o640


def test_the_master_copy_is_one_mount_for_both(apps):
    marker = f"shared-{_tag()}"
    first, second = apps
    first.host.run_test(f"runuser -u resto -- touch {MEDIA_ROOT}/{marker}")
    try:
        for app in apps:
            app.host.run_test(f"mountpoint -q {MEDIA_ROOT}")
            assert app.host.file(f"{MEDIA_ROOT}/{marker}").user == "resto", app.name
            # gunicorn and the timers' commands start only once it is mounted.
            for unit in (GUNICORN, "resto-process-failed-media", "resto-sync"):
                shown = app.host.check_output(f"systemctl show --property RequiresMountsFor {unit}")
                assert MEDIA_ROOT in shown.partition("=")[2].split(), (app.name, unit, shown)
        assert second.host.user("resto").uid == first.host.user("resto").uid == 990
    finally:
        first.host.run(f"rm -f {MEDIA_ROOT}/{marker}")


def in_rotation(apps, visitor, seconds: float = 30) -> None:
    """Wait until the front sends requests to every application server again.

    nginx leaves out, for a while, a server it found down (max_fails, fail_timeout):
    tests that stop a gunicorn wait for it to come back before they count on both.
    """
    tag = _tag()
    deadline = time.monotonic() + seconds
    while not all(app.served(tag) > 0 for app in apps):
        assert time.monotonic() < deadline, [app.served(tag) for app in apps]
        for _ in range(4):
            visitor.index_until_up(tag)


def test_the_front_reaches_both_application_servers(apps, visitor):
    in_rotation(apps, visitor, seconds=5)


# -- through one application server, then the other -----------------------------------


def test_an_upload_through_one_is_listed_and_deleted_through_the_other(apps, servers, visitor):
    first, second = apps
    (upload,) = make_files(visitor.host, 1, size=300_000)

    tag = _tag()
    with only_through(first, apps):
        assert visitor.upload(upload, tag) == 302
    assert (first.served(tag), second.served(tag)) == (1, 0)

    tag = _tag()
    with only_through(second, apps):
        visitor.index_until_up(tag)
        visitor.find([upload])
        assert upload.name.startswith("uploads/")
        assert_replicated([upload], apps, servers, visitor)
        assert visitor.delete(upload.pk, tag) == 302
        assert upload.title not in visitor.uploads()
    assert first.served(tag) == 0
    assert second.served(tag) >= 2  # the listing and the delete

    for app in apps:
        assert not app.host.file(f"{MEDIA_ROOT}/{upload.name}").exists, app.name
    for server in servers:
        assert fetch(visitor.host, server.url(upload.name)) == (404, None), server.name
    assert first.journal() == []


# -- both at once ----------------------------------------------------------------------


def test_simultaneous_uploads_through_both(apps, servers, visitor):
    in_rotation(apps, visitor)
    uploads = make_files(visitor.host, 30)
    # A third of them under one name: the master copy is shared, so the two servers
    # must not hand out the same storage name.
    for upload in uploads[:10]:
        upload.filename = "same-name.bin"
    tag = _tag()
    assert visitor.upload_all_at_once(uploads, tag) == [302] * len(uploads)
    served = [app.served(tag) for app in apps]
    assert sum(served) == len(uploads)
    assert min(served) > 0, served

    visitor.find(uploads)
    names = [upload.name for upload in uploads]
    assert len(set(names)) == len(names), "two uploads got the same storage name"
    same = [name for name in names[:10] if os.path.basename(name).startswith("same-name")]
    assert len(same) == 10, names[:10]
    assert_replicated(uploads, apps, servers)
    assert apps[0].journal() == []
    assert_in_sync(apps[1], servers)


# -- the outsider ---------------------------------------------------------------------


def test_outsider_reads_media_through_the_front_but_cannot_write(
    apps, servers, nginx, lighttpd, visitor
):
    (upload,) = make_files(visitor.host, 1, size=20_000)
    assert visitor.upload(upload, _tag()) == 302
    visitor.find([upload])
    assert fetch(visitor.host, visitor.front + "media/" + upload.name) == (200, upload.sha256)

    intruder = f"uploads/intruder-{_tag()}.txt"
    for server in servers:
        for credentials in (None, server.credentials):
            # The address decides first: the right credentials do not help.
            for method, name, body in (
                ("PUT", upload.name, "vandal"),
                ("PUT", intruder, "intruder"),
                ("DELETE", upload.name, None),
                ("MKCOL", "uploads/intruders/", None),
                ("PROPFIND", "uploads/", None),
            ):
                status = status_of(
                    visitor.host, method, server.url(name), body=body, credentials=credentials
                )
                assert status == 403, (server.name, method, name, credentials is not None, status)
        assert not server.host.file(f"{server.media_root}/{intruder}").exists
        assert not server.host.file(f"{server.media_root}/uploads/intruders").exists
    # nginx's listing for resto_sync is not the site's: the front keeps it internal.
    listing = f"http://{nginx.name}:{nginx.port}/_resto/list/uploads/"
    assert status_of(visitor.host, "GET", listing) == 403
    assert_replicated([upload], apps, servers, visitor)


def test_outsider_cannot_reach_gunicorn_nor_postgresql(apps, database, nginx, outsider):
    for app in apps:
        address = app.host.interface("eth0").addresses[0]
        # The front reaches gunicorn over the internal network...
        assert status_of(nginx.host, "GET", f"http://{address}:8000/", host="localhost") == 200
        # ...the outsider, on the other network, does not: neither by name nor by address.
        for url in (f"http://{app.name}:8000/", f"http://{address}:8000/"):
            result = outsider.run(shlex.join(_curl("--connect-timeout", "3", url, timeout=5)))
            assert result.rc != 0, (url, result.stdout)
    address = database.interface("eth0").addresses[0]
    result = outsider.run(f"timeout 4 bash -c '</dev/tcp/{address}/5432'")
    assert result.rc != 0


# -- failure drill: a media server goes down under both application servers -----------


def test_failure_drill_with_both_application_servers(apps, servers, lighttpd, visitor):
    first, second = apps
    in_rotation(apps, visitor)
    (victim,) = make_files(visitor.host, 1, size=30_000)
    assert visitor.upload(victim, _tag()) == 302
    visitor.find([victim])
    uploads = make_files(visitor.host, 12, size=120_000)
    for upload in uploads[:4]:
        upload.filename = "drill.bin"
    tag = _tag()

    lighttpd.host.run_test("systemctl stop lighttpd")
    try:
        # Availability first (RESTO_FATAL_EXCEPTIONS off): every upload succeeds, through
        # both application servers...
        assert visitor.upload_all_at_once(uploads, tag) == [302] * len(uploads)
        assert min(app.served(tag) for app in apps) > 0
        # ...and so does a delete.
        assert visitor.delete(victim.pk, _tag()) == 302
        visitor.find(uploads)
        others = [server for server in servers if server is not lighttpd]
        assert_replicated(uploads, apps, others)
        names = [upload.name for upload in uploads]
        assert lighttpd.sha256(names) == {}
        # One journal: both application servers see the same rows, one for each thing
        # lighttpd missed.
        rows = first.journal()
        assert rows == second.journal()
        expected = {(lighttpd.address, name, "PUT") for name in names}
        expected.add((lighttpd.address, victim.name, "DELETE"))
        assert set(rows) == expected
    finally:
        lighttpd.host.run_test("systemctl start lighttpd")

    # Both application servers drain the one journal at the same moment (their watch
    # services may join in): every repair runs under the name's lock, across machines.
    with ThreadPoolExecutor(len(apps)) as pool:
        results = list(pool.map(lambda app: app.manage("process_failed_media", "--json"), apps))
    for app, result in zip(apps, results, strict=True):
        assert result.rc == 0, (app.name, result.stdout + result.stderr)
        assert json.loads(result.stdout)["remaining"] == 0, app.name
    assert first.journal() == [] and second.journal() == []

    assert_replicated(uploads, apps, servers, visitor)
    assert fetch(visitor.host, lighttpd.url(victim.name)) == (404, None)
    for app in apps:
        assert_in_sync(app, servers)
