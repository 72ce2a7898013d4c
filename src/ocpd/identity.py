"""The node's persisted identity (NET FR-001..FR-003, FR-012d, FR-024).

Layout under the data directory::

    identity/node-identity.json   public node-identity.v1 record (0644)
    identity/node.key             the secret: {"key/alg": "ed25519", "seed": <b64url>} (0600)
    identity/retired/<UTC time>-<did:key fingerprint>/
                                  an identity replaced by ``ocpd identity rotate``:
                                  its record and key exactly as they were, kept

The record points at the secret through ``key/storage-ref``
(``local-file:node.key``, relative to the identity directory, so a data
directory can move). Both go through the schema gate whenever they are read
or written; an identity whose ``identity/status`` is not ``active`` refuses
to run. The node also owns a did:ocp service agent id derived from the same
key (D4), which signs the node's own OCP messages.

Rotation (NET FR-002b, decision 115) replaces both with a new key, hence a
new node id and a new service agent id; nothing of the old identity carries
over. The old pair is copied into ``retired/`` (and synced) before anything
in the active place changes, then the new key and record are each written to
a temporary file and renamed into place.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Final

import attrs

from ocpd.proto.crypto import SigningKey
from ocpd.proto.encoding import b64url_decode, b64url_encode, format_timestamp
from ocpd.proto.errors import MalformedError, NetError
from ocpd.proto.ids import derive_agent_id
from ocpd.proto.netartifacts import (
    build_node_identity,
    check_node_identity,
    require_active_identity,
)

__all__ = [
    "IdentityError",
    "NodeIdentity",
    "Rotation",
    "import_identity",
    "init_identity",
    "load_identity",
    "read_key_file",
    "rotate_identity",
    "write_key_file",
    "write_new_file",
]

RECORD_NAME: Final = "node-identity.json"
KEY_NAME: Final = "node.key"
RETIRED_NAME: Final = "retired"
STORAGE_SCHEME: Final = "local-file:"


class IdentityError(Exception):
    """The identity is missing, damaged, mismatched or not active."""


@attrs.frozen
class NodeIdentity:
    record: dict[str, Any]
    key: SigningKey
    path: Path

    @property
    def node_id(self) -> str:
        return str(self.record["node/id"])

    @property
    def participant_id(self) -> str:
        return str(self.record["participant/id"])

    def service_agent_id(self, network: str) -> str:
        return derive_agent_id(self.key.public_key, network)


def _key_text(key: SigningKey, extra: dict[str, Any] | None = None) -> str:
    body = {"key/alg": "ed25519", "seed": b64url_encode(key.seed()), **(extra or {})}
    return json.dumps(body, indent=2) + "\n"


def write_new_file(path: Path, data: bytes, *, mode: int, sync: bool = False) -> None:
    """Create ``path`` with ``mode`` (never through an existing file) and write ``data``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        if sync:
            handle.flush()
            os.fsync(handle.fileno())


def write_key_file(path: Path, key: SigningKey, *, extra: dict[str, Any] | None = None) -> None:
    """Write a secret key file with mode 0600, refusing to overwrite one."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_new_file(path, _key_text(key, extra).encode(), mode=0o600)


def read_key_file(path: Path) -> SigningKey:
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IdentityError(f"key file {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise IdentityError(f"key file {path} is unreadable: {exc}") from None
    if not isinstance(body, dict) or body.get("key/alg") != "ed25519":
        raise IdentityError(f"key file {path} is not an ed25519 key")
    try:
        return SigningKey(b64url_decode(body.get("seed"), field="seed", length=32))
    except MalformedError as exc:
        raise IdentityError(f"key file {path}: {exc.message}") from None


def _record_path(data_dir: Path) -> Path:
    return data_dir / "identity" / RECORD_NAME


def init_identity(data_dir: Path, *, now: float) -> NodeIdentity:
    """Create the node identity; refuses if one exists (rotation is explicit)."""
    directory = data_dir / "identity"
    record_path = directory / RECORD_NAME
    if record_path.exists():
        raise IdentityError(f"an identity already exists at {record_path}")
    key = SigningKey.generate()
    key_path = directory / KEY_NAME
    if key_path.exists():
        raise IdentityError(f"a key file already exists at {key_path}; move it away first")
    write_key_file(key_path, key)
    record = build_node_identity(key, storage_ref=STORAGE_SCHEME + KEY_NAME, now=now)
    tmp = record_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, record_path)
    return NodeIdentity(record=record, key=key, path=record_path)


def _resolve_storage_ref(directory: Path, ref: str) -> Path:
    if not ref.startswith(STORAGE_SCHEME):
        raise IdentityError(f"key/storage-ref {ref!r} uses an unsupported resolver")
    target = Path(ref[len(STORAGE_SCHEME) :])
    return target if target.is_absolute() else directory / target


def load_identity(data_dir: Path, *, require_active: bool = True) -> NodeIdentity:
    """Load and check the identity; the key must match the public record."""
    record_path = _record_path(data_dir)
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IdentityError(
            f"no node identity at {record_path}; create one with 'ocpd identity init'"
        ) from None
    except (OSError, ValueError) as exc:
        raise IdentityError(f"node identity {record_path} is unreadable: {exc}") from None
    try:
        public_key = check_node_identity(record)
        if require_active:
            require_active_identity(record)
    except NetError as exc:
        raise IdentityError(f"node identity {record_path}: {exc.message}") from None
    key = read_key_file(_resolve_storage_ref(record_path.parent, record["key/storage-ref"]))
    if key.public_key != public_key:
        raise IdentityError("the key file does not belong to the node identity record")
    return NodeIdentity(record=record, key=key, path=record_path)


def import_identity(data_dir: Path, record_file: Path, key_file: Path) -> NodeIdentity:
    """Install an exported record and its key; both are checked before anything is written."""
    directory = data_dir / "identity"
    if (directory / RECORD_NAME).exists():
        raise IdentityError(f"an identity already exists at {directory / RECORD_NAME}")
    try:
        record = json.loads(record_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IdentityError(f"cannot read {record_file}: {exc}") from None
    try:
        public_key = check_node_identity(record)
        require_active_identity(record)
    except NetError as exc:
        raise IdentityError(f"{record_file}: {exc.message}") from None
    key = read_key_file(key_file)
    if key.public_key != public_key:
        raise IdentityError("the key file does not belong to the identity record")
    record = {**record, "key/storage-ref": STORAGE_SCHEME + KEY_NAME}
    check_node_identity(record)
    write_key_file(directory / KEY_NAME, key)
    (directory / RECORD_NAME).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return NodeIdentity(record=record, key=key, path=directory / RECORD_NAME)


def load_or_init_identity(data_dir: Path, *, now: float) -> tuple[NodeIdentity, bool]:
    """The identity, creating it on first start; ``True`` when it was created."""
    if _record_path(data_dir).exists():
        return load_identity(data_dir), False
    return init_identity(data_dir, now=now), True


@attrs.frozen
class Rotation:
    """A finished rotation: the identity that left, the one now active, and where the old went."""

    previous: NodeIdentity
    current: NodeIdentity
    retired: Path


def _sync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace(path: Path, data: bytes, *, mode: int) -> None:
    """Atomically put ``data`` at ``path``: a synced temporary file, then a rename."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)  # left by an interrupted rotation; never a live file
    write_new_file(tmp, data, mode=mode, sync=True)
    os.replace(tmp, path)


def _retired_name(node_id: str, now: float) -> str:
    stamp = format_timestamp(now).replace("-", "").replace(":", "")
    return f"{stamp}-{node_id.rsplit(':', 1)[1]}"


def rotate_identity(data_dir: Path, *, now: float, key: SigningKey | None = None) -> Rotation:
    """Replace the node identity with one on a fresh key (NET FR-002b).

    The caller makes sure no daemon runs on ``data_dir``. The old record and
    the key file it references are copied byte for byte into
    ``identity/retired/<time>-<fingerprint>/`` and synced first; only then
    are the new key and record renamed into place. Nothing is deleted: a key
    file the rotation overwrites is always one of the retired copies.
    """
    directory = data_dir / "identity"
    previous = load_identity(data_dir, require_active=False)
    key = key if key is not None else SigningKey.generate()
    if key.public_key == previous.key.public_key:
        raise IdentityError("the new key is the current node key")
    ref = str(previous.record["key/storage-ref"])
    old_key_path = _resolve_storage_ref(directory, ref)
    active_key_path = directory / KEY_NAME
    try:
        record_bytes = previous.path.read_bytes()
        key_bytes = old_key_path.read_bytes()
        stray = None
        if active_key_path.exists() and not active_key_path.samefile(old_key_path):
            stray = active_key_path.read_bytes()
    except OSError as exc:
        raise IdentityError(f"cannot read the current identity: {exc}") from None
    if ref != STORAGE_SCHEME + KEY_NAME:
        # Keep the retired pair self-contained: its record names the key beside it.
        retired_record = {**previous.record, "key/storage-ref": STORAGE_SCHEME + KEY_NAME}
        record_bytes = (json.dumps(retired_record, indent=2) + "\n").encode()

    retired = directory / RETIRED_NAME / _retired_name(previous.node_id, now)
    try:
        retired.parent.mkdir(mode=0o700, exist_ok=True)
        retired.mkdir(mode=0o700)
        write_new_file(retired / KEY_NAME, key_bytes, mode=0o600, sync=True)
        write_new_file(retired / RECORD_NAME, record_bytes, mode=0o644, sync=True)
        if stray is not None:
            write_new_file(retired / f"{KEY_NAME}.replaced", stray, mode=0o600, sync=True)
        _sync_directory(retired)
        _sync_directory(retired.parent)
    except OSError as exc:
        raise IdentityError(f"cannot keep the current identity in {retired}: {exc}") from None

    record = build_node_identity(key, storage_ref=STORAGE_SCHEME + KEY_NAME, now=now)
    try:
        _replace(active_key_path, _key_text(key).encode(), mode=0o600)
        _replace(previous.path, (json.dumps(record, indent=2) + "\n").encode(), mode=0o644)
        _sync_directory(directory)
    except OSError as exc:
        raise IdentityError(
            f"rotation interrupted: {exc}; the previous identity is kept in {retired}"
        ) from None
    return Rotation(
        previous=NodeIdentity(record=previous.record, key=previous.key, path=retired / RECORD_NAME),
        current=NodeIdentity(record=record, key=key, path=previous.path),
        retired=retired,
    )
