"""The example site does what it shows: uploads and deletes reach every media server.

Uploads go through the site's form with CSRF checks on, to a real nginx and a real
lighttpd; failures are injected with TestHttpServer. The last tests run ``demo.py`` as
``make demo`` does and check that it leaves no process and no file behind.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib import admin
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.test import Client
from gallery.models import Upload

from django_resto.models import PendingReplication

EXAMPLE_DIR = Path(__file__).resolve().parent.parent
NESTED_NAME = re.compile(r"^uploads/\d{4}/\d{2}/(?P<base>[^/]+)$")


@pytest.fixture
def browser() -> Client:
    """A client that, like a browser, must send the form's CSRF token."""
    return Client(enforce_csrf_checks=True)


def csrf_token(client: Client) -> str:
    page = client.get("/")
    assert page.status_code == 200
    match = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page.content)
    assert match, "the upload page has no CSRF token"
    return match.group(1).decode()


def upload(client: Client, filename: str, data: bytes, title: str = "") -> object:
    return client.post(
        "/",
        {
            "csrfmiddlewaretoken": csrf_token(client),
            "title": title,
            "file": SimpleUploadedFile(filename, data, content_type="text/plain"),
        },
    )


@pytest.mark.django_db
def test_upload_form_replicates_to_nginx_and_lighttpd(browser, real_servers, media_root):
    page = browser.get("/")
    assert b'enctype="multipart/form-data"' in page.content

    response = upload(browser, "cat.txt", b"meow\n", title="A cat")

    assert response.status_code == 302
    assert response["Location"] == "/"
    item = Upload.objects.get()
    assert str(item) == "A cat"
    match = NESTED_NAME.match(item.file.name)
    assert match and match.group("base") == "cat.txt", item.file.name
    assert (media_root / item.file.name).read_bytes() == b"meow\n"
    for server in real_servers:  # nginx creates the parents; lighttpd needed MKCOL
        assert server.read(item.file.name) == b"meow\n", server.kind
    listing = browser.get("/")
    assert f'href="/media/{item.file.name}"'.encode() in listing.content
    assert b"Uploaded uploads/" in listing.content  # the success message
    assert not PendingReplication.objects.exists()


@pytest.mark.django_db
def test_upload_without_csrf_token_is_refused(browser, real_servers):
    response = browser.post("/", {"file": SimpleUploadedFile("x.txt", b"x")})

    assert response.status_code == 403
    assert not Upload.objects.exists()
    assert all(server.names() == [] for server in real_servers)


@pytest.mark.django_db(transaction=True)  # the file goes on commit
def test_delete_button_removes_the_row_and_every_copy(browser, real_servers, media_root):
    upload(browser, "gone.txt", b"soon gone")
    item = Upload.objects.get()
    name = item.file.name
    assert all(server.exists(name) for server in real_servers)

    assert browser.get(f"/{item.pk}/delete/").status_code == 405  # POST only
    response = browser.post(f"/{item.pk}/delete/", {"csrfmiddlewaretoken": csrf_token(browser)})

    assert response.status_code == 302
    assert not Upload.objects.exists()
    assert not (media_root / name).exists()
    for server in real_servers:
        assert server.read(name) is None, server.kind
    assert b"Deleted uploads/" in browser.get("/").content


@pytest.mark.django_db
def test_failed_replication_is_reported_and_not_saved(
    browser, start_media_server, use_media_servers
):
    """With RESTO_FATAL_EXCEPTIONS on (the default), the visitor is told, no row is saved."""
    healthy, failing = start_media_server("test"), start_media_server("test-strict")
    use_media_servers([healthy, failing])
    failing.force_status(503, methods="PUT")

    response = upload(browser, "late.txt", b"late")

    assert response.status_code == 502
    assert b"could not be stored on every media server" in response.content
    assert failing.host.encode() in response.content
    assert not Upload.objects.exists()
    # The failure is journaled: process_failed_media will bring the host in line.
    assert PendingReplication.objects.filter(host=failing.host, operation="PUT").exists()


@pytest.mark.django_db(transaction=True)  # the file goes on commit
def test_failed_delete_warns_and_is_journaled(browser, start_media_server, use_media_servers):
    servers = [start_media_server("test"), start_media_server("test")]
    use_media_servers(servers)
    upload(browser, "stuck.txt", b"stuck")
    item = Upload.objects.get()
    servers[1].fail_next(503, methods="DELETE")

    response = browser.post(
        f"/{item.pk}/delete/", {"csrfmiddlewaretoken": csrf_token(browser)}, follow=True
    )

    assert response.status_code == 200
    assert b"not yet on every media server" in response.content
    assert not Upload.objects.exists()
    assert servers[0].read(item.file.name) is None
    assert servers[1].read(item.file.name) == b"stuck"
    assert PendingReplication.objects.filter(host=servers[1].host, operation="DELETE").exists()


@pytest.mark.django_db(transaction=True)  # the file goes on commit
def test_admin_lists_and_deletes_uploads_everywhere(admin_client, real_servers, media_root):
    assert admin.site.is_registered(Upload)
    item = Upload(title="from the admin")
    item.file.save("admin.txt", SimpleUploadedFile("admin.txt", b"admin"), save=True)
    name = item.file.name
    assert all(server.read(name) == b"admin" for server in real_servers)

    changelist = admin_client.get("/admin/gallery/upload/")
    assert changelist.status_code == 200
    assert b"from the admin" in changelist.content
    assert admin_client.get(f"/admin/gallery/upload/{item.pk}/change/").status_code == 200

    response = admin_client.post(f"/admin/gallery/upload/{item.pk}/delete/", {"post": "yes"})

    assert response.status_code == 302
    assert not Upload.objects.exists()
    assert not (media_root / name).exists()
    assert all(server.read(name) is None for server in real_servers)


@pytest.mark.django_db
def test_system_checks_pass_with_media_hosts(real_servers, capsys):
    call_command("check", "--fail-level", "WARNING")


# --- settings from the environment -----------------------------------------------------


def read_settings(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Import mysite.settings in a fresh interpreter with only these variables (and PATH)."""
    code = (
        "import json, mysite.settings as s; "
        "print(json.dumps({'storages': s.STORAGES, 'debug': s.DEBUG, "
        "'allowed_hosts': s.ALLOWED_HOSTS, 'database': s.DATABASES['default']['NAME'], "
        "'media_root': s.MEDIA_ROOT, 'media_url': s.MEDIA_URL, "
        "'secure_cookies': getattr(s, 'SESSION_COOKIE_SECURE', False), "
        "'csrf_trusted_origins': s.CSRF_TRUSTED_ORIGINS}))"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=EXAMPLE_DIR,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_settings_come_from_the_environment(tmp_path):
    result = read_settings(
        {
            "DJANGO_SECRET_KEY": "k",
            "ALLOWED_HOSTS": "www.example.com, example.com",
            "DATABASE_PATH": str(tmp_path / "site.sqlite3"),
            "MEDIA_ROOT": "/srv/media",
            "MEDIA_URL": "https://media.example.com/media/",
            "RESTO_BACKEND": "async",
            "RESTO_MEDIA_HOSTS": "media-1:8080, https://media-2:8443",
            "RESTO_AUTH_USER": "uploader",
            "RESTO_AUTH_PASSWORD": "s3cret",
            "RESTO_FATAL_EXCEPTIONS": "off",
            "RESTO_MIN_REPLICAS": "1",
            "RESTO_TIMEOUT": "3.5",
            "HTTPS": "yes",
            "CSRF_TRUSTED_ORIGINS": "https://www.example.com",
        }
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["debug"] is False
    assert found["allowed_hosts"] == ["www.example.com", "example.com"]
    assert found["secure_cookies"] is True
    assert found["csrf_trusted_origins"] == ["https://www.example.com"]
    assert found["database"] == str(tmp_path / "site.sqlite3")
    assert (found["media_root"], found["media_url"]) == (
        "/srv/media",
        "https://media.example.com/media/",
    )
    assert found["storages"]["default"] == {
        "BACKEND": "django_resto.storage.AsyncStorage",
        "OPTIONS": {
            "hosts": ["media-1:8080", "https://media-2:8443"],
            "timeout": 3.5,
            "fatal_exceptions": False,
            "min_replicas": 1,
            "auth": ["uploader", "s3cret"],
        },
    }


def test_settings_defaults_are_the_safe_ones():
    result = read_settings({"DJANGO_SECRET_KEY": "k"})
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["debug"] is False
    assert found["secure_cookies"] is False
    assert found["database"] == str(EXAMPLE_DIR / "db.sqlite3")
    assert found["media_url"] == "/media/"
    assert found["storages"]["default"] == {
        "BACKEND": "django_resto.storage.HybridStorage",
        "OPTIONS": {"hosts": [], "timeout": 2, "fatal_exceptions": True},
    }


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "Set DJANGO_SECRET_KEY"),
        ({"DJANGO_SECRET_KEY": "k", "DEBUG": "maybe"}, "DEBUG must be a boolean"),
        ({"DJANGO_SECRET_KEY": "k", "RESTO_BACKEND": "s3"}, "RESTO_BACKEND must be one of"),
        ({"DJANGO_SECRET_KEY": "k", "RESTO_AUTH_USER": "u"}, "RESTO_AUTH_PASSWORD"),
        ({"DJANGO_SECRET_KEY": "k", "RESTO_MIN_REPLICAS": "two"}, "must be a number"),
    ],
)
def test_bad_environment_is_refused_at_startup(env, message):
    result = read_settings(env)
    assert result.returncode != 0
    assert message in result.stderr


def test_debug_allows_running_without_a_secret_key():
    result = read_settings({"DEBUG": "1"})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["debug"] is True


# --- make demo ---------------------------------------------------------------------------


def processes_mentioning(text: str) -> list[str]:
    """Processes whose command line or environment mentions ``text`` (here: the demo's
    temporary directory, which every process it starts has in one or the other)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        for part in ("cmdline", "environ"):
            try:
                data = (entry / part).read_bytes()
            except OSError:
                continue
            if text.encode() in data:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
                found.append(f"{entry.name}: {command[:200]!r}")
                break
    return found


def run_demo(*args: str) -> tuple[int, str]:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE_DIR / "demo.py"), *args],
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    return result.returncode, result.stdout + result.stderr


def assert_nothing_left_behind(output: str, started: set[int]) -> None:
    """The ports the demo reported are closed, its directory and its processes are gone."""
    work_dir = re.search(r"work directory (\S+)", output).group(1)
    stopped = next(line for line in output.splitlines() if line.startswith("== Stopped:"))
    ports = [int(port) for port in re.findall(r"127\.0\.0\.1:(\d+)", stopped)]
    assert len(ports) in started, stopped
    for port in ports:
        with socket.socket() as sock:
            sock.settimeout(1)
            assert sock.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open"
    assert not Path(work_dir).exists()
    assert processes_mentioning(work_dir) == []


@pytest.mark.parametrize("media_servers", ["auto", "builtin"])
def test_demo_runs_and_leaves_nothing_behind(media_servers):
    returncode, output = run_demo("--media-servers", media_servers)

    assert returncode == 0, output
    assert "Demo OK" in output
    if media_servers == "auto":  # CI installs both, as for the library's own suite
        assert "nginx: real nginx" in output and "lighttpd: real lighttpd" in output, output
    else:
        assert output.count("TestHttpServer") >= 2
    assert output.count("= master copy") == 2
    assert output.count("in sync") == 4  # two hosts, audited after upload and delete
    assert_nothing_left_behind(output, started={3})  # two media servers and the site


def test_demo_cut_short_fails_and_still_cleans_up():
    returncode, output = run_demo("--deadline", "1")

    assert returncode == 1, output
    assert "did not finish within 1s" in output
    assert "Demo FAILED" in output
    # Both media servers were up; the site usually was not (migrate takes longer).
    assert_nothing_left_behind(output, started={2, 3})
