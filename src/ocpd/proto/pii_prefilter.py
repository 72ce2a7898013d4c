"""The PII scan's prefilter: which kinds may occur anywhere in a large value.

Walking a large value string by string costs a few microseconds per string
(a 1 MB insight package holds some 25,000 keys and strings), so
:func:`ocpd.proto.pii.scan` first asks :func:`possible_kinds`, which looks
at all of the value's text at once. The strings are gathered level by level
with ``gc.get_referents`` (CPython's own C traversal of containers: one call
lists the contents of a whole level) and joined with NUL bytes into one
UTF-8 buffer; numbers are left out. Over that buffer a few numpy passes
test, for each kind, a condition that every detection of that kind
satisfies: its fixed core (the digits and dashes of an SSN, "+", a digit and
five phone characters, "::" or six chained hex groups of an IPv6 address,
"@" before a dotted domain, ...). A kind whose core occurs nowhere cannot be
found in any string, and its detector is not run; when no kind remains, the
walk is skipped.

The tests only ever say "maybe": they never look at the characters around a
core (look-behinds, word boundaries), so a core found in a longer token
costs a walk and changes no result. Only plain values take this path (exact
dicts, lists and tuples of strings, numbers, booleans and None, on
CPython); anything else, and small values, are walked directly.

This module does no I/O.
"""

from __future__ import annotations

import functools
import gc
import re
import sys
from typing import TYPE_CHECKING, Final, TypeAlias

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import numpy.typing as npt

__all__ = ["possible_kinds"]

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


def possible_kinds(value: object) -> frozenset[str] | None:
    """The kinds of PII that may occur somewhere in ``value``; ``None`` when
    unsure (a small value, or one that holds more than plain JSON types)."""
    data = _joined_text(value)
    if data is None or len(data) < _PREFILTER_MIN_BYTES:
        return None
    cores = _Cores(data)
    return frozenset(kind for kind, test in _CORE_TESTS if test(cores))
