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

import gc
import re
import sys
from operator import is_
from typing import TYPE_CHECKING, Any, Final, TypeAlias

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


#: Bytes of text per step of the dense pass. Its eight work arrays take about
#: 1 MiB, about a core's L2 cache on the benchmark machine, where 128 KiB
#: steps beat 32 and 64 KiB ones (fewer numpy calls) and matched 256 KiB ones.
_CHUNK: Final = 131072
#: How far past its start each run of the dense pass looks (two capitals, a
#: space and two digits).
_LOOKAHEAD: Final = 4


class _Scratch:
    """The dense pass's work arrays, for steps of up to ``chunk`` bytes."""

    def __init__(self, chunk: int) -> None:
        self.chunk = chunk
        size = chunk + _LOOKAHEAD
        self.shifted = np.empty(size, dtype=np.uint8)
        self.digit, self.pair, self.triple, self.upper, self.capitals, self.other, self.run = (
            np.empty(size, dtype=np.bool_) for _ in range(7)
        )


#: Work arrays not in use. Fresh arrays of this size in every call would
#: come from the C allocator as new memory each time (and cost page faults),
#: and the node validates on several worker threads at once: a call takes a
#: spare set or makes one, and gives it back (``list.pop`` and
#: ``list.append`` are atomic). At most _MAX_SPARE sets are kept.
_SPARE: Final[list[_Scratch]] = []
_MAX_SPARE: Final = 8
#: Occurrences of an anchor byte found by byte searches before a numpy pass
#: takes over.
_RARE: Final = 8
_NONE: Final[_Positions] = np.zeros(0, dtype=np.intp)
_U8_DIGIT: Final = np.uint8(48)
_U8_UPPER: Final = np.uint8(65)
_U8_TEN: Final = np.uint8(10)
_U8_LETTERS: Final = np.uint8(26)
_U8_DOT: Final = np.uint8(46)
_U8_DASH: Final = np.uint8(45)
_U8_SPACE: Final = np.uint8(32)


def _runs(b: _Bytes, n: int) -> tuple[_Positions, ...]:
    """Starts of the runs the core tests begin with, over ``b[:n]``.

    In order: four digits; three digits and a dash or a dot; a digit, a dot
    and a digit; two capitals and two digits; two capitals, a space and two
    digits. The runs are ANDs of byte flags shifted against each other,
    made a chunk at a time in work arrays of the call's own; only the starts
    of three digits and of the last three runs become positions, and the
    first two runs are picked from the three digits by the byte after them.
    """
    try:
        w = _SPARE.pop()
    except IndexError:
        w = _Scratch(_CHUNK)
    if w.chunk < _CHUNK:
        w = _Scratch(_CHUNK)
    try:
        return _runs_in(b, n, w)
    finally:
        if len(_SPARE) < _MAX_SPARE:
            _SPARE.append(w)


def _runs_in(b: _Bytes, n: int, w: _Scratch) -> tuple[_Positions, ...]:
    """:func:`_runs` with the work arrays ``w``."""
    found: list[list[_Positions]] = [[], [], [], [], []]
    quads, separated, dotted, capitals, spaced = found
    for start in range(0, n, _CHUNK):
        m = min(_CHUNK, n - start)
        size = m + _LOOKAHEAD
        x = b[start : start + size]
        shifted, digit, pair, triple = w.shifted[:size], w.digit[:size], w.pair, w.triple
        upper, caps, other, run = w.upper[:size], w.capitals, w.other[:m], w.run[:m]
        np.less(np.subtract(x, _U8_DIGIT, out=shifted), _U8_TEN, out=digit)
        np.logical_and(digit[:-1], digit[1:], out=pair[: size - 1])
        np.logical_and(pair[:m], digit[2 : m + 2], out=triple[:m])
        three = np.flatnonzero(triple[:m])
        if three.size:
            after = x[three + 3]
            quads.append(three[np.less(after - _U8_DIGIT, _U8_TEN)] + start)
            separated.append(three[(after == _U8_DASH) | (after == _U8_DOT)] + start)
        # a digit, "." and a digit
        np.logical_and(digit[:m], np.equal(x[1 : m + 1], _U8_DOT, out=run), out=run)
        np.logical_and(run, digit[2 : m + 2], out=run)
        if run.any():
            dotted.append(np.flatnonzero(run) + start)
        # two capitals, then two digits, or a space and two digits
        np.less(np.subtract(x, _U8_UPPER, out=shifted), _U8_LETTERS, out=upper)
        np.logical_and(upper[: m + 2], upper[1 : m + 3], out=caps[: m + 2])
        if not caps[:m].any():
            continue  # two capitals in a row are rare in prose
        np.logical_and(caps[:m], pair[2 : m + 2], out=run)
        if run.any():
            capitals.append(np.flatnonzero(run) + start)
        np.logical_and(caps[:m], np.equal(x[2 : m + 2], _U8_SPACE, out=other), out=run)
        np.logical_and(run, pair[3 : m + 3], out=run)
        if run.any():
            spaced.append(np.flatnonzero(run) + start)
    return tuple(np.concatenate(starts) if starts else _NONE for starts in found)


class _Cores:
    """The joined text of a value and the core test of each kind.

    Each test starts from the positions where its core's leading run stands
    (:func:`_runs`: four digits, two capitals before two digits, a digit, a
    dot and a digit, ...); ordinary text has few of them. The test then
    checks the rest of the core one byte offset at a time, keeping only the
    positions that still match; on ordinary text the candidates run out
    after a check or two. The rarer anchors (``@ + ( :``) are searched for
    as bytes first and located only when present.

    Every core is tested from its first byte and is shorter than the
    :data:`_PAD` zero bytes after the text, and a start is a non-zero byte,
    so every check stays in range.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.b: _Bytes = np.frombuffer(data, dtype=np.uint8)
        (
            self.quads,
            self.separated_triples,
            self.dotted,
            self.capitals,
            self.spaced_capitals,
        ) = _runs(self.b, len(data) - _PAD)

    def located(self, value: int) -> _Positions:
        """Where the byte ``value`` occurs: byte searches while it is rare (it
        usually is), a pass over the whole text once it is not."""
        data = self.data
        found: list[int] = []
        at = data.find(value)
        while at >= 0:
            if len(found) == _RARE:
                return np.flatnonzero(self.b == value)
            found.append(at)
            at = data.find(value, at + 1)
        return np.array(found, dtype=np.intp)

    def narrow(self, starts: _Positions, checks: Sequence[_Check]) -> _Positions:
        """The ``starts`` whose byte at each offset passes that offset's check."""
        b = self.b
        for offset, check in checks:
            if starts.size == 0:
                break
            starts = starts[check(b[starts + offset])]
        return starts

    # --- the tests

    def email(self) -> bool:
        # "@" after a local-part character, then domain characters holding
        # "x.y". A domain run longer than the window is left to a regex.
        ats = self.narrow(self.located(64), [(-1, _local_char), (1, _domain_char)])
        if ats.size == 0:
            return False
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
        return self.narrow(self.located(43), checks).size > 0

    def _north_american_phone(self) -> bool:
        # ddd-ddd-dddd or ddd.ddd.dddd: the same separator twice. (Checks
        # from the far end first: a date fails at once.)
        found = self.narrow(self.separated_triples, _digits(4, 6)[::-1])
        found = found[self.b[found + 7] == self.b[found + 3]]
        if self.narrow(found, _digits(8, 11)).size:
            return True
        # (ddd) ddd-dddd, the space optional
        area = self.narrow(self.located(40), [*_digits(1, 3), (4, _byte(41))])
        tight = self.narrow(area, [*_digits(5, 7), (8, _byte(45)), *_digits(9, 12)])
        spaced = self.narrow(
            area, [(5, _byte(32)), *_digits(6, 8), (9, _byte(45)), *_digits(10, 13)]
        )
        return tight.size + spaced.size > 0

    def payment_card(self) -> bool:
        # A card starts with four digits (its first group, or a compact
        # number); then 13 characters are digits, or a space or dash between
        # two digits.
        starts = self.quads
        b = self.b
        # The order does not change the result, only how soon the candidates
        # run out: right after the four digits first (a year, an id or a
        # count ends there), then where a date or a version ends.
        for offset in (4, 10, 9, 12, 11, 8, 7, 6, 5):
            if starts.size == 0:
                break
            here = b[starts + offset]
            between = ((here == 32) | (here == 45)) & _digit(b[starts + offset + 1])
            starts = starts[_digit(here) | (between & _digit(b[starts + offset - 1]))]
        return starts.size > 0

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
        starts = np.concatenate((self.capitals, self.spaced_capitals))
        b = self.b
        for offset in range(2, 8):
            if starts.size == 0:
                break
            here = b[starts + offset]
            starts = starts[_digit(here) | ((here == 32) & _digit(b[starts + offset + 1]))]
        return starts.size > 0

    def ipv4(self) -> bool:
        # A digit, then three dots each followed by one to three digits.
        starts = self.dotted
        if starts.size == 0:
            return False
        b = self.b
        third, fourth, fifth = (b[starts + offset] for offset in (3, 4, 5))
        link = (
            (third == 46)
            | (_digit(third) & (fourth == 46))
            | (_digit(third) & _digit(fourth) & (fifth == 46))
        )
        linked = starts[link]
        return _linked(linked, linked, range(2, 5)).size > 0

    def ipv6(self) -> bool:
        # "::", or six colons, each one to four hex digits after the last.
        colons = self.located(58)
        if colons.size < 2:
            return False
        gaps = colons[1:] - colons[:-1]
        if (gaps == 1).any():
            return True
        # A chain needs three gaps of 2 to 5 bytes in a row between colons.
        near = (gaps >= 2) & (gaps <= 5)
        if colons.size < 6 or not (near[:-2] & near[1:-1] & near[2:]).any():
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
        return _linked(three, three, range(4, 11)).size > 0

    def us_ssn(self) -> bool:
        # From the far end first: a date fails at once.
        checks = [*_digits(7, 10)[::-1], (6, _byte(45)), *_digits(4, 5), (3, _byte(45))]
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
_PLAIN: Final = frozenset((str, *_CONTAINERS, *_ATOMS))
_is_str: Final = str.__instancecheck__


#: The containers found at one level, for the next: dicts, lists and tuples.
_Below: TypeAlias = "tuple[list[Any], list[object]]"


class _NotPlain(Exception):
    """The value holds something other than plain JSON types."""


class _Shared(Exception):
    """A container is reached twice (shared, or in a cycle)."""


class _Gathering:
    """The strings of a plain value, gathered a level of containers at a time.

    Each level's contents come from one ``gc.get_referents`` call for its
    dicts (their values, in order) and one for its lists and tuples. The
    contents are taken in batches. The values of dicts of one size are
    batched by position (``values[k::size]``): the records of a list hold
    the same keys in the same order, so each batch holds the values of one
    key (all text, all numbers, all lists, ...), and a batch of another mix
    is only slower. Numbers are left out; anything but plain types raises
    :class:`_NotPlain`, a container reached twice (shared, or in a cycle)
    :class:`_Shared`.

    A batch of list contents or of one key's values whose first and last
    items are strings is taken on trust, without looking at the others
    (the values of dicts of several sizes, a mix, are always looked at):
    joining the texts raises ``TypeError``
    if anything else was among them, and :meth:`recheck` then looks at each
    batch taken on trust and takes the ones that hold other things item by
    item (descending into their containers).
    """

    def __init__(self, value: object, leave_out: Sequence[object] | None = None) -> None:
        self.leave_out = leave_out
        self.left_out = False
        self.texts: list[Any] = []
        self.trusted: list[list[Any]] = []
        self.trusting = True
        self.keys: set[Any] = set()  # the same few keys recur in every record
        self.seen = {id(value)}
        if type(value) is dict:
            self.descend([value], [])
        else:
            self.descend([], [value])

    def descend(self, dicts: list[Any], sequences: list[object]) -> None:
        """Gather from ``dicts`` and ``sequences`` (lists and tuples) and
        everything below them, a level at a time."""
        while dicts or sequences:
            below: _Below = ([], [])
            if sequences:
                self.batch(gc.get_referents(*sequences), below)
            if dicts:
                self.keys.update(*dicts)
                values = gc.get_referents(*dicts)
                size = len(dicts[0])
                if size > 1 and len(values) == size * len(dicts):
                    for key in range(size):
                        self.batch(values[key::size], below)
                else:
                    self.sort(values, below)  # dicts of several sizes: a mix
            dicts, sequences = below

    def batch(self, items: list[Any], below: _Below) -> None:
        """Take the strings of ``items`` and put its containers in ``below``."""
        if self.leave_out is not None and not self.left_out and self.is_left_out(items):
            self.left_out = True
            return
        if self.trusting and items and type(items[0]) is str and type(items[-1]) is str:
            self.trusted.append(items)
        else:
            self.sort(items, below)

    def is_left_out(self, items: list[Any]) -> bool:
        """Whether ``items`` are the objects of ``leave_out``, in its order or
        the reverse (CPython lists a list's contents last to first)."""
        wanted = self.leave_out
        if wanted is None or len(items) != len(wanted) or not items:
            return False
        if items[0] is wanted[0] and all(map(is_, items, wanted)):
            return True
        return items[0] is wanted[-1] and all(map(is_, items, reversed(wanted)))

    def sort(self, items: list[Any], below: _Below) -> None:
        """Take the strings of ``items``, looking at each, and put its
        containers in ``below``."""
        kinds = set(map(type, items))
        if kinds == {str}:
            self.texts += items
            return
        if not kinds <= _PLAIN:
            raise _NotPlain
        if str in kinds:
            self.texts += filter(_is_str, items)
        containers = kinds.intersection(_CONTAINERS)
        if not containers:
            return
        found = items if len(kinds) == 1 else [item for item in items if type(item) in containers]
        count = len(self.seen)
        self.seen.update(map(id, found))
        if len(self.seen) - count != len(found):
            raise _Shared
        dicts, sequences = below
        if dict not in containers:
            sequences += found
        elif len(containers) == 1:
            dicts += found
        else:
            for item in found:
                (dicts if type(item) is dict else sequences).append(item)

    def joined(self) -> list[Any]:
        """Every string gathered (keys included), batches taken on trust last."""
        texts = self.texts + list(self.keys)
        for items in self.trusted:
            texts += items
        return texts

    def recheck(self) -> None:
        """Look at every item of the batches taken on trust, and from now on
        at every item of every batch."""
        self.trusting = False
        trusted, self.trusted = self.trusted, []
        below: _Below = ([], [])
        for items in trusted:
            if all(map(_is_str, items)):
                self.texts += items
            else:
                self.sort(items, below)
        self.descend(*below)


def _gathered_item_by_item(value: object) -> list[str] | None:
    """The strings of ``value`` (keys included), looked at one by one and each
    container once: for values whose containers are shared or cyclic."""
    texts: list[str] = []
    keys: set[str] = set()
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
    texts.extend(keys)
    return texts


def _joined_text(value: object, leave_out: Sequence[object] | None = None) -> bytes | None:
    """Every string of a plain ``value`` (keys included), NUL-joined, UTF-8, then
    _PAD zeros; ``None`` when ``value`` holds anything else, or when
    ``leave_out`` is given and its strings were not found together."""
    if sys.implementation.name != "cpython":
        return None  # gc.get_referents is CPython's traversal
    if type(value) is str and leave_out is None:
        return _encoded([value])
    if type(value) not in _CONTAINERS:
        return None
    try:
        gathering = _Gathering(value, leave_out)
        if leave_out is not None and not gathering.left_out:
            return None
        try:
            return _encoded(gathering.joined())
        except TypeError:
            # A batch taken on trust held something else, or a key is not
            # a string.
            gathering.recheck()
        try:
            return _encoded(gathering.joined())
        except TypeError:
            return None  # a key that is not a string
    except _NotPlain:
        return None
    except _Shared:
        found = None if leave_out is not None else _gathered_item_by_item(value)
        return None if found is None else _encoded(found)


def _encoded(texts: list[Any]) -> bytes:
    """``texts`` NUL-joined in UTF-8, then _PAD zeros; ``TypeError`` if one is
    not a string."""
    texts.append(_TRAILER)
    return "\x00".join(texts).encode("utf-8", "surrogatepass")


def possible_kinds(
    value: object, *, leave_out: Sequence[object] | None = None
) -> frozenset[str] | None:
    """The kinds of PII that may occur somewhere in ``value``; ``None`` when
    unsure (a small value, or one that holds more than plain JSON types).

    ``leave_out`` names strings that are not to be read: the contents of one
    list, or one key's values in a list of records (an embedding's vector
    strings), given in their order. They are left out only if the gathering
    meets them as one batch; otherwise the answer is ``None``. A batch is
    left out only if each of its items is the very object ``leave_out`` has
    at its place, and only one batch is: any other place that holds one of
    those objects is still read.
    """
    data = _joined_text(value, leave_out)
    if data is None or len(data) < _PREFILTER_MIN_BYTES:
        return None
    cores = _Cores(data)
    return frozenset(kind for kind, test in _CORE_TESTS if test(cores))
