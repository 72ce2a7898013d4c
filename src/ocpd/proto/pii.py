"""PII detection for the Privacy Validation Layer (PVL-001).

:func:`scan` walks a JSON-like value (dicts, lists, strings, to any depth)
and reports where personal data appears; :func:`scan_text` answers which
kinds appear in one string. A :class:`Finding` names the kind and the path,
never the matched text, so findings can go into logs and error details
without leaking what they found.

Kinds and how each is recognised (every detector favours precision: a
candidate must pass a checksum, a registry or a strict shape, and must stand
on its own rather than inside a longer token):

``email``
    ``local@domain.tld``: a local part of at most 64 characters, a domain of
    at least two labels and an alphabetic (or ``xn--``) top-level label.
    Not reported: hosts without a dot (``root@localhost``: system accounts),
    top-level labels that are file extensions (``icon@2x.png``), URL user
    information (``https://user@host``) and SCP-style remotes
    (``git@github.com:org/repo``).
``phone``
    International numbers written with ``+`` and a country code, found and
    validated with ``phonenumbers`` (leniency ``VALID``: the number must be a
    valid number of its country). National numbers are recognised only for
    the North American plan, only when strongly formatted --
    ``(415) 555-2671``, ``415-555-2671`` or ``415.555.2671``, optionally
    after a leading ``1`` (``1-800-555-0199``) -- and valid for their region.
    Bare digit runs and other countries' national formats are not reported:
    they are indistinguishable from identifiers, dates and counters.
``payment_card``
    13 to 19 digits, optionally grouped by single spaces or dashes (4-4-4-4,
    4-6-5, 4-6-4), passing the Luhn check, with a known issuer prefix and a
    length that issuer uses (Visa, Mastercard, American Express, Discover,
    JCB, Diners Club). Other networks (UnionPay, Maestro, RuPay, Mir) are
    not recognised.
``iban``
    Upper-case country code, two check digits and a BBAN whose length matches
    the country (:data:`IBAN_LENGTHS`), written compactly or in groups of four
    separated by single spaces; the ISO 7064 mod-97 check must give 1.
``ipv4``
    A dotted quad accepted by :mod:`ipaddress` (no leading zeros), not part of
    a longer dotted sequence (``1.2.3.4.5``, OIDs) and not introduced as a
    version or section number (``v1.2.3.4``, ``version 1.2.3.4``,
    ``section 1.2.3.4``, ``RFC 8785 3.2.2.3``). Unspecified, loopback, multicast, reserved and
    netmask-shaped addresses (``255.255.255.0``) identify no one and are not
    reported, nor are networks: ``x.y.z.0`` and CIDR networks
    (``10.0.0.0/8``); an interface address with its prefix
    (``192.168.1.10/24``) is.
``ipv6``
    A token of hex digits, colons and dots with at least two colons and at
    least one decimal digit, accepted by :class:`ipaddress.IPv6Address`
    (``12:30:45`` is not). Unspecified (``::``) and loopback (``::1``)
    addresses are not reported.
``us_ssn``
    ``AAA-GG-SSSS`` with dashes, excluding area 000, 666 and 900-999, group
    00 and serial 0000. Numbers written with spaces or without separators
    are not reported (nine bare digits are anything).
``uk_nino``
    Two prefix letters (not D, F, I, Q, U or V; the second not O; not BG, GB,
    KN, NK, NT, TN or ZZ), six digits and a suffix A-D, compact or spaced
    (``AB 12 34 56 C``), upper case.

Known limits: names, postal addresses, dates of birth and free-text
national identifiers of other countries are not detected; obfuscated forms
(``alice at example dot com``) are not; JSON numbers, booleans and null are
not scanned at all, because coordinates, counters, amounts and timestamps
are numbers and a digit string becomes PII only when someone writes it as
text. Dict keys are scanned like string values. Only the first
:data:`MAX_SCAN_CHARS` characters of each string are examined, and each
library-backed phone detector examines at most :data:`MAX_PHONE_CANDIDATES`
candidates per string, which bounds the work for hostile input. The
detector is a safety net against accidental disclosure, not a barrier
against a sender who deliberately encodes data.

The patterns are written against catastrophic backtracking: each begins
with a look-behind that forbids starting inside a run of the characters it
consumes, and repetition is bounded or possessive, so the work grows with
the length of the string rather than exploding on crafted input.

:func:`scan` first examines all the text of a large value at once (see
"prefilter" below) and walks only for the kinds that may be present there;
the findings are the same as a walk over everything.
"""

from __future__ import annotations

import functools
import gc
import ipaddress
import json
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Final, Literal, TypeAlias

import attrs
import numpy as np
import phonenumbers

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = [
    "IBAN_LENGTHS",
    "KINDS",
    "MAX_PHONE_CANDIDATES",
    "MAX_SCAN_CHARS",
    "Finding",
    "scan",
    "scan_text",
]

#: Characters of one string that are examined; the rest is ignored.
MAX_SCAN_CHARS: Final = 1 << 20
#: Candidates per string handed to ``phonenumbers`` by each phone detector.
MAX_PHONE_CANDIDATES: Final = 256

#: IBAN length (country code and check digits included) per country, from
#: the SWIFT IBAN registry.
IBAN_LENGTHS: Final[Mapping[str, int]] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16,
    "BG": 22, "BH": 22, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28,
    "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24,
    "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18,
    "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23,
    "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32,
    "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22,
    "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24,
    "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip


@attrs.frozen
class Finding:
    """One kind of PII at one place; never carries the matched text."""

    kind: str
    path: str
    where: Literal["key", "value"]


# --------------------------------------------------------------------- email

_EMAIL: Final = re.compile(
    r"(?<![A-Za-z0-9._%+-])([A-Za-z0-9._%+-]{1,64}+)@([A-Za-z0-9.-]{1,255}+)", re.ASCII
)
_DOMAIN_CHARS: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-")
_LABEL: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?", re.ASCII)
_TLD: Final = re.compile(r"[A-Za-z]{2,63}|xn--[A-Za-z0-9-]{1,59}", re.ASCII)
# Top-level labels that are far more often file extensions (``logo@2x.png``)
# than domains. Country codes that double as extensions (``.py``, ``.md``,
# ``.sh``) stay out: they are real domains.
_FILE_EXTENSIONS: Final = frozenset(
    {
        "avif", "bak", "bmp", "css", "csv", "dll", "exe", "gif", "gz", "heic", "htm",
        "html", "ico", "ini", "jpeg", "jpg", "js", "json", "jsx", "lock", "log", "map",
        "mjs", "mp3", "mp4", "pdf", "png", "svg", "tar", "tgz", "tif", "tiff", "toml",
        "ts", "tsx", "txt", "wav", "webm", "webp", "woff", "woff2", "xml", "yaml", "yml",
    }
)  # fmt: skip
_NO_SLASH_OR_SPACE: Final = re.compile(r"[^\s/]*")


def _email(text: str) -> bool:
    for match in _EMAIL.finditer(text):
        local = match.group(1).lstrip(".")
        if not local or local.endswith(".") or ".." in local:
            continue
        domain = match.group(2).rstrip(".-")
        end = match.start(2) + len(domain)
        if match.end() < len(text) and text[match.end()] in _DOMAIN_CHARS:
            continue  # a domain run longer than any real domain
        labels = domain.split(".")
        if len(labels) < 2 or not all(_LABEL.fullmatch(label) for label in labels):
            continue
        tld = labels[-1]
        if not _TLD.fullmatch(tld) or tld.lower() in _FILE_EXTENSIONS:
            continue
        if text[end : end + 1] == ":" and text[end + 1 : end + 2].strip():
            continue  # SCP-style remote: git@github.com:org/repo.git
        slashes = text.rfind("//", max(0, match.start() - 128), match.start())
        if slashes >= 0 and _NO_SLASH_OR_SPACE.fullmatch(text, slashes + 2, match.start()):
            continue  # URL user information: https://user@host/
        return True
    return False


# --------------------------------------------------------------------- phone

# A "+", a digit, then the characters phone numbers are written with; the
# candidate is handed to phonenumbers, which finds and validates the number.
_PLUS_CANDIDATE: Final = re.compile(r"(?<![\w+/=])\+\d[0-9 \t\u00a0().\-/]{5,40}+", re.ASCII)
_US_PHONE: Final = re.compile(
    r"(?<![\w+.-])(?:1[-. ])?(\(\d{3}\) ?\d{3}-\d{4}|\d{3}([-.])\d{3}\2\d{4})(?![\w-]|\.\d)",
    re.ASCII,
)


def _phone(text: str) -> bool:
    return _international_phone(text) or _us_phone(text)


def _international_phone(text: str) -> bool:
    tried = 0
    for candidate in _PLUS_CANDIDATE.finditer(text):
        if sum(ch.isdigit() for ch in candidate.group()) < 7:
            continue
        tried += 1
        if tried > MAX_PHONE_CANDIDATES:
            return False
        matcher = phonenumbers.PhoneNumberMatcher(
            candidate.group(), None, leniency=phonenumbers.Leniency.VALID
        )
        for found in matcher:
            after = candidate.start() + found.end
            if after < len(text) and text[after].isalnum():
                continue
            return True
    return False


def _us_phone(text: str) -> bool:
    for tried, match in enumerate(_US_PHONE.finditer(text)):
        if tried >= MAX_PHONE_CANDIDATES:
            return False
        try:
            number = phonenumbers.parse(match.group(1), "US")
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            return True
    return False


# -------------------------------------------------------------- payment_card

_CARD: Final = re.compile(r"(?<![\w-])(?<!\d[ .,])\d(?:[ -]?\d){12,18}(?![\w-]|[ .,]\d)", re.ASCII)


def _luhn(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = ord(char) - 48
        if position % 2:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def _issuer_length_ok(digits: str) -> bool:
    length = len(digits)
    two, three, four = int(digits[:2]), int(digits[:3]), int(digits[:4])
    if digits[0] == "4":  # Visa
        return length in (13, 16, 19)
    if 51 <= two <= 55 or 2221 <= four <= 2720:  # Mastercard
        return length == 16
    if two in (34, 37):  # American Express
        return length == 15
    if four == 6011 or two == 65 or 644 <= three <= 649:  # Discover
        return 16 <= length <= 19
    if 3528 <= four <= 3589:  # JCB
        return 16 <= length <= 19
    if two in (36, 38) or 300 <= three <= 305:  # Diners Club
        return 14 <= length <= 19
    return False


def _grouping_ok(candidate: str) -> bool:
    separators = {char for char in candidate if not char.isdigit()}
    if not separators:
        return True
    if len(separators) > 1:
        return False
    sizes = [len(group) for group in candidate.split(separators.pop())]
    if sizes in ([4, 6, 5], [4, 6, 4]):
        return True
    return len(sizes) >= 4 and all(size == 4 for size in sizes[:-1]) and 1 <= sizes[-1] <= 4


def _payment_card(text: str) -> bool:
    for match in _CARD.finditer(text):
        candidate = match.group()
        if not _grouping_ok(candidate):
            continue
        digits = candidate.replace(" ", "").replace("-", "")
        if _issuer_length_ok(digits) and _luhn(digits):
            return True
    return False


# ---------------------------------------------------------------------- iban

_IBAN_START: Final = re.compile(r"(?<![A-Za-z0-9+/])([A-Z]{2})([0-9]{2})", re.ASCII)
_BBAN: Final = re.compile(r"[A-Z0-9]+", re.ASCII)


def _alnum_at(text: str, index: int) -> bool:
    return index < len(text) and text[index].isalnum()


def _bban_at(text: str, pos: int, need: int) -> str | None:
    """The BBAN of ``need`` characters at ``pos``, compact or in spaced groups of four."""
    compact = text[pos : pos + need]
    if len(compact) == need and _BBAN.fullmatch(compact) and not _alnum_at(text, pos + need):
        return compact
    groups = []
    while need > 0:
        size = min(4, need)
        group = text[pos + 1 : pos + 1 + size]
        if text[pos : pos + 1] != " " or len(group) != size or not _BBAN.fullmatch(group):
            return None
        groups.append(group)
        need -= size
        pos += 1 + size
    return None if _alnum_at(text, pos) else "".join(groups)


def _mod97(iban: str) -> int:
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97


def _iban(text: str) -> bool:
    for match in _IBAN_START.finditer(text):
        country, check = match.groups()
        length = IBAN_LENGTHS.get(country)
        if length is None:
            continue
        bban = _bban_at(text, match.end(), length - 4)
        if bban is not None and _mod97(country + check + bban) == 1:
            return True
    return False


# ---------------------------------------------------------------------- ipv4

_IPV4: Final = re.compile(
    r"(?<![\w.])(\d{1,3}(?:\.\d{1,3}){3})(?:/(\d{1,2}))?(?!\w|\.\w)", re.ASCII
)
# Words after which a dotted quad is a version or a reference, not an address.
_NOT_AN_ADDRESS_BEFORE: Final = re.compile(
    r"(?:\b(?:version|ver|release|build|rev|revision|section|sec|chapter|clause|figure|table"
    r"|step|oid)\.?|\brfc[ \t]?\d{1,5}|§)[ \t]*[:=#]?[ \t]*\Z",
    re.ASCII | re.IGNORECASE,
)
_IPV6_TAIL: Final = re.compile(r"[0-9A-Fa-f:]*:\Z", re.ASCII)


def _netmask_shaped(value: int) -> bool:
    inverted = ~value & 0xFFFFFFFF
    return value != 0 and inverted & (inverted + 1) == 0


def _ipv4(text: str) -> bool:
    for match in _IPV4.finditer(text):
        try:
            address = ipaddress.IPv4Address(match.group(1))
        except ValueError:
            continue
        if (
            address.is_unspecified
            or address.is_loopback
            or address.is_multicast
            or address.is_reserved
            or _netmask_shaped(int(address))
        ):
            continue
        prefix = match.group(2)
        if prefix is None and match.group(1).endswith(".0"):
            continue  # x.y.z.0: a network address (and the shape of 1.0.0.0 versions)
        if prefix is not None:
            try:
                interface = ipaddress.IPv4Interface(match.group())
            except ValueError:
                continue
            if (
                interface.ip == interface.network.network_address
                and interface.network.prefixlen < 32
            ):
                continue  # a network, not a host
        start = match.start()
        if _NOT_AN_ADDRESS_BEFORE.search(text, max(0, start - 24), start):
            continue
        tail = (
            _IPV6_TAIL.search(text, max(0, start - 40), start)
            if text[start - 1 : start] == ":"
            else None
        )
        if tail and _valid_ipv6(tail.group() + match.group(1)):
            continue  # the IPv4 tail of an IPv6 address (::ffff:192.0.2.1)
        return True
    return False


# ---------------------------------------------------------------------- ipv6

_IPV6_TOKEN: Final = re.compile(r"(?<![\w:.%])[0-9A-Fa-f:.]++(?!\w)", re.ASCII)


def _valid_ipv6(token: str) -> bool:
    try:
        ipaddress.IPv6Address(token)
    except ValueError:
        return False
    return True


def _ipv6(text: str) -> bool:
    for match in _IPV6_TOKEN.finditer(text):
        token = match.group().rstrip(".")
        if token.count(":") < 2 or len(token) > 45 or not any(c.isdigit() for c in token):
            continue
        try:
            address = ipaddress.IPv6Address(token)
        except ValueError:
            continue
        if not (address.is_unspecified or address.is_loopback):
            return True
    return False


# -------------------------------------------------------------------- us_ssn

_US_SSN: Final = re.compile(r"(?<![\w-])(\d{3})-(\d{2})-(\d{4})(?![\w-])", re.ASCII)


def _us_ssn(text: str) -> bool:
    for match in _US_SSN.finditer(text):
        area, group, serial = match.groups()
        if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
            continue
        return True
    return False


# ------------------------------------------------------------------- uk_nino

_UK_NINO: Final = re.compile(
    r"(?<![A-Za-z0-9+/])"
    r"([A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]) ?[0-9]{2} ?[0-9]{2} ?[0-9]{2} ?[A-D]"
    r"(?![A-Za-z0-9+/])",
    re.ASCII,
)
_NINO_UNUSED_PREFIXES: Final = frozenset({"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"})


def _uk_nino(text: str) -> bool:
    return any(m.group(1) not in _NINO_UNUSED_PREFIXES for m in _UK_NINO.finditer(text))


# ------------------------------------------------------------------ scanning

_DETECTORS: Final[tuple[tuple[str, Callable[[str], bool]], ...]] = (
    ("email", _email),
    ("phone", _phone),
    ("payment_card", _payment_card),
    ("iban", _iban),
    ("ipv4", _ipv4),
    ("ipv6", _ipv6),
    ("us_ssn", _us_ssn),
    ("uk_nino", _uk_nino),
)
#: Every kind :func:`scan_text` can report, in the order it reports them.
KINDS: Final = tuple(kind for kind, _ in _DETECTORS)

# Quick rejections: a detector needs at least this character to ever match.
_NEEDS: Final[Mapping[str, Callable[[str], bool]]] = {
    "email": lambda text: "@" in text,
    "ipv6": lambda text: ":" in text,
}
_HAS_DIGIT: Final = re.compile(r"[0-9]", re.ASCII)


def scan_text(text: str) -> list[str]:
    """The kinds of PII in ``text`` (its first :data:`MAX_SCAN_CHARS` characters)."""
    return _scan_text(text, _ALL_KINDS)


def _scan_text(text: str, kinds: frozenset[str]) -> list[str]:
    """:func:`scan_text` limited to ``kinds`` (the others are known to be absent)."""
    text = text[:MAX_SCAN_CHARS]
    has_digit = _HAS_DIGIT.search(text) is not None
    found = []
    for kind, detect in _DETECTORS:
        if kind not in kinds:
            continue
        if kind != "email" and not has_digit:
            continue  # every other kind contains digits
        needs = _NEEDS.get(kind)
        if needs is not None and not needs(text):
            continue
        if detect(text):
            found.append(kind)
    return found


# ----------------------------------------------------------------- prefilter
#
# Walking a large value string by string costs a few microseconds per string
# (a 1 MB insight package holds some 25,000 keys and strings), so :func:`scan`
# first looks at all of its text at once. The strings are gathered level by
# level with ``gc.get_referents`` (CPython's own C traversal of containers:
# one call lists the contents of a whole level) and joined with NUL bytes
# into one UTF-8 buffer; numbers are left out. Over that buffer a few numpy
# passes test, for each kind, a condition that every detection of that kind
# satisfies: its fixed core (the digits and dashes of an SSN, "+", a digit and
# five phone characters, "::" or six chained hex groups of an IPv6 address,
# "@" before a dotted domain, ...). A kind whose core occurs nowhere cannot
# be found in any string, and its detector is not run; when no kind remains,
# the walk is skipped.
#
# The tests only ever say "maybe": they never look at the characters around
# a core (look-behinds, word boundaries), so a core found in a longer token
# costs a walk and changes no result. Only plain values take this path
# (exact dicts, lists and tuples of strings, numbers, booleans and None, on
# CPython); anything else, and small values, are walked directly.

#: Values with less text than this are walked directly: the numpy passes cost
#: more than the walk.
_PREFILTER_MIN_BYTES: Final = 8192
#: Zero bytes after the text: every core is tested from its first
#: byte and is shorter than this, so a core that starts in the data is seen
#: whole without bounds checks.
_PAD: Final = 64
# Joined after the last string, it ends the text with _PAD zero bytes.
_TRAILER: Final = "\x00" * (_PAD - 1)
#: How far past the data anchors are collected: the longest chain (six IPv6
#: groups, 30 bytes) started before the end is seen whole, and every check
#: (at most 16 bytes after an anchor) stays inside the zeros.
_REACH: Final = 40
#: Bytes per step of the dense pass.
_CHUNK: Final = 262144
_ALL_KINDS: Final = frozenset(KINDS)
# A domain needs "x.y" after the "@".
_EMAIL_HINT: Final = re.compile(rb"@[A-Za-z0-9.-]*[A-Za-z0-9]\.[A-Za-z0-9]")
_ALNUM: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def _byte_class(members: bytes) -> npt.NDArray[np.bool_]:
    """A lookup table: ``table[byte]`` is true for the ``members``."""
    table = np.zeros(256, dtype=np.bool_)
    table[np.frombuffer(members, dtype=np.uint8)] = True
    return table


_IS_ALNUM: Final = _byte_class(_ALNUM)
_IS_LOCAL: Final = _byte_class(_ALNUM + b"._%+-")
_IS_DOMAIN: Final = _byte_class(_ALNUM + b".-")
# Characters of a phone candidate after "+d"; U+00A0 is C2 A0 in UTF-8.
_IS_PHONE: Final = _byte_class(b"0123456789 \t().-/\xc2\xa0")

_Bytes: TypeAlias = "npt.NDArray[np.uint8]"
_Bools: TypeAlias = "npt.NDArray[np.bool_]"
_Positions: TypeAlias = "npt.NDArray[np.intp]"


def _digit(data: _Bytes) -> _Bools:
    return (data - np.uint8(48)) < 10


def _upper(data: _Bytes) -> _Bools:
    return (data - np.uint8(65)) < 26


def _hexdigit(data: _Bytes) -> _Bools:
    return _digit(data) | (((data | np.uint8(0x20)) - np.uint8(97)) < 6)


def _linked(starts: _Positions, targets: _Positions, gaps: range) -> _Positions:
    """The ``starts`` with a target ``gap`` bytes after them (``targets`` sorted)."""
    keep = np.zeros(starts.shape, dtype=np.bool_)
    if targets.size == 0:
        return starts[keep]
    for gap in gaps:
        wanted = starts + gap
        found = np.minimum(np.searchsorted(targets, wanted), targets.size - 1)
        keep |= targets[found] == wanted
    return starts[keep]


def _byte(value: int) -> Callable[[_Bytes], _Bools]:
    return lambda data: data == value


def _separator(data: _Bytes) -> _Bools:
    found: _Bools = (data == 45) | (data == 46)
    return found


def _local_char(data: _Bytes) -> _Bools:
    found: _Bools = _IS_LOCAL[data]
    return found


def _domain_char(data: _Bytes) -> _Bools:
    found: _Bools = _IS_DOMAIN[data]
    return found


def _phone_char(data: _Bytes) -> _Bools:
    found: _Bools = _IS_PHONE[data]
    return found


_Check: TypeAlias = "tuple[int, Callable[[_Bytes], _Bools]]"


def _digits(first: int, last: int) -> list[_Check]:
    return [(offset, _digit) for offset in range(first, last + 1)]


class _Cores:
    """The joined text of a value and the core test of each kind.

    One dense pass finds the bytes the cores are anchored on: digits and
    ``( + . : @`` (bytes 40 to 64, one range, so ``) * , - / ; < = > ?``
    come along). Each test then starts from its anchors and checks the core
    one byte offset at a time, keeping only the positions that still match;
    on ordinary text the candidates run out after a check or two.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.n = len(data) - _PAD
        b: _Bytes = np.frombuffer(data, dtype=np.uint8)
        self.b = b
        # Anchors are collected up to n + _REACH: far enough for a core that
        # starts before n to be checked whole, near enough for every check to
        # stay in range. The dense pass runs chunk by chunk so that its masks
        # stay small, in memory the allocator already holds.
        reach = self.n + _REACH
        found = [
            np.flatnonzero((b[start : min(start + _CHUNK, reach)] - np.uint8(40)) < 25) + start
            for start in range(0, reach, _CHUNK)
        ]
        anchors = np.concatenate(found)
        values = b[anchors]
        digits = anchors[_digit(values)]
        self.pairs: _Positions = digits[_digit(b[digits + 1])]
        self.dots: _Positions = anchors[values == 46]
        self.colons: _Positions = anchors[values == 58]
        self.pluses: _Positions = anchors[values == 43]
        self.parens: _Positions = anchors[values == 40]
        self.ats: _Positions = anchors[values == 64]

    def narrow(self, starts: _Positions, checks: Sequence[_Check]) -> _Positions:
        """The ``starts`` whose byte at each offset passes that offset's check."""
        b = self.b
        for offset, check in checks:
            if starts.size == 0:
                break
            starts = starts[check(b[starts + offset])]
        return starts

    def before(self, starts: _Positions) -> _Positions:
        return starts[starts < self.n]

    def email(self) -> bool:
        # "@" after a local-part character, then domain characters holding
        # "x.y". A domain run longer than the window is left to a regex.
        ats = self.narrow(self.before(self.ats), [(-1, _local_char), (1, _domain_char)])
        after = self.b[ats[:, None] + np.arange(1, _PAD)]
        domain = np.logical_and.accumulate(_IS_DOMAIN[after], axis=1)
        alnum = _IS_ALNUM[after]
        dotted = domain[:, 1:-1] & (after[:, 1:-1] == 46) & alnum[:, :-2] & alnum[:, 2:]
        if dotted.any():
            return True
        longer = ats[domain[:, -1]]
        return any(_EMAIL_HINT.match(self.data, int(at)) is not None for at in longer)

    def phone(self) -> bool:
        return self._international_phone() or self._north_american_phone()

    def _international_phone(self) -> bool:
        # "+", a digit, then five characters of the candidate class.
        checks = [(1, _digit), *[(offset, _phone_char) for offset in range(2, 7)]]
        return self.narrow(self.before(self.pluses), checks).size > 0

    def _north_american_phone(self) -> bool:
        # ddd-ddd-dddd or ddd.ddd.dddd: the same separator twice.
        found = self.narrow(self.separated_triples, _digits(4, 6))
        found = found[self.b[found + 7] == self.b[found + 3]]
        if self.narrow(found, _digits(8, 11)).size:
            return True
        # (ddd) ddd-dddd, the space optional
        area = self.narrow(self.before(self.parens), [*_digits(1, 3), (4, _byte(41))])
        tight = self.narrow(area, [*_digits(5, 7), (8, _byte(45)), *_digits(9, 12)])
        spaced = self.narrow(
            area, [(5, _byte(32)), *_digits(6, 8), (9, _byte(45)), *_digits(10, 13)]
        )
        return tight.size + spaced.size > 0

    def payment_card(self) -> bool:
        # A card starts with four digits (its first group, or a compact
        # number); then 13 characters are digits, or a space or dash between
        # two digits.
        starts = self.narrow(self.triples, [(3, _digit)])
        b = self.b
        for offset in range(12, 3, -1):  # from the end: dates and versions fail at once
            if starts.size == 0:
                break
            here = b[starts + offset]
            between = ((here == 32) | (here == 45)) & _digit(b[starts + offset + 1])
            starts = starts[_digit(here) | (between & _digit(b[starts + offset - 1]))]
        return starts.size > 0

    def _capitals(self, spaced: bool) -> _Positions:
        """Starts of two capitals right before a digit pair (or one space before it)."""
        gap = 3 if spaced else 2
        starts = self.pairs[(self.pairs >= gap) & (self.pairs < self.n + gap)] - gap
        checks = [(1, _upper), (0, _upper)]
        return self.narrow(starts, [(2, _byte(32)), *checks] if spaced else checks)

    @functools.cached_property
    def capitals(self) -> _Positions:
        """Starts of two capitals right before a digit pair."""
        return self._capitals(spaced=False)

    @functools.cached_property
    def triples(self) -> _Positions:
        """Starts of three digits."""
        return self.narrow(self.before(self.pairs), [(2, _digit)])

    @functools.cached_property
    def separated_triples(self) -> _Positions:
        """Starts of three digits and a dash or a dot."""
        return self.narrow(self.triples, [(3, _separator)])

    def iban(self) -> bool:
        # CCdd, then 11 BBAN characters, each maybe after one space.
        starts = self.capitals
        b = self.b
        for offset in range(4, 15):
            if starts.size == 0:
                break
            here = b[starts + offset]
            after = b[starts + offset + 1]
            bban = _upper(here) | _digit(here)
            starts = starts[bban | ((here == 32) & (_upper(after) | _digit(after)))]
        return starts.size > 0

    def uk_nino(self) -> bool:
        # Two capitals, then six digits, each pair maybe after one space.
        starts = np.concatenate((self.capitals, self._capitals(spaced=True)))
        b = self.b
        for offset in range(2, 8):
            if starts.size == 0:
                break
            here = b[starts + offset]
            starts = starts[_digit(here) | ((here == 32) & _digit(b[starts + offset + 1]))]
        return starts.size > 0

    def ipv4(self) -> bool:
        # A digit, then three dots each followed by one to three digits.
        dots = self.dots[(self.dots >= 1) & (self.dots < self.n + 9)]
        starts = self.narrow(dots - 1, [(0, _digit), (2, _digit)])
        b = self.b
        third, fourth, fifth = (b[starts + offset] for offset in (3, 4, 5))
        link = (
            (third == 46)
            | (_digit(third) & (fourth == 46))
            | (_digit(third) & _digit(fourth) & (fifth == 46))
        )
        linked = starts[link]
        return bool((_linked(linked, linked, range(2, 5)) < self.n).any())

    def ipv6(self) -> bool:
        # "::", or six colons, each one to four hex digits after the last.
        colons = self.colons
        if self.before(colons[:-1][colons[1:] - colons[:-1] == 1]).size:
            return True
        if colons.size < 6:
            return False
        after = self.b[colons[:, None] + np.arange(1, 6)]
        hexes = _hexdigit(after)
        link = np.zeros(colons.shape, dtype=np.bool_)
        run = np.ones(colons.shape, dtype=np.bool_)
        for digits in range(1, 5):
            run &= hexes[:, digits - 1]
            link |= run & (after[:, digits] == 58)
        linked = colons[link]
        three = _linked(linked, linked, range(2, 6))
        return bool((_linked(three, three, range(4, 11)) < self.n).any())

    def us_ssn(self) -> bool:
        checks = [(3, _byte(45)), (6, _byte(45)), *_digits(4, 5), *_digits(7, 10)]
        return self.narrow(self.separated_triples, checks).size > 0


_CORE_TESTS: Final[tuple[tuple[str, Callable[[_Cores], bool]], ...]] = (
    ("email", _Cores.email),
    ("phone", _Cores.phone),
    ("payment_card", _Cores.payment_card),
    ("iban", _Cores.iban),
    ("ipv4", _Cores.ipv4),
    ("ipv6", _Cores.ipv6),
    ("us_ssn", _Cores.us_ssn),
    ("uk_nino", _Cores.uk_nino),
)


_CONTAINERS: Final = (dict, list, tuple)
_ATOMS: Final = (int, float, bool, type(None))


def _joined_text(value: object) -> bytes | None:
    """Every string of a plain ``value`` (keys included), NUL-joined, UTF-8, then
    _PAD zeros; ``None`` when ``value`` holds anything else."""
    if sys.implementation.name != "cpython":
        return None  # gc.get_referents is CPython's traversal
    texts: list[str] = []
    keys: set[str] = set()  # the same few keys recur in every record
    seen: set[int] = set()
    level: list[object] = [value]
    while level:
        below: list[object] = []
        for item in gc.get_referents(*level):
            kind = type(item)
            if kind is str:
                texts.append(item)
            elif kind in _CONTAINERS:
                if id(item) not in seen:
                    seen.add(id(item))
                    below.append(item)
            elif kind not in _ATOMS:
                return None
        for item in level:
            if type(item) is dict:
                keys.update(item)
        level = below
    if type(value) is str:
        texts.append(value)
    elif type(value) not in _CONTAINERS:
        return None
    texts.extend(keys)
    texts.append(_TRAILER)
    try:
        return "\x00".join(texts).encode("utf-8", "surrogatepass")
    except TypeError:
        return None  # a key that is not a string


def _possible_kinds(value: object) -> frozenset[str]:
    """The kinds that may occur somewhere in ``value``; every kind when unsure."""
    data = _joined_text(value)
    if data is None or len(data) < _PREFILTER_MIN_BYTES:
        return _ALL_KINDS
    cores = _Cores(data)
    return frozenset(kind for kind, test in _CORE_TESTS if test(cores))


_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}", re.ASCII)
_REDACTED_KEY: Final = "[<redacted>]"


def _key_step(key: object, redacted: bool) -> str:
    if redacted:
        return _REDACTED_KEY
    if isinstance(key, str):
        if _IDENTIFIER.fullmatch(key):
            return f".{key}"
        shown = key if len(key) <= 64 else key[:63] + "\u2026"
        return f"[{json.dumps(shown)}]"
    return f"[{key!r}]" if isinstance(key, int | float | bool) or key is None else "[?]"


def _join(path: str, step: str) -> str:
    return step[1:] if not path and step.startswith(".") else path + step


def scan(value: object, *, limit: int = 16, root: str = "$") -> list[Finding]:
    """Where PII appears in ``value``: every string value and every dict key.

    The walk is iterative (any depth), in document order, and stops after
    ``limit`` findings. A string yields one finding per kind it contains.
    Paths start at ``root`` and read like ``$.content.items[2].email``; a key
    that itself contains PII appears in paths as ``[<redacted>]``. Numbers,
    booleans and null are not scanned, and a container reached twice (shared
    or cyclic) is scanned once.
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    kinds = _possible_kinds(value)
    if not kinds:
        return []
    findings: list[Finding] = []
    seen: set[int] = set()
    # (node, path, kinds found in the key that leads to it, if any)
    stack: list[tuple[object, str, list[str]]] = [(value, root, [])]
    while stack:
        node, path, key_kinds = stack.pop()
        for kind in key_kinds:
            findings.append(Finding(kind=kind, path=path, where="key"))
            if len(findings) >= limit:
                return findings
        if isinstance(node, str):
            for kind in _scan_text(node, kinds):
                findings.append(Finding(kind=kind, path=path, where="value"))
                if len(findings) >= limit:
                    return findings
        elif isinstance(node, Mapping | list | tuple):
            if id(node) in seen:
                continue
            seen.add(id(node))
            children: list[tuple[object, str, list[str]]] = []
            if isinstance(node, Mapping):
                for key, child in node.items():
                    found = _scan_text(key, kinds) if isinstance(key, str) else []
                    children.append((child, _join(path, _key_step(key, bool(found))), found))
            else:
                children = [(child, f"{path}[{index}]", []) for index, child in enumerate(node)]
            stack.extend(reversed(children))
    return findings
