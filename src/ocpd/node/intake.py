"""The intake pipeline shared by both transports: bytes in, a durable decision out.

Order of checks (cheap and stateless first, so that hostile input costs
little and never touches a rate-limit bucket or the dedup window):

1. size: the message (``transport.max_message_bytes``, OCP-413) — the
   transports enforce it again while reading, before buffering;
2. strict I-JSON, the schema gate and freshness (:func:`parse_message`,
   OCP-400), then the payload size (``knowledge.max_payload_bytes``,
   OCP-413);
3. who is speaking: over HTTP the D3 ``Authorization`` header, whose agent
   must be ``sender.agent_id`` or a node's service agent handing the message
   on (a registered, active agent declaring ``cap:ocp:relay``; then the
   receiver must be served here: see :mod:`ocpd.node.forward`); over
   WebSocket the session's agent must be; an unknown sender, a bad header
   signature or a replayed header is OCP-401;
4. the envelope signature against the sender's active keys (OCP-401);
5. trust (OCP §4.2.1): sending needs Level 1 (OCP-403); a direct receiver
   must be registered (OCP-404) and Level 1; a broadcast goes to the
   matching agents local to this node;
6. rate limits per verified sender (OCP §9, OCP-429 with ``Retry-After``);
   then, for knowledge, task and consensus messages, the rules of Layers 3
   and 4 (:mod:`ocpd.node.collab`: trust and bond permissions, the Privacy
   Validation Layer, task limits, vote admission), whose refusals keep the
   rate tokens they took;
7. :meth:`Intake.commit`: dedup by ``message_id`` and one group-commit write
   (dedup row, the exact bytes, one queue row per receiver, an interactions
   row, and the Layer 3/4 effect: a task, a vote, a round); only then is
   the message accepted (D6), and its rows are handed to the router.

Large messages are parsed and verified in a worker thread so that one 16 MiB
message does not stall every other connection.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any, Final, Literal

import attrs
import trio

from ocpd.logs import get_logger, log_event
from ocpd.node.collab import COLLABORATION_TYPES
from ocpd.node.store import Accept
from ocpd.proto import schema
from ocpd.proto.auth import (
    BAD_AUTHORIZATION_SIGNATURE,
    HttpAuth,
    authorization_digest,
    parse_authorization,
    record_authorization,
)
from ocpd.proto.envelope import (
    BAD_MESSAGE_SIGNATURE,
    VerifiedMessage,
    build_error_message,
    claimed_origin,
    parse_message_within,
    sign_message,
    signed_digest,
    verify_message_signature,
)
from ocpd.proto.errors import (
    AuthError,
    ForbiddenError,
    InternalError,
    MalformedError,
    NotFoundError,
    OcpError,
    PayloadTooLarge,
    PvlRejection,
    RateLimited,
)
from ocpd.proto.ids import broadcast_did, is_broadcast_did
from ocpd.proto.ratelimit import RateLimiter
from ocpd.storage import StorageError
from ocpd.verifier import Answer, MessageCheck, MessageVerdict, SignatureCheck, Verifier

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ocpd.clock import WallClock
    from ocpd.config import RateLimitingSection
    from ocpd.node.collab import Collaboration, Ruling
    from ocpd.node.directory import AgentDirectory, AgentInfo
    from ocpd.node.router import Router
    from ocpd.node.store import Accepted, MessageStore
    from ocpd.proto.auth import ReplayWindow
    from ocpd.proto.crypto import SigningKey
    from ocpd.web import Metrics

__all__ = [
    "Attempt",
    "Checked",
    "HttpCredentials",
    "Intake",
    "MessageLimits",
    "Outcome",
    "Started",
]

#: What an ``error`` may refer to when the refused message could not be parsed whole.
MESSAGE_TYPES: Final = frozenset(
    schema.load_schema("envelope")["properties"]["message_type"]["enum"]  # type: ignore[index]
)
#: Messages above this size are parsed and verified off the event loop.
OFFLOAD_BYTES: Final = 65_536
#: Dedup ids are kept at least this long (D6: max(ttl, 3600) plus skew).
MIN_DEDUP_SECONDS: Final = 3600
MESSAGES_PATH: Final = "/ocp/v1/messages"

log = get_logger("node")


@attrs.define
class Attempt:
    """What is known about one incoming message so far, for errors, logs and metrics."""

    transport: Literal["http", "ws", "peer"]
    started: float
    message_id: str | None = None
    message_type: str | None = None
    #: The sender once known; before that the agent the request claims to be.
    sender: str | None = None


@attrs.frozen
class HttpCredentials:
    authorization: str | None
    path_and_query: str = MESSAGES_PATH


@attrs.frozen
class Checked:
    """A message that passed every check before the write, with its rate tokens taken."""

    verified: VerifiedMessage
    receivers: tuple[AgentInfo, ...]
    dedup_until: float
    taken: tuple[RateLimiter, ...]
    broadcast: bool = False
    #: The peer node that handed the message on over a session.
    peer: str | None = None
    #: What Layers 3 and 4 change when the message is accepted.
    ruling: Ruling | None = None


@attrs.define(eq=False)
class Started:
    """A message :meth:`Intake.start` parsed, its signatures on their way to the verifier."""

    attempt: Attempt
    raw: bytes
    message: dict[str, Any]
    sent_at: float
    expires_at: float
    now: float
    #: The sender, and the agent handing the message on when that is another.
    info: AgentInfo
    relay: AgentInfo | None
    #: The D3 header of an HTTP request.
    auth: HttpAuth | None
    http: HttpCredentials | None
    #: The peer node handing the message on over a session (NET, D8).
    peer: str | None = None
    answer: Answer[list[bool]] | None = None
    #: The helper's examination of the whole message (then ``message`` is the plain reading).
    examination: Answer[MessageVerdict] | None = None
    signed_at: float = 0.0
    digest: bytes = b""
    #: Why the header or the envelope cannot be checked at all.
    header_error: OcpError | None = None
    unreadable: OcpError | None = None


@attrs.frozen
class Outcome:
    message_id: str
    duplicate: bool = False


class MessageLimits:
    """The OCP §9 buckets a message draws from, per verified sender."""

    def __init__(self, section: RateLimitingSection, metrics: Metrics) -> None:
        self.enabled = section.enabled
        self._hits = metrics.rate_limit_hits
        self.messages = RateLimiter(limit=section.messages_per_minute, window=60)
        self.broadcasts = RateLimiter(limit=section.broadcasts_per_minute, window=60)
        self.knowledge = RateLimiter(limit=section.knowledge_per_minute, window=60)
        self.bonds = RateLimiter(limit=section.bond_requests_per_hour, window=3600)

    def take(
        self, sender: str, message_type: str, *, broadcast: bool, now: float
    ) -> tuple[RateLimiter, ...]:
        if not self.enabled:
            return ()
        buckets: list[tuple[str, RateLimiter]] = [("messages", self.messages)]
        if broadcast:
            buckets.append(("broadcasts", self.broadcasts))
        if message_type == "knowledge_share":
            buckets.append(("knowledge", self.knowledge))
        elif message_type == "bond_request":
            buckets.append(("bond_requests", self.bonds))
        taken: list[RateLimiter] = []
        for operation, limiter in buckets:
            retry = limiter.take(sender, now=now)
            if retry is not None:
                self.refund(sender, taken)
                self._hits.labels(operation).inc()
                raise RateLimited(
                    f"{operation} rate limit reached",
                    retry_after=retry,
                    details={"operation": operation},
                )
            taken.append(limiter)
        return tuple(taken)

    @staticmethod
    def refund(sender: str, taken: Sequence[RateLimiter]) -> None:
        for limiter in taken:
            limiter.refund(sender)


def dedup_until(now: float, sent_at: float, ttl: float, clock_skew: float) -> float:
    """When a message id may be forgotten (D6: ``max(ttl, 3600)`` plus the skew)."""
    return max(now, sent_at) + max(ttl, MIN_DEDUP_SECONDS) + clock_skew


def _name(attempt: Attempt, message: dict[str, Any]) -> None:
    """What a message that passed the strict checks says about itself, for errors and logs."""
    attempt.message_id = message["message_id"]
    attempt.message_type = message["message_type"]
    attempt.sender = message["sender"]["agent_id"]


def _envelope_verified(unreadable: OcpError | None, signature_ok: bool) -> None:
    """Step 4's outcome: an unreadable ``sender.signature`` is its own error, a bad one OCP-401."""
    if unreadable is not None:
        raise unreadable
    if not signature_ok:
        raise AuthError(BAD_MESSAGE_SIGNATURE)


def _identify(raw: bytes, attempt: Attempt, max_size: int) -> None:
    """Name the message a refusal is about, when it can be read at all (decision 79)."""
    claimed = claimed_origin(raw, max_size=max_size)
    if claimed.message_id is not None:
        attempt.message_id = claimed.message_id
    if claimed.message_type in MESSAGE_TYPES:
        attempt.message_type = claimed.message_type
    if claimed.sender is not None:
        attempt.sender = claimed.sender


def _plain(raw: bytes) -> dict[str, Any] | None:
    """``raw`` read by the plain JSON parser: a hint, until the strict checks agree."""
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _agent_of(sender: object) -> str | None:
    agent_id = sender.get("agent_id") if isinstance(sender, dict) else None
    return agent_id if isinstance(agent_id, str) else None


@attrs.define(eq=False)
class Intake:
    directory: AgentDirectory
    store: MessageStore
    router: Router
    limits: MessageLimits
    replay: ReplayWindow
    clock: WallClock
    metrics: Metrics
    key: SigningKey
    service_agent: str
    network: str
    clock_skew: float
    max_message_bytes: int
    max_payload_bytes: int
    cpu: trio.CapacityLimiter = attrs.Factory(lambda: trio.CapacityLimiter(2))
    #: Where signatures are checked; without a helper process, on the loop.
    verifier: Verifier = attrs.Factory(lambda: Verifier(helper=False))
    #: Hands a newly accepted broadcast to the peer nodes (all but the one it came from).
    propagate: Callable[[bytes, str | None], object] | None = None
    #: Layers 3 and 4 (knowledge, tasks, consensus); without it those pass as plain messages.
    rules: Collaboration | None = None
    broadcast_id: str = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.broadcast_id = broadcast_did(self.network)

    # --- checks ------------------------------------------------------------------

    def _parse(self, raw: bytes, now: float) -> tuple[dict[str, Any], float, float]:
        return parse_message_within(
            raw,
            now=now,
            clock_skew=self.clock_skew,
            max_size=self.max_message_bytes,
            max_payload=self.max_payload_bytes,
        )

    async def _parse_strictly(
        self, raw: bytes, attempt: Attempt, now: float
    ) -> tuple[dict[str, Any], float, float]:
        """Step 2 on this process; names the message in ``attempt``."""
        try:
            if len(raw) > OFFLOAD_BYTES:
                message, sent_at, expires_at = await trio.to_thread.run_sync(
                    self._parse, raw, now, limiter=self.cpu
                )
            else:
                message, sent_at, expires_at = self._parse(raw, now)
        except OcpError:
            _identify(raw, attempt, self.max_message_bytes)
            raise
        _name(attempt, message)
        return message, sent_at, expires_at

    async def check(
        self,
        raw: bytes,
        attempt: Attempt,
        *,
        http: HttpCredentials | None = None,
        session_agent: str | None = None,
        peer: str | None = None,
    ) -> Checked:
        """Steps 1-6; raises the :class:`OcpError` to answer with."""
        started = await self.start(raw, attempt, http=http, session_agent=session_agent, peer=peer)
        return await self.complete(started)

    async def start(
        self,
        raw: bytes,
        attempt: Attempt,
        *,
        http: HttpCredentials | None = None,
        session_agent: str | None = None,
        peer: str | None = None,
    ) -> Started:
        """Steps 1-2 and the lookups of 3-4, with the signatures sent to be checked.

        ``peer`` is the node id of a peer session handing the message on:
        the session authenticated that node, so no header is needed, and
        (as for a relay over HTTP) only receivers served here are taken.
        Raises the :class:`OcpError` to answer with. :meth:`complete` does
        the rest; a caller with several messages in hand (a WebSocket session
        reading ahead) starts them all first, so that their signatures travel
        to the verifier together.
        """
        auth: HttpAuth | None = None
        auth_error: AuthError | None = None
        if http is not None:
            try:
                auth = parse_authorization(http.authorization)
                attempt.sender = auth.agent_id
            except AuthError as exc:
                auth_error = exc
        if len(raw) > self.max_message_bytes:
            raise PayloadTooLarge(
                f"message exceeds the limit of {self.max_message_bytes} bytes",
                details={"limit": self.max_message_bytes},
            )
        now = self.clock.now()
        # With a helper process, a small message's strict parse, schema,
        # digest and signature are its work (one trip, with the header's
        # signature): the loop reads the message with the plain parser, just
        # to know whose keys to send, and trusts that reading only once the
        # helper's strict checks passed. Any refusal before then is decided
        # after the strict parse here, so that errors keep their order. (A
        # message that may carry too large a payload is parsed here: that
        # refusal comes before the sender is looked up.)
        examined = self.verifier.running and len(raw) <= min(OFFLOAD_BYTES, self.max_payload_bytes)
        plain = _plain(raw) if examined else None
        if plain is not None:
            message, sent_at, expires_at = plain, 0.0, 0.0
        else:
            message, sent_at, expires_at = await self._parse_strictly(raw, attempt, now)
        try:
            sender = _agent_of(message.get("sender"))
            if sender is None:
                raise MalformedError("sender.agent_id is missing", details={"field": "sender"})
            if session_agent is not None and sender != session_agent:
                raise AuthError("sender.agent_id is not the agent of this session")
            relay: AgentInfo | None = None
            if http is not None:
                if auth_error is not None:
                    raise auth_error
                if auth is None:  # pragma: no cover - parse_authorization raised instead
                    raise AuthError("no Authorization header")
                if auth.agent_id != sender:
                    relay = await self._relay(auth.agent_id)
            info = await self.directory.lookup(sender)
            if info is None:
                raise AuthError("the sender is not a registered agent")
        except OcpError:
            if plain is not None:
                await self._parse_strictly(raw, attempt, now)
            raise
        started = Started(
            attempt=attempt,
            raw=raw,
            message=message,
            sent_at=sent_at,
            expires_at=expires_at,
            now=now,
            info=info,
            relay=relay,
            auth=auth,
            http=http,
            peer=peer,
        )
        if plain is not None:
            self._submit_examination(started)
        else:
            self._submit_signatures(started)
        return started

    async def complete(self, started: Started) -> Checked:
        """Steps 3-6 of a message :meth:`start` accepted; raises the :class:`OcpError`."""
        if started.examination is not None:
            digest = await self._examined(started, started.examination)
        else:
            digest = await self._signatures_verified(started)
        info, message, attempt = started.info, started.message, started.attempt
        sender = info.agent_id
        if info.level < 1:
            raise ForbiddenError(
                "sending messages needs trust level 1 (an active registration with an endpoint)",
                details={"trust_level": info.level},
            )
        broadcast, receivers = await self._receivers(message, sender)
        if started.relay is not None and (
            broadcast or any(self.router.placement(r) != "local" for r in receivers)
        ):
            # Handing on is one hop: a node passes on only what it delivers.
            raise NotFoundError(
                "this node does not serve the receiver", details={"field": "receiver"}
            )
        if started.peer is not None and any(self.router.placement(r) != "local" for r in receivers):
            # The same over a session; a broadcast's receivers are local by construction.
            raise NotFoundError(
                "this node does not serve the receiver", details={"field": "receiver"}
            )
        taken = self.limits.take(
            sender, attempt.message_type or "", broadcast=broadcast, now=trio.current_time()
        )
        sent_at, expires_at = started.sent_at, started.expires_at
        ruling: Ruling | None = None
        if self.rules is not None and message["message_type"] in COLLABORATION_TYPES:
            # Step 6b. A refusal here keeps its rate tokens: the work was done.
            ruling = await self.rules.check(
                message,
                info,
                receivers,
                broadcast=broadcast,
                raw_size=len(started.raw),
                sent_at=sent_at,
            )
            if ruling is not None and ruling.receivers is not None:
                receivers = ruling.receivers
        verified = VerifiedMessage(
            message=message,
            raw=started.raw,
            digest=digest,
            sender=sender,
            receiver=message["receiver"]["agent_id"],
            message_type=message["message_type"],
            message_id=message["message_id"],
            sent_at=sent_at,
            expires_at=expires_at,
        )
        ttl = expires_at - sent_at
        return Checked(
            verified,
            receivers,
            dedup_until(started.now, sent_at, ttl, self.clock_skew),
            taken,
            broadcast=broadcast,
            peer=started.peer,
            ruling=ruling,
        )

    def _header_check(self, started: Started) -> SignatureCheck | None:
        """The D3 header's signature to check; its refusal, if any, goes in ``started``."""
        auth, http = started.auth, started.http
        if http is None or auth is None:
            return None
        signer = started.relay if started.relay is not None else started.info
        try:
            started.signed_at, header_digest = authorization_digest(
                auth,
                method="POST",
                path_and_query=http.path_and_query,
                body=started.raw,
                now=started.now,
                window=self.clock_skew,
                expected_agent_id=signer.agent_id,
            )
        except OcpError as exc:
            started.header_error = exc
            return None
        return SignatureCheck(signer.keys, header_digest, auth.signature)

    def _submit_examination(self, started: Started) -> None:
        check = MessageCheck(
            raw=started.raw,
            now=started.now,
            clock_skew=self.clock_skew,
            max_size=self.max_message_bytes,
            max_payload=self.max_payload_bytes,
            keys=started.info.keys,
            header=self._header_check(started),
        )
        started.examination = self.verifier.submit_message(check)

    async def _examined(self, started: Started, examination: Answer[MessageVerdict]) -> bytes:
        """:meth:`_signatures_verified` for a message the helper examined whole."""
        verdict = await examination.wait()
        if verdict.refused is not None:
            _identify(started.raw, started.attempt, self.max_message_bytes)
            raise verdict.refused
        started.sent_at, started.expires_at = verdict.sent_at, verdict.expires_at
        _name(started.attempt, started.message)
        self._header_verified(started, verdict.header_ok)
        _envelope_verified(verdict.unreadable, verdict.signature_ok)
        return verdict.digest

    def _header_verified(self, started: Started, header_ok: bool | None) -> None:
        """Step 3's outcome: the header's refusal, a bad signature or a replay is OCP-401."""
        if started.header_error is not None:
            raise started.header_error
        if started.auth is not None:
            if not header_ok:
                raise AuthError(BAD_AUTHORIZATION_SIGNATURE)
            record_authorization(
                started.auth, replay=self.replay, now=started.now, signed_at=started.signed_at
            )

    def _submit_signatures(self, started: Started) -> None:
        """Steps 3 and 4's signatures, both in one batch for the verifier."""
        checks: list[SignatureCheck] = []
        header = self._header_check(started)
        if started.header_error is not None:
            return
        if header is not None:
            checks.append(header)
        raw = started.raw
        if len(raw) <= OFFLOAD_BYTES:
            try:
                started.digest, signature = signed_digest(started.message)
                checks.append(SignatureCheck(started.info.keys, started.digest, signature))
            except OcpError as exc:
                started.unreadable = exc
        if checks:
            started.answer = self.verifier.submit(checks)

    async def _signatures_verified(self, started: Started) -> bytes:
        """The envelope's digest once both signatures verified.

        Errors come in the order of the steps: the header's before the envelope's.
        """
        verified = await started.answer.wait() if started.answer is not None else []
        header_ok = verified[0] if started.auth is not None and verified else None
        self._header_verified(started, header_ok)
        if len(started.raw) > OFFLOAD_BYTES:
            return await trio.to_thread.run_sync(
                verify_message_signature, started.message, started.info.keys, limiter=self.cpu
            )
        _envelope_verified(started.unreadable, bool(verified) and verified[-1])
        return started.digest

    async def _relay(self, agent_id: str) -> AgentInfo:
        """The node service agent handing on another agent's message (decision 88)."""
        relay = await self.directory.lookup(agent_id)
        if relay is None or not relay.relay or not relay.active or relay.level < 1:
            raise AuthError("Authorization agent id differs from the message sender")
        return relay

    async def _receivers(
        self, message: dict[str, Any], sender: str
    ) -> tuple[bool, tuple[AgentInfo, ...]]:
        receiver = message["receiver"]
        receiver_id: str = receiver["agent_id"]
        flagged = receiver.get("broadcast", False) is True
        if flagged != is_broadcast_did(receiver_id):
            raise MalformedError(
                "receiver.broadcast is true exactly when receiver.agent_id is the broadcast DID",
                details={"field": "receiver"},
            )
        if flagged:
            if receiver_id != self.broadcast_id:
                raise MalformedError(
                    f"this node broadcasts on {self.broadcast_id}", details={"field": "receiver"}
                )
            return True, await self._broadcast_receivers(message, sender)
        info = await self.directory.lookup(receiver_id)
        if info is None:
            raise NotFoundError("the receiver is not a registered agent")
        if info.level < 1:
            raise ForbiddenError(
                "the receiver cannot receive direct messages (trust level 0)",
                details={"receiver_trust_level": info.level},
            )
        return False, (info,)

    async def _broadcast_receivers(
        self, message: dict[str, Any], sender: str
    ) -> tuple[AgentInfo, ...]:
        """Active local agents (not the sender) under any of ``metadata.tags``.

        Tags are taxonomy paths or unique leaves; a tag the taxonomy does not
        know matches nobody. Without tags a broadcast reaches every active
        local agent.
        """
        taxonomy = self.directory.taxonomy
        raw_tags = message.get("metadata", {}).get("tags", [])
        tags = [taxonomy.normalise(t) for t in raw_tags if t in taxonomy]
        if raw_tags and not tags:
            return ()
        found: list[AgentInfo] = []
        for agent_id in sorted(self.router.local):
            if agent_id == sender:
                continue
            info = await self.directory.lookup(agent_id)
            if info is None or not info.active:
                continue
            if not tags or any(d == t or d.startswith(t + ".") for d in info.domains for t in tags):
                found.append(info)
        return tuple(found)

    # --- the durable step --------------------------------------------------------------

    async def commit(self, batch: Sequence[Checked]) -> list[Outcome | OcpError]:
        """Dedup and store ``batch`` in one write; hand new rows to the router.

        Shielded: once the write is on its way its outcome must reach the
        router and the caller, even if the client went away meanwhile.
        """
        now = self.clock.now()
        items = [
            Accept(
                message_id=c.verified.message_id,
                digest=c.verified.digest,
                sender=c.verified.sender,
                receiver=c.verified.receiver,
                message_type=c.verified.message_type,
                raw=c.verified.raw,
                expires_at=c.verified.expires_at,
                dedup_until=c.dedup_until,
                recipients=tuple((r.agent_id, self.router.placement(r)) for r in c.receivers),
                at=now,
                effect=c.ruling.effect if c.ruling is not None else None,
            )
            for c in batch
        ]

        def hand_on(results: list[Accepted]) -> None:
            # Run by the database writer in commit order, so the router gets
            # every receiver's rows in ``seq`` order whichever caller resumes first.
            for checked, item, result in zip(batch, items, results, strict=True):
                if result.status == "accepted":
                    verified = checked.verified
                    for info, (_, placement), seq in zip(
                        checked.receivers, item.recipients, result.seqs, strict=True
                    ):
                        self.router.notify(info, seq, verified.raw, verified.expires_at, placement)

        out: list[Outcome | OcpError] = []
        with trio.CancelScope(shield=True):
            try:
                results = await self.store.accept(items, then=hand_on)
            except StorageError as exc:
                log_event(log, "store_failed", level=logging.ERROR, error=str(exc))
                for c in batch:
                    self.limits.refund(c.verified.sender, c.taken)
                return [InternalError("the node could not store the message")] * len(batch)
        for checked, result in zip(batch, results, strict=True):
            verified = checked.verified
            if result.status == "conflict":
                self.limits.refund(verified.sender, checked.taken)
                out.append(
                    MalformedError(
                        "message_id was already used for a different message",
                        details={"field": "message_id", "reason": "reused"},
                    )
                )
            elif result.status == "duplicate":
                out.append(Outcome(verified.message_id, duplicate=True))
            elif result.status == "refused":
                assert result.error is not None  # noqa: S101 - set with the status
                out.append(result.error)
            else:
                out.append(Outcome(verified.message_id))
                if checked.ruling is not None and checked.ruling.after is not None:
                    checked.ruling.after()
                if checked.broadcast and self.propagate is not None:
                    # First sight of this broadcast here: on to the other peer
                    # nodes (each one's dedup stops it coming round again).
                    self.propagate(verified.raw, checked.peer)
        return out

    # --- answers ---------------------------------------------------------------------

    def error_message(self, error: OcpError, attempt: Attempt) -> dict[str, Any]:
        """The signed OCPUMF ``error`` message for a rejection (D6).

        Addressed to the sender, or to the agent the request claimed to be;
        to the broadcast DID when nothing about the request named an agent.
        """
        message = build_error_message(
            error,
            sender=self.service_agent,
            receiver=attempt.sender or self.broadcast_id,
            now=self.clock.now(),
            reference_message_id=attempt.message_id,
        )
        return sign_message(message, self.key)

    def finish(self, attempt: Attempt, result: Outcome | OcpError) -> None:
        """Count and log one processed message (never its payload)."""
        if isinstance(result, Outcome):
            status = "duplicate" if result.duplicate else "accepted"
            code = None
        elif isinstance(result, PvlRejection):
            status = "pvl_rejected"
            code = result.code
            self.metrics.pvl_rejections.labels(code).inc()
        else:
            status = "rate_limited" if isinstance(result, RateLimited) else "rejected"
            code = result.code
        message_type = attempt.message_type or "unknown"
        self.metrics.messages.labels(message_type, status).inc()
        log_event(
            log,
            "message",
            transport=attempt.transport,
            message_id=attempt.message_id,
            type=message_type,
            sender=attempt.sender,
            status=status,
            error_code=code,
            duration_ms=round((trio.current_time() - attempt.started) * 1000, 3),
        )
