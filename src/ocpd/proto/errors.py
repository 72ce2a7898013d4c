"""The one error hierarchy of ocpd and the registries of wire codes it carries.

Every failure that can reach a peer or an agent is an :class:`OcpError` whose
``code`` is a wire code from one of three registries:

* OCP codes (``OCP-400`` ... ``OCP-503``): protocol errors; the number is the
  HTTP status they travel with.
* PVL codes (``PVL-001`` ... ``PVL-006``): Privacy Validation Layer rejections.
* Networking boundary codes (``E_*``): frozen codes of the node-to-node layer,
  each with exactly one failure class used in ``error/occurred`` traces.

The code is the contract; the message is for people and never carries key
material, shares or payloads.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "NET_ERROR_CLASSES",
    "OCP_ERROR_CODES",
    "PVL_ERROR_CODES",
    "AuthError",
    "CapabilityMissing",
    "ForbiddenError",
    "InternalError",
    "MalformedError",
    "NetError",
    "NotFoundError",
    "OcpError",
    "PayloadTooLarge",
    "ProtocolError",
    "PvlRejection",
    "RateLimited",
    "RequestTimeout",
    "Unavailable",
    "UpstreamUnreachable",
    "http_status_for",
]

#: OCP §7.4, with the meaning each code has in ocpd.
OCP_ERROR_CODES: Final[dict[str, str]] = {
    "OCP-400": "Malformed message",
    "OCP-401": "Authentication failed",
    "OCP-403": "Insufficient trust level or bond permissions",
    "OCP-404": "Agent not found",
    "OCP-408": "Request timeout",
    "OCP-413": "Payload too large",
    "OCP-429": "Rate limited",
    "OCP-500": "Internal agent error",
    "OCP-502": "Upstream agent unreachable",
    "OCP-503": "Agent temporarily unavailable",
}

#: OCP §5.2.
PVL_ERROR_CODES: Final[dict[str, str]] = {
    "PVL-001": "PII detected in payload",
    "PVL-002": "Raw (non-anonymized) data detected",
    "PVL-003": "Differential privacy requirements not met",
    "PVL-004": "Missing provenance information",
    "PVL-005": "Payload exceeds size limit",
    "PVL-006": "Knowledge type not permitted by bond",
}

#: NET FR-022 / FR-023: each frozen code and its one failure class.
NET_ERROR_CLASSES: Final[dict[str, str]] = {
    "E_TRANSPORT_UNAVAILABLE": "transport/unavailable",
    "E_TRANSPORT_REJECTED": "transport/rejected",
    "E_ADV_EXPIRED": "advertisement/expired",
    "E_ADV_STALE_SEQ": "advertisement/stale-sequence",
    "E_SIG_INVALID": "signature/invalid",
    "E_SIG_UNKNOWN_SIGNER": "signature/unknown-signer",
    "E_HS_REPLAY": "handshake/replay-suspected",
    "E_HS_UNKNOWN_REF": "handshake/unknown-ref",
    "E_PROTO_VERSION": "protocol/version-mismatch",
    "E_PROTO_INVALID": "protocol/invalid-contract",
    "E_PROTO_CAP_MISSING": "protocol/capability-missing",
}


def http_status_for(code: str) -> int:
    """The HTTP status an error code travels with.

    OCP codes carry their status in their number (D6). PVL rejections are
    policy refusals (403) except PVL-005, a size limit (413). Networking codes
    never travel over plain HTTP responses of the OCP API; should one be
    reported there it is a 400 (invalid input) or 503 (transport failure).
    """
    if code in OCP_ERROR_CODES:
        return int(code[4:])
    if code in PVL_ERROR_CODES:
        return 413 if code == "PVL-005" else 403
    if code in NET_ERROR_CLASSES:
        return 503 if code.startswith("E_TRANSPORT") else 400
    raise ValueError(f"unknown error code {code!r}")


class OcpError(Exception):
    """Root of every error ocpd reports on the wire.

    ``code`` is the wire code; ``message`` a human sentence without secrets;
    ``details`` small JSON-safe context (field names, limits), never payload.
    """

    code: str = "OCP-500"

    def __init__(
        self,
        message: str = "",
        *,
        code: str | None = None,
        details: dict[str, object] | None = None,
    ) -> None:
        if code is not None:
            self.code = code
        self._check_code(self.code)
        self.message = message or self._default_message()
        self.details: dict[str, object] = dict(details or {})
        super().__init__(f"{self.code}: {self.message}")

    def _check_code(self, code: str) -> None:
        if code not in OCP_ERROR_CODES:
            raise ValueError(f"{type(self).__name__} cannot carry code {code!r}")

    def _default_message(self) -> str:
        return OCP_ERROR_CODES[self.code]

    @property
    def http_status(self) -> int:
        return http_status_for(self.code)


class ProtocolError(OcpError):
    """An OCP protocol error (OCP-4xx/5xx) that is not one of the named families."""


class MalformedError(ProtocolError):
    code = "OCP-400"


class AuthError(ProtocolError):
    code = "OCP-401"


class ForbiddenError(ProtocolError):
    code = "OCP-403"


class NotFoundError(ProtocolError):
    code = "OCP-404"


class RequestTimeout(ProtocolError):
    code = "OCP-408"


class PayloadTooLarge(ProtocolError):
    code = "OCP-413"


class RateLimited(ProtocolError):
    """OCP-429; ``retry_after`` (whole seconds, at least 1) feeds ``Retry-After``."""

    code = "OCP-429"

    def __init__(
        self,
        message: str = "",
        *,
        retry_after: int,
        details: dict[str, object] | None = None,
    ) -> None:
        self.retry_after = max(1, int(retry_after))
        super().__init__(message, details={**(details or {}), "retry_after": self.retry_after})


class InternalError(ProtocolError):
    code = "OCP-500"


class UpstreamUnreachable(ProtocolError):
    code = "OCP-502"


class Unavailable(ProtocolError):
    code = "OCP-503"


class PvlRejection(OcpError):
    """A Privacy Validation Layer rejection (PVL-001 ... PVL-006)."""

    code = "PVL-001"

    def _check_code(self, code: str) -> None:
        if code not in PVL_ERROR_CODES:
            raise ValueError(f"PvlRejection cannot carry code {code!r}")

    def _default_message(self) -> str:
        return PVL_ERROR_CODES[self.code]


class NetError(OcpError):
    """A node-networking boundary failure with its frozen code and class."""

    code = "E_PROTO_INVALID"

    def _check_code(self, code: str) -> None:
        if code not in NET_ERROR_CLASSES:
            raise ValueError(f"NetError cannot carry code {code!r}")

    def _default_message(self) -> str:
        return NET_ERROR_CLASSES[self.code]

    @property
    def cls(self) -> str:
        """The failure class for ``error/occurred`` traces (FR-023)."""
        return NET_ERROR_CLASSES[self.code]


class CapabilityMissing(NetError):
    code = "E_PROTO_CAP_MISSING"
