"""A throwaway PostgreSQL cluster for one test session (``RESTO_TEST_DB=postgresql``).

The suite starts its own server rather than use a system service: nothing has to be
configured on the machine, no other database can be touched, and a service already on
port 5432 (Debian's ``postgresql`` package starts one in some setups) does not matter.

``initdb`` makes a cluster in a temporary directory with trust authentication, and
``pg_ctl`` starts it on a free port of 127.0.0.1 (tests only talk to loopback), with its
Unix socket in the same directory. PostgreSQL refuses to run as root, so as root both
run as the ``postgres`` user (``runuser``), which then owns the directory. Durability is
switched off (``fsync=off``...): the cluster is deleted at the end of the session anyway,
and the suite commits often. ``stop()`` stops the server and deletes the directory.

The binaries are taken from ``RESTO_PG_BIN`` when set, else from the newest
``/usr/lib/postgresql/*/bin`` (Debian's layout), else from ``PATH``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

#: The superuser initdb creates; the tests connect as it (trust authentication).
USER = "postgres"
#: Settings for a disposable cluster: no durability, no background noise.
SERVER_OPTIONS = (
    "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
    "-c max_connections=200 -c log_min_messages=warning"
)


def find_bin_dir() -> Path:
    """The directory holding initdb and pg_ctl."""
    if configured := os.environ.get("RESTO_PG_BIN"):
        return Path(configured)
    versions = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if versions:
        newest = max(versions, key=lambda path: int(Path(path).parent.parent.name))
        return Path(newest).parent
    if found := shutil.which("initdb"):
        return Path(found).parent
    raise RuntimeError(
        "PostgreSQL's initdb was not found: apt-get install postgresql, or set RESTO_PG_BIN"
    )


def free_port() -> int:
    """A port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PostgresCluster:
    """One PostgreSQL server, in its own data directory, on 127.0.0.1:``port``."""

    host = "127.0.0.1"
    user = USER
    #: The database initdb creates, for connections outside the test database.
    database = "postgres"

    def __init__(self) -> None:
        self.bin_dir = find_bin_dir()
        self.port = 0
        self.data_dir = Path(tempfile.mkdtemp(prefix="django_resto_pg_"))
        self.log = self.data_dir.parent / f"{self.data_dir.name}.log"
        self.running = False

    def _run(self, *command: str) -> None:
        """Run a PostgreSQL binary, as the postgres user when we are root."""
        prefix = ["runuser", "-u", USER, "--"] if os.geteuid() == 0 else []
        result = subprocess.run(
            [*prefix, str(self.bin_dir / command[0]), *command[1:]],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            raise RuntimeError(
                f"{command[0]} failed ({result.returncode}):\n{result.stdout}{result.stderr}{log}"
            )

    def start(self) -> PostgresCluster:
        """initdb, then start the server; on failure, leave nothing behind."""
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> PostgresCluster:
        if os.geteuid() == 0:
            # initdb as postgres needs to own the directory and to write the log next to it.
            try:
                account = pwd.getpwnam(USER)
            except KeyError:
                raise RuntimeError(
                    f"PostgreSQL refuses to run as root and there is no {USER!r} user to run "
                    "it as: apt-get install postgresql (it creates the user)"
                ) from None
            os.chown(self.data_dir, account.pw_uid, account.pw_gid)
            self.log.touch()
            os.chown(self.log, account.pw_uid, account.pw_gid)
        self._run(
            "initdb",
            f"--pgdata={self.data_dir}",
            f"--username={USER}",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        # free_port() may race with another process taking the port: try a few.
        for attempt in range(3):
            self.port = free_port()
            options = f"-k {self.data_dir} -p {self.port} -c listen_addresses={self.host}"
            try:
                self._run(
                    "pg_ctl",
                    f"--pgdata={self.data_dir}",
                    f"--log={self.log}",
                    f"--options={options} {SERVER_OPTIONS}",
                    "--wait",
                    "start",
                )
            except RuntimeError:
                if attempt == 2:
                    raise
            else:
                self.running = True
                return self
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Stop the server (fast: open sessions are ended) and delete its files."""
        try:
            if self.running:
                self._run("pg_ctl", f"--pgdata={self.data_dir}", "--mode=fast", "--wait", "stop")
                self.running = False
        finally:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                self.log.unlink()
