"""Checks of the node's transports and of the envelope rules it enforces.

The node under test is reached the way an agent reaches it: ``POST
/ocp/v1/messages`` with a D3 ``Authorization`` on the node URL, and a
WebSocket at ``/ocp/v1/ws`` with subprotocol ``ocp.v1`` on the node's
WebSocket URL (``--node-ws``; the node URL when there is none). Every check
registers fresh probe agents at the target's registry first, Level 1 (D7),
with one ``ocp-ws`` endpoint: the node under test, where they connect. (No
``ocp-http`` endpoint: that would ask the node to hand their messages on over
HTTPS, OCP §3.3.2, rather than keep them for their sessions.) Messages are
built and signed with ``ocpd.proto`` only (D2 signatures, D3 headers, the D2
``auth_handshake``), so the checks rely on what OCP and the decisions define
and run against any OCP node.

The routing check (``OCP-CORE-ROUTE-001``) does the opposite on purpose: its
receiver has two ``ocp-http`` endpoints that refuse every message. Where they
live is :attr:`Probe.route_listener` (``--route-listener``): ``on`` is the
suite's own plain HTTP listener on 127.0.0.1 (it records the order in which
the node tries them; a node delivers plain HTTP only to loopback, so this
needs the node on the suite's host), ``off`` two unknown paths of the
target's registry (only the OCP-502 is observed), ``auto`` the listener when
the node's URL is a loopback address.

What a check expects, beyond the specification's own words:

* an error over HTTP has the status of its OCP code and an OCPUMF ``error``
  message as its body (D6); a WebSocket ``receipt`` carries that message in
  ``error``;
* the OCP §9 defaults are in force (5 broadcasts per agent per 60 s), as
  the discovery rate limit check assumes for the registry;
* clocks agree to well within the 60 s allowance: "stale" and "future"
  mean 5 minutes off, "expired" an hour past ``timestamp + ttl``;
* an endpoint's 4xx answer (other than 408, 425, 429) is a refusal for good:
  the node moves on to the next endpoint and, when all refused, answers the
  sender with OCP-502 at once rather than after the D6 retries (31 s).

A check waits at most the request timeout (5 s by default) for one answer,
receipt or delivery; only the handshake timeout check waits longer, for the
node's 5 s, and the routing check, up to :data:`ROUTE_WAIT` (10 s) for the
OCP-502.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import secrets
import time
from collections import deque
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import h11
import trio

from conformance.checks import (
    REGISTRY_API,
    Answer,
    Outcome,
    ProbeAgent,
    TargetRegistry,
    Unexpected,
    checked,
    compact,
)
from conformance.client import endpoint_url, http_head_only, path_and_query, ws_scheme
from conformance.ws import WsClosed, WsConnection, WsFailed, WsRefused, receive_within, ws_connect
from ocpd.proto.auth import (
    ReplayWindow,
    build_authorization,
    build_ws_auth_handshake,
    parse_authorization,
    verify_authorization,
)
from ocpd.proto.crypto import SigningKey
from ocpd.proto.diddoc import parse_did_document
from ocpd.proto.encoding import b64url_decode, b64url_encode
from ocpd.proto.envelope import build_message, sign_message, verify_message_signature
from ocpd.proto.errors import OcpError
from ocpd.proto.ids import agent_id_matches_key, broadcast_did

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

    from conformance.checks import Check, Component, Probe

__all__ = [
    "CHECKS",
    "AgentSession",
    "Forwarded",
    "RefusingEndpoints",
    "TargetNode",
    "error_problems",
    "flip_signature",
    "is_loopback",
    "node_error_code",
    "receipts_problems",
    "refusing_endpoints",
]

MESSAGES_PATH: Final = "/ocp/v1/messages"
WS_PATH: Final = "/ocp/v1/ws"
SUBPROTOCOL: Final = "ocp.v1"
#: OCP §3.1.1, App. D AUTH_HANDSHAKE_TIMEOUT.
AUTH_TIMEOUT: Final = 5.0
#: How much later than AUTH_TIMEOUT the node may close a silent connection.
AUTH_TIMEOUT_GRACE: Final = 2.0
#: A close this much before AUTH_TIMEOUT gave the client less than its 5 s.
AUTH_TIMEOUT_EARLY: Final = 0.5
#: D6: the auth_result rejection is followed by this close code.
CLOSE_POLICY: Final = 1008
SESSION_ID: Final = re.compile(
    r"sess-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE
)
MESSAGE_ID: Final = re.compile(r"msg-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}")
#: Well outside the 60 s allowance of D3 and D6, so host clocks need not agree closely.
OFF_CLOCK: Final = 300.0
HOUR: Final = 3600
#: OCP §9 and App. D: the largest message and the largest payload.
MAX_MESSAGE_SIZE: Final = 16_777_216
MAX_PAYLOAD_SIZE: Final = 10_485_760
#: OCP §9 default: broadcast messages per agent per 60 s.
BROADCAST_LIMIT: Final = 5
#: A broadcast tag (OCP App. C.1) that none of the probe agents' domains falls under.
BROADCAST_TAG: Final = "healthcare"
ACCEPTED: Final = (200, 202)


# --- the node as an agent sees it ---------------------------------------------------------


def node_error_code(answer: Answer) -> str | None:
    """``payload.error_code`` of an OCPUMF error message body (OCP §7.4)."""
    body = answer.body
    payload = body.get("payload") if isinstance(body, dict) else None
    code = payload.get("error_code") if isinstance(payload, dict) else None
    return code if isinstance(code, str) else None


def describe(answer: Answer) -> str:
    code = node_error_code(answer)
    return f"HTTP {answer.status}" + (f" {code}" if code else "")


def _error_message_problems(message: object, code: str) -> list[str]:
    """What keeps ``message`` from being a signed OCPUMF ``error`` carrying ``code``."""
    if not isinstance(message, dict):
        return ["the error is not an OCPUMF message (not a JSON object)"]
    problems = []
    payload = message.get("payload")
    found = payload.get("error_code") if isinstance(payload, dict) else None
    if found != code:
        problems.append(f"payload.error_code is {found!r}, expected {code}")
    if message.get("message_type") != "error":
        problems.append(f"message_type is {message.get('message_type')!r}, not error")
    sender = message.get("sender")
    if not isinstance(sender, dict) or not isinstance(sender.get("signature"), str):
        problems.append("the error message carries no sender.signature")
    return problems


def error_problems(answer: Answer, status: int) -> list[str]:
    """What is wrong with an HTTP refusal that should be OCP-``status`` (D6)."""
    code = f"OCP-{status}"
    if answer.status != status or node_error_code(answer) != code:
        return [f"{describe(answer)}, expected {code}"]
    return _error_message_problems(answer.body, code)


def expect_error(problems: list[str], what: str, answer: Answer, status: int) -> None:
    problems.extend(f"{what}: {p}" for p in error_problems(answer, status))


def receipt_problems(receipt: Mapping[str, Any], message_id: str | None, status: str) -> list[str]:
    """What is wrong with a ``receipt`` frame (D6) for ``message_id``."""
    problems = []
    if receipt.get("frame_type") != "receipt":
        return [f"got {_short(receipt)} instead of a receipt"]
    if receipt.get("message_id") != message_id:
        problems.append(f"receipt for {receipt.get('message_id')!r}, expected {message_id!r}")
    if receipt.get("status") != status:
        problems.append(f"receipt status {receipt.get('status')!r}, expected {status}")
    return problems


def _short(value: object, limit: int = 160) -> str:
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_or_text(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _probe_payload() -> dict[str, Any]:
    """A capability_query payload no other message has: every message is distinct content."""
    return {"capabilities": [f"cap:custom:conformance:probe_{secrets.token_hex(6)}"]}


def flip_signature(message: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a signed message with one bit of ``sender.signature`` flipped."""
    signature = bytearray(b64url_decode(message["sender"]["signature"]))
    signature[len(signature) // 2] ^= 0x01
    flipped = dict(message)
    flipped["sender"] = {**message["sender"], "signature": b64url_encode(bytes(signature))}
    return flipped


class AgentSession:
    """One authenticated WebSocket session: receipts and deliveries kept apart."""

    def __init__(
        self, connection: WsConnection, agent: ProbeAgent, session_id: str, wait: float
    ) -> None:
        self.connection = connection
        self.agent = agent
        self.session_id = session_id
        self.wait = wait
        self.receipts: deque[dict[str, Any]] = deque()
        self.deliveries: deque[str] = deque()

    async def send(self, message: Mapping[str, Any]) -> str:
        text = compact(message).decode("utf-8")
        await self.send_text(text)
        return text

    async def send_text(self, text: str) -> None:
        try:
            await self.connection.send(text)
        except WsClosed as exc:
            raise Unexpected(f"the node closed the session of a probe agent: {exc}") from None

    async def _pull(self, what: str) -> None:
        try:
            text = await self.connection.receive()
        except WsClosed as exc:
            raise Unexpected(f"{what}: the node closed the session ({exc})") from None
        frame = _json_or_text(text)
        if isinstance(frame, dict) and frame.get("frame_type") == "receipt":
            self.receipts.append(frame)
        else:
            self.deliveries.append(text)

    async def receipt(self, what: str) -> dict[str, Any]:
        """The next receipt frame; :class:`Unexpected` when none comes in time."""
        with trio.move_on_after(self.wait):
            while not self.receipts:
                await self._pull(what)
            return self.receipts.popleft()
        raise Unexpected(f"{what}: no receipt within {self.wait:g} s")

    async def delivery(self, what: str, *, wait: float | None = None) -> str:
        """The next frame that is not a receipt: a message for this agent, as received."""
        wait = self.wait if wait is None else wait
        with trio.move_on_after(wait):
            while not self.deliveries:
                await self._pull(what)
            return self.deliveries.popleft()
        raise Unexpected(f"{what}: nothing delivered within {wait:g} s")


class TargetNode:
    """The node under test, used by probe agents registered at the target's registry."""

    def __init__(
        self, probe: Probe, registry: TargetRegistry, http: Component, ws: Component
    ) -> None:
        self.probe = probe
        self.registry = registry
        self.http = http
        self.ws = ws
        self.network = registry.network
        self.broadcast_id = broadcast_did(registry.network)

    @classmethod
    async def open(cls, probe: Probe) -> TargetNode:
        registry = await TargetRegistry.open(probe)
        http = probe.role("node")
        return cls(probe, registry, http, probe.listener("node-ws") or http)

    @property
    def ws_url(self) -> str:
        return endpoint_url(self.ws.url, WS_PATH)

    @property
    def wait(self) -> float:
        return self.probe.request_timeout

    def endpoints(self) -> list[dict[str, Any]]:
        """Where a probe agent is reached: its WebSocket sessions with the node under test."""
        return [{"transport": "ocp-ws", "url": ws_scheme(self.ws_url), "priority": 1}]

    async def agent(self) -> ProbeAgent:
        """A fresh agent, registered (Level 1) with the node under test as its endpoint."""
        agent = self.registry.agent()
        await self.registry.registered(agent, endpoints=self.endpoints())
        return agent

    def unregistered(self) -> ProbeAgent:
        """An agent on the registry's network that nobody registered."""
        return self.registry.agent()

    def message(
        self,
        sender: ProbeAgent,
        receiver: str,
        *,
        now: float | None = None,
        ttl: int = HOUR,
        message_type: str = "capability_query",
        payload: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        message_id: str | None = None,
        key: SigningKey | None = None,
    ) -> dict[str, Any]:
        """A message from ``sender``, signed by its key (or by ``key``)."""
        unsigned = build_message(
            sender=sender.agent_id,
            receiver=receiver,
            message_type=message_type,
            payload=_probe_payload() if payload is None else payload,
            now=time.time() if now is None else now,
            ttl=ttl,
            broadcast=receiver == self.broadcast_id,
            metadata=metadata,
            message_id=message_id,
        )
        return sign_message(unsigned, key or sender.key)

    def broadcast(self, sender: ProbeAgent, **fields: Any) -> dict[str, Any]:
        """A discovery_ping (OCP App. C.1) to the broadcast DID, tagged for nobody here."""
        fields.setdefault("payload", {"domains": [BROADCAST_TAG]})
        return self.message(
            sender,
            self.broadcast_id,
            message_type=fields.pop("message_type", "discovery_ping"),
            metadata={"tags": [BROADCAST_TAG]},
            ttl=fields.pop("ttl", 60),
            **fields,
        )

    def authorization(
        self,
        agent: ProbeAgent,
        body: bytes,
        *,
        now: float | None = None,
        key: SigningKey | None = None,
    ) -> str:
        """The D3 header for ``POST /ocp/v1/messages`` with ``body``, naming ``agent``."""
        return build_authorization(
            key or agent.key,
            agent_id=agent.agent_id,
            method="POST",
            path_and_query=path_and_query(endpoint_url(self.http.url, MESSAGES_PATH)),
            body=body,
            now=time.time() if now is None else now,
        )

    async def post(
        self,
        body: bytes,
        *,
        signer: ProbeAgent | None,
        headers: Mapping[str, str | None] | None = None,
    ) -> Answer:
        """``POST /ocp/v1/messages``: JSON, ``X-OCF-Version: 1.0`` and, with ``signer``, D3.

        A header set to ``None`` in ``headers`` is left out.
        """
        sent: dict[str, str | None] = {
            "Content-Type": "application/json",
            "X-OCF-Version": "1.0",
        }
        if signer is not None:
            sent["Authorization"] = self.authorization(signer, body)
        sent.update(headers or {})
        final = {k: v for k, v in sent.items() if v is not None}
        response = await self.probe.request(self.http, "POST", MESSAGES_PATH, body, final)
        return Answer.of(response)

    async def send(self, message: Mapping[str, Any], *, signer: ProbeAgent) -> Answer:
        """POST ``message`` as compact JSON, with ``signer``'s Authorization."""
        return await self.post(compact(message), signer=signer)

    async def accepted(self, message: Mapping[str, Any], signer: ProbeAgent, what: str) -> Answer:
        """POST a message that must be accepted; anything else ends the check."""
        answer = await self.send(message, signer=signer)
        if answer.status not in ACCEPTED:
            raise Unexpected(f"{what}: {describe(answer)}, expected 202")
        return answer

    def handshake(
        self, agent: ProbeAgent, *, now: float | None = None, key: SigningKey | None = None
    ) -> dict[str, str]:
        return build_ws_auth_handshake(
            key or agent.key, agent_id=agent.agent_id, now=time.time() if now is None else now
        )

    async def first_frame(self, connection: WsConnection, what: str) -> dict[str, Any]:
        """The node's next frame as a JSON object; :class:`Unexpected` if none comes."""
        try:
            text = await receive_within(connection, self.wait)
        except WsClosed as exc:
            raise Unexpected(f"{what}: closed before any answer ({exc})") from None
        if text is None:
            raise Unexpected(f"{what}: no answer within {self.wait:g} s")
        frame = _json_or_text(text)
        if not isinstance(frame, dict):
            raise Unexpected(f"{what}: the answer is not a JSON object: {text[:120]!r}")
        return frame

    @asynccontextmanager
    async def websocket(self, subprotocols: list[str] | None = None) -> AsyncIterator[WsConnection]:
        """A raw connection to ``/ocp/v1/ws`` offering ``ocp.v1`` (or ``subprotocols``)."""
        offered = [SUBPROTOCOL] if subprotocols is None else subprotocols
        try:
            async with ws_connect(
                self.ws_url, context=self.probe.context, subprotocols=offered
            ) as connection:
                yield connection
        except WsRefused as exc:
            raise Unexpected(f"WebSocket upgrade with {offered}: {exc}") from None
        except WsFailed as exc:
            raise Unexpected(f"WebSocket {self.ws_url}: {exc}") from None

    @asynccontextmanager
    async def session(self, agent: ProbeAgent) -> AsyncIterator[AgentSession]:
        """An authenticated session of ``agent``; a refusal ends the check."""
        async with self.websocket() as connection:
            await connection_send(connection, json.dumps(self.handshake(agent)))
            result = await self.first_frame(connection, "auth_handshake of a registered agent")
            if result.get("frame_type") != "auth_result" or result.get("status") != "accepted":
                raise Unexpected(f"auth_handshake of a registered agent: {_short(result)}")
            yield AgentSession(connection, agent, str(result.get("session_id")), self.wait)


async def connection_send(connection: WsConnection, text: str) -> None:
    try:
        await connection.send(text)
    except WsClosed as exc:
        raise Unexpected(f"the node closed the connection before the handshake: {exc}") from None


async def expect_delivery(
    problems: list[str], session: AgentSession, expected: str, what: str
) -> None:
    """The next message ``session`` receives must be exactly ``expected`` (its bytes)."""
    got = await session.delivery(what)
    if got != expected:
        value = _json_or_text(got)
        found = value.get("message_id") if isinstance(value, dict) else None
        wanted = json.loads(expected)["message_id"]
        if found == wanted:
            problems.append(f"{what}: {wanted} arrived altered, not as its sender sent it")
        else:
            problems.append(f"{what}: got {found or _short(got)!r} instead of {wanted}")


def _error_detail_problems(message: Mapping[str, Any], reference: str) -> list[str]:
    """OCP §7.4 beyond the code: an OCPUMF envelope, naming the refused message if at all."""
    problems = []
    if message.get("ocp_version") != "1.0":
        problems.append(f"ocp_version {message.get('ocp_version')!r}, not 1.0")
    message_id = message.get("message_id")
    if not isinstance(message_id, str) or not MESSAGE_ID.fullmatch(message_id):
        problems.append(f"message_id {message_id!r} is not msg-<uuid>")
    if not isinstance(message.get("timestamp"), str):
        problems.append("no timestamp")
    payload = message.get("payload")
    payload = payload if isinstance(payload, dict) else {}
    if not isinstance(payload.get("message"), str) or not payload.get("message"):
        problems.append("payload.message is not a description")
    if payload.get("reference_message_id") not in (None, reference):
        problems.append(
            f"payload.reference_message_id is {payload.get('reference_message_id')!r},"
            f" not the refused {reference}"
        )
    return problems


class Signers:
    """The keys of error signers, resolved at the target's registry once each."""

    def __init__(self, registry: TargetRegistry) -> None:
        self.registry = registry
        self.keys: dict[str, list[bytes]] = {}

    async def resolve(self, signer: str) -> list[str]:
        """Fetch ``signer``'s keys into :attr:`keys`; why that failed, if it did."""
        if signer in self.keys:
            return []
        answer = await self.registry.call("GET", f"/agents/{signer}/did.json")
        if answer.status != 200:
            return [
                f"its signer {signer} does not resolve at the registry"
                f" ({answer.describe()}): the signature cannot be checked"
            ]
        try:
            document = parse_did_document(answer.body)
        except OcpError as exc:
            return [f"the DID document of its signer {signer} is invalid: {exc.message}"]
        if not agent_id_matches_key(signer, document.initial_key):
            return [f"the DID document served for {signer} is another agent's"]
        self.keys[signer] = document.verification_keys()
        return []

    async def problems(self, message: Mapping[str, Any]) -> list[str]:
        """Why ``message``'s signature cannot be verified against its sender's keys."""
        sender = message.get("sender")
        signer = sender.get("agent_id") if isinstance(sender, dict) else None
        if not isinstance(signer, str):
            return ["sender.agent_id is not an agent id"]
        unresolved = await self.resolve(signer)
        if unresolved:
            return unresolved
        try:
            verify_message_signature(message, self.keys[signer])
        except OcpError:
            return [f"sender.signature does not verify against {signer}'s keys"]
        return []


# --- WebSocket (OCP §3.1.1, D2, D6) ---------------------------------------------------------


async def _subprotocol_refusal(node: TargetNode, offered: list[str]) -> tuple[str | None, str]:
    """(problem, how it was refused) for an upgrade that does not offer ``ocp.v1``."""
    what = f"an upgrade offering {offered}" if offered else "an upgrade without subprotocol"
    try:
        async with ws_connect(
            node.ws_url, context=node.probe.context, subprotocols=offered
        ) as connection:
            return f"{what} was accepted (subprotocol {connection.subprotocol!r})", ""
    except WsRefused as exc:
        if not 400 <= exc.status < 500:
            return f"{what}: HTTP {exc.status}, not a refusal (4xx)", ""
        return None, f"HTTP {exc.status}"
    except WsFailed as exc:
        return f"{what}: {exc}", ""


def _accepted_problems(result: Mapping[str, Any]) -> list[str]:
    if result.get("frame_type") != "auth_result" or result.get("status") != "accepted":
        return [f"a valid auth_handshake got {_short(result)}"]
    problems = []
    session_id = result.get("session_id")
    if not isinstance(session_id, str) or not SESSION_ID.fullmatch(session_id):
        problems.append(f"session_id {session_id!r} is not sess-<uuid>")
    ttl = result.get("ttl")
    if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl <= 0:
        problems.append(f"ttl {ttl!r} is not a positive number of seconds")
    return problems


@checked
async def check_ws_session(probe: Probe) -> Outcome:
    """OCP-CORE-WS-001: ocp.v1 is required; a valid auth_handshake opens a session."""
    node = await TargetNode.open(probe)
    problems: list[str] = []
    refusals = []
    for offered in ([], ["ocp.v0"]):
        problem, how = await _subprotocol_refusal(node, offered)
        if problem is not None:
            problems.append(problem)
        refusals.append(how)
    agent = await node.agent()
    async with node.websocket() as connection:
        if connection.subprotocol != SUBPROTOCOL:
            problems.append(f"the upgrade offering ocp.v1 selected {connection.subprotocol!r}")
        await connection_send(connection, json.dumps(node.handshake(agent)))
        result = await node.first_frame(connection, "a valid auth_handshake")
    problems += _accepted_problems(result)
    return Outcome.of(
        problems,
        f"upgrades without ocp.v1 refused ({', '.join(refusals)}); a valid auth_handshake got"
        f" {result.get('session_id')}, ttl {result.get('ttl')}",
    )


@checked
async def check_ws_auth_timeout(probe: Probe) -> Outcome:
    """OCP-CORE-WS-002: no auth_handshake within 5 s: auth_result rejected, then close 1008."""
    node = await TargetNode.open(probe)
    frames: list[str] = []
    closed: WsClosed | None = None
    started = trio.current_time()
    async with node.websocket() as connection:
        with trio.move_on_after(AUTH_TIMEOUT + AUTH_TIMEOUT_GRACE):
            try:
                while True:
                    frames.append(await connection.receive())
            except WsClosed as exc:
                closed = exc
    elapsed = trio.current_time() - started
    if closed is None:
        return Outcome("fail", f"still open {elapsed:.1f} s after connecting without a handshake")
    problems = []
    if elapsed < AUTH_TIMEOUT - AUTH_TIMEOUT_EARLY:
        problems.append(f"closed after {elapsed:.1f} s: a client has {AUTH_TIMEOUT:g} s")
    if closed.code != CLOSE_POLICY:
        problems.append(f"closed with {closed.code}, expected {CLOSE_POLICY}")
    results = [_json_or_text(f) for f in frames]
    first = results[0] if results else None
    if not isinstance(first, dict) or (
        first.get("frame_type") != "auth_result" or first.get("status") != "rejected"
    ):
        problems.append(f"no auth_result rejected before the close (got {_short(results)})")
    elif not isinstance(first.get("error_code"), str):
        problems.append("the auth_result rejected carries no error_code")
    code = first.get("error_code") if isinstance(first, dict) else None
    return Outcome.of(
        problems, f"auth_result rejected ({code}), close {closed.code} after {elapsed:.1f} s"
    )


async def _rejection_problems(node: TargetNode, frame: Mapping[str, Any], what: str) -> list[str]:
    """A handshake that must get auth_result rejected (OCP-401), then close 1008."""
    async with node.websocket() as connection:
        await connection_send(connection, json.dumps(frame))
        result = await node.first_frame(connection, what)
        if result.get("frame_type") != "auth_result" or result.get("status") != "rejected":
            return [f"{what}: got {_short(result)}, expected auth_result rejected"]
        problems = []
        if result.get("error_code") != "OCP-401":
            problems.append(f"{what}: error_code {result.get('error_code')!r}, expected OCP-401")
        try:
            text = await receive_within(connection, node.wait)
        except WsClosed as exc:
            if exc.code != CLOSE_POLICY:
                problems.append(f"{what}: closed with {exc.code}, expected {CLOSE_POLICY}")
        else:
            if text is None:
                problems.append(f"{what}: still open {node.wait:g} s after the rejection")
            else:
                problems.append(f"{what}: sent {text[:80]!r} after the rejection")
    return problems


@checked
async def check_ws_auth_rejections(probe: Probe) -> Outcome:
    """OCP-CORE-WS-003: bad, stale, early, unknown and replayed handshakes are refused."""
    node = await TargetNode.open(probe)
    agent = await node.agent()
    now = time.time()
    cases = [
        ("a handshake signed by another key", node.handshake(agent, key=SigningKey.generate())),
        ("a handshake 5 minutes old", node.handshake(agent, now=now - OFF_CLOCK)),
        ("a handshake 5 minutes ahead", node.handshake(agent, now=now + OFF_CLOCK)),
        ("the handshake of an unregistered agent", node.handshake(node.unregistered())),
    ]
    problems: list[str] = []
    for what, frame in cases:
        problems += await _rejection_problems(node, frame, what)
    original = node.handshake(agent)
    async with node.websocket() as connection:
        await connection_send(connection, json.dumps(original))
        result = await node.first_frame(connection, "a valid auth_handshake")
    if result.get("status") != "accepted":
        raise Unexpected(f"a valid auth_handshake: {_short(result)}")
    problems += await _rejection_problems(node, original, "the same handshake again (replay)")
    return Outcome.of(
        problems,
        "foreign-key, ±5 min, unregistered and replayed handshakes: auth_result rejected"
        " OCP-401, close 1008",
    )


#: One message of the receipts check: what it is, its id, the receipt status, the OCP code.
Expected = tuple[str, str, str, int | None]


def receipts_problems(
    expected: list[Expected], receipts: list[dict[str, Any]]
) -> tuple[list[str], list[str]]:
    """``(problems, notes)`` of pairing ``receipts`` with the messages sent (D6).

    A receipt is paired by the ``message_id`` it names, in any order. A
    rejection that names no message (``message_id`` null) is paired with the
    next rejected message still unanswered: D6 gives every receipt a
    ``message_id`` field but does not say a refused message must be named;
    that is reported as a note, not a failure.
    """
    named: dict[object, list[dict[str, Any]]] = {}
    anonymous: list[dict[str, Any]] = []
    for receipt in receipts:
        if receipt.get("message_id") is None and receipt.get("status") == "rejected":
            anonymous.append(receipt)
        else:
            named.setdefault(receipt.get("message_id"), []).append(receipt)
    problems: list[str] = []
    notes: list[str] = []
    for what, message_id, status, code in expected:
        if named.get(message_id):
            receipt = named[message_id].pop(0)
            wrong = receipt_problems(receipt, message_id, status)
        elif status == "rejected" and anonymous:
            receipt = anonymous.pop(0)
            wrong = receipt_problems(receipt, None, status)
            notes.append(f"the rejection of {what} names no message_id")
        else:
            problems.append(f"{what}: no receipt names {message_id}")
            continue
        if code is not None and not wrong:
            wrong = _error_message_problems(receipt.get("error"), f"OCP-{code}")
        problems += [f"{what}: {p}" for p in wrong]
    extra = [r for found in named.values() for r in found] + anonymous
    problems += [f"a receipt for nothing sent: {_short(r)}" for r in extra]
    return problems, notes


@checked
async def check_ws_receipts(probe: Probe) -> Outcome:
    """OCP-CORE-WS-004: a receipt for every message of a session; the receiver gets the bytes."""
    node = await TargetNode.open(probe)
    sender, receiver, other = await node.agent(), await node.agent(), await node.agent()
    to = receiver.agent_id
    good = node.message(sender, to)
    expired = node.message(sender, to, now=time.time() - 2 * HOUR)
    cases = [
        ("a valid message", good, "accepted", None),
        ("a bit-flipped signature", flip_signature(node.message(sender, to)), "rejected", 401),
        ("an expired message", expired, "rejected", 400),
        ("another agent's message", node.message(other, to), "rejected", 401),
        ("the valid message again", good, "accepted", None),
    ]
    async with node.session(receiver) as inbox, node.session(sender) as session:
        for _, message, _, _ in cases:
            await session.send(message)
        receipts = [await session.receipt(f"message {i} of {len(cases)}") for i in range(1, 6)]
        problems, notes = receipts_problems(
            [(what, m["message_id"], status, code) for what, m, status, code in cases], receipts
        )
        await expect_delivery(problems, inbox, compact(good).decode("utf-8"), "the receiver")
    return Outcome.of(
        problems,
        "5 messages, 5 receipts: accepted twice, rejected with OCP-401, OCP-400, OCP-401 error"
        " messages; the receiver's session got the exact bytes"
        + "".join(f"; note: {n}" for n in notes),
    )


# --- HTTPS (OCP §3.1.2, D3, D6) ---------------------------------------------------------------


@checked
async def check_http_accepted(probe: Probe) -> Outcome:
    """OCP-CORE-HTTP-001: a valid message with a D3 Authorization is answered 202."""
    node = await TargetNode.open(probe)
    sender, receiver = await node.agent(), await node.agent()
    message = node.message(sender, receiver.agent_id)
    answer = await node.send(message, signer=sender)
    problems = []
    if answer.status not in ACCEPTED:
        problems.append(f"a valid message: {describe(answer)}, expected 202")
    else:
        named = answer.body.get("message_id") if isinstance(answer.body, dict) else None
        if named not in (None, message["message_id"]):
            problems.append(f"the 202 names {named!r}, not {message['message_id']}")
    return Outcome.of(problems, f"a valid message got HTTP {answer.status}")


@checked
async def check_http_auth_refusals(probe: Probe) -> Outcome:
    """OCP-CORE-HTTP-002: missing, invalid, skewed or replayed Authorization: OCP-401."""
    node = await TargetNode.open(probe)
    sender, receiver = await node.agent(), await node.agent()

    def fresh() -> bytes:
        return compact(node.message(sender, receiver.agent_id))

    now = time.time()
    bodies = [fresh() for _ in range(7)]
    cases = [
        ("no Authorization", bodies[0], None),
        ("a Bearer token", bodies[1], "Bearer " + secrets.token_urlsafe(32)),
        (
            "an Authorization signed by another key",
            bodies[2],
            node.authorization(sender, bodies[2], key=SigningKey.generate()),
        ),
        ("an Authorization over another body", bodies[3], node.authorization(sender, fresh())),
        (
            "an Authorization 5 minutes old",
            bodies[4],
            node.authorization(sender, bodies[4], now=now - OFF_CLOCK),
        ),
        (
            "an Authorization 5 minutes ahead",
            bodies[5],
            node.authorization(sender, bodies[5], now=now + OFF_CLOCK),
        ),
    ]
    problems: list[str] = []
    for what, body, header in cases:
        answer = await node.post(body, signer=None, headers={"Authorization": header})
        expect_error(problems, what, answer, 401)
    header = node.authorization(sender, bodies[6])
    first = await node.post(bodies[6], signer=None, headers={"Authorization": header})
    if first.status not in ACCEPTED:
        problems.append(f"the valid request: {describe(first)}, expected 202")
    replay = await node.post(bodies[6], signer=None, headers={"Authorization": header})
    expect_error(problems, "the same request with the same Authorization", replay, 401)
    return Outcome.of(
        problems,
        "missing, Bearer, foreign-key, other-body, ±5 min and replayed Authorization:"
        " HTTP 401 with OCP-401 error messages",
    )


@checked
async def check_http_sender_binding(probe: Probe) -> Outcome:
    """OCP-CORE-HTTP-003: the Authorization agent must be sender.agent_id."""
    node = await TargetNode.open(probe)
    sender, receiver, other = await node.agent(), await node.agent(), await node.agent()
    body = compact(node.message(sender, receiver.agent_id))
    problems: list[str] = []
    answer = await node.post(body, signer=other)
    expect_error(problems, "a message with another registered agent's Authorization", answer, 401)
    own = await node.post(body, signer=sender)
    if own.status not in ACCEPTED:
        problems.append(f"the same message with its sender's Authorization: {describe(own)}")
    return Outcome.of(
        problems, "another agent's valid Authorization: OCP-401; the sender's own: accepted"
    )


@checked
async def check_http_version(probe: Probe) -> Outcome:
    """OCP-CORE-HTTP-004: X-OCF-Version 1.0 (or X-OCP-Version, or none) accepted, 2.0 refused."""
    node = await TargetNode.open(probe)
    sender, receiver = await node.agent(), await node.agent()
    problems: list[str] = []
    to = receiver.agent_id
    answer = await node.post(
        compact(node.message(sender, to)), signer=sender, headers={"X-OCF-Version": "2.0"}
    )
    expect_error(problems, "X-OCF-Version: 2.0", answer, 400)
    for what, headers in (
        ("X-OCP-Version: 1.0", {"X-OCF-Version": None, "X-OCP-Version": "1.0"}),
        ("no version header", {"X-OCF-Version": None}),
    ):
        answer = await node.post(compact(node.message(sender, to)), signer=sender, headers=headers)
        if answer.status not in ACCEPTED:
            problems.append(f"{what}: {describe(answer)}, expected 202")
    return Outcome.of(
        problems, "X-OCF-Version 2.0: OCP-400; X-OCP-Version 1.0 and no header: accepted"
    )


# --- delivery (OCP §3.4, D6) ------------------------------------------------------------------


@checked
async def check_dedup(probe: Probe) -> Outcome:
    """OCP-CORE-DELIV-001: a repeat is acknowledged, not delivered again; other content: OCP-400."""
    node = await TargetNode.open(probe)
    sender, receiver = await node.agent(), await node.agent()
    message = node.message(sender, receiver.agent_id)
    text = compact(message).decode("utf-8")
    problems: list[str] = []
    async with node.session(receiver) as inbox:
        await node.accepted(message, sender, "the message")
        await expect_delivery(problems, inbox, text, "the receiver")
        again = await node.send(message, signer=sender)
        if again.status not in ACCEPTED:
            problems.append(f"the same message again: {describe(again)}, expected 202")
        other = node.message(sender, receiver.agent_id, message_id=message["message_id"])
        answer = await node.send(other, signer=sender)
        expect_error(problems, "the same message_id with other content", answer, 400)
        marker = node.message(sender, receiver.agent_id)
        await node.accepted(marker, sender, "a later message")
        got = await inbox.delivery("after the repeat, the receiver")
        if got == text:
            problems.append("the repeated message was delivered a second time")
        elif got == compact(other).decode("utf-8"):
            problems.append("the other content under the same message_id was delivered")
        elif got != compact(marker).decode("utf-8"):
            problems.append(f"after the repeat the receiver got {_short(got)}")
    return Outcome.of(
        problems,
        f"repeat acknowledged (HTTP {again.status}) and not delivered again;"
        f" same id, other content: {describe(answer)}",
    )


@checked
async def check_offline_fifo(probe: Probe) -> Outcome:
    """OCP-CORE-DELIV-003: stored for an offline receiver, then delivered per sender in order."""
    node = await TargetNode.open(probe)
    sender, receiver = await node.agent(), await node.agent()
    stored = [node.message(sender, receiver.agent_id) for _ in range(3)]
    for index, message in enumerate(stored, 1):
        await node.accepted(message, sender, f"message {index} for an offline receiver")
    problems: list[str] = []
    async with node.session(receiver) as inbox:
        for index, message in enumerate(stored, 1):
            text = compact(message).decode("utf-8")
            await expect_delivery(problems, inbox, text, f"stored message {index}")
        live = [node.message(sender, receiver.agent_id) for _ in range(3)]
        async with node.session(sender) as outbox:
            for message in live:
                await outbox.send(message)
            for index, message in enumerate(live, 1):
                receipt = await outbox.receipt(f"live message {index}")
                wrong = receipt_problems(receipt, message["message_id"], "accepted")
                problems += [f"live message {index}: {p}" for p in wrong]
            for index, message in enumerate(live, 1):
                text = compact(message).decode("utf-8")
                await expect_delivery(problems, inbox, text, f"live message {index}")
    return Outcome.of(
        problems,
        "3 messages stored while the receiver was offline, then 3 sent in one session:"
        " all delivered in order, byte for byte",
    )


# --- registry-mediated routing (OCP §3.3.2, D6) ------------------------------------------------

#: How long the sender waits, from its receipt, for the error about its undeliverable message.
#: A node that takes an endpoint's 4xx as final answers at once; one that retried refused
#: endpoints on the D6 schedule (1, 2, 4, 8, 16 s) would need over 31 s and fails here.
ROUTE_WAIT: Final = 10.0
#: 4xx answers a node may take as "try again later" rather than as a refusal.
TRANSIENT_4XX: Final = frozenset({408, 425, 429})
_MAX_RECORDED: Final = 1_048_576


def is_loopback(host: str | None) -> bool:
    """``host`` (a URL's hostname) is ``localhost`` or a loopback address."""
    if host is None:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Forwarded:
    """One request that reached the suite's refusing endpoints."""

    method: str
    #: The request target as sent (path and query).
    target: str
    #: Header names in lower case.
    headers: dict[str, str]
    body: bytes
    #: Wall-clock time of arrival.
    at: float


class RefusingEndpoints:
    """Plain HTTP on 127.0.0.1 that records every request and answers it 404 (OCP-404).

    A node delivers over plain HTTP only to a loopback address (OCP never sends
    messages unencrypted elsewhere), so these endpoints are only of use when the
    node under test runs on the suite's host.
    """

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.prefix = f"/conformance-route-{secrets.token_hex(6)}"
        self.requests: list[Forwarded] = []

    def url(self, name: str) -> str:
        return f"{self.base}{self.prefix}/{name}"

    async def serve(self, stream: trio.SocketStream) -> None:
        connection = h11.Connection(h11.SERVER, max_incomplete_event_size=65_536)
        try:
            while True:
                request: h11.Request | None = None
                body = bytearray()
                while True:
                    event = connection.next_event()
                    if event is h11.NEED_DATA:
                        connection.receive_data(await stream.receive_some(65_536))
                    elif isinstance(event, h11.Request):
                        request = event
                    elif isinstance(event, h11.Data):
                        if len(body) + len(event.data) > _MAX_RECORDED:
                            return
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    elif isinstance(event, h11.ConnectionClosed):
                        return
                if request is None:
                    return
                self.requests.append(
                    Forwarded(
                        method=request.method.decode("ascii", "replace"),
                        target=request.target.decode("ascii", "replace"),
                        headers={
                            k.decode("latin-1").lower(): v.decode("latin-1")
                            for k, v in request.headers
                        },
                        body=bytes(body),
                        at=time.time(),
                    )
                )
                answer = compact(
                    {"error_code": "OCP-404", "message": "no agent here (conformance probe)"}
                )
                head = h11.Response(
                    status_code=404,
                    headers=[
                        ("Content-Type", "application/json"),
                        ("Content-Length", str(len(answer))),
                    ],
                )
                for part in (head, h11.Data(data=answer), h11.EndOfMessage()):
                    await stream.send_all(connection.send(part) or b"")
                if connection.our_state is not h11.DONE or connection.their_state is not h11.DONE:
                    return
                connection.start_next_cycle()
        except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            await stream.aclose()


@asynccontextmanager
async def refusing_endpoints() -> AsyncIterator[RefusingEndpoints]:
    """:class:`RefusingEndpoints` on a free port of 127.0.0.1, for the ``async with`` body."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    endpoints = RefusingEndpoints(listeners[0].socket.getsockname()[1])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, endpoints.serve, listeners)
        try:
            yield endpoints
        finally:
            nursery.cancel_scope.cancel()


def _use_listener(probe: Probe, node: TargetNode) -> bool:
    if probe.route_listener != "auto":
        return probe.route_listener == "on"
    return is_loopback(urlsplit(node.http.url).hostname)


async def _registry_refusals(node: TargetNode) -> tuple[str, str]:
    """Two URLs on the target's registry that refuse a POST for good (tried by the suite first).

    Paths under the registry's API rather than its ``/ocp/v1/messages``: a
    deployment that serves node and registry on one base URL would take that
    for the node's own endpoint.
    """
    component = node.registry.component
    host = urlsplit(component.url).hostname
    if not component.url.startswith("https://") and not is_loopback(host):
        raise Unexpected(
            f"the registry ({component.url}) is plain HTTP on a host that is not loopback:"
            " a node must not deliver messages there, so it cannot stand in for a refusing"
            " endpoint (run with --route-listener on if the node runs on this host)"
        )
    token = secrets.token_hex(6)
    urls = []
    for name in ("first", "second"):
        path = f"{REGISTRY_API}/conformance-route-{token}/{name}"
        response = await node.probe.request(
            component, "POST", path, b"{}", {"Content-Type": "application/json"}
        )
        if not 400 <= response.status < 500 or response.status in TRANSIENT_4XX:
            raise Unexpected(
                f"POST {path} on the registry: HTTP {response.status}, not a refusal; it cannot"
                " stand in for a refusing endpoint (run with --route-listener on if the node"
                " runs on this host)"
            )
        urls.append(endpoint_url(component.url, path))
    return urls[0], urls[1]


def _refers_to(message: Mapping[str, Any], message_id: str) -> bool:
    payload = message.get("payload")
    metadata = message.get("metadata")
    return message_id in (
        payload.get("reference_message_id") if isinstance(payload, dict) else None,
        metadata.get("correlation_id") if isinstance(metadata, dict) else None,
    )


async def _routing_notice(
    session: AgentSession, message_id: str
) -> tuple[dict[str, Any] | None, list[str]]:
    """The first ``error`` message about ``message_id`` within ROUTE_WAIT, and what came before."""
    others: list[str] = []
    with trio.move_on_after(ROUTE_WAIT):
        while True:
            text = await session.delivery("waiting for the error", wait=math.inf)
            value = _json_or_text(text)
            if (
                isinstance(value, dict)
                and value.get("message_type") == "error"
                and _refers_to(value, message_id)
            ):
                return value, others
            others.append(_short(value, 100))
    return None, others


def _notice_problems(notice: Mapping[str, Any], message_id: str, sender: str) -> list[str]:
    problems = _error_message_problems(notice, "OCP-502")
    problems += _error_detail_problems(notice, message_id)
    payload = notice.get("payload")
    if isinstance(payload, dict) and payload.get("reference_message_id") is None:
        problems.append(f"payload.reference_message_id does not name {message_id} (OCP §7.4)")
    receiver = notice.get("receiver")
    to = receiver.get("agent_id") if isinstance(receiver, dict) else None
    if to != sender:
        problems.append(f"receiver.agent_id is {to!r}, not the sender {sender}")
    return problems


async def _forwarded_problems(
    request: Forwarded, what: str, message: Mapping[str, Any], signers: Signers
) -> tuple[list[str], str | None]:
    """(problems, the relaying agent) of one POST that reached a refusing endpoint."""
    problems = []
    if request.method != "POST":
        problems.append(f"{what}: {request.method}, not POST")
    try:
        forwarded = json.loads(request.body)
    except ValueError:
        forwarded = None
    if forwarded != message:
        problems.append(f"{what}: the body is not the message ({_short(request.body[:80])})")
    header = request.headers.get("authorization")
    try:
        agent = parse_authorization(header).agent_id
    except OcpError:
        return [*problems, f"{what}: no D3 Authorization ({_short(header)})"], None
    unresolved = await signers.resolve(agent)
    if unresolved:
        return [*problems, *(f"{what}: the Authorization's {p}" for p in unresolved)], agent
    try:
        verify_authorization(
            header,
            method="POST",
            path_and_query=request.target,
            body=request.body,
            public_keys=signers.keys[agent],
            now=request.at,
            replay=ReplayWindow(window=2 * HOUR),
        )
    except OcpError as exc:
        problems.append(f"{what}: the Authorization of {agent} does not verify ({exc.message})")
    return problems, agent


async def _tried_problems(
    endpoints: RefusingEndpoints, message: Mapping[str, Any], signers: Signers
) -> tuple[list[str], str]:
    """Were both endpoints tried, priority 1 first, with the message? (problems, summary)."""
    names = {urlsplit(endpoints.url(n)).path: n for n in ("first", "second")}
    tried = [
        (request, names[path])
        for request in endpoints.requests
        if (path := urlsplit(request.target).path) in names
    ]
    order = [1 if name == "first" else 2 for _, name in tried]
    summary = ", ".join(f"priority {p}" for p in order) or "nothing"
    problems = []
    if not order:
        problems.append(
            f"neither endpoint ({endpoints.base}) was tried (a node that does not run on the"
            " suite's host cannot reach them: --route-listener off)"
        )
    elif order[0] != 1:
        problems.append("the priority 2 endpoint was tried before the priority 1 endpoint")
    if order and 2 not in order:
        problems.append("the priority 2 endpoint was never tried")
    if 1 in order[1:] and 2 not in order[: order.index(1, 1)]:
        problems.append("the priority 1 endpoint was tried again before the priority 2 one")
    relays = set()
    for request, name in tried[:2]:
        what = f"the POST to the priority {1 if name == 'first' else 2} endpoint"
        found, agent = await _forwarded_problems(request, what, message, signers)
        problems += found
        if agent is not None:
            relays.add(agent)
    by = f" by {', '.join(sorted(relays))}" if relays else ""
    return problems, f"the endpoints got {summary}{by}"


@checked
async def check_registry_routing(probe: Probe) -> Outcome:
    """OCP-CORE-ROUTE-001: endpoints tried by priority; OCP-502 to the sender when all refuse."""
    node = await TargetNode.open(probe)
    sender = await node.agent()
    if not _use_listener(probe, node):
        first, second = await _registry_refusals(node)
        return await _routing_outcome(node, sender, first, second, None)
    async with refusing_endpoints() as endpoints:
        first, second = endpoints.url("first"), endpoints.url("second")
        return await _routing_outcome(node, sender, first, second, endpoints)


async def _routing_outcome(
    node: TargetNode,
    sender: ProbeAgent,
    first: str,
    second: str,
    endpoints: RefusingEndpoints | None,
) -> Outcome:
    receiver = node.registry.agent()
    # Listed against their priority: the node must order them by priority, not position.
    await node.registry.registered(
        receiver,
        endpoints=[
            {"transport": "ocp-http", "url": second, "priority": 2},
            {"transport": "ocp-http", "url": first, "priority": 1},
        ],
    )
    message = node.message(sender, receiver.agent_id)
    message_id: str = message["message_id"]
    signers = Signers(node.registry)
    problems: list[str] = []
    async with node.session(sender) as outbox:
        await outbox.send(message)
        receipt = await outbox.receipt("the message for a receiver whose endpoints refuse it")
        wrong = receipt_problems(receipt, message_id, "accepted")
        if wrong:
            return Outcome("fail", "the message: " + "; ".join(wrong))
        accepted_at = trio.current_time()
        notice, others = await _routing_notice(outbox, message_id)
        waited = trio.current_time() - accepted_at
    if notice is None:
        problems.append(
            f"no error message about {message_id} within {ROUTE_WAIT:g} s of its receipt"
            " (OCP-502 expected once every endpoint refused it)"
        )
        if endpoints is None:
            problems.append(
                "note: a node that cannot reach the registry's URLs (one that does not trust"
                " its certificate, say) retries for over 31 s first; --route-listener on"
                " avoids that when the node runs on this host"
            )
    else:
        problems += _notice_problems(notice, message_id, sender.agent_id)
        problems += await signers.problems(notice)
    if others:
        problems.append(f"the sender also got: {'; '.join(others)}")
    tried = "the registry's URLs as refusing endpoints (the order is not observed)"
    if endpoints is not None:
        found, tried = await _tried_problems(endpoints, message, signers)
        problems += found
    if problems:
        return Outcome("fail", "; ".join(problems) + f" ({tried})")
    assert notice is not None
    return Outcome(
        "pass",
        f"{message_id} accepted; {tried}; OCP-502 about it {waited:.1f} s later, signed by"
        f" {notice['sender']['agent_id']} (key from the registry)",
    )


# --- envelope (OCP §7, D1, D2, D6) ------------------------------------------------------------


def _without(message: Mapping[str, Any], field: str) -> dict[str, Any]:
    return {k: v for k, v in message.items() if k != field}


@checked
async def check_schema(probe: Probe) -> Outcome:
    """OCP-CORE-MSG-001: messages that violate the OCPUMF schema get OCP-400."""
    node = await TargetNode.open(probe)
    sender, receiver = await node.agent(), await node.agent()

    def base() -> dict[str, Any]:
        return node.message(sender, receiver.agent_id)

    variants: list[tuple[str, dict[str, Any]]] = [
        ("no message_type", _without(base(), "message_type")),
        ("message_type 'teleport'", base() | {"message_type": "teleport"}),
        ("message_id 'msg-1234'", base() | {"message_id": "msg-1234"}),
        ("ocp_version '2.0'", base() | {"ocp_version": "2.0"}),
        ("a timestamp with +00:00, not Z (D1)", base()),
        ("ttl 0", base() | {"ttl": 0}),
        ("ttl 86401", base() | {"ttl": 86_401}),
        ("a payload that is a list", base() | {"payload": []}),
        ("a receiver without agent_id", base() | {"receiver": {"broadcast": False}}),
    ]
    offset = variants[4][1]
    offset["timestamp"] = offset["timestamp"].replace("Z", "+00:00")
    problems: list[str] = []
    for what, message in variants:
        answer = await node.send(sign_message(message, sender.key), signer=sender)
        expect_error(problems, what, answer, 400)
    return Outcome.of(problems, f"{len(variants)} schema violations refused with OCP-400")


@checked
async def check_freshness(probe: Probe) -> Outcome:
    """OCP-CORE-MSG-002: expired (timestamp + ttl < now) or 60 s early messages: OCP-400."""
    node = await TargetNode.open(probe)
    sender, receiver = await node.agent(), await node.agent()
    to = receiver.agent_id
    now = time.time()
    problems: list[str] = []
    for what, message in (
        ("a message 2 h old with ttl 3600", node.message(sender, to, now=now - 2 * HOUR)),
        ("a message 10 min old with ttl 60", node.message(sender, to, now=now - 600, ttl=60)),
        ("a message 5 minutes ahead", node.message(sender, to, now=now + OFF_CLOCK)),
    ):
        expect_error(problems, what, await node.send(message, signer=sender), 400)
    live = await node.send(node.message(sender, to, now=now - HOUR / 2), signer=sender)
    if live.status not in ACCEPTED:
        problems.append(f"a message 30 min old with ttl 3600 (not expired): {describe(live)}")
    return Outcome.of(
        problems, "expired (two ways) and 5 min early refused with OCP-400; 30 min old accepted"
    )


@checked
async def check_envelope_signature(probe: Probe) -> Outcome:
    """OCP-CORE-MSG-003: sender.signature is verified: a wrong one gets OCP-401."""
    node = await TargetNode.open(probe)
    sender, receiver, other = await node.agent(), await node.agent(), await node.agent()
    to = receiver.agent_id
    altered = node.message(sender, to)
    altered["payload"] = _probe_payload()
    problems: list[str] = []
    for what, message in (
        ("a bit-flipped signature", flip_signature(node.message(sender, to))),
        ("a payload changed after signing", altered),
        ("a signature by another registered agent", node.message(sender, to, key=other.key)),
    ):
        expect_error(problems, what, await node.send(message, signer=sender), 401)
    control = await node.send(node.message(sender, to), signer=sender)
    if control.status not in ACCEPTED:
        problems.append(f"the correctly signed message: {describe(control)}, expected 202")
    return Outcome.of(
        problems,
        "bit-flipped, stale-payload and foreign-key signatures refused with OCP-401;"
        " the signed message accepted",
    )


@checked
async def check_error_messages(probe: Probe) -> Outcome:
    """OCP-CORE-MSG-005: errors are signed OCPUMF error messages, code = HTTP status."""
    node = await TargetNode.open(probe)
    sender, receiver = await node.agent(), await node.agent()
    to = receiver.agent_id
    signers = Signers(node.registry)
    problems: list[str] = []
    unnamed: list[str] = []
    seen = set()
    for what, message, status in (
        ("a bit-flipped signature", flip_signature(node.message(sender, to)), 401),
        ("an expired message", node.message(sender, to, now=time.time() - 2 * HOUR), 400),
        ("a receiver nobody registered", node.message(sender, node.unregistered().agent_id), 404),
    ):
        answer = await node.send(message, signer=sender)
        found = error_problems(answer, status)
        if not found:
            body: dict[str, Any] = answer.body
            found = _error_detail_problems(body, message["message_id"])
            found += await signers.problems(body)
            seen.add(body["sender"]["agent_id"])
            if body["payload"].get("reference_message_id") is None:
                unnamed.append(what)
        problems += [f"{what}: {p}" for p in found]
    note = f"; note: no reference_message_id for {', '.join(unnamed)}" if unnamed else ""
    return Outcome.of(
        problems,
        f"OCP-401, OCP-400 and OCP-404 as OCPUMF error messages signed by"
        f" {', '.join(sorted(seen))} (keys from the registry){note}",
    )


#: D1 violations, each the text of a payload member: I-JSON is checked before anything else.
IJSON_VIOLATIONS: Final = (
    ("a duplicate key", '"probe":1,"probe":2'),
    ("NaN", '"probe":NaN'),
    ("an integer beyond 2^53-1", '"probe":9007199254740993'),
    ("a lone surrogate", '"probe":"\\ud800"'),
    ("nesting 70 deep", '"probe":' + "[" * 68 + "]" * 68),
)


@checked
async def check_ijson(probe: Probe) -> Outcome:
    """OCP-CORE-MSG-006: I-JSON violations get OCP-400 (D1)."""
    node = await TargetNode.open(probe)
    sender = await node.agent()
    placeholder = '"probe":"placeholder"'
    problems: list[str] = []
    for what, member in IJSON_VIOLATIONS:
        message = node.broadcast(sender, message_type="broadcast", payload={"probe": "placeholder"})
        text = compact(message).decode("utf-8")
        assert placeholder in text
        body = text.replace(placeholder, member).encode("utf-8")
        expect_error(problems, what, await node.post(body, signer=sender), 400)
    return Outcome.of(problems, f"{len(IJSON_VIOLATIONS)} I-JSON violations refused with OCP-400")


@checked
async def check_size_limits(probe: Probe) -> Outcome:
    """OCP-CORE-SIZE-001: over 16 MiB refused before the body is read; payload over 10 MiB."""
    node = await TargetNode.open(probe)
    sender = await node.agent()
    problems: list[str] = []
    declared = MAX_MESSAGE_SIZE + 1
    headers = {
        "Content-Type": "application/json",
        "X-OCF-Version": "1.0",
        "Content-Length": str(declared),
        "Authorization": node.authorization(sender, b""),
    }
    url = endpoint_url(node.http.url, MESSAGES_PATH)
    response = None
    with trio.move_on_after(node.wait):
        response = await http_head_only(url, context=probe.context, method="POST", headers=headers)
    what = f"a request declaring {declared} bytes"
    if response is None:
        problems.append(f"{what}: no answer within {node.wait:g} s while its body was withheld")
    else:
        expect_error(problems, what, Answer.of(response), 413)
    size = MAX_PAYLOAD_SIZE + 1024
    big = node.broadcast(sender, message_type="broadcast", payload={"blob": "x" * size})
    answer = await node.send(big, signer=sender)
    expect_error(problems, f"a message with a payload of {size} bytes", answer, 413)
    return Outcome.of(
        problems,
        f"{declared} bytes declared: OCP-413 before the body; a {size}-byte payload: OCP-413",
    )


@checked
async def check_message_rate_limit(probe: Probe) -> Outcome:
    """OCP-CORE-RATE-001: the 6th broadcast in 60 s gets OCP-429 with Retry-After (OCP §9)."""
    node = await TargetNode.open(probe)
    sender = await node.agent()
    started = trio.current_time()
    # One token comes back every 12 s: allow two over the limit for a slow link.
    for sent in range(1, BROADCAST_LIMIT + 3):
        answer = await node.send(node.broadcast(sender), signer=sender)
        if answer.status == 429:
            break
        if answer.status not in ACCEPTED:
            return Outcome("fail", f"broadcast {sent}: {describe(answer)}")
    else:
        elapsed = trio.current_time() - started
        return Outcome(
            "fail",
            f"{sent} broadcasts by one agent in {elapsed:.1f} s, none limited"
            f" (OCP §9: {BROADCAST_LIMIT} per 60 s)",
        )
    problems: list[str] = []
    expect_error(problems, f"broadcast {sent}", answer, 429)
    if sent <= BROADCAST_LIMIT:
        problems.append(f"limited after {sent - 1}; OCP §9 allows {BROADCAST_LIMIT} per 60 s")
    retry = answer.headers.get("retry-after", "")
    if not retry.isdigit() or not 1 <= int(retry) <= 60:
        problems.append(f"Retry-After {retry!r} is not whole seconds from 1 to 60")
    return Outcome.of(problems, f"broadcast {sent} of one agent got OCP-429, Retry-After {retry}")


#: Requirement id -> the check against the node's transports that covers it.
CHECKS: Final[dict[str, Check]] = {
    "OCP-CORE-WS-001": check_ws_session,
    "OCP-CORE-WS-002": check_ws_auth_timeout,
    "OCP-CORE-WS-003": check_ws_auth_rejections,
    "OCP-CORE-WS-004": check_ws_receipts,
    "OCP-CORE-HTTP-001": check_http_accepted,
    "OCP-CORE-HTTP-002": check_http_auth_refusals,
    "OCP-CORE-HTTP-003": check_http_sender_binding,
    "OCP-CORE-HTTP-004": check_http_version,
    "OCP-CORE-DELIV-001": check_dedup,
    "OCP-CORE-DELIV-003": check_offline_fifo,
    "OCP-CORE-ROUTE-001": check_registry_routing,
    "OCP-CORE-MSG-001": check_schema,
    "OCP-CORE-MSG-002": check_freshness,
    "OCP-CORE-MSG-003": check_envelope_signature,
    "OCP-CORE-MSG-005": check_error_messages,
    "OCP-CORE-MSG-006": check_ijson,
    "OCP-CORE-SIZE-001": check_size_limits,
    "OCP-CORE-RATE-001": check_message_rate_limit,
}
