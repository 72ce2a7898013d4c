"""The domain taxonomy (OCP Appendix A, D7): data file, normalisation, hierarchy."""

from __future__ import annotations

import re
from importlib import resources

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ocpd.proto.errors import MalformedError
from ocpd.proto.taxonomy import MAX_PATH_LENGTH, Taxonomy, check_path, parse_taxonomy

# Every domain, tag and capability area the specification's examples use.
SPEC_WORDS = {
    "healthcare",
    "oncology",
    "radiology",
    "cardiology",
    "finance",
    "fraud_detection",
    "risk_analysis",
    "portfolio_optimization",
    "imaging",
    "nlp",
    "classification",
    "summarization",
    "translation",
    "report_gen",
    "vision",
    "object_detection",
    "data",
    "clustering",
    "regression",
    "code",
    "generation",
    "review",
}

DEFAULT = Taxonomy.load_default()


def _data_text() -> str:
    return resources.files("ocpd.proto").joinpath("data", "taxonomy.txt").read_text("utf-8")


def _data_lines() -> list[str]:
    lines = (raw.split("#", 1)[0].strip() for raw in _data_text().splitlines())
    return [line for line in lines if line]


# --- the data file ---------------------------------------------------------------------------


def test_data_file_ships_inside_the_package() -> None:
    resource = resources.files("ocpd.proto").joinpath("data", "taxonomy.txt")
    assert resource.is_file()


def test_data_file_is_well_formed() -> None:
    lines = _data_lines()
    assert len(lines) == len(set(lines)), "a path is listed twice"
    for line in lines:
        assert re.fullmatch(r"[a-z0-9_]+(\.[a-z0-9_]+)*", line), line
        parts = line.split(".")
        for depth in range(1, len(parts)):
            assert ".".join(parts[:depth]) in lines, f"{line} lacks an ancestor"
    assert frozenset(lines) == DEFAULT.paths


def test_data_file_says_what_it_is() -> None:
    header = _data_text().splitlines()[0]
    assert header.startswith("#")
    assert "v1" in header
    assert "missing" in _data_text()


def test_data_file_holds_every_word_of_the_spec_once() -> None:
    leaves = [path.rsplit(".", 1)[-1] for path in DEFAULT.paths]
    for word in SPEC_WORDS:
        assert leaves.count(word) == 1, word
        assert DEFAULT.normalise(word).endswith(word)


def test_spec_examples_sit_where_expected() -> None:
    assert DEFAULT.normalise("oncology") == "healthcare.oncology"
    assert DEFAULT.normalise("radiology") == "healthcare.radiology"
    assert DEFAULT.normalise("cardiology") == "healthcare.cardiology"
    assert DEFAULT.normalise("fraud_detection") == "finance.fraud_detection"
    assert DEFAULT.normalise("risk_analysis") == "finance.risk_analysis"
    assert DEFAULT.normalise("imaging") == "vision.imaging"


# --- normalisation ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(DEFAULT.paths))
def test_full_paths_normalise_to_themselves(path: str) -> None:
    assert DEFAULT.normalise(path) == path
    assert path in DEFAULT


@pytest.mark.parametrize(
    "domain",
    [
        "astrology",
        "Healthcare",
        "healthcare.",
        ".healthcare",
        "healthcare..oncology",
        "healthcare.oncology.",
        "oncology.healthcare",
        "finance.oncology",
        "healthcare.onco",
        "health",
        " oncology",
        "",
    ],
)
def test_unknown_domains_are_ocp_400_naming_the_domain(domain: str) -> None:
    with pytest.raises(MalformedError) as info:
        DEFAULT.normalise(domain)
    assert info.value.code == "OCP-400"
    assert info.value.http_status == 400
    assert repr(domain) in info.value.message
    assert info.value.details["domain"] == domain
    assert domain not in DEFAULT


def test_non_string_domain_is_ocp_400() -> None:
    for value in (None, 3, ["healthcare"]):
        with pytest.raises(MalformedError):
            DEFAULT.normalise(value)  # type: ignore[arg-type]
        assert value not in DEFAULT


def test_long_garbage_is_shortened_in_the_message() -> None:
    with pytest.raises(MalformedError) as info:
        DEFAULT.normalise("x" * 10_000)
    assert len(info.value.message) < 200


def test_an_extension_can_make_a_leaf_ambiguous() -> None:
    wider = DEFAULT.extended(["veterinary.oncology"])
    with pytest.raises(MalformedError) as info:
        wider.normalise("oncology")
    assert info.value.code == "OCP-400"
    assert "'oncology'" in info.value.message
    assert info.value.details == {
        "domain": "oncology",
        "candidates": ["healthcare.oncology", "veterinary.oncology"],
    }
    assert wider.normalise("healthcare.oncology") == "healthcare.oncology"
    assert wider.normalise("veterinary.oncology") == "veterinary.oncology"
    assert "oncology" not in wider
    # The default taxonomy is untouched.
    assert DEFAULT.normalise("oncology") == "healthcare.oncology"


def test_a_top_level_path_wins_over_a_leaf_of_the_same_name() -> None:
    wider = DEFAULT.extended(["healthcare.data"])
    assert wider.normalise("data") == "data"
    assert wider.normalise("healthcare.data") == "healthcare.data"


def test_inner_nodes_are_not_leaves() -> None:
    deeper = Taxonomy.from_paths(["a.b.c", "x.y"])
    assert deeper.normalise("c") == "a.b.c"
    assert deeper.normalise("y") == "x.y"
    with pytest.raises(MalformedError):
        deeper.normalise("b.c")  # neither a full path nor a bare leaf


# --- hierarchy -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("agent_domain", "query", "expected"),
    [
        ("healthcare.oncology", "healthcare", True),
        ("healthcare.oncology", "healthcare.oncology", True),
        ("healthcare.oncology", "oncology", True),
        ("oncology", "healthcare", True),
        ("oncology", "oncology", True),
        ("healthcare.oncology", "healthcare.radiology", False),
        ("healthcare.oncology", "radiology", False),
        ("healthcare", "healthcare.oncology", False),
        ("healthcare", "oncology", False),
        ("healthcare", "healthcare", True),
        ("finance.fraud_detection", "finance", True),
        ("fraud_detection", "healthcare", False),
        ("imaging", "vision", True),
        ("imaging", "healthcare", False),
    ],
)
def test_matches_is_hierarchical(agent_domain: str, query: str, expected: bool) -> None:
    assert DEFAULT.matches(agent_domain, query) is expected


def test_a_shared_name_prefix_is_not_an_ancestor() -> None:
    wider = DEFAULT.extended(["codec", "healthcare.oncology_support"])
    assert not wider.matches("codec", "code")
    assert not wider.matches("healthcare.oncology_support", "healthcare.oncology")
    assert wider.matches("healthcare.oncology_support", "healthcare")


def test_matches_refuses_unknown_domains() -> None:
    with pytest.raises(MalformedError):
        DEFAULT.matches("astrology", "healthcare")
    with pytest.raises(MalformedError):
        DEFAULT.matches("healthcare", "astrology")


def test_ancestors_root_first() -> None:
    assert DEFAULT.ancestors("oncology") == ("healthcare", "healthcare.oncology")
    assert DEFAULT.ancestors("finance") == ("finance",)
    deep = Taxonomy.from_paths(["a.b.c.d"])
    assert deep.ancestors("d") == ("a", "a.b", "a.b.c", "a.b.c.d")


@given(
    agent=st.sampled_from(sorted(DEFAULT.paths)),
    query=st.sampled_from(sorted(DEFAULT.paths)),
)
def test_matches_means_query_is_an_ancestor(agent: str, query: str) -> None:
    assert DEFAULT.matches(agent, query) == (query in DEFAULT.ancestors(agent))
    leaf = agent.rsplit(".", 1)[-1]
    assert DEFAULT.matches(leaf, query) == DEFAULT.matches(agent, query)


# --- versions, extensions, immutability ----------------------------------------------------


def test_version_is_short_and_stable() -> None:
    assert re.fullmatch(r"v1-[0-9a-f]{12}", DEFAULT.version)
    assert Taxonomy.load_default().version == DEFAULT.version
    assert Taxonomy.from_paths(sorted(DEFAULT.paths, reverse=True)).version == DEFAULT.version
    assert Taxonomy.load_default() == DEFAULT


def test_version_changes_when_extended() -> None:
    wider = DEFAULT.extended(["science.genomics"])
    assert wider.version != DEFAULT.version
    assert wider != DEFAULT
    assert {"science", "science.genomics"} <= wider.paths
    assert DEFAULT.paths < wider.paths
    assert "science" not in DEFAULT.paths


def test_extending_with_known_paths_changes_nothing() -> None:
    same = DEFAULT.extended(["healthcare.oncology", "finance"])
    assert same.version == DEFAULT.version
    assert same == DEFAULT
    assert DEFAULT.extended([]) == DEFAULT


def test_extension_adds_ancestors() -> None:
    wider = DEFAULT.extended(["healthcare.oncology.pediatric", "legal.contracts.review_2"])
    assert wider.normalise("pediatric") == "healthcare.oncology.pediatric"
    assert wider.matches("pediatric", "healthcare")
    assert wider.matches("pediatric", "oncology")
    assert {"legal", "legal.contracts"} <= wider.paths
    # "review" stays unique: "review_2" is another word.
    assert wider.normalise("review") == "code.review"


@pytest.mark.parametrize(
    "bad",
    [
        "Science",
        "science.",
        ".science",
        "science..genomics",
        "science genomics",
        "science-genomics",
        "ß",
        "",
        "a" * (MAX_PATH_LENGTH + 1),
    ],
)
def test_extension_paths_are_validated(bad: str) -> None:
    with pytest.raises(MalformedError) as info:
        DEFAULT.extended(["science", bad])
    assert info.value.code == "OCP-400"
    with pytest.raises(MalformedError):
        check_path(bad)


def test_longest_allowed_path() -> None:
    longest = "a" * MAX_PATH_LENGTH
    assert check_path(longest) == longest
    assert DEFAULT.extended([longest]).normalise(longest) == longest


def test_extension_needs_an_iterable_of_paths() -> None:
    with pytest.raises(TypeError):
        DEFAULT.extended("science")
    with pytest.raises(MalformedError):
        DEFAULT.extended([3])  # type: ignore[list-item]


def test_taxonomy_is_immutable() -> None:
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        DEFAULT.paths = frozenset({"x"})  # type: ignore[misc]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        DEFAULT.version = "v1-000000000000"  # type: ignore[misc]
    assert isinstance(DEFAULT.paths, frozenset)
    assert hash(DEFAULT) == hash(Taxonomy.load_default())
    assert repr(DEFAULT) == f"Taxonomy(version={DEFAULT.version!r}, paths={len(DEFAULT)})"


def test_constructor_insists_on_a_closed_valid_set() -> None:
    with pytest.raises(MalformedError):
        Taxonomy(frozenset({"a.b"}))
    with pytest.raises(MalformedError):
        Taxonomy(frozenset({"A"}))
    with pytest.raises(MalformedError):
        Taxonomy(frozenset())
    with pytest.raises(TypeError):
        Taxonomy({"a"})  # type: ignore[arg-type]
    assert Taxonomy(frozenset({"a", "a.b"})).normalise("b") == "a.b"


# --- parsing -----------------------------------------------------------------------------------


def test_parse_skips_comments_and_blank_lines() -> None:
    text = "# header\n\nhealth  # trailing comment\n  health.x\n"
    assert parse_taxonomy(text) == frozenset({"health", "health.x"})


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("a\na\n", 2),
        ("a\na.b.c\n", 2),
        ("a\nA.b\n", 2),
        ("a\na b\n", 2),
    ],
)
def test_parse_is_strict(text: str, line: int) -> None:
    with pytest.raises(MalformedError, match=f"line {line}"):
        parse_taxonomy(text)


def test_stored_paths_survive_a_changed_tree() -> None:
    tree = Taxonomy.from_paths(["a.b.leaf", "x.y"])
    assert tree.stored_path("leaf") == "a.b.leaf"
    # the leaf became ambiguous, or its path left the tree: filed as stored
    assert tree.extended(["x.leaf"]).stored_path("leaf") == "leaf"
    assert tree.stored_path("gone.path") == "gone.path"
    with pytest.raises(MalformedError):
        tree.stored_path("Not A Path")
