"""Level 4 certifications for certifiers (D7).

A certifier is not an agent: it is an Ed25519 key that registries name in
``trust.certifier_keys`` (as ``z6Mk…`` multibase, :attr:`CertifierKey.multibase`).
It signs certifications of agents and, to end one early, revocations; any
registered agent can then submit them with
:meth:`ocpd.client.RegistryClient.submit_certification` and
:meth:`~ocpd.client.RegistryClient.revoke_certification`. A certification
counts while its subject is Level 3 and until ``expires_at`` (at most 365
days after ``issued_at``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ocpd.identity import read_key_file, write_key_file
from ocpd.proto.artifacts import (
    MAX_CERTIFICATION_DURATION,
    sign_certification,
    sign_certification_revocation,
)
from ocpd.proto.crypto import SigningKey
from ocpd.proto.encoding import format_timestamp
from ocpd.proto.ids import multibase_ed25519, new_prefixed_uuid

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = ["CertifierKey"]

DAY = 86_400
MAX_DAYS = MAX_CERTIFICATION_DURATION // DAY


class CertifierKey:
    """A certifier's Ed25519 key; :attr:`multibase` is its name in ``trust.certifier_keys``."""

    def __init__(self, key: SigningKey) -> None:
        self.key = key
        self.multibase = multibase_ed25519(key.public_key)

    @classmethod
    def generate(cls) -> CertifierKey:
        return cls(SigningKey.generate())

    @classmethod
    def load(cls, path: str | Path) -> CertifierKey:
        return cls(read_key_file(Path(path)))

    def save(self, path: str | Path) -> None:
        """Write the key file (mode 0600); refuses to overwrite."""
        write_key_file(Path(path), self.key, extra={"certifier": self.multibase})

    def certify(
        self,
        subject: str,
        *,
        days: int = MAX_DAYS,
        scope: Iterable[str] = (),
        statement: str | None = None,
        certification_id: str | None = None,
        now: float | None = None,
    ) -> dict[str, Any]:
        """A signed certification of the agent ``subject``, in force for ``days`` from now."""
        issued = self.now() if now is None else now
        certification: dict[str, Any] = {
            "certification_type": "certified",
            "certification_id": certification_id or new_prefixed_uuid("cert"),
            "subject": subject,
            "certifier": self.multibase,
            "level": 4,
            "issued_at": format_timestamp(issued),
            "expires_at": format_timestamp(issued + days * DAY),
        }
        if scope:
            certification["scope"] = list(scope)
        if statement is not None:
            certification["statement"] = statement
        return sign_certification(certification, self.key)

    def revoke(
        self,
        certification: Mapping[str, Any],
        *,
        reason: str | None = None,
        now: float | None = None,
    ) -> dict[str, Any]:
        """A signed revocation of a certification this key issued."""
        revocation: dict[str, Any] = {
            "revocation_type": "certification",
            "certification_id": certification["certification_id"],
            "subject": certification["subject"],
            "certifier": certification["certifier"],
            "revoked_at": format_timestamp(self.now() if now is None else now),
        }
        if reason is not None:
            revocation["reason"] = reason
        return sign_certification_revocation(revocation, self.key)

    @staticmethod
    def now() -> float:
        return time.time()

    def __repr__(self) -> str:
        return f"CertifierKey({self.multibase})"
