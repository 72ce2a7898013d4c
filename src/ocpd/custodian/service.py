"""The recovery custodian: deposits, revocations and recovery requests (OCP §8.3, D9).

The custodian is a did:ocp service agent of its own (derived from the node
key) that takes OCPUMF messages at ``POST /ocp/v1/messages`` and answers
each one at once with a message signed by that agent:

* ``share_deposit`` from an agent the registry knows, signed by one of its
  active keys, carrying a Recovery Share Record signed by the key it is a
  share of and sealed to this custodian: stored (wrapped under the database
  key, :mod:`ocpd.custodian.store`) with the recovery public key it pins;
  answered with an ``ack``;
* ``share_revoke`` signed by the agent the share belongs to: the share is
  deleted; ``ack``;
* ``recovery_request`` for a stored share, either signed by the pinned
  recovery key (envelope and proof) and answered with the share sealed to
  the request's ephemeral key (``recovery_share_response``), or asking for
  the operator's approval: the first request is recorded as pending and
  refused with OCP-403 ``approval_pending`` and its ``approval_id``; once
  the operator approved it (``ocpd custodian approve ID``) the same request
  with that ``approval_id`` gets the share.

Refusals are the sender's ``error`` message with the HTTP status of its
code. Every message id is taken once (a replay is OCP-401 ``replayed``),
each ephemeral key serves one request, and a recovery request older than
``custodian.request_max_age_seconds`` is refused (OCP-400 ``stale``).
Every request and every decision goes to the audit log; no log line, audit
row or error ever carries share bytes.
"""

from __future__ import annotations

import logging
import secrets
from functools import partial
from typing import TYPE_CHECKING, Any, Final, TypeVar

import attrs
import trio
from prometheus_client import Counter, Gauge

from ocpd.custodian import store
from ocpd.logs import get_logger, log_event
from ocpd.proto import schema
from ocpd.proto.crypto import DecryptionFailed
from ocpd.proto.encoding import (
    b64url_decode,
    b64url_encode,
    format_timestamp,
    parse_timestamp,
)
from ocpd.proto.envelope import (
    MAX_TTL,
    build_error_message,
    build_message,
    claimed_origin,
    decrypt_payload,
    parse_message,
    sign_message,
    verify_message_signature,
)
from ocpd.proto.errors import (
    AuthError,
    ForbiddenError,
    MalformedError,
    NotFoundError,
    OcpError,
    RateLimited,
    Unavailable,
)
from ocpd.proto.ids import broadcast_did, derive_agent_id, key_fingerprint
from ocpd.proto.ratelimit import RateLimiter
from ocpd.proto.recovery import (
    open_share_record,
    seal_share_response,
    verify_proof,
    verify_share_record,
)
from ocpd.storage import StorageError

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Awaitable, Callable, Mapping

    from prometheus_client import CollectorRegistry

    from ocpd.clock import WallClock
    from ocpd.config import CustodianSection
    from ocpd.custodian.store import DatabaseKey
    from ocpd.node.directory import AgentDirectory, AgentInfo
    from ocpd.proto.crypto import SigningKey
    from ocpd.storage import Database

__all__ = ["HANDLED_TYPES", "MAX_PENDING", "CustodianService", "Reply"]

#: The message types a custodian takes.
HANDLED_TYPES: Final = ("share_deposit", "share_revoke", "recovery_request")
#: Requests of one agent key that may wait for the operator at once.
MAX_PENDING: Final = 3
#: Addresses may send this many times the per-agent rate.
ADDRESS_RATE_FACTOR: Final = 10
_DAY: Final = 86_400

T = TypeVar("T")

log = get_logger("custodian")


@attrs.frozen
class Reply:
    """What goes back on the HTTP answer: a status and a signed message."""

    status: int
    message: dict[str, Any]
    retry_after: int | None = None


@attrs.define
class _Seen:
    """What is known about a request while it is checked (for errors, logs, metrics)."""

    remote: str
    sender: str | None = None
    message_id: str | None = None
    message_type: str = "unknown"
    agent_id: str | None = None
    fingerprint: str | None = None


class CustodianService:
    """The custodian's message handling, its sweeper and its operator commands."""

    def __init__(
        self,
        *,
        database: Database,
        clock: WallClock,
        settings: CustodianSection,
        key: SigningKey,
        network: str,
        database_key: DatabaseKey,
        directory: AgentDirectory,
        metrics_registry: CollectorRegistry,
        clock_skew: float,
        max_body: int = 65_536,
    ) -> None:
        self._database = database
        self._clock = clock
        self.settings = settings
        self._key = key
        self._database_key = database_key
        self._directory = directory
        self.agent_id = derive_agent_id(key.public_key, network)
        self._broadcast = broadcast_did(network)
        self.clock_skew = clock_skew
        self.max_body = max_body
        rate = settings.requests_per_minute
        self._senders = RateLimiter(limit=rate, window=60.0)
        self._addresses = RateLimiter(limit=rate * ADDRESS_RATE_FACTOR, window=60.0)
        self._stored = Gauge(
            "ocp_recovery_shares_stored",
            "Recovery shares the custodian holds (expired ones until swept)",
            registry=metrics_registry,
        )
        self._requests = Counter(
            "ocp_custodian_requests_total",
            "Messages to the custodian, by type and outcome (stored, revoked, answered, "
            "pending, or the refusal's code)",
            ["type", "outcome"],
            registry=metrics_registry,
        )

    # --- identity ------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """``GET /ocp/v1/custodian``: who this custodian is and what it keeps.

        The agent id is derived from the public key, so a client checks one
        against the other; the key agreement key follows from the public key.
        """
        return {
            "agent_id": self.agent_id,
            "public_key": b64url_encode(self._key.public_key),
            "message_types": list(HANDLED_TYPES),
            "share_expiry_days": self.settings.share_expiry_days,
            "request_max_age_seconds": self.settings.request_max_age_seconds,
            "operator_approval": True,
        }

    # --- messages ------------------------------------------------------------------------

    async def handle(self, raw: bytes, remote: str) -> Reply:
        """Answer one POSTed message (never raises an :class:`OcpError`)."""
        seen = _Seen(remote=remote)
        try:
            wait = self._addresses.take(remote, now=trio.current_time())
            if wait is not None:
                raise RateLimited("too many requests from this address", retry_after=wait)
            outcome, reply = await self._process(raw, seen)
        except OcpError as exc:
            await self._refused(exc, seen)
            return self._refusal(exc, seen)
        self._requests.labels(seen.message_type, outcome).inc()
        log_event(
            log,
            "custodian_request",
            type=seen.message_type,
            outcome=outcome,
            agent_id=seen.agent_id,
            key_fingerprint=seen.fingerprint,
            message_id=seen.message_id,
            remote=remote,
        )
        return reply

    def refusal(self, error: OcpError, remote: str) -> Reply:
        """The answer to a request refused before its body was read."""
        self._requests.labels("unknown", error.code).inc()
        return self._refusal(error, _Seen(remote=remote))

    def _refusal(self, error: OcpError, seen: _Seen) -> Reply:
        return Reply(
            error.http_status,
            self._error_message(error, seen),
            retry_after=error.retry_after if isinstance(error, RateLimited) else None,
        )

    async def _process(self, raw: bytes, seen: _Seen) -> tuple[str, Reply]:
        now = self._clock.now()
        try:
            message, sent_at, _ = parse_message(
                raw, now=now, clock_skew=self.clock_skew, max_size=self.max_body
            )
        except OcpError:
            # Addressed to the sender it names, and naming the message; not audited.
            claimed = claimed_origin(raw, max_size=self.max_body)
            seen.sender, seen.message_id = claimed.sender, claimed.message_id
            raise
        seen.sender = message["sender"]["agent_id"]
        seen.message_id = message["message_id"]
        kind = message["message_type"]
        seen.message_type = kind if kind in HANDLED_TYPES else "other"
        if message["receiver"]["agent_id"] != self.agent_id:
            raise MalformedError(
                f"this custodian is {self.agent_id}; the message is addressed to another agent",
                details={"field": "receiver.agent_id", "reason": "wrong_receiver"},
            )
        if kind not in HANDLED_TYPES:
            raise MalformedError(
                f"a custodian takes {', '.join(HANDLED_TYPES)}, not {kind}",
                details={"field": "message_type", "reason": "unsupported_type"},
            )
        wait = self._senders.take(seen.sender, now=trio.current_time())
        if wait is not None:
            raise RateLimited("too many requests from this agent", retry_after=wait)
        payload = self._payload(message)
        schema.validate(f"payload.{kind}", payload)
        if kind == "share_deposit":
            return await self._deposit(message, payload, seen, now)
        if kind == "share_revoke":
            return await self._revoke(message, payload, seen, now)
        return await self._recovery(message, payload, seen, now, sent_at)

    def _payload(self, message: Mapping[str, Any]) -> dict[str, Any]:
        payload = message["payload"]
        if isinstance(payload, dict):
            return payload
        try:
            return decrypt_payload(message, self._key)
        except DecryptionFailed:
            raise MalformedError(
                "the payload does not decrypt with this custodian's key",
                details={"field": "payload", "reason": "undecryptable"},
            ) from None

    async def _agent(self, agent_id: str) -> AgentInfo:
        info = await self._directory.lookup(agent_id)
        if info is None:
            raise NotFoundError(
                f"the registry does not know {agent_id}", details={"reason": "unknown_agent"}
            )
        if not info.active:
            raise ForbiddenError(
                f"{agent_id} is not active in the registry", details={"reason": "agent_inactive"}
            )
        return info

    async def _authenticate(self, message: Mapping[str, Any], agent_id: str) -> AgentInfo:
        """The sender's registry entry, once the envelope verified under its active keys.

        A registry answer may be cached: when the signature fails under the
        cached keys (the agent may have just rotated), the entry is fetched
        again once.
        """
        info = await self._agent(agent_id)
        try:
            verify_message_signature(message, info.keys)
        except AuthError:
            forget = getattr(self._directory, "forget", None)
            if forget is None:
                raise
            forget(agent_id)
            info = await self._agent(agent_id)
            verify_message_signature(message, info.keys)
        return info

    async def _deposit(
        self, message: dict[str, Any], payload: dict[str, Any], seen: _Seen, now: float
    ) -> tuple[str, Reply]:
        record = payload["share"]
        seen.agent_id, seen.fingerprint = record["agent_id"], record["key_fingerprint"]
        if record["agent_id"] != seen.sender:
            raise ForbiddenError(
                "an agent deposits shares of its own key only",
                details={"reason": "not_owner", "field": "share.agent_id"},
            )
        info = await self._authenticate(message, record["agent_id"])
        signing_key = next(
            (k for k in info.keys if key_fingerprint(k) == record["key_fingerprint"]), None
        )
        if signing_key is None:
            raise MalformedError(
                "the share is of a key the registry does not list as the agent's",
                details={"reason": "fingerprint_mismatch", "field": "share.key_fingerprint"},
            )
        verify_share_record(record, signing_key, now=now, clock_skew=self.clock_skew)
        # Only to prove the share opens here; the opened share is dropped at once.
        open_share_record(record, self._key, self.agent_id)
        recovery_key = b64url_decode(
            payload["recovery_public_key"], field="recovery_public_key", length=32
        )
        if recovery_key in info.keys:
            raise MalformedError(
                "the recovery key must not be one of the agent's signing keys",
                details={"reason": "recovery_key_is_signing_key", "field": "recovery_public_key"},
            )
        expires_at = now + self.settings.share_expiry_days * _DAY
        if "expires_at" in payload:
            asked = parse_timestamp(payload["expires_at"], field="expires_at")
            if asked <= now:
                raise MalformedError(
                    "expires_at has passed", details={"reason": "expired", "field": "expires_at"}
                )
            expires_at = min(expires_at, asked)

        def txn(conn: sqlite3.Connection) -> bool:
            self._take(conn, message["message_id"], now)
            replaced = store.put_share(
                conn, self._database_key, record, recovery_key, now=now, expires_at=expires_at
            )
            if replaced:
                store.audit(
                    conn,
                    at=now,
                    event="share_expired",
                    outcome="deleted",
                    agent_id=record["agent_id"],
                    fingerprint=record["key_fingerprint"],
                )
            store.audit(
                conn,
                at=now,
                event="share_deposit",
                outcome="stored",
                agent_id=record["agent_id"],
                fingerprint=record["key_fingerprint"],
                share_id=record["share_id"],
                share_index=record["share_index"],
                message_id=message["message_id"],
                remote=seen.remote,
                expires_at=format_timestamp(expires_at),
            )
            return replaced

        if not await self._write(txn):
            self._stored.inc()
        note = (
            f"share {record['share_index']} of key {record['key_fingerprint']} stored "
            f"until {format_timestamp(expires_at)}"
        )
        return "stored", self._ack(message, note)

    async def _revoke(
        self, message: dict[str, Any], payload: dict[str, Any], seen: _Seen, now: float
    ) -> tuple[str, Reply]:
        seen.agent_id, seen.fingerprint = payload["agent_id"], payload["key_fingerprint"]
        if payload["agent_id"] != seen.sender:
            raise AuthError(
                "only the agent whose share it is may revoke it",
                details={"reason": "not_owner", "field": "agent_id"},
            )
        await self._authenticate(message, payload["agent_id"])
        revoked_at = parse_timestamp(payload["revoked_at"], field="revoked_at")
        if revoked_at > now + self.clock_skew:
            raise MalformedError(
                "revoked_at is in the future", details={"reason": "future", "field": "revoked_at"}
            )

        def txn(conn: sqlite3.Connection) -> None:
            self._take(conn, message["message_id"], now)
            held = store.get_share(
                conn, self._database_key, payload["agent_id"], payload["key_fingerprint"], now=now
            )
            if held is None or held.record["share_id"] != payload["share_id"]:
                raise NotFoundError(
                    f"no share {payload['share_id']} of key {payload['key_fingerprint']} is held",
                    details={"reason": "no_share"},
                )
            created = parse_timestamp(held.record["created_at"], field="created_at")
            if revoked_at < created:
                raise MalformedError(
                    "revoked_at is before the share was made: the revocation is for an "
                    "earlier share",
                    details={"reason": "revoke_predates_share", "field": "revoked_at"},
                )
            store.delete_share(conn, payload["agent_id"], payload["key_fingerprint"])
            store.audit(
                conn,
                at=now,
                event="share_revoke",
                outcome="revoked",
                agent_id=payload["agent_id"],
                fingerprint=payload["key_fingerprint"],
                share_id=payload["share_id"],
                message_id=message["message_id"],
                remote=seen.remote,
            )

        await self._write(txn)
        self._stored.dec()
        return "revoked", self._ack(message, f"share {payload['share_id']} deleted")

    async def _recovery(
        self,
        message: dict[str, Any],
        payload: dict[str, Any],
        seen: _Seen,
        now: float,
        sent_at: float,
    ) -> tuple[str, Reply]:
        agent_id, fingerprint = payload["agent_id"], payload["key_fingerprint"]
        seen.agent_id, seen.fingerprint = agent_id, fingerprint
        if agent_id != seen.sender:
            raise AuthError(
                "a recovery request is sent by the agent it recovers",
                details={"reason": "sender_mismatch", "field": "agent_id"},
            )
        max_age = self.settings.request_max_age_seconds
        if sent_at < now - max_age:
            raise MalformedError(
                f"the request was made more than {max_age} s ago; make a new one",
                details={"reason": "stale", "field": "timestamp", "max_age": max_age},
            )
        proof = payload["proof"]
        ephemeral_text = payload["ephemeral_public_key"]
        ephemeral = b64url_decode(ephemeral_text, field="ephemeral_public_key", length=32)
        by_key = proof["type"] == "secondary_key_signature"

        def txn(conn: sqlite3.Connection) -> tuple[str, Any]:
            self._take(conn, message["message_id"], now)
            held = store.get_share(conn, self._database_key, agent_id, fingerprint, now=now)
            if held is None:
                raise NotFoundError(
                    f"this custodian holds no share of key {fingerprint} of {agent_id}",
                    details={"reason": "no_share"},
                )
            earlier = store.request_by_ephemeral(conn, ephemeral_text)
            if by_key:
                verify_proof(payload, held.recovery_public_key)
                try:
                    verify_message_signature(message, [held.recovery_public_key])
                except AuthError:
                    raise AuthError(
                        "the request is not signed by the recovery key deposited with the share",
                        details={"reason": "bad_proof", "field": "sender.signature"},
                    ) from None
                _refuse_reuse(earlier)
                request = store.RecoveryRequest(
                    request_id=_request_id(),
                    agent_id=agent_id,
                    fingerprint=fingerprint,
                    ephemeral_public_key=ephemeral_text,
                    proof_type=proof["type"],
                    status="answered",
                    received_at=now,
                    answered_at=now,
                    remote=seen.remote,
                )
                store.add_request(conn, request)
            else:
                outcome, request = self._operator_step(conn, payload, proof, earlier, seen, now)
                if outcome == "pending":
                    return "pending", request
                store.mark_answered(conn, request.request_id, now=now)
            response = self._answer(conn, held.record, payload, ephemeral, request, seen, now)
            return "answered", response

        outcome, result = await self._write(txn)
        if outcome == "pending":
            raise _pending(result)
        return "answered", self._reply(message, "recovery_share_response", result)

    def _operator_step(
        self,
        conn: sqlite3.Connection,
        payload: dict[str, Any],
        proof: dict[str, Any],
        earlier: store.RecoveryRequest | None,
        seen: _Seen,
        now: float,
    ) -> tuple[str, store.RecoveryRequest]:
        """A request proved by operator approval: ``pending`` (recorded), or ``approved``."""
        agent_id, fingerprint = payload["agent_id"], payload["key_fingerprint"]
        ephemeral_text = payload["ephemeral_public_key"]
        approval_id = proof.get("approval_id")
        if approval_id is None:
            if earlier is None:
                if store.pending_requests(conn, agent_id, fingerprint) >= MAX_PENDING:
                    raise ForbiddenError(
                        f"{MAX_PENDING} requests for this key already wait for the operator",
                        details={"reason": "too_many_pending"},
                    )
                request = store.RecoveryRequest(
                    request_id=_request_id(),
                    agent_id=agent_id,
                    fingerprint=fingerprint,
                    ephemeral_public_key=ephemeral_text,
                    proof_type=proof["type"],
                    status="pending",
                    received_at=now,
                    remote=seen.remote,
                )
                store.add_request(conn, request)
                store.audit(
                    conn,
                    at=now,
                    event="recovery_request",
                    outcome="pending",
                    agent_id=agent_id,
                    fingerprint=fingerprint,
                    request_id=request.request_id,
                    remote=seen.remote,
                )
                return "pending", request
            if earlier.status == "pending" and earlier.agent_id == agent_id:
                return "pending", earlier
            _refuse_reuse(earlier)
        approved = store.get_request(conn, str(approval_id))
        if (
            approved is None
            or approved.agent_id != agent_id
            or approved.fingerprint != fingerprint
            or approved.ephemeral_public_key != ephemeral_text
        ):
            raise AuthError(
                "no approval was given for this request",
                details={"reason": "bad_proof", "field": "proof.approval_id"},
            )
        request = approved
        if request.status == "pending":
            return "pending", request
        if request.status == "answered":
            _refuse_reuse(request)
        decided = request.decided_at or request.received_at
        if request.status == "approved" and decided + self.settings.approval_ttl_seconds < now:
            request = attrs.evolve(request, status="expired")
        if request.status != "approved":
            raise ForbiddenError(
                f"the operator's approval is {request.status}",
                details={"reason": f"approval_{request.status}", "approval_id": request.request_id},
            )
        return "approved", request

    def _answer(
        self,
        conn: sqlite3.Connection,
        record: dict[str, Any],
        payload: dict[str, Any],
        ephemeral: bytes,
        request: store.RecoveryRequest,
        seen: _Seen,
        now: float,
    ) -> dict[str, Any]:
        """The share, opened and sealed again to the ephemeral key, never stored that way."""
        share = open_share_record(record, self._key, self.agent_id)
        response = seal_share_response(
            share,
            agent_id=payload["agent_id"],
            fingerprint=payload["key_fingerprint"],
            custodian_key=self._key,
            custodian_id=self.agent_id,
            ephemeral_public_key=ephemeral,
        )
        store.audit(
            conn,
            at=now,
            event="recovery_request",
            outcome="answered",
            agent_id=payload["agent_id"],
            fingerprint=payload["key_fingerprint"],
            request_id=request.request_id,
            proof=request.proof_type,
            share_index=share.index,
            remote=seen.remote,
        )
        return response

    # --- helpers ---------------------------------------------------------------------------

    def _take(self, conn: sqlite3.Connection, message_id: str, now: float) -> None:
        if not store.take_message_id(conn, message_id, now=now):
            raise AuthError("this message was received before", details={"reason": "replayed"})

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return await self._database.write(fn)
        except StorageError as exc:
            log_event(log, "custodian_write_failed", level=logging.ERROR, error=str(exc))
            raise Unavailable("the custodian cannot write to its database now") from exc

    def _ack(self, message: Mapping[str, Any], note: str) -> Reply:
        return self._reply(message, "ack", {"status": "processed", "note": note})

    def _reply(self, message: Mapping[str, Any], kind: str, payload: dict[str, Any]) -> Reply:
        answer = build_message(
            sender=self.agent_id,
            receiver=message["sender"]["agent_id"],
            message_type=kind,
            payload=payload,
            now=self._clock.now(),
            metadata={"correlation_id": message["message_id"]},
        )
        return Reply(200, sign_message(answer, self._key))

    def _error_message(self, error: OcpError, seen: _Seen) -> dict[str, Any]:
        message = build_error_message(
            error,
            sender=self.agent_id,
            receiver=seen.sender or self._broadcast,
            now=self._clock.now(),
            reference_message_id=seen.message_id,
        )
        return sign_message(message, self._key)

    async def _refused(self, error: OcpError, seen: _Seen) -> None:
        reason = error.details.get("reason") if error.details else None
        pending = reason == "approval_pending"
        outcome = "pending" if pending else error.code
        self._requests.labels(seen.message_type, outcome).inc()
        log_event(
            log,
            "custodian_request",
            level=logging.INFO if pending else logging.WARNING,
            type=seen.message_type,
            outcome=outcome,
            reason=reason,
            agent_id=seen.agent_id or seen.sender,
            key_fingerprint=seen.fingerprint,
            message_id=seen.message_id,
            remote=seen.remote,
        )
        if pending or seen.message_type == "unknown" or isinstance(error, RateLimited):
            # Pending requests are audited when recorded; unreadable and
            # throttled messages would let anyone fill the audit log.
            return
        write = partial(
            store.audit,
            at=self._clock.now(),
            event=seen.message_type,
            outcome=error.code,
            agent_id=seen.agent_id or seen.sender,
            fingerprint=seen.fingerprint,
            reason=reason,
            message_id=seen.message_id,
            remote=seen.remote,
        )
        try:
            await self._database.write(write)
        except StorageError as exc:
            log_event(log, "custodian_audit_failed", level=logging.ERROR, error=str(exc))

    # --- sweeper ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Delete expired shares and close stale requests every ``sweep_interval_seconds``."""
        self._stored.set(await self._database.read(store.count_shares))
        await self.sweep()
        task_status.started()
        deadline = trio.current_time()
        while True:
            deadline = max(deadline + self.settings.sweep_interval_seconds, trio.current_time())
            await trio.sleep_until(deadline)
            try:
                await self.sweep()
            except StorageError as exc:
                # Expired shares are never served meanwhile; the next sweep retries.
                log_event(log, "custodian_sweep_failed", level=logging.ERROR, error=str(exc))

    async def sweep(self) -> tuple[list[tuple[str, str]], list[str]]:
        """One pass: the shares deleted and the requests closed."""
        now = self._clock.now()
        ttl = self.settings.approval_ttl_seconds

        def txn(conn: sqlite3.Connection) -> tuple[list[tuple[str, str]], list[str], int]:
            gone = store.sweep_expired(conn, now=now)
            for agent_id, fingerprint in gone:
                store.audit(
                    conn,
                    at=now,
                    event="share_expired",
                    outcome="deleted",
                    agent_id=agent_id,
                    fingerprint=fingerprint,
                )
            closed = store.expire_requests(
                conn, pending_before=now - ttl, approved_before=now - ttl
            )
            for request_id in closed:
                store.audit(
                    conn, at=now, event="recovery_request", outcome="expired", request_id=request_id
                )
            store.prune_messages(conn, before=now - MAX_TTL - self.clock_skew)
            return gone, closed, store.count_shares(conn)

        gone, closed, count = await self._database.write(txn)
        self._stored.set(count)
        if gone or closed:
            log_event(log, "custodian_swept", shares=len(gone), requests=len(closed))
        trio_now = trio.current_time()
        self._senders.prune(trio_now)
        self._addresses.prune(trio_now)
        return gone, closed

    # --- operator commands -------------------------------------------------------------------

    def commands(self) -> dict[str, Callable[[Mapping[str, Any]], Awaitable[Any]]]:
        """``ocpd custodian requests|approve|reject`` on the control socket."""

        async def requests(arguments: Mapping[str, Any]) -> Any:
            statuses = None if arguments.get("all") else ("pending", "approved")
            found = await self._database.read(partial(store.list_requests, statuses=statuses))
            return {"custodian": self.agent_id, "requests": [r.describe() for r in found]}

        async def decide(arguments: Mapping[str, Any], *, approve: bool) -> Any:
            request_id = str(arguments["request_id"])
            now = self._clock.now()

            def txn(conn: sqlite3.Connection) -> store.RecoveryRequest:
                request = store.decide_request(conn, request_id, approve=approve, now=now)
                store.audit(
                    conn,
                    at=now,
                    event="operator_decision",
                    outcome=request.status,
                    agent_id=request.agent_id,
                    fingerprint=request.fingerprint,
                    request_id=request_id,
                )
                return request

            request = await self._database.write(txn)
            log_event(
                log,
                "custodian_decision",
                request_id=request_id,
                outcome=request.status,
                agent_id=request.agent_id,
                key_fingerprint=request.fingerprint,
            )
            return request.describe()

        return {
            "custodian.requests": requests,
            "custodian.approve": partial(decide, approve=True),
            "custodian.reject": partial(decide, approve=False),
        }


def _request_id() -> str:
    return f"rr-{secrets.token_hex(8)}"


def _refuse_reuse(earlier: store.RecoveryRequest | None) -> None:
    if earlier is not None:
        raise AuthError(
            "this ephemeral key was used by an earlier request; draw a new one",
            details={"reason": "replayed", "field": "ephemeral_public_key"},
        )


def _pending(request: store.RecoveryRequest) -> ForbiddenError:
    return ForbiddenError(
        "the request waits for the custodian operator's approval "
        f"(ocpd custodian approve {request.request_id}); send it again with this "
        "approval_id once approved",
        details={"reason": "approval_pending", "approval_id": request.request_id},
    )
