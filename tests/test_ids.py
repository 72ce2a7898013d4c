from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ocpd.proto.crypto import SigningKey
from ocpd.proto.errors import MalformedError
from ocpd.proto.ids import (
    base58btc_decode,
    base58btc_encode,
    broadcast_did,
    derive_agent_id,
    format_node_id,
    format_participant_id,
    is_broadcast_did,
    key_fingerprint,
    multibase_ed25519,
    new_message_id,
    parse_agent_id,
    parse_multibase_x25519,
    parse_node_id,
    parse_participant_id,
)

KEY = bytes(range(32))
NODE = format_node_id(KEY)


@given(st.binary(max_size=64))
def test_base58_round_trip(data: bytes) -> None:
    assert base58btc_decode(base58btc_encode(data)) == data


def test_base58_known_answer() -> None:
    # The example key of the OCP specification's DID document.
    raw = base58btc_decode("6Mkf5rGMoatrSj1f4CyvuHBexJELe9RPdzo2PKGnCKVtZxP")
    assert raw[:2] == b"\xed\x01"
    assert len(raw) == 34
    assert base58btc_encode(b"\0\0\1") == "112"


def test_agent_id_derivation() -> None:
    agent = derive_agent_id(KEY, "mainnet")
    assert agent == "did:ocp:mainnet:agent-" + __import__("hashlib").sha3_256(KEY).hexdigest()[:12]
    assert parse_agent_id(agent) == ("mainnet", agent[-12:])


@pytest.mark.parametrize(
    "text",
    [
        "did:ocp:mainnet:agent-ABCDEF012345",
        "did:ocp:mainnet:agent-abcdef01234",
        "did:ocp:mainnet:agent-abcdef0123456",
        "did:ocp:Mainnet:agent-abcdef012345",
        "DID:ocp:mainnet:agent-abcdef012345",
        "did:OCP:mainnet:agent-abcdef012345",
        "did:ocp::agent-abcdef012345",
        "did:ocp:" + "a" * 33 + ":agent-abcdef012345",
        "did:ocp:main_net:agent-abcdef012345",
        "did:ocp:mainnet:agent-abcdef012345 ",
        "did:ocp:mainnet:agent-abcdef012345\n",
        "did:ocp:mainnet:agent_abcdef012345",
        "did:ocp:mainnet:broadcast",
        "did:key:mainnet:agent-abcdef012345",
        "did:ocp:mainnet:agent-abcdef012345#key-1",
        "did:ocp:mainnet:agent-abcdef01234５",
    ],
)
def test_agent_id_strict(text: str) -> None:
    with pytest.raises(MalformedError):
        parse_agent_id(text)


def test_broadcast() -> None:
    assert broadcast_did("testnet") == "did:ocp:testnet:broadcast"
    assert is_broadcast_did("did:ocp:testnet:broadcast")
    assert not is_broadcast_did("did:ocp:testnet:Broadcast")
    assert not is_broadcast_did("did:ocp:testnet:agent-abcdef012345")


def test_node_and_participant_ids() -> None:
    assert NODE.startswith("node:did:key:z6Mk")
    assert len(NODE) == len("node:did:key:") + 48
    assert parse_node_id(NODE) == KEY
    participant = format_participant_id(KEY)
    assert parse_participant_id(participant) == KEY
    with pytest.raises(MalformedError):
        parse_node_id(participant)
    with pytest.raises(MalformedError):
        parse_participant_id(NODE)


def _variants() -> dict[str, str]:
    mb = multibase_ed25519(KEY)
    x_mb = "z" + base58btc_encode(b"\xec\x01" + KEY)
    return {
        "no-prefix": mb,
        "did-key-only": "did:key:" + mb,
        "uppercase-prefix": "NODE:did:key:" + mb,
        "uppercase-did": "node:DID:key:" + mb,
        "missing-z": "node:did:key:" + mb[1:],
        "other-multibase": "node:did:key:f" + (b"\xed\x01" + KEY).hex(),
        "x25519-multicodec": "node:did:key:" + x_mb,
        "short-key": "node:did:key:z" + base58btc_encode(b"\xed\x01" + KEY[:31]),
        "long-key": "node:did:key:z" + base58btc_encode(b"\xed\x01" + KEY + b"\0"),
        "trailing-data": NODE + "#key-1",
        "trailing-space": NODE + " ",
        "swapped-case": "node:did:key:" + mb.swapcase(),
        "invalid-base58": "node:did:key:z0OIl" + mb[5:],
        "leading-zero-byte": "node:did:key:z1" + mb[1:],
        "empty": "",
    }


@pytest.mark.parametrize("text", _variants().values(), ids=_variants().keys())
def test_node_id_rejects_alternative_spellings(text: str) -> None:
    with pytest.raises(MalformedError):
        parse_node_id(text)
    with pytest.raises(MalformedError):
        parse_participant_id(text.replace("node:", "participant:", 1))


@given(st.binary(min_size=32, max_size=32))
def test_node_id_round_trip(key: bytes) -> None:
    assert parse_node_id(format_node_id(key)) == key
    assert parse_participant_id(format_participant_id(key)) == key


def test_x25519_multibase_refuses_ed25519_codec() -> None:
    with pytest.raises(MalformedError):
        parse_multibase_x25519(multibase_ed25519(KEY))


def test_message_ids_match_schema_pattern() -> None:
    import re

    for _ in range(50):
        assert re.fullmatch(
            r"msg-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}", new_message_id()
        )


def test_key_fingerprint_is_16_hex() -> None:
    key = SigningKey.generate().public_key
    fp = key_fingerprint(key)
    assert len(fp) == 16
    assert int(fp, 16) >= 0
