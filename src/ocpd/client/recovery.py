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
* :class:`Manifest` is the receipts of one split as a JSON file: what
  ``ocpd agent recovery recover`` and ``rotate`` start from.

A custodian whose operator approves requests by hand (no recovery key)
answers ``approval_pending``; :func:`recover_key_from` then reports the
approval id and ephemeral key through ``on_pending`` and asks again, with
the same ephemeral key, until the approval arrives or ``approval_timeout``
passes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio

from ocpd.client.custodian import ApprovalPending, CustodianClient
from ocpd.client.errors import NodeError
from ocpd.client.keys import AgentKey
from ocpd.identity import write_new_file
from ocpd.proto.crypto import SigningKey, X25519KeyPair
from ocpd.proto.diddoc import parse_did_document, rotate_did_document, sign_did_update
from ocpd.proto.encoding import b64url_decode, b64url_encode, format_timestamp
from ocpd.proto.errors import MalformedError, OcpError
from ocpd.proto.ids import key_fingerprint, parse_agent_id
from ocpd.proto.recovery import RecoveryFailed, make_share_records, recover_key

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable, Sequence

    from ocpd.client.registry import RegistryClient
    from ocpd.proto.shamir import Share

__all__ = [
    "Deposit",
    "DistributionIncomplete",
    "Manifest",
    "ManifestError",
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


MANIFEST_FORMAT: Final = "ocpd-recovery-manifest/1"
MAX_MANIFEST_SIZE: Final = 1_048_576


class ManifestError(ValueError):
    """A manifest file that cannot be used, and why."""


@attrs.frozen
class Manifest:
    """The receipts of one split, enough to recover and to rotate (nothing secret).

    Saved as JSON: ``format``, ``agent_id``, ``key_fingerprint``,
    ``threshold``, ``total_shares``, ``recovery_public_key`` (base64url),
    ``recovery_key_id``, ``created_at`` and ``custodians`` (one object per
    deposit that went through: ``url``, ``custodian_id``, ``share_id``,
    ``share_index``, ``note``).
    """

    agent_id: str
    fingerprint: str
    threshold: int
    total_shares: int
    recovery_public_key: bytes
    recovery_key_id: str
    created_at: str
    deposits: tuple[Deposit, ...]

    @classmethod
    def of(
        cls,
        agent: AgentKey,
        deposits: Sequence[Deposit],
        *,
        threshold: int,
        total_shares: int,
        recovery_public_key: bytes,
        recovery_key_id: str | None = None,
    ) -> Manifest:
        """The manifest of a split of ``agent``'s key: the deposits that went through, if any."""
        return cls(
            agent_id=agent.agent_id,
            fingerprint=key_fingerprint(agent.key.public_key),
            threshold=threshold,
            total_shares=total_shares,
            recovery_public_key=recovery_public_key,
            recovery_key_id=recovery_key_id or f"{agent.agent_id}#recovery-key-1",
            created_at=format_timestamp(agent.now()),
            deposits=tuple(deposits),
        )

    @property
    def urls(self) -> list[str]:
        return [d.url for d in self.deposits]

    def clients(self, *, verify: ssl.SSLContext | str | bool = True) -> list[CustodianClient]:
        """A client for each custodian, pinned to the agent id it had at the deposit."""
        return [
            CustodianClient(d.url, agent_id=d.custodian_id, verify=verify) for d in self.deposits
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "agent_id": self.agent_id,
            "key_fingerprint": self.fingerprint,
            "threshold": self.threshold,
            "total_shares": self.total_shares,
            "recovery_public_key": b64url_encode(self.recovery_public_key),
            "recovery_key_id": self.recovery_key_id,
            "created_at": self.created_at,
            "custodians": [
                {
                    "url": d.url,
                    "custodian_id": d.custodian_id,
                    "share_id": d.share_id,
                    "share_index": d.share_index,
                    "note": d.note,
                }
                for d in self.deposits
            ],
        }

    @classmethod
    def from_json(cls, data: object) -> Manifest:
        """Read a manifest, with a :class:`ManifestError` naming the first field that is wrong."""
        body = _object(data, "the manifest")
        if body.get("format") != MANIFEST_FORMAT:
            raise ManifestError(f"not a recovery manifest (format must be {MANIFEST_FORMAT!r})")
        agent_id = _text(body, "agent_id")
        try:
            parse_agent_id(agent_id)
            recovery_public_key = b64url_decode(
                body.get("recovery_public_key"), field="recovery_public_key", length=32
            )
        except OcpError as exc:
            raise ManifestError(exc.message) from None
        threshold = _count(body, "threshold", 2)
        total = _count(body, "total_shares", 3)
        if threshold > total:
            raise ManifestError("threshold is larger than total_shares")
        fingerprint = _text(body, "key_fingerprint")
        listed = body.get("custodians")
        if not isinstance(listed, list):
            raise ManifestError("custodians must be a list")
        deposits = []
        for n, entry in enumerate(listed):
            item = _object(entry, f"custodians[{n}]")
            deposits.append(
                Deposit(
                    url=_text(item, "url", n),
                    custodian_id=_text(item, "custodian_id", n),
                    agent_id=agent_id,
                    share_id=_text(item, "share_id", n),
                    share_index=_count(item, "share_index", 1, n),
                    threshold=threshold,
                    total_shares=total,
                    fingerprint=fingerprint,
                    note=str(item.get("note", "")),
                )
            )
        if len({d.url for d in deposits}) != len(deposits):
            raise ManifestError("a custodian is listed twice")
        return cls(
            agent_id=agent_id,
            fingerprint=fingerprint,
            threshold=threshold,
            total_shares=total,
            recovery_public_key=recovery_public_key,
            recovery_key_id=_text(body, "recovery_key_id"),
            created_at=_text(body, "created_at"),
            deposits=tuple(deposits),
        )

    def save(self, path: str | Path) -> None:
        """Write the manifest (mode 0600: it says where the shares are); never overwrites."""
        text = json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n"
        write_new_file(Path(path), text.encode("utf-8"), mode=0o600)

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        try:
            with Path(path).open("rb") as handle:
                raw = handle.read(MAX_MANIFEST_SIZE + 1)
        except OSError as exc:
            raise ManifestError(f"cannot read {path}: {exc.strerror or exc}") from None
        if len(raw) > MAX_MANIFEST_SIZE:
            raise ManifestError(f"{path} is larger than {MAX_MANIFEST_SIZE} bytes")
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise ManifestError(f"{path} is not JSON: {exc}") from None
        try:
            return cls.from_json(data)
        except ManifestError as exc:
            raise ManifestError(f"{path}: {exc}") from None


def _object(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ManifestError(f"{what} must be a JSON object")
    return value


def _where(field: str, n: int | None) -> str:
    return field if n is None else f"custodians[{n}].{field}"


def _text(body: dict[str, Any], field: str, n: int | None = None) -> str:
    value = body.get(field)
    if not isinstance(value, str) or not value:
        raise ManifestError(f"{_where(field, n)} must be a non-empty string")
    return value


def _count(body: dict[str, Any], field: str, least: int, n: int | None = None) -> int:
    value = body.get(field)
    if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= 255:
        raise ManifestError(f"{_where(field, n)} must be a whole number from {least} to 255")
    return value


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
    #: URL -> why the new share could not be deposited there.
    deposit_failures: dict[str, str] = attrs.field(factory=dict)


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
    recovery_key: SigningKey | None,
    recovery_key_id: str | None = None,
    now: float,
    on_pending: Callable[[str, str, str], None] | None = None,
    approval_timeout: float = 0.0,
    poll_interval: float = 5.0,
) -> Recovered:
    """Ask every custodian for its share and rebuild the key (checked against ``fingerprint``).

    With ``recovery_key`` each request is proved by it. Without, each asks
    for its custodian operator's approval: ``on_pending(url, approval_id,
    ephemeral_public_key)`` tells who to ask, and the request is repeated
    every ``poll_interval`` seconds with the same ephemeral key until it is
    approved, refused, or ``approval_timeout`` has passed (0: do not wait);
    once the shares in hand rebuild the key, nobody is waited for any more.
    ``now`` is the wall-clock time at the call; later requests add the time
    spent since.

    Raises :class:`~ocpd.proto.recovery.RecoveryFailed` (its details list the
    failures) when fewer than ``threshold`` shares come back or they do not
    rebuild the key.
    """
    key_id = recovery_key_id or f"{agent_id}#recovery-key-1"
    shares: dict[str, Share] = {}
    failures: dict[str, str] = {}
    started = trio.current_time()
    outstanding = {custodian.url for custodian in custodians}
    #: URL -> approval id, for custodians waiting for their operator.
    waiting: dict[str, str] = {}

    def settle(url: str) -> None:
        """Stop waiting for operators once the shares in hand rebuild the key."""
        outstanding.discard(url)
        if (
            outstanding
            and outstanding <= waiting.keys()
            and _rebuilds(shares, threshold, fingerprint)
        ):
            nursery.cancel_scope.cancel()

    async def one(custodian: CustodianClient) -> None:
        try:
            await ask_until_answered(custodian)
        finally:
            settle(custodian.url)

    async def ask_until_answered(custodian: CustodianClient) -> None:
        ephemeral = X25519KeyPair.generate()

        async def ask(approval_id: str | None) -> Share:
            return await custodian.request_share(
                agent_id=agent_id,
                fingerprint=fingerprint,
                ephemeral=ephemeral,
                recovery_key=recovery_key,
                recovery_key_id=key_id if recovery_key is not None else None,
                approval_id=approval_id,
                now=now + (trio.current_time() - started),
            )

        try:
            shares[custodian.url] = await ask(None)
            return
        except ApprovalPending as exc:
            pending = exc
        except (NodeError, OcpError) as exc:
            failures[custodian.url] = _why(exc)
            return
        approval_id = pending.approval_id
        if on_pending is None or approval_timeout <= 0:
            failures[custodian.url] = f"waits for the operator's approval {approval_id}"
            return
        on_pending(custodian.url, approval_id, b64url_encode(ephemeral.public_key))
        waiting[custodian.url] = approval_id
        settle("")
        with trio.move_on_after(approval_timeout):
            delay = poll_interval
            while True:
                await trio.sleep(delay)
                delay = poll_interval
                try:
                    shares[custodian.url] = await ask(approval_id)
                    return
                except ApprovalPending:
                    continue
                except NodeError as exc:
                    if exc.retry_after is None:
                        failures[custodian.url] = _why(exc)
                        return
                    delay = max(exc.retry_after, poll_interval)
                except OcpError as exc:
                    failures[custodian.url] = _why(exc)
                    return
        failures[custodian.url] = (
            f"the operator did not approve {approval_id} within {approval_timeout:g} s"
        )

    async with trio.open_nursery() as nursery:
        for custodian in custodians:
            nursery.start_soon(one, custodian)
    for url, approval_id in waiting.items():
        if url not in shares and url not in failures:
            failures[url] = f"not needed: the key was rebuilt while {approval_id} waited"
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


def _rebuilds(shares: dict[str, Share], threshold: int, fingerprint: str) -> bool:
    by_index = {share.index: share for share in shares.values()}
    if len(by_index) < threshold:
        return False
    try:
        recover_key(list(by_index.values()), threshold=threshold, fingerprint=fingerprint)
    except MalformedError:
        return False
    return True


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

    Nothing changes until the new custodians have been reached and are at
    least ``threshold``; from the DID update on, the rotation goes to the
    end and reports what failed instead of raising. The old custodians are
    matched to ``old_deposits`` by URL; those that cannot be reached are
    reported in :attr:`Rotated.revoke_failures` (their shares are of a
    revoked key and expire), deposits that fail in
    :attr:`Rotated.deposit_failures`.
    """
    if threshold < 2 or len(new_custodians) < max(threshold, 3):
        raise MalformedError(
            f"a split needs a threshold of at least 2 and at least 3 custodians, and no fewer "
            f"custodians than the threshold: {threshold} of {len(new_custodians)} is not possible",
            details={"reason": "too_few_custodians", "threshold": threshold},
        )
    identities = [await custodian.custodian() for custodian in new_custodians]
    if len({i.agent_id for i in identities}) != len(identities):
        raise MalformedError(
            "each custodian may hold only one share of a key",
            details={"reason": "custodian_repeated"},
        )
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
    try:
        deposits = await distribute_shares(
            agent, new_custodians, threshold=threshold, recovery_public_key=recovery_public_key
        )
        deposit_failures: dict[str, str] = {}
    except DistributionIncomplete as exc:
        deposits, deposit_failures = exc.deposits, exc.failures
    return Rotated(
        agent=agent,
        revoked=tuple(sorted(revoked)),
        revoke_failures=revoke_failures,
        deposits=deposits,
        deposit_failures=deposit_failures,
    )
