#!/usr/bin/env python
"""``make demo``: django_resto's main job, end to end, on this machine, in a few seconds.

What it shows is what a user deploys: the example site (``example/``) takes an upload
through its form over real HTTP; django_resto writes the master copy and PUTs the file to
two media servers; each server then serves the same bytes; ``manage.py resto_sync`` audits
the servers against the master copy; the site's delete button removes the file everywhere.

The media servers are a real nginx (``dav_methods PUT DELETE; create_full_put_path on``)
and a real lighttpd (mod_webdav, strict: nested names need MKCOL), started on loopback by
``tests/servers.py``, when their binaries are installed; otherwise the library's own
``TestHttpServer`` stands in, in the same permissive or strict mode, and the demo says so.
Writes need HTTP Basic credentials, as on a production media server.

Everything lives in one temporary directory (database, master copy, server roots and
logs) and every process in its own process group. The ``finally`` blocks stop them all and
remove the directory whatever happens, including Ctrl-C, SIGTERM and the overall deadline
(``--deadline``), and the demo checks that the ports it used are closed before it exits.
Exit status 0 only if the file reached, and then left, every media server and the audits
found no difference.

Usage: ``python example/demo.py [--media-servers auto|builtin] [--deadline SECONDS]``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import html
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EXAMPLE_DIR = Path(__file__).resolve().parent
REPO_DIR = EXAMPLE_DIR.parent
# This checkout's django_resto and its real-server launchers, whatever the virtualenv has.
sys.path.insert(0, str(REPO_DIR))

import requests  # noqa: E402

from django_resto.testing import TestHttpServer  # noqa: E402
from tests.servers import LighttpdDav, NginxDav, RealServerError, free_port  # noqa: E402

#: Seconds for one HTTP request, one management command, the site to start or stop.
HTTP_TIMEOUT = 10
COMMAND_TIMEOUT = 60
STARTUP_TIMEOUT = 20
STOP_TIMEOUT = 5
#: The whole demo, after which it stops everything and fails.
DEFAULT_DEADLINE = 120

#: Environment variables the example settings read: cleared, so the caller's own
#: configuration cannot leak into the demo.
SETTINGS_VARIABLES = (
    "DJANGO_SETTINGS_MODULE",
    "DJANGO_SECRET_KEY",
    "DEBUG",
    "ALLOWED_HOSTS",
    "CSRF_TRUSTED_ORIGINS",
    "HTTPS",
    "DATABASE_PATH",
    "MEDIA_ROOT",
    "MEDIA_URL",
    "STATIC_ROOT",
    "RESTO_BACKEND",
    "RESTO_MEDIA_HOSTS",
    "RESTO_AUTH_USER",
    "RESTO_AUTH_PASSWORD",
    "RESTO_FATAL_EXCEPTIONS",
    "RESTO_MIN_REPLICAS",
    "RESTO_TIMEOUT",
    "RESTO_LISTING_PREFIX",
    "LOG_LEVEL",
)


class DemoFailed(Exception):
    """A step did not give the expected result; the message says which and why."""


class Deadline(Exception):
    """The demo ran longer than ``--deadline``: stop everything rather than hang."""


def say(message: str = "") -> None:
    """Print a line now; a closed stdout (``make demo | head``) must not stop the cleanup."""
    try:
        print(message, flush=True)
    except BrokenPipeError:
        # Later prints go nowhere instead of raising again (see Python's signal docs).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def check(ok: bool) -> str:
    return "ok" if ok else "FAILED"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def port_is_closed(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) != 0


class Cleanup:
    """What the demo started, so that ``main`` can stop all of it in one ``finally``.

    Each stop is idempotent, and ``close`` runs every one of them even if another fails
    or the deadline interrupted the step that would have stopped it.
    """

    def __init__(self) -> None:
        self.started: list[tuple[str, int, Any]] = []  # (label, port, stop)

    def add(self, label: str, port: int, stop: Any) -> None:
        self.started.append((label, port, stop))

    def close(self) -> list[str]:
        errors = []
        for label, _port, stop in reversed(self.started):
            try:
                stop()
            except Exception as error:
                errors.append(f"stopping {label}: {error}")
        return errors

    def ports_closed(self) -> bool:
        return all(port_is_closed(port) for _label, port, _stop in self.started)

    def __str__(self) -> str:
        return ", ".join(f"{label} 127.0.0.1:{port}" for label, port, _ in self.started)


# --- media servers -------------------------------------------------------------------


@dataclass
class MediaServer:
    name: str  # short: "nginx", "lighttpd", "builtin-nginx", "builtin-lighttpd"
    label: str  # what it is, and why the built-in server stood in, if it did
    server: Any  # NginxDav, LighttpdDav or TestHttpServer: the same interface

    @property
    def port(self) -> int:
        return int(self.server.port)


def start_media_server(
    kind: str, work: Path, credentials: tuple[str, str], use_real: bool
) -> MediaServer:
    """Start the real ``kind`` (nginx, lighttpd) if possible, else a TestHttpServer like it.

    A missing binary or module is not an error: the demo must run on a fresh clone, and
    the built-in server speaks the same WebDAV dialect. What was used is always printed.
    """
    strict = kind == "lighttpd"
    reason = "--media-servers builtin"
    if use_real:
        cls = LighttpdDav if strict else NginxDav
        real = cls(work, base_path="/media/", credentials=credentials)
        try:
            real.start()
            return MediaServer(kind, f"real {_version(real.binary, kind)}", real)
        except RealServerError as error:
            # The first line says what is missing and how to install it.
            reason = str(error).splitlines()[0].split("; the real-server tests")[0]
        except BaseException:
            real.stop()  # interrupted while waiting for it to listen: not yet in Cleanup
            raise
    builtin = TestHttpServer(
        strict=strict,
        base_path="/media/",
        root=work / f"builtin-{kind}",
        credentials=credentials,
    ).start()
    mode = "strict WebDAV, like lighttpd" if strict else "permissive, like nginx"
    label = f"django_resto's TestHttpServer ({mode}; {kind} not used: {reason})"
    return MediaServer(f"builtin-{kind}", label, builtin)


def _version(binary: str, kind: str) -> str:
    try:
        result = subprocess.run(
            [binary, "-v"], capture_output=True, text=True, timeout=STOP_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return kind
    found = re.search(rf"{kind}/([\w.]+)", result.stdout + result.stderr)
    return f"{kind} {found.group(1)}" if found else kind


WRITES = ("PUT", "DELETE", "MKCOL")
WRITE_LINE = re.compile(r'"(PUT|DELETE|MKCOL) (\S+) HTTP/[\d.]+" (\d{3})')


def writes_received(media: MediaServer, url_path: str) -> str:
    """The write requests the server answered for the upload, e.g. "MKCOL 201, PUT 201".

    Read from the server's own access log (the request log for TestHttpServer): what the
    media server saw, not what the library believes it sent. lighttpd flushes its log
    every couple of seconds, so wait, a bounded time, for the line of the final PUT.
    """
    server = media.server
    if isinstance(server, TestHttpServer):
        seen = [(r.method, r.path, str(r.status)) for r in server.requests]
    else:
        deadline = time.monotonic() + 5
        while True:
            log = server.access_log.read_text(errors="replace")
            seen = WRITE_LINE.findall(log)
            if ("PUT", url_path, "201") in seen or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    writes = [f"{method} {status}" for method, _path, status in seen if method in WRITES]
    return ", ".join(writes) or "none logged"


# --- the example site ----------------------------------------------------------------


def site_environment(tmp: Path, hosts: list[str], credentials: tuple[str, str]) -> dict[str, str]:
    """The example's settings, as a deployment would give them: environment variables only."""
    env = {key: value for key, value in os.environ.items() if key not in SETTINGS_VARIABLES}
    env.update(
        {
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_DIR), env.get("PYTHONPATH")])),
            "PYTHONUNBUFFERED": "1",
            "DJANGO_SETTINGS_MODULE": "mysite.settings",
            "DJANGO_SECRET_KEY": secrets.token_urlsafe(40),
            "DEBUG": "0",  # Django does not serve /media/: only the media servers do
            "ALLOWED_HOSTS": "127.0.0.1",
            "DATABASE_PATH": str(tmp / "db.sqlite3"),
            "MEDIA_ROOT": str(tmp / "master"),
            "MEDIA_URL": "/media/",
            "STATIC_ROOT": str(tmp / "static"),
            "RESTO_BACKEND": "hybrid",
            "RESTO_MEDIA_HOSTS": ",".join(hosts),
            "RESTO_AUTH_USER": credentials[0],
            "RESTO_AUTH_PASSWORD": credentials[1],
            "RESTO_FATAL_EXCEPTIONS": "1",
            "RESTO_TIMEOUT": "5",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }
    )
    return env


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=EXAMPLE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
        stdin=subprocess.DEVNULL,
    )


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Hold the deadline, SIGTERM and SIGINT while a process is started and registered.

    Delivered between the spawn and ``cleanup.add``, the exception would leave the
    process running, unknown to the cleanup (a runserver outlived a demo cut short at
    1 s that way). Held, it is raised as soon as the process is registered.
    """
    held = {signal.SIGALRM, signal.SIGTERM, signal.SIGINT}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, SIGKILL what is left after a bounded wait, reap the leader.

    The group is signalled while its leader is not yet reaped (a zombie at worst), so its
    id cannot have been reused by an unrelated process in between.
    """
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline:
        # WNOWAIT: learn that the leader exited, without reaping it yet.
        if os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
            break
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=STOP_TIMEOUT)


@contextlib.contextmanager
def running_site(
    env: dict[str, str], log_path: Path, cleanup: Cleanup
) -> Iterator[tuple[str, int]]:
    """Run the example with ``runserver --noreload`` on a free loopback port; yield its URL.

    ``--noreload`` keeps it to one process, in its own process group, so stopping it
    leaves nothing behind. A port taken between picking and binding is retried.
    """
    for attempt in range(3):
        port = free_port()
        with uninterrupted(), log_path.open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"],
                cwd=EXAMPLE_DIR,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            cleanup.add("site", port, lambda process=process: kill_group(process))
        try:
            url = f"http://127.0.0.1:{port}"
            if _wait_until_up(process, url):
                yield url, port
                return
            if attempt < 2 and "already in use" in log_path.read_text(errors="replace"):
                continue
            raise DemoFailed(
                f"the example site did not start on 127.0.0.1:{port}:\n"
                + log_path.read_text(errors="replace")
            )
        finally:
            kill_group(process)
    raise DemoFailed("no free port for the example site")  # pragma: no cover


def _wait_until_up(process: subprocess.Popen[bytes], url: str) -> bool:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    with requests.Session() as session:
        session.trust_env = False
        while time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(requests.RequestException):
                if session.get(url + "/", timeout=1).status_code == 200:
                    return True
            time.sleep(0.1)
    return False


# --- talking to the site like a browser ----------------------------------------------

ROW = re.compile(r'<tr id="upload-(\d+)">(.*?)</tr>', re.S)
LINK = re.compile(r'<a class="upload-link" href="([^"]+)" data-name="([^"]+)"')
ACTION = re.compile(r'<form class="inline" method="post" action="([^"]+)"')
CSRF = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')
ERRORS = re.compile(r'<ul class="errorlist[^"]*">(.*?)</ul>', re.S)


@dataclass
class Row:
    pk: int
    url: str  # the file's URL on the site, MEDIA_URL + name
    name: str  # the storage name, e.g. uploads/2026/11/demo-1a2b3c4d.txt
    delete_action: str


def rows(page: str) -> list[Row]:
    found = []
    for pk, body in ROW.findall(page):
        link, action = LINK.search(body), ACTION.search(body)
        if link and action:
            found.append(Row(int(pk), link.group(1), link.group(2), action.group(1)))
    return found


def csrf_token(page: str) -> str:
    match = CSRF.search(page)
    if match is None:
        raise DemoFailed("the upload page has no CSRF token")
    return match.group(1)


def errors_of(page: str) -> str:
    items = ERRORS.findall(page)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", item)).strip() for item in items)


# --- the demo ------------------------------------------------------------------------


def run(args: argparse.Namespace, tmp: Path, cleanup: Cleanup) -> bool:
    """Every step of the demo; True when everything replicated and audited clean."""
    credentials = ("resto", secrets.token_urlsafe(12))
    servers: list[MediaServer] = []
    say("== Media servers (loopback, writes need HTTP Basic credentials)")
    for kind in ("nginx", "lighttpd"):
        with uninterrupted():
            media = start_media_server(
                kind, tmp, credentials, use_real=args.media_servers == "auto"
            )
            cleanup.add(media.name, media.port, media.server.stop)
        servers.append(media)
        say(f"  {media.server.host}  {media.name}: {media.label}")
    hosts = [media.server.host for media in servers]
    env = site_environment(tmp, hosts, credentials)

    say("\n== Example site (example/, settings from the environment)")
    migrated = manage(env, "migrate", "--noinput")
    if migrated.returncode != 0:
        raise DemoFailed("migrate failed:\n" + migrated.stdout + migrated.stderr)
    say(f"  RESTO_MEDIA_HOSTS={env['RESTO_MEDIA_HOSTS']}  backend=HybridStorage")
    say(f"  migrate: ok (SQLite {env['DATABASE_PATH']})")
    with running_site(env, tmp / "runserver.log", cleanup) as (site, _port):
        say(f"  runserver --noreload: {site}/")
        return demo_upload(site, env, servers)


def demo_upload(site: str, env: dict[str, str], servers: list[MediaServer]) -> bool:
    master = Path(env["MEDIA_ROOT"])
    ok = True
    with requests.Session() as browser:
        browser.trust_env = False
        filename = f"demo-{secrets.token_hex(4)}.txt"
        data = f"Uploaded by `make demo` at {time.strftime('%Y-%m-%d %H:%M:%S')}.\n".encode()
        data += secrets.token_hex(2048).encode() + b"\n"  # 4 KiB that no cache could guess

        say(f"\n== Upload through the site's form (multipart POST {site}/)")
        page = browser.get(site + "/", timeout=HTTP_TIMEOUT)
        page.raise_for_status()
        response = browser.post(
            site + "/",
            data={"csrfmiddlewaretoken": csrf_token(page.text), "title": "make demo"},
            files={"file": (filename, data, "text/plain")},
            timeout=HTTP_TIMEOUT,
        )
        if response.status_code != 200 or not response.history:
            raise DemoFailed(
                f"the upload answered {response.status_code}: {errors_of(response.text)}"
            )
        row = next((row for row in rows(response.text) if row.name.endswith(filename)), None)
        if row is None:
            raise DemoFailed("the uploaded file is not listed on the site")
        local = master / row.name
        master_data = local.read_bytes()
        say(f"  {response.history[0].status_code} -> {row.url}")
        say(f"  master copy: {local}")
        say(f"               {len(master_data)} bytes, sha256 {sha256(master_data)}")
        ok &= master_data == data

        say("\n== The file on each media server (GET, as a browser would)")
        for media in servers:
            url = media.server.url + row.url
            answer = browser.get(url, timeout=HTTP_TIMEOUT)
            same = answer.status_code == 200 and answer.content == master_data
            ok &= same
            say(f"  {media.server.host}  {media.name}")
            say(f"    {url}")
            say(
                f"    {answer.status_code} {answer.headers.get('Server', '?')}: "
                f"{len(answer.content)} bytes, sha256 {sha256(answer.content)[:16]}... "
                f"{'= master copy' if same else '!= MASTER COPY'}"
            )
            say(f"    on disk: {media.server.path(row.name)}")
            say(f"    writes it received: {writes_received(media, row.url)}")

        say("\n== Sync audit: manage.py resto_sync --json --checksum")
        ok &= audit(env, servers, expected_files=1)

        say(f"\n== Delete through the site (POST {site}{row.delete_action})")
        response = browser.post(
            site + row.delete_action,
            data={"csrfmiddlewaretoken": csrf_token(response.text)},
            timeout=HTTP_TIMEOUT,
        )
        gone_from_site = response.status_code == 200 and all(
            other.pk != row.pk for other in rows(response.text)
        )
        ok &= gone_from_site and not local.exists()
        say(f"  site: {check(gone_from_site)}; master copy removed: {check(not local.exists())}")
        for media in servers:
            answer = browser.get(media.server.url + row.url, timeout=HTTP_TIMEOUT)
            gone = answer.status_code == 404
            ok &= gone
            say(f"  {media.server.host}  GET -> {answer.status_code}  {check(gone)}")

        say("\n== Sync audit after the delete")
        ok &= audit(env, servers, expected_files=0)
    return ok


def audit(env: dict[str, str], servers: list[MediaServer], expected_files: int) -> bool:
    """Run resto_sync as an operator would, and print its JSON verdict per host."""
    result = manage(env, "resto_sync", "--json", "--checksum")
    try:
        summary = json.loads(result.stdout)
    except json.JSONDecodeError:
        say(
            f"  resto_sync exited {result.returncode} without JSON:\n{result.stdout}{result.stderr}"
        )
        return False
    names = {media.server.host: media.name for media in servers}
    ok = result.returncode == 0 and summary.get("ok") is True
    for storage in summary.get("storages", []):
        say(
            f"  storage {storage['storage']!r} ({storage['backend']}): "
            f"{storage['reference_files']} file(s) in the master copy"
        )
        ok &= storage["reference_files"] == expected_files
        for host in storage["hosts"]:
            counts = host["counts"]
            say(
                f"    {host['host']}  {names.get(host['host'], '?'):<16} "
                f"files={host['remote_files']} missing={counts['missing']} "
                f"extra={counts['extra']} mismatched={counts['mismatched']} "
                f"(sha256 {counts['checksum_mismatched']})  "
                f"{'in sync' if host['ok'] else 'DIFFERENT'}  [{host['method']}]"
            )
    say(f"  exit status {result.returncode}: {check(ok)}")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--media-servers",
        choices=("auto", "builtin"),
        default="auto",
        help="auto: real nginx and lighttpd when installed (default); builtin: TestHttpServer.",
    )
    parser.add_argument(
        "--deadline",
        type=int,
        default=DEFAULT_DEADLINE,
        help=f"Stop and fail after this many seconds (default {DEFAULT_DEADLINE}).",
    )
    args = parser.parse_args(argv)

    def interrupt(signum: int, frame: object) -> None:
        raise Deadline() if signum == signal.SIGALRM else KeyboardInterrupt()

    signal.signal(signal.SIGALRM, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    signal.alarm(args.deadline)
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="resto-demo-"))
    cleanup = Cleanup()
    ok = False
    try:
        say(f"django_resto demo: Python {sys.version.split()[0]}, work directory {tmp}\n")
        ok = run(args, tmp, cleanup)
    except DemoFailed as error:
        say(f"\nFAILED: {error}")
    except (requests.RequestException, OSError) as error:
        say(f"\nFAILED: {type(error).__name__}: {error}")
    except Deadline:
        say(f"\nFAILED: the demo did not finish within {args.deadline}s")
    except KeyboardInterrupt:
        say("\nInterrupted.")
    finally:
        signal.alarm(0)
        errors = cleanup.close()
        shutil.rmtree(tmp, ignore_errors=True)
        closed = cleanup.ports_closed()
        say(
            f"\n== Stopped: {cleanup or 'nothing was started'}; "
            f"ports closed: {check(closed)}; removed {tmp}: {check(not tmp.exists())}"
        )
        for error in errors:
            say(f"  {error}")
        ok = ok and closed and not errors and not tmp.exists()
    say(f"\n{'Demo OK' if ok else 'Demo FAILED'} in {time.monotonic() - started:.1f}s.")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
