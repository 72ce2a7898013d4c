"""The domain taxonomy: which domains exist and how they nest (D7).

Domains are dotted paths (``healthcare.oncology``). An agent under a path is
found by a query for that path or for any ancestor of it, never for a sibling.
The tree ships as ``data/taxonomy.txt`` inside this package and operators may
extend it through configuration.

Two spellings are accepted wherever a domain comes in: a full path, or a bare
leaf (``oncology``) that names exactly one node of the tree. A string that is
itself a full path always means that path, even when the same word is also a
leaf deeper down; only a bare word with no path of its own and several
candidate leaves is ambiguous. Everything else is refused with OCP-400.

Lookups are what discovery and broadcast fan-out do for every candidate agent,
so the work happens once, when a :class:`Taxonomy` is built: ``normalise`` is a
dictionary lookup and ``matches`` a prefix test on normalised paths.
"""

from __future__ import annotations

import re
from importlib import resources
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

import attrs

from ocpd.proto.crypto import sha3_256
from ocpd.proto.errors import MalformedError

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = [
    "MAX_PATH_LENGTH",
    "Taxonomy",
    "check_path",
    "parse_taxonomy",
    "path_prefixes",
]

MAX_PATH_LENGTH: Final = 256
"""Same bound as the ``domains`` items of the agent record schema."""

_PATH: Final = re.compile(r"[a-z0-9_]+(?:\.[a-z0-9_]+)*")
_DATA_FILE: Final = ("data", "taxonomy.txt")


def _shown(value: object) -> str:
    """A short printable form of untrusted input for error messages."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_path(path: object) -> str:
    """``path`` if it is a well-formed dotted path, else OCP-400."""
    if not isinstance(path, str) or len(path) > MAX_PATH_LENGTH or not _PATH.fullmatch(path):
        raise MalformedError(
            f"{_shown(path)} is not a domain path (lowercase [a-z0-9_] segments joined by '.')",
            details={"domain": path if isinstance(path, str) else None},
        )
    return path


def path_prefixes(path: str) -> Iterable[str]:
    """``a``, ``a.b``, ``a.b.c`` for ``a.b.c``."""
    end = path.find(".")
    while end != -1:
        yield path[:end]
        end = path.find(".", end + 1)
    yield path


def parse_taxonomy(text: str) -> frozenset[str]:
    """The paths of a taxonomy file; strict, because the file ships with ocpd.

    Each non-comment line must hold one well-formed path, listed once, and
    the file must list every ancestor of every path it names.
    """
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            path = check_path(line)
        except MalformedError as exc:
            raise MalformedError(f"taxonomy line {number}: {exc.message}") from exc
        if path in seen:
            raise MalformedError(
                f"taxonomy line {number}: {path!r} repeats line {seen[path]}",
            )
        seen[path] = number
    for path, number in seen.items():
        missing = [p for p in path_prefixes(path) if p not in seen]
        if missing:
            raise MalformedError(
                f"taxonomy line {number}: {path!r} lacks its parent {missing[0]!r}"
            )
    return frozenset(seen)


def _index(
    paths: frozenset[str],
) -> tuple[Mapping[str, str], Mapping[str, tuple[str, ...]]]:
    """``spelling -> full path`` for every accepted spelling, and the ambiguous leaves."""
    by_leaf: dict[str, list[str]] = {}
    for path in paths:
        by_leaf.setdefault(path.rpartition(".")[2], []).append(path)
    index = {path: path for path in paths}
    ambiguous: dict[str, tuple[str, ...]] = {}
    for leaf, holders in by_leaf.items():
        if leaf in index:
            continue  # a top-level path of that name wins over deeper leaves
        if len(holders) == 1:
            index[leaf] = holders[0]
        else:
            ambiguous[leaf] = tuple(sorted(holders))
    return MappingProxyType(index), MappingProxyType(ambiguous)


def _version(paths: frozenset[str]) -> str:
    return "v1-" + sha3_256("\n".join(sorted(paths)).encode("ascii")).hex()[:12]


@attrs.frozen(repr=False)
class Taxonomy:
    """An immutable domain tree with its lookup tables.

    Build one with :meth:`load_default`, :meth:`from_paths` or
    :meth:`extended`; the constructor insists on a well-formed path set that
    already holds every ancestor.
    """

    paths: frozenset[str]
    version: str = attrs.field(init=False)
    """Short stable digest of the path set; it changes whenever a path is added."""
    _index: Mapping[str, str] = attrs.field(init=False, eq=False, hash=False)
    _ambiguous: Mapping[str, tuple[str, ...]] = attrs.field(init=False, eq=False, hash=False)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.paths, frozenset):
            raise TypeError("Taxonomy paths must be a frozenset; use Taxonomy.from_paths")
        if not self.paths:
            raise MalformedError("a taxonomy needs at least one domain")
        for path in self.paths:
            check_path(path)
            for prefix in path_prefixes(path):
                if prefix not in self.paths:
                    raise MalformedError(f"domain {path!r} lacks its parent {prefix!r}")
        index, ambiguous = _index(self.paths)
        object.__setattr__(self, "version", _version(self.paths))
        object.__setattr__(self, "_index", index)
        object.__setattr__(self, "_ambiguous", ambiguous)

    def __repr__(self) -> str:
        return f"Taxonomy(version={self.version!r}, paths={len(self.paths)})"

    @classmethod
    def from_paths(cls, paths: Iterable[str]) -> Taxonomy:
        """A taxonomy of ``paths`` and all their ancestors; each path is validated."""
        if isinstance(paths, str):
            raise TypeError("paths must be an iterable of paths, not one string")
        closed: set[str] = set()
        for path in paths:
            closed.update(path_prefixes(check_path(path)))
        return cls(frozenset(closed))

    @classmethod
    def load_default(cls) -> Taxonomy:
        """ocpd's shipped v1 taxonomy."""
        resource = resources.files("ocpd.proto").joinpath(*_DATA_FILE)
        return cls(parse_taxonomy(resource.read_text(encoding="utf-8")))

    def extended(self, paths: Iterable[str]) -> Taxonomy:
        """This taxonomy plus ``paths`` (from configuration) and their ancestors.

        Adding a leaf that already exists elsewhere in the tree is allowed; it
        makes that bare leaf ambiguous, so only full paths reach it afterwards.
        """
        if isinstance(paths, str):
            raise TypeError("paths must be an iterable of paths, not one string")
        return Taxonomy.from_paths([*self.paths, *paths])

    def normalise(self, domain: str) -> str:
        """The full path for a full path or a unique bare leaf; OCP-400 otherwise."""
        try:
            return self._index[domain]
        except (KeyError, TypeError):
            pass
        candidates = self._ambiguous.get(domain) if isinstance(domain, str) else None
        if candidates:
            raise MalformedError(
                f"domain {_shown(domain)} is ambiguous: use one of {', '.join(candidates)}",
                details={"domain": domain, "candidates": list(candidates)},
            )
        raise MalformedError(
            f"unknown domain {_shown(domain)}",
            details={"domain": domain if isinstance(domain, str) else None},
        )

    def stored_path(self, domain: str) -> str:
        """The path under which a domain accepted earlier is filed now.

        Stored records passed :meth:`normalise` when they arrived; the tree
        may have changed since (an extension removed from the configuration,
        a leaf made ambiguous by one added). Such a domain is filed under its
        spelling as stored, as a path of its own, so a restart never fails on
        an old record: it stays findable by that exact spelling until the
        agent registers again.
        """
        try:
            return self.normalise(domain)
        except MalformedError:
            return check_path(domain)

    def matches(self, agent_domain: str, query: str) -> bool:
        """Whether an agent under ``agent_domain`` is found by a query for ``query``.

        True for the same path and for every ancestor of it. Both arguments
        are normalised first, so unknown domains raise OCP-400.
        """
        agent = self.normalise(agent_domain)
        wanted = self.normalise(query)
        return agent.startswith(wanted) and (len(agent) == len(wanted) or agent[len(wanted)] == ".")

    def ancestors(self, domain: str) -> tuple[str, ...]:
        """The normalised path of ``domain`` and every ancestor, root first.

        An index keyed by these paths answers hierarchical queries with one
        lookup: an agent is filed under each of its domains' ancestors.
        """
        return tuple(path_prefixes(self.normalise(domain)))

    def __contains__(self, domain: object) -> bool:
        """Whether ``domain`` is accepted by :meth:`normalise`."""
        try:
            return domain in self._index
        except TypeError:
            return False

    def __len__(self) -> int:
        return len(self.paths)
