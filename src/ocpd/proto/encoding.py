"""Strict text encodings shared by every artifact (D1).

* base64url without padding: decoders reject padding, whitespace, characters
  outside the alphabet and any string that does not re-encode to itself (so
  the non-zero "spare bits" of a last character are refused too).
* RFC 3339 timestamps in UTC with a literal ``Z`` and an optional fraction of
  1-6 digits. Other offsets, lowercase ``t``/``z``, leap seconds and missing
  seconds are refused.

Time values inside the core are plain ``float`` seconds since the Unix epoch;
nothing here reads a clock.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import functools
import re
from datetime import UTC, datetime
from typing import Final

from ocpd.proto.errors import MalformedError

__all__ = [
    "b64url_decode",
    "b64url_encode",
    "format_timestamp",
    "parse_timestamp",
]

_B64URL_RE: Final = re.compile(r"[A-Za-z0-9_-]*")
_TIMESTAMP_RE: Final = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?Z",
    re.ASCII,
)


def b64url_encode(data: bytes) -> str:
    """base64url of ``data`` without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: object, *, field: str = "value", length: int | None = None) -> bytes:
    """Decode strict unpadded base64url, optionally of an exact byte ``length``.

    Raises :class:`MalformedError` (OCP-400) naming ``field`` on any deviation.
    """
    if not isinstance(text, str):
        raise MalformedError(f"{field} must be a base64url string", details={"field": field})
    if len(text) % 4 == 1 or _B64URL_RE.fullmatch(text) is None:
        raise MalformedError(f"{field} is not unpadded base64url", details={"field": field})
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise MalformedError(
            f"{field} is not unpadded base64url", details={"field": field}
        ) from exc
    if b64url_encode(data) != text:
        raise MalformedError(
            f"{field} is not in canonical base64url form", details={"field": field}
        )
    if length is not None and len(data) != length:
        raise MalformedError(
            f"{field} must encode exactly {length} bytes",
            details={"field": field, "expected_bytes": length},
        )
    return data


_OFF_CALENDAR: Final = float("-inf")


def parse_timestamp(text: object, *, field: str = "timestamp") -> float:
    """Seconds since the epoch for a D1 timestamp; OCP-400 for anything else."""
    if not isinstance(text, str):
        raise MalformedError(f"{field} must be an RFC 3339 string", details={"field": field})
    seconds = _epoch_seconds(text)
    if seconds is None:
        raise MalformedError(
            f"{field} must be RFC 3339 UTC with a 'Z' suffix", details={"field": field}
        )
    if seconds == _OFF_CALENDAR:
        raise MalformedError(f"{field} is not a valid date-time", details={"field": field})
    return seconds


@functools.lru_cache(maxsize=4096)
def _epoch_seconds(text: str) -> float | None:
    """The value of a D1 timestamp; ``None`` when malformed, ``_OFF_CALENDAR`` for a
    well-formed date that does not exist.

    Cached: a busy node sees the same second in many messages.
    """
    m = _TIMESTAMP_RE.fullmatch(text)
    if m is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    try:
        # datetime validates the calendar (days per month, leap years) and
        # rejects second 60; the epoch value is computed exactly below.
        datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:
        return _OFF_CALENDAR
    whole = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    fraction = m.group(7)
    return whole + (int(fraction) / 10 ** len(fraction) if fraction else 0.0)


def format_timestamp(seconds: float, *, fraction_digits: int = 0) -> str:
    """The D1 text of ``seconds`` since the epoch, truncated to ``fraction_digits`` (0-6)."""
    if not 0 <= fraction_digits <= 6:
        raise ValueError("fraction_digits must be 0-6")
    micros_total = round(seconds * 1_000_000)
    whole, micros = divmod(micros_total, 1_000_000)
    text = datetime.fromtimestamp(whole, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if fraction_digits:
        text += "." + f"{micros:06d}"[:fraction_digits]
    return text + "Z"
