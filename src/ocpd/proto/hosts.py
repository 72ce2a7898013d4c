"""What kind of address a host name is: the rules for when plaintext is allowed.

OCP §3.1 prohibits unencrypted transport; ocpd (and its SDK) allow it only to
loopback hosts, where a development node serves without TLS.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Final
from urllib.parse import urlsplit

__all__ = ["endpoint_key", "is_loopback_host", "is_unspecified_host"]

_DEFAULT_PORTS: Final = {"http": 80, "https": 443, "ws": 80, "wss": 443}


@functools.lru_cache(maxsize=8192)
def endpoint_key(url: str) -> str:
    """``url`` reduced so that two spellings of one endpoint compare equal."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    try:
        port = parts.port or _DEFAULT_PORTS.get(scheme, 0)
    except ValueError:
        port = 0
    return f"{scheme}://{host}:{port}{parts.path.rstrip('/')}"


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback IP address (``127.0.0.0/8``, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_unspecified_host(host: str) -> bool:
    """A wildcard bind address (``0.0.0.0``, ``::``): nobody can reach it by that name."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False
