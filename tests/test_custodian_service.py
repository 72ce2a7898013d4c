"""The custodian's message handling (ocpd.custodian.service) over a real SQLite file.

Messages go in as the bytes a client POSTs; answers come back as the signed
messages the HTTP route returns. The registry is a table of agents, the
wall clock is moved by hand, and the sweeper runs under trio's autojump clock.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from prometheus_client import CollectorRegistry

from ocpd.config import CustodianSection
from ocpd.custodian.service import MAX_PENDING, CustodianService, Reply
from ocpd.custodian.store import DatabaseKey
from ocpd.node.directory import AgentInfo
from ocpd.proto.crypto import SigningKey, X25519KeyPair
from ocpd.proto.encoding import b64url_encode, format_timestamp
from ocpd.proto.envelope import build_message, sign_message, verify_message_signature
from ocpd.proto.errors import ForbiddenError
from ocpd.proto.ids import derive_agent_id, key_fingerprint
from ocpd.proto.recovery import (
    Custodian,
    make_share_records,
    open_share_response,
    recovery_request_payload,
)
from ocpd.proto.taxonomy import Taxonomy
from ocpd.storage import open_database

NETWORK = "testnet"
NOW = 1_790_000_000.0
DAY = 86_400.0
CUSTODIAN_KEY = SigningKey(b"\x10" * 32)
OTHER_CUSTODIANS = [SigningKey(bytes([n]) * 32) for n in (0x11, 0x12)]


@attrs.define
class Agent:
    key: SigningKey
    recovery: SigningKey

    @property
    def agent_id(self) -> str:
        return derive_agent_id(self.key.public_key, NETWORK)

    @property
    def fingerprint(self) -> str:
        return key_fingerprint(self.key.public_key)

    @property
    def recovery_id(self) -> str:
        return f"{self.agent_id}#recovery-key-1"


ALICE = Agent(SigningKey(b"\x21" * 32), SigningKey(b"\x22" * 32))
BOB = Agent(SigningKey(b"\x31" * 32), SigningKey(b"\x32" * 32))


class Clock:
    def __init__(self) -> None:
        self.value = NOW

    def now(self) -> float:
        return self.value


class Directory:
    """The registry as the custodian sees it: agents and their active keys."""

    taxonomy = Taxonomy.load_default()

    def __init__(self) -> None:
        self.agents: dict[str, AgentInfo] = {}

    def add(self, agent: Agent, *, active: bool = True) -> None:
        self.agents[agent.agent_id] = AgentInfo(
            agent_id=agent.agent_id,
            keys=(agent.key.public_key,),
            level=1,
            active=active,
            domains=(),
        )

    async def lookup(self, agent_id: str) -> AgentInfo | None:
        return self.agents.get(agent_id)


@attrs.define
class World:
    service: CustodianService
    clock: Clock
    directory: Directory
    metrics: CollectorRegistry
    path: Path

    @property
    def custodian(self) -> Custodian:
        return Custodian(self.service.agent_id, CUSTODIAN_KEY.x25519_public_key())

    def message(
        self,
        sender: str,
        kind: str,
        payload: dict[str, Any],
        key: SigningKey,
        *,
        at: float | None = None,
        receiver: str | None = None,
    ) -> bytes:
        message = build_message(
            sender=sender,
            receiver=receiver or self.service.agent_id,
            message_type=kind,
            payload=payload,
            now=self.clock.value if at is None else at,
        )
        return json.dumps(sign_message(message, key)).encode()

    async def post(self, raw: bytes) -> Reply:
        reply = await self.service.handle(raw, "192.0.2.7")
        # Every answer is signed by the custodian's service agent.
        verify_message_signature(reply.message, [CUSTODIAN_KEY.public_key])
        return reply

    def records(self, agent: Agent, custodians: list[Custodian] | None = None) -> list[Any]:
        others = [
            Custodian(derive_agent_id(k.public_key, NETWORK), k.x25519_public_key())
            for k in OTHER_CUSTODIANS
        ]
        return make_share_records(
            agent.key,
            agent_id=agent.agent_id,
            custodians=custodians or [self.custodian, *others],
            threshold=2,
            created_at=format_timestamp(self.clock.value),
        )

    async def deposit(
        self, agent: Agent, record: dict[str, Any] | None = None, **extra: Any
    ) -> Reply:
        payload = {
            "share": record or self.records(agent)[0],
            "recovery_public_key": b64url_encode(agent.recovery.public_key),
            **extra,
        }
        return await self.post(self.message(agent.agent_id, "share_deposit", payload, agent.key))

    def request(
        self,
        agent: Agent,
        ephemeral: X25519KeyPair,
        *,
        recovery: SigningKey | None = None,
        approval_id: str | None = None,
        operator: bool = False,
        at: float | None = None,
    ) -> bytes:
        signer = recovery or agent.recovery
        payload = recovery_request_payload(
            agent_id=agent.agent_id,
            fingerprint=agent.fingerprint,
            ephemeral=ephemeral,
            recovery_key=None if operator else signer,
            recovery_key_id=None if operator else agent.recovery_id,
            approval_id=approval_id,
        )
        envelope_key = SigningKey.generate() if operator else signer
        return self.message(agent.agent_id, "recovery_request", payload, envelope_key, at=at)

    def counted(self, kind: str, outcome: str) -> float:
        value = self.metrics.get_sample_value(
            "ocp_custodian_requests_total", {"type": kind, "outcome": outcome}
        )
        return value or 0.0

    def audit(self) -> list[tuple[str, str, dict[str, Any]]]:
        with sqlite3.connect(self.path) as conn:
            rows = conn.execute("SELECT event, outcome, detail FROM audit ORDER BY seq").fetchall()
        return [(event, outcome, json.loads(detail)) for event, outcome, detail in rows]


def refused(reply: Reply, status: int, reason: str | None = None) -> dict[str, Any]:
    assert reply.message["message_type"] == "error", reply.message
    assert reply.status == status, reply.message
    payload: dict[str, Any] = reply.message["payload"]
    assert payload["error_code"] == f"OCP-{status}"
    if reason is not None:
        assert payload["details"]["reason"] == reason, payload
    return payload


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    path = tmp_path / "custodian.db"
    database = await open_database(path, "custodian")
    directory = Directory()
    directory.add(ALICE)
    directory.add(BOB)
    metrics = CollectorRegistry()
    clock = Clock()
    service = CustodianService(
        database=database,
        clock=clock,  # type: ignore[arg-type]
        settings=CustodianSection(requests_per_minute=1000),
        key=CUSTODIAN_KEY,
        network=NETWORK,
        database_key=DatabaseKey.generate(),
        directory=directory,
        metrics_registry=metrics,
        clock_skew=60.0,
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(database.run)
        yield World(service, clock, directory, metrics, path)
        database.close()
        nursery.cancel_scope.cancel()


async def test_deposit_then_recover_with_the_recovery_key(world: World) -> None:
    record = world.records(ALICE)[0]
    reply = await world.deposit(ALICE, record)
    assert reply.status == 200 and reply.message["message_type"] == "ack"
    assert reply.message["receiver"]["agent_id"] == ALICE.agent_id
    assert "stored until" in reply.message["payload"]["note"]
    assert world.metrics.get_sample_value("ocp_recovery_shares_stored") == 1
    ephemeral = X25519KeyPair.generate()
    reply = await world.post(world.request(ALICE, ephemeral))
    assert reply.status == 200 and reply.message["message_type"] == "recovery_share_response"
    share = open_share_response(
        reply.message["payload"],
        ephemeral=ephemeral,
        fingerprint=ALICE.fingerprint,
        custodian=world.custodian,
    )
    assert share.index == record["share_index"] == 1
    assert world.counted("share_deposit", "stored") == 1
    assert world.counted("recovery_request", "answered") == 1
    events = [(event, outcome) for event, outcome, _ in world.audit()]
    assert events == [("share_deposit", "stored"), ("recovery_request", "answered")]
    # The audit log and the answer carry ids, never the share.
    assert b64url_encode(share.data) not in json.dumps(world.audit())


async def test_hostile_recovery_requests_are_refused(world: World) -> None:
    await world.deposit(ALICE)
    # Signed by a key that is not the pinned recovery key.
    wrong = await world.post(world.request(ALICE, X25519KeyPair.generate(), recovery=BOB.recovery))
    refused(wrong, 401, "bad_proof")
    # The same bytes twice: the second is a replay.
    raw = world.request(ALICE, X25519KeyPair.generate())
    assert (await world.post(raw)).status == 200
    refused(await world.post(raw), 401, "replayed")
    # A new message with an ephemeral key already served.
    used = X25519KeyPair.generate()
    assert (await world.post(world.request(ALICE, used))).status == 200
    refused(await world.post(world.request(ALICE, used)), 401, "replayed")
    # A timestamp past the custodian's limit, though its ttl has not run out.
    old = world.request(ALICE, X25519KeyPair.generate(), at=NOW - 301)
    payload = refused(await world.post(old), 400, "stale")
    assert payload["details"]["field"] == "timestamp"
    # Bob asks for Alice's share: as himself, and posing as Alice.
    theft = world.request(ALICE, X25519KeyPair.generate(), recovery=BOB.recovery)
    forged = json.loads(theft)
    forged["sender"]["agent_id"] = BOB.agent_id
    del forged["sender"]["signature"]
    as_bob = json.dumps(sign_message(forged, BOB.recovery)).encode()
    refused(await world.post(as_bob), 401, "sender_mismatch")
    refused(await world.post(theft), 401, "bad_proof")
    # Bob has deposited nothing: there is no share to ask for.
    refused(await world.post(world.request(BOB, X25519KeyPair.generate())), 404, "no_share")
    assert world.counted("recovery_request", "OCP-401") == 5
    refusals = [row for row in world.audit() if row[1] != "answered" and row[0] != "share_deposit"]
    assert [row[2]["reason"] for row in refusals] == [
        "bad_proof",
        "replayed",
        "replayed",
        "stale",
        "sender_mismatch",
        "bad_proof",
        "no_share",
    ]


async def test_hostile_deposits_and_revocations_are_refused(world: World) -> None:
    records = world.records(ALICE)
    payload = {
        "share": records[0],
        "recovery_public_key": b64url_encode(ALICE.recovery.public_key),
    }
    raw = world.message(ALICE.agent_id, "share_deposit", payload, ALICE.key)
    assert (await world.post(raw)).status == 200
    # The same message again is a replay, before it is anything else.
    refused(await world.post(raw), 401, "replayed")
    # A second share of the same key, even a fresh record.
    refused(await world.deposit(ALICE, world.records(ALICE)[0]), 403, "share_exists")
    # A record sealed for another custodian.
    refused(await world.deposit(BOB, world.records(BOB)[1]), 401, "share_not_for_custodian")
    # Bob deposits a record of Alice's key.
    theft = {
        "share": world.records(ALICE)[0],
        "recovery_public_key": b64url_encode(BOB.recovery.public_key),
    }
    raw = world.message(BOB.agent_id, "share_deposit", theft, BOB.key)
    refused(await world.post(raw), 403, "not_owner")
    # The recovery key may not be the signing key itself.
    same = {
        "share": world.records(BOB)[0],
        "recovery_public_key": b64url_encode(BOB.key.public_key),
    }
    raw = world.message(BOB.agent_id, "share_deposit", same, BOB.key)
    refused(await world.post(raw), 400, "recovery_key_is_signing_key")
    # An agent the registry does not know, and one it lists as inactive.
    stranger = Agent(SigningKey(b"\x41" * 32), SigningKey(b"\x42" * 32))
    refused(await world.deposit(stranger), 404, "unknown_agent")
    world.directory.add(stranger, active=False)
    refused(await world.deposit(stranger), 403, "agent_inactive")
    # An envelope signed by another key than the sender's.
    raw = world.message(
        BOB.agent_id,
        "share_deposit",
        same | {"recovery_public_key": b64url_encode(BOB.recovery.public_key)},
        ALICE.key,
    )
    refused(await world.post(raw), 401)
    # Not addressed to this custodian; not a custodian message.
    deposit = {
        "share": world.records(ALICE)[0],
        "recovery_public_key": b64url_encode(ALICE.recovery.public_key),
    }
    raw = world.message(ALICE.agent_id, "share_deposit", deposit, ALICE.key, receiver=BOB.agent_id)
    refused(await world.post(raw), 400, "wrong_receiver")
    raw = world.message(ALICE.agent_id, "discovery_ping", {}, ALICE.key)
    refused(await world.post(raw), 400, "unsupported_type")
    refused(await world.post(b'{"not": "a message"'), 400)

    revoke = {
        "agent_id": ALICE.agent_id,
        "share_id": records[0]["share_id"],
        "key_fingerprint": ALICE.fingerprint,
        "revoked_at": format_timestamp(NOW),
    }
    # Bob revokes Alice's share: as himself, and as Alice with his key.
    refused(
        await world.post(world.message(BOB.agent_id, "share_revoke", revoke, BOB.key)),
        401,
        "not_owner",
    )
    refused(await world.post(world.message(ALICE.agent_id, "share_revoke", revoke, BOB.key)), 401)
    # A revocation dated before the share was made.
    early = revoke | {"revoked_at": format_timestamp(NOW - 3600)}
    refused(
        await world.post(world.message(ALICE.agent_id, "share_revoke", early, ALICE.key)),
        400,
        "revoke_predates_share",
    )
    assert world.metrics.get_sample_value("ocp_recovery_shares_stored") == 1
    # Alice's own revocation deletes it; then there is nothing left to revoke or recover.
    reply = await world.post(world.message(ALICE.agent_id, "share_revoke", revoke, ALICE.key))
    assert reply.status == 200 and reply.message["message_type"] == "ack"
    assert world.metrics.get_sample_value("ocp_recovery_shares_stored") == 0
    refused(
        await world.post(world.message(ALICE.agent_id, "share_revoke", revoke, ALICE.key)),
        404,
        "no_share",
    )
    refused(await world.post(world.request(ALICE, X25519KeyPair.generate())), 404, "no_share")


async def test_operator_approval(world: World) -> None:
    await world.deposit(ALICE)
    commands = world.service.commands()
    ephemeral = X25519KeyPair.generate()
    first = refused(
        await world.post(world.request(ALICE, ephemeral, operator=True)), 403, "approval_pending"
    )
    approval_id = first["details"]["approval_id"]
    # Asking again (without or with the id) while it waits changes nothing.
    again = refused(
        await world.post(world.request(ALICE, ephemeral, operator=True)), 403, "approval_pending"
    )
    assert again["details"]["approval_id"] == approval_id
    refused(
        await world.post(world.request(ALICE, ephemeral, operator=True, approval_id=approval_id)),
        403,
        "approval_pending",
    )
    listed = await commands["custodian.requests"]({})
    assert [r["request_id"] for r in listed["requests"]] == [approval_id]
    assert listed["requests"][0]["ephemeral_public_key"] == b64url_encode(ephemeral.public_key)
    # The approval covers that ephemeral key only.
    refused(
        await world.post(
            world.request(ALICE, X25519KeyPair.generate(), operator=True, approval_id=approval_id)
        ),
        401,
        "bad_proof",
    )
    approved = await commands["custodian.approve"]({"request_id": approval_id})
    assert approved["status"] == "approved"
    reply = await world.post(
        world.request(ALICE, ephemeral, operator=True, approval_id=approval_id)
    )
    assert reply.status == 200
    share = open_share_response(
        reply.message["payload"],
        ephemeral=ephemeral,
        fingerprint=ALICE.fingerprint,
        custodian=world.custodian,
    )
    assert share.index == 1
    # Used once.
    refused(
        await world.post(world.request(ALICE, ephemeral, operator=True, approval_id=approval_id)),
        401,
        "replayed",
    )
    assert (await commands["custodian.requests"]({}))["requests"] == []
    # A rejected request stays refused; deciding twice is refused too.
    other = X25519KeyPair.generate()
    pending = refused(
        await world.post(world.request(ALICE, other, operator=True)), 403, "approval_pending"
    )
    rejected = await commands["custodian.reject"]({"request_id": pending["details"]["approval_id"]})
    assert rejected["status"] == "rejected"
    with pytest.raises(ForbiddenError, match="not pending"):
        await commands["custodian.approve"]({"request_id": rejected["request_id"]})
    refused(
        await world.post(
            world.request(ALICE, other, operator=True, approval_id=rejected["request_id"])
        ),
        403,
        "approval_rejected",
    )
    # At most MAX_PENDING wait at once for one key.
    for _ in range(MAX_PENDING):
        refused(
            await world.post(world.request(ALICE, X25519KeyPair.generate(), operator=True)),
            403,
            "approval_pending",
        )
    refused(
        await world.post(world.request(ALICE, X25519KeyPair.generate(), operator=True)),
        403,
        "too_many_pending",
    )
    decisions = [row for row in world.audit() if row[0] == "operator_decision"]
    assert [row[1] for row in decisions] == ["approved", "rejected"]


async def test_rate_limits_per_agent(tmp_path: Path) -> None:
    database = await open_database(tmp_path / "c.db", "custodian")
    directory = Directory()
    directory.add(ALICE)
    service = CustodianService(
        database=database,
        clock=Clock(),  # type: ignore[arg-type]
        settings=CustodianSection(requests_per_minute=3),
        key=CUSTODIAN_KEY,
        network=NETWORK,
        database_key=DatabaseKey.generate(),
        directory=directory,
        metrics_registry=CollectorRegistry(),
        clock_skew=60.0,
    )
    world = World(service, Clock(), directory, CollectorRegistry(), tmp_path / "c.db")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(database.run)
        codes = [
            (await world.post(world.request(ALICE, X25519KeyPair.generate()))).status
            for _ in range(4)
        ]
        assert codes == [404, 404, 404, 429]
        reply = await world.post(world.request(ALICE, X25519KeyPair.generate()))
        assert reply.retry_after is not None and reply.retry_after >= 1
        database.close()
        nursery.cancel_scope.cancel()


async def test_sweeper_deletes_expired_shares_and_closes_stale_requests(
    world: World, autojump_clock: trio.testing.MockClock
) -> None:
    # Database calls run in threads: a half-second threshold keeps trio's
    # clock still while they commit, and still jumps over the sweeper's sleeps.
    autojump_clock.autojump_threshold = 0.5
    await world.deposit(ALICE)
    await world.deposit(BOB, expires_at=format_timestamp(NOW + 2 * DAY))
    pending = refused(
        await world.post(world.request(ALICE, X25519KeyPair.generate(), operator=True)),
        403,
        "approval_pending",
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(world.service.run)
        assert world.metrics.get_sample_value("ocp_recovery_shares_stored") == 2
        # A day and a bit later the request has waited too long.
        world.clock.value = NOW + DAY + 1
        await trio.sleep(world.service.settings.sweep_interval_seconds + 1)
        listed = await world.service.commands()["custodian.requests"]({"all": True})
        assert [(r["request_id"], r["status"]) for r in listed["requests"]] == [
            (pending["details"]["approval_id"], "expired")
        ]
        # Bob asked for two days; Alice got the default ninety.
        world.clock.value = NOW + 2 * DAY + 1
        refused(await world.post(world.request(BOB, X25519KeyPair.generate())), 404, "no_share")
        await trio.sleep(world.service.settings.sweep_interval_seconds + 1)
        assert world.metrics.get_sample_value("ocp_recovery_shares_stored") == 1
        world.clock.value = NOW + 90 * DAY + 1
        await trio.sleep(world.service.settings.sweep_interval_seconds + 1)
        assert world.metrics.get_sample_value("ocp_recovery_shares_stored") == 0
        nursery.cancel_scope.cancel()
    expired = [row for row in world.audit() if row[0] == "share_expired"]
    assert [row[1] for row in expired] == ["deleted", "deleted"]
    # A deposit asking for an expiry in the past is refused.
    refused(
        await world.deposit(ALICE, expires_at=format_timestamp(world.clock.value - 1)),
        400,
        "expired",
    )


async def test_an_expired_share_is_replaced_before_the_sweep(world: World) -> None:
    reply = await world.deposit(BOB, expires_at=format_timestamp(NOW + DAY))
    assert reply.status == 200
    world.clock.value = NOW + DAY + 1
    # The sweeper has not run: the expired share no longer counts, a new one is taken.
    reply = await world.deposit(BOB)
    assert reply.status == 200, reply.message
    assert world.metrics.get_sample_value("ocp_recovery_shares_stored") == 1
    assert [(event, outcome) for event, outcome, _ in world.audit()] == [
        ("share_deposit", "stored"),
        ("share_expired", "deleted"),
        ("share_deposit", "stored"),
    ]
    # A share that has not expired still blocks a second one.
    refused(await world.deposit(BOB, world.records(BOB)[0]), 403, "share_exists")


async def test_a_refused_malformed_message_is_answered_to_its_sender(world: World) -> None:
    record = world.records(ALICE)[0] | {"threshold": 1}
    payload = {"share": record, "recovery_public_key": b64url_encode(ALICE.recovery.public_key)}
    raw = world.message(ALICE.agent_id, "share_deposit", payload, ALICE.key)
    reply = await world.post(raw)
    answer = refused(reply, 400)
    assert reply.message["receiver"]["agent_id"] == ALICE.agent_id
    assert answer["reference_message_id"] == json.loads(raw)["message_id"]
    # Unreadable bytes still get an error, addressed to nobody in particular.
    reply = await world.post(b'{"sender": {"agent_id": 7}}')
    refused(reply, 400)
    assert reply.message["receiver"]["agent_id"] != ALICE.agent_id
    # Neither is audited: nothing about them was authenticated.
    assert world.audit() == []
