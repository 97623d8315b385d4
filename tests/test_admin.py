# The fixture media_server_factory is imported from tests.servers, and pytest passes it
# back as an argument of the same name, which pyflakes reads as a redefinition.
# ruff: noqa: F811
"""The journal in Django's admin: change list, filters, search, read-only, "Retry now".

tests/settings.py has no admin; the ``admin_site`` fixture installs admin, sessions
and messages for one test (cookie-based sessions and messages, so no extra tables are
needed) and routes URLs through tests/urls_admin.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone

from django_resto import journal
from django_resto.models import PendingReplication
from tests.servers import MediaServer, media_server_factory  # noqa: F401 - fixture

Factory = Callable[..., MediaServer]
CHANGELIST = "/admin/django_resto/pendingreplication/"


@pytest.fixture
def admin_site(settings):
    settings.INSTALLED_APPS = [
        *settings.INSTALLED_APPS,
        "django.contrib.admin",
        "django.contrib.sessions",
        "django.contrib.messages",
    ]
    settings.MIDDLEWARE = [
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.middleware.common.CommonMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "django.contrib.messages.middleware.MessageMiddleware",
    ]
    settings.TEMPLATES = [
        {
            "BACKEND": "django.template.backends.django.DjangoTemplates",
            "APP_DIRS": True,
            "OPTIONS": {
                "context_processors": [
                    "django.template.context_processors.request",
                    "django.contrib.auth.context_processors.auth",
                    "django.contrib.messages.context_processors.messages",
                ]
            },
        }
    ]
    settings.ROOT_URLCONF = "tests.urls_admin"
    settings.SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
    settings.MESSAGE_STORAGE = "django.contrib.messages.storage.cookie.CookieStorage"
    settings.STATIC_URL = "/static/"
    # A superuser per test: the default PBKDF2 costs a quarter of a second each time.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def client(admin_site, db) -> Client:
    user = get_user_model().objects.create_superuser("admin", "admin@example.invalid", "pw")
    client = Client()
    client.force_login(user)
    return client


def add_row(host: str, name: str, age: timedelta, error: str = "boom", storage: str = "default"):
    journal.mark(storage, [host], name, "PUT", journal.now_seq(), error=error)
    PendingReplication.objects.filter(storage=storage, host=host, name=name).update(
        first_attempt=timezone.now() - age
    )
    return PendingReplication.objects.get(storage=storage, host=host, name=name)


def shown_names(html: str) -> list[str]:
    """The ``name`` column of the change list, in display order."""
    return re.findall(r'<td class="field-name">([^<]*)</td>', html)


@pytest.fixture
def rows(db):
    return [
        add_row("media-1:8080", "recent.jpg", timedelta(minutes=10)),
        add_row("media-1:8080", "today.jpg", timedelta(hours=5), error="x" * 200),
        add_row("media-2:8080", "old.jpg", timedelta(days=3)),
    ]


def test_changelist_renders_columns_and_filters(client: Client, rows):
    response = client.get(CHANGELIST)
    assert response.status_code == 200
    html = response.content.decode()
    # Ordered by age, oldest first: the rows that need attention come first.
    assert shown_names(html) == ["old.jpg", "today.jpg", "recent.jpg"]
    for header in ("Host", "Name", "Operation", "Attempts", "First attempt", "Last attempt"):
        assert f">{header}</a>" in html
    assert "Last error" in html
    assert "x" * 79 + "\u2026" in html
    assert "x" * 80 not in html
    assert " By age " in html
    assert " By host " in html
    for value, label in (
        ("hour", "less than 1 hour"),
        ("day", "less than 1 day"),
        ("older", "older than 1 day"),
    ):
        assert f'<a href="?age={value}">{label}</a>' in html
    assert 'value="retry_now"' in html
    assert "Retry now" in html


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("age=hour", ["recent.jpg"]),
        ("age=day", ["today.jpg", "recent.jpg"]),
        ("age=older", ["old.jpg"]),
        ("host=media-2%3A8080", ["old.jpg"]),
        ("host=media-1%3A8080&age=hour", ["recent.jpg"]),
        ("q=today", ["today.jpg"]),
    ],
)
def test_filters_and_search(client: Client, rows, query: str, expected: list[str]):
    response = client.get(f"{CHANGELIST}?{query}")
    assert response.status_code == 200
    assert shown_names(response.content.decode()) == expected


def test_rows_are_read_only(client: Client, rows):
    assert client.get(CHANGELIST + "add/").status_code == 403
    detail = client.get(f"{CHANGELIST}{rows[0].pk}/change/")
    assert detail.status_code == 200
    html = detail.content.decode()
    assert "recent.jpg" in html
    assert 'name="name"' not in html
    before = PendingReplication.objects.get(pk=rows[0].pk)
    response = client.post(f"{CHANGELIST}{rows[0].pk}/change/", {"name": "hacked"})
    assert response.status_code == 403
    assert PendingReplication.objects.get(pk=rows[0].pk).name == before.name


def test_retry_now_repairs_the_selected_rows(
    client: Client, media_server_factory: Factory, media_root: Path, settings
):
    server = media_server_factory("test")
    settings.STORAGES = {
        "default": {
            "BACKEND": "django_resto.storage.HybridStorage",
            "OPTIONS": {"hosts": [server.host], "timeout": 5},
        },
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    (media_root / "a").mkdir()
    (media_root / "a" / "fixed.txt").write_bytes(b"fixed")
    (media_root / "other.txt").write_bytes(b"other")
    fixed = add_row(server.host, "a/fixed.txt", timedelta(hours=2))
    other = add_row(server.host, "other.txt", timedelta(hours=2))
    response = client.post(
        CHANGELIST, {"action": "retry_now", "_selected_action": [str(fixed.pk)]}, follow=True
    )
    assert response.status_code == 200
    messages = [str(message) for message in response.context["messages"]]
    assert messages == ["Retried 1 row(s): 1 repaired, 0 failed."]
    assert server.files() == {"a/fixed.txt": b"fixed"}
    assert list(PendingReplication.objects.values_list("pk", flat=True)) == [other.pk]


def test_retry_now_reports_failures(
    client: Client, media_server_factory: Factory, media_root: Path, settings
):
    server = media_server_factory("test")
    settings.STORAGES = {
        "default": {
            "BACKEND": "django_resto.storage.HybridStorage",
            "OPTIONS": {"hosts": [server.host], "timeout": 5},
        },
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    (media_root / "f.txt").write_bytes(b"f")
    row = add_row(server.host, "f.txt", timedelta(minutes=1))
    server.force_status(503, methods="PUT")
    response = client.post(
        CHANGELIST, {"action": "retry_now", "_selected_action": [str(row.pk)]}, follow=True
    )
    messages = [(m.level_tag, str(m)) for m in response.context["messages"]]
    assert messages[0] == ("warning", "Retried 1 row(s): 0 repaired, 1 failed.")
    assert len(messages) == 2
    assert messages[1][0] == "error"
    assert messages[1][1].startswith("f.txt on " + server.host + ": UnexpectedStatusCode: ")
    assert PendingReplication.objects.get(pk=row.pk).attempts == 2


@pytest.mark.parametrize(
    ("permissions", "can_retry"), [(["view"], False), (["view", "change"], True)]
)
def test_retry_needs_the_change_permission(
    admin_site, db, rows, permissions: list[str], can_retry: bool
):
    from django.contrib.auth.models import Permission

    user = get_user_model().objects.create_user("staff", password="pw", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="django_resto",
            codename__in=[f"{perm}_pendingreplication" for perm in permissions],
        )
    )
    client = Client()
    client.force_login(user)
    response = client.get(CHANGELIST)
    assert response.status_code == 200
    assert shown_names(response.content.decode()) == ["old.jpg", "today.jpg", "recent.jpg"]
    assert ('value="retry_now"' in response.content.decode()) is can_retry
    assert client.get(CHANGELIST + "add/").status_code == 403
