"""Wires the custodian component: its database key, service, routes and commands.

The custodian refuses to start without a database key
(``custodian.key_file``, ``OCP_CUSTODIAN_KEY_FILE``) unless
``custodian.development_mode`` is set; in development mode without a key
file it makes one next to its database and says so in the log.

Routes on the custodian port:

* ``POST /ocp/v1/messages``: one OCPUMF message, answered with a signed
  message (200), or the sender's ``error`` message with the HTTP status of
  its code (``Retry-After`` with 429);
* ``GET /ocp/v1/custodian``: the custodian's agent id and public key, for
  agents that make shares for it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Final

from quart import Response, request

from ocpd.config import ConfigError
from ocpd.custodian.service import CustodianService
from ocpd.custodian.store import DatabaseKey, DatabaseKeyError
from ocpd.logs import get_logger, log_event
from ocpd.node.directory import directory_for
from ocpd.proto.errors import MalformedError, OcpError
from ocpd.registry.seeddir import address_key
from ocpd.web import read_limited_body

if TYPE_CHECKING:
    from quart_trio import QuartTrio

    from ocpd.components import ComponentContext, ComponentRuntime
    from ocpd.custodian.service import Reply

__all__ = ["DEV_KEY_NAME", "build_custodian", "load_database_key"]

#: The key file development mode makes next to the database.
DEV_KEY_NAME: Final = "custodian-dev.key"
#: Largest message the custodian reads (a deposit is about 2 KiB).
MAX_BODY: Final = 65_536
#: Seconds a client has to send the whole body.
BODY_TIMEOUT: Final = 30.0
_JSON: Final = "application/json"

log = get_logger("custodian")


def load_database_key(ctx: ComponentContext) -> DatabaseKey:
    """The database key, or a refusal to start that says what to do."""
    settings = ctx.config.custodian
    if settings.key_file is not None:
        try:
            return DatabaseKey.from_file(Path(settings.key_file))
        except DatabaseKeyError as exc:
            raise ConfigError("custodian.key_file", str(exc)) from None
    if not settings.development_mode:
        raise ConfigError(
            "custodian.key_file",
            "the custodian needs a database key to store shares encrypted: create one with "
            "`ocpd custodian keygen PATH` and set OCP_CUSTODIAN_KEY_FILE (or custodian.key_file; "
            "a Docker or systemd secret), or set OCP_CUSTODIAN_DEV_MODE=true to run without "
            "one in development",
        )
    path = ctx.database.path.parent / DEV_KEY_NAME
    if path.exists():
        try:
            key = DatabaseKey.from_file(path)
        except DatabaseKeyError as exc:
            raise ConfigError("custodian.development_mode", str(exc)) from None
    else:
        key = DatabaseKey.generate()
        key.write(path)
    log_event(
        log,
        "custodian_development_mode",
        level=logging.WARNING,
        key_file=str(path),
        detail="development mode: the database key is a file next to the database, so "
        "the shares are not protected from whoever can read the data directory; never "
        "run a custodian like this in production",
    )
    return key


def build_custodian(ctx: ComponentContext, runtime: ComponentRuntime) -> None:
    config = ctx.config
    database_key = load_database_key(ctx)
    service = CustodianService(
        database=ctx.database,
        clock=ctx.clock,
        settings=config.custodian,
        key=ctx.identity.key,
        network=config.node.network,
        database_key=database_key,
        directory=directory_for(ctx, runtime),
        metrics_registry=ctx.metrics.registry,
        clock_skew=config.transport.clock_skew_seconds,
        max_body=MAX_BODY,
    )
    runtime.services.append(service.run)
    runtime.add_routes("custodian", _Routes(service).install)
    runtime.commands.update(service.commands())
    runtime.extra["custodian"] = service


class _Routes:
    def __init__(self, service: CustodianService) -> None:
        self.service = service

    def install(self, app: QuartTrio) -> None:
        app.add_url_rule("/ocp/v1/messages", "custodian_messages", self._messages, methods=["POST"])
        app.add_url_rule("/ocp/v1/custodian", "custodian_info", self._info, methods=["GET"])

    async def _info(self) -> Response:
        return Response(json.dumps(self.service.describe()), status=200, content_type=_JSON)

    async def _messages(self) -> Response:
        client = request.scope.get("client")
        remote = address_key(str(client[0])) if client else "<local>"
        try:
            raw = await _read_body()
        except OcpError as exc:
            reply = self.service.refusal(exc, remote)
        else:
            reply = await self.service.handle(raw, remote)
        return _response(reply)


async def _read_body() -> bytes:
    content_type = request.headers.get("Content-Type")
    if content_type is not None and content_type.split(";")[0].strip().lower() != _JSON:
        raise MalformedError("Content-Type must be application/json")
    return await read_limited_body(MAX_BODY, within=BODY_TIMEOUT)


def _response(reply: Reply) -> Response:
    body = json.dumps(reply.message, separators=(",", ":"), ensure_ascii=False)
    response = Response(body, status=reply.status, content_type=_JSON)
    if reply.retry_after is not None:
        response.headers["Retry-After"] = str(reply.retry_after)
    return response
