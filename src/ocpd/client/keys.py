"""An agent's key, its did:ocp id and DID document."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ocpd.identity import read_key_file, write_key_file
from ocpd.proto.artifacts import sign
from ocpd.proto.crypto import SigningKey
from ocpd.proto.diddoc import build_did_document
from ocpd.proto.ids import derive_agent_id

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["AgentKey"]


class AgentKey:
    """An Ed25519 agent key on a network; ``agent_id`` derives from it (D4).

    After a key rotation the agent keeps its id while signing with a later
    key: pass that id as ``agent_id``.
    """

    def __init__(self, key: SigningKey, network: str, *, agent_id: str | None = None) -> None:
        self.key = key
        self.network = network
        self.agent_id = agent_id or derive_agent_id(key.public_key, network)

    @classmethod
    def generate(cls, network: str) -> AgentKey:
        return cls(SigningKey.generate(), network)

    @classmethod
    def load(cls, path: str | Path, network: str) -> AgentKey:
        """Read a key file; the ``agent_id`` it names (kept across rotations) wins."""
        key = read_key_file(Path(path))
        try:
            named = json.loads(Path(path).read_text(encoding="utf-8")).get("agent_id")
        except (OSError, ValueError, AttributeError):
            named = None
        if isinstance(named, str) and named.startswith(f"did:ocp:{network}:agent-"):
            return cls(key, network, agent_id=named)
        return cls(key, network)

    def save(self, path: str | Path) -> None:
        """Write the key file (mode 0600); refuses to overwrite."""
        write_key_file(Path(path), self.key, extra={"agent_id": self.agent_id})

    def did_document(
        self,
        *,
        endpoints: Iterable[str] = (),
        recovery_public_key: bytes | None = None,
        capabilities: Iterable[str] = (),
    ) -> dict[str, Any]:
        return build_did_document(
            self.key.public_key,
            network=self.network,
            service_endpoints=endpoints,
            recovery_public_key=recovery_public_key,
            capabilities=capabilities,
        )

    def sign(self, artifact: dict[str, Any]) -> dict[str, Any]:
        """Sign a single-signer OCP artifact per D2."""
        return sign(artifact, self.key)

    @staticmethod
    def now() -> float:
        return time.time()

    def __repr__(self) -> str:
        return f"AgentKey({self.agent_id})"
