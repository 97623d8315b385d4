"""Media servers as the transport addresses them: a name for people, an origin for URLs.

Part of the transport layer (``transport`` re-exports it): the wire and the transport
need a host's origin, and a module of theirs that imported the settings would pull
Django's settings machinery into code that only speaks HTTP.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["Host", "parse_host"]


@dataclass(frozen=True)
class Host:
    """A media server: the name used in logs and the journal, and its origin URL."""

    name: str
    origin: str

    def __str__(self) -> str:
        return self.name


def parse_host(host: str) -> Host:
    """Turn ``name:port`` or ``https://name:port`` into a :class:`Host`.

    Credentials inside the URL are refused rather than used: they would end up in
    every log line and exception message that names the host.
    """
    if not isinstance(host, str) or not host.strip() or host != host.strip():
        raise ValueError(f"{host!r} is not a host name")
    url = host if "://" in host else f"http://{host}"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{host!r} is malformed: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{host!r} must use http or https, not {parts.scheme!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            "a host must not contain credentials; use the 'auth' or 'token' option instead"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(
            f"{host!r} must be only scheme, name and port; the path comes from base_url (MEDIA_URL)"
        )
    hostname = parts.hostname
    if not hostname:
        raise ValueError(f"{host!r} has no host name")
    if any(c in hostname for c in " /\\@?#") or any(ord(c) < 33 for c in hostname):
        raise ValueError(f"{host!r} has an invalid host name")
    if port is not None and port == 0:
        raise ValueError(f"{host!r} has an invalid port 0")
    try:
        is_ipv6 = ipaddress.ip_address(hostname).version == 6
    except ValueError:
        is_ipv6 = False
    netloc = f"[{hostname}]" if is_ipv6 else hostname
    if port is not None:
        netloc = f"{netloc}:{port}"
    return Host(name=host, origin=f"{parts.scheme}://{netloc}")
