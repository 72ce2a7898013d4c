"""The knowledge and collaboration checks of the conformance suite (conformance/collab.py).

End to end against the real daemon (``conformance.local``'s harness: TLS from
a throwaway CA, ports 0, a temporary data directory) whose registry trusts
three fresh keys as anchors (``OCP_TRUST_ANCHORS``), the suite given the same
keys as ``--anchor-keys``. The daemon's task accept window is 3 s
(``collaboration.ack_timeout_seconds``) and the suite is told so
(``task_accept_window``), so the timeout check takes seconds, not the spec's
30 s. Every check passes through :func:`conformance.suite.run_suite` (only
the knowledge and full requirements, so that the core checks do not run
again here); a node that times tasks out before the 30 s the suite expects,
and one stricter about differential privacy than OCP, fail the checks that
cover those rules, saying why; without enough anchor keys (none, too few,
keys the registry does not trust) the checks are ``not_tested``, saying why.

Unit tests cover the ``--anchor-keys`` formats, the command line, the
per-check deadlines and the refusal validator.
"""

from __future__ import annotations

import json
import re
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import trio

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from conformance import collab, suite  # noqa: E402
from conformance.__main__ import main as suite_main  # noqa: E402
from conformance.checks import Answer, Probe  # noqa: E402
from conformance.client import suite_ssl_context  # noqa: E402
from conformance.collab import (  # noqa: E402
    CHECKS,
    anchor_keys_text,
    parse_anchor_keys,
    read_anchor_keys,
    refusal_problems,
)
from conformance.custodian import CHECKS as CUSTODIAN_CHECKS  # noqa: E402
from conformance.local import (  # noqa: E402
    ANCHOR_COUNT,
    CONFIG_TEXT,
    LOCAL_NETWORK,
    TlsFiles,
    _suite_command,
    anchor_env,
    ocpd_process,
    targets_from_ready,
    write_anchor_keys,
    write_tls_files,
)
from conformance.requirements import for_level  # noqa: E402
from conformance.suite import (  # noqa: E402
    TARGET_CHECKS,
    Report,
    SuiteConfig,
    Targets,
    check_deadline,
    run_suite,
)

from ocpd.client.keys import AgentKey  # noqa: E402
from ocpd.proto.crypto import SigningKey  # noqa: E402
from ocpd.proto.encoding import b64url_encode  # noqa: E402
from ocpd.proto.ids import derive_agent_id  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

#: Start-up, the checks and shutdown of a local daemon, with a wide margin.
DEADLINE = 90
#: The daemon's task accept window here (the spec's is 30 s).
ACCEPT_WINDOW = 3
QUICK_TASKS = CONFIG_TEXT + f"collaboration:\n  ack_timeout_seconds: {ACCEPT_WINDOW}\n"
COLLAB = set(CHECKS)
KNOWLEDGE = {rid for rid in COLLAB if rid.startswith("OCP-KNOW-")}
FULL = COLLAB - KNOWLEDGE
NEEDS_KEYS = re.compile(r"needs --anchor-keys with .* of trust anchors of the target registry")


def anchors(count: int = ANCHOR_COUNT) -> list[SigningKey]:
    return [SigningKey.generate() for _ in range(count)]


@asynccontextmanager
async def local_ocpd(
    tmp_path: Path, keys: Sequence[SigningKey], config_text: str = QUICK_TASKS
) -> AsyncIterator[tuple[Targets, TlsFiles]]:
    """ocpd with TLS whose registry trusts ``keys`` as anchors; stopped on exit."""
    tls = write_tls_files(tmp_path / "tls")
    process = ocpd_process(
        tmp_path / "ocpd", tls=tls, extra_env=anchor_env(keys), config_text=config_text
    )
    async with trio.open_nursery() as nursery:
        ready = await nursery.start(process.run)
        yield targets_from_ready(ready), tls
        nursery.cancel_scope.cancel()
    assert process.returncode == 0


@pytest.fixture
def collab_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """``run_suite`` runs the knowledge and full requirements only (the core ones elsewhere)."""
    monkeypatch.setattr(
        suite, "for_level", lambda level: tuple(r for r in for_level(level) if r.id in COLLAB)
    )


def probe(
    targets: Targets, tls: TlsFiles, keys: Sequence[SigningKey], window: float = ACCEPT_WINDOW
) -> Probe:
    return Probe(
        targets.components(),
        suite_ssl_context(ca_file=tls.ca),
        5.0,
        anchor_keys=tuple(keys),
        task_accept_window=window,
    )


def _results(report: Report) -> dict[str, Any]:
    return {r.requirement.id: r for r in report.results}


# --- against the real daemon -------------------------------------------------------------------


@pytest.mark.usefixtures("collab_only")
async def test_collab_checks_pass_against_local_ocpd(tmp_path: Path) -> None:
    keys = anchors()
    with trio.fail_after(DEADLINE):
        async with local_ocpd(tmp_path, keys) as (targets, tls):
            report = await run_suite(
                SuiteConfig(
                    targets=targets,
                    level="full",
                    ca_file=tls.ca,
                    anchor_keys=tuple(keys),
                    task_accept_window=ACCEPT_WINDOW,
                )
            )
    results = _results(report)
    assert set(results) == COLLAB
    for rid, result in results.items():
        assert result.status == "pass", (rid, result.detail)
    assert set(CHECKS) <= set(TARGET_CHECKS)
    # What ocpd answers, as the details report it.
    trust = results["OCP-KNOW-TRUST-001"].detail
    assert trust.count("HTTP 403 OCP-403") == 2, trust
    for code in ("PVL-001", "PVL-002", "PVL-003", "PVL-004", "PVL-006"):
        rid = f"OCP-KNOW-{code}"
        assert f"HTTP 403 {code}" in results[rid].detail, (rid, results[rid].detail)
    assert "HTTP 413 PVL-005" in results["OCP-KNOW-PVL-005"].detail
    assert results["OCP-KNOW-EMB-001"].detail.count("HTTP 400 OCP-400") == 4
    assert "epsilon 10.5: HTTP 403 PVL-003" in results["OCP-KNOW-DELTA-001"].detail
    assert results["OCP-FULL-TASK-001"].detail.count("HTTP 403 OCP-403") == 3
    timeouts = results["OCP-FULL-TASK-002"]
    assert re.search(
        r"the task nobody answers: timeout [34] s after its request by the timestamps",
        timeouts.detail,
    ), timeouts.detail
    assert f"(accept window {ACCEPT_WINDOW} s)" in timeouts.detail
    assert "signed by did:ocp:mainnet:agent-" in timeouts.detail
    # Both timeouts are awaited together: the accept window and a little.
    assert timeouts.duration_seconds < ACCEPT_WINDOW + 5, timeouts.detail
    assert "status 'paused' for task 3: HTTP 400 OCP-400" in results["OCP-FULL-TASK-003"].detail
    assert "HTTP 403 OCP-403" in results["OCP-FULL-CONS-001"].detail
    assert results["OCP-FULL-CONS-002"].detail.count("HTTP 401 OCP-401") == 3
    assert "2 s after the deadline: HTTP 403 OCP-403" in results["OCP-FULL-CONS-003"].detail
    assert results["OCP-FULL-CONS-004"].detail.count("HTTP 403 OCP-403") == 2


async def test_a_node_that_times_tasks_out_early_fails(tmp_path: Path) -> None:
    """The node's accept window is 3 s; the suite holds it to the spec's 30 s."""
    keys = anchors()
    with trio.fail_after(DEADLINE):
        async with local_ocpd(tmp_path, keys) as (targets, tls):
            started = trio.current_time()
            outcome = await CHECKS["OCP-FULL-TASK-002"](
                probe(targets, tls, keys, window=collab.TASK_ACCEPT_WINDOW)
            )
            elapsed = trio.current_time() - started
    assert outcome.status == "fail", outcome.detail
    assert re.fullmatch(
        r"the task nobody answers: timed out [34] s after its request \(by the timestamps\),"
        r" before its 30 s",
        outcome.detail,
    ), outcome.detail
    # Both timeouts came early: the check does not wait out the 30 s.
    assert elapsed < 15


async def test_a_node_stricter_than_the_privacy_rules_fails(tmp_path: Path) -> None:
    """knowledge.max_epsilon 0.5: model deltas the protocol allows are refused."""
    keys = anchors()
    config = CONFIG_TEXT + "knowledge:\n  max_epsilon: 0.5\n"
    with trio.fail_after(DEADLINE):
        async with local_ocpd(tmp_path, keys, config_text=config) as (targets, tls):
            checked = probe(targets, tls, keys)
            deltas = await CHECKS["OCP-KNOW-DELTA-001"](checked)
            privacy = await CHECKS["OCP-KNOW-PVL-003"](checked)
    assert deltas.status == "fail"
    assert deltas.detail == (
        "epsilon 1.0: HTTP 403 PVL-003, expected 202; epsilon 10.0: HTTP 403 PVL-003, expected 202"
    )
    assert privacy.status == "fail"
    assert privacy.detail == "a model delta with epsilon 1.0: HTTP 403 PVL-003, expected 202"


@pytest.mark.usefixtures("collab_only")
async def test_without_enough_anchor_keys_the_checks_are_not_tested(tmp_path: Path) -> None:
    keys = anchors()
    with trio.fail_after(DEADLINE):
        async with local_ocpd(tmp_path, keys) as (targets, tls):
            # No keys: nothing to judge with; every check says so.
            report = await run_suite(SuiteConfig(targets=targets, level="full", ca_file=tls.ca))
            # Too few, and as many as needed that the registry does not trust.
            few = await CHECKS["OCP-FULL-CONS-001"](probe(targets, tls, keys[:2]))
            strangers = anchors()
            untrusted = await CHECKS["OCP-KNOW-PVL-001"](probe(targets, tls, strangers))
    assert {r.requirement.id for r in report.results} == COLLAB
    for result in report.results:
        assert result.status == "not_tested", (result.requirement.id, result.detail)
        assert NEEDS_KEYS.match(result.detail), result.detail
        assert result.detail.endswith("; 0 given")
    assert report.summary()["must_unmet"] == len(COLLAB)
    assert not report.conformant
    assert few.status == "not_tested"
    assert few.detail == (
        "needs --anchor-keys with at least 3 keys (the registry's vouch_threshold) of trust"
        " anchors of the target registry: Level 2 comes only from anchors and their vouches"
        " (OCP §4.2.1); 2 given"
    )
    assert untrusted.status == "not_tested"
    stranger = derive_agent_id(strangers[0].public_key, LOCAL_NETWORK)
    assert untrusted.detail == (
        f"{stranger} (a key of --anchor-keys) is Level 1 at the target registry: it is not one"
        " of its trust anchors (ocpd: trust.anchors, OCP_TRUST_ANCHORS)"
    )


# --- anchor keys, command line, deadlines ------------------------------------------------------


def test_anchor_key_files(tmp_path: Path) -> None:
    keys = anchors(2)
    text = anchor_keys_text(keys)
    assert text.startswith("# ")
    assert [k.public_key for k in parse_anchor_keys(text)] == [k.public_key for k in keys]
    commented = f"\n  {b64url_encode(keys[0].seed())}  # the first\n\n# done\n"
    assert parse_anchor_keys(commented)[0].public_key == keys[0].public_key
    # A key file of `ocpd agent keygen`, as it writes them.
    agent = AgentKey.generate(LOCAL_NETWORK)
    agent.save(tmp_path / "agent.json")
    seeds = write_anchor_keys(tmp_path / "anchors.keys", [*keys, agent.key])
    assert seeds.stat().st_mode & 0o777 == 0o600
    # Files are read in order; a key given twice counts once.
    found = read_anchor_keys([seeds, tmp_path / "agent.json"])
    assert [k.public_key for k in found] == [k.public_key for k in [*keys, agent.key]]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("# nothing\n\n", "anchor keys: no keys"),
        ("AAAA\n", "anchor keys, line 1: not an unpadded base64url Ed25519 seed of 32 bytes"),
        (b64url_encode(bytes(32)) + "=\n", "anchor keys, line 1: not an unpadded base64url"),
        ('{"key/alg": "rsa", "seed": "x"}', "anchor keys: not an ed25519 key file"),
        ('{"key/alg": "ed25519"', "anchor keys: not a JSON key file"),
        ('{"key/alg": "ed25519", "seed": "AAAA"}', "anchor keys: seed: not an unpadded"),
    ],
)
def test_bad_anchor_key_files(text: str, error: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(error)):
        parse_anchor_keys(text)


def test_command_line_refuses_a_bad_anchor_key_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "anchors.keys"
    bad.write_text("not a seed\n", encoding="utf-8")
    base = ["--node", "https://n.invalid", "--registry", "https://r.invalid"]
    base += ["--custodian", "https://c.invalid"]
    assert suite_main([*base, "--anchor-keys", str(bad)]) == 2
    assert f"--anchor-keys: {bad}, line 1: not an unpadded base64url" in capsys.readouterr().err
    assert suite_main([*base, "--anchor-keys", str(tmp_path / "missing")]) == 2
    with pytest.raises(SystemExit):
        suite_main([*base, "--task-accept-window", "0"])


def test_local_harness_passes_its_anchors(tmp_path: Path) -> None:
    keys = anchors()
    env = anchor_env(keys)
    assert env["OCP_NETWORK"] == LOCAL_NETWORK
    assert env["OCP_TRUST_ANCHORS"].split(",") == [
        derive_agent_id(k.public_key, LOCAL_NETWORK) for k in keys
    ]
    targets = Targets(node="https://n", registry="https://r", custodian="https://c")
    command = _suite_command(targets, tmp_path / "ca.pem", "full", tmp_path, tmp_path / "a.keys")
    assert command[command.index("--anchor-keys") + 1] == str(tmp_path / "a.keys")
    assert ANCHOR_COUNT == collab.DEFAULT_VOUCH_THRESHOLD


def test_timer_checks_get_a_longer_deadline() -> None:
    targets = Targets(node="https://n", registry="https://r", custodian="https://c")
    config = SuiteConfig(targets=targets)
    assert check_deadline("OCP-FULL-TASK-002", config) == 60.0
    assert check_deadline("OCP-FULL-TASK-003", config) == config.check_timeout == 20.0
    quick = SuiteConfig(targets=targets, task_accept_window=3.0)
    assert check_deadline("OCP-FULL-TASK-002", quick) == 33.0
    patient = SuiteConfig(targets=targets, check_timeout=120.0)
    assert check_deadline("OCP-FULL-TASK-002", patient) == 120.0
    # The knowledge and full requirements: these checks, the custodian's, and the extensions'
    # (no check yet).
    listed = {r.id for r in for_level("full") if r.level != "core"}
    assert listed - COLLAB - set(CUSTODIAN_CHECKS) == {"OCP-FULL-EXT-001"}
    assert COLLAB <= listed


def _error(status: int, code: str, **changes: Any) -> Answer:
    body: dict[str, Any] = {
        "message_type": "error",
        "sender": {"agent_id": "did:ocp:testnet:agent-0123456789ab", "signature": "x"},
        "payload": {"error_code": code, "message": "refused"},
    }
    body.update(changes)
    return Answer(status, json.loads(json.dumps(body)), {})


def test_refusal_problems() -> None:
    assert refusal_problems(_error(403, "PVL-001"), ["PVL-001"]) == []
    assert refusal_problems(_error(413, "PVL-005"), ["PVL-005"]) == []
    assert refusal_problems(_error(401, "OCP-401"), collab.VOTE_REFUSALS) == []
    assert refusal_problems(_error(400, "PVL-001"), ["PVL-001"]) == [
        "HTTP 400 PVL-001, expected HTTP 403 PVL-001"
    ]
    assert refusal_problems(_error(403, "PVL-002"), ["PVL-001"]) == [
        "HTTP 403 PVL-002, expected HTTP 403 PVL-001"
    ]
    assert refusal_problems(Answer(202, {"message_id": "m"}, {}), ["OCP-403"]) == [
        "HTTP 202, expected HTTP 403 OCP-403"
    ]
    assert refusal_problems(_error(403, "OCP-403", message_type="ack"), ["OCP-403"]) == [
        "the refusal is a message of type 'ack', not an error"
    ]
    assert refusal_problems(_error(403, "OCP-403", sender={}), ["OCP-403"]) == [
        "the refusal carries no sender.signature"
    ]
