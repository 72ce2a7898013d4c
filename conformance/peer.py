"""Checks of the node's peer endpoint: the suite plays a remote peer node (NET, D8).

A node answers other nodes at ``/ocp/v1/peer`` on its WebSocket port, over
WSS with the subprotocol ``ocp.peer.v1`` (D8). Each check here dials it the
way another node would: it makes a fresh did:key node identity of its own
(an Ed25519 key, ``node:did:key:z6Mk…``), sends a signed ``peer-handshake.v1``
hello and judges the answer; the checks that need a session go on with the
D8 key schedule and sealed frames. The protocol core (artifacts, signatures,
the key schedule, frame sealing, the meaning of a frame) is the sans-I/O code
of ``ocpd.proto.peer`` and ``ocpd.proto.netartifacts``, which the published
``networking.json`` vectors pin (NET-VEC-002, NET-VEC-003); the node under
test is reached only over the network.

The endpoint is :attr:`Probe.peer_url` (``--node-peer``) or, by default, the
node's WebSocket base URL (``--node-ws``, else ``--node``) with the path
``/ocp/v1/peer`` and the scheme ``wss`` (``ws`` for a plaintext node). When
nothing there speaks the protocol (the upgrade is answered with a 4xx, such
as the 404 of a node without peering) every check reports ``not_tested``
with that reason: the requirements are unchecked, not failed.

What the checks expect beyond the words of the specification, as ocpd does:

* a refused hello is answered with an error notice, the text frame
  ``{"type": "error", "code": "E_…", "detail": "…"}``, and/or a close whose
  reason is the code; then the connection closes (fail closed, NFR-004).
  The code must be the frozen one the rule calls for (FR-022). FR-023 puts
  the classes on ``error/occurred`` trace events, which a peer does not see:
  a notice that names a class (``class``, ``error/class`` or
  ``error_class``) must name its code's frozen class, and one that does not
  (ocpd's) is taken to mean the class of its code;
* session frames are binary, sealed with ChaCha20-Poly1305 under the D8 keys
  with counter nonces; a plaintext is a kind byte and, for control frames,
  JSON (``ocpd.proto.peer``). Each side's first frame is its capability
  advertisement (the suite sends its own at once, so a node may wait for it
  or not); ``{"type": "ping"}`` is answered with ``{"type": "pong"}``;
* clocks: an ack's ``ts`` must be within ±30 s of the suite's clock, as a
  dialling node checks it. The skew cases are placed on the node's clock as
  read from an ack (to the second), so they do not depend on the hosts
  agreeing: 40 s off must be refused, 25 s off accepted (FR-012b's ±30 s,
  with room for the round trip and whole-second timestamps).

Identities are fresh for each check and for most connections within one: no
key dials more than 3 times, so the node's per-peer handshake limits are not
reached. A check opens at most 7 connections, one after another.
"""

from __future__ import annotations

import json
import re
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import wraps
from typing import TYPE_CHECKING, Any, Final

import trio

from conformance.checks import NET_CLASSES, Outcome, Unexpected, checked
from conformance.client import endpoint_url, ws_scheme
from conformance.ws import WsClosed, WsFailed, WsRefused, ws_connect
from ocpd.proto.crypto import SigningKey, X25519KeyPair
from ocpd.proto.encoding import b64url_decode, b64url_encode, parse_timestamp
from ocpd.proto.errors import OcpError
from ocpd.proto.ids import format_node_id, new_prefixed_uuid
from ocpd.proto.netartifacts import (
    CORE_MESSAGING,
    HANDSHAKE_UNSIGNED,
    NET_PROTOCOL_VERSION,
    PEER_HANDSHAKE,
    build_ack,
    build_capability_advertisement,
    build_signal_marker,
    build_signal_marker_envelope,
    verify_handshake,
)
from ocpd.proto.peer import (
    PEER_PATH,
    PEER_SUBPROTOCOL,
    CapabilitiesReceived,
    Established,
    Initiator,
    PeerErrorReceived,
    PeerSession,
    SessionEvent,
)
from ocpd.proto.signing import sign_net_artifact

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable, Mapping

    from conformance.checks import Check, Probe
    from conformance.ws import WsConnection

__all__ = [
    "CHECKS",
    "HelloAnswer",
    "PeerEndpoint",
    "PeerLink",
    "RemotePeer",
    "peer_endpoint_url",
    "refusal_problems",
]

#: FR-012b: hellos further than this from the node's clock are refused.
HANDSHAKE_SKEW: Final = 30.0
#: A hello this far off the node's clock must be refused ...
SKEW_OUTSIDE: Final = 40.0
#: ... and one this far off accepted (both leave room for the round trip).
SKEW_INSIDE: Final = 25.0
#: An unsupported protocol/version (the baseline is 1.0).
OTHER_VERSION: Final = "2.0"
#: The kind of the suite's signal-marker (a schematic id, as signal-marker.v1 wants).
SIGNAL_KIND: Final = "conformance/probe"
#: A close reason that names an error code.
CODE_LIKE: Final = re.compile(r"E_[A-Z_]{2,40}")
#: Where a peer's error notice may name the code and the class.
CODE_FIELDS: Final = ("code", "error/code", "error_code")
CLASS_FIELDS: Final = ("class", "error/class", "error_class")


class Absent(Exception):
    """Nothing speaks the peer protocol at the endpoint: the peer checks cannot run."""


def peer_check(check: Check) -> Check:
    """:func:`checked`, and ``not_tested`` (saying why) when the endpoint is absent."""
    inner = checked(check)

    @wraps(check)
    async def run(probe: Probe) -> Outcome:
        try:
            return await inner(probe)
        except Absent as exc:
            return Outcome("not_tested", f"skipped: {exc}")

    return run


def peer_endpoint_url(probe: Probe) -> str:
    """``--node-peer``, or the node's WebSocket base URL with ``/ocp/v1/peer`` (D8)."""
    if probe.peer_url:
        return ws_scheme(probe.peer_url)
    base = probe.listener("node-ws") or probe.role("node")
    return ws_scheme(endpoint_url(base.url, PEER_PATH))


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _short(value: object, limit: int = 120) -> str:
    text = value if isinstance(value, str) else _dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _brief_id(node_id: object) -> str:
    text = str(node_id)
    return text if len(text) <= 26 else text[:22] + "…" + text[-4:]


def _failure(error: OcpError) -> str:
    return f"{error.code} {error.message}"


def flip_bit(data: bytes, index: int | None = None) -> bytes:
    """``data`` with one bit flipped (in the middle unless ``index`` says where)."""
    altered = bytearray(data)
    altered[len(altered) // 2 if index is None else index] ^= 0x01
    return bytes(altered)


def flip_signature(artifact: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a signed NET artifact with one bit of its signature flipped."""
    signature = flip_bit(b64url_decode(artifact["signature"], field="signature"))
    return {**artifact, "signature": b64url_encode(signature)}


def resigned(
    key: SigningKey,
    handshake: Mapping[str, Any],
    changes: Mapping[str, Any] | None = None,
    *,
    drop: Iterable[str] = (),
) -> dict[str, Any]:
    """``handshake`` with fields changed or dropped, signed again by ``key``."""
    payload = {k: v for k, v in handshake.items() if k != "signature" and k not in set(drop)}
    payload.update(changes or {})
    return sign_net_artifact(PEER_HANDSHAKE, payload, key, unsigned_fields=HANDSHAKE_UNSIGNED)


class RemotePeer:
    """The suite as a remote peer node: a fresh Ed25519 key and its did:key node id."""

    def __init__(self) -> None:
        self.key = SigningKey.generate()
        self.node_id = format_node_id(self.key.public_key)

    def initiator(
        self, *, now: float | None = None, recipient: str | None = None, nonce: bytes | None = None
    ) -> Initiator:
        """A signed hello (offering ``core/messaging``), waiting for its ack."""
        return Initiator(
            self.key,
            now=time.time() if now is None else now,
            recipient=recipient,
            capabilities=(CORE_MESSAGING,),
            nonce=nonce,
        )

    def capabilities(self) -> dict[str, Any]:
        return build_capability_advertisement(self.key, now=time.time())


# --- one hello and what came of it ---------------------------------------------------------


@dataclass
class HelloAnswer:
    """What the node did with one hello: an ack, a refusal, something else or nothing."""

    wait: float
    sent_at: float = 0.0
    answered_at: float = 0.0
    ack: dict[str, Any] | None = None
    notice: dict[str, Any] | None = None
    other: str | None = None
    closed: WsClosed | None = None

    def _field(self, names: tuple[str, ...]) -> str | None:
        if self.notice is None:
            return None
        for name in names:
            value = self.notice.get(name)
            if isinstance(value, str):
                return value
        return None

    @property
    def notice_code(self) -> str | None:
        return self._field(CODE_FIELDS)

    @property
    def close_code(self) -> str | None:
        """The error code the close reason names, if it names one."""
        reason = self.closed.reason.strip() if self.closed is not None else ""
        return reason if CODE_LIKE.fullmatch(reason) else None

    @property
    def code(self) -> str | None:
        return self.notice_code or self.close_code

    @property
    def error_class(self) -> str | None:
        return self._field(CLASS_FIELDS)

    def describe(self) -> str:
        if self.ack is not None:
            return "an ack"
        parts = []
        if self.notice is not None:
            shown = self.notice_code or "no code"
            parts.append(
                f"error notice {shown}" + (f" ({self.error_class})" if self.error_class else "")
            )
        if self.other is not None:
            parts.append(self.other)
        if self.closed is not None:
            reason = f" {self.closed.reason}" if self.closed.reason else ""
            parts.append(f"close {self.closed.code}{reason}")
        elif parts:
            parts.append(f"the connection still open after {self.wait:g} s")
        return ", ".join(parts) or f"no answer within {self.wait:g} s"

    def take(self, message: str | bytes) -> None:
        """Sort the node's first answer."""
        if isinstance(message, bytes):
            self.other = f"a binary frame of {len(message)} bytes"
            return
        try:
            value: object = json.loads(message)
        except ValueError:
            value = None
        if isinstance(value, dict) and "handshake/mode" in value:
            self.ack = value
        elif isinstance(value, dict) and value.get("type") == "error":
            self.notice = value
        else:
            self.other = f"the text {_short(message, 80)!r}"


async def offer(connection: WsConnection, text: str, wait: float) -> HelloAnswer:
    """Send one handshake frame and read the answer.

    An ack is returned at once (the connection stays usable for the session).
    Anything else is a refusal: the connection must then close, and its close
    is awaited for up to ``wait`` seconds.
    """
    answer = HelloAnswer(wait=wait, sent_at=time.time())
    try:
        await connection.send(text)
        with trio.move_on_after(wait):
            answer.take(await connection.receive_message())
            answer.answered_at = time.time()
        if answer.ack is None and answer.answered_at:
            with trio.move_on_after(wait):
                while True:
                    await connection.receive_message()
    except WsClosed as exc:
        answer.closed = exc
    return answer


def clock_offset(answer: HelloAnswer) -> float:
    """How far the node's clock is ahead of the suite's, from an ack's ``ts`` (whole seconds)."""
    assert answer.ack is not None
    try:
        node_time = parse_timestamp(answer.ack.get("ts"), field="ts")
    except OcpError as exc:
        raise Unexpected(f"the node's ack has no usable ts: {exc.message}") from None
    # The node truncated its clock to the second: it read node_time + [0, 1).
    return float(round(node_time + 0.5 - (answer.sent_at + answer.answered_at) / 2))


def refusal_problems(
    what: str, answer: HelloAnswer, expected: str | None, seen: list[str] | None = None
) -> list[str]:
    """What is wrong with the refusal of a hello that must fail with ``expected``.

    ``expected`` ``None``: any frozen code will do. The code found is added to ``seen``.
    """
    if answer.ack is not None:
        return [f"{what}: accepted with an ack"]
    code = answer.code
    wanted = expected or "a frozen E_* code"
    if code is None:
        return [f"{what}: {answer.describe()}, expected a refusal with {wanted}"]
    if seen is not None:
        seen.append(code)
    problems = []
    if code not in NET_CLASSES:
        problems.append(f"{what}: refused with {code!r}, not a frozen NET code (FR-022)")
    elif expected is not None and code != expected:
        problems.append(f"{what}: refused with {code}, expected {expected}")
    notice_code, close_code = answer.notice_code, answer.close_code
    if notice_code and close_code and notice_code != close_code:
        problems.append(f"{what}: the error notice says {notice_code}, the close {close_code}")
    found_class = answer.error_class
    if found_class is not None and code in NET_CLASSES and found_class != NET_CLASSES[code]:
        problems.append(f"{what}: error class {found_class!r}, not {NET_CLASSES[code]} (FR-023)")
    if answer.closed is None:
        problems.append(
            f"{what}: the connection still open {answer.wait:g} s after the refusal "
            "(fail closed, NFR-004)"
        )
    return problems


def ack_problems(ack: Mapping[str, Any], initiator: Initiator, what: str = "the ack") -> list[str]:
    """What keeps ``ack`` from being a valid answer to ``initiator``'s hello (FR-010, FR-012)."""
    try:
        # Schema, protocol/version, key/public against sender/node-id, the signature
        # over "peer-handshake.v1\x00" + deterministic CBOR, ts within ±30 s, recipient.
        verify_handshake(ack, now=time.time(), local_node_id=initiator.node_id)
    except OcpError as exc:
        return [f"{what} does not verify: {_failure(exc)}"]
    problems = []
    if ack.get("handshake/mode") != "ack":
        problems.append(f"{what} has handshake/mode {ack.get('handshake/mode')!r}, not ack")
    if ack.get("ack/of-handshake-id") != initiator.handshake_id:
        problems.append(
            f"{what} has ack/of-handshake-id {ack.get('ack/of-handshake-id')!r}, "
            f"not the hello's {initiator.handshake_id}"
        )
    if ack.get("recipient/node-id") != initiator.node_id:
        problems.append(f"{what} is addressed to {ack.get('recipient/node-id')!r}, not the suite")
    if ack.get("protocol/version") != NET_PROTOCOL_VERSION:
        problems.append(f"{what} has protocol/version {ack.get('protocol/version')!r}")
    if not problems:
        try:
            initiator.receive_ack(ack, now=time.time())
        except OcpError as exc:
            problems.append(f"{what}: {_failure(exc)}")
    return problems


# --- an established session ------------------------------------------------------------------


@dataclass
class Ending:
    """How a session ended after something the suite sent."""

    closed: WsClosed | None
    answered: bool


class PeerLink:
    """An established session, seen from the suite's end.

    Frames go through :class:`PeerSession`, so the suite behaves as a correct
    peer: it answers the node's pings, and opens and judges the node's frames.
    Its keepalive interval is 0: :meth:`ping` sends a ping whenever asked.
    """

    def __init__(
        self, connection: WsConnection, peer: RemotePeer, established: Established, wait: float
    ) -> None:
        self.connection = connection
        self.peer = peer
        self.established = established
        self.wait = wait
        self.session = PeerSession(established, now=time.time(), keepalive_interval=0.0)
        self.notices: list[PeerErrorReceived] = []
        self.capabilities: CapabilitiesReceived | None = None

    @property
    def node_id(self) -> str:
        return self.established.peer_node_id

    async def send_raw(self, frame: bytes, what: str) -> None:
        try:
            await self.connection.send_bytes(frame)
        except WsClosed as exc:
            raise Unexpected(f"{what}: the node closed the session ({exc})") from None

    async def flush(self, what: str = "sending") -> None:
        """Send what the session queued, in order (the frame counter depends on it)."""
        for frame in self.session.data_to_send():
            await self.send_raw(frame, what)

    async def _frame(self, what: str) -> bytes:
        try:
            with trio.move_on_after(self.wait):
                data = await self.connection.receive_message()
                if isinstance(data, str):
                    raise Unexpected(f"{what}: a text frame on the session ({_short(data)})")
                return data
        except WsClosed as exc:
            raise Unexpected(f"{what}: the node closed the session ({exc})") from None
        raise Unexpected(f"{what}: nothing from the node within {self.wait:g} s")

    async def events(self, what: str) -> list[SessionEvent]:
        """The next frame from the node, opened and interpreted."""
        frame = await self._frame(what)
        try:
            events = self.session.receive(frame, now=time.time())
        except OcpError as exc:
            raise Unexpected(f"{what}: the node's frame fails: {_failure(exc)}") from None
        for event in events:
            if isinstance(event, PeerErrorReceived):
                self.notices.append(event)
            elif isinstance(event, CapabilitiesReceived):
                self.capabilities = event
        await self.flush(what)
        return events

    async def open(self) -> CapabilitiesReceived:
        """Send the suite's capability advertisement, then read the node's (its first frame)."""
        self.session.send_capabilities(self.peer.capabilities(), now=time.time())
        await self.flush("the suite's capability advertisement")
        await self.events("the node's first session frame (its capability advertisement)")
        if self.capabilities is None:  # PeerSession refuses any other first frame
            raise Unexpected("the node's first session frame is not its capability advertisement")
        return self.capabilities

    def sealed_ping(self) -> bytes:
        """A ping frame, sealed and counted but not sent."""
        self.session.poll(time.time())
        frames = self.session.data_to_send()
        if len(frames) != 1:
            raise Unexpected(f"the suite queued {len(frames)} frames for one ping")
        return frames[0]

    async def pong(self, what: str) -> float:
        """Wait for the answer to a ping just sent; seconds it took."""
        started = trio.current_time()
        before = self.session.pongs_received
        with trio.move_on_after(self.wait):
            while self.session.pongs_received == before:
                await self.events(what)
            return trio.current_time() - started
        raise Unexpected(f"{what}: no pong within {self.wait:g} s")

    async def ping(self, what: str) -> float:
        await self.flush(what)
        await self.send_raw(self.sealed_ping(), what)
        return await self.pong(what)

    async def ending(self) -> Ending:
        """Read until the node closes (at most the wait): did it, and did it answer a ping?"""
        before = self.session.pongs_received
        try:
            with trio.move_on_after(self.wait):
                while True:
                    data = await self.connection.receive_message()
                    if isinstance(data, bytes) and self.session.closed is None:
                        try:
                            self.session.receive(data, now=time.time())
                        except OcpError:
                            pass
        except WsClosed as exc:
            return Ending(exc, self.session.pongs_received > before)
        return Ending(None, self.session.pongs_received > before)


class PeerEndpoint:
    """The node's peer endpoint, as a dialling node reaches it."""

    def __init__(self, probe: Probe) -> None:
        self.probe = probe
        self.url = peer_endpoint_url(probe)
        self.wait = probe.request_timeout

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[WsConnection]:
        """A WebSocket offering ``ocp.peer.v1``; :class:`Absent` when nothing upgrades."""
        entered = False
        try:
            async with ws_connect(
                self.url, context=self.probe.context, subprotocols=[PEER_SUBPROTOCOL]
            ) as connection:
                entered = True
                if connection.subprotocol != PEER_SUBPROTOCOL:
                    raise Unexpected(
                        f"{self.url} upgraded with subprotocol {connection.subprotocol!r}, "
                        f"not {PEER_SUBPROTOCOL}"
                    )
                yield connection
        except WsRefused as exc:
            if entered:
                raise
            if exc.status >= 500:
                raise Unexpected(f"{self.url}: the upgrade failed with HTTP {exc.status}") from None
            raise Absent(
                f"no peer endpoint at {self.url}: the upgrade to {PEER_SUBPROTOCOL} "
                f"was refused with HTTP {exc.status}"
            ) from None
        except WsFailed as exc:
            if entered:
                raise
            raise Unexpected(f"{self.url}: {exc}") from None

    async def hello(self, text: str) -> HelloAnswer:
        """One handshake frame on a connection of its own, and what came of it."""
        async with self.connect() as connection:
            return await offer(connection, text, self.wait)

    async def accepted(self, initiator: Initiator, what: str) -> HelloAnswer:
        """A hello that must be acked (its ack is checked only for being one)."""
        answer = await self.hello(initiator.hello_text())
        if answer.ack is None:
            raise Unexpected(f"{what}: {answer.describe()}, expected an ack")
        return answer

    @asynccontextmanager
    async def session(self, peer: RemotePeer | None = None) -> AsyncIterator[PeerLink]:
        """Hello, ack, both capability advertisements: an established session."""
        peer = peer or RemotePeer()
        async with self.connect() as connection:
            initiator = peer.initiator()
            answer = await offer(connection, initiator.hello_text(), self.wait)
            if answer.ack is None:
                raise Unexpected(f"a valid hello: {answer.describe()}, expected an ack")
            try:
                established = initiator.receive_ack(answer.ack, now=time.time())
            except OcpError as exc:
                raise Unexpected(f"the ack to a valid hello: {_failure(exc)}") from None
            link = PeerLink(connection, peer, established, self.wait)
            await link.open()
            yield link


# --- the checks ------------------------------------------------------------------------------


@peer_check
async def check_peer_handshake(probe: Probe) -> Outcome:
    """NET-HS-001: a signed hello is answered by a signed ack bound to it (FR-010, FR-012)."""
    endpoint = PeerEndpoint(probe)
    peer = RemotePeer()
    problems: list[str] = []
    if not endpoint.url.startswith("wss://"):
        problems.append(f"{endpoint.url} is not WSS (D8, FR-008)")
    initiator = peer.initiator()
    answer = await endpoint.hello(initiator.hello_text())
    if answer.ack is None:
        return Outcome("fail", f"a valid hello: {answer.describe()}, expected an ack")
    problems.extend(ack_problems(answer.ack, initiator))
    node_id = answer.ack.get("sender/node-id")
    if problems:
        return Outcome("fail", "; ".join(problems))
    # A node that read the node's advertisement names it: that hello is good too.
    addressed = peer.initiator(recipient=str(node_id))
    again = await endpoint.hello(addressed.hello_text())
    what = "the ack to a hello naming the node in recipient/node-id"
    if again.ack is None:
        problems.append(f"a hello naming the node in recipient/node-id: {again.describe()}")
    else:
        problems.extend(ack_problems(again.ack, addressed, what))
        if not problems and again.ack.get("sender/node-id") != node_id:
            problems.append(f"{what} is signed by another node id")
    return Outcome.of(
        problems,
        f"ack signed by {_brief_id(node_id)}, bound by ack/of-handshake-id, protocol/version "
        f"{NET_PROTOCOL_VERSION}, ts within ±30 s; the same for a hello naming the node",
    )


@peer_check
async def check_peer_replay(probe: Probe) -> Outcome:
    """NET-HS-002: replayed nonces and hellos outside ±30 s get E_HS_REPLAY (FR-012b)."""
    endpoint = PeerEndpoint(probe)
    peer = RemotePeer()
    first = peer.initiator()
    offset = clock_offset(await endpoint.accepted(first, "a fresh hello"))
    nonce = b64url_decode(first.hello["nonce"], field="nonce")
    problems: list[str] = []
    replays = [
        ("the same hello again", first.hello_text()),
        (
            "a new hello of the same node reusing its nonce",
            peer.initiator(nonce=nonce).hello_text(),
        ),
    ]
    for delta in (-SKEW_OUTSIDE, SKEW_OUTSIDE):
        skewed = RemotePeer().initiator(now=time.time() + offset + delta)
        replays.append((f"a hello {delta:+g} s off the node's clock", skewed.hello_text()))
    for what, text in replays:
        problems.extend(refusal_problems(what, await endpoint.hello(text), "E_HS_REPLAY"))
    for delta in (-SKEW_INSIDE, SKEW_INSIDE):
        inside = RemotePeer().initiator(now=time.time() + offset + delta)
        answer = await endpoint.hello(inside.hello_text())
        if answer.ack is None:
            problems.append(
                f"a hello {delta:+g} s off the node's clock: {answer.describe()}, "
                "expected an ack (within ±30 s)"
            )
    return Outcome.of(
        problems,
        f"E_HS_REPLAY ({NET_CLASSES['E_HS_REPLAY']}) for the same hello again, its nonce in a "
        f"new hello and hellos {SKEW_OUTSIDE:g} s behind and ahead of the node's clock, each "
        f"closed; {SKEW_INSIDE:g} s behind and ahead accepted (node clock {offset:+.0f} s "
        "from the suite's)",
    )


@peer_check
async def check_peer_hello_refusals(probe: Probe) -> Outcome:
    """NET-HS-003: a bad signature, another version or another recipient fail closed."""
    endpoint = PeerEndpoint(probe)
    peer = RemotePeer()
    # Control: the same node's valid hello is accepted, so the refusals below are the fault's.
    await endpoint.accepted(peer.initiator(), "a valid hello")
    speaker = RemotePeer()
    version = resigned(speaker.key, speaker.initiator().hello, {"protocol/version": OTHER_VERSION})
    cases = (
        (
            "bit-flipped signature",
            "a hello with a bit-flipped signature",
            _dumps(flip_signature(peer.initiator().hello)),
            "E_SIG_INVALID",
        ),
        (
            f"protocol/version {OTHER_VERSION}",
            f"a hello signed for protocol/version {OTHER_VERSION}",
            _dumps(version),
            "E_PROTO_VERSION",
        ),
        (
            "another recipient",
            "a hello addressed to another node",
            RemotePeer().initiator(recipient=RemotePeer().node_id).hello_text(),
            None,
        ),
    )
    problems: list[str] = []
    shown: list[str] = []
    for label, what, text, code in cases:
        answer = await endpoint.hello(text)
        problems.extend(refusal_problems(what, answer, code))
        shown.append(f"{label} {answer.code}")
    return Outcome.of(problems, f"refused and closed: {', '.join(shown)}")


@peer_check
async def check_peer_capabilities(probe: Probe) -> Outcome:
    """NET-CAP-001: a signed capability advertisement with core/messaging comes first."""
    endpoint = PeerEndpoint(probe)
    problems: list[str] = []
    async with endpoint.session() as link:
        # PeerSession checked it: the node's first frame, capability-advertisement.v1 for the
        # session's node id, signed by it, protocol/version 1.0, transport/profiles, core/messaging.
        received = link.capabilities
        assert received is not None
        await link.ping("a ping after the suite's capability advertisement")
        problems.extend(
            f"the node refused the suite's capability advertisement: {n.code} {n.detail}"
            for n in link.notices
        )
    advertisement = received.advertisement
    profiles = advertisement.get("transport/profiles")
    return Outcome.of(
        problems,
        f"signed capability-advertisement.v1 first on the session: capabilities/core "
        f"{sorted(received.capabilities)}, transport/profiles {profiles}; the suite's own "
        "was taken (a ping after it answered)",
    )


@peer_check
async def check_peer_frames(probe: Probe) -> Outcome:
    """NET-SESSION-001: frames use the D8 keys and counters; an altered or replayed one ends it."""
    endpoint = PeerEndpoint(probe)
    problems: list[str] = []
    endings: list[str] = []
    for what in ("a bit-flipped frame", "a replayed frame"):
        async with endpoint.session() as link:
            # The node's frames opened with the suite's D8 keys; its pong must too.
            await link.flush(what)
            frame = link.sealed_ping()
            await link.send_raw(frame, what)
            await link.pong(f"a ping before {what}")
            # A replayed frame's counter is spent: it no longer opens.
            bad = flip_bit(link.sealed_ping()) if what == "a bit-flipped frame" else frame
            await link.send_raw(bad, what)
            ending = await link.ending()
        if ending.answered:
            problems.append(f"{what}: the node answered it (a pong)")
        if ending.closed is None:
            problems.append(f"{what}: the session still open {endpoint.wait:g} s later")
        else:
            endings.append(f"{what} (close {ending.closed.code})")
    return Outcome.of(
        problems,
        "frames sealed with the D8 keys and counters answered; the session ended after "
        + " and after ".join(endings),
    )


@peer_check
async def check_peer_keepalive(probe: Probe) -> Outcome:
    """NET-KA-001: a keepalive ping over the session is answered with a pong (FR-015)."""
    endpoint = PeerEndpoint(probe)
    async with endpoint.session() as link:
        times = [await link.ping(f"keepalive ping {n}") for n in (1, 2)]
        refused = [f"{n.code} {n.detail}" for n in link.notices]
    if refused:
        return Outcome("fail", f"the node refused a ping: {'; '.join(refused)}")
    shown = ", ".join(f"{t * 1000:.0f} ms" for t in times)
    return Outcome("pass", f"2 pings answered with pongs ({shown})")


@peer_check
async def check_peer_signal(probe: Probe) -> Outcome:
    """NET-SIG-001: a signal-marker-envelope.v1 over the session is not refused.

    D8 gives a signal-marker no receipt, so acceptance (and its trace) cannot be
    seen from the other end: the check fails on a refusal and otherwise reports
    ``not_tested``, saying what it saw.
    """
    endpoint = PeerEndpoint(probe)
    peer = RemotePeer()
    async with endpoint.session(peer) as link:
        now = time.time()
        marker = build_signal_marker(peer.key, kind=SIGNAL_KIND, now=now, body="conformance")
        envelope = build_signal_marker_envelope(
            peer.key, marker, sender_node_id=peer.node_id, now=now, recipient_node_id=link.node_id
        )
        link.session.send_signal(envelope, now=now)
        await link.ping("a ping after the signal-marker envelope")
        refused = [f"{n.code} {n.detail}" for n in link.notices]
    if refused:
        return Outcome(
            "fail", f"the node refused a valid signal-marker envelope: {'; '.join(refused)}"
        )
    return Outcome(
        "not_tested",
        "skipped: a node does not acknowledge a signal-marker on the wire (D8 defines no "
        "receipt for it), so its acceptance and trace cannot be observed by a peer; seen only "
        f"that a valid envelope ({marker['marker/id']}) was not refused: no error notice, and "
        "a ping after it was answered",
    )


@peer_check
async def check_peer_error_codes(probe: Probe) -> Outcome:
    """NET-ERR-001: malformed and unsolicited handshakes get the frozen codes (FR-022, FR-023)."""
    endpoint = PeerEndpoint(probe)
    answer = await endpoint.accepted(RemotePeer().initiator(), "a valid hello")
    assert answer.ack is not None
    node_id = answer.ack.get("sender/node-id")
    offset = clock_offset(answer)
    problems: list[str] = []
    seen: list[str] = []
    speaker = RemotePeer()
    unsolicited = build_ack(
        speaker.key,
        {"sender/node-id": node_id, "handshake/id": new_prefixed_uuid("hs")},
        session_public=X25519KeyPair.generate().public_key,
        now=time.time() + offset,
    )
    cases = (
        ("a text frame that is not JSON", "this is not a peer-handshake", "E_PROTO_INVALID"),
        (
            "a signed hello without nonce",
            _dumps(resigned(speaker.key, speaker.initiator().hello, drop=("nonce",))),
            "E_PROTO_INVALID",
        ),
        ("an ack to a hello the node never sent", _dumps(unsolicited), "E_HS_UNKNOWN_REF"),
    )
    for what, text, code in cases:
        problems.extend(refusal_problems(what, await endpoint.hello(text), code, seen))
    shown = ", ".join(f"{code} ({NET_CLASSES.get(code, '?')})" for code in seen)
    return Outcome.of(problems, f"not JSON, no nonce, an unsolicited ack: {shown}")


#: Requirement id -> the check against the target that covers it.
CHECKS: Final[dict[str, Check]] = {
    "NET-HS-001": check_peer_handshake,
    "NET-HS-002": check_peer_replay,
    "NET-HS-003": check_peer_hello_refusals,
    "NET-SESSION-001": check_peer_frames,
    "NET-CAP-001": check_peer_capabilities,
    "NET-KA-001": check_peer_keepalive,
    "NET-SIG-001": check_peer_signal,
    "NET-ERR-001": check_peer_error_codes,
}
