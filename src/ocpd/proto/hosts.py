"""What kind of address a host name is: the rules for when plaintext is allowed.

OCP §3.1 prohibits unencrypted transport; ocpd (and its SDK) allow it only to
loopback hosts, where a development node serves without TLS.
"""

from __future__ import annotations

import ipaddress

__all__ = ["is_loopback_host", "is_unspecified_host"]


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
