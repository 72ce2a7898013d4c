"""Shamir secret sharing over GF(2^8) for key recovery (OCP §8.3, D9).

Nothing here does I/O or reads a clock. Randomness comes in as a callable
(``random``, :func:`os.urandom` by default), so tests and the published
vectors can fix it.

Theory of operation
-------------------
**Field.** GF(2^8) with the AES reduction polynomial x^8 + x^4 + x^3 + x + 1
(``0x11B``, D9). Addition and subtraction are XOR; :func:`gf_mul` multiplies,
:func:`gf_inv` inverts (``0`` maps to ``0``, which no caller needs).

**Splitting** (:func:`split`, §8.3.3). Every byte ``s_i`` of a secret of
``L`` bytes gets its own random polynomial of degree ``t - 1``::

    f_i(x) = s_i + a_1,i * x + a_2,i * x^2 + ... + a_(t-1),i * x^(t-1)

and share ``j`` (``share_index`` = ``j``, 1..n) holds the ``L`` bytes
``f_0(j) .. f_(L-1)(j)``. ``random`` is called exactly once, for
``(t - 1) * L`` bytes, read coefficient-major: bytes ``[(k-1)*L, k*L)`` are
``a_k,0 .. a_k,(L-1)``, the coefficients of ``x^k`` for every secret byte.
That layout is part of the published vectors (``conformance/vectors/shamir.json``).

Every coefficient is uniform over all 256 values, the leading one included.
Forcing ``a_(t-1),i != 0`` (so that "the degree is exactly t - 1") would leak:
given ``t - 1`` shares, exactly one candidate value of ``s_i`` yields a
polynomial with a zero leading coefficient, and the forced rule would rule that
candidate out. With uniform coefficients, for any ``t - 1`` share values every
secret value is consistent with exactly one polynomial, so ``t - 1`` shares say
nothing about the secret (§8.3.1, §8.3.9).

**Combining** (:func:`combine`, §8.3.5). Lagrange interpolation at ``x = 0``;
in characteristic 2 ``0 - x_m = x_m`` and ``x_j - x_m = x_j ^ x_m``, so::

    s_i = XOR over j of  y_j,i * l_j,    l_j = prod over m != j of  x_m / (x_j ^ x_m)

All given shares are used. :func:`combine` cannot know the threshold: fewer
than ``t`` shares (or a corrupted share) give a wrong value, not an error. The
recovering agent checks the result as §8.3.5 says, by deriving the public key
and comparing :func:`ocpd.proto.ids.key_fingerprint` of it with the record's
``key_fingerprint``.

**Limits** (§8.3.2). ``3 <= n <= 255`` shares, ``2 <= t <= n`` (a threshold of
1 would hand the secret to every custodian). The secret is any non-empty byte
string; the protocol shares 32-byte Ed25519 seeds (:data:`SEED_BYTES`), and
:func:`decode_share` expects that length unless told otherwise. Refusals are
:class:`~ocpd.proto.errors.MalformedError` (OCP-400) with ``details["reason"]``
and never carry secret or share bytes.

**Wire form** (D9). ``share_index`` is the x-coordinate; ``share_data`` is
unpadded base64url of the y-bytes (:func:`encode_share_data`,
:func:`decode_share`). In a deposited record ``share_data`` is those bytes
encrypted to the custodian (D5); decrypt before decoding.

Side channels
-------------
Secret bytes (the secret, the coefficients, the y-bytes) only ever pass
through whole-array numpy operations: AND, XOR, shifts, and a bit (0 or 1)
multiplied by a constant to make a mask (0x00/0xFF, 0x00/0x1B). There are no
lookup tables indexed by secret values, no comparisons of secret values and no
branches or early exits that depend on them: the sequence of operations
depends only on ``L``, ``t``, ``n`` and the public share indices. A
multiplication is eight fixed rounds of the "Russian peasant" loop with masks;
an inverse is a fixed chain of 13 multiplications (``a^254``).

That is as far as Python goes. CPython and numpy promise nothing about timing:
numpy may pick loops by array size and alignment (public here, but still not a
contract), the interpreter allocates and frees objects, and secrets live in
immutable ``bytes`` and temporary arrays that cannot be wiped, so no attempt
at zeroisation is made. The code avoids the classic leaks (secret-indexed
tables, data-dependent branches); it is not a constant-time implementation in
the sense a C or Rust library can be. Operators who need that hold keys in an
HSM (the Organizational Vault custodian of §8.3.4).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Final

import attrs
import numpy as np

from ocpd.proto.encoding import b64url_decode, b64url_encode
from ocpd.proto.errors import InternalError, MalformedError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import numpy.typing as npt

    Bytes = npt.NDArray[np.uint8]

__all__ = [
    "MAX_INDEX",
    "MAX_SHARES",
    "MIN_SHARES",
    "MIN_THRESHOLD",
    "POLYNOMIAL",
    "SCHEME",
    "SEED_BYTES",
    "Share",
    "combine",
    "decode_share",
    "encode_share_data",
    "gf_inv",
    "gf_mul",
    "split",
]

SCHEME: Final = "shamir-sss-gf256"
"""The ``scheme`` of a recovery share record (§8.3.3)."""

POLYNOMIAL: Final = 0x11B
"""x^8 + x^4 + x^3 + x + 1, the AES polynomial (D9)."""

MIN_SHARES: Final = 3
MAX_SHARES: Final = 255
MIN_THRESHOLD: Final = 2
MAX_INDEX: Final = 255
"""Share indices (x-coordinates) are 1..255: 0 is where the secret sits."""

SEED_BYTES: Final = 32
"""An Ed25519 private key (RFC 8032 seed), the secret the protocol shares."""

_REDUCE: Final = POLYNOMIAL & 0xFF  # x^8 = x^4 + x^3 + x + 1 modulo the polynomial


@attrs.frozen
class Share:
    """One share: ``index`` is ``share_index`` (x), ``data`` the y-bytes.

    A plain value: :func:`combine` and :func:`decode_share` check it. ``data``
    is left out of the repr so that shares do not end up in logs.
    """

    index: int
    data: bytes = attrs.field(repr=False)


# --- the field ----------------------------------------------------------------------


def _as_array(value: npt.ArrayLike) -> Bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return np.frombuffer(value, dtype=np.uint8)
    return np.asarray(value, dtype=np.uint8)


def gf_mul(a: npt.ArrayLike, b: npt.ArrayLike) -> Bytes:
    """Element-wise product in GF(2^8) of two broadcastable arrays of bytes.

    ``a`` and ``b`` are byte strings, integers 0..255, or arrays of them.

    Eight fixed rounds: add ``a`` where the low bit of ``b`` is set (a mask of
    0x00 or 0xFF made by multiplication, not a branch), then ``a *= x`` with
    the reduction applied by another mask, and ``b >>= 1``.
    """
    left, right = np.broadcast_arrays(_as_array(a), _as_array(b))
    left = left.copy()
    right = right.copy()
    product = np.zeros_like(left)
    scratch = np.empty_like(left)
    for _ in range(8):
        np.bitwise_and(right, 1, out=scratch)
        np.multiply(scratch, 0xFF, out=scratch)
        np.bitwise_and(scratch, left, out=scratch)
        np.bitwise_xor(product, scratch, out=product)
        np.right_shift(left, 7, out=scratch)
        np.multiply(scratch, _REDUCE, out=scratch)
        np.left_shift(left, 1, out=left)
        np.bitwise_xor(left, scratch, out=left)
        np.right_shift(right, 1, out=right)
    return product


def gf_inv(a: npt.ArrayLike) -> Bytes:
    """Element-wise inverse in GF(2^8): ``a^254`` (``a^255 = 1``); ``0`` maps to ``0``.

    254 = 2 + 4 + ... + 128: seven squarings and six multiplications, the same
    13 for every input.
    """
    power = gf_mul(a, a)  # a^2
    result = power
    for _ in range(6):
        power = gf_mul(power, power)  # a^4, a^8, ..., a^128
        result = gf_mul(result, power)
    return result


# --- splitting ----------------------------------------------------------------------


def _check_parameters(secret: bytes, threshold: int, shares: int) -> None:
    for field, value in (("total_shares", shares), ("threshold", threshold)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise MalformedError(
                f"{field} must be an integer", details={"reason": "not_an_integer", "field": field}
            )
    if not MIN_SHARES <= shares <= MAX_SHARES:
        raise MalformedError(
            f"total_shares must be from {MIN_SHARES} to {MAX_SHARES}",
            details={
                "reason": "total_shares_out_of_range",
                "field": "total_shares",
                "value": shares,
                "minimum": MIN_SHARES,
                "maximum": MAX_SHARES,
            },
        )
    if threshold < MIN_THRESHOLD:
        raise MalformedError(
            f"threshold must be at least {MIN_THRESHOLD}: a threshold of 1 gives "
            "every custodian the secret",
            details={
                "reason": "threshold_too_low",
                "field": "threshold",
                "value": threshold,
                "minimum": MIN_THRESHOLD,
            },
        )
    if threshold > shares:
        raise MalformedError(
            "threshold must not exceed total_shares",
            details={
                "reason": "threshold_above_total",
                "field": "threshold",
                "value": threshold,
                "maximum": shares,
            },
        )
    if len(secret) == 0:
        raise MalformedError(
            "the secret is empty", details={"reason": "empty_secret", "field": "secret"}
        )


def split(
    secret: bytes,
    threshold: int,
    shares: int,
    *,
    random: Callable[[int], bytes] = os.urandom,
) -> list[Share]:
    """Split ``secret`` into ``shares`` shares, any ``threshold`` of which recover it.

    Returns the shares in index order, 1..``shares``. ``random(k)`` is called
    once and must return ``k`` uniformly random bytes (see the module
    docstring for how they are laid out).
    """
    _check_parameters(secret, threshold, shares)
    length = len(secret)
    wanted = (threshold - 1) * length
    drawn = random(wanted)
    if len(drawn) != wanted:
        raise InternalError(
            "the randomness source returned the wrong number of bytes",
            details={"reason": "short_randomness", "expected": wanted, "got": len(drawn)},
        )
    coefficients = np.frombuffer(drawn, dtype=np.uint8).reshape(threshold - 1, length)
    constant = np.frombuffer(secret, dtype=np.uint8)
    xs = np.arange(1, shares + 1, dtype=np.uint8).reshape(shares, 1)
    # Horner's rule from the highest coefficient, all shares and bytes at once.
    ys = np.broadcast_to(coefficients[-1], (shares, length))
    for row in coefficients[-2::-1]:
        ys = gf_mul(ys, xs) ^ row
    ys = gf_mul(ys, xs) ^ constant
    return [Share(index=index + 1, data=ys[index].tobytes()) for index in range(shares)]


# --- combining ----------------------------------------------------------------------


def _check_shares(shares: Sequence[Share]) -> int:
    """The common length of the shares' data, after every refusal of :func:`combine`."""
    if len(shares) < MIN_THRESHOLD:
        raise MalformedError(
            f"at least {MIN_THRESHOLD} shares are needed to recover a secret",
            details={"reason": "too_few_shares", "count": len(shares), "minimum": MIN_THRESHOLD},
        )
    seen: set[int] = set()
    for position, share in enumerate(shares):
        index = share.index
        if isinstance(index, bool) or not isinstance(index, int):
            raise MalformedError(
                "share_index must be an integer",
                details={"reason": "index_out_of_range", "position": position},
            )
        if index == 0:
            raise MalformedError(
                "share_index 0 is where the secret sits, never a share",
                details={"reason": "zero_index", "position": position, "share_index": 0},
            )
        if not 1 <= index <= MAX_INDEX:
            raise MalformedError(
                f"share_index must be from 1 to {MAX_INDEX}",
                details={
                    "reason": "index_out_of_range",
                    "position": position,
                    "share_index": index,
                },
            )
        if index in seen:
            raise MalformedError(
                "two shares have the same share_index",
                details={"reason": "duplicate_index", "position": position, "share_index": index},
            )
        seen.add(index)
        if not isinstance(share.data, bytes):
            raise MalformedError(
                "share data must be bytes",
                details={"reason": "not_bytes", "position": position, "share_index": index},
            )
    lengths = sorted({len(share.data) for share in shares})
    if len(lengths) != 1:
        raise MalformedError(
            "shares have different lengths",
            details={"reason": "length_mismatch", "lengths": lengths},
        )
    if lengths[0] == 0:
        raise MalformedError("shares are empty", details={"reason": "empty_share"})
    return lengths[0]


def _product(matrix: Bytes) -> Bytes:
    """GF(2^8) product along the last axis, pairwise (log2 of the width in rounds)."""
    while matrix.shape[-1] > 1:
        if matrix.shape[-1] % 2:
            pad = np.ones((*matrix.shape[:-1], 1), dtype=np.uint8)
            matrix = np.concatenate([matrix, pad], axis=-1)
        half = matrix.shape[-1] // 2
        matrix = gf_mul(matrix[..., :half], matrix[..., half:])
    return matrix[..., 0]


def combine(shares: Sequence[Share]) -> bytes:
    """The secret behind ``shares`` (at least ``threshold`` of them), by interpolation at 0.

    Refuses (OCP-400, ``details["reason"]``) fewer than 2 shares
    (``too_few_shares``), an index of 0 (``zero_index``) or outside 1..255
    (``index_out_of_range``), a repeated index even with equal data
    (``duplicate_index``), data of different lengths (``length_mismatch``) and
    empty data (``empty_share``). Too few shares for the threshold the secret
    was split with cannot be detected here: the result is then wrong.
    """
    length = _check_shares(shares)
    count = len(shares)
    xs = np.array([share.index for share in shares], dtype=np.uint8)
    ys = np.frombuffer(b"".join(share.data for share in shares), dtype=np.uint8)
    ys = ys.reshape(count, length)
    # Row j, column m != j: x_m (numerator) and x_j ^ x_m (denominator); 1 on the diagonal.
    diagonal = np.eye(count, dtype=bool)
    numerators = np.where(diagonal, np.uint8(1), np.broadcast_to(xs, (count, count)))
    denominators = np.where(diagonal, np.uint8(1), xs[:, None] ^ xs[None, :])
    products = _product(np.stack([numerators, denominators]))
    basis = gf_mul(products[0], gf_inv(products[1]))
    secret: bytes = np.bitwise_xor.reduce(gf_mul(basis[:, None], ys), axis=0).tobytes()
    return secret


# --- wire form ----------------------------------------------------------------------


def encode_share_data(share: Share) -> str:
    """``share_data`` of a share: unpadded base64url of its y-bytes (D9)."""
    return b64url_encode(share.data)


def decode_share(
    share_index: object, share_data: object, *, length: int | None = SEED_BYTES
) -> Share:
    """A :class:`Share` from a record's ``share_index`` and (decrypted) ``share_data``.

    ``share_data`` must be canonical unpadded base64url of exactly ``length``
    bytes (32 by default; ``None`` accepts any non-empty length). Refusals are
    OCP-400 naming the field.
    """
    if isinstance(share_index, bool) or not isinstance(share_index, int):
        raise MalformedError(
            "share_index must be an integer",
            details={"reason": "index_out_of_range", "field": "share_index"},
        )
    if not 1 <= share_index <= MAX_INDEX:
        raise MalformedError(
            f"share_index must be from 1 to {MAX_INDEX}",
            details={
                "reason": "zero_index" if share_index == 0 else "index_out_of_range",
                "field": "share_index",
                "share_index": share_index,
            },
        )
    data = b64url_decode(share_data, field="share_data", length=length)
    if not data:
        raise MalformedError(
            "share_data is empty", details={"reason": "empty_share", "field": "share_data"}
        )
    return Share(index=share_index, data=data)
