import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from django_resto.settings import Host, get_setting, media_path, parse_host, resolve_options
from django_resto.storage import DistributedStorage, HybridStorage


def test_defaults_match_django_resto_1x():
    assert get_setting("MEDIA_HOSTS") == []  # tests/settings.py sets it
    assert get_setting("RESTO_TIMEOUT") == 2
    assert get_setting("FATAL_EXCEPTIONS") is True
    assert get_setting("SHOW_TRACEBACK") is False


def test_get_setting_unknown_name():
    with pytest.raises(KeyError, match="RESTO_NOPE"):
        get_setting("NOPE")


@override_settings(RESTO_MEDIA_HOSTS=["a:1"], RESTO_TIMEOUT=5, RESTO_FATAL_EXCEPTIONS=False)
def test_options_win_over_global_settings():
    storage = HybridStorage(hosts=["b:2", "c:3"], timeout=1.5)
    assert storage.hosts == ("b:2", "c:3")
    assert storage.timeout == 1.5
    assert storage.fatal_exceptions is False  # from the global twin


def test_unknown_option_is_named():
    with pytest.raises(ImproperlyConfigured, match="Invalid setting 'hostz' for"):
        HybridStorage(hostz=["a:1"])


def test_local_options_are_refused_by_distributed():
    with pytest.raises(ImproperlyConfigured, match="Invalid setting 'location'"):
        DistributedStorage(hosts=["a:1"], location="/tmp")


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("hosts", "media:80", "must be a list of hosts"),
        ("hosts", ["a:1", 2], "must be a list of strings"),
        ("hosts", ["a:1", "a:1"], "without duplicates"),
        ("timeout", 0, "positive number"),
        ("timeout", "2", "positive number"),
        ("timeout", True, "positive number"),
        ("fatal_exceptions", "yes", "True or False"),
        ("verify", 1, "CA bundle"),
        ("min_replicas", 0, "positive integer"),
        ("async_workers", 0, "positive integer"),
        ("token_header", "X Token", "header name"),
    ],
)
def test_bad_values(option, value, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        resolve_options("HybridStorage", {option: value}, ())


def test_bad_auth_never_echoes_the_password():
    with pytest.raises(ImproperlyConfigured) as info:
        resolve_options("HybridStorage", {"auth": ("user", "s3cret", "extra")}, ())
    assert "s3cret" not in str(info.value)
    with pytest.raises(ImproperlyConfigured) as info:
        resolve_options("HybridStorage", {"token": 12345}, ())
    assert "12345" not in str(info.value)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("token", "s3cret-token\n", "line breaks"),
        ("token", "s3cret\r\nX-Injected: 1", "line breaks"),
        ("token", " s3cret-token", "surrounding whitespace"),
        ("auth", ("us:er", "s3cret"), "may not contain ':'"),
        ("auth", ("user", "s3cret\n"), "control characters"),
    ],
)
def test_credentials_that_would_break_a_header_line(option, value, message):
    """A token read from a file keeps its newline: refused at configuration time, without
    echoing the secret, instead of splitting the request's head on the wire."""
    with pytest.raises(ImproperlyConfigured, match=message) as info:
        resolve_options("HybridStorage", {option: value}, ())
    assert "s3cret" not in str(info.value)


def test_malformed_host_raises_at_init():
    with pytest.raises(ImproperlyConfigured, match="Invalid media host"):
        HybridStorage(hosts=["ftp://media:21"])


def test_min_replicas_above_host_count():
    with pytest.raises(ImproperlyConfigured, match=r"min_replicas=3 .* 2 configured"):
        HybridStorage(hosts=["a:1", "b:2"], min_replicas=3)


@pytest.mark.parametrize(
    ("given", "origin"),
    [
        ("media-1:8080", "http://media-1:8080"),
        ("media-1", "http://media-1"),
        ("127.0.0.1:81", "http://127.0.0.1:81"),
        ("[::1]:8080", "http://[::1]:8080"),
        ("https://media.example:8443", "https://media.example:8443"),
        ("https://media.example/", "https://media.example"),
    ],
)
def test_parse_host(given, origin):
    assert parse_host(given) == Host(name=given, origin=origin)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("", "not a host name"),
        (" media", "not a host name"),
        ("ftp://media", "http or https"),
        ("http://user:pw@media", "must not contain credentials"),
        ("http://media/prefix", "path comes from base_url"),
        ("http://media?x=1", "path comes from base_url"),
        ("media:notaport", "malformed"),
        ("media:70000", "malformed"),
        ("http://:80", "no host name"),
        ("media:0", "invalid port"),
    ],
)
def test_parse_host_rejects(given, message):
    with pytest.raises(ValueError, match=message):
        parse_host(given)


def test_credentials_in_host_are_not_echoed():
    with pytest.raises(ValueError) as info:
        parse_host("http://user:hunter2@media")
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("base_url", "path"),
    [
        ("/media/", "/media/"),
        ("/media", "/media/"),
        ("media/", "/media/"),
        ("https://cdn.example/static/media/", "/static/media/"),
        ("", "/"),
        (None, "/"),
    ],
)
def test_media_path(base_url, path):
    assert media_path(base_url) == path


@pytest.mark.parametrize("base_url", ["/media/?v=1", "/media/#top"])
def test_media_path_refuses_query_and_fragment(base_url):
    with pytest.raises(ImproperlyConfigured, match="query string or a fragment"):
        media_path(base_url)
