"""Peer sessions between nodes (NET FR-010…FR-016, D8), sans-I/O.

Nothing here reads a clock or touches a socket: callers pass ``now``
(wall-clock epoch seconds, the time handshake timestamps are compared
with) and move the bytes themselves, as with h11 or wsproto.

A session has three parts:

- **The handshake.** :class:`Initiator` builds a signed hello and turns the
  peer's ack into an :class:`Established`; :class:`Responder` turns a hello
  into an ack and an :class:`Established`. Both travel as JSON text. The
  responder remembers each peer's nonces (:class:`NonceMemory`) so a
  replayed hello is refused even inside the ±30 s window.
- **Frames.** Everything after the handshake travels as binary frames
  sealed by :class:`FrameCipher`: ChaCha20-Poly1305 with the session's key
  for that direction and an implicit 96-bit counter nonce, so a frame that
  was altered, replayed, dropped or reordered fails to open and ends the
  session.
- **The conversation.** :class:`PeerSession` decides what a frame means:
  the capability advertisement that must come first, keepalive pings and
  pongs, signal-marker envelopes, OCP messages handed from node to node with
  their receipts, node advertisements, and error notices. It queues its own
  answers (a pong, an error notice) for :meth:`PeerSession.data_to_send`
  and says when the next keepalive is due (:meth:`PeerSession.poll`).

Failures are :class:`~ocpd.proto.errors.NetError` with the frozen codes.
The ones in :data:`HARD_CODES` (a bad signature, an unknown signer, another
protocol version, a frame that does not open) end the session; any other
malformed artifact is answered with an error notice and the session goes on
(NFR-009).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, Literal

import attrs

from ocpd.proto.crypto import (
    DecryptionFailed,
    SigningKey,
    X25519KeyPair,
    chacha20poly1305_decrypt,
    chacha20poly1305_encrypt,
)
from ocpd.proto.encoding import b64url_decode
from ocpd.proto.errors import CapabilityMissing, MalformedError, NetError, PayloadTooLarge
from ocpd.proto.ids import format_node_id
from ocpd.proto.netartifacts import (
    CORE_MESSAGING,
    SessionKeys,
    build_ack,
    build_hello,
    derive_session_keys,
    verify_ack_binding,
    verify_capability_advertisement,
    verify_handshake,
    verify_node_advertisement,
    verify_signal_marker_envelope,
)
from ocpd.proto.strictjson import loads_strict

__all__ = [
    "FRAME_AAD",
    "HARD_CODES",
    "KEEPALIVE_INTERVAL",
    "KEEPALIVE_TIMEOUT",
    "NONCE_RETENTION",
    "PEER_PATH",
    "PEER_SUBPROTOCOL",
    "PENDING_HELLO_TIMEOUT",
    "AdvertisementReceived",
    "CapabilitiesReceived",
    "EndpointsReceived",
    "Established",
    "FrameCipher",
    "Initiator",
    "MessageReceived",
    "NonceMemory",
    "PeerErrorReceived",
    "PeerSession",
    "ReceiptReceived",
    "Refused",
    "Responder",
    "SessionEvent",
    "SignalReceived",
    "parse_handshake",
]

PEER_PATH: Final = "/ocp/v1/peer"
PEER_SUBPROTOCOL: Final = "ocp.peer.v1"

#: An unanswered hello is given up after this long (FR-012b).
PENDING_HELLO_TIMEOUT: Final = 30.0
#: How long a peer's handshake nonce is remembered (FR-012b: about 120 s).
NONCE_RETENTION: Final = 120.0
#: A ping goes out after this long without sending anything (D8).
KEEPALIVE_INTERVAL: Final = 15.0
#: The session is lost after this long without receiving anything (D8).
KEEPALIVE_TIMEOUT: Final = 45.0

#: Associated data of every session frame: binds frames to this protocol.
FRAME_AAD: Final = b"ocp-peer-frame.v1"
#: Poly1305 tag length.
_TAG: Final = 16
#: The counter is 64 bits in the low end of the 96-bit nonce.
_MAX_COUNTER: Final = 2**64 - 1

#: Plaintext kinds: the first byte of every opened frame.
_CONTROL: Final = 0x00
_MESSAGE: Final = 0x01

#: Failures that end a session instead of being answered (NFR-009).
HARD_CODES: Final = frozenset({"E_SIG_INVALID", "E_SIG_UNKNOWN_SIGNER", "E_PROTO_VERSION"})

#: The largest handshake accepted, in bytes of JSON.
MAX_HANDSHAKE_BYTES: Final = 8192
#: The largest control frame (capabilities, signal-marker, receipt...) accepted.
MAX_CONTROL_BYTES: Final = 65_536
#: The most nonces a responder remembers at once; beyond, hellos are refused.
NONCE_CAPACITY: Final = 65_536
#: The most OCP endpoint URLs a peer may say it serves, and their longest length.
MAX_ENDPOINTS: Final = 16
#: ``details["artifact"]`` of a :class:`NetError` refusing a node advertisement.
ADVERTISEMENT_ARTIFACT: Final = "node-advertisement.v1"
#: The most receipts in one ``receipts`` frame.
MAX_RECEIPTS: Final = 256
MAX_ENDPOINT_URL: Final = 2048


def _invalid(message: str, **details: object) -> NetError:
    return NetError(message, code="E_PROTO_INVALID", details=details)


def _json_object(data: bytes | str, *, what: str, limit: int) -> dict[str, Any]:
    """Strict I-JSON (no duplicate names, no NaN, bounded depth), as ``E_PROTO_INVALID``."""
    raw = data.encode() if isinstance(data, str) else data
    try:
        value = loads_strict(raw, max_size=limit)
    except (MalformedError, PayloadTooLarge) as exc:
        raise _invalid(f"{what}: {exc.message}") from exc
    if not isinstance(value, dict):
        raise _invalid(f"{what} must be a JSON object")
    return value


def parse_handshake(data: bytes | str) -> dict[str, Any]:
    """A handshake frame's JSON object (its contents are checked by the roles)."""
    return _json_object(data, what="handshake", limit=MAX_HANDSHAKE_BYTES)


# --- replay memory (FR-012b) ---------------------------------------------------------------


class NonceMemory:
    """The handshake nonces each peer used in the last :data:`NONCE_RETENTION` seconds.

    Bounded: once :data:`NONCE_CAPACITY` live nonces are held, further
    hellos are refused (``E_TRANSPORT_REJECTED``) until old ones expire.
    :meth:`entries` and :meth:`restore` let a daemon carry the memory over a
    restart, so a hello captured before it cannot be replayed after it.
    """

    def __init__(
        self, *, retention: float = NONCE_RETENTION, capacity: int = NONCE_CAPACITY
    ) -> None:
        self.retention = retention
        self.capacity = capacity
        # (peer, nonce) -> forget-at; insertion order is forget-at order
        # because every entry lives exactly ``retention`` seconds.
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def sweep(self, now: float) -> None:
        while self._seen:
            key, until = next(iter(self._seen.items()))
            if until > now:
                break
            del self._seen[key]

    def admit(self, peer: str, nonce: str, now: float) -> float:
        """Remember ``nonce`` for ``peer``; returns when it will be forgotten.

        Raises ``E_HS_REPLAY`` when the peer used it already.
        """
        self.sweep(now)
        if (peer, nonce) in self._seen:
            raise NetError("handshake nonce was already used", code="E_HS_REPLAY")
        if len(self._seen) >= self.capacity:
            raise NetError("too many recent handshakes", code="E_TRANSPORT_REJECTED")
        until = now + self.retention
        self._seen[(peer, nonce)] = until
        return until

    def entries(self) -> list[tuple[str, str, float]]:
        return [(peer, nonce, until) for (peer, nonce), until in self._seen.items()]

    def restore(self, entries: Iterable[tuple[str, str, float]], now: float) -> None:
        """Load remembered nonces (e.g. from storage), dropping the expired ones."""
        for peer, nonce, until in sorted(entries, key=lambda e: e[2]):
            if until > now and len(self._seen) < self.capacity:
                self._seen[(peer, nonce)] = until
                self._seen.move_to_end((peer, nonce))


# --- handshake (FR-010…FR-012) -------------------------------------------------------------


@attrs.frozen
class Established:
    """A completed hello → ack: who the peer is and the session's keys."""

    initiator: bool
    local_node_id: str
    peer_node_id: str
    peer_key: bytes
    keys: SessionKeys
    hello: Mapping[str, Any]
    ack: Mapping[str, Any]
    #: The capabilities the peer listed in its handshake (informative only:
    #: the signed capability advertisement that follows is what counts).
    offered: frozenset[str]

    @property
    def handshake_id(self) -> str:
        return str(self.hello["handshake/id"])


def _establish(
    key: SigningKey,
    ephemeral: X25519KeyPair,
    *,
    initiator: bool,
    peer_key: bytes,
    hello: Mapping[str, Any],
    ack: Mapping[str, Any],
) -> Established:
    """The session a checked hello and ack open, seen from our side."""
    theirs = ack if initiator else hello
    try:
        keys = derive_session_keys(
            initiator=initiator,
            ephemeral_private=ephemeral.private_key,
            peer_ephemeral_public=b64url_decode(theirs["session/pub"], field="session/pub"),
            static_key=key,
            peer_static_public=peer_key,
            hello=hello,
            ack=ack,
        )
    except MalformedError as exc:
        # A low-order or undecodable session key: no shared secret to derive.
        raise _invalid(f"session/pub is unusable: {exc.message}") from None
    return Established(
        initiator=initiator,
        local_node_id=format_node_id(key.public_key),
        peer_node_id=str(theirs["sender/node-id"]),
        peer_key=peer_key,
        keys=keys,
        hello=hello,
        ack=ack,
        offered=frozenset(theirs.get("capabilities/offered", ())),
    )


class Initiator:
    """The dialling side: one hello, waiting at most 30 s for its ack."""

    def __init__(
        self,
        key: SigningKey,
        *,
        now: float,
        recipient: str | None = None,
        capabilities: Iterable[str] | None = None,
        ephemeral: X25519KeyPair | None = None,
        nonce: bytes | None = None,
        handshake_id: str | None = None,
        timeout: float = PENDING_HELLO_TIMEOUT,
    ) -> None:
        self._key = key
        self._ephemeral = ephemeral or X25519KeyPair.generate()
        self.node_id = format_node_id(key.public_key)
        self.recipient = recipient
        self.started = now
        self.expires_at = now + timeout
        self.hello: dict[str, Any] = build_hello(
            key,
            session_public=self._ephemeral.public_key,
            now=now,
            recipient=recipient,
            nonce=nonce,
            capabilities=capabilities,
            handshake_id=handshake_id,
        )

    @property
    def handshake_id(self) -> str:
        return str(self.hello["handshake/id"])

    def hello_text(self) -> str:
        return json.dumps(self.hello, separators=(",", ":"), ensure_ascii=False)

    def expired(self, now: float) -> bool:
        return now >= self.expires_at

    def receive_ack(self, ack: object, *, now: float) -> Established:
        """Check the answer to our hello; the session's keys on success.

        An ack after the pending-hello timeout refers to a hello that is no
        longer pending (``E_HS_UNKNOWN_REF``); an ack signed by another node
        than the one dialled is ``E_SIG_UNKNOWN_SIGNER``.
        """
        peer_key = verify_handshake(ack, now=now, local_node_id=self.node_id)
        assert isinstance(ack, Mapping)  # noqa: S101 - verify_handshake checked it
        verify_ack_binding(ack, self.hello)
        if self.expired(now):
            raise NetError("the hello this ack answers has timed out", code="E_HS_UNKNOWN_REF")
        peer = str(ack["sender/node-id"])
        if self.recipient is not None and peer != self.recipient:
            raise NetError(
                "the ack is signed by another node than the one dialled",
                code="E_SIG_UNKNOWN_SIGNER",
                details={"expected": self.recipient, "got": peer},
            )
        if peer == self.node_id:
            raise _invalid("a node cannot hold a session with itself")
        return _establish(
            self._key, self._ephemeral, initiator=True, peer_key=peer_key, hello=self.hello, ack=ack
        )


class Responder:
    """The answering side: checks hellos and answers each good one with an ack."""

    def __init__(
        self,
        key: SigningKey,
        nonces: NonceMemory,
        *,
        capabilities: Iterable[str] | None = None,
    ) -> None:
        self._key = key
        self.nonces = nonces
        self.capabilities = None if capabilities is None else tuple(capabilities)
        self.node_id = format_node_id(key.public_key)

    def receive_hello(
        self,
        hello: object,
        *,
        now: float,
        ephemeral: X25519KeyPair | None = None,
        nonce: bytes | None = None,
        handshake_id: str | None = None,
    ) -> tuple[dict[str, Any], Established]:
        """The ack to send and the session it opens.

        Checks run cheapest-safe first: version, shape, signer, signature,
        clock skew, addressee, then the nonce (remembered only for hellos
        that verified, so forged hellos cannot fill the memory).
        """
        peer_key = verify_handshake(hello, now=now, local_node_id=self.node_id)
        assert isinstance(hello, Mapping)  # noqa: S101 - verify_handshake checked it
        if hello["handshake/mode"] != "hello":
            raise NetError("an ack without a pending hello", code="E_HS_UNKNOWN_REF")
        peer = str(hello["sender/node-id"])
        if peer == self.node_id:
            raise _invalid("a node cannot hold a session with itself")
        self.nonces.admit(peer, str(hello["nonce"]), now)
        own = ephemeral or X25519KeyPair.generate()
        ack = build_ack(
            self._key,
            hello,
            session_public=own.public_key,
            now=now,
            nonce=nonce,
            capabilities=self.capabilities,
            handshake_id=handshake_id,
        )
        return ack, _establish(
            self._key, own, initiator=False, peer_key=peer_key, hello=hello, ack=ack
        )


# --- frames (D8) -----------------------------------------------------------------------------


def frame_nonce(counter: int) -> bytes:
    """The 96-bit nonce of frame number ``counter`` in one direction."""
    return b"\x00\x00\x00\x00" + counter.to_bytes(8, "big")


class FrameCipher:
    """Seals outgoing and opens incoming frames, each direction with its own counter."""

    __slots__ = ("_keys", "received", "sent")

    def __init__(self, keys: SessionKeys) -> None:
        self._keys = keys
        self.sent = 0
        self.received = 0

    def seal(self, plaintext: bytes) -> bytes:
        if self.sent > _MAX_COUNTER:
            raise NetError("session frame counter exhausted", code="E_TRANSPORT_REJECTED")
        nonce = frame_nonce(self.sent)
        self.sent += 1
        return chacha20poly1305_encrypt(self._keys.send_key, nonce, plaintext, FRAME_AAD)

    def open(self, frame: bytes) -> bytes:
        """The plaintext of the next frame; ``E_SIG_INVALID`` if it does not open."""
        if self.received > _MAX_COUNTER:
            raise NetError("session frame counter exhausted", code="E_TRANSPORT_REJECTED")
        if len(frame) < _TAG:
            raise NetError("session frame is shorter than its tag", code="E_SIG_INVALID")
        try:
            plaintext = chacha20poly1305_decrypt(
                self._keys.receive_key, frame_nonce(self.received), frame, FRAME_AAD
            )
        except DecryptionFailed as exc:
            raise NetError(
                "session frame failed authentication (altered, replayed or out of order)",
                code="E_SIG_INVALID",
                details={"frame": self.received},
            ) from exc
        self.received += 1
        return plaintext


# --- the conversation ------------------------------------------------------------------------


@attrs.frozen
class CapabilitiesReceived:
    """The peer's signed capability advertisement (always its first frame)."""

    advertisement: Mapping[str, Any]
    capabilities: frozenset[str]


@attrs.frozen
class SignalReceived:
    envelope: Mapping[str, Any]
    marker: Mapping[str, Any]


@attrs.frozen
class MessageReceived:
    """An OCP message handed on by the peer: its exact signed bytes."""

    raw: bytes


@attrs.frozen
class ReceiptReceived:
    """The peer's answer to a message we handed on."""

    message_id: str
    status: Literal["accepted", "duplicate", "rejected"]
    code: str | None = None


@attrs.frozen
class AdvertisementReceived:
    """A node-advertisement.v1 the peer published (checked, not yet compared)."""

    advertisement: Mapping[str, Any]


@attrs.frozen
class EndpointsReceived:
    """The OCP endpoint URLs (messages, agent WebSocket) the peer serves agents at.

    Agents whose registry record names one of these URLs are hosted by the
    peer: their messages can travel over this session.
    """

    urls: tuple[str, ...]


@attrs.frozen
class PeerErrorReceived:
    """The peer reported that it refused something we sent."""

    code: str
    detail: str


@attrs.frozen
class Refused:
    """We refused something the peer sent; an error notice is queued for it."""

    error: NetError


SessionEvent = (
    CapabilitiesReceived
    | SignalReceived
    | MessageReceived
    | ReceiptReceived
    | AdvertisementReceived
    | EndpointsReceived
    | PeerErrorReceived
    | Refused
)

_RECEIPT_STATUSES: Final = frozenset({"accepted", "duplicate", "rejected"})
_MAX_DETAIL: Final = 256


class PeerSession:
    """One established session: frames in, events out, frames to send queued.

    Opening: each side's first frame is its signed capability
    advertisement (:meth:`send_capabilities`). Until the peer's has arrived
    (``capabilities is None``) nothing else from it is accepted, and
    :meth:`require` refuses every use.

    Keepalive (D8): :meth:`poll` queues a ping when nothing was sent for
    :data:`KEEPALIVE_INTERVAL` seconds and reports the session lost when
    nothing was received for :data:`KEEPALIVE_TIMEOUT` seconds. Any frame
    counts as traffic; pings are answered at once.
    """

    def __init__(
        self,
        established: Established,
        *,
        now: float,
        keepalive_interval: float = KEEPALIVE_INTERVAL,
        keepalive_timeout: float = KEEPALIVE_TIMEOUT,
    ) -> None:
        self.established = established
        self.peer = established.peer_node_id
        self.cipher = FrameCipher(established.keys)
        self.capabilities: frozenset[str] | None = None
        self.keepalive_interval = keepalive_interval
        self.keepalive_timeout = keepalive_timeout
        self.last_received = now
        self.last_sent = now
        self.pings_sent = 0
        self.pongs_received = 0
        self.closed: NetError | None = None
        self._outgoing: list[bytes] = []

    # -- sending --

    @property
    def queued(self) -> int:
        """Frames sealed and not yet taken by :meth:`data_to_send`."""
        return len(self._outgoing)

    def data_to_send(self) -> list[bytes]:
        """Frames queued since the last call, in order."""
        out, self._outgoing = self._outgoing, []
        return out

    def _queue(self, plaintext: bytes, now: float | None) -> None:
        if self.closed is not None:
            raise NetError("session is closed", code="E_TRANSPORT_UNAVAILABLE")
        self._outgoing.append(self.cipher.seal(plaintext))
        if now is not None:
            self.last_sent = now

    def _control(self, obj: Mapping[str, Any], now: float | None) -> None:
        body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
        self._queue(bytes((_CONTROL,)) + body, now)

    def send_capabilities(self, advertisement: Mapping[str, Any], *, now: float) -> None:
        self._control({"type": "capabilities", "advertisement": dict(advertisement)}, now)

    def send_signal(self, envelope: Mapping[str, Any], *, now: float) -> None:
        self.require(CORE_MESSAGING)
        self._control({"type": "signal-marker", "envelope": dict(envelope)}, now)

    def send_advertisement(self, advertisement: Mapping[str, Any], *, now: float) -> None:
        self.require(CORE_MESSAGING)
        self._control({"type": "advertisement", "advertisement": dict(advertisement)}, now)

    def send_endpoints(self, urls: Iterable[str], *, now: float) -> None:
        """Tell the peer at which OCP endpoint URLs this node serves agents."""
        self.require(CORE_MESSAGING)
        self._control({"type": "endpoints", "urls": list(urls)[:MAX_ENDPOINTS]}, now)

    def send_message(self, raw: bytes, *, now: float, capability: str = CORE_MESSAGING) -> None:
        """Hand on one OCP message, exactly as signed; needs ``capability`` of the peer."""
        self.require(capability)
        self._queue(bytes((_MESSAGE,)) + raw, now)

    def send_receipts(self, receipts: Sequence[ReceiptReceived], *, now: float) -> None:
        """Answer several of the peer's messages: one frame per :data:`MAX_RECEIPTS`."""
        for start in range(0, len(receipts), MAX_RECEIPTS):
            items = []
            for receipt in receipts[start : start + MAX_RECEIPTS]:
                item: dict[str, Any] = {"message_id": receipt.message_id, "status": receipt.status}
                if receipt.code is not None:
                    item["code"] = receipt.code
                items.append(item)
            self._control({"type": "receipts", "items": items}, now)

    def send_error(self, error: NetError, *, now: float | None = None) -> None:
        self._control(
            {"type": "error", "code": error.code, "detail": error.message[:_MAX_DETAIL]}, now
        )

    def require(self, capability: str) -> None:
        """``E_PROTO_CAP_MISSING`` unless the peer advertised ``capability``."""
        if self.capabilities is None or capability not in self.capabilities:
            raise CapabilityMissing(
                f"peer {self.peer} lacks capability {capability}",
                details={"needed": capability, "peer": self.peer},
            )

    # -- time --

    def poll(self, now: float) -> float:
        """Queue a due ping; returns when to poll next.

        Raises ``E_TRANSPORT_UNAVAILABLE`` (and closes) when the peer has
        been silent for :attr:`keepalive_timeout` seconds.
        """
        if self.closed is not None:
            raise self.closed
        if now - self.last_received >= self.keepalive_timeout:
            self.closed = NetError(
                f"no traffic from the peer for {self.keepalive_timeout:g} s",
                code="E_TRANSPORT_UNAVAILABLE",
                details={"keepalive": "lost"},
            )
            raise self.closed
        if now - self.last_sent >= self.keepalive_interval:
            self.pings_sent += 1
            self._control({"type": "ping", "n": self.pings_sent}, now)
        return min(
            self.last_sent + self.keepalive_interval,
            self.last_received + self.keepalive_timeout,
        )

    # -- receiving --

    def receive(self, frame: bytes, *, now: float) -> list[SessionEvent]:
        """Open and act on one frame from the peer.

        Raises a :class:`NetError` and closes the session when the frame
        does not open or carries a hard failure; a softer failure comes back
        as :class:`Refused` with an error notice queued for the peer.
        """
        if self.closed is not None:
            raise self.closed
        try:
            plaintext = self.cipher.open(frame)
        except NetError as exc:
            self.closed = exc
            raise
        self.last_received = now
        try:
            event = self._interpret(plaintext, now)
        except NetError as exc:
            if exc.code in HARD_CODES or self.capabilities is None:
                self.closed = exc
                raise
            self.send_error(exc, now=now)
            return [Refused(exc)]
        if event is None:
            return []
        if isinstance(event, list):
            return list[SessionEvent](event)
        return [event]

    def _interpret(
        self, plaintext: bytes, now: float
    ) -> SessionEvent | list[ReceiptReceived] | None:
        if not plaintext:
            raise _invalid("empty session frame")
        kind, body = plaintext[0], plaintext[1:]
        if kind == _MESSAGE:
            if self.capabilities is None:
                raise _invalid("a message before the capability advertisement")
            return MessageReceived(body)
        if kind != _CONTROL:
            raise _invalid(f"unknown session frame kind {kind}")
        control = _json_object(body, what="session control frame", limit=MAX_CONTROL_BYTES)
        kind_name = control.get("type")
        if self.capabilities is None and kind_name != "capabilities":
            raise _invalid("the first session frame must be the capability advertisement")
        if kind_name == "capabilities":
            return self._capabilities(control)
        if kind_name == "ping":
            self._control({"type": "pong", "n": control.get("n")}, now)
            return None
        if kind_name == "pong":
            self.pongs_received += 1
            return None
        if kind_name == "signal-marker":
            envelope = control.get("envelope")
            marker = verify_signal_marker_envelope(envelope, now=now, session_peer=self.peer)
            assert isinstance(envelope, Mapping)  # noqa: S101 - verified above
            return SignalReceived(envelope, marker)
        if kind_name == "receipt":
            return self._receipt(control)
        if kind_name == "receipts":
            items = control.get("items")
            if not isinstance(items, list) or not 0 < len(items) <= MAX_RECEIPTS:
                raise _invalid(f"receipts needs a list of 1 to {MAX_RECEIPTS} receipts")
            if not all(isinstance(item, Mapping) for item in items):
                raise _invalid("each of receipts' items must be an object")
            return [self._receipt(item) for item in items]
        if kind_name == "advertisement":
            advertisement = control.get("advertisement")
            try:
                verify_node_advertisement(advertisement, now=now, expected_node_id=self.peer)
            except NetError as exc:
                # (the node counts and traces refused advertisements apart)
                exc.details["artifact"] = ADVERTISEMENT_ARTIFACT
                raise
            assert isinstance(advertisement, Mapping)  # noqa: S101 - verified above
            return AdvertisementReceived(advertisement)
        if kind_name == "endpoints":
            urls = control.get("urls")
            if (
                not isinstance(urls, list)
                or len(urls) > MAX_ENDPOINTS
                or not all(
                    isinstance(u, str) and 0 < len(u) <= MAX_ENDPOINT_URL and u.isprintable()
                    for u in urls
                )
            ):
                raise _invalid(f"endpoints needs a list of at most {MAX_ENDPOINTS} URLs")
            return EndpointsReceived(tuple(urls))
        if kind_name == "error":
            code, detail = control.get("code"), control.get("detail")
            if not isinstance(code, str) or not isinstance(detail, str):
                raise _invalid("an error notice needs a string code and detail")
            return PeerErrorReceived(code[:64], detail[:_MAX_DETAIL])
        raise _invalid(f"unknown session frame type {str(kind_name)[:64]!r}")

    def _capabilities(self, control: Mapping[str, Any]) -> CapabilitiesReceived:
        if self.capabilities is not None:
            raise _invalid("the capability advertisement was already sent")
        advertisement = control.get("advertisement")
        capabilities = verify_capability_advertisement(advertisement, expected_node_id=self.peer)
        assert isinstance(advertisement, Mapping)  # noqa: S101 - verified above
        self.capabilities = capabilities
        return CapabilitiesReceived(advertisement, capabilities)

    def _receipt(self, control: Mapping[str, Any]) -> ReceiptReceived:
        message_id, status, code = (
            control.get("message_id"),
            control.get("status"),
            control.get("code"),
        )
        if not isinstance(message_id, str) or status not in _RECEIPT_STATUSES:
            raise _invalid("a receipt needs a message_id and a known status")
        if code is not None and not isinstance(code, str):
            raise _invalid("a receipt's code must be a string")
        return ReceiptReceived(message_id, status, code)
