"""The Privacy Validation Layer (OCP §5.2): every knowledge payload passes here.

:func:`validate_knowledge` takes one ``knowledge_share`` payload that has
passed the ``payload.knowledge_share`` schema, the byte size it was sent
with, the node's :class:`PvlPolicy` and the :class:`KnowledgePermissions` of
the bond between sender and receiver (``None`` without a bond). It returns
nothing, or raises on the first stage that fails: :class:`PvlRejection`
with a PVL code, or :class:`MalformedError` (OCP-400) for content that is
not what its fields declare.

The pipeline (cheap stages first, so hostile input costs little):

1. size, PVL-005: ``size`` above the node limit or the bond's
   ``max_payload_bytes``.
2. bond permission, PVL-006: with a bond, ``knowledge_share`` must be
   enabled and the type among ``allowed_types`` (when listed); a model delta
   also needs ``model_delta_share``. Without a bond, embeddings and insights
   pass and model deltas are refused: sharing model updates is the riskiest
   exchange the protocol has, so ocpd requires a bond that opts into it.
3. provenance, PVL-004: insights need ``source_agent``, ``derived_from``,
   ``methodology``, ``timestamp`` and ``reproducibility_hash``; model deltas
   ``source_agent``, ``training_samples`` and ``timestamp``. Embeddings carry
   none.
4. anonymisation, PVL-002: an insight must say ``anonymized: true``.
5. differential privacy, PVL-003 (model deltas): see
   :func:`check_differential_privacy`.
6. content: embedding vectors decode to exactly ``dimensions`` finite
   values, L2-normalised unless ``normalization`` is ``"none"`` (OCP-400);
   a model delta decodes and decompresses (OCP-400) within
   :attr:`PvlPolicy.max_decompressed_bytes` (PVL-005) and must look like
   tensor data, not text or copied records (PVL-002, see
   :func:`check_extractable`).
7. PII, PVL-001: :func:`ocpd.proto.pii.scan` over the payload without its
   binary fields (embedding ``vector`` strings, the model delta ``payload``).

Rejections name fields, limits and rules, never a value taken from the
payload. This module does no I/O and reads no clock.
"""

from __future__ import annotations

import binascii
import math
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import repeat
from typing import TYPE_CHECKING, Any, Final

import attrs
import numpy as np
import pybase64

from ocpd.proto import schema
from ocpd.proto.encoding import b64url_decode, b64url_encode
from ocpd.proto.errors import MalformedError, PvlRejection
from ocpd.proto.jcs import canonicalize
from ocpd.proto.pii import Finding, scan
from ocpd.proto.pii_prefilter import possible_kinds

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = [
    "COMPRESSIONS",
    "DEFAULT_MAX_DECOMPRESSED_BYTES",
    "DP_MECHANISMS",
    "ENCODING_WIDTHS",
    "INSIGHT_PROVENANCE",
    "MAX_EPSILON",
    "MAX_PAYLOAD_SIZE",
    "MODEL_DELTA_PROVENANCE",
    "RECORD_BYTES",
    "RECORD_REPEAT_LIMIT",
    "TEXT_RUN_BYTES",
    "KnowledgePermissions",
    "PvlPolicy",
    "check_differential_privacy",
    "check_extractable",
    "check_outgoing",
    "compress_delta",
    "decode_delta",
    "decode_vectors",
    "encode_vector",
    "validate_knowledge",
    "validate_sealed",
]

#: Appendix D MAX_PAYLOAD_SIZE and MAX_EPSILON.
MAX_PAYLOAD_SIZE: Final = 10_485_760
MAX_EPSILON: Final = 10.0
#: Bytes per value of each embedding encoding (all little-endian IEEE 754;
#: bfloat16 is the upper half of a float32).
ENCODING_WIDTHS: Final[Mapping[str, int]] = {"float32": 4, "float16": 2, "bfloat16": 2}
COMPRESSIONS: Final = ("none", "gzip", "zlib")
#: Noise mechanisms a model delta may declare. Laplace gives pure ε-DP, so it
#: may state δ = 0; Gaussian noise always needs δ > 0.
DP_MECHANISMS: Final = frozenset({"gaussian", "laplace"})
DP_FIELDS: Final = ("mechanism", "epsilon", "delta", "noise_multiplier")
INSIGHT_PROVENANCE: Final = (
    "source_agent",
    "derived_from",
    "methodology",
    "timestamp",
    "reproducibility_hash",
)
MODEL_DELTA_PROVENANCE: Final = ("source_agent", "training_samples", "timestamp")
#: Default bound on a model delta after decompression. The largest payload
#: carries at most 7.5 MiB of compressed bytes, so this allows a ratio of
#: about 8.5: noisy float data compresses to 85-95 % of its size; mostly-zero
#: sparse updates compress further and may need a larger bound.
DEFAULT_MAX_DECOMPRESSED_BYTES: Final = 64 * 1024 * 1024
#: A model delta holding this many consecutive text bytes is refused.
TEXT_RUN_BYTES: Final = 64
#: Records for the repetition check: aligned blocks of this many bytes ...
RECORD_BYTES: Final = 64
#: ... of which no non-zero one may occur this often.
RECORD_REPEAT_LIMIT: Final = 16

# Decompression steps: input fed and output taken per call, so that a
# compression bomb is stopped after at most one step past the limit.
_INFLATE_INPUT: Final = 65536
_INFLATE_OUTPUT: Final = 262144
_ZLIB_WBITS: Final[Mapping[str, int]] = {"gzip": 16 + zlib.MAX_WBITS, "zlib": zlib.MAX_WBITS}
# Bytes per step of the text-run scan of a model delta.
_SCAN_CHUNK: Final = 1 << 20


def _positive_int(instance: object, attribute: attrs.Attribute[int], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{attribute.name} must be a positive integer")


def _fraction(instance: object, attribute: attrs.Attribute[float], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise ValueError(f"{attribute.name} must be a number between 0 and 1")


def _epsilon_limit(instance: object, attribute: attrs.Attribute[float], value: object) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 <= value <= MAX_EPSILON
    ):
        raise ValueError(f"{attribute.name} must be between 0 and {MAX_EPSILON}")


@attrs.frozen
class PvlPolicy:
    """The node's (or SDK's) limits; defaults are the protocol's.

    ``l2_tolerance``: how far from 1 the L2 norm of a float32 vector may be;
    ``l2_tolerance_16bit`` the same for float16 and bfloat16, whose rounding
    alone moves a unit vector's norm by up to 2^-9 (bfloat16 keeps 8
    significant bits).
    """

    max_payload_bytes: int = attrs.field(default=MAX_PAYLOAD_SIZE, validator=_positive_int)
    max_epsilon: float = attrs.field(default=MAX_EPSILON, validator=_epsilon_limit)
    max_decompressed_bytes: int = attrs.field(
        default=DEFAULT_MAX_DECOMPRESSED_BYTES, validator=_positive_int
    )
    l2_tolerance: float = attrs.field(default=1e-3, validator=_fraction)
    l2_tolerance_16bit: float = attrs.field(default=1e-2, validator=_fraction)

    def tolerance(self, encoding: str) -> float:
        return self.l2_tolerance if encoding == "float32" else self.l2_tolerance_16bit

    def limit(self, bond: KnowledgePermissions | None) -> tuple[int, str]:
        """The payload size limit in force and whose it is (``node`` or ``bond``)."""
        if bond is not None and bond.max_payload_bytes is not None:
            if bond.max_payload_bytes < self.max_payload_bytes:
                return bond.max_payload_bytes, "bond"
        return self.max_payload_bytes, "node"


@attrs.frozen
class KnowledgePermissions:
    """What one bond allows (its agreed ``permissions``, §4.3.2)."""

    enabled: bool
    allowed_types: frozenset[str] | None = None
    max_payload_bytes: int | None = None
    model_delta: bool = False

    @classmethod
    def from_bond(cls, permissions: Mapping[str, Any]) -> KnowledgePermissions:
        """Read a bond's ``permissions`` object; an absent block allows nothing."""
        share = permissions.get("knowledge_share", {})
        delta = permissions.get("model_delta_share", {})
        if not isinstance(share, Mapping) or not isinstance(delta, Mapping):
            raise MalformedError(
                "bond permissions must be objects", details={"field": "permissions"}
            )
        types = share.get("allowed_types")
        if types is not None and (
            not isinstance(types, list | tuple) or not all(isinstance(t, str) for t in types)
        ):
            raise MalformedError(
                "allowed_types must be a list of knowledge types",
                details={"field": "permissions.knowledge_share.allowed_types"},
            )
        limit = share.get("max_payload_bytes")
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 0
        ):
            raise MalformedError(
                "max_payload_bytes must be a non-negative integer",
                details={"field": "permissions.knowledge_share.max_payload_bytes"},
            )
        return cls(
            enabled=share.get("enabled") is True,
            allowed_types=None if types is None else frozenset(types),
            max_payload_bytes=limit,
            model_delta=delta.get("enabled") is True,
        )


# --------------------------------------------------------------------- pipeline


def validate_knowledge(
    payload: Mapping[str, Any],
    *,
    size: int,
    policy: PvlPolicy,
    bond: KnowledgePermissions | None,
) -> None:
    """Run the pipeline over one schema-valid ``knowledge_share`` payload.

    ``size`` is the payload's byte size as sent (its JSON/JCS bytes).
    Raises :class:`PvlRejection` or :class:`MalformedError` at the first
    failing stage; see the module documentation for the stages.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError("size must be a non-negative integer")
    kind = payload.get("knowledge_type")
    if kind not in ("embedding", "insight", "model_delta"):
        raise MalformedError("unknown knowledge_type", details={"field": "$.knowledge_type"})
    _check_size(size, policy, bond)
    _check_bond(kind, bond)
    _check_provenance(kind, payload)
    if kind == "insight" and payload.get("anonymized") is not True:
        raise PvlRejection(
            "insights must be anonymised before they are shared",
            code="PVL-002",
            details={"field": "$.anonymized"},
        )
    if kind == "model_delta":
        check_differential_privacy(payload, max_epsilon=policy.max_epsilon)
    vector_texts = None
    if kind == "embedding":
        vector_texts = _check_vectors(payload, policy)
    elif kind == "model_delta":
        check_extractable(decode_delta(payload, max_bytes=policy.max_decompressed_bytes))
    findings = _scan_for_pii(kind, payload, vector_texts)
    if findings:
        raise PvlRejection(
            "personal data found in the payload",
            code="PVL-001",
            details={
                "findings": [{"kind": f.kind, "path": f.path, "where": f.where} for f in findings]
            },
        )


def validate_sealed(size: int, *, policy: PvlPolicy, bond: KnowledgePermissions | None) -> None:
    """The stages an encrypted payload allows a node: size, then the bond's switch.

    ``size`` is the plaintext's (an AES-GCM ciphertext is exactly as long);
    the knowledge type is unknown, so only ``knowledge_share.enabled`` of a
    bond is checked. The receiver runs :func:`validate_knowledge` after
    decryption.
    """
    _check_size(size, policy, bond)
    if bond is not None and not bond.enabled:
        raise PvlRejection(
            "this knowledge needs a bond granting knowledge_share.enabled",
            code="PVL-006",
            details={"permission": "knowledge_share.enabled"},
        )


def check_outgoing(
    payload: Mapping[str, Any], *, policy: PvlPolicy, bond: KnowledgePermissions | None
) -> int:
    """For senders: the schema, then the pipeline; returns the payload's JCS size.

    Run it before encrypting, so that a payload the receiver would refuse is
    never sent.
    """
    schema.validate("payload.knowledge_share", payload)
    try:
        size = len(canonicalize(payload))
    except ValueError as exc:
        raise MalformedError("payload has no canonical JSON form") from exc
    validate_knowledge(payload, size=size, policy=policy, bond=bond)
    return size


def _check_size(size: int, policy: PvlPolicy, bond: KnowledgePermissions | None) -> None:
    limit, source = policy.limit(bond)
    if size > limit:
        raise PvlRejection(
            f"payload of {size} bytes exceeds the {source} limit of {limit} bytes",
            code="PVL-005",
            details={"limit": limit, "size": size, "source": source},
        )


def _check_bond(kind: str, bond: KnowledgePermissions | None) -> None:
    refused = None
    if bond is None:
        if kind == "model_delta":
            refused = "model_delta_share.enabled"
    elif not bond.enabled:
        refused = "knowledge_share.enabled"
    elif bond.allowed_types is not None and kind not in bond.allowed_types:
        refused = "knowledge_share.allowed_types"
    elif kind == "model_delta" and not bond.model_delta:
        refused = "model_delta_share.enabled"
    if refused is not None:
        raise PvlRejection(
            f"this knowledge type needs a bond granting {refused}",
            code="PVL-006",
            details={"field": "$.knowledge_type", "permission": refused},
        )


def _check_provenance(kind: str, payload: Mapping[str, Any]) -> None:
    required = {"insight": INSIGHT_PROVENANCE, "model_delta": MODEL_DELTA_PROVENANCE}.get(kind)
    if required is None:
        return
    provenance = payload.get("provenance")
    present = provenance if isinstance(provenance, Mapping) else {}
    missing = [name for name in required if name not in present]
    if missing:
        raise PvlRejection(
            f"provenance lacks {', '.join(missing)}",
            code="PVL-004",
            details={"field": "$.provenance", "missing": missing},
        )


def _without_vector(item: object) -> object:
    if isinstance(item, dict):
        copy = dict(item)
        copy.pop("vector", None)
        return copy
    if isinstance(item, Mapping):
        return {k: v for k, v in item.items() if k != "vector"}
    return item


def _scan_for_pii(
    kind: str, payload: Mapping[str, Any], vector_texts: list[str] | None
) -> list[Finding]:
    """Stage 7: the PII scan of the payload without its base64 fields.

    For an embedding (``vector_texts`` are its vector strings, checked), the
    prefilter reads the payload itself and leaves those strings out, and
    the payload is copied without them (for the walk) only when the
    prefilter finds a kind that may be present.
    """
    if vector_texts is not None:
        possible = possible_kinds(payload, leave_out=vector_texts)
        if possible is not None:
            return scan(_without_binary(kind, payload), kinds=possible) if possible else []
    return scan(_without_binary(kind, payload))


def _without_binary(kind: str, payload: Mapping[str, Any]) -> object:
    """The payload without the fields that hold base64 numbers (not scanned)."""
    if kind == "embedding":
        vectors = payload.get("vectors")
        if isinstance(vectors, list):
            if set(map(type, vectors)) == {dict}:  # the usual case, in C
                copies: list[dict[str, Any]] = list(map(dict.copy, vectors))
                deque(map(dict.pop, copies, repeat("vector"), repeat(None)), maxlen=0)
                return {**payload, "vectors": copies}
            return {**payload, "vectors": [_without_vector(item) for item in vectors]}
    if kind == "model_delta":
        return {k: v for k, v in payload.items() if k != "payload"}
    return payload


# ------------------------------------------------------------ differential privacy


def _finite(value: object) -> float | None:
    """``value`` as a finite float; ``None`` for anything else (booleans included)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def check_differential_privacy(payload: Mapping[str, Any], *, max_epsilon: float) -> None:
    """Stage 5: a model delta's ``differential_privacy`` block (PVL-003).

    All of ``mechanism``, ``epsilon``, ``delta`` and ``noise_multiplier``
    are required. The mechanism is one of :data:`DP_MECHANISMS`;
    0 < ε <= ``max_epsilon``; 0 < δ < 1, or 0 <= δ < 1 for the Laplace
    mechanism (pure ε-DP); δ < 1/n when n = ``provenance.training_samples``
    is positive (the usual requirement: with δ >= 1/n the guarantee would
    still hold for a mechanism that publishes one of the n records
    outright); ``noise_multiplier`` > 0. Every number must be finite.
    """
    block = payload.get("differential_privacy")
    field = "$.differential_privacy"
    if not isinstance(block, Mapping):
        raise PvlRejection(
            "model deltas must declare differential privacy parameters",
            code="PVL-003",
            details={"field": field},
        )
    missing = [name for name in DP_FIELDS if name not in block]
    if missing:
        raise PvlRejection(
            f"differential privacy parameters lack {', '.join(missing)}",
            code="PVL-003",
            details={"field": field, "missing": missing},
        )

    def refuse(name: str, rule: str, **extra: object) -> PvlRejection:
        return PvlRejection(
            f"differential privacy {name} must satisfy {rule}",
            code="PVL-003",
            details={"field": f"{field}.{name}", "rule": rule, **extra},
        )

    mechanism = block["mechanism"]
    if mechanism not in DP_MECHANISMS:
        raise refuse("mechanism", "one of " + ", ".join(sorted(DP_MECHANISMS)))
    epsilon = _finite(block["epsilon"])
    if epsilon is None or not 0 < epsilon <= max_epsilon:
        raise refuse("epsilon", f"0 < epsilon <= {max_epsilon:g}", limit=max_epsilon)
    delta = _finite(block["delta"])
    if mechanism == "laplace":
        if delta is None or not 0 <= delta < 1:
            raise refuse("delta", "0 <= delta < 1")
    elif delta is None or not 0 < delta < 1:
        raise refuse("delta", "0 < delta < 1")
    provenance = payload.get("provenance")
    samples = provenance.get("training_samples") if isinstance(provenance, Mapping) else None
    if isinstance(samples, int) and not isinstance(samples, bool) and samples > 0:
        if delta * samples >= 1:
            raise refuse("delta", "delta < 1 / provenance.training_samples")
    noise = _finite(block["noise_multiplier"])
    if noise is None or not noise > 0:
        raise refuse("noise_multiplier", "noise_multiplier > 0")


# ---------------------------------------------------------------------- base64url
#
# Embeddings are large (1,000 vectors of 1,536 float32 are 8 MB of base64),
# so the strings of a block are joined and decoded in one call of pybase64's
# SIMD decoder. It accepts "+" and "/" next to the url-safe alphabet, so the
# joined text is first searched for those; "=" it accepts only as padding
# at the very end (anywhere else is an error), so only the end is looked
# at. It ignores the unused low bits of a final partial group, so every row
# (one vector) is padded with "A" to a multiple of 4 characters. "A" is
# zero bits: the padding decodes to zero bytes after the data, and so do
# those unused bits; a row is in canonical form exactly when all bytes after
# its data are zero. Only when that fast path fails are the strings decoded
# one by one, to name the first one at fault.


def _b64_chars(nbytes: int) -> int:
    """Characters of unpadded base64 for ``nbytes`` bytes."""
    return (4 * nbytes + 2) // 3


def _decode_joined(texts: Sequence[str], pad: str) -> bytes | None:
    """The bytes of ``texts`` each padded with ``pad``, or ``None`` if one is not base64url."""
    # pybase64 reads an ASCII str in place; encoding it first would copy it.
    joined = pad.join(texts) + pad
    if "+" in joined or "/" in joined or joined.endswith("="):
        return None
    try:
        return pybase64.b64decode(joined, altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):  # ValueError: not ASCII
        return None


def _decode_strings(
    texts: Sequence[str], nbytes: int, field: Callable[[int], str]
) -> tuple[npt.NDArray[np.uint8], MalformedError | None]:
    """Strictly decode unpadded base64url strings of ``_b64_chars(nbytes)`` each.

    Returns the bytes (one row per string) of the strings before the first
    one that is not strict base64url, and the error naming that one
    (``field(index)`` names the string at ``index``).
    """
    pad = "A" * (-_b64_chars(nbytes) % 4)
    raw = _decode_joined(texts, pad)
    if raw is not None:
        decoded = np.frombuffer(raw, dtype=np.uint8).reshape(len(texts), -1)
        if decoded.shape[1] == nbytes:  # no padding: every group is whole
            return decoded, None
        if not decoded[:, nbytes:].any():
            return decoded[:, :nbytes], None
    rows: list[npt.NDArray[np.uint8]] = []
    for index, text in enumerate(texts):
        one = _decode_joined([text], pad)
        if one is None or any(one[nbytes:]):
            name = field(index)
            reason = (
                "is not unpadded base64url" if one is None else "is not in canonical base64url form"
            )
            done = np.array(rows, dtype=np.uint8).reshape(index, nbytes)
            return done, MalformedError(f"{name} {reason}", details={"field": name})
        rows.append(np.frombuffer(one, dtype=np.uint8)[:nbytes])
    return np.array(rows, dtype=np.uint8).reshape(len(texts), nbytes), None


def _decode_b64(text: object, field: str) -> npt.NDArray[np.uint8]:
    if not isinstance(text, str):
        raise MalformedError(f"{field} must be a base64url string", details={"field": field})
    if len(text) % 4 == 1:
        raise MalformedError(f"{field} is not unpadded base64url", details={"field": field})
    if not text:
        return np.zeros(0, dtype=np.uint8)
    decoded, error = _decode_strings([text], len(text) * 3 // 4, lambda index: field)
    if error is not None:
        raise error
    row: npt.NDArray[np.uint8] = decoded[0]
    return row


# ---------------------------------------------------------------------- embeddings
#
# Vectors are decoded a block at a time (about _BLOCK_CHARS of base64), so
# that the work memory stays bounded whatever the payload size. Measured on
# a 2-core virtual machine with 1,536-dimension float32 vectors, blocks of
# 2 MB (256 vectors) beat both smaller ones, whose fixed cost per block adds
# up, and larger ones.

_BLOCK_CHARS: Final = 1 << 21


@attrs.frozen
class _Vectors:
    """An embedding's vector strings, read from its payload but not decoded."""

    encoding: str
    dimensions: int
    #: Bytes of one vector.
    nbytes: int
    #: The ``vector`` strings up to the first of the wrong length: all of
    #: them, usually.
    texts: list[str]
    #: The index and value of the first one of the wrong length, if any.
    wrong: tuple[int, object] | None


def _vectors(payload: Mapping[str, Any]) -> _Vectors:
    """The vector strings of an embedding payload; :class:`MalformedError` for
    an unknown encoding, a bad ``dimensions`` or no vectors."""
    encoding = payload.get("encoding")
    dimensions = payload.get("dimensions")
    vectors = payload.get("vectors")
    if not isinstance(encoding, str) or encoding not in ENCODING_WIDTHS:
        raise MalformedError("unknown embedding encoding", details={"field": "$.encoding"})
    if isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1:
        raise MalformedError(
            "dimensions must be a positive integer", details={"field": "$.dimensions"}
        )
    if not isinstance(vectors, list) or not vectors:
        raise MalformedError("vectors must be a non-empty list", details={"field": "$.vectors"})
    nbytes = dimensions * ENCODING_WIDTHS[encoding]
    texts, wrong = _vector_texts(vectors, _b64_chars(nbytes))
    return _Vectors(encoding, dimensions, nbytes, texts, wrong)


def _vector_blocks(vectors: _Vectors) -> Iterator[tuple[int, npt.NDArray[np.float32]]]:
    """Yield ``(first index, values)`` blocks of an embedding's vectors, in order.

    Values are float32 (16-bit encodings widened exactly). A vector whose
    string is not strict base64url of ``dimensions`` values raises
    :class:`MalformedError`, after the vectors before it were yielded.
    """
    texts, nbytes = vectors.texts, vectors.nbytes
    step = max(1, _BLOCK_CHARS // _b64_chars(nbytes))
    for first in range(0, len(texts), step):
        data, error = _decode_strings(texts[first : first + step], nbytes, _vector_field(first))
        yield first, _widen(data, vectors.encoding)
        if error is not None:
            raise error
    if vectors.wrong is not None:
        _refuse_length(*vectors.wrong, dimensions=vectors.dimensions, encoding=vectors.encoding)


def _vector_texts(vectors: list[Any], chars: int) -> tuple[list[str], tuple[int, object] | None]:
    """The ``vector`` strings of ``vectors`` up to the first that is not a
    string of ``chars`` characters, and that one's index and value."""
    if set(map(type, vectors)) == {dict}:
        # The usual case, checked for all of them at once.
        found: list[Any] = list(map(dict.get, vectors, repeat("vector")))
        if set(map(type, found)) == {str} and set(map(len, found)) == {chars}:
            return found, None
    texts: list[str] = []
    for index, item in enumerate(vectors):
        text = item.get("vector") if isinstance(item, Mapping) else None
        if not isinstance(text, str) or len(text) != chars:
            return texts, (index, text)
        texts.append(text)
    return texts, None


def _vector_field(first: int) -> Callable[[int], str]:
    return lambda index: f"$.vectors[{first + index}].vector"


def _widen(data: npt.NDArray[np.uint8], encoding: str) -> npt.NDArray[np.float32]:
    if encoding == "float32":
        values: npt.NDArray[np.float32] = data.view("<f4")
    elif encoding == "float16":
        values = data.view("<f2").astype(np.float32)
    else:
        values = (data.view("<u2").astype(np.uint32) << 16).view(np.float32)
    return values


def _refuse_length(index: int, text: object, *, dimensions: int, encoding: str) -> None:
    field = f"$.vectors[{index}].vector"
    if not isinstance(text, str):
        raise MalformedError(f"{field} must be a base64url string", details={"field": field})
    actual = len(b64url_decode(text, field=field))
    width = ENCODING_WIDTHS[encoding]
    raise MalformedError(
        f"{field} holds {actual} bytes, not {dimensions} {encoding} values",
        details={
            "field": field,
            "expected_dimensions": dimensions,
            "actual_dimensions": actual // width,
            "actual_bytes": actual,
        },
    )


def decode_vectors(payload: Mapping[str, Any]) -> npt.NDArray[np.float32]:
    """An embedding payload's vectors as a ``(count, dimensions)`` float32 array.

    float16 and bfloat16 are widened exactly. Raises :class:`MalformedError`
    naming the first vector whose string is not strict base64url of
    ``dimensions`` values; it checks nothing else.
    """
    out = np.empty((0, 0), dtype=np.float32)
    for first, values in _vector_blocks(_vectors(payload)):
        if first == 0:
            out = np.empty((len(payload["vectors"]), values.shape[1]), dtype=np.float32)
        out[first : first + values.shape[0]] = values
    return out


def _surely_pass(values: npt.NDArray[np.float32], normalised: bool, tolerance: float) -> bool:
    """Whether every vector of a block passes :func:`_check_vectors` for sure.

    ``np.vecdot`` sums the squares several times faster than the exact
    check's ``einsum``, in another order. Two float32 sums of n squares
    differ by at most 2 (n + 1) u of the sum (u = 2**-24), so the norms by
    at most (n + 1) u near 1: a vector passes here only with that margin
    (doubled) to spare, and any doubt goes to the exact check. A sum that is
    not finite has a NaN or an infinity, or overflows: doubt again.
    """
    squares = np.vecdot(values, values)
    if not normalised:
        # Without normalisation only a NaN or an infinity fails, and that
        # makes the sum one too.
        return bool(np.isfinite(squares).all())
    margin = (values.shape[1] + 8) * 2.0**-23
    np.sqrt(squares, out=squares)
    squares -= 1
    return bool((np.abs(squares, out=squares) <= tolerance - margin).all())


def _check_vectors(payload: Mapping[str, Any], policy: PvlPolicy) -> list[str]:
    """Every vector finite and, unless ``normalization`` is "none", of norm 1;
    returns the vector strings, in order.

    The error names the first vector that fails, and for it the first
    failing check: length, base64url, finite values, norm.
    """
    normalised = payload.get("normalization", "l2") != "none"
    tolerance = policy.tolerance(str(payload.get("encoding")))
    vectors = _vectors(payload)
    for first, values in _vector_blocks(vectors):
        with np.errstate(over="ignore", invalid="ignore"):
            if _surely_pass(values, normalised, tolerance):
                continue
            squares = np.einsum("ij,ij->i", values, values)
            # A non-finite sum of squares is a NaN or an infinity, or finite
            # values whose squares overflow float32 (not normalised either).
            broken = ~np.isfinite(squares)
            if broken.any():
                broken[broken] = ~np.isfinite(values[broken]).all(axis=1)
            off = ~(np.abs(np.sqrt(squares) - 1) <= tolerance) if normalised else broken
        failing = np.flatnonzero(broken | off)
        if failing.size:
            row = int(failing[0])
            field = f"$.vectors[{first + row}].vector"
            if broken[row]:
                raise MalformedError(
                    f"{field} holds a NaN or infinite value", details={"field": field}
                )
            raise MalformedError(
                f"{field} is not L2-normalised", details={"field": field, "tolerance": tolerance}
            )
    return vectors.texts


def encode_vector(values: Sequence[float] | npt.ArrayLike, encoding: str = "float32") -> str:
    """One vector as unpadded base64url of little-endian ``encoding`` values.

    bfloat16 rounds float32 to nearest, ties to even. Raises ``ValueError``
    for anything but a one-dimensional sequence of finite values that stay
    finite in ``encoding``.
    """
    if encoding not in ENCODING_WIDTHS:
        raise ValueError(f"unknown encoding {encoding!r}")
    try:
        array = np.asarray(values, dtype=np.float64)
    except (OverflowError, TypeError) as exc:
        raise ValueError("a vector is a sequence of numbers") from exc
    if array.ndim != 1 or not np.isfinite(array).all():
        raise ValueError("a vector is a one-dimensional sequence of finite numbers")
    with np.errstate(over="ignore"):
        if encoding == "bfloat16":
            bits = array.astype("<f4").view("<u4")
            rounded = (bits + (0x7FFF + ((bits >> 16) & 1))) >> 16
            encoded = rounded.astype("<u2")
            widened = (encoded.astype(np.uint32) << 16).view(np.float32)
        else:
            encoded = array.astype("<f4" if encoding == "float32" else "<f2")
            widened = encoded
    if not np.isfinite(widened).all():
        raise ValueError(f"a value is out of the range of {encoding}")
    return b64url_encode(encoded.tobytes())


# -------------------------------------------------------------------- model deltas


def compress_delta(raw: bytes, compression: str) -> str:
    """A model delta's ``payload`` field: ``raw`` compressed, as unpadded base64url."""
    if compression == "none":
        packed = raw
    elif compression in _ZLIB_WBITS:
        packer = zlib.compressobj(6, zlib.DEFLATED, _ZLIB_WBITS[compression])
        packed = packer.compress(raw) + packer.flush()
    else:
        raise ValueError(f"unknown compression {compression!r}")
    return b64url_encode(packed)


def decode_delta(payload: Mapping[str, Any], *, max_bytes: int) -> bytes:
    """A model delta's raw bytes: base64url-decoded, then decompressed.

    ``gzip`` must be one gzip member and ``zlib`` one zlib stream, whole and
    with nothing after it (OCP-400 otherwise). Decompression runs in steps
    and stops as soon as the output passes ``max_bytes`` (PVL-005), so a
    compression bomb never costs more than ``max_bytes`` plus one step.
    """
    field = "$.payload"
    compression = payload.get("compression")
    if compression not in COMPRESSIONS:
        raise MalformedError("unknown compression", details={"field": "$.compression"})
    data = _decode_b64(payload.get("payload"), field)

    def too_large() -> PvlRejection:
        return PvlRejection(
            f"model delta exceeds {max_bytes} bytes once decompressed",
            code="PVL-005",
            details={"field": field, "limit": max_bytes},
        )

    if compression == "none":
        if data.size > max_bytes:
            raise too_large()
        return data.tobytes()
    inflater = zlib.decompressobj(_ZLIB_WBITS[compression])
    parts: list[bytes] = []
    total = 0
    view = data.data
    try:
        for start in range(0, len(view), _INFLATE_INPUT):
            pending: bytes | memoryview = view[start : start + _INFLATE_INPUT]
            while True:
                out = inflater.decompress(pending, _INFLATE_OUTPUT)
                total += len(out)
                if total > max_bytes:
                    raise too_large()
                parts.append(out)
                pending = inflater.unconsumed_tail
                if inflater.eof or (not pending and len(out) < _INFLATE_OUTPUT):
                    break
            if inflater.eof:
                if inflater.unused_data or start + _INFLATE_INPUT < len(view):
                    raise MalformedError(
                        f"{field} has data after its {compression} stream",
                        details={"field": field},
                    )
                break
    except zlib.error as exc:
        raise MalformedError(
            f"{field} is not a valid {compression} stream", details={"field": field}
        ) from exc
    if not inflater.eof:
        raise MalformedError(
            f"{field} is a truncated {compression} stream", details={"field": field}
        )
    return b"".join(parts)


def _window(mask: npt.NDArray[np.bool_], width: int) -> npt.NDArray[np.bool_]:
    """``out[i]``: ``mask[i : i + width]`` is all true (``width - 1`` shorter)."""
    run, span = mask, 1
    while span * 2 <= width:
        run = run[:-span] & run[span:]
        span *= 2
    rest = width - span
    if rest:
        run = run[:-rest] & run[rest:]
    return run


def _text_bytes(data: npt.NDArray[np.uint8]) -> npt.NDArray[np.bool_]:
    """Bytes that read as text: printable ASCII, tab, LF, CR and whole UTF-8 sequences."""
    text: npt.NDArray[np.bool_] = ((data - np.uint8(0x20)) < 0x5F) | (data == 9)
    text |= (data == 10) | (data == 13)
    follow = (data & np.uint8(0xC0)) == 0x80
    n = data.size
    for length, lead in (
        (2, (data - np.uint8(0xC2)) < 0x1E),
        (3, (data & np.uint8(0xF0)) == 0xE0),
        (4, (data - np.uint8(0xF0)) < 5),
    ):
        if n < length:
            continue
        start = lead[: n - length + 1].copy()
        for k in range(1, length):
            start &= follow[k : n - length + 1 + k]
        for k in range(length):
            text[k : n - length + 1 + k] |= start
    return text


def _has_text_run(data: npt.NDArray[np.uint8], length: int) -> bool:
    # Chunks overlap by the run plus one UTF-8 sequence, so a run that starts
    # in a chunk is seen whole there.
    for start in range(0, data.size, _SCAN_CHUNK):
        part = data[start : start + _SCAN_CHUNK + length + 3]
        if part.size >= length and _window(_text_bytes(part), length)[:_SCAN_CHUNK].any():
            return True
    return False


# Odd 64-bit multipliers (from the SplitMix64 and xxHash constants) that mix
# the eight words of a record into one key; equal keys are compared exactly.
_RECORD_MIX: Final = np.array(
    [
        0x9E3779B97F4A7C15,
        0xBF58476D1CE4E5B9,
        0x94D049BB133111EB,
        0xC2B2AE3D27D4EB4F,
        0x165667B19E3779F9,
        0x27D4EB2F165667C5,
        0xFF51AFD7ED558CCD,
        0xC4CEB9FE1A85EC53,
    ],
    dtype=np.uint64,
)


def _has_repeated_records(data: npt.NDArray[np.uint8]) -> bool:
    count = data.size // RECORD_BYTES
    if count < RECORD_REPEAT_LIMIT:
        return False
    records = data[: count * RECORD_BYTES].view("<u8").reshape(count, RECORD_BYTES // 8)
    used = records[:, 0] != 0
    for column in range(1, RECORD_BYTES // 8):
        used |= records[:, column] != 0
    records = records[used]
    keys = np.zeros(records.shape[0], dtype=np.uint64)
    for column in range(RECORD_BYTES // 8):
        keys ^= records[:, column] * _RECORD_MIX[column]
    values, counts = np.unique(keys, return_counts=True)
    for key in values[counts >= RECORD_REPEAT_LIMIT]:
        _, exact = np.unique(records[keys == key], axis=0, return_counts=True)
        if exact.max() >= RECORD_REPEAT_LIMIT:
            return True
    return False


def check_extractable(delta: bytes) -> None:
    """Stage 6 for model deltas: refuse deltas that carry readable data (PVL-002).

    A decompressed delta must be tensor data: an even number of bytes
    (16- or 32-bit values), no run of :data:`TEXT_RUN_BYTES` bytes that read
    as text (printable ASCII, tab, newline or whole UTF-8 sequences), and no
    aligned :data:`RECORD_BYTES`-byte block other than all zeros repeated
    :data:`RECORD_REPEAT_LIMIT` times or more. This catches plaintext and
    copied records; it cannot prove that a model has not memorised its
    training data.
    """
    field = "$.payload"
    if len(delta) % 2:
        raise PvlRejection(
            "a model delta must be 16- or 32-bit tensor data",
            code="PVL-002",
            details={"field": field, "check": "tensor_length"},
        )
    data = np.frombuffer(delta, dtype=np.uint8)
    if _has_text_run(data, TEXT_RUN_BYTES):
        raise PvlRejection(
            f"the model delta holds {TEXT_RUN_BYTES} or more consecutive text bytes",
            code="PVL-002",
            details={"field": field, "check": "text_run", "run_bytes": TEXT_RUN_BYTES},
        )
    if _has_repeated_records(data):
        raise PvlRejection(
            "the model delta repeats a record",
            code="PVL-002",
            details={
                "field": field,
                "check": "repeated_records",
                "record_bytes": RECORD_BYTES,
                "repeat_limit": RECORD_REPEAT_LIMIT,
            },
        )
