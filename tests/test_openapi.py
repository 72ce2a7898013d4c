"""openapi/registry.yaml: well-formed OpenAPI 3.1, and in agreement with the registry it describes.

* Structure: the file parses, is OpenAPI 3.1 (checked by
  ``openapi-spec-validator`` when it is installed, and by hand either way),
  and every ``$ref`` resolves: local pointers, and relative references to the
  project's JSON Schemas in ``schemas/`` (the validator does not open files).
* Routes: the registry app is built the way the daemon builds it (a real
  SQLite database, ``build_component``, ``create_app`` for each port of the
  component) and its URL map must equal the documented (method, path) pairs,
  so a route added without documentation fails here.
* Traffic: the SDK (``ocpd.client``) and plain requests drive the in-process
  app through every documented operation, successes and refusals alike; every
  request body the SDK sends must validate against the documented request
  schema, and every answer must have a documented status, media type, body
  schema and headers.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import trio
import yaml
from jsonschema import Draft202012Validator
from quart_trio import QuartTrio
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from ocpd.client import AgentKey, CertifierKey, RegistryClient, RegistryError
from ocpd.client.registry import build_bond
from ocpd.clock import WallClock
from ocpd.components import ComponentContext, build_component
from ocpd.config import load_config
from ocpd.identity import init_identity
from ocpd.proto.auth import signed_post_headers
from ocpd.proto.crypto import SigningKey
from ocpd.proto.diddoc import rotate_did_document, sign_did_update
from ocpd.proto.encoding import format_timestamp
from ocpd.proto.ids import format_node_id, new_message_id
from ocpd.proto.netartifacts import build_node_advertisement
from ocpd.storage import Database, open_database
from ocpd.web import ComponentState, Metrics, create_app

ROOT = Path(__file__).resolve().parents[1]
SPEC_PATH = ROOT / "openapi" / "registry.yaml"
SPEC_URI = SPEC_PATH.as_uri()
SCHEMAS_DIR = ROOT / "schemas"
METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
#: Methods the framework adds to every rule by itself.
AUTOMATIC = {"HEAD", "OPTIONS"}
#: Rules that are no part of the API. Quart adds ``/static/<path:filename>``
#: to every app that has a static folder setting; ocpd serves no static files
#: (``create_app`` should pass ``static_folder=None``; until it does, the rule
#: answers 404 for everything and is left out of the comparison).
NOT_API = {"static"}

NETWORK = "testnet"
CAPS = [{"id": "cap:vision:imaging", "name": "Imaging", "version": "1.0"}]
ENDPOINTS = [{"transport": "ocp-ws", "url": "wss://agent.example/ocp/v1/ws", "priority": 1}]
PERMISSIONS = {
    "knowledge_share": {"enabled": True, "allowed_types": ["insight"]},
    "task_delegate": {"enabled": True, "max_concurrent": 2},
    "model_delta_share": {"enabled": False},
}
DISCOVERY_PER_MINUTE = 5
CERTIFIER = CertifierKey(SigningKey(bytes([50]) * 32))
TIMEOUT = 60


@cache
def spec() -> dict[str, Any]:
    loaded = yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _resolve_pointer(document: Any, pointer: str) -> Any:
    node = document
    if not pointer:
        return node
    assert pointer.startswith("/"), pointer
    for token in (_unescape(t) for t in pointer[1:].split("/")):
        if isinstance(node, list):
            node = node[int(token)]
        else:
            assert isinstance(node, dict) and token in node, f"{pointer}: no {token!r}"
            node = node[token]
    return node


def _refs(node: Any, where: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield where, value
            else:
                yield from _refs(value, f"{where}/{_escape(str(key))}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _refs(value, f"{where}/{i}")


def _operations() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec()["paths"].items():
        for method in METHODS:
            if method in item:
                yield method.upper(), path, item[method]


def _follow(node: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """A Response (or Parameter) object and its pointer when it is a local ``$ref``."""
    ref = node.get("$ref")
    if ref is None:
        return node, None
    assert ref.startswith("#/")
    pointer = ref[1:]
    target = _resolve_pointer(spec(), pointer)
    assert isinstance(target, dict)
    return target, pointer


# --- structure -------------------------------------------------------------------------------


def test_spec_is_openapi_3_1() -> None:
    doc = spec()
    assert re.fullmatch(r"3\.1\.\d+", str(doc["openapi"]))
    assert doc["info"]["title"]
    assert doc["info"]["version"]
    assert doc["paths"]
    assert set(doc["components"]) >= {"schemas", "responses", "securitySchemes"}
    scheme = doc["components"]["securitySchemes"]["OcpEd25519"]
    assert (scheme["type"], scheme["in"], scheme["name"]) == ("apiKey", "header", "Authorization")
    # The D3 signing string is spelt out for client authors.
    assert "OCP-HTTP-1.0" in scheme["description"]
    assert "SHA3-256(body)" in scheme["description"]


def test_spec_passes_openapi_spec_validator() -> None:
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(spec(), base_uri=SPEC_URI)


def test_every_ref_resolves() -> None:
    seen_files = set()
    refs = list(_refs(spec()))
    assert len(refs) > 50
    for where, ref in refs:
        target, _, fragment = ref.partition("#")
        if not target:
            _resolve_pointer(spec(), fragment)
            continue
        # Relative references go to the project's own JSON Schemas, and nowhere else.
        assert not re.match(r"[a-z]+:", target), f"{where}: {ref} is not a relative reference"
        path = (SPEC_PATH.parent / target).resolve()
        assert path.parent == SCHEMAS_DIR.resolve(), f"{where}: {ref} is outside schemas/"
        assert path.is_file(), f"{where}: {ref} does not exist"
        document = json.loads(path.read_text(encoding="utf-8"))
        _resolve_pointer(document, fragment)
        seen_files.add(path.name)
        # The schema's own references (#/definitions/...) resolve too.
        for inner_where, inner in _refs(document):
            assert inner.startswith("#/"), f"{path.name}{inner_where}: {inner}"
            _resolve_pointer(document, inner[1:])
    assert seen_files == {
        "agent-record.json",
        "did-document.json",
        "did-document-update.json",
        "vouch.json",
        "vouch-revocation.json",
        "bond.json",
        "bond-revocation.json",
        "interaction-rating.json",
        "certification.json",
        "certification-revocation.json",
        "node-advertisement.v1.json",
    }


def test_operations_are_complete() -> None:
    ids = []
    for method, path, op in _operations():
        where = f"{method} {path}"
        ids.append(op["operationId"])
        assert op.get("summary"), where
        assert "security" in op, f"{where}: say explicitly who may call it"
        assert op["responses"], where
        declared = {
            p["name"]
            for p in (
                _follow(p)[0]
                for p in [*spec()["paths"][path].get("parameters", []), *op.get("parameters", [])]
            )
            if p["in"] == "path"
        }
        assert declared == set(re.findall(r"\{([^}]+)\}", path)), where
        for status, response in op["responses"].items():
            response, _ = _follow(response)
            assert response["description"], f"{where} {status}"
            if status == "429":
                assert "Retry-After" in response["headers"], where
            if int(status) >= 400 and path != "/health":  # an unhealthy 503 is the health body
                schema = response["content"]["application/json"]["schema"]["$ref"]
                assert schema in ("#/components/schemas/Error", "#/components/schemas/SeedError")
        security = op["security"]
        if security and {} not in security:
            assert "401" in op["responses"], f"{where}: signed, so it can fail with 401"
    assert len(ids) == len(set(ids))


# --- routes: the spec and the app agree -----------------------------------------------------


def _openapi_path(rule: str) -> str:
    """``/agents/<agent_id>`` (or ``<string:agent_id>``) as ``/agents/{agent_id}``."""
    return re.sub(r"<(?:[a-z_]+:)?([A-Za-z_][A-Za-z0-9_]*)>", r"{\1}", rule)


@dataclass
class Harness:
    apps: dict[str, QuartTrio]
    anchors: list[AgentKey]
    mode: str
    exchanges: list[Exchange] = field(default_factory=list)

    def routes(self) -> set[tuple[str, str]]:
        found = set()
        for app in self.apps.values():
            for rule in app.url_map.iter_rules():
                if rule.endpoint in NOT_API:
                    continue
                for method in set(rule.methods or ()) - AUTOMATIC:
                    found.add((method, _openapi_path(rule.rule)))
        return found

    def http(self) -> httpx.AsyncClient:
        [app] = self.apps.values()
        return httpx.AsyncClient(
            transport=AppTransport(app, self.exchanges), base_url="https://registry.test"
        )

    def client(self, agent: AgentKey) -> RegistryClient:
        client = RegistryClient("https://registry.test", agent)
        client._http = self.http()
        return client


@dataclass
class Exchange:
    method: str
    target: str
    request_headers: dict[str, str]
    request_body: bytes
    status: int
    response_headers: dict[str, str]
    response_body: bytes


class AppTransport(httpx.AsyncBaseTransport):
    """httpx requests served by the Quart app in-process, each one recorded."""

    def __init__(self, app: QuartTrio, log: list[Exchange]) -> None:
        self._client = app.test_client()
        self._log = log

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        target = request.url.raw_path.decode("ascii")
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        response = await self._client.open(
            target, method=request.method, headers=headers, data=body
        )
        data = await response.get_data()
        self._log.append(
            Exchange(
                request.method,
                target,
                {k.lower(): v for k, v in request.headers.items()},
                body,
                response.status_code,
                {k.lower(): v for k, v in response.headers.items()},
                data,
            )
        )
        return httpx.Response(
            response.status_code,
            headers=list(response.headers.items()),
            content=data,
            request=request,
        )


MODES = ("centralized", "federated")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def _build(
    tmp_path: Path, nursery: trio.Nursery, *, mode: str, start: bool
) -> tuple[Harness, Database]:
    """The registry component's apps, built as the daemon builds them, on a real database.

    ``start``: run the component's services too (the routes wait for them).
    A federated registry gets one peer that never answers.
    """
    anchors = [AgentKey(SigningKey(bytes([40 + i]) * 32), NETWORK) for i in range(3)]
    config_file = tmp_path / "ocpd.yml"
    peers = f"  peers: [https://127.0.0.1:{_closed_port()}]\n" if mode == "federated" else ""
    config_file.write_text(
        f"node:\n  network: {NETWORK}\n"
        f"registry:\n  mode: {mode}\n{peers}"
        f"  session_reporters: [{anchors[2].agent_id}]\n"
        f"trust:\n  anchors: [{', '.join(a.agent_id for a in anchors)}]\n"
        f"  certifier_keys: [{CERTIFIER.multibase}]\n"
        f"rate_limiting:\n  discovery_per_minute: {DISCOVERY_PER_MINUTE}\n",
        encoding="utf-8",
    )
    config, _ = load_config(config_file, environ={})
    database = await open_database(tmp_path / "registry.db", "registry")
    nursery.start_soon(database.run)
    metrics = Metrics()
    context = ComponentContext(
        component="registry",
        config=config,
        database=database,
        identity=init_identity(tmp_path / "data", now=time.time()),
        metrics=metrics,
        clock=WallClock(),
    )
    runtime = build_component(context)
    if start:
        for service in runtime.services:
            await nursery.start(service)
    state = ComponentState(
        component="registry",
        network=config.node.network,
        database=database,
        data_dir=tmp_path,
        metrics=metrics,
        started_at=trio.current_time(),
        min_free_disk_bytes=0,
        min_available_memory_bytes=0,
    )
    apps = {
        port: create_app(port, [state], installers=runtime.routes.get(port, []))
        for port in config.ports("registry")
    }
    return Harness(apps, anchors, mode), database


@pytest.fixture
async def harness(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Harness]:
    built, database = await _build(tmp_path, nursery, mode="centralized", start=True)
    yield built
    database.close()


@pytest.fixture
async def federated(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Harness]:
    built, database = await _build(tmp_path, nursery, mode="federated", start=True)
    yield built
    database.close()


def _served_in(mode: str) -> set[tuple[str, str]]:
    """The documented (method, path) pairs a registry in ``mode`` serves."""
    return {
        (method, path)
        for method, path, op in _operations()
        if mode in op.get("x-registry-modes", MODES)
    }


def test_openapi_path_conversion() -> None:
    assert _openapi_path("/a/<agent_id>/did.json") == "/a/{agent_id}/did.json"
    assert _openapi_path("/b/<string:bond_id>/x") == "/b/{bond_id}/x"


@pytest.mark.parametrize("mode", MODES)
async def test_documented_routes_equal_the_app_routes(
    mode: str, tmp_path: Path, nursery: trio.Nursery
) -> None:
    built, database = await _build(tmp_path, nursery, mode=mode, start=False)
    try:
        served = built.routes()
    finally:
        database.close()
    documented = _served_in(mode)
    assert served - documented == set(), "routes the OpenAPI file does not describe"
    assert documented - served == set(), "documented routes the registry does not serve"
    assert ("GET", "/health") in served
    assert ("PUT", "/adv/{node_id}") in served
    push = ("POST", "/ocp/v1/registry/federation/push")
    assert (push in served) == (mode == "federated")


def test_mode_extension_names_known_modes() -> None:
    for method, path, op in _operations():
        assert set(op.get("x-registry-modes", MODES)) <= set(MODES), f"{method} {path}"
    assert _served_in("centralized") < _served_in("federated")


# --- traffic: requests and answers match the spec --------------------------------------------


@cache
def _registry() -> Registry[Any]:
    resources: list[tuple[str, Resource[Any]]] = [
        (SPEC_URI, Resource.from_contents(spec(), default_specification=DRAFT202012))
    ]
    for path in SCHEMAS_DIR.glob("*.json"):
        contents = json.loads(path.read_text(encoding="utf-8"))
        resource = Resource.from_contents(contents)  # Draft-07, from its $schema
        resources += [(path.as_uri(), resource), (contents["$id"], resource)]
    return Registry().with_resources(resources)


def schema_errors(pointer: str, instance: Any) -> list[str]:
    """What is wrong with ``instance`` under the schema at ``pointer`` in the spec."""
    validator = Draft202012Validator({"$ref": f"{SPEC_URI}#{pointer}"}, registry=_registry())
    return [
        f"/{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}"
        for e in validator.iter_errors(instance)
    ]


def _match(method: str, path: str) -> tuple[str, dict[str, Any], dict[str, str]]:
    for m, template, op in _operations():
        pattern = re.sub(r"\\\{([^}]+)\\\}", r"(?P<\1>[^/]+)", re.escape(template))
        found = re.fullmatch(pattern, path)
        if m == method and found:
            return template, op, found.groupdict()
    raise AssertionError(f"{method} {path} is not documented")


def _media(content_type: str) -> str:
    return content_type.split(";")[0].strip().lower()


AUTHORIZATION = re.compile(
    r"OCP-Ed25519 did:ocp:[a-z0-9-]{1,32}:agent-[0-9a-f]{12}:"
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?Z:[A-Za-z0-9_-]{86}"
)


def exchange_problems(exchange: Exchange, *, request_valid: bool) -> list[str]:
    """Where one request and its answer depart from the spec."""
    path, _, query = exchange.target.partition("?")
    template, op, params = _match(exchange.method, path)
    base = f"/paths/{_escape(template)}/{exchange.method.lower()}"
    problems: list[str] = []
    if request_valid:
        for name, value in params.items():
            problems += schema_errors(_parameter_schema(template, exchange.method, name), value)
        declared = {p["name"]: p for p in op.get("parameters", []) if p["in"] == "query"}
        for name, values in parse_qs(query, keep_blank_values=True).items():
            if name not in declared:
                problems.append(f"query parameter {name!r} is not documented")
                continue
            pointer = _parameter_schema(template, exchange.method, name)
            for value in values:
                is_int = declared[name]["schema"].get("type") == "integer" and value.isdigit()
                problems += schema_errors(pointer, int(value) if is_int else value)
        if "requestBody" in op:
            body = json.loads(exchange.request_body)
            problems += schema_errors(f"{base}/requestBody/content/application~1json/schema", body)
        authorization = exchange.request_headers.get("authorization")
        if op["security"] and {} not in op["security"] and authorization is None:
            problems.append("a signed operation without Authorization")
        if authorization is not None:
            if not op["security"]:
                problems.append("Authorization sent to an operation that takes none")
            if not AUTHORIZATION.fullmatch(authorization):
                problems.append(f"Authorization {authorization!r} is not OCP-Ed25519")
    status = str(exchange.status)
    if status not in op["responses"]:
        return [*problems, f"status {status} is not documented"]
    response, pointer = _follow(op["responses"][status])
    response_base = pointer or f"{base}/responses/{status}"
    media = _media(exchange.response_headers.get("content-type", ""))
    if media not in response.get("content", {}):
        problems.append(f"{status}: media type {media!r} is not documented")
    elif media != "text/plain":
        body = json.loads(exchange.response_body)
        problems += schema_errors(f"{response_base}/content/{_escape(media)}/schema", body)
    for name, header in response.get("headers", {}).items():
        header, header_pointer = _follow(header)
        value = exchange.response_headers.get(name.lower())
        if value is None:
            if header.get("required"):
                problems.append(f"{status}: no {name} header")
            continue
        schema = f"{header_pointer or f'{response_base}/headers/{_escape(name)}'}/schema"
        if header["schema"].get("type") == "integer":
            if not value.isdigit():
                problems.append(f"{status}: {name} {value!r} is not an integer")
                continue
            problems += schema_errors(schema, int(value))
        else:
            problems += schema_errors(schema, value)
    return [f"{exchange.method} {exchange.target} -> {p}" for p in problems]


def _parameter_schema(template: str, method: str, name: str) -> str:
    """The pointer to the schema of a parameter, declared on the path or the operation."""
    item = spec()["paths"][template]
    places = (
        (f"/paths/{_escape(template)}/parameters", item.get("parameters", [])),
        (
            f"/paths/{_escape(template)}/{method.lower()}/parameters",
            item[method.lower()].get("parameters", []),
        ),
    )
    for where, parameters in places:
        for i, parameter in enumerate(parameters):
            resolved, pointer = _follow(parameter)
            if resolved["name"] == name:
                return f"{pointer or f'{where}/{i}'}/schema"
    raise AssertionError(f"{template}: no parameter {name}")


async def _signed_post(
    http: httpx.AsyncClient, agent: AgentKey, path: str, body: object
) -> httpx.Response:
    """A POST signed a second ahead: the SDK's own request for the same body may be this second."""
    data = json.dumps(body).encode()
    headers = signed_post_headers(
        agent.key, agent_id=agent.agent_id, path_and_query=path, body=data, now=time.time() + 1
    )
    return await http.post(path, content=data, headers=headers)


async def _status(call: Any) -> int:
    try:
        await call
    except RegistryError as exc:
        return exc.status
    return 200


async def _register(
    harness: Harness, agent: AgentKey, domains: list[str], *, now: float | None = None
) -> dict[str, Any]:
    async with harness.client(agent) as client:
        record = client.build_record(
            display_name=f"agent {agent.agent_id[-4:]}",
            capabilities=CAPS,
            domains=domains,
            endpoints=ENDPOINTS,
            now=now,
        )
        return await client.register(record)


async def test_sdk_traffic_matches_the_spec(harness: Harness) -> None:
    """Every documented operation, driven through the SDK where it has a call for it."""
    invalid: set[int] = set()  # indexes of exchanges that send a deliberately bad request

    def bad_next() -> None:
        invalid.add(len(harness.exchanges))

    x, y = (AgentKey.generate(NETWORK) for _ in range(2))
    with trio.fail_after(TIMEOUT):
        for anchor in harness.anchors:
            assert (await _register(harness, anchor, ["finance"]))["trust_level"] == 2
        await _register(harness, x, ["healthcare.oncology"])
        await _register(harness, y, ["radiology"])
        # A renewal (200). The SDK signs whole-second timestamps, so the same
        # request twice within a second would be a replay: the record moves on.
        await _register(harness, x, ["healthcare.oncology"], now=time.time() + 1)
        a0, a1, a2 = (harness.client(a) for a in harness.anchors)
        cx, cy = harness.client(x), harness.client(y)

        await cx.get_agent(x.agent_id)
        assert await cx.resolve_did(x.agent_id) == x.did_document()
        await cx.trust(x.agent_id)
        await cx.info()
        assert (await cx.discover(domains=["healthcare"]))["total"] == 2
        assert await _status(cx.get_agent(AgentKey.generate(NETWORK).agent_id)) == 404
        assert await _status(cx.trust(AgentKey.generate(NETWORK).agent_id)) == 404
        assert await _status(cx.resolve_did(AgentKey.generate(NETWORK).agent_id)) == 404
        bad_next()
        assert await _status(cx._request("GET", "/agents/did:ocp:Bad")) == 400

        # vouches: stored, stored again, refused, revoked
        first = await a0.vouch(x.agent_id)
        assert first["stored"] is True
        await a1.vouch(x.agent_id)
        await a2.vouch(x.agent_id)
        async with harness.http() as http:
            again = await _signed_post(
                http, harness.anchors[0], "/ocp/v1/registry/vouches", first["vouch"]
            )
        assert again.json()["stored"] is False
        assert await _status(cy.vouch(x.agent_id)) == 403  # Level 1 may not vouch
        bad_next()
        assert await _status(a0.vouch(harness.anchors[0].agent_id)) == 400  # self-vouch
        assert await _status(a0.vouch(x.agent_id, days=366)) == 400
        await a0.revoke_vouch(first["vouch"])

        # a bond between two anchors, then its revocation
        bond = build_bond(
            harness.anchors[0].agent_id,
            harness.anchors[1].agent_id,
            permissions=PERMISSIONS,
            now=time.time(),
        )
        signed = a1.sign_bond(a0.sign_bond(bond))
        assert (await a0.submit_bond(signed))["state"] == "active"
        assert [b["bond_id"] for b in await cx.bonds(harness.anchors[1].agent_id)] == [
            bond["bond_id"]
        ]
        assert await cx.bonds(x.agent_id) == []
        assert await _status(cx.bonds(AgentKey.generate(NETWORK).agent_id)) == 404

        # a certification lifts the bonded anchor to Level 4; the same again is
        # not stored twice; an unknown certifier and a forgery are refused
        certification = CERTIFIER.certify(harness.anchors[0].agent_id, scope=["finance"])
        assert (await cx.submit_certification(certification))["subject_level"] == 4
        async with harness.http() as http:
            again = await _signed_post(http, x, "/ocp/v1/registry/certifications", certification)
        assert again.json()["stored"] is False
        stranger = CertifierKey.generate().certify(harness.anchors[1].agent_id)
        assert await _status(cx.submit_certification(stranger)) == 403
        forged = {**certification, "subject": harness.anchors[1].agent_id}
        assert await _status(cx.submit_certification(forged)) == 401
        bad_next()
        too_long = CERTIFIER.certify(harness.anchors[1].agent_id, days=366)
        assert await _status(cx.submit_certification(too_long)) == 400
        unknown = CERTIFIER.certify(AgentKey.generate(NETWORK).agent_id)
        assert await _status(cx.submit_certification(unknown)) == 404
        revoked = await cx.revoke_certification(CERTIFIER.revoke(certification))
        assert revoked["subject_level"] == 3
        elsewhere = CERTIFIER.revoke(CERTIFIER.certify(harness.anchors[1].agent_id))
        assert await _status(cx.revoke_certification(elsewhere)) == 404
        one_sided = a0.sign_bond(
            build_bond(
                harness.anchors[0].agent_id,
                harness.anchors[2].agent_id,
                permissions=PERMISSIONS,
                now=time.time(),
            )
        )
        bad_next()
        assert await _status(a0.submit_bond(one_sided)) in (400, 401)
        await a1.revoke_bond(bond["bond_id"], reason="done")
        assert await _status(a1.revoke_bond("bond-00000000-0000-4000-8000-000000000000")) == 404

        # ratings
        await cy.rate(x.agent_id, 0.9, interaction_id=new_message_id())

        # session time, by the configured reporter only
        sessions = {
            "sessions": [
                {
                    "agent_id": agent_id,
                    "started_at": format_timestamp(time.time() - 30),
                    "ended_at": format_timestamp(time.time()),
                }
                for agent_id in (x.agent_id, AgentKey.generate(NETWORK).agent_id)
            ]
        }
        async with harness.http() as http:
            path = "/ocp/v1/registry/sessions"
            counted = await _signed_post(http, harness.anchors[2], path, sessions)
            assert counted.status_code == 200 and counted.json()["counted"] == 1
            assert (await _signed_post(http, y, path, sessions)).status_code == 403

        # key rotation: the new document is signed by the current key
        new_key = SigningKey.generate()
        rotated = rotate_did_document(x.did_document(), new_key.public_key, now=time.time())
        update = sign_did_update(rotated, x.key, signer=f"{x.agent_id}#key-1", now=time.time())
        assert len((await cx.update_did(update))["active_keys"]) == 2

        # a replayed Authorization is refused
        async with harness.http() as http:
            body = json.dumps({"filters": {}}).encode()
            headers = signed_post_headers(
                y.key,
                agent_id=y.agent_id,
                path_and_query="/ocp/v1/registry/discover",
                body=body,
                now=time.time(),
            )
            for expected in (200, 401):
                response = await http.post(
                    "/ocp/v1/registry/discover", content=body, headers=headers
                )
                assert response.status_code == expected

            # a registration whose id does not derive from the document's key
            impostor = AgentKey.generate(NETWORK)
            async with harness.client(impostor) as ci:
                record = ci.build_record(
                    display_name="impostor",
                    capabilities=CAPS,
                    domains=["finance"],
                    endpoints=ENDPOINTS,
                )
                assert await _status(ci.register(record, x.did_document())) == 401

            # discovery limit: unsigned queries count against the client address
            statuses = []
            for _ in range(DISCOVERY_PER_MINUTE + 1):
                response = await http.post("/ocp/v1/registry/discover", json={"limit": 1})
                statuses.append(response.status_code)
            assert statuses[-1] == 429

            response = await http.get("/ocp/v1/registry/sync", params={"since": 0, "limit": 3})
            page = response.json()
            assert page["more"] is True
            response = await http.get("/ocp/v1/registry/sync", params={"since": page["cursor"]})
            assert {c["kind"] for c in response.json()["changes"]} >= {
                "agent",
                "vouch",
                "vouch_revocation",
                "bond",
                "bond_revocation",
                "rating",
                "did_update",
                "certification",
                "certification_revocation",
            }
            bad_next()
            assert (await http.get("/ocp/v1/registry/sync?since=x")).status_code == 400
            bad_next()
            assert (await http.post("/ocp/v1/registry/agents", content=b"[")).status_code == 400

            # the seed directory
            node_key = SigningKey.generate()
            endpoints = [
                {"url": "wss://seed.example/ocp/v1/peer", "transport": "wss", "priority": 0}
            ]
            ads = [
                build_node_advertisement(node_key, sequence=n, endpoints=endpoints, now=time.time())
                for n in (1, 2)
            ]
            where = f"/adv/{ads[0]['node/id']}"
            assert (await http.put(where, json=ads[0])).status_code == 201
            assert (await http.put(where, json=ads[1])).status_code == 200
            stale = await http.put(where, json=ads[0])
            assert stale.status_code == 409
            assert stale.json()["error_class"] == "advertisement/stale-sequence"
            assert (await http.get(where)).json() == ads[1]
            other = build_node_advertisement(
                SigningKey.generate(), sequence=1, endpoints=endpoints, now=time.time()
            )
            assert (await http.get(f"/adv/{other['node/id']}")).status_code == 404
            bad_next()
            assert (await http.put(where, json=other)).status_code == 400
            bad_next()
            assert (await http.get("/adv/node:did:key:zbad")).status_code == 400
            assert (await http.get("/adv", params={"since": 0, "limit": 10})).status_code == 200
            bad_next()
            assert (await http.get("/adv?limit=0")).status_code == 400

            assert (await http.get("/health")).status_code == 200
            assert (await http.get("/metrics")).status_code == 200

        for client in (a0, a1, a2, cx, cy):
            await client.aclose()

    problems = []
    for i, exchange in enumerate(harness.exchanges):
        problems += exchange_problems(exchange, request_valid=i not in invalid)
    assert problems == []

    # Every operation was exercised, and so was each documented error family.
    seen = {(e.method, _match(e.method, e.target.partition("?")[0])[0]) for e in harness.exchanges}
    assert seen == _served_in("centralized")
    statuses = {e.status for e in harness.exchanges}
    assert statuses >= {200, 201, 400, 401, 403, 404, 409, 429}


# --- request bodies the SDK builds ------------------------------------------------------------


def _request_schema(method: str, path: str) -> str:
    return f"/paths/{_escape(path)}/{method}/requestBody/content/application~1json/schema"


def test_sdk_builders_produce_documented_bodies() -> None:
    agent, other = AgentKey.generate(NETWORK), AgentKey.generate(NETWORK)
    client = RegistryClient("https://registry.test", agent)
    record = client.build_record(
        display_name="builder", capabilities=CAPS, domains=["finance"], endpoints=ENDPOINTS
    )
    registration = {"record": record, "did_document": agent.did_document()}
    assert schema_errors(_request_schema("post", "/ocp/v1/registry/agents"), registration) == []
    vouch = client.build_vouch(other.agent_id, domains=["finance"])
    assert schema_errors(_request_schema("post", "/ocp/v1/registry/vouches"), vouch) == []
    bond = build_bond(agent.agent_id, other.agent_id, permissions=PERMISSIONS, now=time.time())
    signed = RegistryClient("https://registry.test", other).sign_bond(client.sign_bond(bond))
    assert schema_errors(_request_schema("post", "/ocp/v1/registry/bonds"), signed) == []
    certification = CERTIFIER.certify(agent.agent_id, scope=["finance"], statement="audited")
    path = "/ocp/v1/registry/certifications"
    assert schema_errors(_request_schema("post", path), certification) == []
    revocation = CERTIFIER.revoke(certification, reason="audit withdrawn")
    assert schema_errors(_request_schema("post", f"{path}/revocations"), revocation) == []
    # The schemas bite: a record without capabilities is not a registration.
    broken = {"record": {**record, "capabilities": []}, "did_document": agent.did_document()}
    assert schema_errors(_request_schema("post", "/ocp/v1/registry/agents"), broken)


async def test_federation_push_matches_the_spec(federated: Harness) -> None:
    node_id = format_node_id(SigningKey.generate().public_key)
    with trio.fail_after(TIMEOUT):
        async with federated.http() as http:
            path = "/ocp/v1/registry/federation/push"
            assert (
                await http.post(path, json={"node_id": node_id, "cursor": 7})
            ).status_code == 202
            assert (await http.post(path, content=b"[1]")).status_code == 400
            oversized = json.dumps({"node_id": node_id, "cursor": 7, "pad": "x" * 5000})
            assert (await http.post(path, content=oversized)).status_code == 413
    problems = []
    for i, exchange in enumerate(federated.exchanges):
        problems += exchange_problems(exchange, request_valid=i == 0)
    assert problems == []
