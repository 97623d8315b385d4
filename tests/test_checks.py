import pytest
from django.core.checks import Error, Warning
from django.test import override_settings

from django_resto.checks import check_storages

HYBRID = "django_resto.storage.HybridStorage"
ASYNC = "django_resto.storage.AsyncStorage"
DISTRIBUTED = "django_resto.storage.DistributedStorage"


def storages(backend, **options):
    return {
        "default": {"BACKEND": backend, "OPTIONS": options},
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


def ids(messages):
    return [message.id for message in messages]


@override_settings(STORAGES=storages(HYBRID, hosts=["media-1:8080", "https://media-2:8443"]))
def test_good_configuration_has_no_messages():
    assert check_storages() == []


@override_settings(STORAGES=storages(HYBRID))
def test_hybrid_without_hosts_warns():
    messages = check_storages()
    assert ids(messages) == ["django_resto.W001"]
    assert isinstance(messages[0], Warning)
    assert messages[0].obj == "STORAGES['default']"


@override_settings(STORAGES=storages(ASYNC))
def test_async_without_hosts_warns():
    assert ids(check_storages()) == ["django_resto.W001"]


@override_settings(STORAGES=storages(DISTRIBUTED))
def test_distributed_without_hosts_is_an_error():
    messages = check_storages()
    assert ids(messages) == ["django_resto.E002"]
    assert isinstance(messages[0], Error)


@override_settings(
    STORAGES=storages(HYBRID, hosts=["media-1:8080", "ftp://x", "http://u:p@y", "z:99999"])
)
def test_each_malformed_host_is_reported():
    messages = check_storages()
    assert ids(messages) == ["django_resto.E001"] * 3
    assert "ftp://x" in messages[0].msg
    assert "credentials" in messages[1].msg
    assert "u:p" not in messages[1].msg
    assert "z:99999" in messages[2].msg


@pytest.mark.parametrize("base_url", ["/media/?x=1", "https://cdn.example/media/#f"])
def test_base_url_with_query_or_fragment(base_url):
    with override_settings(STORAGES=storages(HYBRID, hosts=["m:80"], base_url=base_url)):
        assert ids(check_storages()) == ["django_resto.E003"]


@override_settings(MEDIA_URL="/media/?v=2", STORAGES=storages(HYBRID, hosts=["m:80"]))
def test_media_url_with_query():
    assert ids(check_storages()) == ["django_resto.E003"]


@override_settings(STORAGES=storages(DISTRIBUTED, hosts=["m:80"], fatal_exceptions=False))
def test_distributed_without_fatal_exceptions_warns_of_data_loss():
    messages = check_storages()
    assert ids(messages) == ["django_resto.W002"]
    assert "lose uploads" in messages[0].msg


@override_settings(RESTO_FATAL_EXCEPTIONS=False, STORAGES=storages(DISTRIBUTED, hosts=["m:80"]))
def test_data_loss_warning_follows_the_global_setting():
    assert ids(check_storages()) == ["django_resto.W002"]


@override_settings(STORAGES=storages(HYBRID, hosts=["m:80"], min_replicas=2))
def test_min_replicas_above_hosts():
    assert ids(check_storages()) == ["django_resto.E005"]


@override_settings(STORAGES=storages(HYBRID, hosts=["m:80"], timout=3))
def test_unknown_option():
    messages = check_storages()
    assert ids(messages) == ["django_resto.E004"]
    assert "'timout'" in messages[0].msg


@override_settings(STORAGES=storages(HYBRID, hosts="m:80"))
def test_hosts_as_a_string():
    messages = check_storages()
    assert ids(messages) == ["django_resto.E004"]


def test_checks_are_registered_with_django():
    from django.core.checks import Tags, run_checks

    with override_settings(STORAGES=storages(DISTRIBUTED)):
        assert "django_resto.E002" in ids(run_checks(tags=[Tags.compatibility]))


@override_settings(STORAGES=storages(HYBRID, hosts=["m:80"]))
def test_a_journal_database_with_a_shared_lock_gets_no_ordering_warning():
    from django_resto.checks import check_ordering

    assert check_ordering() == []


@override_settings(STORAGES=storages(HYBRID, hosts=["m:80"]))
def test_a_journal_database_without_a_shared_lock_is_warned_about(monkeypatch):
    from django_resto import ordering
    from django_resto.checks import check_ordering

    monkeypatch.setattr(ordering, "strategy", lambda alias=None: "process")
    (message,) = check_ordering()
    assert message.id == "django_resto.W007"
    assert "ordered within each process only" in message.msg


@pytest.mark.django_db
def test_a_sqlite_journal_outside_wal_mode_is_warned_about(tmp_path):
    from django.db import connections
    from django.db.backends.sqlite3.base import DatabaseWrapper

    from django_resto.checks import sqlite_journal_warnings

    # A real SQLite database in the default (rollback journal) mode, then in WAL.
    config = {"ENGINE": "django.db.backends.sqlite3", "NAME": str(tmp_path / "j.sqlite3")}
    configured = connections.configure_settings({"default": config})["default"]
    journal = DatabaseWrapper(configured, "other")
    try:
        (message,) = sqlite_journal_warnings(journal)
        assert message.id == "django_resto.W008"
        assert "'other' is in journal mode 'delete'" in message.msg
        with journal.cursor() as cursor:
            cursor.execute("PRAGMA journal_mode=WAL")
        assert sqlite_journal_warnings(journal) == []
    finally:
        journal.close()


@pytest.mark.django_db
@override_settings(STORAGES=storages(HYBRID, hosts=["m:80"]))
def test_the_suites_journal_database_needs_no_wal_warning():
    from django.db import connection

    from django_resto.checks import check_sqlite_journal

    assert check_sqlite_journal(databases=None) == []
    if connection.vendor != "sqlite":
        assert check_sqlite_journal(databases=["default"]) == []
        return
    # The suite's SQLite runs in WAL mode (tests/settings.py): no warning.
    assert check_sqlite_journal(databases=["default"]) == []
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA journal_mode")
        assert cursor.fetchone()[0] == "wal"
