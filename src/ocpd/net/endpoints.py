"""Comparing endpoint URLs as endpoints, not as strings."""

from __future__ import annotations

import functools
from typing import Final
from urllib.parse import urlsplit

__all__ = ["endpoint_key"]

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
