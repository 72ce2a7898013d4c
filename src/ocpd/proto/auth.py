"""Agent authentication on the two transports: HTTP (D3) and WebSocket (D2).

HTTP requests carry ``Authorization: OCP-Ed25519 <agent_id>:<timestamp>:<signature>``
where the signature is Ed25519 over SHA3-256 of::

    "OCP-HTTP-1.0\\n" METHOD "\\n" path_and_query "\\n" agent_id "\\n" timestamp "\\n"
    hex(SHA3-256(body))

A WebSocket connection opens with an ``auth_handshake`` frame whose signature
is Ed25519 over the UTF-8 bytes of ``agent_id + timestamp + nonce`` (not
pre-hashed), nonce = base64url of 32 random bytes.

Both are checked against a timestamp window around ``now`` and a
:class:`ReplayWindow` that remembers what was seen inside that window, so a
captured header or handshake cannot be used twice.
"""

from __future__ import annotations

import heapq
import re
from typing import TYPE_CHECKING, Final

import attrs

from ocpd.proto.crypto import SigningKey, ed25519_verify, random_bytes, sha3_256
from ocpd.proto.encoding import b64url_decode, b64url_encode, format_timestamp, parse_timestamp
from ocpd.proto.errors import AuthError, MalformedError
from ocpd.proto.ids import parse_agent_id

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = [
    "AUTH_SCHEME",
    "BAD_AUTHORIZATION_SIGNATURE",
    "DEFAULT_AUTH_WINDOW",
    "OCF_VERSION",
    "HttpAuth",
    "ReplayWindow",
    "authorization_digest",
    "build_authorization",
    "build_ws_auth_handshake",
    "http_signing_string",
    "message_post_headers",
    "parse_authorization",
    "record_authorization",
    "signed_post_headers",
    "verify_authorization",
    "verify_ws_auth_handshake",
]

AUTH_SCHEME: Final = "OCP-Ed25519"
DEFAULT_AUTH_WINDOW: Final = 60.0
#: The ``X-OCF-Version`` (alias ``X-OCP-Version``) this implementation speaks (D1).
OCF_VERSION: Final = "1.0"
BAD_AUTHORIZATION_SIGNATURE: Final = "Authorization signature does not verify"
_CREDENTIALS_HEAD: Final = re.compile(
    r"(did:ocp:[a-z0-9-]{1,32}:agent-[0-9a-f]{12}):(.+)", re.ASCII
)


class ReplayWindow:
    """Remembers keys (e.g. signatures, nonces) until they leave a time window.

    Pure bookkeeping: time is passed in. ``max_entries`` bounds memory; when
    it is reached the oldest entries are dropped first, which can only make a
    replay of a very old key possible after the window has mostly passed.
    """

    def __init__(self, *, window: float, max_entries: int = 1_000_000) -> None:
        self._window = window
        self._max = max_entries
        self._expiry: dict[object, float] = {}
        self._heap: list[tuple[float, int, object]] = []
        self._counter = 0

    def __len__(self) -> int:
        return len(self._expiry)

    def _prune(self, now: float) -> None:
        heap = self._heap
        while heap and (heap[0][0] <= now or len(self._expiry) > self._max):
            expires, _, key = heapq.heappop(heap)
            if self._expiry.get(key) == expires:
                del self._expiry[key]

    def seen(self, key: object, *, now: float, at: float | None = None) -> bool:
        """Record ``key``; ``True`` if it was already recorded inside the window.

        ``at`` is the time the key claims (e.g. a signed timestamp); the entry
        lives until ``max(now, at) + window`` so that a key stays refused for
        as long as its timestamp would be accepted.
        """
        self._prune(now)
        if key in self._expiry:
            return True
        expires = max(now, at if at is not None else now) + self._window
        self._expiry[key] = expires
        self._counter += 1
        heapq.heappush(self._heap, (expires, self._counter, key))
        if len(self._expiry) > self._max:
            self._prune(now)
        return False


# --- HTTP (D3) ------------------------------------------------------------------------


@attrs.frozen
class HttpAuth:
    agent_id: str
    timestamp: str
    signature: bytes


def http_signing_string(
    *, method: str, path_and_query: str, agent_id: str, timestamp: str, body: bytes
) -> bytes:
    text = "\n".join(
        ("OCP-HTTP-1.0", method.upper(), path_and_query, agent_id, timestamp, sha3_256(body).hex())
    )
    return text.encode("utf-8")


def signed_post_headers(
    key: SigningKey, *, agent_id: str, path_and_query: str, body: bytes, now: float
) -> dict[str, str]:
    """``Content-Type`` and the D3 ``Authorization`` of a signed JSON ``POST``."""
    authorization = build_authorization(
        key,
        agent_id=agent_id,
        method="POST",
        path_and_query=path_and_query,
        body=body,
        now=now,
    )
    return {"Content-Type": "application/json", "Authorization": authorization}


def message_post_headers(
    key: SigningKey, *, agent_id: str, path_and_query: str, body: bytes, now: float
) -> dict[str, str]:
    """``POST /ocp/v1/messages``'s headers: :func:`signed_post_headers` and ``X-OCF-Version``."""
    headers = signed_post_headers(
        key, agent_id=agent_id, path_and_query=path_and_query, body=body, now=now
    )
    headers["X-OCF-Version"] = OCF_VERSION
    return headers


def build_authorization(
    key: SigningKey,
    *,
    agent_id: str,
    method: str,
    path_and_query: str,
    body: bytes,
    now: float,
) -> str:
    """The ``Authorization`` header value for one request.

    Milliseconds in the timestamp keep two identical requests sent within the
    same second from looking like a replay of each other.
    """
    timestamp = format_timestamp(now, fraction_digits=3)
    digest = sha3_256(
        http_signing_string(
            method=method,
            path_and_query=path_and_query,
            agent_id=agent_id,
            timestamp=timestamp,
            body=body,
        )
    )
    return f"{AUTH_SCHEME} {agent_id}:{timestamp}:{b64url_encode(key.sign(digest))}"


def parse_authorization(header: object) -> HttpAuth:
    """Split the credentials at the last ``:``; the rest is exactly ``agent_id:timestamp``."""
    if not isinstance(header, str) or not header.startswith(AUTH_SCHEME + " "):
        raise AuthError(f"Authorization must use the {AUTH_SCHEME} scheme")
    head, sep, signature_text = header[len(AUTH_SCHEME) + 1 :].rpartition(":")
    m = _CREDENTIALS_HEAD.fullmatch(head) if sep else None
    if m is None:
        raise AuthError("Authorization credentials are not <agent_id>:<timestamp>:<signature>")
    agent_id, timestamp = m.group(1), m.group(2)
    try:
        parse_agent_id(agent_id, field="Authorization agent id")
        parse_timestamp(timestamp, field="Authorization timestamp")
        signature = b64url_decode(signature_text, field="Authorization signature", length=64)
    except MalformedError as exc:
        raise AuthError(exc.message, details=exc.details) from exc
    return HttpAuth(agent_id=agent_id, timestamp=timestamp, signature=signature)


def verify_authorization(
    header: object,
    *,
    method: str,
    path_and_query: str,
    body: bytes,
    public_keys: Sequence[bytes],
    now: float,
    replay: ReplayWindow,
    window: float = DEFAULT_AUTH_WINDOW,
    expected_agent_id: str | None = None,
) -> HttpAuth:
    """Check an ``Authorization`` header (its text, or as parsed); OCP-401 on any failure.

    The replay window records (agent_id, signature) only once the signature
    verifies, so forged headers cannot fill it or block a genuine request.
    The three steps are also separate functions, for callers that verify
    signatures elsewhere (:mod:`ocpd.verifier`).
    """
    auth = header if isinstance(header, HttpAuth) else parse_authorization(header)
    signed_at, digest = authorization_digest(
        auth,
        method=method,
        path_and_query=path_and_query,
        body=body,
        now=now,
        window=window,
        expected_agent_id=expected_agent_id,
    )
    if not any(ed25519_verify(key, digest, auth.signature) for key in public_keys):
        raise AuthError(BAD_AUTHORIZATION_SIGNATURE)
    record_authorization(auth, replay=replay, now=now, signed_at=signed_at)
    return auth


def authorization_digest(
    auth: HttpAuth,
    *,
    method: str,
    path_and_query: str,
    body: bytes,
    now: float,
    window: float = DEFAULT_AUTH_WINDOW,
    expected_agent_id: str | None = None,
) -> tuple[float, bytes]:
    """The checks before the signature's: ``(signed_at, the digest the signature is over)``."""
    if expected_agent_id is not None and auth.agent_id != expected_agent_id:
        raise AuthError("Authorization agent id differs from the message sender")
    signed_at = parse_timestamp(auth.timestamp)
    if abs(signed_at - now) > window:
        raise AuthError("Authorization timestamp is outside the accepted window")
    digest = sha3_256(
        http_signing_string(
            method=method,
            path_and_query=path_and_query,
            agent_id=auth.agent_id,
            timestamp=auth.timestamp,
            body=body,
        )
    )
    return signed_at, digest


def record_authorization(
    auth: HttpAuth, *, replay: ReplayWindow, now: float, signed_at: float
) -> None:
    """After the signature verified: OCP-401 for a header already used."""
    if replay.seen(("http", auth.agent_id, auth.signature), now=now, at=signed_at):
        raise AuthError("Authorization header was already used")


# --- WebSocket auth_handshake (D2) ----------------------------------------------------


def build_ws_auth_handshake(
    key: SigningKey, *, agent_id: str, now: float, nonce: bytes | None = None
) -> dict[str, str]:
    timestamp = format_timestamp(now)
    nonce_text = b64url_encode(nonce if nonce is not None else random_bytes(32))
    signature = key.sign((agent_id + timestamp + nonce_text).encode("utf-8"))
    return {
        "frame_type": "auth_handshake",
        "agent_id": agent_id,
        "timestamp": timestamp,
        "nonce": nonce_text,
        "signature": b64url_encode(signature),
    }


def verify_ws_auth_handshake(
    frame: Mapping[str, object],
    *,
    public_keys: Sequence[bytes],
    now: float,
    replay: ReplayWindow,
    window: float = DEFAULT_AUTH_WINDOW,
) -> str:
    """The authenticated agent id of an ``auth_handshake`` frame; OCP-401 otherwise."""
    if frame.get("frame_type") != "auth_handshake":
        raise AuthError("expected an auth_handshake frame")
    agent_id, timestamp, nonce = frame.get("agent_id"), frame.get("timestamp"), frame.get("nonce")
    if not (isinstance(agent_id, str) and isinstance(timestamp, str) and isinstance(nonce, str)):
        raise AuthError("auth_handshake needs string agent_id, timestamp and nonce")
    try:
        parse_agent_id(agent_id)
        signed_at = parse_timestamp(timestamp)
        b64url_decode(nonce, field="nonce", length=32)
        signature = b64url_decode(frame.get("signature"), field="signature", length=64)
    except MalformedError as exc:
        raise AuthError(exc.message, details=exc.details) from exc
    if abs(signed_at - now) > window:
        raise AuthError("auth_handshake timestamp is outside the accepted window")
    message = (agent_id + timestamp + nonce).encode("utf-8")
    if not any(ed25519_verify(key, message, signature) for key in public_keys):
        raise AuthError("auth_handshake signature does not verify")
    if replay.seen(("ws", agent_id, nonce), now=now, at=signed_at):
        raise AuthError("auth_handshake nonce was already used")
    return agent_id
