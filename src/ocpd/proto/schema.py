"""The schema gate: structural validation of every artifact against ``schemas/``.

Each JSON Schema (Draft-07) in the ``ocpd/schemas`` package directory is
compiled once, on first use, into a plain Python function by ``fastjsonschema``
and kept. A document that does not fit raises:

* :class:`MalformedError` (OCP-400) for OCP schemas (messages, payloads and
  signed OCP artifacts);
* :class:`NetError` with ``E_PROTO_INVALID`` for the versioned networking
  schemas, whose names end in ``.v1``.

The error names the schema, the JSON path of the failing item and the rule it
breaks, never the value found there (it may be key material or payload).

The gate checks shape only. Rules that span fields (expiry windows, ids that
derive from keys, signatures) are checked by the code that owns each artifact.
Nothing here reads a clock or does I/O beyond reading the packaged schemas.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from importlib import resources
from typing import TYPE_CHECKING, Final

import fastjsonschema

from ocpd.proto.errors import InternalError, MalformedError, NetError, OcpError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

__all__ = [
    "DRAFT_07",
    "GATE",
    "SchemaGate",
    "load_schema",
    "schema_names",
    "validate",
    "validate_envelope",
]

#: The only dialect the schemas may declare: fastjsonschema falls back to other
#: rules for anything else, silently.
DRAFT_07: Final = "http://json-schema.org/draft-07/schema#"

_NET_SUFFIX: Final = ".v1"
_NAME_RE: Final = re.compile(r"[a-z0-9][a-z0-9._-]*")
_MAX_LISTED: Final = 5
_MAX_KEY_CHARS: Final = 64

_Validator = Callable[[object], object]


class SchemaGate:
    """Compiles the packaged schemas lazily and validates documents against them.

    ``root`` is the directory holding ``<name>.json`` files; by default the
    ``schemas`` directory of the ``ocpd`` package.
    """

    __slots__ = ("_names", "_root", "_validators")

    def __init__(self, root: Traversable | None = None) -> None:
        self._root: Traversable = root if root is not None else resources.files("ocpd") / "schemas"
        self._names: frozenset[str] | None = None
        # name -> (compiled validator, is a networking schema)
        self._validators: dict[str, tuple[_Validator, bool]] = {}

    # ------------------------------------------------------------------ catalogue

    def schema_names(self) -> list[str]:
        """The names of all packaged schemas (file names without ``.json``), sorted."""
        return sorted(self._known_names())

    def load_schema(self, name: str) -> dict[str, object]:
        """A fresh copy of the schema ``name`` as a dict.

        Raises :class:`KeyError` for a name that is not a packaged schema.
        """
        if name not in self._known_names():
            raise KeyError(f"unknown schema {name!r}")
        loaded = json.loads((self._root / f"{name}.json").read_text(encoding="utf-8"))
        if not isinstance(loaded, dict):
            raise InternalError(f"schema {name!r} is not a JSON object")
        return loaded

    def _known_names(self) -> frozenset[str]:
        names = self._names
        if names is None:
            names = frozenset(
                entry.name.removesuffix(".json")
                for entry in self._root.iterdir()
                if entry.name.endswith(".json")
                and _NAME_RE.fullmatch(entry.name.removesuffix(".json"))
            )
            self._names = names
        return names

    # ------------------------------------------------------------------ validation

    def validate(self, name: str, document: object) -> None:
        """Check ``document`` against the schema ``name``.

        Raises :class:`MalformedError` (OCP-400), or :class:`NetError`
        (``E_PROTO_INVALID``) for a ``.v1`` networking schema, when it does not
        fit; :class:`KeyError` when ``name`` is not a packaged schema.
        """
        compiled = self._validators.get(name)
        if compiled is None:
            compiled = self._compile(name)
        try:
            compiled[0](document)
        except fastjsonschema.JsonSchemaValueException as exc:
            raise _schema_error(name, compiled[1], exc, "$") from None

    def validate_envelope(self, message: object) -> None:
        """Check an OCPUMF message, then its payload against ``payload.<message_type>``.

        An encrypted (string) payload is checked only as base64url here; the
        decrypted object is checked later with :meth:`validate`. Paths in
        payload errors are given from the message root (``$.payload...``).
        """
        self.validate("envelope", message)
        if not isinstance(message, dict):  # pragma: no cover - the envelope schema ensures it
            return
        payload = message["payload"]
        if isinstance(payload, dict):
            name = f"payload.{message['message_type']}"
            compiled = self._validators.get(name)
            if compiled is None:
                compiled = self._compile(name)
            try:
                compiled[0](payload)
            except fastjsonschema.JsonSchemaValueException as exc:
                raise _schema_error(name, compiled[1], exc, "$.payload") from None

    def _compile(self, name: str) -> tuple[_Validator, bool]:
        schema = self.load_schema(name)
        if schema.get("$schema") != DRAFT_07:
            raise InternalError(f"schema {name!r} does not declare JSON Schema draft-07")
        # No defaults (validation must never mutate the document) and no
        # ``format``: every textual rule is a ``pattern``.
        validator: _Validator = fastjsonschema.compile(schema, use_default=False, use_formats=False)
        compiled = (validator, name.endswith(_NET_SUFFIX))
        self._validators[name] = compiled
        return compiled


def _schema_error(
    schema: str, net: bool, exc: fastjsonschema.JsonSchemaValueException, root: str
) -> OcpError:
    path = _json_path(exc.name, root)
    rule = exc.rule if isinstance(exc.rule, str) else "false"
    message = f"{schema}: {path} {_describe(rule, exc)}"
    details: dict[str, object] = {"schema": schema, "path": path, "rule": rule}
    if net:
        return NetError(message, code="E_PROTO_INVALID", details=details)
    return MalformedError(message, details=details)


def _json_path(name: object, root: str) -> str:
    """fastjsonschema's ``data.vectors[0].id`` as ``<root>.vectors[0].id``."""
    if not isinstance(name, str) or not name.startswith("data"):
        return root
    return root + name[4:]


def _describe(rule: str, exc: fastjsonschema.JsonSchemaValueException) -> str:
    """One line on what is wrong, from the rule and the schema only.

    Never quotes the offending value. Property names of the document appear
    only for unknown properties (as a path would), shortened.
    """
    definition = exc.rule_definition
    value = exc.value
    if rule == "required" and isinstance(definition, list) and isinstance(value, dict):
        missing = [key for key in definition if key not in value]
        return f"is missing required {_names(missing)}"
    if rule == "additionalProperties" and isinstance(value, dict):
        definition_props = exc.definition.get("properties", {}) if exc.definition else {}
        unknown = [key for key in value if key not in definition_props]
        return f"has unknown {_names(unknown)}"
    if rule == "false":
        return "must not be present"
    if rule == "type":
        return f"must be of type {_types(definition)}"
    if rule == "const":
        return f"must be {json.dumps(definition)}"
    if rule == "enum" and isinstance(definition, list):
        return f"must be one of {', '.join(json.dumps(item) for item in definition)}"
    if rule == "pattern":
        return f"does not match {definition}"
    if rule == "contains":
        return f"must contain an item matching {json.dumps(definition)}"
    if rule == "uniqueItems":
        return "has duplicate items"
    if rule == "dependencies":
        return "has a property without the properties it requires"
    if rule in _BOUNDS:
        return f"{_BOUNDS[rule]} {definition}"
    return f"violates {rule}"


_BOUNDS: Final[dict[str, str]] = {
    "minLength": "is shorter than",
    "maxLength": "is longer than",
    "minimum": "is less than",
    "maximum": "is greater than",
    "exclusiveMinimum": "must be greater than",
    "exclusiveMaximum": "must be less than",
    "minItems": "has fewer items than",
    "maxItems": "has more items than",
    "minProperties": "has fewer properties than",
    "maxProperties": "has more properties than",
}


def _types(definition: object) -> str:
    if isinstance(definition, list):
        return " or ".join(str(item) for item in definition)
    return str(definition)


def _names(keys: list[object]) -> str:
    shown = [
        json.dumps(key if len(key) <= _MAX_KEY_CHARS else key[:_MAX_KEY_CHARS] + "…")
        for key in keys[:_MAX_LISTED]
        if isinstance(key, str)
    ]
    more = len(keys) - len(shown)
    label = "property" if len(keys) == 1 else "properties"
    return f"{label} {', '.join(shown)}" + (f" and {more} more" if more > 0 else "")


#: The gate of the process; the packaged schemas never change at run time.
GATE: Final = SchemaGate()


def validate(name: str, document: object) -> None:
    """:meth:`SchemaGate.validate` on :data:`GATE`."""
    GATE.validate(name, document)


def validate_envelope(message: object) -> None:
    """:meth:`SchemaGate.validate_envelope` on :data:`GATE`."""
    GATE.validate_envelope(message)


def schema_names() -> list[str]:
    """:meth:`SchemaGate.schema_names` on :data:`GATE`."""
    return GATE.schema_names()


def load_schema(name: str) -> dict[str, object]:
    """:meth:`SchemaGate.load_schema` on :data:`GATE`."""
    return GATE.load_schema(name)
