"""The recovery custodian checks of the conformance suite (conformance/custodian.py).

End to end: the real daemon through ``conformance.local``'s harness (TLS from
a throwaway CA, ports 0, a real custodian key file), every check through
:func:`conformance.suite.run_suite` at ``--level full``: each passes.

Misbehaving custodians: :class:`CustodianUnderTest` is ocpd's own
:class:`~ocpd.custodian.service.CustodianService` over a SQLite file, in
process, behind a small ASGI app served by hypercorn on a loopback port
(plaintext), with a registry that takes every registration. Every check passes
against it as it is; each *fault* makes it break one rule (a helper of the
service replaced, or an answer the app makes up), and the check that covers
that rule must fail, saying why. The expiry check is told to wait 1 s for
its share here instead of 4 s.

Unit tests cover the validators with hand-made answers.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from prometheus_client import CollectorRegistry

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from conformance import custodian, suite  # noqa: E402
from conformance.checks import Answer, Probe, ProbeAgent  # noqa: E402
from conformance.client import suite_ssl_context  # noqa: E402
from conformance.custodian import (  # noqa: E402
    CHECKS,
    EXPIRY_GRACE,
    SHARE_LIFETIME,
    CustodianIdentity,
    Depositor,
    answer_problems,
    deal,
    identity_problems,
    share_problems,
)
from conformance.local import ocpd_process, targets_from_ready, write_tls_files  # noqa: E402
from conformance.requirements import for_level  # noqa: E402
from conformance.suite import SuiteConfig, Targets, check_deadline, run_suite  # noqa: E402

from fake_node import answer_lifespan, read_body, send_json, serve_plain  # noqa: E402
from ocpd.config import CustodianSection  # noqa: E402
from ocpd.custodian import service as service_module  # noqa: E402
from ocpd.custodian import store  # noqa: E402
from ocpd.custodian.service import CustodianService  # noqa: E402
from ocpd.custodian.store import DatabaseKey  # noqa: E402
from ocpd.node.directory import AgentInfo  # noqa: E402
from ocpd.proto.crypto import DecryptionFailed, SigningKey, X25519KeyPair  # noqa: E402
from ocpd.proto.diddoc import parse_did_document  # noqa: E402
from ocpd.proto.encoding import b64url_encode  # noqa: E402
from ocpd.proto.envelope import build_error_message, build_message, sign_message  # noqa: E402
from ocpd.proto.errors import ForbiddenError  # noqa: E402
from ocpd.proto.ids import derive_agent_id  # noqa: E402
from ocpd.proto.recovery import seal_share_response  # noqa: E402
from ocpd.proto.shamir import Share  # noqa: E402
from ocpd.storage import open_database  # noqa: E402

#: Start-up of a local daemon, the six checks and shutdown, with a wide margin.
DEADLINE = 60
NETWORK = "testnet"
CUSTODIAN = set(CHECKS)
#: How long the expiry check lets its share live, and waits after, against the fake.
QUICK_LIFETIME = 1
QUICK_GRACE = 1.0


# --- against the real daemon -------------------------------------------------------------------


@pytest.fixture
def custodian_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """``run_suite`` runs the custodian requirements only (the others are tested elsewhere)."""
    monkeypatch.setattr(
        suite, "for_level", lambda level: tuple(r for r in for_level(level) if r.id in CUSTODIAN)
    )


@pytest.mark.usefixtures("custodian_only")
async def test_custodian_checks_pass_against_local_ocpd(tmp_path: Path) -> None:
    tls = write_tls_files(tmp_path / "tls")
    process = ocpd_process(tmp_path / "ocpd", tls=tls)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            ready = await nursery.start(process.run)
            targets = targets_from_ready(ready)
            report = await run_suite(SuiteConfig(targets=targets, level="full", ca_file=tls.ca))
            nursery.cancel_scope.cancel()
    assert process.returncode == 0
    results = {r.requirement.id: r for r in report.results}
    assert set(results) == CUSTODIAN == {f"OCP-FULL-CUST-00{n}" for n in range(1, 7)}
    for rid, result in results.items():
        assert result.status == "pass", (rid, result.detail)
    assert report.conformant
    # What ocpd answers, as the details report it (docs/recovery.md).
    assert "HTTP 200 ack signed by it" in results["OCP-FULL-CUST-001"].detail
    assert "(HTTP 403 OCP-403, HTTP 403 OCP-403)" in results["OCP-FULL-CUST-002"].detail
    deletion = results["OCP-FULL-CUST-004"]
    assert deletion.detail == (
        "a forged share_revoke refused (HTTP 401 OCP-401); after the signed one HTTP 404 "
        "OCP-404; 2 s after a 4 s expires_at HTTP 404 OCP-404"
    )
    # It waits for its share to expire, and not much longer.
    assert SHARE_LIFETIME <= deletion.duration_seconds < SHARE_LIFETIME + EXPIRY_GRACE + 4


def test_the_expiry_check_gets_a_longer_deadline() -> None:
    targets = Targets(node="https://n", registry="https://r", custodian="https://c")
    quick = SuiteConfig(targets=targets, check_timeout=3.0)
    assert check_deadline("OCP-FULL-CUST-004", quick) == SHARE_LIFETIME + EXPIRY_GRACE + 20
    assert check_deadline("OCP-FULL-CUST-005", quick) == 3.0
    assert set(CHECKS) <= set(suite.TARGET_CHECKS)


# --- against ocpd's custodian service, misbehaving on purpose ------------------------------------


class Clock:
    def now(self) -> float:
        return time.time()


class Directory:
    """The registry as the custodian sees it: every agent registered through the app."""

    def __init__(self) -> None:
        self.agents: dict[str, AgentInfo] = {}

    async def lookup(self, agent_id: str) -> AgentInfo | None:
        return self.agents.get(agent_id)


def _out_of_range(message: dict[str, Any]) -> bool:
    if message.get("message_type") != "share_deposit":
        return False
    share = message["payload"]["share"]
    return share["threshold"] < 2 or not 3 <= share["total_shares"] <= 255


class CustodianUnderTest:
    """A registry that takes every registration and ocpd's custodian service, as ASGI."""

    def __init__(
        self, service: CustodianService, key: SigningKey, directory: Directory, faults: set[str]
    ) -> None:
        self.service = service
        self.key = key
        self.directory = directory
        self.faults = faults

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        body = await read_body(receive)
        status, answer = await self.answer(scope["method"], scope["path"], body)
        await send_json(send, status, answer)

    async def answer(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        if path == "/ocp/v1/registry/info":
            return 200, {"mode": "centralized", "network": NETWORK}
        if (method, path) == ("POST", "/ocp/v1/registry/agents"):
            document = parse_did_document(json.loads(body)["did_document"])
            self.directory.agents[document.agent_id] = AgentInfo(
                agent_id=document.agent_id,
                keys=tuple(document.verification_keys()),
                level=1,
                active=True,
                domains=(),
            )
            return 201, {"agent_id": document.agent_id, "status": "active", "trust_level": 1}
        if path == "/ocp/v1/custodian":
            return 200, self.service.describe()
        if (method, path) == ("POST", "/ocp/v1/messages"):
            message = json.loads(body)
            if "takes-any-parameters" in self.faults and _out_of_range(message):
                return 200, self._ack(message)
            reply = await self.service.handle(body, "127.0.0.1")
            if "unsigned-answers" in self.faults:
                reply.message["sender"]["signature"] = b64url_encode(bytes(64))
            return reply.status, reply.message
        return 404, {"error_code": "OCP-404", "message": "not found"}

    def _ack(self, message: dict[str, Any]) -> dict[str, Any]:
        """An ack for ``message`` without looking at it, as a lenient custodian would."""
        ack = build_message(
            sender=self.service.agent_id,
            receiver=message["sender"]["agent_id"],
            message_type="ack",
            payload={"status": "processed"},
            now=time.time(),
            metadata={"correlation_id": message["message_id"]},
        )
        return sign_message(ack, self.key)


def _replace_shares(monkeypatch: pytest.MonkeyPatch) -> None:
    put = store.put_share

    def replacing(conn: Any, key: Any, record: dict[str, Any], *args: Any, **kw: Any) -> None:
        store.delete_share(conn, record["agent_id"], record["key_fingerprint"])
        put(conn, key, record, *args, **kw)

    monkeypatch.setattr(store, "put_share", replacing)


def _never_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    get = store.get_share
    monkeypatch.setattr(store, "get_share", lambda *args, now: get(*args, now=0.0))


def _wrong_share(monkeypatch: pytest.MonkeyPatch) -> None:
    seal = service_module.seal_share_response
    wrong = lambda share, **kw: seal(attrs.evolve(share, data=bytes(32)), **kw)  # noqa: E731
    monkeypatch.setattr(service_module, "seal_share_response", wrong)


def _no_proof_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_module, "verify_proof", lambda *args: None)
    monkeypatch.setattr(service_module, "verify_message_signature", lambda *args: b"")


def _refuse_encrypted(monkeypatch: pytest.MonkeyPatch) -> None:
    def undecryptable(*args: Any) -> dict[str, Any]:
        raise DecryptionFailed

    monkeypatch.setattr(service_module, "decrypt_payload", undecryptable)


#: Faults made by replacing a helper of the service (the others the app makes itself).
PATCHES: dict[str, Callable[[pytest.MonkeyPatch], None]] = {
    "replace-shares": _replace_shares,
    "never-expire": _never_expire,
    "revoke-keeps": lambda mp: mp.setattr(store, "delete_share", lambda *args: True),
    "wrong-share": _wrong_share,
    "no-proof-check": _no_proof_check,
    "refuse-encrypted": _refuse_encrypted,
}


@asynccontextmanager
async def custodian_under_test(tmp_path: Path, faults: set[str]) -> AsyncIterator[Probe]:
    database = await open_database(tmp_path / "custodian.db", "custodian")
    key, directory = SigningKey.generate(), Directory()
    service = CustodianService(
        database=database,
        clock=Clock(),  # type: ignore[arg-type]
        settings=CustodianSection(),
        key=key,
        network=NETWORK,
        database_key=DatabaseKey.generate(),
        directory=directory,  # type: ignore[arg-type]
        metrics_registry=CollectorRegistry(),
        clock_skew=60.0,
    )
    app = CustodianUnderTest(service, key, directory, faults)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(database.run)
        async with serve_plain(app) as url:
            targets = Targets(node=url, registry=url, custodian=url)
            yield Probe(targets.components(), suite_ssl_context(insecure=True), 5.0)
        database.close()
        nursery.cancel_scope.cancel()


@pytest.fixture
def quick_expiry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(custodian, "SHARE_LIFETIME", QUICK_LIFETIME)
    monkeypatch.setattr(custodian, "EXPIRY_GRACE", QUICK_GRACE)


async def _run(tmp_path: Path, rid: str, *faults: str) -> tuple[str, str]:
    async with custodian_under_test(tmp_path, set(faults)) as probe:
        with trio.fail_after(20):
            outcome = await CHECKS[rid](probe)
    return outcome.status, outcome.detail


@pytest.mark.usefixtures("quick_expiry")
@pytest.mark.parametrize("rid", sorted(CHECKS))
async def test_check_passes_against_ocpd_custodian_service(tmp_path: Path, rid: str) -> None:
    status, detail = await _run(tmp_path, rid)
    assert status == "pass", detail


FAULTS = [
    (
        "OCP-FULL-CUST-001",
        "refuse-encrypted",
        "a share_deposit with its payload encrypted to the custodian (D5): HTTP 400 OCP-400, "
        "expected HTTP 200 with a signed ack",
    ),
    (
        "OCP-FULL-CUST-001",
        "unsigned-answers",
        "a share_deposit: the answer's signature does not verify under the custodian's key",
    ),
    (
        "OCP-FULL-CUST-002",
        "replace-shares",
        "the same share again: HTTP 200, expected HTTP 400 OCP-400 or HTTP 403 OCP-403",
    ),
    (
        "OCP-FULL-CUST-003",
        "takes-any-parameters",
        "a record with threshold 1: HTTP 200, expected HTTP 400 OCP-400; a record with threshold 0",
    ),
    (
        "OCP-FULL-CUST-004",
        "revoke-keeps",
        "a recovery_request after the share_revoke: HTTP 200, expected HTTP 404 OCP-404",
    ),
    (
        "OCP-FULL-CUST-004",
        "never-expire",
        "a recovery_request 1 s after its expires_at: HTTP 200, expected HTTP 404 OCP-404 or "
        "HTTP 403 OCP-403",
    ),
    ("OCP-FULL-CUST-005", "wrong-share", "share 2 opens, but its bytes are not those deposited"),
    (
        "OCP-FULL-CUST-006",
        "no-proof-check",
        "signed and proved by another key than the recovery key: HTTP 200, expected HTTP 401",
    ),
]


@pytest.mark.usefixtures("quick_expiry")
@pytest.mark.parametrize(
    ("rid", "fault", "expected"), FAULTS, ids=[f"{rid}-{fault}" for rid, fault, _ in FAULTS]
)
async def test_check_fails_against_a_misbehaving_custodian(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rid: str, fault: str, expected: str
) -> None:
    if fault in PATCHES:
        PATCHES[fault](monkeypatch)
    status, detail = await _run(tmp_path, rid, fault)
    assert status == "fail", detail
    assert expected in detail, detail


async def test_an_unreachable_custodian_fails_every_check() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{unused.getsockname()[1]}"
    targets = Targets(node=url, registry=url, custodian=url)
    probe = Probe(targets.components(), suite_ssl_context(insecure=True), 1.0)
    for rid, check in CHECKS.items():
        outcome = await check(probe)
        assert outcome.status == "fail", rid
        assert outcome.detail.startswith("no answer ("), outcome.detail


# --- the validators, on hand-made answers ----------------------------------------------------

CUSTODIAN_KEY = SigningKey(b"\x41" * 32)
IDENTITY = CustodianIdentity(
    derive_agent_id(CUSTODIAN_KEY.public_key, NETWORK), CUSTODIAN_KEY.public_key
)
AGENT = ProbeAgent(NETWORK, SigningKey(b"\x42" * 32))


def _request() -> dict[str, Any]:
    unsigned = build_message(
        sender=AGENT.agent_id,
        receiver=IDENTITY.agent_id,
        message_type="share_revoke",
        payload={},
        now=time.time(),
    )
    return sign_message(unsigned, AGENT.key)


def _answer(
    request: dict[str, Any], status: int = 200, *, key: SigningKey = CUSTODIAN_KEY, **changes: Any
) -> Answer:
    metadata = changes.pop("metadata", {"correlation_id": request["message_id"]})
    message = build_message(
        sender=IDENTITY.agent_id,
        receiver=changes.pop("receiver", AGENT.agent_id),
        message_type=changes.pop("message_type", "ack"),
        payload=changes.pop("payload", {"status": "processed"}),
        now=time.time(),
        metadata=metadata,
    )
    return Answer(status, json.loads(json.dumps(sign_message(message, key))), {})


def _refusal(
    request: dict[str, Any], error: ForbiddenError, *, reference: str | None = None
) -> Answer:
    message = build_error_message(
        error,
        sender=IDENTITY.agent_id,
        receiver=AGENT.agent_id,
        now=time.time(),
        reference_message_id=reference or request["message_id"],
    )
    return Answer(403, json.loads(json.dumps(sign_message(message, CUSTODIAN_KEY))), {})


def test_identity_problems() -> None:
    good = {"agent_id": IDENTITY.agent_id, "public_key": b64url_encode(IDENTITY.public_key)}
    assert identity_problems(Answer(200, good, {})) == ([], IDENTITY)
    assert identity_problems(Answer(404, None, {}))[0] == [
        "HTTP 404, expected HTTP 200 with a JSON object"
    ]
    other = {**good, "agent_id": AGENT.agent_id}
    assert identity_problems(Answer(200, other, {})) == (
        [f"agent_id {AGENT.agent_id} does not derive from public_key (D4)"],
        None,
    )
    problems, found = identity_problems(Answer(200, {**good, "public_key": "AAAA"}, {}))
    assert found is None
    assert problems[0].startswith("no agent_id and public_key (")


def test_answer_problems() -> None:
    request = _request()
    assert answer_problems(_answer(request), IDENTITY, request, "ack") == []
    assert answer_problems(_answer(request, 202), IDENTITY, request, "ack") == [
        "HTTP 202, expected HTTP 200 with a signed ack"
    ]
    forged = _answer(request, key=SigningKey(b"\x43" * 32))
    assert answer_problems(forged, IDENTITY, request, "ack") == [
        "the answer's signature does not verify under the custodian's key"
    ]
    uncorrelated = _answer(request, metadata={"correlation_id": "msg-x"})
    assert answer_problems(uncorrelated, IDENTITY, request, "ack") == [
        "metadata.correlation_id is 'msg-x', not the request's id"
    ]
    elsewhere = _answer(request, receiver=IDENTITY.agent_id)
    assert answer_problems(elsewhere, IDENTITY, request, "ack") == [
        "the answer is addressed to another agent than the request's sender"
    ]
    assert answer_problems(_answer(request), IDENTITY, request, "recovery_share_response") == [
        "the answer is a ack, not a recovery_share_response"
    ]
    assert answer_problems(Answer(200, {"x": 1}, {}), IDENTITY, request, "ack")[0].startswith(
        "the answer is not an OCPUMF message ("
    )


def test_refusal_problems() -> None:
    request = _request()
    refused = _refusal(request, ForbiddenError("held", details={"reason": "share_exists"}))
    assert answer_problems(refused, IDENTITY, request, ("OCP-400", "OCP-403")) == []
    assert answer_problems(refused, IDENTITY, request, ("OCP-404",)) == [
        "HTTP 403 OCP-403, expected HTTP 404 OCP-404"
    ]
    assert answer_problems(_answer(request), IDENTITY, request, ("OCP-403",)) == [
        "HTTP 200, expected HTTP 403 OCP-403"
    ]
    mislabelled = Answer(400, refused.body, {})
    assert answer_problems(mislabelled, IDENTITY, request, ("OCP-403",)) == [
        "HTTP 400 OCP-403, expected HTTP 403 OCP-403"
    ]
    other = _refusal(request, ForbiddenError("held"), reference="msg-00000000-0000-0000-0000")
    assert answer_problems(other, IDENTITY, request, ("OCP-403",)) == [
        "the refusal's reference_message_id 'msg-00000000-0000-0000-0000' is another's"
    ]


def test_share_problems() -> None:
    records, shares = deal(AGENT, IDENTITY.sealing, created_at=time.time())
    depositor = Depositor(AGENT, SigningKey(b"\x44" * 32), records, shares)
    ephemeral = X25519KeyPair.generate()

    def response(share: Share, to: X25519KeyPair = ephemeral) -> dict[str, Any]:
        return seal_share_response(
            share,
            agent_id=AGENT.agent_id,
            fingerprint=depositor.fingerprint,
            custodian_key=CUSTODIAN_KEY,
            custodian_id=IDENTITY.agent_id,
            ephemeral_public_key=to.public_key,
        )

    held = shares[1]
    assert share_problems(response(held), depositor, ephemeral, IDENTITY) == ([], held)
    problems, _ = share_problems(response(shares[2]), depositor, ephemeral, IDENTITY)
    assert problems == ["share_index 3, but share 2 was deposited"]
    altered = Share(index=2, data=bytes(32))
    problems, _ = share_problems(response(altered), depositor, ephemeral, IDENTITY)
    assert problems == [
        "share 2 opens, but its bytes are not those deposited",
        "with a share the suite kept it does not rebuild the agent's key",
    ]
    other = response(held, X25519KeyPair.generate())
    problems, found = share_problems(other, depositor, ephemeral, IDENTITY)
    assert found is None
    assert problems[0].startswith("it does not open with the request's ephemeral key (")
    # The deal kept the shares it sealed: any two rebuild the key.
    assert [s.index for s in shares] == [1, 2, 3]
    assert [r["share_index"] for r in records] == [1, 2, 3]
