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

:func:`scan` first examines all the text of a large value at once
(:mod:`ocpd.proto.pii_prefilter`) and walks only for the kinds that may be
present there; the findings are the same as a walk over everything.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from typing import Final, Literal

import attrs
import phonenumbers

from ocpd.proto.pii_prefilter import possible_kinds

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
_ALL_KINDS: Final = frozenset(KINDS)

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


def scan(
    value: object, *, limit: int = 16, root: str = "$", kinds: frozenset[str] | None = None
) -> list[Finding]:
    """Where PII appears in ``value``: every string value and every dict key.

    The walk is iterative (any depth), in document order, and stops after
    ``limit`` findings. A string yields one finding per kind it contains.
    Paths start at ``root`` and read like ``$.content.items[2].email``; a key
    that itself contains PII appears in paths as ``[<redacted>]``. Numbers,
    booleans and null are not scanned, and a container reached twice (shared
    or cyclic) is scanned once.

    ``kinds`` limits the walk to those kinds, for a caller that has learnt
    from :func:`ocpd.proto.pii_prefilter.possible_kinds` (over this value,
    or over one holding all of its text) that no other can occur; by
    default :func:`scan` asks it itself.
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    if kinds is None:
        possible = possible_kinds(value)
        kinds = _ALL_KINDS if possible is None else possible
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
