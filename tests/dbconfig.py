"""The test database, described for another process: ``subprocess_databases()``.

Some tests start processes (a ``db_worker``, the fault drill's worker) that must write
the very database the test reads: the test database pytest-django created, not the
configured one, on SQLite as on PostgreSQL. They only see what the test committed, so
such tests are ``django_db(transaction=True)``.
"""

from __future__ import annotations

import copy
from typing import Any

#: The connection settings a child process needs. TEST is left out: the child creates no
#: test database, NAME already is one.
KEYS = ("ENGINE", "NAME", "USER", "PASSWORD", "HOST", "PORT", "OPTIONS")


def subprocess_databases() -> dict[str, dict[str, Any]]:
    """A JSON-serializable DATABASES for ``settings.configure(DATABASES=...)`` in a child.

    Call it inside a test that uses the database: before the test database exists, the
    connection settings still name the configured database, and this raises.
    """
    from django.db import connections

    databases: dict[str, dict[str, Any]] = {}
    for alias in connections:
        settings = connections[alias].settings_dict
        test_name = settings.get("TEST", {}).get("NAME")
        if test_name and settings["NAME"] != test_name:
            raise RuntimeError(
                f"DATABASES[{alias!r}] is {settings['NAME']!r}, not the test database "
                f"{test_name!r}: call subprocess_databases() from a test using the database"
            )
        # Django has filled in every key; a copy, so the caller may change it.
        databases[alias] = {key: copy.deepcopy(settings[key]) for key in KEYS}
    return databases
