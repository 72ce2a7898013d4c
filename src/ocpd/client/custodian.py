"""Talking to one recovery custodian (OCP §8.3, D9).

:class:`CustodianClient` learns the custodian's agent id and keys from
``GET /ocp/v1/custodian`` (the id must derive from the public key, and match
the id the agent pinned, if any), sends it signed OCPUMF messages at
``POST /ocp/v1/messages`` and checks that each answer is signed by the
custodian and answers that very message. A refusal raises
:class:`CustodianRefused` carrying the custodian's code and details; a
request that waits for the custodian operator raises
:class:`ApprovalPending` with the ``approval_id`` to come back with.

The flows over several custodians (distribute, recover, rotate) are in
:mod:`ocpd.client.recovery`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import httpx

from ocpd.client.errors import ConnectionFailed, MessageRejected
from ocpd.client.https import http_error
from ocpd.client.session import dumps
from ocpd.client.websocket import client_ssl_context
from ocpd.proto import schema
from ocpd.proto.auth import OCF_VERSION
from ocpd.proto.crypto import SigningKey, ed25519_pk_to_x25519
from ocpd.proto.encoding import b64url_decode, b64url_encode, format_timestamp
from ocpd.proto.envelope import (
    MAX_MESSAGE_SIZE,
    build_message,
    sign_message,
    verify_message_signature,
)
from ocpd.proto.errors import OcpError
from ocpd.proto.ids import derive_agent_id, parse_agent_id
from ocpd.proto.recovery import Custodian, open_share_response, recovery_request_payload
from ocpd.proto.strictjson import loads_strict

if TYPE_CHECKING:
    import ssl

    from ocpd.client.keys import AgentKey
    from ocpd.proto.crypto import X25519KeyPair
    from ocpd.proto.shamir import Share

__all__ = ["ApprovalPending", "CustodianClient", "CustodianRefused"]

MESSAGES_PATH: Final = "/ocp/v1/messages"
INFO_PATH: Final = "/ocp/v1/custodian"


class CustodianRefused(MessageRejected):
    """The custodian answered with an ``error`` message (``code``, ``details``)."""


class ApprovalPending(CustodianRefused):
    """The request waits for the custodian operator; ``approval_id`` names it."""

    @property
    def approval_id(self) -> str:
        return str(self.details.get("approval_id", ""))


class CustodianClient:
    """One custodian at ``url``; use as an async context manager, or call :meth:`aclose`."""

    def __init__(
        self,
        url: str,
        *,
        agent_id: str | None = None,
        verify: ssl.SSLContext | str | bool = True,
        timeout: float = 10.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.pinned_agent_id = agent_id
        self._custodian: Custodian | None = None
        self._public_key: bytes | None = None
        self._http = httpx.AsyncClient(verify=client_ssl_context(verify), timeout=timeout)

    async def __aenter__(self) -> CustodianClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def __repr__(self) -> str:
        return f"CustodianClient({self.url})"

    # --- identity ------------------------------------------------------------------------

    async def custodian(self) -> Custodian:
        """The custodian's agent id and X25519 key, checked against its public key."""
        if self._custodian is not None:
            return self._custodian
        try:
            response = await self._http.get(self.url + INFO_PATH)
        except httpx.HTTPError as exc:
            raise ConnectionFailed(f"{self.url}: {exc}") from None
        if response.status_code != 200:
            raise ConnectionFailed(
                f"{self.url}{INFO_PATH} answered HTTP {response.status_code}; is this a "
                "custodian port?",
                status=response.status_code,
            )
        try:
            info = loads_strict(response.content, max_size=65_536)
            if not isinstance(info, dict):
                raise TypeError("not a JSON object")
            agent_id = info["agent_id"]
            network, _ = parse_agent_id(agent_id)
            public_key = b64url_decode(info["public_key"], field="public_key", length=32)
        except (OcpError, KeyError, TypeError) as exc:
            raise ConnectionFailed(f"{self.url}: not a custodian description: {exc}") from None
        if derive_agent_id(public_key, network) != agent_id:
            raise ConnectionFailed(f"{self.url}: the agent id does not derive from its key")
        if self.pinned_agent_id is not None and agent_id != self.pinned_agent_id:
            raise ConnectionFailed(
                f"{self.url} is custodian {agent_id}, not the expected {self.pinned_agent_id}"
            )
        self._public_key = public_key
        self._custodian = Custodian(agent_id, ed25519_pk_to_x25519(public_key))
        return self._custodian

    # --- messages ------------------------------------------------------------------------

    async def send(
        self,
        *,
        sender: str,
        key: SigningKey,
        message_type: str,
        payload: dict[str, Any],
        now: float,
        ttl: int = 300,
    ) -> dict[str, Any]:
        """Send one signed message; the payload of the custodian's verified answer."""
        custodian = await self.custodian()
        message = sign_message(
            build_message(
                sender=sender,
                receiver=custodian.agent_id,
                message_type=message_type,
                payload=payload,
                now=now,
                ttl=ttl,
            ),
            key,
        )
        body = dumps(message).encode("utf-8")
        try:
            response = await self._http.post(
                self.url + MESSAGES_PATH,
                content=body,
                headers={"Content-Type": "application/json", "X-OCF-Version": OCF_VERSION},
            )
        except httpx.HTTPError as exc:
            raise ConnectionFailed(f"{self.url}: {exc}") from None
        answer = self._verified(response, message["message_id"])
        if response.status_code == 200 and answer["message_type"] != "error":
            payload_out: dict[str, Any] = answer["payload"]
            return payload_out
        raise _refusal(response)

    def _verified(self, response: httpx.Response, message_id: str) -> dict[str, Any]:
        public_key = self._public_key
        if public_key is None:  # pragma: no cover - custodian() ran first
            raise ConnectionFailed(f"{self.url}: the custodian's key is not known yet")
        try:
            answer = loads_strict(response.content, max_size=MAX_MESSAGE_SIZE)
            schema.validate_envelope(answer)
            if not isinstance(answer, dict) or not isinstance(answer["payload"], dict):
                raise TypeError("not a plain message")
            verify_message_signature(answer, [public_key])
        except (OcpError, TypeError) as exc:
            raise ConnectionFailed(
                f"{self.url}: HTTP {response.status_code} without a valid signed answer: {exc}",
                status=response.status_code,
            ) from None
        correlation = answer.get("metadata", {}).get("correlation_id")
        reference = answer["payload"].get("reference_message_id")
        if message_id not in (correlation, reference) and response.status_code == 200:
            raise ConnectionFailed(f"{self.url}: the answer is for another message")
        return answer

    async def deposit(
        self,
        agent: AgentKey,
        record: dict[str, Any],
        recovery_public_key: bytes,
        *,
        expires_at: float | None = None,
    ) -> str:
        """Deposit one share record; the custodian's note (where it says until when)."""
        payload: dict[str, Any] = {
            "share": record,
            "recovery_public_key": b64url_encode(recovery_public_key),
        }
        if expires_at is not None:
            payload["expires_at"] = format_timestamp(expires_at)
        answer = await self.send(
            sender=agent.agent_id,
            key=agent.key,
            message_type="share_deposit",
            payload=payload,
            now=agent.now(),
        )
        return str(answer.get("note", ""))

    async def revoke(
        self, agent: AgentKey, *, agent_id: str, share_id: str, fingerprint: str
    ) -> str:
        """Have the custodian delete the share ``share_id`` of key ``fingerprint``."""
        now = agent.now()
        answer = await self.send(
            sender=agent_id,
            key=agent.key,
            message_type="share_revoke",
            payload={
                "agent_id": agent_id,
                "share_id": share_id,
                "key_fingerprint": fingerprint,
                "revoked_at": format_timestamp(now),
            },
            now=now,
        )
        return str(answer.get("note", ""))

    async def request_share(
        self,
        *,
        agent_id: str,
        fingerprint: str,
        ephemeral: X25519KeyPair,
        recovery_key: SigningKey | None = None,
        recovery_key_id: str | None = None,
        approval_id: str | None = None,
        now: float,
    ) -> Share:
        """The custodian's share of key ``fingerprint``, opened with ``ephemeral``.

        With ``recovery_key`` the request (envelope and proof) is signed by
        it; without, it asks for the operator's approval and raises
        :class:`ApprovalPending` until the operator approved ``approval_id``.
        """
        custodian = await self.custodian()
        payload = recovery_request_payload(
            agent_id=agent_id,
            fingerprint=fingerprint,
            ephemeral=ephemeral,
            recovery_key=recovery_key,
            recovery_key_id=recovery_key_id,
            approval_id=approval_id,
        )
        # Without a recovery key nothing the custodian knows can sign the
        # envelope; a throwaway signing key fills the field.
        signer = recovery_key if recovery_key is not None else SigningKey.generate()
        answer = await self.send(
            sender=agent_id,
            key=signer,
            message_type="recovery_request",
            payload=payload,
            now=now,
        )
        return open_share_response(
            answer, ephemeral=ephemeral, fingerprint=fingerprint, custodian=custodian
        )


def _refusal(response: httpx.Response) -> CustodianRefused:
    """The custodian's ``error`` message (its signature already checked) as an exception."""
    generic = http_error(response)
    pending = generic.details.get("reason") == "approval_pending"
    kind = ApprovalPending if pending else CustodianRefused
    return kind(
        generic.message,
        code=generic.code,
        details=generic.details,
        status=generic.status,
        retry_after=generic.retry_after,
    )
