"""Validation of storage names before they turn into URLs on other machines.

A name that FileSystemStorage would refuse locally must not be sent to a media
server either: there, ``..`` or a backslash can reach files outside the media
root, and a control character can split a request line or a log line.
"""

from __future__ import annotations

import os
import re

from django.core.exceptions import SuspiciousFileOperation
from django.core.files.utils import validate_file_name

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

#: The longest name the journal can hold (``PendingReplication.name``). A longer name
#: is refused before anything is written, on every database alike: PostgreSQL would
#: refuse the journal row only once a host had failed, and SQLite would not refuse it
#: at all, so the same site would behave differently on the two.
MAX_NAME_LENGTH = 1024


def as_text(name: object) -> str:
    """``name`` as the string it stands for: a str, or a path-like object's ``fspath``.

    Django's storages take path-like names (``pathlib.Path``) wherever they take a
    string, so ours do too; what the path says is then validated like any string.
    Bytes paths are refused: a URL on a media server is text.
    """
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    if not isinstance(name, str):
        raise SuspiciousFileOperation(
            f"File name must be a string or a path-like object, got {type(name).__name__}"
        )
    return name


def validate_name(name: str | os.PathLike[str], *, django_check: bool = False) -> str:
    """Return ``name`` as a str if it is a safe relative file name, else raise
    SuspiciousFileOperation.

    A path-like name is checked as the string it stands for (see :func:`as_text`);
    callers use the returned str from then on. The checks below are a superset of
    Django's own ``validate_file_name`` (tests/test_names.py refuses every bad name
    with and without it), which builds a ``pathlib`` object per call: on a 4 KiB
    DistributedStorage save, the five calls of it were a tenth of the client's CPU.
    ``django_check=True`` runs it as well, for a caller that wants Django's exact
    words in the error.
    """
    name = as_text(name)
    # Checked before Django's validation, which folds backslashes into slashes:
    # we refuse them instead, as Windows-style paths are ambiguous on a web server.
    if len(name) > MAX_NAME_LENGTH:
        raise SuspiciousFileOperation(
            f"File name {name[:40]!r}... is {len(name)} characters long; the replication "
            f"journal holds names of at most {MAX_NAME_LENGTH}"
        )
    if _CONTROL.search(name):
        raise SuspiciousFileOperation(f"File name {name!r} contains a control character")
    if "\\" in name:
        raise SuspiciousFileOperation(f"File name {name!r} contains a backslash")
    if django_check:
        validate_file_name(name, allow_relative_path=True)
    if name.startswith("/"):
        raise SuspiciousFileOperation(f"File name {name!r} is absolute")
    segments = name.split("/")
    if any(segment in ("", ".", "..") for segment in segments):
        raise SuspiciousFileOperation(f"File name {name!r} has an empty, '.' or '..' segment")
    return name


def relative_to(location: str | os.PathLike[str], name: str | os.PathLike[str]) -> str:
    """``name`` relative to ``location`` when it is an absolute path inside it.

    Django's FileSystemStorage accepts an absolute path inside its location (its
    ``path()`` joins it safely), and code such as ``storage.delete(tmp_dir)`` relies
    on that. The part below the location is then validated like any relative name,
    without normalising it first: ``location/a/../b`` is refused, as ``a/../b`` is.
    The location itself and every path outside it are refused. Relative names are
    returned as they are, for :func:`validate_name` to check.
    """
    text = as_text(name)
    if not text.startswith("/"):
        return text
    base = os.path.join(os.path.abspath(location), "")
    if not text.startswith(base) or text == base:
        raise SuspiciousFileOperation(
            f"File name {text!r} is absolute and not inside the storage location"
        )
    return text[len(base) :]
