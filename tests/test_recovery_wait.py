"""Waiting for custodian operators in ``recover_key_from``, under trio's autojump clock.

The custodians here are stand-ins at the SDK's boundary: each answers
``request_share`` with an :class:`ApprovalPending` until its operator
"approves" at a set time, or a rate-limit refusal, or the share.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from ocpd.client.custodian import ApprovalPending, CustodianRefused
from ocpd.client.recovery import recover_key_from
from ocpd.proto import shamir
from ocpd.proto.crypto import SigningKey
from ocpd.proto.ids import key_fingerprint
from ocpd.proto.recovery import RecoveryFailed

KEY = SigningKey(b"\x42" * 32)
FINGERPRINT = key_fingerprint(KEY.public_key)
AGENT = "did:ocp:testnet:agent-0123456789ab"
SHARES = shamir.split(KEY.seed(), 2, 3)


class Operated:
    """A custodian whose operator approves at ``approve_at`` (never, with None)."""

    def __init__(
        self, n: int, approve_at: float | None, *, rate_limited_until: float = 0.0
    ) -> None:
        self.url = f"https://c{n}.example:8423"
        self.share = SHARES[n - 1]
        self.approve_at = approve_at
        self.rate_limited_until = rate_limited_until
        self.approval_id = f"rr-{n:016x}"
        self.asked: list[tuple[float, str | None, bytes]] = []

    async def request_share(self, **request: Any) -> shamir.Share:
        now = trio.current_time()
        self.asked.append((now, request["approval_id"], request["ephemeral"].public_key))
        assert request["recovery_key"] is None
        if request["approval_id"] is not None and now < self.rate_limited_until:
            raise CustodianRefused(
                "too many requests", code="OCP-429", status=429, retry_after=10.0
            )
        if request["approval_id"] is None or self.approve_at is None or now < self.approve_at:
            raise ApprovalPending(
                "waits for the operator",
                code="OCP-403",
                details={"reason": "approval_pending", "approval_id": self.approval_id},
                status=403,
            )
        return self.share


async def recover(custodians: list[Operated], **options: Any) -> Any:
    shown: list[tuple[str, str, str]] = []
    recovered = await recover_key_from(
        custodians,  # type: ignore[arg-type]
        agent_id=AGENT,
        fingerprint=FINGERPRINT,
        threshold=2,
        recovery_key=None,
        now=1_790_000_000.0,
        on_pending=lambda *seen: shown.append(seen),
        **options,
    )
    return recovered, shown


async def test_polls_until_approved_then_stops_waiting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    custodians = [Operated(1, 30.0), Operated(2, 95.0), Operated(3, None)]
    start = trio.current_time()
    recovered, shown = await recover(custodians, approval_timeout=3600.0, poll_interval=5.0)
    assert recovered.key.seed() == KEY.seed()
    # The third operator never approved: once two shares rebuilt the key it was let go.
    assert trio.current_time() - start == pytest.approx(95.0)
    assert sorted(recovered.answered) == [custodians[0].url, custodians[1].url]
    assert "not needed" in recovered.failures[custodians[2].url]
    # Each operator was told once, with the ephemeral key every later request reuses.
    assert sorted(url for url, _, _ in shown) == [c.url for c in custodians]
    for custodian in custodians:
        assert len({ephemeral for _, _, ephemeral in custodian.asked}) == 1
        later = [approval for _, approval, _ in custodian.asked[1:]]
        assert later == [custodian.approval_id] * len(later)
    times = [at - start for at, _, _ in custodians[0].asked]
    assert times == pytest.approx([0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0])


async def test_gives_up_after_the_approval_timeout(autojump_clock: trio.testing.MockClock) -> None:
    custodians = [Operated(1, 30.0), Operated(2, None), Operated(3, None)]
    start = trio.current_time()
    with pytest.raises(RecoveryFailed) as failed:
        await recover(custodians, approval_timeout=600.0, poll_interval=5.0)
    assert trio.current_time() - start == pytest.approx(600.0, abs=5.0)
    failures = failed.value.details["failures"]
    assert set(failures) == {custodians[1].url, custodians[2].url}
    assert all("did not approve" in why and "600 s" in why for why in failures.values())


async def test_without_a_timeout_pending_is_a_failure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    custodians = [Operated(n, 0.0) for n in (1, 2, 3)]
    with pytest.raises(RecoveryFailed) as failed:
        await recover(custodians)
    assert all("waits for the operator's approval" in why for why in
               failed.value.details["failures"].values())  # fmt: skip
    assert all(len(c.asked) == 1 for c in custodians)


async def test_a_rate_limit_while_polling_waits_as_told(
    autojump_clock: trio.testing.MockClock,
) -> None:
    custodians = [Operated(1, 0.0, rate_limited_until=4.0), Operated(2, 0.0), Operated(3, None)]
    recovered, _ = await recover(custodians, approval_timeout=60.0, poll_interval=1.0)
    assert recovered.key.seed() == KEY.seed()
    times = [at for at, _, _ in custodians[0].asked]
    # Asked at 0 (pending), 1 (429, retry after 10), then 11: not every second.
    assert [t - times[0] for t in times] == pytest.approx([0.0, 1.0, 11.0])
