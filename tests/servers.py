"""Real nginx and lighttpd media servers on loopback, and pytest fixtures for all servers.

``NginxDav`` and ``LighttpdDav`` start the Debian binaries as child processes on a free
127.0.0.1 port, with their configuration, logs, temporary directories and document root in
a fresh directory below ``tmp_dir``. They offer the same interface as
``django_resto.http_server.TestHttpServer`` where it makes sense (``host``, ``url``,
``root``, ``path``, ``read``, ``exists``, ``write``, ``files``, ``names``, ``strict``,
``listing_prefix``, ``start``, ``stop``, ``restart``, context manager), so a test can be
parametrized over the four kinds of media server.

Their configuration is the one roles/nginx_dav and roles/lighttpd_dav deploy, rendered
from the roles' templates by tests/role_configs.py with the roles' defaults and, as
inventory variables, what one test server must change: the loopback address and port, the
media root, the upload buffer, the pid file and the logs in the server's directory, the
credentials and the TLS files a test asks for. ``role_vars`` adds or replaces role
variables (``nginx_dav_front_enabled``, ``media_dav_trusted_networks``, ...); the roles'
own checks and argument specs validate them, as in a play.

The servers run in their own process group. ``stop()`` (also called by ``__exit__``, the
fixtures' teardown and, as a last resort, a ``weakref.finalize`` hook at garbage collection
or interpreter exit) sends SIGTERM to the group, then SIGKILL after a bounded wait, so no
nginx worker outlives a failed test.

The roles make the servers write as www-data. A test server writes as the user that runs
the tests instead: pytest's ``tmp_path`` (``/tmp/pytest-of-root`` is mode 0700) is not
www-data's to write, and pytest must be able to clean the tree up. As root (our
containers and CI), nginx's main configuration (the test's own, around the role's site)
says ``user root root;``, since nginx would otherwise drop its workers to ``nobody``, and
PUT would answer 500 (``rename() ... Permission denied``); lighttpd gets
``lighttpd_dav_user`` and ``lighttpd_dav_group`` empty, so it stays the user that started
it (it refuses to switch to uid 0). As a non-root user, both simply run as that user.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import pytest

from django_resto.testing import TestHttpServer
from tests import role_configs

__all__ = [
    "MEDIA_SERVER_KINDS",
    "LighttpdDav",
    "MediaServer",
    "MediaServerPool",
    "NginxDav",
    "RealServerError",
    "TlsFiles",
    "free_port",
    "lighttpd_dav",
    "make_tls_files",
    "media_server_factory",
    "nginx_dav",
    "resto_test_server",
    "tls_files",
]

#: The kinds ``media_server_factory`` accepts.
MEDIA_SERVER_KINDS = ("test", "test-strict", "nginx", "lighttpd")

STARTUP_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
REALM = "django_resto"


class RealServerError(RuntimeError):
    """A real server binary is missing, or did not start / stop as expected."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the servers are told to bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _find_binary(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")
    if found is None:
        package = "nginx-light (or nginx)" if name == "nginx" else "lighttpd lighttpd-mod-webdav"
        raise RealServerError(
            f"{name} binary not found in PATH or /usr/sbin: install it "
            f"(apt-get install {package}); the real-server tests need it."
        )
    return found


def _answers_as(port: int, product: str, ssl_context: ssl.SSLContext | None = None) -> bool:
    """Whether ``product`` (nginx, lighttpd) answers HTTP on the port.

    Checking the Server header, not just that the port accepts connections, guards against
    another process that took the port between ``free_port()`` and our server's bind.
    With ``ssl_context`` the probe speaks HTTPS.
    """
    connection: http.client.HTTPConnection
    if ssl_context is None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    else:
        connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=1, context=ssl_context)
    try:
        connection.request("HEAD", "/_resto_readiness_probe")
        response = connection.getresponse()
        response.read()
        return response.getheader("Server", "").startswith(product)
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """Terminate the process group we created for ``process``, bounded in time.

    The group is signalled while the leader is still unreaped (a zombie at worst), so its
    id cannot have been reused by an unrelated process.
    """
    if process.returncode is not None:
        return
    pgid = process.pid  # start_new_session=True: the leader's pid is the group id
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline:
        # WNOWAIT: learn that the leader exited without reaping it yet.
        info = os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if info is not None:
            break
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)  # leftover workers, or a leader that ignored TERM
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired as error:  # pragma: no cover - SIGKILL is not ignorable
        raise RealServerError(f"process {process.pid} did not die after SIGKILL") from error


# -- TLS ---------------------------------------------------------------------------------

TLS_DAYS = 2  # throwaway certificates: valid long enough for one test run


@dataclass(frozen=True)
class TlsFiles:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it (PEM files).

    ``ca_dir`` holds the CA certificate under its subject hash (``<hash>.0``, what
    ``openssl rehash`` / ``c_rehash`` would create), so it works as an OpenSSL CApath:
    ``ssl.create_default_context(capath=...)`` and requests' ``verify=<directory>``.
    """

    ca_cert: Path
    ca_key: Path
    ca_dir: Path
    cert: Path
    key: Path


def _openssl(binary: str, *args: str | os.PathLike[str], cwd: Path) -> str:
    result = subprocess.run(
        [binary, *map(str, args)],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        command = " ".join(["openssl", *map(str, args)])
        raise RealServerError(
            f"{command} failed with status {result.returncode}:\n{result.stderr.strip()}"
        )
    return result.stdout


def make_tls_files(
    directory: str | os.PathLike[str],
    subject_alt_names: str = "IP:127.0.0.1, DNS:localhost",
) -> TlsFiles:
    """Create, with the ``openssl`` CLI, a CA and a certificate for 127.0.0.1 in ``directory``.

    The server certificate has ``subjectAltName = IP:127.0.0.1, DNS:localhost`` (clients
    match the SAN, not the CN; pass other ``subject_alt_names`` for a certificate that does
    not match), ``extendedKeyUsage = serverAuth`` and key identifiers, so it also passes
    OpenSSL's strict X.509 checks (Python 3.13's default). Keys are ECDSA P-256:
    generating them takes milliseconds. Each call makes a new CA. Raises
    ``RealServerError`` when openssl is missing (CI installs it: the TLS tests fail
    rather than skip).
    """
    binary = shutil.which("openssl")
    if binary is None:
        raise RealServerError(
            "openssl binary not found in PATH: install it (apt-get install openssl); "
            "the TLS tests need it to create their throwaway CA and certificate."
        )
    work = Path(directory)
    work.mkdir(parents=True, exist_ok=True)
    # One config file for everything: nothing depends on the system's openssl.cnf.
    config = work / "openssl.cnf"
    config.write_text(
        f"""\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = django_resto test CA
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[v3_server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = {subject_alt_names}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"""
    )
    ca_key, ca_cert = work / "ca.key", work / "ca.pem"
    key, csr, cert = work / "server.key", work / "server.csr", work / "server.pem"
    curve = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl(
        binary, "req", "-config", config, "-x509", *curve, "-keyout", ca_key, "-out", ca_cert,
        "-days", str(TLS_DAYS), "-extensions", "v3_ca", cwd=work,
    )  # fmt: skip
    _openssl(
        binary, "req", "-config", config, "-new", *curve, "-keyout", key, "-out", csr,
        "-subj", "/CN=127.0.0.1", cwd=work,
    )  # fmt: skip
    _openssl(
        binary, "x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key,
        "-set_serial", str(int.from_bytes(os.urandom(8), "big")), "-days", str(TLS_DAYS),
        "-extfile", config, "-extensions", "v3_server", "-out", cert, cwd=work,
    )  # fmt: skip
    subject_hash = _openssl(binary, "x509", "-hash", "-noout", "-in", ca_cert, cwd=work).strip()
    ca_dir = work / "ca-dir"
    ca_dir.mkdir(exist_ok=True)
    shutil.copyfile(ca_cert, ca_dir / f"{subject_hash}.0")
    return TlsFiles(ca_cert=ca_cert, ca_key=ca_key, ca_dir=ca_dir, cert=cert, key=key)


class _RealServer:
    """Common part of NginxDav and LighttpdDav: directories, process, file helpers."""

    kind = ""
    binary_name = ""
    strict = False

    def __init__(
        self,
        tmp_dir: str | os.PathLike[str],
        base_path: str = "/media/",
        credentials: tuple[str, str] | None = None,
        *,
        port: int = 0,
        role_vars: Mapping[str, Any] | None = None,
    ) -> None:
        if not base_path.startswith("/"):
            raise ValueError(f"base_path must start with '/', got {base_path!r}")
        self.base_path = base_path if base_path.endswith("/") else base_path + "/"
        self.credentials = credentials
        self.role_vars = dict(role_vars or {})
        self.work_dir = Path(tempfile.mkdtemp(prefix=f"{self.kind}-", dir=tmp_dir))
        self.docroot = self.work_dir / "htdocs"
        # The media root (media_dav_root) is docroot + base_path: URLs under base_path and
        # file names below root match one to one, and with base_path "/" root is docroot.
        self._root = self.docroot.joinpath(*[p for p in self.base_path.split("/") if p])
        # The upload buffer (media_dav_upload_temp_path): outside the root, on its filesystem.
        self.temp_dir = self.work_dir / "tmp"
        self.config_file = self.work_dir / f"{self.kind}.conf"
        self.pid_file = self.work_dir / f"{self.kind}.pid"
        self.password_file = self.work_dir / "htpasswd"
        self.error_log = self.work_dir / "error.log"
        self.access_log = self.work_dir / "access.log"
        self.output_log = self.work_dir / "output.log"  # the process's stdout and stderr
        self._root.mkdir(parents=True)
        self.temp_dir.mkdir()
        self._port = port
        self._process: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    # -- configuration -------------------------------------------------------------------

    def role_variables(self) -> dict[str, Any]:
        """The inventory variables of this server: media_dav's, then the subclass's, then
        ``role_vars``."""
        variables: dict[str, Any] = {
            "media_dav_listen_address": "127.0.0.1",
            "media_dav_port": self._port,
            "media_dav_root": str(self._root),
            "media_dav_url_prefix": self.base_path,
            "media_dav_upload_temp_path": str(self.temp_dir),
            # Tests upload files of several MiB; the roles' default is 64.
            "media_dav_max_upload_mib": 1024,
            "media_dav_auth_realm": REALM,
            "media_dav_htpasswd_path": str(self.password_file),
        }
        if self.credentials is not None:
            user, password = self.credentials
            variables.update(media_dav_write_user=user, media_dav_write_password=password)
        variables.update(self.server_variables())
        variables.update(self.role_vars)
        return variables

    def server_variables(self) -> dict[str, Any]:  # pragma: no cover - abstract
        """The web server's own role variables."""
        raise NotImplementedError

    def config(self) -> str:  # pragma: no cover - abstract
        """The configuration file's text, rendered from the role."""
        raise NotImplementedError

    def command(self) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def write_password_file(self, user: str, password: str) -> None:
        """Write the htpasswd file as roles/media_dav does: an apr1 (Apache MD5) hash,
        which both servers read (made with the openssl CLI, as the TLS files are)."""
        binary = shutil.which("openssl")
        if binary is None:
            raise RealServerError(
                "openssl binary not found in PATH: install it (apt-get install openssl); "
                "the credentials tests need it to hash the password as the roles do."
            )
        result = subprocess.run(
            [binary, "passwd", "-apr1", "-stdin"],
            input=password + "\n",
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise RealServerError(f"openssl passwd -apr1 failed: {result.stderr.strip()}")
        self.password_file.write_text(f"{user}:{result.stdout.strip()}\n")

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> Self:
        """Start the server and wait until it accepts connections."""
        if self._process is not None:
            raise RealServerError(f"{self.kind} is already running")
        self.binary = _find_binary(self.binary_name)
        pick_port = self._port == 0
        for attempt in range(3):
            if pick_port:
                self._port = free_port()
            try:
                self._spawn()
                return self
            except RealServerError:
                # Another process may have taken the port between free_port() and the bind.
                if pick_port and attempt < 2 and "in use" in self.logs():
                    continue
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _spawn(self) -> None:
        try:
            text = self.config()
        except role_configs.RoleCheckError as error:
            raise RealServerError(f"{self.kind}: the role refuses the variables: {error}") from None
        self.config_file.write_text(text)
        if self.credentials is not None:
            user, password = self.credentials
            self.write_password_file(user, password)
        for log in (self.output_log, self.error_log):
            log.write_bytes(b"")
        with self.output_log.open("ab") as output:
            process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() kills workers too
                cwd=self.work_dir,
            )
        self._process = process
        self._finalizer = weakref.finalize(self, _kill_group, process)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self._forget_process()
                raise RealServerError(
                    f"{self.kind} exited with status {process.returncode} at startup.\n"
                    + self.logs()
                )
            if self._answers():
                return
            time.sleep(0.05)
        self.stop()
        raise RealServerError(
            f"{self.kind} did not listen on 127.0.0.1:{self._port} within "
            f"{STARTUP_TIMEOUT:.0f}s.\n" + self.logs()
        )

    def _answers(self) -> bool:
        """Whether our server answers on its port (the readiness probe)."""
        return _answers_as(self._port, self.binary_name)

    def stop(self) -> None:
        """Stop the server (process group), bounded in time; the files stay on disk."""
        process = self._process
        if process is None:
            return
        try:
            _kill_group(process)
        finally:
            self._forget_process()

    def _forget_process(self) -> None:
        if self._finalizer is not None:
            self._finalizer.detach()
        self._process = self._finalizer = None

    def restart(self) -> Self:
        """Stop and start again on the same port, with the same files."""
        self.stop()
        return self.start()

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The main process id, while running."""
        return None if self._process is None else self._process.pid

    def logs(self) -> str:
        """The server's output and error log, for assertion messages."""
        parts = []
        for log in (self.output_log, self.error_log):
            text = log.read_text(errors="replace") if log.exists() else ""
            parts.append(f"--- {log.name} ---\n{text.strip() or '(empty)'}")
        parts.append(f"--- {self.config_file.name} ---\n{self._safe_config()}")
        return "\n".join(parts)

    def _safe_config(self) -> str:
        try:
            return self.config_file.read_text()
        except OSError:
            return "(not written)"

    def __enter__(self) -> Self:
        if self._process is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- addresses -----------------------------------------------------------------------

    @property
    def port(self) -> int:
        if not self._port:
            raise RealServerError("the port is known once the server has started")
        return self._port

    @property
    def host(self) -> str:
        """``"127.0.0.1:PORT"``, as in the library's ``hosts`` setting."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    listing_prefix: str | None = None

    # -- files ---------------------------------------------------------------------------

    @property
    def root(self) -> Path:
        """The directory holding the files served under ``base_path``."""
        return self._root

    def path(self, name: str) -> Path:
        parts = [part for part in name.split("/") if part]
        if name.startswith("/") or any(part in (".", "..") for part in parts):
            raise ValueError(f"{name!r} is not a relative name inside the server root")
        return self._root.joinpath(*parts)

    def read(self, name: str) -> bytes | None:
        try:
            return self.path(name).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def exists(self, name: str) -> bool:
        return self.path(name).exists()

    def write(self, name: str, data: bytes) -> Path:
        path = self.path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def names(self) -> list[str]:
        """Sorted relative names of every file below root."""
        names: list[str] = []
        for dirpath, _dirnames, filenames in os.walk(self._root):
            relative = Path(dirpath).relative_to(self._root)
            names.extend((relative / filename).as_posix() for filename in filenames)
        return sorted(names)

    def files(self) -> dict[str, bytes]:
        """``{relative name: content}`` of every file below root, sorted by name."""
        return {name: (self._root / name).read_bytes() for name in self.names()}

    def __repr__(self) -> str:
        state = self.url if self.running else "stopped"
        return f"<{type(self).__name__} {state} base_path={self.base_path!r}>"


#: The access log's format: $connection and $connection_requests let tests check that
#: clients reuse kept-alive connections; over TLS the line ends with tls=<protocol>.
NGINX_LOG_FORMAT = (
    '$remote_addr "$request" $status $body_bytes_sent '
    "connection=$connection requests=$connection_requests"
)


class NginxDav(_RealServer):
    """nginx serving roles/nginx_dav's site (``dav_methods PUT DELETE;
    create_full_put_path on;``).

    The media files are served under ``base_path``; an ``autoindex_format json`` listing of
    the same root is served under ``/_resto/list/`` (``nginx_dav_listing_prefix``). With
    ``credentials``, every method but GET and HEAD on media, and the listing, need HTTP
    Basic auth; loopback is trusted (the role's default ``media_dav_trusted_networks``).

    With ``tls`` (see ``make_tls_files``) nginx speaks only HTTPS on its port, with that
    certificate; ``host`` and ``url`` are then ``https://127.0.0.1:PORT`` (a host in the
    library's URL form) and the access log ends with ``tls=<protocol>``. ``tls_protocols``
    is nginx's ``ssl_protocols``, which Debian's nginx.conf sets in its http block (to
    TLSv1 to TLSv1.3); here both TLS 1.2 and 1.3 by default.
    """

    kind = "nginx"
    binary_name = "nginx"
    strict = False
    listing_prefix = "/_resto/list/"

    def __init__(
        self,
        tmp_dir: str | os.PathLike[str],
        base_path: str = "/media/",
        credentials: tuple[str, str] | None = None,
        *,
        port: int = 0,
        tls: TlsFiles | None = None,
        tls_protocols: str = "TLSv1.2 TLSv1.3",
        role_vars: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(tmp_dir, base_path, credentials, port=port, role_vars=role_vars)
        self.tls = tls
        self.tls_protocols = tls_protocols
        self.listing_prefix = self.role_vars.get("nginx_dav_listing_prefix", self.listing_prefix)

    @property
    def host(self) -> str:
        if self.tls is None:
            return super().host
        return f"https://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        if self.tls is None:
            return super().url
        return self.host

    def _answers(self) -> bool:
        if self.tls is None:
            return super()._answers()
        # Readiness only: tests may give a certificate that does not match on purpose.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return _answers_as(self._port, self.binary_name, ssl_context=context)

    def command(self) -> list[str]:
        # -e: the error log from the very start (before the config is read); -p: prefix for
        # relative paths, so nothing falls back to /var/lib/nginx or /var/log/nginx.
        return [
            self.binary,
            "-p",
            f"{self.work_dir}/",
            "-e",
            str(self.error_log),
            "-c",
            str(self.config_file),
        ]

    def server_variables(self) -> dict[str, Any]:
        variables: dict[str, Any] = {
            "nginx_dav_access_log": str(self.access_log),
            "nginx_dav_access_log_format": "resto",
            "nginx_dav_error_log": str(self.error_log),
        }
        if self.tls is not None:
            variables.update(
                media_dav_tls_certificate=str(self.tls.cert),
                media_dav_tls_certificate_key=str(self.tls.key),
            )
        return variables

    def config(self) -> str:
        site = role_configs.nginx_site(self.role_variables())
        log_format = NGINX_LOG_FORMAT + (" tls=$ssl_protocol" if self.tls is not None else "")
        main = role_configs.NginxMain(
            pid_file=self.pid_file,
            error_log=self.error_log,
            temp_dir=self.temp_dir,
            user="root root" if os.geteuid() == 0 else None,  # see the module docstring
            ssl_protocols=self.tls_protocols if self.tls is not None else None,
            log_formats={"resto": log_format},
            # Benchmarks and keep-alive tests send many requests on one connection.
            keepalive_requests=100_000,
        )
        return role_configs.nginx_main_config(site, main)


class LighttpdDav(_RealServer):
    """lighttpd 1.4 with roles/lighttpd_dav's lighttpd.conf: mod_webdav under ``base_path``
    (strict WebDAV).

    PUT into a missing collection answers 409; MKCOL and PROPFIND (Depth 0/1) work. With
    ``credentials``, every method but GET and HEAD needs HTTP Basic auth; loopback is
    trusted (the role's default ``media_dav_trusted_networks``).
    """

    kind = "lighttpd"
    binary_name = "lighttpd"
    strict = True
    listing_prefix = None

    def command(self) -> list[str]:
        return [self.binary, "-D", "-f", str(self.config_file)]

    def server_variables(self) -> dict[str, Any]:
        return {
            # Stay the user that runs the tests (see the module docstring).
            "lighttpd_dav_user": "",
            "lighttpd_dav_group": "",
            "lighttpd_dav_pid_file": str(self.pid_file),
            "lighttpd_dav_error_log": str(self.error_log),
            "lighttpd_dav_access_log": str(self.access_log),
        }

    def config(self) -> str:
        return role_configs.lighttpd_config(self.role_variables())


# -- pytest fixtures ---------------------------------------------------------------------

MediaServer = TestHttpServer | NginxDav | LighttpdDav


class MediaServerPool:
    """Starts media servers of any kind and stops them all at once (the factory fixture's
    engine, usable without pytest fixtures too)."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self._tmp_path_factory = tmp_path_factory
        self.servers: list[MediaServer] = []

    def make(
        self,
        kind: str = "test",
        *,
        base_path: str = "/media/",
        credentials: tuple[str, str] | None = None,
        **kwargs: Any,
    ) -> MediaServer:
        """Return a started server of ``kind`` (one of ``MEDIA_SERVER_KINDS``)."""
        server: MediaServer
        if kind in ("test", "test-strict"):
            server = TestHttpServer(
                strict=kind == "test-strict",
                base_path=base_path,
                credentials=credentials,
                **kwargs,
            )
        elif kind in ("nginx", "lighttpd"):
            cls = NginxDav if kind == "nginx" else LighttpdDav
            tmp_dir = self._tmp_path_factory.mktemp(kind)
            server = cls(tmp_dir, base_path=base_path, credentials=credentials, **kwargs)
        else:
            raise ValueError(f"unknown media server kind {kind!r}, not in {MEDIA_SERVER_KINDS}")
        self.servers.append(server)
        try:
            server.start()
        except RealServerError as error:
            # Fail, never skip: CI installs nginx and lighttpd, so this is a real problem.
            pytest.fail(str(error), pytrace=False)
        return server

    def stop_all(self) -> None:
        """Stop every server (all of them, even if one fails), then raise the first error."""
        errors = []
        for server in reversed(self.servers):
            try:
                server.stop()
            except Exception as error:
                errors.append(error)
        if errors:
            raise errors[0]


@pytest.fixture
def media_server_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., MediaServer]]:
    """Return ``make(kind="test", *, base_path="/media/", credentials=None, **kwargs)``.

    ``kind`` is one of ``MEDIA_SERVER_KINDS``: "test" (TestHttpServer, nginx-like),
    "test-strict" (TestHttpServer, lighttpd-like), "nginx" or "lighttpd" (real processes).
    Each call returns a started server; all are stopped at teardown. A missing nginx or
    lighttpd binary makes the test fail with a clear message (CI installs them), never
    skip. Extra keyword arguments go to the server class (e.g. ``root=`` for TestHttpServer,
    ``port=`` for the real ones).
    """
    pool = MediaServerPool(tmp_path_factory)
    try:
        yield pool.make
    finally:
        pool.stop_all()


@pytest.fixture
def resto_test_server(media_server_factory: Callable[..., MediaServer]) -> MediaServer:
    """A started permissive ``TestHttpServer`` with ``base_path="/media/"``."""
    return media_server_factory("test")


@pytest.fixture
def nginx_dav(media_server_factory: Callable[..., MediaServer]) -> MediaServer:
    """A started real nginx (``NginxDav``) with ``base_path="/media/"``."""
    return media_server_factory("nginx")


@pytest.fixture
def lighttpd_dav(media_server_factory: Callable[..., MediaServer]) -> MediaServer:
    """A started real lighttpd (``LighttpdDav``) with ``base_path="/media/"``."""
    return media_server_factory("lighttpd")


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A throwaway CA and a 127.0.0.1 certificate (``make_tls_files``), once per session.

    Pass it to ``media_server_factory("nginx", tls=tls_files)`` for an HTTPS nginx. A
    missing openssl fails the test with a clear message (CI installs it), never skips.
    """
    try:
        return make_tls_files(tmp_path_factory.mktemp("tls"))
    except RealServerError as error:
        pytest.fail(str(error), pytrace=False)
