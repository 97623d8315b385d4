"""tests/role_configs.py: the roles' templates rendered as a play would, and the roles'
checks, without starting a server (tests/test_real_servers.py and tests/test_front.py
run what it renders).

The rendering with the roles' defaults alone is what a deployment gets, so the tests
here also pin what the variables added for the test servers must not change there.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import role_configs
from tests.role_configs import Inventory, RoleCheckError, lighttpd_config, nginx_site

ROLES = role_configs.ROLES_DIR


@pytest.fixture(autouse=True)
def media_root(tmp_path: Path) -> Path:
    """Override conftest's fixture of the same name, which needs Django's ``settings``:
    rendering needs no Django."""
    return tmp_path


def directives(text: str) -> list[str]:
    """The configuration's lines without comments, blank lines and indentation."""
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [line for line in lines if line]


def location(site: str, match: str) -> list[str]:
    """The directives of ``location <match> { ... }`` of a rendered nginx site."""
    lines = directives(site)
    start = lines.index(f"location {match} {{")
    depth, body = 0, []
    for line in lines[start:]:
        depth += line.count("{") - line.count("}")
        body.append(line)
        if depth == 0:
            return body
    raise AssertionError(f"location {match} is not closed")


# -- what a deployment gets --------------------------------------------------------------


def test_nginx_defaults_log_where_debian_does_and_front_nothing():
    site = nginx_site({})
    lines = directives(site)
    assert "access_log /var/log/nginx/access.log combined;" in lines
    assert "error_log /var/log/nginx/error.log;" in lines
    assert "listen 0.0.0.0:80 default_server;" in lines
    assert not any(line.startswith(("upstream", "proxy_")) for line in lines)
    assert location(site, "/") == ["location / {", "return 404;", "}"]
    assert 'auth_basic "django_resto media";' not in lines  # no credentials by default


def test_nginx_media_root_guard_refuses_writes_only():
    guard = location(nginx_site({}), "= /media/")
    assert guard == [
        "location = /media/ {",
        "alias /srv/media/;",
        "autoindex off;",
        "limit_except GET PROPFIND {",
        "deny all;",
        "}",
        "}",
    ]


def test_lighttpd_defaults_are_debian_paths_and_www_data():
    lines = directives(lighttpd_config({}))
    assert 'server.username = "www-data"' in lines
    assert 'server.groupname = "www-data"' in lines
    assert 'server.pid-file = "/run/lighttpd.pid"' in lines
    assert 'server.errorlog = "/var/log/lighttpd/error.log"' in lines
    assert not any("accesslog" in line for line in lines)  # no access log, as before


def test_lighttpd_test_server_variables():
    config = lighttpd_config(
        {
            "lighttpd_dav_user": "",
            "lighttpd_dav_group": "",
            "lighttpd_dav_access_log": "/tmp/t/access.log",
            "media_dav_write_user": "u",
            "media_dav_write_password": "p",
            "media_dav_auth_realm": "test realm",
        }
    )
    lines = directives(config)
    assert not any(line.startswith(("server.username", "server.groupname")) for line in lines)
    assert '"mod_accesslog",' in lines
    assert 'accesslog.filename = "/tmp/t/access.log"' in lines
    assert lines.count('"realm" => "test realm",') == 2  # one per trusted network


def test_lighttpd_answers_404_outside_the_media_prefix():
    lines = directives(lighttpd_config({}))
    start = lines.index('$HTTP["url"] !~ "^/media/" {')
    assert lines[start : start + 3] == [
        '$HTTP["url"] !~ "^/media/" {',
        'server.document-root = "/dev/null"',
        "}",
    ]


# -- the front ---------------------------------------------------------------------------


def test_front_upstream_from_explicit_servers():
    site = nginx_site(
        {"nginx_dav_front_enabled": True, "nginx_dav_front_servers": ["10.0.0.5:8000", "app:9"]}
    )
    lines = directives(site)
    start = lines.index("upstream django_resto_media_app {")
    assert lines[start : start + 4] == [
        "upstream django_resto_media_app {",
        "server 10.0.0.5:8000;",
        "server app:9;",
        "}",
    ]
    assert location(site, "/") == [
        "location / {",
        "client_max_body_size 64m;",  # media_dav_max_upload_mib, the default
        "proxy_pass http://django_resto_media_app;",
        "proxy_set_header Host $http_host;",
        "proxy_set_header X-Forwarded-For $remote_addr;",
        "proxy_set_header X-Forwarded-Proto $scheme;",
        "proxy_set_header X-Forwarded-Host $http_host;",
        "}",
    ]
    # The media and the listing are untouched: still trusted-only writes.
    assert "allow 127.0.0.0/8;" in location(site, "/media/")
    assert "allow 127.0.0.0/8;" in location(site, "/_resto/list/")


def test_front_upstream_from_the_inventory_group():
    inventory = Inventory(
        groups={"app_servers": ["app1", "app2", "app3"], "web": ["w1"]},
        hostvars={"app1": {"ansible_host": "10.0.0.5"}, "app2": {"ansible_host": "fd00::7"}},
    )
    site = nginx_site(
        {"nginx_dav_front_enabled": True, "nginx_dav_front_port": 8001, "media_dav_port": 8080},
        inventory=inventory,
    )
    servers = [line for line in directives(site) if re.fullmatch(r"server \S+;", line)]
    assert servers == ["server 10.0.0.5:8001;", "server [fd00::7]:8001;", "server app3:8001;"]
    other = nginx_site(
        {"nginx_dav_front_enabled": True, "nginx_dav_front_group": "web"}, inventory=inventory
    )
    assert "server w1:8000;" in directives(other)


def test_front_body_limit_follows_the_media_limit_unless_set():
    base = {"nginx_dav_front_enabled": True, "nginx_dav_front_servers": ["a:1"]}
    site = nginx_site({**base, "media_dav_max_upload_mib": 5})
    assert "client_max_body_size 5m;" in location(site, "/")
    site = nginx_site({**base, "media_dav_max_upload_mib": 5, "nginx_dav_front_max_body_mib": 2})
    assert "client_max_body_size 2m;" in location(site, "/")


def test_front_without_servers_fails_and_names_the_variables():
    with pytest.raises(RoleCheckError) as error:
        nginx_site({"nginx_dav_front_enabled": True}, inventory=Inventory(groups={"web": ["w"]}))
    message = str(error.value)
    for variable in ("nginx_dav_front_enabled", "nginx_dav_front_servers"):
        assert variable in message
    assert "nginx_dav_front_group (app_servers)" in message
    assert "nginx_dav_front_port (8000)" in message


@pytest.mark.parametrize(
    "overrides",
    [
        {"nginx_dav_front_servers": ["app;evil:80"]},
        {"nginx_dav_front_servers": ["app"]},
        {"nginx_dav_front_servers": ["a:1"], "media_dav_url_prefix": "/"},
    ],
    ids=["injection", "no-port", "media-everywhere"],
)
def test_front_refuses_bad_servers_and_the_root_prefix(overrides: dict[str, Any]):
    with pytest.raises(RoleCheckError, match='must be "host:port"'):
        nginx_site({"nginx_dav_front_enabled": True, **overrides})


def test_disabled_front_ignores_its_variables():
    lines = directives(nginx_site({"nginx_dav_front_servers": ["a:1"]}))
    assert not any(line.startswith("upstream") for line in lines)


# -- the renderer's own checks -----------------------------------------------------------


def test_unknown_override_is_refused():
    with pytest.raises(RoleCheckError, match="media_dav_prot"):
        nginx_site({"media_dav_prot": 8080})


def test_mistyped_override_is_refused():
    with pytest.raises(RoleCheckError, match="media_dav_port"):
        lighttpd_config({"media_dav_port": "eighty"})


def test_derived_variables_cannot_be_overridden():
    with pytest.raises(RoleCheckError, match="nginx_dav__dav_access"):
        role_configs.role_variables("nginx_dav", {"nginx_dav__dav_access": "user:rw"})


def test_the_roles_checks_run_before_rendering():
    with pytest.raises(RoleCheckError, match="media_dav_auth_realm may not contain"):
        nginx_site({"media_dav_auth_realm": 'a "quoted" realm'})
    with pytest.raises(RoleCheckError, match=r"lighttpd\.conf cannot quote"):
        lighttpd_config({"lighttpd_dav_error_log": '/tmp/"log'})


# -- the roles' argument specs stay complete ---------------------------------------------


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("role", ["media_dav", "nginx_dav", "lighttpd_dav"])
def test_every_default_is_documented_with_its_value(role: str):
    defaults = load(ROLES / role / "defaults" / "main.yml")
    options: dict[str, Any] = {}
    specs = load(ROLES / role / "meta" / "argument_specs.yml")["argument_specs"]
    for entry_point in specs.values():
        options.update(entry_point["options"])
    assert sorted(set(defaults) - set(options)) == []
    # media_dav_server has no default: each media host says which server it runs.
    undocumented_default = ["media_dav_server"] if role == "media_dav" else []
    assert sorted(set(options) - set(defaults)) == undocumented_default
    for name, value in defaults.items():
        if isinstance(value, str) and "{{" in value:
            assert "default" not in options[name], f"{name}: a template, described in prose"
        else:
            assert options[name].get("default") == value, name
