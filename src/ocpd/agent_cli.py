"""``ocpd agent …``: the agent SDK from a shell.

* ``keygen``   write a key file and print the agent id;
* ``register`` register (or renew) the agent with a registry;
* ``discover`` query a registry;
* ``send``     send one message (optionally encrypted, optionally waiting
  for the receiver's ack) over WebSocket or HTTPS;
* ``listen``   print incoming messages as JSON lines until interrupted;
  knowledge shares are checked by the PVL and answered with
  ``knowledge_ack`` first;
* ``pvl``      run the Privacy Validation Layer on a knowledge payload;
* ``share``    share knowledge (checked by the PVL first, encrypted by default);
* ``task``     ``delegate`` a task (and follow it with ``--wait``) or
  ``answer`` one;
* ``consensus`` ``run`` a round as its initiator (open, collect until the
  deadline, tally, announce) or ``vote`` in one;
* ``recovery`` ``split`` the key over custodians, ``recover`` it, ``rotate``
  it afterwards (:mod:`ocpd.agent_recovery`).

URLs and files fall back to environment variables (``OCP_AGENT_KEY``,
``OCP_REGISTRY_URL``, ``OCP_NODE_URL``, ``OCP_NODE_HTTP_URL``,
``OCP_CA_FILE``, ``OCP_NETWORK``). Results go to stdout as JSON; a failure
is one line on stderr and exit status 1.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn
from urllib.parse import urlsplit

import httpx
import trio

from ocpd.client import (
    AgentKey,
    NodeClient,
    NodeError,
    RegistryClient,
    RegistryError,
    UnknownAgent,
)
from ocpd.client.collab import (
    ConsensusRoundRunner,
    KnowledgeExchange,
    TaskDelegation,
    bond_permissions,
    misplaced_result,
    send_vote,
)
from ocpd.identity import IdentityError, read_key_file
from ocpd.proto.errors import OcpError
from ocpd.proto.ids import parse_agent_id
from ocpd.proto.pvl import PvlPolicy, check_outgoing
from ocpd.proto.strictjson import loads_strict

if TYPE_CHECKING:
    import argparse
    import ssl
    from collections.abc import AsyncIterator, Callable, Coroutine, Iterable

    from ocpd.client.inbox import ReceivedMessage

__all__ = ["add_parser", "run"]

DEFAULT_NETWORK = "mainnet"
MAX_PAYLOAD_FILE = 16_777_216
_ENDPOINT_TRANSPORTS = {
    "wss": "ocp-ws",
    "ws": "ocp-ws",
    "https": "ocp-http",
    "http": "ocp-http",
    "nats": "ocp-nats",
    "tls": "ocp-nats",
    "grpc": "ocp-grpc",
    "grpcs": "ocp-grpc",
}


class AgentCliError(Exception):
    """A problem the user can fix; printed as one line."""


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


def _add_key(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--key",
        default=_env("OCP_AGENT_KEY"),
        metavar="PATH",
        help="agent key file ($OCP_AGENT_KEY)",
    )
    parser.add_argument(
        "--network", default=None, help="network (default: the key file's, else $OCP_NETWORK)"
    )


def _add_tls(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ca-file",
        default=_env("OCP_CA_FILE"),
        metavar="PATH",
        help="CA bundle for the node's and registry's TLS certificates ($OCP_CA_FILE; "
        "default: the system's trust store)",
    )


def _add_registry(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument(
        "--registry-url",
        default=_env("OCP_REGISTRY_URL"),
        metavar="URL",
        help="registry, e.g. https://host:8422 ($OCP_REGISTRY_URL)"
        + ("" if required else "; needed to verify senders and encrypt"),
    )


def _add_node(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--node-url",
        default=_env("OCP_NODE_URL"),
        metavar="URL",
        help="node WebSocket endpoint, e.g. wss://host:8421 ($OCP_NODE_URL)",
    )
    parser.add_argument(
        "--http-url",
        default=_env("OCP_NODE_HTTP_URL"),
        metavar="URL",
        help="node HTTPS endpoint, e.g. https://host:8420 ($OCP_NODE_HTTP_URL)",
    )


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``agent`` and its actions to the ``ocpd`` parser."""
    agent = sub.add_parser(
        "agent",
        help="act as an agent: keys, registration, discovery, messages",
        description="The agent SDK from a shell. Output is JSON; errors exit 1.",
    )
    actions = agent.add_subparsers(dest="agent_command", metavar="ACTION", required=True)

    keygen = actions.add_parser("keygen", help="write a new agent key file; print the agent id")
    keygen.add_argument("--out", required=True, metavar="PATH", help="key file to write (0600)")
    keygen.add_argument("--network", default=None, help="network ($OCP_NETWORK, else mainnet)")

    register = actions.add_parser("register", help="register (or renew) this agent")
    _add_key(register)
    _add_registry(register, required=True)
    _add_tls(register)
    register.add_argument("--display-name", default=None)
    register.add_argument(
        "--domain", action="append", default=[], required=True, help="domain (repeat)"
    )
    register.add_argument(
        "--capability",
        action="append",
        default=[],
        required=True,
        metavar="CAP",
        help="capability id like cap:vision:imaging, or a JSON object (repeat)",
    )
    register.add_argument(
        "--endpoint",
        action="append",
        default=[],
        required=True,
        metavar="URL",
        help="endpoint URL, highest priority first (repeat); wss:// is ocp-ws, https:// ocp-http",
    )
    register.add_argument("--ttl", type=int, default=86_400, help="record ttl in seconds")
    register.add_argument(
        "--recovery-key",
        default=None,
        metavar="PATH",
        help="publish this key file's public key as the DID document's #recovery-key-1",
    )

    discover = actions.add_parser("discover", help="find agents by domain and capability")
    _add_key(discover)
    _add_registry(discover, required=True)
    _add_tls(discover)
    discover.add_argument("--domain", action="append", default=[])
    discover.add_argument("--capability", action="append", default=[])
    discover.add_argument("--min-trust-level", type=int, default=0)
    discover.add_argument("--limit", type=int, default=20)
    discover.add_argument("--offset", type=int, default=0)

    send = actions.add_parser("send", help="send one message")
    _add_key(send)
    _add_node(send)
    _add_registry(send, required=False)
    _add_tls(send)
    send.add_argument("--to", required=True, metavar="AGENT_ID", help="receiver agent id")
    send.add_argument("--type", default="knowledge_share", help="message type")
    send.add_argument(
        "--payload",
        required=True,
        metavar="JSON",
        help="payload object as JSON, @FILE to read it from a file, or - for stdin",
    )
    send.add_argument("--encrypt", action="store_true", help="encrypt to the receiver (D5)")
    send.add_argument(
        "--ack", action="store_true", help="set requires_ack and wait for the receiver's ack"
    )
    send.add_argument("--via", choices=("ws", "http"), default=None, help="transport")
    send.add_argument("--ttl", type=int, default=3600)
    send.add_argument("--priority", choices=("low", "normal", "high", "critical"), default="normal")

    listen = actions.add_parser(
        "listen", help="print incoming messages as JSON lines (knowledge checked by the PVL)"
    )
    _add_key(listen)
    _add_node(listen)
    _add_registry(listen, required=True)
    _add_tls(listen)
    listen.add_argument(
        "--no-auto-ack", action="store_true", help="do not ack messages that ask for one"
    )
    listen.add_argument("--count", type=int, default=None, help="exit after this many messages")

    pvl = actions.add_parser("pvl", help="check a knowledge payload with the PVL, send nothing")
    _add_key(pvl)
    _add_registry(pvl, required=False)
    _add_tls(pvl)
    pvl.add_argument(
        "--to", default=None, metavar="AGENT_ID", help="apply the bond with this agent"
    )
    pvl.add_argument("--payload", required=True, metavar="JSON", help="JSON, @FILE or -")

    share = actions.add_parser("share", help="share knowledge (PVL-checked, encrypted)")
    _add_key(share)
    _add_node(share)
    _add_registry(share, required=True)
    _add_tls(share)
    share.add_argument("--to", required=True, metavar="AGENT_ID")
    share.add_argument("--payload", required=True, metavar="JSON", help="JSON, @FILE or -")
    share.add_argument("--plain", action="store_true", help="do not encrypt the payload")
    share.add_argument("--ack", action="store_true", help="wait for the receiver's ack")

    task = actions.add_parser("task", help="delegate a task, or answer one")
    task_actions = task.add_subparsers(dest="task_command", metavar="ACTION", required=True)
    delegate = task_actions.add_parser("delegate", help="send a task_request")
    answer = task_actions.add_parser("answer", help="send a task_response")
    for parser in (delegate, answer):
        _add_key(parser)
        _add_node(parser)
        _add_registry(parser, required=False)
        _add_tls(parser)
        parser.add_argument("--to", required=True, metavar="AGENT_ID")
    delegate.add_argument("--task-type", required=True)
    delegate.add_argument("--data", default="null", metavar="JSON", help="input data (JSON)")
    delegate.add_argument("--description", default=None)
    delegate.add_argument("--max-duration", type=int, required=True, metavar="SECONDS")
    delegate.add_argument("--capability", action="append", default=[], metavar="CAP")
    delegate.add_argument("--min-trust-level", type=int, default=None)
    delegate.add_argument(
        "--wait", action="store_true", help="print each task_response until the task ends"
    )
    answer.add_argument("--task-id", required=True)
    answer.add_argument(
        "--status",
        required=True,
        choices=("accepted", "in_progress", "completed", "failed", "rejected"),
    )
    answer.add_argument("--data", default=None, metavar="JSON", help="result data (completed)")
    answer.add_argument("--confidence", type=float, default=None)
    answer.add_argument("--reason", default=None)

    rounds = actions.add_parser("consensus", help="run a consensus round, or vote in one")
    round_actions = rounds.add_subparsers(dest="consensus_command", metavar="ACTION", required=True)
    run_round = round_actions.add_parser(
        "run", help="open a round, collect votes until the deadline, tally and announce"
    )
    _add_key(run_round)
    _add_node(run_round)
    _add_registry(run_round, required=True)
    _add_tls(run_round)
    run_round.add_argument(
        "--participant", action="append", required=True, metavar="AGENT_ID", help="(repeat)"
    )
    run_round.add_argument("--topic", required=True)
    run_round.add_argument("--option", action="append", required=True, help="(repeat, ≥ 2)")
    run_round.add_argument("--deadline-in", type=float, required=True, metavar="SECONDS")
    run_round.add_argument("--min-participants", type=int, required=True)
    run_round.add_argument("--threshold", type=float, required=True)
    run_round.add_argument("--unweighted", action="store_true", help="ignore trust scores")
    run_round.add_argument("--min-trust-level", type=int, default=None)
    run_round.add_argument("--domain", action="append", default=[], help="required domain")
    vote = round_actions.add_parser("vote", help="sign a vote and send it to the initiator")
    _add_key(vote)
    _add_node(vote)
    _add_registry(vote, required=False)
    _add_tls(vote)
    vote.add_argument("--to", required=True, metavar="INITIATOR")
    vote.add_argument("--consensus-id", required=True)
    vote.add_argument("--vote", required=True, dest="choice")
    vote.add_argument("--confidence", type=float, required=True)
    vote.add_argument(
        "--rationale", required=True, help="private rationale; only its SHA3-256 is sent"
    )

    from ocpd import agent_recovery  # it builds on this module's helpers

    agent_recovery.add_parser(actions)


# --- helpers ----------------------------------------------------------------------------


def _fail(message: str) -> NoReturn:
    raise AgentCliError(message)


def _network_of_key_file(path: Path) -> str | None:
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        return parse_agent_id(body.get("agent_id"))[0]
    except (OSError, ValueError, AttributeError, OcpError):
        return None


def _load_agent(args: argparse.Namespace) -> AgentKey:
    if not args.key:
        _fail("no key file: give --key or set OCP_AGENT_KEY")
    path = Path(args.key)
    network = args.network or _network_of_key_file(path) or _env("OCP_NETWORK") or DEFAULT_NETWORK
    try:
        # The agent id the file names wins: after a rotation it no longer derives from the key.
        return AgentKey.load(path, network)
    except ValueError as exc:
        _fail(f"--network: {exc}")


def _verify(args: argparse.Namespace) -> ssl.SSLContext | str | bool:
    if args.ca_file is None:
        return True
    if not Path(args.ca_file).is_file():
        _fail(f"CA file {args.ca_file} does not exist")
    return str(args.ca_file)


def _registry(args: argparse.Namespace, agent: AgentKey) -> RegistryClient:
    if not args.registry_url:
        _fail("no registry: give --registry-url or set OCP_REGISTRY_URL")
    return RegistryClient(args.registry_url, agent, verify=_verify(args))


def _print(value: object) -> None:
    print(json.dumps(value, ensure_ascii=False, separators=(",", ":")), flush=True)


@asynccontextmanager
async def _session(client: NodeClient) -> AsyncIterator[NodeClient]:
    """``async with client`` for an action: at its end, failed or not, the
    messages for the agent that came in on the session and were not read
    are shown (:func:`_show_others`)."""
    async with client:
        try:
            yield client
        finally:
            _show_others(client.drain())


def _show_others(messages: Iterable[ReceivedMessage]) -> None:
    """Messages for this agent that came in on an action's session, on stderr.

    The node counts them as delivered, so show them rather than lose them.
    """
    for other in messages:
        print(json.dumps(other.summary(), ensure_ascii=False), file=sys.stderr, flush=True)


def _capability(text: str) -> dict[str, Any]:
    if text.lstrip().startswith("{"):
        value = loads_strict(text.encode("utf-8"), max_size=65_536)
        if not isinstance(value, dict):
            _fail("--capability: a JSON capability must be an object")
        return value
    name = text.rsplit(":", 1)[-1].replace("_", " ") or text
    return {"id": text, "name": name, "version": "1.0"}


def _endpoints(urls: list[str]) -> list[dict[str, Any]]:
    endpoints = []
    for priority, url in enumerate(urls, start=1):
        transport = _ENDPOINT_TRANSPORTS.get(urlsplit(url).scheme)
        if transport is None:
            _fail(f"--endpoint {url}: use wss://, https://, nats:// or grpc:// URLs")
        endpoints.append({"transport": transport, "url": url, "priority": priority})
    return endpoints


def _payload(text: str) -> dict[str, Any]:
    if text == "-":
        data = sys.stdin.buffer.read(MAX_PAYLOAD_FILE + 1)
    elif text.startswith("@"):
        with open(text[1:], "rb") as handle:
            data = handle.read(MAX_PAYLOAD_FILE + 1)
    else:
        data = text.encode("utf-8")
    value = loads_strict(data, max_size=MAX_PAYLOAD_FILE)
    if not isinstance(value, dict):
        _fail("--payload must be a JSON object")
    return value


async def _no_resolver(agent_id: str) -> dict[str, Any]:
    raise UnknownAgent(f"cannot resolve {agent_id}: no --registry-url given")


def _node_client(
    args: argparse.Namespace,
    agent: AgentKey,
    registry: RegistryClient | None,
    *,
    ws: bool,
    http: bool,
    auto_ack: bool = True,
) -> NodeClient:
    ws_url = args.node_url if ws else None
    http_url = args.http_url if http else None
    if ws and not ws_url:
        _fail("no node WebSocket URL: give --node-url or set OCP_NODE_URL")
    if http and not http_url:
        _fail("no node HTTPS URL: give --http-url or set OCP_NODE_HTTP_URL")
    try:
        return NodeClient(
            agent,
            resolve_did=registry.resolve_did if registry is not None else _no_resolver,
            ws_url=ws_url,
            http_url=http_url,
            verify=_verify(args),
            auto_ack=auto_ack,
        )
    except ValueError as exc:
        _fail(str(exc))


# --- actions ------------------------------------------------------------------------------


def _keygen(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists():
        _fail(f"{out} already exists; refusing to overwrite a key")
    network = args.network or _env("OCP_NETWORK") or DEFAULT_NETWORK
    try:
        agent = AgentKey.generate(network)
    except ValueError as exc:
        _fail(f"--network: {exc}")
    agent.save(out)
    print(agent.agent_id)
    return 0


async def _register(args: argparse.Namespace) -> int:
    agent = _load_agent(args)
    capabilities = [_capability(c) for c in args.capability]
    endpoints = _endpoints(args.endpoint)
    async with _registry(args, agent) as registry:
        record = registry.build_record(
            display_name=args.display_name or agent.agent_id,
            capabilities=capabilities,
            domains=args.domain,
            endpoints=endpoints,
            ttl=args.ttl,
        )
        endpoint_urls = [e["url"] for e in endpoints]
        recovery = read_key_file(Path(args.recovery_key)) if args.recovery_key else None
        document = agent.did_document(
            endpoints=endpoint_urls,
            recovery_public_key=recovery.public_key if recovery is not None else None,
        )
        result = await registry.register(record, document)
    _print(result)
    return 0


async def _discover(args: argparse.Namespace) -> int:
    agent = _load_agent(args)
    async with _registry(args, agent) as registry:
        result = await registry.discover(
            domains=args.domain,
            capabilities=args.capability,
            min_trust_level=args.min_trust_level,
            limit=args.limit,
            offset=args.offset,
        )
    _print(result)
    return 0


async def _send(args: argparse.Namespace) -> int:
    agent = _load_agent(args)
    payload = _payload(args.payload)
    # HTTPS by default when there is a choice: a WebSocket session takes over
    # the delivery of the agent's messages while it lasts (see the guide).
    via: Literal["ws", "http"] = args.via or (
        "http" if args.http_url and not args.ack else "ws" if args.node_url else "http"
    )
    needs_registry = args.encrypt or args.ack
    if needs_registry and not args.registry_url:
        _fail("--encrypt and --ack need the registry: give --registry-url or set OCP_REGISTRY_URL")
    registry = _registry(args, agent) if args.registry_url else None
    # Acks come back over the WebSocket session, whichever way the message went.
    client = _node_client(
        args, agent, registry, ws=via == "ws" or args.ack, http=via == "http", auto_ack=False
    )
    try:
        async with _session(client):
            delivery = await client.send(
                args.to,
                args.type,
                payload,
                encrypt=args.encrypt,
                requires_ack=args.ack,
                transport=via,
                ttl=args.ttl,
                priority=args.priority,
            )
    finally:
        if registry is not None:
            await registry.aclose()
    result: dict[str, Any] = {
        "message_id": delivery.message_id,
        "transport": delivery.transport,
        "encrypted": args.encrypt,
        "attempts": delivery.attempts,
    }
    if delivery.ack is not None:
        result["ack"] = delivery.ack.summary()
    if delivery.response is not None:
        result["response"] = delivery.response
    _print(result)
    return 0


async def _listen(args: argparse.Namespace) -> int:
    agent = _load_agent(args)
    async with _registry(args, agent) as registry:
        client = _node_client(
            args, agent, registry, ws=True, http=False, auto_ack=not args.no_auto_ack
        )
        async with client, trio.open_nursery() as nursery:
            # Handlers in place before "listening": a SIGTERM right after it stops cleanly.
            await nursery.start(_stop_on_signal, nursery.cancel_scope)
            print(
                json.dumps({"listening": agent.agent_id, "session_id": client.session_id}),
                file=sys.stderr,
                flush=True,
            )
            knowledge = KnowledgeExchange(client, registry)
            seen = 0
            async for message in client:
                line = message.summary()
                if message.message_type == "knowledge_share":
                    line["knowledge"] = await _take_in(knowledge, message)
                    if line["knowledge"]["status"] != "accepted":
                        line["payload"] = None  # not taken in
                _print(line)
                seen += 1
                if args.count is not None and seen >= args.count:
                    break
            nursery.cancel_scope.cancel()
    return 0


async def _take_in(knowledge: KnowledgeExchange, received: ReceivedMessage) -> dict[str, Any]:
    """The receiving side's PVL on a ``knowledge_share``, answered with
    ``knowledge_ack``: what became of it, for the printed line."""
    try:
        error = await knowledge.review(received)
    except (RegistryError, httpx.HTTPError) as exc:
        # Without the bond the share cannot be checked: neither taken in nor
        # answered; the sender may send it again.
        return {"status": "unchecked", "error": _describe(exc)}
    if error is None:
        outcome: dict[str, Any] = {"status": "accepted"}
    else:
        outcome = {"status": "rejected", "error_code": error.code, "message": error.message}
        if error.details:
            outcome["details"] = error.details  # e.g. where the PII was found
    try:
        await knowledge.acknowledge(received, error)
    except NodeError as exc:
        outcome["ack_error"] = _describe(exc)
    return outcome


def _json(text: str, what: str) -> Any:
    try:
        return loads_strict(text.encode("utf-8"), max_size=MAX_PAYLOAD_FILE)
    except OcpError as exc:
        _fail(f"{what}: {exc.message}")


def _transport(args: argparse.Namespace) -> Literal["ws", "http"]:
    return "http" if args.http_url else "ws"


async def _pvl(args: argparse.Namespace) -> int:
    agent = _load_agent(args)
    payload = _payload(args.payload)
    bond = None
    if args.to:
        async with _registry(args, agent) as registry:
            bond = await bond_permissions(registry, agent.agent_id, args.to)
    check_outgoing(payload, policy=PvlPolicy(), bond=bond)
    _print({"status": "passed", "knowledge_type": payload.get("knowledge_type")})
    return 0


async def _share(args: argparse.Namespace) -> int:
    agent = _load_agent(args)
    payload = _payload(args.payload)
    async with _registry(args, agent) as registry:
        via = _transport(args)
        client = _node_client(
            args, agent, registry, ws=via == "ws" or args.ack, http=via == "http", auto_ack=False
        )
        async with _session(client):
            delivery = await KnowledgeExchange(client, registry).share(
                args.to, payload, encrypt=not args.plain, requires_ack=args.ack
            )
    result: dict[str, Any] = {"message_id": delivery.message_id, "encrypted": not args.plain}
    if delivery.ack is not None:
        result["ack"] = delivery.ack.summary()
    _print(result)
    return 0


async def _task(args: argparse.Namespace) -> int:
    agent = _load_agent(args)
    if args.task_command == "answer":
        # Refused here, before connecting, by the rule TaskDelegation.answer applies.
        misplaced = misplaced_result(args.status, data=args.data, confidence=args.confidence)
        if misplaced:
            flags = " and ".join(f"--{name}" for name in misplaced)
            _fail(f"{flags}: only a completed task has a result (--status completed)")
    wait = args.task_command == "delegate" and args.wait
    if wait and not args.registry_url:
        _fail("--wait needs the registry: give --registry-url or set OCP_REGISTRY_URL")
    registry = _registry(args, agent) if args.registry_url else None
    via = _transport(args)
    client = _node_client(
        args, agent, registry, ws=via == "ws" or wait, http=via == "http", auto_ack=True
    )
    try:
        async with _session(client):
            tasks = TaskDelegation(client)
            try:
                if args.task_command == "delegate":
                    await _delegate(args, tasks, wait=wait)
                else:
                    await _answer(args, tasks)
            finally:
                # What came in while waiting that was not about the task.
                _show_others(tasks.set_aside)
    finally:
        if registry is not None:
            await registry.aclose()
    return 0


async def _delegate(args: argparse.Namespace, tasks: TaskDelegation, *, wait: bool) -> None:
    task_id = await tasks.delegate(
        args.to,
        args.task_type,
        _json(args.data, "--data"),
        max_duration=args.max_duration,
        description=args.description,
        required_capabilities=args.capability,
        min_trust_level=args.min_trust_level,
    )
    _print({"task_id": task_id})
    if not wait:
        return
    # The node's own timeout answer ends the wait at the latest.
    limit = args.max_duration + 60.0
    try:
        updates = await tasks.wait(task_id, limit=limit)
    except TimeoutError:
        _fail(f"no final answer for {task_id} within {limit:g} s")
    for update in updates:
        _print(update.payload)


async def _answer(args: argparse.Namespace, tasks: TaskDelegation) -> None:
    data = _json(args.data, "--data") if args.data is not None else None
    delivery = await tasks.answer(
        args.to,
        args.task_id,
        args.status,
        data=data,
        confidence=args.confidence,
        reason=args.reason,
    )
    _print({"message_id": delivery.message_id, "status": args.status})


async def _consensus(args: argparse.Namespace) -> int:
    agent = _load_agent(args)
    if args.consensus_command == "vote":
        registry = _registry(args, agent) if args.registry_url else None
        via = _transport(args)
        client = _node_client(args, agent, registry, ws=via == "ws", http=via == "http")
        try:
            async with _session(client):
                delivery = await send_vote(
                    client,
                    args.to,
                    args.consensus_id,
                    args.choice,
                    confidence=args.confidence,
                    rationale=args.rationale,
                )
        finally:
            if registry is not None:
                await registry.aclose()
        _print({"message_id": delivery.message_id, "consensus_id": args.consensus_id})
        return 0
    async with _registry(args, agent) as registry:
        client = _node_client(args, agent, registry, ws=True, http=False, auto_ack=True)
        async with _session(client):
            runner = ConsensusRoundRunner(
                client,
                registry,
                participants=args.participant,
                topic=args.topic,
                options=args.option,
                deadline=client.now() + args.deadline_in,
                min_participants=args.min_participants,
                threshold=args.threshold,
                weighted=not args.unweighted,
                min_trust_level=args.min_trust_level,
                required_domains=args.domain,
            )
            await runner.start()
            _print({"consensus_id": runner.consensus_id, "deadline": runner.payload["deadline"]})
            await _collect(client, runner)
            # Past the deadline by a moment: the nodes take results after it.
            await trio.sleep(max(0.0, runner.round.deadline - client.now()) + 1.0)
            result = await runner.finish()
    _print(
        {
            "consensus_id": runner.consensus_id,
            "outcome": result.outcome,
            "reason": result.reason,
            "scores": dict(result.scores),
            "total_weighted_score": result.total_weighted_score,
            "participants": result.participants,
            "counted": list(result.counted),
            "unscored": list(result.unscored),
            "excluded": list(result.excluded),
            "refused": [{"voter": v, "reason": r} for v, r in runner.refused],
        }
    )
    return 0


async def _collect(client: NodeClient, runner: ConsensusRoundRunner) -> None:
    """:meth:`ConsensusRoundRunner.collect`, showing the messages that are not its votes."""
    with trio.move_on_after(max(0.0, runner.round.deadline - client.now())):
        while True:
            received = await client.receive()
            if (
                received.message_type == "consensus_vote"
                and received.payload.get("consensus_id") == runner.consensus_id
            ):
                await runner.offer(received)
            else:
                _show_others([received])


async def _stop_on_signal(
    scope: trio.CancelScope, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for _ in signals:
            scope.cancel()
            return


def _describe(exc: BaseException) -> str:
    if isinstance(exc, RegistryError):
        return f"registry refused: {exc.code}: {exc.message}"
    if isinstance(exc, NodeError):
        text = str(exc)
        if exc.retry_after is not None:
            text += f" (retry after {exc.retry_after:g} s)"
        return text
    if isinstance(exc, OcpError):
        return f"{exc.code}: {exc.message}"
    if isinstance(exc, httpx.HTTPError):
        try:
            where = f" {exc.request.url}"
        except RuntimeError:
            where = ""
        return f"cannot reach{where}: {exc}"
    return str(exc)


def run(args: argparse.Namespace) -> int:
    """Run one ``ocpd agent`` action; errors become one line on stderr, exit 1."""
    actions: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, int]]] = {
        "register": _register,
        "discover": _discover,
        "send": _send,
        "listen": _listen,
        "pvl": _pvl,
        "share": _share,
        "task": _task,
        "consensus": _consensus,
    }
    try:
        if args.agent_command == "keygen":
            return _keygen(args)
        if args.agent_command == "recovery":
            from ocpd import agent_recovery  # it builds on this module's helpers

            return agent_recovery.run(args)
        return trio.run(actions[args.agent_command], args)
    except (
        AgentCliError,
        IdentityError,
        RegistryError,
        NodeError,
        OcpError,
        httpx.HTTPError,
        OSError,
    ) as exc:
        print(f"ocpd agent: {_describe(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
