"""Settings for Django's own tests/file_storage with HybridStorage in FileSystemStorage's place.

scripts/django-storage-contract runs Django's runtests.py with these settings. Importing
them puts :class:`FileSystemStorage` below, a HybridStorage that replicates to the
media servers named in ``RESTO_CONTRACT_HOSTS``, where Django's class was: every test
module imported afterwards (all of Django's test apps are) builds ours when it says
``FileSystemStorage(...)``, subclasses ours, and gets ours from ``default_storage``.
So Django's assertions about FileSystemStorage are asserted about HybridStorage.

With ``RESTO_CONTRACT_ROOTS`` (the servers' document roots, in the same order), every
replication is also checked against the servers' disks: each must hold exactly what
the master copy holds for that name, so a test that passes locally while a server
diverged fails instead.

Without ``django_resto`` in INSTALLED_APPS (runtests.py sets its own) there is no
journal: locks are per process, nothing touches the database (most of Django's
storage tests are SimpleTestCase, which forbids queries), and with fatal_exceptions
on, a host that refuses anything fails the test that caused it.
"""

from __future__ import annotations

import os
from pathlib import Path

import django.core.files.storage as storage_package
import django.core.files.storage.filesystem as filesystem_module
from django.utils.deconstruct import deconstructible

from django_resto.fanout import Outcome
from django_resto.storage import HybridStorage

# What Django's tests/test_sqlite.py says, which runtests.py uses by default.
DATABASES = {
    "default": {"ENGINE": "django.db.backends.sqlite3"},
    "other": {"ENGINE": "django.db.backends.sqlite3"},
}
SECRET_KEY = "django_tests_secret_key"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = False

RESTO_MEDIA_HOSTS = [host for host in os.environ.get("RESTO_CONTRACT_HOSTS", "").split(",") if host]
RESTO_FATAL_EXCEPTIONS = True
_ROOTS = [Path(root) for root in os.environ.get("RESTO_CONTRACT_ROOTS", "").split(",") if root]

if not RESTO_MEDIA_HOSTS:
    raise RuntimeError(
        "RESTO_CONTRACT_HOSTS is empty: run scripts/django-storage-contract, which starts "
        "the media servers and names them there."
    )


class ContractViolation(AssertionError):
    """A media server does not hold what the master copy holds after a replication."""


@deconstructible(path="django.core.files.storage.FileSystemStorage")
class FileSystemStorage(HybridStorage):
    """HybridStorage, under the name and import path of the class it stands in for.

    Options come from the RESTO_* settings above, so it takes exactly
    FileSystemStorage's arguments; it deconstructs under Django's path because that
    path is where it is found during the run.
    """

    def replicate(self, name: str) -> list[Outcome]:
        outcomes = super().replicate(name)
        if _ROOTS:
            self._check_servers(name)
        return outcomes

    def _check_servers(self, name: str) -> None:
        try:
            with open(self.path(name), "rb") as handle:
                expected: bytes | None = handle.read()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            expected = None
        prefix = self.media_prefix.strip("/")
        for host, root in zip(self.hosts, _ROOTS, strict=False):
            copy = root / prefix / name if prefix else root / name
            actual = copy.read_bytes() if copy.is_file() else None
            if actual != expected:
                state = "missing" if actual is None else f"{len(actual)} bytes"
                wanted = "absent" if expected is None else f"{len(expected)} bytes"
                raise ContractViolation(f"{host} holds {name!r} as {state}; expected {wanted}")


storage_package.FileSystemStorage = FileSystemStorage  # type: ignore[misc]
filesystem_module.FileSystemStorage = FileSystemStorage  # type: ignore[misc]
