"""The one place that finds django_resto's storages in STORAGES.

The commands, the system checks, the tasks and the journal all need to know which
STORAGES aliases are django_resto storages and what each one can do. They ask here,
and never import the backends to test a class: a backend says what it is by the
:class:`Capabilities` it carries (``resto_capabilities``), so this module imports
nothing of django_resto and sits below everything that uses it.

Classes are looked up before instances are made: creating an unrelated backend
(staticfiles without STATIC_URL, a cloud storage without credentials) can fail on
settings the caller does not need.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.files.storage import storages
from django.utils.module_loading import import_string

__all__ = [
    "Capabilities",
    "Entry",
    "alias_for",
    "aliases",
    "backend_class",
    "capabilities_of",
    "configured",
    "entries",
    "storage",
]


@dataclass(frozen=True)
class Capabilities:
    """What a django_resto backend can do, as the commands and checks need to know it."""

    #: The backend keeps a complete local copy: repairs and audits derive the hosts'
    #: state from it (Hybrid, Async). Without one (Distributed) the hosts are compared
    #: with each other and a lagging host is repaired from a host that has the file.
    master_copy: bool
    #: Replication runs after the request, in a pool or in task workers (Async).
    background: bool = False
    #: A save must reach at least one host: there is no other copy (Distributed).
    needs_hosts: bool = False


@dataclass(frozen=True)
class Entry:
    """One django_resto storage of STORAGES, before any instance is made."""

    alias: str
    backend: type
    options: dict[str, Any]

    @property
    def capabilities(self) -> Capabilities:
        return self.backend.resto_capabilities  # type: ignore[attr-defined]


def capabilities_of(thing: object) -> Capabilities | None:
    """The capabilities of a backend class or instance; None if it is not django_resto's."""
    found = getattr(thing, "resto_capabilities", None)
    return found if isinstance(found, Capabilities) else None


def configured() -> Mapping[str, Mapping[str, Any]]:
    """Every STORAGES entry, django_resto's or not (for "is this alias there at all?")."""
    return getattr(settings, "STORAGES", {})


def backend_class(alias: str) -> type | None:
    """The django_resto class STORAGES[alias] names, or None (not ours, or not importable)."""
    config = configured().get(alias)
    if config is None:
        return None
    try:
        backend = import_string(config.get("BACKEND", ""))
    except ImportError:
        return None  # Django's own checks and the first use report this.
    if not isinstance(backend, type) or capabilities_of(backend) is None:
        return None
    return backend


def entries() -> list[Entry]:
    """Every django_resto storage of STORAGES, in settings order."""
    found = []
    for alias, config in configured().items():
        backend = backend_class(alias)
        if backend is not None:
            found.append(Entry(alias, backend, dict(config.get("OPTIONS", {}))))
    return found


def aliases(*, master_copy: bool | None = None) -> list[str]:
    """The aliases of the django_resto storages; only those with (or without) a master copy."""
    return [
        entry.alias
        for entry in entries()
        if master_copy is None or entry.capabilities.master_copy == master_copy
    ]


def storage(alias: str) -> Any | None:
    """The configured instance for ``alias`` (a journal key), or None if it is not ours."""
    if not alias or backend_class(alias) is None:
        return None
    return storages[alias]


def alias_for(backend: type, options: Mapping[str, Any]) -> str:
    """The STORAGES alias a storage of ``backend`` built with ``options`` was configured as.

    Matched by backend class name and OPTIONS, so the instance a FileField creates
    from the same settings finds its alias too; a single entry of that class is taken
    whatever its options. "" when nothing matches: such a storage's failures cannot be
    journaled, since no command could ever find it to drain them.
    """
    candidates = []
    for alias, config in configured().items():
        if config.get("BACKEND", "").rsplit(".", 1)[-1] != backend.__name__:
            continue
        if dict(config.get("OPTIONS", {})) == dict(options):
            return alias
        candidates.append(alias)
    return candidates[0] if len(candidates) == 1 else ""
