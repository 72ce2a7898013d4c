"""Checks of the recovery custodian (OCP §8.3, D9): deposits, revocations, recoveries.

The custodian under test (``--custodian``) is reached as an agent operator
reaches one: ``GET /ocp/v1/custodian`` gives its agent id and Ed25519 public
key (the id must derive from the key, D4; the X25519 key that shares are
sealed to follows from it), and OCPUMF messages go to ``POST
/ocp/v1/messages``, each answered at once by a message the custodian signs.

Each check registers fresh probe agents at the target's registry (the
custodian looks a depositor's keys up there), each with a recovery key in its
DID document (``#recovery-key-1``), and deals each agent's signing key itself:
three shares, threshold 2, share 2 sealed to the custodian under test, shares
1 and 3 to two made-up custodians that receive nothing. The suite keeps all
three, so it knows what the custodian holds and can rebuild the key from the
share it gets back. Everything is built, sealed and signed with ``ocpd.proto``.

What the checks rely on beyond the words of OCP, as ocpd does it
(``docs/recovery.md``; ``docs/decisions.md``, entries 143-158):

* deposits and revocations are signed by an active key of the agent, a
  ``recovery_request`` (envelope and proof) by the recovery key deposited;
* an accepted request gets HTTP 200 and a message signed by the custodian
  (``ack``, or ``recovery_share_response`` with the share sealed to the
  request's ephemeral key, entry 145) whose ``metadata.correlation_id`` is the
  request's id, addressed to the requesting agent; a refusal is its signed
  ``error`` message with the status of its code (D6); which agent it is
  addressed to is not checked, since a request that breaks the schema may
  not say well enough who sent it;
* codes: OCP-400 for parameters out of range, OCP-401 for a wrong proof,
  OCP-404 after a revocation; OCP names none for a second share of one key
  (OCP-400 and OCP-403 are taken; ocpd: OCP-403 ``share_exists``) nor for an
  expired one (OCP-404 and OCP-403); the detail says which came;
* clocks agree to within :data:`EXPIRY_GRACE`: a share asked to live
  :data:`SHARE_LIFETIME` seconds is asked for that much after it expired.

The six checks take about 7 s against a local ocpd, 6 of them waiting for a
share of ``OCP-FULL-CUST-004`` to expire.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import trio

from conformance.checks import Answer, Outcome, TargetRegistry, Unexpected, checked, compact
from conformance.collab import code_status
from conformance.transport import describe, node_error_code
from ocpd.proto import schema, shamir
from ocpd.proto.crypto import SigningKey, X25519KeyPair, ed25519_pk_to_x25519
from ocpd.proto.diddoc import build_did_document
from ocpd.proto.encoding import b64url_decode, b64url_encode, format_timestamp
from ocpd.proto.envelope import (
    build_message,
    encrypt_payload,
    sign_message,
    verify_message_signature,
)
from ocpd.proto.errors import OcpError
from ocpd.proto.ids import derive_agent_id, key_fingerprint, parse_agent_id
from ocpd.proto.recovery import (
    Custodian,
    make_share_records,
    open_share_response,
    recover_key,
    recovery_request_payload,
)
from ocpd.proto.signing import sign_artifact

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from conformance.checks import Check, Component, Probe, ProbeAgent

__all__ = [
    "CHECKS",
    "EXPIRY_GRACE",
    "SHARE_LIFETIME",
    "CustodianIdentity",
    "Depositor",
    "answer_problems",
    "deal",
    "identity_problems",
    "share_problems",
]

MESSAGES_PATH: Final = "/ocp/v1/messages"
INFO_PATH: Final = "/ocp/v1/custodian"
#: The suite's deal: share TARGET_INDEX of TOTAL_SHARES, any THRESHOLD of which rebuild the key.
THRESHOLD: Final = 2
TOTAL_SHARES: Final = 3
TARGET_INDEX: Final = 2
#: Seconds the short-lived share of OCP-FULL-CUST-004 is asked to live.
SHARE_LIFETIME: Final = 4
#: How long after its expires_at that share is asked for (clocks may differ that much).
EXPIRY_GRACE: Final = 2.0
#: OCP §8.3.2: 2 <= threshold, 3 <= total_shares <= 255. (what, threshold, total_shares)
BAD_PARAMETERS: Final = (
    ("threshold 1", 1, 3),
    ("threshold 0", 0, 3),
    ("total_shares 2", 2, 2),
    ("total_shares 256", 2, 256),
)
#: OCP names no code for a second share of one key.
SECOND_SHARE_CODES: Final = ("OCP-400", "OCP-403")
#: A recovery_request for a share that has expired.
EXPIRED_CODES: Final = ("OCP-404", "OCP-403")


# --- what comes over the wire ----------------------------------------------------------------

#: OCP codes a refusal may carry.
Codes = tuple[str, ...]


@dataclass(frozen=True)
class CustodianIdentity:
    """The custodian's service agent: its id and Ed25519 public key."""

    agent_id: str
    public_key: bytes

    @property
    def sealing(self) -> Custodian:
        """The custodian as a dealing agent sees it (its X25519 key)."""
        return Custodian(self.agent_id, ed25519_pk_to_x25519(self.public_key))


def identity_problems(answer: Answer) -> tuple[list[str], CustodianIdentity | None]:
    """What is wrong with a ``GET /ocp/v1/custodian`` answer; the identity when nothing is."""
    body = answer.body
    if answer.status != 200 or not isinstance(body, dict):
        return [f"{describe(answer)}, expected HTTP 200 with a JSON object"], None
    agent_id, encoded = body.get("agent_id"), body.get("public_key")
    try:
        network, _ = parse_agent_id(agent_id)
        public_key = b64url_decode(encoded, field="public_key", length=32)
    except OcpError as exc:
        return [f"no agent_id and public_key ({exc})"], None
    if derive_agent_id(public_key, network) != agent_id:
        return [f"agent_id {agent_id} does not derive from public_key (D4)"], None
    return [], CustodianIdentity(str(agent_id), public_key)


def answer_problems(
    answer: Answer, custodian: CustodianIdentity, request: Mapping[str, Any], wanted: str | Codes
) -> list[str]:
    """What keeps ``answer`` from being the custodian's signed answer to ``request``.

    ``wanted`` is a message type (an accepted request: HTTP 200, the answer
    correlated to it) or the OCP codes its refusal may carry (an ``error``
    message with the status of its code, D6).
    """
    kind, code = (wanted, None) if isinstance(wanted, str) else ("error", node_error_code(answer))
    if isinstance(wanted, str) and answer.status != 200:
        return [f"{describe(answer)}, expected HTTP 200 with a signed {wanted}"]
    if not isinstance(wanted, str) and (code not in wanted or answer.status != code_status(code)):
        shown = " or ".join(f"HTTP {code_status(c)} {c}" for c in wanted)
        return [f"{describe(answer)}, expected {shown}"]
    body = answer.body
    try:
        schema.validate_envelope(body)
    except OcpError as exc:
        return [f"the answer is not an OCPUMF message ({exc})"]
    problems = []
    if body["message_type"] != kind:
        problems.append(f"the answer is a {body['message_type']}, not a {kind}")
    if body["sender"]["agent_id"] != custodian.agent_id:
        problems.append(f"the answer is sent by {body['sender']['agent_id']}, not the custodian")
    # A refusal names no receiver the suite could insist on (see the module docstring).
    if kind != "error" and body["receiver"]["agent_id"] != request["sender"]["agent_id"]:
        problems.append("the answer is addressed to another agent than the request's sender")
    try:
        verify_message_signature(body, [custodian.public_key])
    except OcpError:
        problems.append("the answer's signature does not verify under the custodian's key")
    payload = body["payload"]
    if kind == "error":
        reference = payload.get("reference_message_id")
        if reference not in (None, request["message_id"]):
            problems.append(f"the refusal's reference_message_id {reference!r} is another's")
        return problems
    metadata = body.get("metadata")
    correlation = metadata.get("correlation_id") if isinstance(metadata, dict) else None
    if correlation != request["message_id"]:
        problems.append(f"metadata.correlation_id is {correlation!r}, not the request's id")
    if kind != "ack" and not isinstance(payload, dict):
        problems.append(f"the {kind} has no plain payload object")
    return problems


# --- the suite as an agent operator ------------------------------------------------------------


@dataclass(frozen=True)
class Depositor:
    """A registered probe agent, its recovery key and the deal of its signing key."""

    agent: ProbeAgent
    recovery: SigningKey
    #: Every record and share of the deal, in index order; share TARGET_INDEX is the target's.
    records: tuple[dict[str, Any], ...]
    shares: tuple[shamir.Share, ...]

    @property
    def fingerprint(self) -> str:
        return key_fingerprint(self.agent.key.public_key)

    @property
    def record(self) -> dict[str, Any]:
        return self.records[TARGET_INDEX - 1]


def deal(
    agent: ProbeAgent, custodian: Custodian, *, created_at: float
) -> tuple[tuple[dict[str, Any], ...], tuple[shamir.Share, ...]]:
    """Share records of ``agent``'s key, share TARGET_INDEX for ``custodian``, and the shares.

    The other shares go to custodians made up here. ``make_share_records``
    draws the polynomial's coefficients first (``ocpd.proto.recovery``), so
    splitting again with those bytes gives the very shares it sealed.
    """
    others = [SigningKey.generate() for _ in range(TOTAL_SHARES - 1)]
    custodians = [
        Custodian(derive_agent_id(k.public_key, agent.network), k.x25519_public_key())
        for k in others
    ]
    custodians.insert(TARGET_INDEX - 1, custodian)
    draws: list[bytes] = []

    def random(size: int) -> bytes:
        drawn = os.urandom(size)
        draws.append(drawn)
        return drawn

    records = make_share_records(
        agent.key,
        agent_id=agent.agent_id,
        custodians=custodians,
        threshold=THRESHOLD,
        created_at=format_timestamp(created_at),
        random=random,
    )
    shares = shamir.split(agent.key.seed(), THRESHOLD, TOTAL_SHARES, random=lambda _: draws[0])
    return tuple(records), tuple(shares)


def share_problems(
    payload: Mapping[str, Any],
    depositor: Depositor,
    ephemeral: X25519KeyPair,
    custodian: CustodianIdentity,
) -> tuple[list[str], shamir.Share | None]:
    """What is wrong with a ``recovery_share_response`` payload; the share when it opens.

    It must name the agent, open with the request's ephemeral key, be the
    share deposited (index and bytes) and, with the shares the suite kept,
    rebuild the agent's key.
    """
    problems = []
    if payload.get("agent_id") != depositor.agent.agent_id:
        problems.append(f"the response names agent {payload.get('agent_id')!r}")
    try:
        share = open_share_response(
            dict(payload),
            ephemeral=ephemeral,
            fingerprint=depositor.fingerprint,
            custodian=custodian.sealing,
        )
    except OcpError as exc:
        return [*problems, f"it does not open with the request's ephemeral key ({exc})"], None
    if share.index != TARGET_INDEX:
        problems.append(f"share_index {share.index}, but share {TARGET_INDEX} was deposited")
    elif share.data != depositor.shares[TARGET_INDEX - 1].data:
        problems.append(f"share {TARGET_INDEX} opens, but its bytes are not those deposited")
    kept = [s for s in depositor.shares if s.index != share.index][: THRESHOLD - 1]
    try:
        recover_key([share, *kept], threshold=THRESHOLD, fingerprint=depositor.fingerprint)
    except OcpError:
        problems.append("with a share the suite kept it does not rebuild the agent's key")
    return problems, share


def _prefixed(what: str, problems: Sequence[str]) -> list[str]:
    return [f"{what}: {p}" for p in problems]


@dataclass(frozen=True)
class TargetCustodian:
    """The custodian under test, used by probe agents registered at the target's registry."""

    probe: Probe
    component: Component
    identity: CustodianIdentity
    registry: TargetRegistry

    @classmethod
    async def open(cls, probe: Probe) -> TargetCustodian:
        component = probe.role("custodian")
        answer = Answer.of(await probe.get(component, INFO_PATH))
        problems, identity = identity_problems(answer)
        if identity is None:
            raise Unexpected(f"GET {INFO_PATH}: {'; '.join(problems)}")
        return cls(probe, component, identity, await TargetRegistry.open(probe))

    async def depositor(self) -> Depositor:
        """A fresh agent registered with its recovery key, and a deal of its key."""
        agent = self.registry.agent()
        recovery = SigningKey.generate()
        document = build_did_document(
            agent.key.public_key, network=agent.network, recovery_public_key=recovery.public_key
        )
        registration = {"record": agent.record(), "did_document": document}
        answer = await self.registry.call("POST", "/agents", registration, agent=agent)
        if answer.status not in (200, 201):
            raise Unexpected(f"registering a probe agent with a recovery key: {answer.describe()}")
        records, shares = deal(agent, self.identity.sealing, created_at=time.time())
        return Depositor(agent, recovery, records, shares)

    def message(
        self, by: Depositor, key: SigningKey, kind: str, payload: Any, encrypted: bool = False
    ) -> dict[str, Any]:
        """A message of ``by`` signed by ``key``, its payload encrypted (D5) if asked."""
        receiver = self.identity.agent_id
        sender, now = by.agent.agent_id, time.time()
        unsigned = build_message(
            sender=sender, receiver=receiver, message_type=kind, payload=payload, now=now
        )
        if encrypted:
            unsigned = encrypt_payload(unsigned, self.identity.sealing.x25519_public_key)
        return sign_message(unsigned, key)

    def deposit(
        self,
        depositor: Depositor,
        record: Mapping[str, Any] | None = None,
        *,
        expires_at: float | None = None,
        encrypted: bool = False,
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "share": dict(depositor.record if record is None else record),
            "recovery_public_key": b64url_encode(depositor.recovery.public_key),
        }
        if expires_at is not None:
            payload["expires_at"] = format_timestamp(expires_at)
        return self.message(depositor, depositor.agent.key, "share_deposit", payload, encrypted)

    def revoke(self, depositor: Depositor, *, key: SigningKey | None = None) -> dict[str, Any]:
        payload = {
            "agent_id": depositor.agent.agent_id,
            "share_id": depositor.record["share_id"],
            "key_fingerprint": depositor.fingerprint,
            "revoked_at": format_timestamp(time.time()),
        }
        return self.message(depositor, key or depositor.agent.key, "share_revoke", payload)

    def recovery(
        self,
        depositor: Depositor,
        ephemeral: X25519KeyPair,
        *,
        key: SigningKey | None = None,
        proved_for: X25519KeyPair | None = None,
    ) -> dict[str, Any]:
        """A recovery_request proved and signed by ``key`` (the recovery key by default).

        ``proved_for``: the proof is made for that ephemeral key, not the one sent.
        """
        signer = key or depositor.recovery
        agent_id = depositor.agent.agent_id
        payload = recovery_request_payload(
            agent_id=agent_id,
            fingerprint=depositor.fingerprint,
            ephemeral=proved_for or ephemeral,
            recovery_key=signer,
            recovery_key_id=f"{agent_id}#recovery-key-1",
        )
        payload["ephemeral_public_key"] = b64url_encode(ephemeral.public_key)
        return self.message(depositor, signer, "recovery_request", payload)

    async def post(self, message: Mapping[str, Any]) -> Answer:
        headers = {"Content-Type": "application/json", "X-OCF-Version": "1.0"}
        response = await self.probe.request(
            self.component, "POST", MESSAGES_PATH, compact(message), headers
        )
        return Answer.of(response)

    async def expect(
        self, problems: list[str], what: str, request: Mapping[str, Any], wanted: str | Codes
    ) -> Answer:
        """POST ``request``; add to ``problems`` what keeps the answer from being the
        custodian's signed message of type ``wanted``, or its refusal with one of ``wanted``."""
        answer = await self.post(request)
        problems += _prefixed(what, answer_problems(answer, self.identity, request, wanted))
        return answer

    async def deposited(self, depositor: Depositor, *, expires_at: float | None = None) -> None:
        """Deposit the target's share; anything but its signed ack ends the check."""
        request = self.deposit(depositor, expires_at=expires_at)
        problems = answer_problems(await self.post(request), self.identity, request, "ack")
        if problems:
            raise Unexpected(f"a valid share_deposit: {'; '.join(problems)}")

    async def recover(self, depositor: Depositor) -> tuple[list[str], shamir.Share | None]:
        """A valid recovery_request: what is wrong with the answer, and the share it returned."""
        ephemeral = X25519KeyPair.generate()
        request = self.recovery(depositor, ephemeral)
        answer = await self.post(request)
        problems = answer_problems(answer, self.identity, request, "recovery_share_response")
        if problems:
            return problems, None
        return share_problems(answer.body["payload"], depositor, ephemeral, self.identity)


# --- the checks --------------------------------------------------------------------------------


@checked
async def check_deposit(probe: Probe) -> Outcome:
    """OCP-FULL-CUST-001: a sealed share is taken with a signed ack, a D5-encrypted one too."""
    target = await TargetCustodian.open(probe)
    problems: list[str] = []
    for what, encrypted in (
        ("a share_deposit", False),
        ("a share_deposit with its payload encrypted to the custodian (D5)", True),
    ):
        request = target.deposit(await target.depositor(), encrypted=encrypted)
        await target.expect(problems, what, request, "ack")
    return Outcome.of(
        problems,
        f"share {TARGET_INDEX} of {TOTAL_SHARES} sealed to {target.identity.agent_id}: HTTP 200 "
        "ack signed by it for the deposit, also with the payload encrypted to it (D5)",
    )


@checked
async def check_one_share_per_key(probe: Probe) -> Outcome:
    """OCP-FULL-CUST-002: a second share of the same key is refused; the first stays held."""
    target = await TargetCustodian.open(probe)
    depositor = await target.depositor()
    await target.deposited(depositor)
    records, _ = deal(depositor.agent, target.identity.sealing, created_at=time.time())
    second = records[TARGET_INDEX - 1]
    problems: list[str] = []
    answers = [
        await target.expect(problems, what, request, SECOND_SHARE_CODES)
        for what, request in (
            ("the same share again", target.deposit(depositor)),
            ("another share of the key (a second deal)", target.deposit(depositor, second)),
        )
    ]
    found, _ = await target.recover(depositor)
    problems += _prefixed("a recovery_request after the second deposits", found)
    got = ", ".join(describe(a) for a in answers)
    return Outcome.of(problems, f"second deposits of one key refused ({got}); the first is served")


@checked
async def check_share_parameters(probe: Probe) -> Outcome:
    """OCP-FULL-CUST-003: threshold below 2, total_shares outside 3-255 are refused (OCP-400)."""
    target = await TargetCustodian.open(probe)
    depositor = await target.depositor()
    problems: list[str] = []
    for what, threshold, total in BAD_PARAMETERS:
        changed = {**depositor.record, "threshold": threshold, "total_shares": total}
        request = target.deposit(depositor, sign_artifact(changed, depositor.agent.key))
        await target.expect(problems, f"a record with {what}", request, ("OCP-400",))
    # The record as dealt is taken after them: they were refused for their parameters
    # alone, and none of them was stored (that would make this one a second share).
    request = target.deposit(depositor)
    await target.expect(problems, "the record as dealt (2 of 3), after them", request, "ack")
    shown = ", ".join(what for what, _, _ in BAD_PARAMETERS)
    return Outcome.of(problems, f"{shown} refused with OCP-400; the record as dealt is acked")


@checked
async def check_share_deletion(probe: Probe) -> Outcome:
    """OCP-FULL-CUST-004: a signed share_revoke deletes the share, and so does its expiry."""
    target = await TargetCustodian.open(probe)
    problems: list[str] = []
    expiring = await target.depositor()
    expires_at = math.ceil(time.time()) + SHARE_LIFETIME
    await target.deposited(expiring, expires_at=expires_at)
    found, _ = await target.recover(expiring)
    problems += _prefixed(f"a recovery_request before its expires_at ({SHARE_LIFETIME} s)", found)
    # While it lives: a forged share_revoke leaves a share, the agent's deletes it.
    depositor = await target.depositor()
    await target.deposited(depositor)
    what = "a share_revoke signed by a key the agent does not have"
    forged = target.revoke(depositor, key=SigningKey.generate())
    answer = await target.expect(problems, what, forged, ("OCP-401", "OCP-403"))
    found, _ = await target.recover(depositor)
    problems += _prefixed("a recovery_request after the forged share_revoke", found)
    await target.expect(problems, "the agent's share_revoke", target.revoke(depositor), "ack")
    what = "a recovery_request after the share_revoke"
    request = target.recovery(depositor, X25519KeyPair.generate())
    revoked = await target.expect(problems, what, request, ("OCP-404",))
    await trio.sleep(max(0.0, expires_at + EXPIRY_GRACE - time.time()))
    what = f"a recovery_request {EXPIRY_GRACE:g} s after its expires_at"
    request = target.recovery(expiring, X25519KeyPair.generate())
    expired = await target.expect(problems, what, request, EXPIRED_CODES)
    return Outcome.of(
        problems,
        f"a forged share_revoke refused ({describe(answer)}); after the signed one "
        f"{describe(revoked)}; {EXPIRY_GRACE:g} s after a {SHARE_LIFETIME} s expires_at "
        f"{describe(expired)}",
    )


@checked
async def check_recovery(probe: Probe) -> Outcome:
    """OCP-FULL-CUST-005: a request proved by the recovery key gets the share, sealed to it."""
    target = await TargetCustodian.open(probe)
    depositor = await target.depositor()
    await target.deposited(depositor)
    problems, share = await target.recover(depositor)
    return Outcome.of(
        problems,
        f"share {share.index if share else '?'} of {TOTAL_SHARES} returned sealed to the "
        "request's ephemeral key, signed by the custodian: the share deposited, and with "
        "one kept share it rebuilds the agent's key",
    )


@checked
async def check_bad_proofs(probe: Probe) -> Outcome:
    """OCP-FULL-CUST-006: recovery requests without a valid recovery-key proof get OCP-401."""
    target = await TargetCustodian.open(probe)
    depositor = await target.depositor()
    await target.deposited(depositor)
    cases = (
        ("signed and proved by another key than the recovery key", SigningKey.generate(), None),
        ("signed and proved by the agent's signing key", depositor.agent.key, None),
        ("a recovery key proof for another ephemeral key", None, X25519KeyPair.generate()),
    )
    problems: list[str] = []
    for what, key, proved_for in cases:
        ephemeral = X25519KeyPair.generate()
        request = target.recovery(depositor, ephemeral, key=key, proved_for=proved_for)
        await target.expect(problems, what, request, ("OCP-401",))
    found, _ = await target.recover(depositor)
    problems += _prefixed("the request proved by the recovery key, after them", found)
    return Outcome.of(
        problems,
        "another key, the signing key and a proof for another ephemeral key refused with "
        "OCP-401; the recovery key's request then gets the share",
    )


#: Requirement id -> the check against the target that covers it.
CHECKS: Final[dict[str, Check]] = {
    "OCP-FULL-CUST-001": check_deposit,
    "OCP-FULL-CUST-002": check_one_share_per_key,
    "OCP-FULL-CUST-003": check_share_parameters,
    "OCP-FULL-CUST-004": check_share_deletion,
    "OCP-FULL-CUST-005": check_recovery,
    "OCP-FULL-CUST-006": check_bad_proofs,
}
