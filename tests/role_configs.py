"""The media servers' configuration as roles/nginx_dav and roles/lighttpd_dav write it.

The suite's real nginx and lighttpd (tests/servers.py) run what the roles deploy rather
than a configuration of their own: a test of the library against a server the roles never
build would prove nothing about production, and a change to a role would go untested by
the library's suite. So the roles' templates are the source of truth, rendered here by
Ansible's own templating (``Templar``, with the filters and tests of a play) from the
variables a play would give them, in a play's order of precedence: the defaults of the
role's dependencies (media_dav) and of the role, then the test's overrides (what an
inventory would set), then the roles' ``vars/`` files, which derive values from the rest.

As in a play, nothing is rendered before the roles' own checks (their
``ansible.builtin.assert`` tasks) pass, and the overrides are validated against the
roles' ``meta/argument_specs.yml``: a misspelt or mistyped override fails loudly instead
of leaving the deployment's value (a log in /var/log, a port 80) in the test's config.

nginx_dav writes a site into the http block of Debian's nginx.conf, not a whole
configuration; ``nginx_main_config`` puts the rendered site, unchanged, into a minimal
main configuration modelled on Debian's nginx.conf, with the test's paths. lighttpd_dav
writes the whole lighttpd.conf, which is used as it is rendered.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# ansible-core ships no type information (no py.typed).
from ansible.module_utils.common.arg_spec import (  # type: ignore[import-untyped]
    ArgumentSpecValidator,
)
from ansible.parsing.dataloader import DataLoader  # type: ignore[import-untyped]
from ansible.template import Templar, trust_as_template  # type: ignore[import-untyped]

__all__ = [
    "LIGHTTPD_CONF",
    "NGINX_SITE",
    "ROLES_DIR",
    "Inventory",
    "NginxMain",
    "RoleCheckError",
    "lighttpd_config",
    "nginx_main_config",
    "nginx_site",
    "render",
    "role_variables",
]

ROLES_DIR = Path(__file__).resolve().parent.parent / "roles"
#: The templates the roles deploy, below roles/<role>/templates/.
NGINX_SITE = "etc/nginx/sites-available/media.conf.j2"
LIGHTTPD_CONF = "etc/lighttpd/lighttpd.conf.j2"

#: What the ``template`` module passes to Jinja when a task does not say otherwise.
_TEMPLATE_MODULE_OPTIONS = {"trim_blocks": True, "lstrip_blocks": False, "newline_sequence": "\n"}


class RoleCheckError(ValueError):
    """A role's check failed, or an override does not fit the role's argument specs."""


@dataclass(frozen=True)
class Inventory:
    """The magic variables of a play, for the templates that look at other hosts."""

    groups: Mapping[str, Sequence[str]] = field(default_factory=dict)
    hostvars: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    inventory_hostname: str = "localhost"


def _role_dir(name: str) -> Path:
    # Dependencies are named by FQCN (django_resto.deploy.media_dav): the repository
    # root is that collection, so the last part is the directory under roles/.
    path = ROLES_DIR / name.rsplit(".", 1)[-1]
    if not (path / "meta" / "main.yml").is_file():
        raise RoleCheckError(f"no role {name!r} under {ROLES_DIR}")
    return path


def _load(loader: DataLoader, path: Path) -> Any:
    # trusted_as_template: the roles' own files may hold templates, as in a play (values
    # from the test are plain strings, never templated).
    if not path.is_file():
        return None
    return loader.load_from_file(str(path), trusted_as_template=True)


def _chain(loader: DataLoader, role: str) -> list[Path]:
    """The role's directory after those of its dependencies, depth first, each once."""
    found: list[Path] = []

    def visit(name: str) -> None:
        path = _role_dir(name)
        meta = _load(loader, path / "meta" / "main.yml") or {}
        for dependency in meta.get("dependencies") or []:
            visit(dependency["role"] if isinstance(dependency, Mapping) else dependency)
        if path not in found:
            found.append(path)

    visit(role)
    return found


def _validated(loader: DataLoader, chain: list[Path], overrides: Mapping[str, Any]) -> dict:
    """The overrides, converted and checked as validate_argument_spec would check them."""
    options: dict[str, Any] = {}
    for path in chain:
        specs = _load(loader, path / "meta" / "argument_specs.yml") or {}
        options.update(specs.get("argument_specs", {}).get("main", {}).get("options", {}))
    result = ArgumentSpecValidator(options).validate(dict(overrides))
    if result.error_messages:
        roles = ", ".join(path.name for path in chain)
        raise RoleCheckError(
            f"overrides do not fit the argument specs of {roles}: "
            + "; ".join(result.error_messages)
        )
    return {name: result.validated_parameters[name] for name in overrides}


def role_variables(
    role: str,
    overrides: Mapping[str, Any] | None = None,
    *,
    inventory: Inventory | None = None,
    loader: DataLoader | None = None,
) -> dict[str, Any]:
    """The variables a play gives ``role``'s templates, unrendered (``Templar`` renders
    them lazily, as a play does)."""
    loader = loader or DataLoader()
    chain = _chain(loader, role)
    overrides = _validated(loader, chain, overrides or {})
    inventory = inventory or Inventory()
    variables: dict[str, Any] = {}
    for path in chain:
        variables.update(_load(loader, path / "defaults" / "main.yml") or {})
    variables.update(overrides)
    variables.update(
        groups={name: list(hosts) for name, hosts in inventory.groups.items()},
        hostvars={name: dict(values) for name, values in inventory.hostvars.items()},
        inventory_hostname=inventory.inventory_hostname,
    )
    for path in chain:
        derived = _load(loader, path / "vars" / "main.yml") or {}
        clash = sorted(set(derived) & set(overrides))
        if clash:
            raise RoleCheckError(f"{', '.join(clash)}: derived in {path.name}/vars, not settable")
        variables.update(derived)
    return variables


def _tasks(loader: DataLoader, path: Path) -> Iterator[Mapping[str, Any]]:
    """The tasks of a task file, with those of the files it imports (import_tasks)."""
    for task in _load(loader, path) or []:
        imported = task.get("ansible.builtin.import_tasks")
        if imported is not None:
            yield from _tasks(loader, path.parent / str(imported))
        else:
            yield task


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _check(templar: Templar, loader: DataLoader, chain: list[Path]) -> None:
    """Run the roles' assert tasks (reached from tasks/main.yml), as a play runs them
    before it writes anything."""
    for path in chain:
        for task in _tasks(loader, path / "tasks" / "main.yml"):
            check = task.get("ansible.builtin.assert")
            if check is None:
                continue
            if not all(templar.evaluate_conditional(c) for c in _as_list(task.get("when", True))):
                continue
            for condition in _as_list(check["that"]):
                if not templar.evaluate_conditional(condition):
                    message = templar.template(check.get("fail_msg", condition))
                    raise RoleCheckError(f"{path.name}: {task['name']}: {message}")


def render(
    role: str,
    template: str,
    overrides: Mapping[str, Any] | None = None,
    *,
    inventory: Inventory | None = None,
) -> str:
    """``role``'s ``templates/<template>`` as the role's template task would write it."""
    loader = DataLoader()
    source = _role_dir(role) / "templates" / template
    variables = role_variables(role, overrides, inventory=inventory, loader=loader)
    variables["ansible_managed"] = f"Rendered by tests/role_configs.py from roles/{role}"
    templar = Templar(loader=loader, variables=variables)
    _check(templar, loader, _chain(loader, role))
    text = trust_as_template(source.read_text())
    rendered = templar.copy_with_new_env(searchpath=[str(source.parent)]).template(
        text, escape_backslashes=False, overrides=_TEMPLATE_MODULE_OPTIONS
    )
    return str(rendered)


def nginx_site(overrides: Mapping[str, Any], *, inventory: Inventory | None = None) -> str:
    """The media site nginx_dav writes to sites-available."""
    return render("nginx_dav", NGINX_SITE, overrides, inventory=inventory)


def lighttpd_config(overrides: Mapping[str, Any]) -> str:
    """The whole lighttpd.conf lighttpd_dav writes."""
    return render("lighttpd_dav", LIGHTTPD_CONF, overrides)


@dataclass(frozen=True)
class NginxMain:
    """What Debian's /etc/nginx/nginx.conf sets around the role's site, for one test server.

    ``user`` is nginx's ``user`` directive (``"root root"`` when the tests run as root,
    else ``None``: nginx then runs as whoever started it). ``log_formats`` are the
    ``log_format`` definitions of the http block (by name), which the site's
    ``nginx_dav_access_log_format`` may name, as a deployment's nginx.conf would define.
    """

    pid_file: str | os.PathLike[str]
    error_log: str | os.PathLike[str]
    #: nginx's other temporary directories (the site sets client_body_temp_path itself).
    temp_dir: str | os.PathLike[str]
    user: str | None = None
    ssl_protocols: str | None = None
    log_formats: Mapping[str, str] = field(default_factory=dict)
    #: nginx's default is 1000 requests per connection; a test may want more.
    keepalive_requests: int | None = None


_MIME_TYPES = Path("/etc/nginx/mime.types")  # nginx-common's, which Debian's nginx.conf includes


def nginx_main_config(site: str, main: NginxMain) -> str:
    """A whole nginx configuration: Debian's nginx.conf, reduced to one test server, around
    ``site`` (the role's rendered site, included unchanged where sites-enabled/* would be).

    Debian's file also has worker_processes auto, modules-enabled/ and conf.d/ includes
    and the same http settings; the test server runs in the foreground with one worker,
    and its pid, logs and temporary files in the test's directory.
    """
    temp = Path(main.temp_dir)
    lines = [
        "# Written by tests/role_configs.py: Debian's nginx.conf, reduced to one test server,",
        "# around the site rendered from roles/nginx_dav (after the marker below).",
        "daemon off;",
        "master_process on;",
        "worker_processes 1;",
    ]
    if main.user:
        lines.append(f"user {main.user};")
    lines += [
        f"pid {main.pid_file};",
        f"error_log {main.error_log} info;",
        "events { worker_connections 768; }",
        "http {",
        "    sendfile on;",
        "    tcp_nopush on;",
        "    types_hash_max_size 2048;",
    ]
    if _MIME_TYPES.is_file():
        lines.append(f"    include {_MIME_TYPES};")
    lines.append("    default_type application/octet-stream;")
    if main.ssl_protocols:
        lines += [f"    ssl_protocols {main.ssl_protocols};", "    ssl_prefer_server_ciphers on;"]
    lines.append("    gzip on;")
    for name, layout in main.log_formats.items():
        lines.append(f"    log_format {name} '{layout}';")
    if main.keepalive_requests is not None:
        lines.append(f"    keepalive_requests {main.keepalive_requests};")
    # nginx creates every temporary directory it may use at startup: at the test's paths,
    # since the compiled-in ones (/var/lib/nginx) are root's.
    for directive, name in [
        ("client_body_temp_path", "client_body"),
        ("proxy_temp_path", "proxy"),
        ("fastcgi_temp_path", "fastcgi"),
        ("uwsgi_temp_path", "uwsgi"),
        ("scgi_temp_path", "scgi"),
    ]:
        lines.append(f"    {directive} {temp / name};")
    lines += ["", "# --- the site, rendered from roles/nginx_dav ---", site.rstrip("\n"), "}", ""]
    return "\n".join(lines)
