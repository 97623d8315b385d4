"""System checks: a misconfigured media setup fails at ``manage.py check``, not at upload.

The checks read STORAGES and the RESTO_* settings without creating the storages,
so that every problem is listed at once instead of the first one raised.
"""

from __future__ import annotations

from importlib.util import find_spec
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.core.exceptions import ImproperlyConfigured

from . import registry
from .settings import media_path, parse_host, resolve_options


def _tasks_framework_installed() -> bool:
    # find_spec, not importing django_resto.tasks: that module declares its task, which
    # needs the TASKS setting to be right, and reporting that is not this check's job.
    return find_spec("django.tasks") is not None or find_spec("django_tasks") is not None


@register(Tags.compatibility, "django_resto")
def check_storages(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    for entry in registry.entries():
        backend, options, can = entry.backend, entry.options, entry.capabilities
        where = f"STORAGES[{entry.alias!r}]"
        extra = getattr(backend, "extra_options", ())
        try:
            resolved = resolve_options(backend.__qualname__, options, extra)
        except ImproperlyConfigured as exc:
            messages.append(Error(str(exc), obj=where, id="django_resto.E004"))
            continue
        hosts = resolved["hosts"]
        if not hosts:
            if can.needs_hosts:
                messages.append(
                    Error(
                        "DistributedStorage has no media hosts: no file can be stored.",
                        hint="Set RESTO_MEDIA_HOSTS or OPTIONS['hosts'].",
                        obj=where,
                        id="django_resto.E002",
                    )
                )
            else:
                messages.append(
                    Warning(
                        f"{backend.__name__} has no media hosts: files are only stored locally.",
                        hint="Set RESTO_MEDIA_HOSTS or OPTIONS['hosts'].",
                        obj=where,
                        id="django_resto.W001",
                    )
                )
        for host in hosts:
            if host.startswith("storage:"):
                messages.extend(_storage_target_errors(host, where))
                continue
            try:
                parse_host(host)
            except ValueError as exc:
                messages.append(
                    Error(
                        f"Malformed media host: {exc}.",
                        hint="Use 'name:port' for http or 'https://name:port'.",
                        obj=where,
                        id="django_resto.E001",
                    )
                )
        base_url = options.get("base_url", settings.MEDIA_URL)
        try:
            media_path(base_url)
        except ImproperlyConfigured as exc:
            messages.append(Error(str(exc), obj=where, id="django_resto.E003"))
        if can.needs_hosts and not resolved["fatal_exceptions"]:
            messages.append(
                Warning(
                    "DistributedStorage with fatal_exceptions=False can lose uploads: a failed "
                    "write on some media servers goes unnoticed by the user.",
                    hint="Keep fatal_exceptions=True, or add django_resto to INSTALLED_APPS "
                    "and run process_failed_media so failures are journaled and repaired.",
                    obj=where,
                    id="django_resto.W002",
                )
            )
        if resolved["min_replicas"] is not None and resolved["min_replicas"] > len(hosts):
            messages.append(
                Error(
                    f"min_replicas={resolved['min_replicas']} is more than the "
                    f"{len(hosts)} configured host(s): every write would fail.",
                    obj=where,
                    id="django_resto.E005",
                )
            )
        if (
            can.background
            and resolved["replicate_with"] == "tasks"
            and not _tasks_framework_installed()
        ):
            messages.append(
                Error(
                    "replicate_with='tasks' but no tasks framework is installed: every "
                    "upload would fail to schedule its replication.",
                    hint="Use Django >= 6.0 (django.tasks), or install the django-tasks "
                    "backport: pip install 'django-resto[tasks]'.",
                    obj=where,
                    id="django_resto.E006",
                )
            )
    return messages


def _storage_target_errors(host: str, where: str) -> list[CheckMessage]:
    """A ``storage:ALIAS`` host that names no usable storage (see targets_storage.py)."""
    # Imported only for such a host: the module is the S3 side of django_resto.
    from .targets_storage import alias_of, configuration_problem

    problem = configuration_problem(alias_of(host) or "")
    if problem is None:
        return []
    return [
        Error(
            f"Invalid storage target: {problem}.",
            hint="A 'storage:ALIAS' host names a STORAGES entry that is not a django_resto "
            "storage and keeps the names it is given (S3Storage with file_overwrite=True).",
            obj=where,
            id="django_resto.E007",
        )
    ]


@register(Tags.compatibility, "django_resto")
def check_ordering(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Say when the per-name lock cannot hold across processes (see ordering.py)."""
    if not registry.entries():
        return []
    from django.db import connections

    from .ordering import journal_database, strategy

    alias = journal_database()
    if alias is None:
        return [
            Warning(
                "django_resto is not in INSTALLED_APPS: there is no journal, and the "
                "per-name lock that orders replications holds within one process only.",
                hint="Add 'django_resto' to INSTALLED_APPS and migrate.",
                id="django_resto.W007",
            )
        ]
    if strategy(alias) != "process":
        return []
    return [
        Warning(
            f"The journal database {alias!r} ({connections[alias].vendor}) gives django_resto "
            "no lock shared between processes: replications of one name are ordered within "
            "each process only, so a save and a delete in two processes can leave a deleted "
            "file on the media servers.",
            hint="Use PostgreSQL for the journal (several processes or machines), or SQLite "
            "on a file (one machine).",
            id="django_resto.W007",
        )
    ]


@register(Tags.database, "django_resto")
def check_sqlite_journal(
    app_configs: Any = None, databases: Any = None, **kwargs: Any
) -> list[CheckMessage]:
    """Several processes on one SQLite journal need WAL, or readers block writers."""
    if not databases or not registry.entries():
        return []
    from django.db import connections

    from .ordering import journal_database

    alias = journal_database()
    if alias is None or alias not in databases or connections[alias].vendor != "sqlite":
        return []
    return sqlite_journal_warnings(connections[alias])


def sqlite_journal_warnings(connection: Any) -> list[CheckMessage]:
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA journal_mode")
        row = cursor.fetchone()
    mode = str(row[0]).lower() if row else ""
    if mode == "wal":
        return []
    return [
        Warning(
            f"The SQLite journal database {connection.alias!r} is in journal mode {mode!r}: "
            "with several processes (gunicorn workers, timers) a reader blocks the writers, "
            "and saves wait for each other.",
            hint="Set DATABASES[...]['OPTIONS'] = {'init_command': 'PRAGMA journal_mode=WAL', "
            "'timeout': 20}.",
            id="django_resto.W008",
        )
    ]
