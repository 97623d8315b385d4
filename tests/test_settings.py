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


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("min_transfer_rate", 0),
        ("min_transfer_rate", 0.0),
        ("min_transfer_rate", -1024),
        ("min_transfer_rate", True),
        ("min_transfer_rate", False),
        ("min_transfer_rate", "262144"),
        ("min_transfer_rate", None),
        ("lock_timeout", 0),
        ("lock_timeout", -1.5),
        ("lock_timeout", True),
        ("lock_timeout", "10"),
        ("lock_timeout", None),
    ],
)
def test_bad_rates_and_lock_timeouts(option, value):
    """A rate of 0 would make every write's deadline infinite; True would be 1 B/s."""
    with pytest.raises(ImproperlyConfigured, match=r"must be a positive number") as info:
        resolve_options("HybridStorage", {option: value}, ())
    assert f"OPTIONS[{option!r}]" in str(info.value)


@pytest.mark.parametrize(("given", "resolved"), [(1, 1.0), (65536, 65536.0), (1.5, 1.5)])
@pytest.mark.parametrize("option", ["min_transfer_rate", "lock_timeout"])
def test_rates_and_lock_timeouts_accept_int_and_float(option, given, resolved):
    value = resolve_options("HybridStorage", {option: given}, ())[option]
    assert value == resolved
    assert type(value) is float


def test_rate_and_lock_timeout_defaults():
    resolved = resolve_options("HybridStorage", {}, ())
    assert resolved["min_transfer_rate"] == 256 * 1024
    assert resolved["lock_timeout"] == 10


@override_settings(RESTO_MIN_TRANSFER_RATE=1000, RESTO_LOCK_TIMEOUT=3)
def test_rate_and_lock_timeout_from_global_settings():
    storage = HybridStorage(hosts=["a:1"])
    assert (storage.min_transfer_rate, storage.lock_timeout) == (1000.0, 3.0)
    assert storage.transport("a:1").min_transfer_rate == 1000.0


@override_settings(RESTO_MIN_TRANSFER_RATE=0)
def test_bad_global_rate_is_named():
    with pytest.raises(ImproperlyConfigured, match="RESTO_MIN_TRANSFER_RATE must be a positive"):
        HybridStorage(hosts=["a:1"])


@pytest.mark.parametrize(
    "value",
    [
        "X-Token\x00",
        "X Token",
        "X-Token:",
        ":X-Token",
        "X-Tökèn",
        "\u0425-Token",
        "",
        "X-Token\n",
        42,
    ],
    ids=[
        "nul",
        "space",
        "colon",
        "leading-colon",
        "latin-1",
        "cyrillic",
        "empty",
        "newline",
        "int",
    ],
)
def test_token_header_must_be_a_token(value):
    """Refused at configuration: on the wire it would split the request's head, or
    fail each write with an encoding error (the head is Latin-1)."""
    with pytest.raises(ImproperlyConfigured, match="an HTTP header name"):
        resolve_options("HybridStorage", {"token_header": value}, ())


@pytest.mark.parametrize("value", ["Authorization", "X-Auth-Token", "x_token", "X!#$%&'*+.^`|~"])
def test_token_header_tokens_are_accepted(value):
    assert resolve_options("HybridStorage", {"token_header": value}, ())["token_header"] == value
