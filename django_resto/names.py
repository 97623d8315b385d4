"""Validation of storage names before they turn into URLs on other machines.

A name that FileSystemStorage would refuse locally must not be sent to a media
server either: there, ``..`` or a backslash can reach files outside the media
root, and a control character can split a request line or a log line.
"""

from __future__ import annotations

import re

from django.core.exceptions import SuspiciousFileOperation
from django.core.files.utils import validate_file_name

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

#: The longest name the journal can hold (``PendingReplication.name``). A longer name
#: is refused before anything is written, on every database alike: PostgreSQL would
#: refuse the journal row only once a host had failed, and SQLite would not refuse it
#: at all, so the same site would behave differently on the two.
MAX_NAME_LENGTH = 1024


def validate_name(name: str, *, django_check: bool = True) -> str:
    """Return ``name`` if it is a safe relative file name, else raise SuspiciousFileOperation.

    ``django_check=False`` skips Django's own ``validate_file_name`` where the caller
    knows it has just run (``Storage.save`` runs it on the name it hands to
    ``_save``): the checks below are a superset of it, and it costs a ``pathlib``
    object per call, which shows in the per-save cost of small files.
    """
    if not isinstance(name, str):
        raise SuspiciousFileOperation(f"File name must be a string, got {type(name).__name__}")
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
