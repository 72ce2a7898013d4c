"""Key recovery across custodians: distribute, recover, rotate (OCP §8.3.5, D9).

* :func:`distribute_shares` splits the agent's key (t of n), seals one share
  to each custodian and deposits it there with the agent's recovery public
  key. It refuses fewer custodians than t. The :class:`Deposit` receipts it
  returns hold nothing secret; keep them (``ocpd agent recovery split``
  writes them to a manifest), they say where the shares are.
* :func:`recover_key_from` asks every custodian given, each with a fresh
  ephemeral key, proving the request with the recovery key; it rebuilds the
  key from the shares that came back, checks it against the fingerprint and,
  with more shares than t, names the custodians whose shares disagree.
* :func:`rotate_after_recovery` does what §8.3.5 requires next: a new key,
  the DID document updated with the old key revoked (signed by the old key,
  still active until then), ``share_revoke`` to the old custodians (signed
  by the new key), and new shares distributed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
import trio

from ocpd.client.errors import NodeError
from ocpd.client.keys import AgentKey
from ocpd.proto.crypto import SigningKey, X25519KeyPair
from ocpd.proto.diddoc import parse_did_document, rotate_did_document, sign_did_update
from ocpd.proto.encoding import format_timestamp
from ocpd.proto.errors import OcpError
from ocpd.proto.ids import key_fingerprint
from ocpd.proto.recovery import RecoveryFailed, make_share_records, recover_key

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ocpd.client.custodian import CustodianClient
    from ocpd.client.registry import RegistryClient
    from ocpd.proto.shamir import Share

__all__ = [
    "Deposit",
    "DistributionIncomplete",
    "Recovered",
    "Rotated",
    "distribute_shares",
    "recover_key_from",
    "rotate_after_recovery",
]


@attrs.frozen
class Deposit:
    """Where one share of a key went (no share material)."""

    url: str
    custodian_id: str
    agent_id: str
    share_id: str
    share_index: int
    threshold: int
    total_shares: int
    fingerprint: str
    note: str = ""


class DistributionIncomplete(Exception):
    """Some deposits failed; ``deposits`` went through, ``failures`` maps URL to reason."""

    def __init__(self, deposits: list[Deposit], failures: dict[str, str]) -> None:
        self.deposits = deposits
        self.failures = failures
        listed = "; ".join(f"{url}: {why}" for url, why in failures.items())
        super().__init__(
            f"{len(failures)} of {len(deposits) + len(failures)} deposits failed: {listed}"
        )


@attrs.frozen
class Recovered:
    """A rebuilt key and what each custodian contributed."""

    key: SigningKey = attrs.field(repr=False)
    #: URL -> share index, for every custodian whose share came back.
    answered: dict[str, int]
    #: URLs whose share disagrees with the rebuilt key (tampered, or another key's).
    disagreeing: tuple[str, ...]
    #: URL -> why no share came back.
    failures: dict[str, str]


@attrs.frozen
class Rotated:
    """The agent after a rotation: its new key, the revocations and the new deposits."""

    agent: AgentKey
    revoked: tuple[str, ...]
    revoke_failures: dict[str, str]
    deposits: list[Deposit]


def _why(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


async def distribute_shares(
    agent: AgentKey,
    custodians: Sequence[CustodianClient],
    *,
    threshold: int,
    recovery_public_key: bytes,
    expires_at: float | None = None,
) -> list[Deposit]:
    """Split ``agent``'s key and deposit one share with each custodian, concurrently.

    Raises :class:`~ocpd.proto.errors.MalformedError` (OCP-400) for fewer
    custodians than ``threshold`` or one named twice, before anything is
    sent; :class:`DistributionIncomplete` when some deposits fail.
    """
    identities = [await custodian.custodian() for custodian in custodians]
    records = make_share_records(
        agent.key,
        agent_id=agent.agent_id,
        custodians=identities,
        threshold=threshold,
        created_at=format_timestamp(agent.now()),
    )
    deposits: list[Deposit] = []
    failures: dict[str, str] = {}

    async def one(custodian: CustodianClient, record: dict[str, Any], custodian_id: str) -> None:
        try:
            note = await custodian.deposit(
                agent, record, recovery_public_key, expires_at=expires_at
            )
        except (NodeError, OcpError) as exc:
            failures[custodian.url] = _why(exc)
            return
        deposits.append(
            Deposit(
                url=custodian.url,
                custodian_id=custodian_id,
                agent_id=agent.agent_id,
                share_id=record["share_id"],
                share_index=record["share_index"],
                threshold=threshold,
                total_shares=len(records),
                fingerprint=record["key_fingerprint"],
                note=note,
            )
        )

    async with trio.open_nursery() as nursery:
        for custodian, record, identity in zip(custodians, records, identities, strict=True):
            nursery.start_soon(one, custodian, record, identity.agent_id)
    deposits.sort(key=lambda d: d.share_index)
    if failures:
        raise DistributionIncomplete(deposits, failures)
    return deposits


async def recover_key_from(
    custodians: Sequence[CustodianClient],
    *,
    agent_id: str,
    fingerprint: str,
    threshold: int,
    recovery_key: SigningKey,
    recovery_key_id: str | None = None,
    now: float,
) -> Recovered:
    """Ask every custodian for its share and rebuild the key (checked against ``fingerprint``).

    Raises :class:`~ocpd.proto.recovery.RecoveryFailed` (its details list the
    failures) when fewer than ``threshold`` shares come back or they do not
    rebuild the key.
    """
    key_id = recovery_key_id or f"{agent_id}#recovery-key-1"
    shares: dict[str, Share] = {}
    failures: dict[str, str] = {}

    async def one(custodian: CustodianClient) -> None:
        try:
            shares[custodian.url] = await custodian.request_share(
                agent_id=agent_id,
                fingerprint=fingerprint,
                ephemeral=X25519KeyPair.generate(),
                recovery_key=recovery_key,
                recovery_key_id=key_id,
                now=now,
            )
        except (NodeError, OcpError) as exc:
            failures[custodian.url] = _why(exc)

    async with trio.open_nursery() as nursery:
        for custodian in custodians:
            nursery.start_soon(one, custodian)
    by_index: dict[int, str] = {}
    for url, share in shares.items():
        if share.index in by_index:
            failures[url] = f"returned share {share.index}, as {by_index[share.index]} did"
            continue
        by_index[share.index] = url
    usable = [shares[url] for url in by_index.values()]
    try:
        rebuilt = recover_key(usable, threshold=threshold, fingerprint=fingerprint)
    except RecoveryFailed as exc:
        exc.details["failures"] = dict(failures)
        raise
    return Recovered(
        key=rebuilt.key,
        answered={url: share.index for url, share in shares.items() if url not in failures},
        disagreeing=tuple(sorted(by_index[i] for i in rebuilt.disagreeing)),
        failures=failures,
    )


async def rotate_after_recovery(
    old: AgentKey,
    registry: RegistryClient,
    *,
    old_deposits: Sequence[Deposit],
    old_custodians: Sequence[CustodianClient],
    new_custodians: Sequence[CustodianClient],
    threshold: int,
    recovery_public_key: bytes,
    new_key: SigningKey | None = None,
) -> Rotated:
    """Replace a recovered key (§8.3.5 step 5); ``registry`` must sign as ``old``.

    The old custodians are matched to ``old_deposits`` by URL; those that
    cannot be reached are reported in :attr:`Rotated.revoke_failures` (their
    shares are of a revoked key and expire).
    """
    new_key = new_key or SigningKey.generate()
    now = old.now()
    current = await registry.resolve_did(old.agent_id)
    parsed = parse_did_document(current)
    retire = [vm for vm, key in parsed.active_keys.items() if key == old.key.public_key]
    rotated = rotate_did_document(current, new_key.public_key, now=now, retire=retire)
    signer = retire[0] if retire else next(iter(parsed.active_keys))
    await registry.update_did(sign_did_update(rotated, old.key, signer=signer, now=now))
    agent = AgentKey(new_key, old.network, agent_id=old.agent_id)
    old_fingerprint = key_fingerprint(old.key.public_key)
    receipts = {d.url: d for d in old_deposits if d.fingerprint == old_fingerprint}
    revoked: list[str] = []
    revoke_failures: dict[str, str] = {}

    async def revoke(custodian: CustodianClient) -> None:
        receipt = receipts.get(custodian.url)
        if receipt is None:
            revoke_failures[custodian.url] = "no deposit receipt for this custodian"
            return
        try:
            await custodian.revoke(
                agent, agent_id=old.agent_id, share_id=receipt.share_id, fingerprint=old_fingerprint
            )
        except (NodeError, OcpError) as exc:
            revoke_failures[custodian.url] = _why(exc)
        else:
            revoked.append(custodian.url)

    async with trio.open_nursery() as nursery:
        for custodian in old_custodians:
            nursery.start_soon(revoke, custodian)
    deposits = await distribute_shares(
        agent, new_custodians, threshold=threshold, recovery_public_key=recovery_public_key
    )
    return Rotated(
        agent=agent,
        revoked=tuple(sorted(revoked)),
        revoke_failures=revoke_failures,
        deposits=deposits,
    )
