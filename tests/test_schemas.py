"""The JSON Schemas of ocpd and the schema gate that enforces them.

Every schema is checked three ways: it is well-formed Draft-07; realistic
documents pass and mutated ones fail through the gate (fastjsonschema); and the
reference implementation (``jsonschema.Draft7Validator``) reaches the same
verdict on every one of those documents, so the gate enforces what the schema
says and nothing else.
"""

from __future__ import annotations

import copy
import functools
import json
import timeit
from typing import Any

import jsonschema
import pytest

from ocpd.proto import schema as schema_module
from ocpd.proto.errors import InternalError, MalformedError, NetError, OcpError
from ocpd.proto.schema import (
    DRAFT_07,
    GATE,
    SchemaGate,
    load_schema,
    schema_names,
    validate,
    validate_envelope,
)
from schema_examples import (
    APPENDIX_C,
    ENCRYPTION,
    ENVELOPE_ENCRYPTED,
    ENVELOPE_PLAIN,
    INVALID,
    PAYLOADS,
    VALID,
    b64url,
    message,
    raw,
    with_,
)

MESSAGE_TYPES = [
    "discovery_ping",
    "capability_query",
    "capability_response",
    "knowledge_share",
    "knowledge_ack",
    "task_request",
    "task_response",
    "bond_request",
    "bond_negotiate",
    "bond_accept",
    "bond_confirm",
    "bond_revoke",
    "consensus_initiate",
    "consensus_vote",
    "consensus_result",
    "broadcast",
    "ack",
    "error",
    "share_deposit",
    "share_revoke",
    "recovery_request",
    "recovery_share_response",
]

NET_SCHEMAS = [
    "node-identity.v1",
    "node-advertisement.v1",
    "peer-handshake.v1",
    "capability-advertisement.v1",
    "signal-marker.v1",
    "signal-marker-envelope.v1",
    "node-overlap-bundle.v1",
]

EXPECTED_NAMES = sorted(
    [
        "envelope",
        *(f"payload.{t}" for t in MESSAGE_TYPES),
        "knowledge.embedding",
        "knowledge.insight",
        "knowledge.model_delta",
        "agent-record",
        "did-document",
        "did-document-update",
        "vouch",
        "vouch-revocation",
        "bond",
        "bond-revocation",
        "certification",
        "certification-revocation",
        "consensus-vote",
        "interaction-rating",
        "recovery-share",
        "auth-handshake",
        *NET_SCHEMAS,
    ]
)

# Objects whose content is free by definition (wire-formats.md).
OPEN_TOP_LEVEL = {"payload.broadcast"}
# Closed through its branches: each knowledge object is closed.
CLOSED_BY_BRANCHES = {"payload.knowledge_share"}

# Keywords fastjsonschema implements for Draft-07 and the schemas may use.
ALLOWED_KEYWORDS = {
    "$schema",
    "$id",
    "$ref",
    "$comment",
    "title",
    "description",
    "definitions",
    "type",
    "properties",
    "required",
    "additionalProperties",
    "propertyNames",
    "minProperties",
    "maxProperties",
    "dependencies",
    "enum",
    "const",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "items",
    "minItems",
    "maxItems",
    "uniqueItems",
    "contains",
    "allOf",
    "anyOf",
    "oneOf",
    "not",
    "if",
    "then",
    "else",
}


# ------------------------------------------------------------------ helpers


@functools.cache
def reference(name: str) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(load_schema(name))


def gate_accepts(name: str, document: Any) -> bool:
    try:
        validate(name, document)
    except OcpError:
        return False
    return True


def resolve(schema: dict[str, Any], sub: Any) -> Any:
    while isinstance(sub, dict) and "$ref" in sub:
        sub = schema["definitions"][sub["$ref"].removeprefix("#/definitions/")]
    return sub


_WRONG_VALUES: list[tuple[str, Any]] = [
    ("integer", 12345),
    ("string", "wrong-type"),
    ("boolean", True),
    ("array", []),
    ("object", {}),
]


def wrong_value(types: str | list[str]) -> Any:
    allowed = {types} if isinstance(types, str) else set(types)
    if "number" in allowed:
        allowed.add("integer")
    return next(value for json_type, value in _WRONG_VALUES if json_type not in allowed)


def mutations() -> list[tuple[str, str, Any]]:
    """Rejected documents derived from the first valid example of each schema."""
    out: list[tuple[str, str, Any]] = []
    for name in EXPECTED_NAMES:
        schema = load_schema(name)
        base = VALID[name][0]
        for field in schema.get("required", []):
            out.append((f"{name}:missing:{field}", name, with_(base, **{field: None})))
        if schema.get("additionalProperties") is False:
            out.append((f"{name}:unexpected-field", name, with_(base, x_unexpected="x")))
        for field, sub in schema.get("properties", {}).items():
            sub = resolve(schema, sub)
            if not isinstance(sub, dict) or "type" not in sub:
                continue
            out.append(
                (
                    f"{name}:wrong-type:{field}",
                    name,
                    with_(base, **{field: wrong_value(sub["type"])}),
                )
            )
            if "pattern" in sub:
                out.append(
                    (f"{name}:bad-pattern:{field}", name, with_(base, **{field: "!bad pattern!"}))
                )
    return out


MUTATIONS = mutations()
VALID_CASES = [
    pytest.param(name, doc, id=f"{name}:valid-{i}")
    for name, docs in VALID.items()
    for i, doc in enumerate(docs)
]
INVALID_CASES = [
    pytest.param(name, doc, id=f"{name}:{case_id}")
    for name, cases in INVALID.items()
    for case_id, doc in cases
] + [pytest.param(name, doc, id=case_id) for case_id, name, doc in MUTATIONS]
ALL_CASES = [pytest.param(*p.values, True, id=p.id) for p in VALID_CASES] + [
    pytest.param(*p.values, False, id=p.id) for p in INVALID_CASES
]


def test_case_ids_are_unique() -> None:
    ids = [p.id for p in ALL_CASES]
    assert len(ids) == len(set(ids))


# ------------------------------------------------------------------ the schema files


def test_catalogue_is_complete() -> None:
    assert schema_names() == EXPECTED_NAMES
    assert sorted(VALID) == EXPECTED_NAMES


@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_schema_is_draft_07(name: str) -> None:
    schema = load_schema(name)
    assert schema["$schema"] == DRAFT_07 == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(schema)
    assert schema["$id"] == f"https://ocpd.dev/schemas/{name}.json"
    assert isinstance(schema["title"], str)
    assert schema["title"]


def _walk(schema: Any, where: str, definitions: set[str], found: list[str]) -> None:
    """Collect keywords outside ALLOWED_KEYWORDS and ``$ref``s that leave the file."""
    if isinstance(schema, bool):
        return
    assert isinstance(schema, dict), where
    for keyword, value in schema.items():
        if keyword not in ALLOWED_KEYWORDS:
            found.append(f"{where}: {keyword}")
        if keyword == "$ref" and value.removeprefix("#/definitions/") not in definitions:
            found.append(f"{where}: $ref {value}")
        if keyword in {"properties", "definitions"}:
            for key, sub in value.items():
                _walk(sub, f"{where}/{keyword}/{key}", definitions, found)
        elif keyword == "dependencies":
            for key, sub in value.items():
                if isinstance(sub, dict):
                    _walk(sub, f"{where}/dependencies/{key}", definitions, found)
        elif keyword in {"allOf", "anyOf", "oneOf"}:
            for i, sub in enumerate(value):
                _walk(sub, f"{where}/{keyword}/{i}", definitions, found)
        elif keyword in {
            "items",
            "additionalProperties",
            "not",
            "if",
            "then",
            "else",
            "contains",
            "propertyNames",
        }:
            _walk(value, f"{where}/{keyword}", definitions, found)


@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_schema_uses_only_enforced_keywords(name: str) -> None:
    """No ``format``, nothing fastjsonschema ignores, no reference to another file."""
    schema = load_schema(name)
    definitions = set(schema.get("definitions", {}))
    problems: list[str] = []
    _walk(schema, name, definitions, problems)
    assert problems == []
    text = json.dumps(schema)
    for definition in definitions:  # and no dead definitions
        assert f'"#/definitions/{definition}"' in text


@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_fully_defined_objects_are_closed(name: str) -> None:
    schema = load_schema(name)
    if name in OPEN_TOP_LEVEL:
        assert "additionalProperties" not in schema
    elif name in CLOSED_BY_BRANCHES:
        for branch in schema["definitions"].values():
            assert branch["additionalProperties"] is False
    else:
        assert schema["additionalProperties"] is False


def test_envelope_message_types_match_payload_schemas() -> None:
    envelope = load_schema("envelope")
    assert envelope["properties"]["message_type"]["enum"] == MESSAGE_TYPES
    assert sorted(PAYLOADS) == sorted(MESSAGE_TYPES)


def test_every_schema_has_rejected_documents() -> None:
    rejected = {p.values[0] for p in INVALID_CASES}
    assert rejected == set(EXPECTED_NAMES)


# ------------------------------------------------------------------ examples and mutations


@pytest.mark.parametrize(("name", "document"), VALID_CASES)
def test_valid_example_is_accepted(name: str, document: Any) -> None:
    validate(name, document)


@pytest.mark.parametrize(("name", "document"), INVALID_CASES)
def test_invalid_document_is_rejected(name: str, document: Any) -> None:
    expected = NetError if name.endswith(".v1") else MalformedError
    with pytest.raises(expected) as info:
        validate(name, document)
    assert info.value.details["schema"] == name


@pytest.mark.parametrize(("name", "document", "expected"), ALL_CASES)
def test_reference_validator_agrees(name: str, document: Any, expected: bool) -> None:
    """jsonschema (reference) and the gate (fastjsonschema) give the same verdict."""
    assert reference(name).is_valid(document) is gate_accepts(name, document) is expected


@pytest.mark.parametrize("name", list(APPENDIX_C))
def test_appendix_c_examples_are_accepted(name: str) -> None:
    example = APPENDIX_C[name]
    validate_envelope(example)
    assert reference("envelope").is_valid(example)
    if isinstance(example["payload"], dict):
        assert reference(f"payload.{example['message_type']}").is_valid(example["payload"])


# ------------------------------------------------------------------ errors


def test_ocp_schema_raises_malformed_error() -> None:
    document = copy.deepcopy(ENVELOPE_PLAIN)
    document["sender"]["agent_id"] = "did:ocp:mainnet:agent-xyz"
    with pytest.raises(MalformedError) as info:
        validate("envelope", document)
    error = info.value
    assert error.code == "OCP-400"
    assert error.http_status == 400
    assert error.details == {"schema": "envelope", "path": "$.sender.agent_id", "rule": "pattern"}
    assert error.message.startswith("envelope: $.sender.agent_id does not match ")


@pytest.mark.parametrize("name", NET_SCHEMAS)
def test_networking_schema_raises_net_error(name: str) -> None:
    # a top-level string field with a pattern: the unsigned record has no signature,
    # the overlap bundle keeps its two in an object
    field = {"node-identity.v1": "key/public", "node-overlap-bundle.v1": "created-at"}.get(
        name, "signature"
    )
    document = with_(VALID[name][0], **{field: "not base64url"})
    with pytest.raises(NetError) as info:
        validate(name, document)
    error = info.value
    assert error.code == "E_PROTO_INVALID"
    assert error.cls == "protocol/invalid-contract"
    assert error.details == {"schema": name, "path": f"$.{field}", "rule": "pattern"}


def test_error_never_quotes_the_value() -> None:
    secret = "SECRET-share-bytes!" * 3
    share = with_(VALID["recovery-share"][0], share_data=secret)
    with pytest.raises(MalformedError) as info:
        validate("recovery-share", share)
    error = info.value
    assert error.details["path"] == "$.share_data"
    for text in (str(error), error.message, repr(error.details), repr(error.args)):
        assert "SECRET" not in text
    assert error.__cause__ is None
    assert error.__suppress_context__


@pytest.mark.parametrize(
    ("name", "document", "path", "rule", "words"),
    [
        pytest.param(
            "envelope",
            with_(ENVELOPE_PLAIN, timestamp=None),
            "$",
            "required",
            'missing required property "timestamp"',
            id="required",
        ),
        pytest.param(
            "envelope",
            with_(ENVELOPE_PLAIN, extra_one=1, extra_two=2),
            "$",
            "additionalProperties",
            'unknown properties "extra_one", "extra_two"',
            id="unknown-properties",
        ),
        pytest.param(
            "knowledge.embedding",
            {**VALID["knowledge.embedding"][0], "vectors": [{"id": "v", "vector": "a=="}]},
            "$.vectors[0].vector",
            "pattern",
            "does not match",
            id="array-path",
        ),
        pytest.param(
            "envelope",
            with_(ENVELOPE_PLAIN, ttl=0),
            "$.ttl",
            "minimum",
            "is less than 1",
            id="minimum",
        ),
        pytest.param(
            "envelope",
            with_(ENVELOPE_PLAIN, priority="urgent"),
            "$.priority",
            "enum",
            'must be one of "low", "normal", "high", "critical"',
            id="enum",
        ),
        pytest.param(
            "envelope",
            with_(ENVELOPE_PLAIN, encryption=ENCRYPTION),
            "$.encryption",
            "false",
            "must not be present",
            id="forbidden",
        ),
        pytest.param(
            "capability-advertisement.v1",
            with_(
                VALID["capability-advertisement.v1"][0], **{"capabilities/core": ["ocp/routing"]}
            ),
            "$.capabilities/core",
            "contains",
            '"core/messaging"',
            id="contains",
        ),
    ],
)
def test_error_names_path_and_rule(
    name: str, document: Any, path: str, rule: str, words: str
) -> None:
    with pytest.raises(OcpError) as info:
        validate(name, document)
    assert info.value.details == {"schema": name, "path": path, "rule": rule}
    assert words in info.value.message
    assert "\n" not in info.value.message


def test_unknown_schema_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        validate("no-such-schema", {})
    with pytest.raises(KeyError):
        load_schema("../pyproject")


def test_pattern_end_anchor_refuses_a_trailing_newline() -> None:
    """fastjsonschema anchors ``$`` at the very end; Python's ``re`` alone would not.

    The gate is therefore stricter than the reference here (by design, and the
    only such place): ``msg-...\\n`` is not a message id.
    """
    document = with_(ENVELOPE_PLAIN, message_id=ENVELOPE_PLAIN["message_id"] + "\n")
    assert not gate_accepts("envelope", document)
    assert reference("envelope").is_valid(document)


# ------------------------------------------------------------------ validate_envelope


@pytest.mark.parametrize(
    ("message_type", "payload"),
    [
        pytest.param(t, p, id=f"{t}-{i}")
        for t, payloads in PAYLOADS.items()
        for i, p in enumerate(payloads)
    ],
)
def test_envelope_of_every_message_type_is_accepted(message_type: str, payload: Any) -> None:
    validate_envelope(message(message_type, payload))


def test_envelope_payload_is_checked_by_message_type() -> None:
    document = message("discovery_ping", {"domains": ["healthcare"], "trust_level": 9})
    validate("envelope", document)  # the envelope itself is fine
    with pytest.raises(MalformedError) as info:
        validate_envelope(document)
    assert info.value.code == "OCP-400"
    assert info.value.details == {
        "schema": "payload.discovery_ping",
        "path": "$.payload.trust_level",
        "rule": "maximum",
    }


def test_envelope_payload_must_fit_its_own_type() -> None:
    document = message("ack", PAYLOADS["task_request"][0])
    with pytest.raises(MalformedError) as info:
        validate_envelope(document)
    assert info.value.details["schema"] == "payload.ack"


def test_encrypted_envelope_with_string_payload_is_accepted() -> None:
    validate_envelope(ENVELOPE_ENCRYPTED)
    assert isinstance(ENVELOPE_ENCRYPTED["payload"], str)


def test_string_payload_without_encryption_is_rejected() -> None:
    document = with_(ENVELOPE_ENCRYPTED, encryption=None)
    with pytest.raises(MalformedError) as info:
        validate_envelope(document)
    assert info.value.details["schema"] == "envelope"
    assert info.value.details["path"] == "$"
    assert info.value.details["rule"] == "required"


@pytest.mark.parametrize("document", [None, [], "msg", 42], ids=repr)
def test_envelope_that_is_not_an_object_is_rejected(document: Any) -> None:
    with pytest.raises(MalformedError):
        validate_envelope(document)


def test_validation_never_changes_the_document() -> None:
    document = with_(message("ack", {}), ttl=None, priority=None)
    before = copy.deepcopy(document)
    validate_envelope(document)
    assert document == before  # no defaults filled in


# ------------------------------------------------------------------ the gate itself


def test_schemas_are_compiled_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []
    original = schema_module.fastjsonschema.compile

    def counting(definition: object, **kwargs: Any) -> Any:
        calls.append(definition)
        return original(definition, **kwargs)

    monkeypatch.setattr(schema_module.fastjsonschema, "compile", counting)
    gate = SchemaGate()
    for _ in range(3):
        gate.validate_envelope(ENVELOPE_PLAIN)
    assert len(calls) == 2  # envelope and payload.task_request


def test_load_schema_returns_a_fresh_copy() -> None:
    first = load_schema("envelope")
    first["properties"] = {}
    assert load_schema("envelope")["properties"] != {}
    validate("envelope", ENVELOPE_PLAIN)


def test_gate_refuses_a_schema_of_another_dialect(tmp_path: Any) -> None:
    (tmp_path / "thing.json").write_text(
        json.dumps({"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object"})
    )
    gate = SchemaGate(tmp_path)
    assert gate.schema_names() == ["thing"]
    with pytest.raises(InternalError):
        gate.validate("thing", {})


def test_module_gate_is_the_default_instance() -> None:
    assert GATE.schema_names() == schema_names()


def test_validate_envelope_timing() -> None:
    """Measured, not asserted: the per-call cost of validate_envelope on ~1 KB."""
    document = message(
        "task_request",
        PAYLOADS["task_request"][0],
        metadata={"tags": ["finance", "risk"], "requires_ack": True, "trace_id": "t-1"},
    )
    size = len(json.dumps(document))
    encrypted = with_(
        document,
        message_type="knowledge_share",
        encryption=ENCRYPTION,
        payload=b64url(raw("c", 600)),
    )
    validate_envelope(document)
    validate_envelope(encrypted)
    runs = 2000
    plain = min(timeit.repeat(lambda: validate_envelope(document), number=runs, repeat=3)) / runs
    sealed = min(timeit.repeat(lambda: validate_envelope(encrypted), number=runs, repeat=3)) / runs
    print(  # reported on purpose: run with -s to see it
        f"\nvalidate_envelope: {plain * 1e6:.1f} us for a {size}-byte task_request, "
        f"{sealed * 1e6:.1f} us for a {len(json.dumps(encrypted))}-byte encrypted message"
    )


def test_custom_capabilities_need_org_and_name() -> None:
    import copy

    from ocpd.proto import schema as gate
    from ocpd.proto.errors import MalformedError
    from schema_examples import AGENT_RECORD

    record = copy.deepcopy(AGENT_RECORD)
    record["capabilities"][0]["id"] = "cap:custom:acme:triage"
    gate.validate("agent-record", record)
    record["capabilities"][0]["id"] = "cap:custom:acme"
    with pytest.raises(MalformedError):
        gate.validate("agent-record", record)
