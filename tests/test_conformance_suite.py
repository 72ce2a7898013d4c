"""The black-box conformance suite (conformance/), against the real daemon and on its own.

End to end: ``ocpd run --component all`` starts as a subprocess with TLS from
a throwaway trustme CA, every port 0 and a temporary data directory (through
``conformance.local``, the same harness as ``make conformance``); the suite
runs in-process against the URLs of its ``ready`` line. The implemented
checks must pass (health, metrics, TLS 1.3 and TLS 1.2 refused, the registry,
trust and seed directory checks, the node's transport and envelope checks,
the peer session checks with the suite as a remote node, vectors; at the
``full`` level also the recovery custodian checks), and every other
requirement must be reported ``not_tested`` and count against conformance;
so must the signal-marker check, which cannot see a signal accepted over the
wire and says so. A plaintext daemon must fail the TLS
requirements and the WSS of its peer endpoint only, a daemon without rate
limits must fail the two rate limit checks, and against a daemon without
peering the peer checks are skipped (``not_tested``, saying why). The
transport and peer checks are also run against misbehaving fakes in
``tests/test_conformance_transport.py`` and ``tests/test_conformance_peer.py``.

Unit tests cover the validators, the verdict rules, the JSON and JUnit
writers, the vector checks on tampered files and the command line.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import sys
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trio

ROOT = Path(__file__).resolve().parents[1]
# The suite lives in conformance/ at the repository root, which is not an
# installed package: make it importable however pytest was started.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from conformance.__main__ import main as suite_main  # noqa: E402
from conformance.checks import (  # noqa: E402
    CHECKS,
    TRUST_COMPONENTS,
    Answer,
    Probe,
    Unexpected,
    health_problems,
    info_problems,
    metrics_problems,
    trust_problems,
)
from conformance.client import suite_ssl_context  # noqa: E402
from conformance.collab import CHECKS as COLLAB_CHECKS  # noqa: E402
from conformance.custodian import CHECKS as CUSTODIAN_CHECKS  # noqa: E402
from conformance.local import (  # noqa: E402
    TlsFiles,
    ocpd_process,
    targets_from_ready,
    write_tls_files,
)
from conformance.peer import CHECKS as PEER_CHECKS  # noqa: E402
from conformance.process import ProcessFailed, ReadyProcess  # noqa: E402
from conformance.report import format_table, junit_xml, write_json, write_junit  # noqa: E402
from conformance.requirements import REQUIREMENTS, by_id, for_level  # noqa: E402
from conformance.suite import (  # noqa: E402
    TARGET_CHECKS,
    VECTORS_DIR,
    Report,
    Result,
    SuiteConfig,
    Targets,
    run_suite,
)
from conformance.vectorcheck import VECTOR_CHECKS, check_manifest  # noqa: E402

#: Start-up, one suite run and shutdown of a local daemon, with a wide margin
#: for a loaded CI machine.
DAEMON_DEADLINE = 60
IMPLEMENTED = set(TARGET_CHECKS) | set(VECTOR_CHECKS)
TLS_CHECKED = {"OCP-CORE-TLS-001", "OCP-CORE-TLS-002"}
#: Registry, trust and seed directory checks: black-box, over the registry URL.
REGISTRY_CHECKED = {
    "OCP-CORE-REG-001",
    "OCP-CORE-REG-002",
    "OCP-CORE-REG-003",
    "OCP-CORE-REG-004",
    "OCP-CORE-REG-005",
    "OCP-CORE-REG-008",
    "OCP-CORE-DISC-001",
    "OCP-CORE-DISC-002",
    "OCP-CORE-DID-001",
    "OCP-CORE-DID-002",
    "OCP-CORE-TRUST-001",
    "OCP-CORE-TRUST-002",
    "OCP-CORE-CERT-001",
    "OCP-CORE-VOUCH-001",
    "OCP-CORE-VOUCH-002",
    "OCP-CORE-BOND-001",
    "OCP-CORE-BOND-002",
    "OCP-CORE-RATE-002",
    "NET-DIR-001",
    "NET-ADV-002",
    "NET-ADV-003",
}
#: The node's transports and the envelope rules it enforces (conformance/transport.py).
TRANSPORT_CHECKED = {
    "OCP-CORE-WS-001",
    "OCP-CORE-WS-002",
    "OCP-CORE-WS-003",
    "OCP-CORE-WS-004",
    "OCP-CORE-HTTP-001",
    "OCP-CORE-HTTP-002",
    "OCP-CORE-HTTP-003",
    "OCP-CORE-HTTP-004",
    "OCP-CORE-DELIV-001",
    "OCP-CORE-DELIV-003",
    "OCP-CORE-ROUTE-001",
    "OCP-CORE-MSG-001",
    "OCP-CORE-MSG-002",
    "OCP-CORE-MSG-003",
    "OCP-CORE-MSG-005",
    "OCP-CORE-MSG-006",
    "OCP-CORE-SIZE-001",
    "OCP-CORE-RATE-001",
}
#: The node's peer endpoint, the suite playing a remote node (conformance/peer.py).
PEER_CHECKED = {
    "NET-HS-001",
    "NET-HS-002",
    "NET-HS-003",
    "NET-SESSION-001",
    "NET-CAP-001",
    "NET-KA-001",
    "NET-ERR-001",
}
#: Checked, but reported not_tested against ocpd: nothing on the wire shows the result.
PEER_UNOBSERVABLE = {"NET-SIG-001"}
SIGNAL_SKIPPED = "skipped: a node does not acknowledge a signal-marker on the wire"
TARGET_CHECKED = (
    {"OCP-CORE-HEALTH-001", "OCP-CORE-METRICS-001"}
    | TLS_CHECKED
    | REGISTRY_CHECKED
    | TRANSPORT_CHECKED
    | PEER_CHECKED
)


class LocalOcpd:
    def __init__(self, targets: Targets, tls: TlsFiles | None, process: ReadyProcess) -> None:
        self.targets = targets
        self.tls = tls
        self.process = process


@pytest.fixture
async def tls_ocpd(tmp_path: Path):
    """A running ``ocpd run --component all`` with TLS; SIGTERM (then kill) on teardown."""
    tls = write_tls_files(tmp_path / "tls")
    process = ocpd_process(tmp_path / "ocpd", tls=tls)
    async with trio.open_nursery() as nursery:
        with trio.fail_after(DAEMON_DEADLINE):
            ready = await nursery.start(process.run)
        yield LocalOcpd(targets_from_ready(ready), tls, process)
        nursery.cancel_scope.cancel()


def _results(report: Report) -> dict[str, Result]:
    return {r.requirement.id: r for r in report.results}


# --- against the real daemon ---------------------------------------------------------------


async def test_implemented_checks_pass_against_local_ocpd(tls_ocpd: LocalOcpd) -> None:
    assert tls_ocpd.tls is not None
    with trio.fail_after(DAEMON_DEADLINE):
        report = await run_suite(
            SuiteConfig(targets=tls_ocpd.targets, level="core", ca_file=tls_ocpd.tls.ca)
        )
    results = _results(report)
    assert [r.requirement for r in report.results] == list(for_level("core"))
    for rid in TARGET_CHECKED:
        assert results[rid].status == "pass", (rid, results[rid].detail)
    for rid in VECTOR_CHECKS:
        assert results[rid].status == "pass", (rid, results[rid].detail)
        assert results[rid].requirement.kind == "vector"
    # Every listener was checked, the WebSocket port included.
    health = results["OCP-CORE-HEALTH-001"].detail
    for label in ("node healthy", "node-ws healthy", "registry healthy", "custodian healthy"):
        assert label in health
    assert results["OCP-CORE-TLS-001"].detail == "TLSv1.3 on 4 listener(s)"
    assert results["OCP-CORE-TLS-002"].detail.startswith("refused by 4 listener(s)")
    # Every check that talks to the target is one of these: nothing unchecked slips in.
    assert set(TARGET_CHECKS) == (
        TARGET_CHECKED | PEER_UNOBSERVABLE | set(COLLAB_CHECKS) | set(CUSTODIAN_CHECKS)
    )
    assert set(CHECKS) == TARGET_CHECKED - TRANSPORT_CHECKED - PEER_CHECKED
    assert set(PEER_CHECKS) == PEER_CHECKED | PEER_UNOBSERVABLE
    assert results["OCP-CORE-REG-001"].detail.startswith("mode centralized, network mainnet")
    assert results["OCP-CORE-DID-001"].detail.endswith("(HTTP 401 OCP-401)")
    assert "HTTP 409 E_ADV_STALE_SEQ" in results["NET-ADV-002"].detail
    # 101, or a little later when the bucket refilled while the queries ran
    assert re.match(r"query 1\d\d of one agent got OCP-429", results["OCP-CORE-RATE-002"].detail)
    # The node's transports, as docs/node.md describes them.
    assert "(HTTP 403, HTTP 403)" in results["OCP-CORE-WS-001"].detail
    timeout = results["OCP-CORE-WS-002"].detail
    assert timeout.startswith("auth_result rejected (OCP-408), close 1008"), timeout
    assert results["OCP-CORE-SIZE-001"].detail.startswith("16777217 bytes declared: OCP-413")
    assert re.match(r"broadcast [67] of one agent got OCP-429", results["OCP-CORE-RATE-001"].detail)
    # A loopback node: the suite's own refusing endpoints, tried in priority order.
    routed = results["OCP-CORE-ROUTE-001"].detail
    assert re.search(r"; the endpoints got priority 1, priority 2 by did:ocp:mainnet:", routed)
    assert results["OCP-CORE-ROUTE-001"].duration_seconds < 5, routed
    # The peer endpoint, as docs/networking.md describes it.
    assert results["NET-HS-001"].detail.startswith("ack signed by node:did:key:z6Mk")
    assert "E_HS_REPLAY (handshake/replay-suspected)" in results["NET-HS-002"].detail
    assert results["NET-HS-003"].detail == (
        "refused and closed: bit-flipped signature E_SIG_INVALID, protocol/version 2.0 "
        "E_PROTO_VERSION, another recipient E_PROTO_INVALID"
    )
    assert "a bit-flipped frame (close 1008)" in results["NET-SESSION-001"].detail
    assert "capabilities/core ['core/messaging', 'ocp/relay']" in results["NET-CAP-001"].detail
    assert "E_HS_UNKNOWN_REF (handshake/unknown-ref)" in results["NET-ERR-001"].detail
    signal = results["NET-SIG-001"]
    assert signal.status == "not_tested", signal.detail
    assert signal.detail.startswith(SIGNAL_SKIPPED), signal.detail
    for rid in PEER_CHECKED | PEER_UNOBSERVABLE:
        assert results[rid].duration_seconds < 5, (rid, results[rid].detail)


async def test_unimplemented_requirements_are_not_tested_and_fail_the_level(
    tls_ocpd: LocalOcpd,
) -> None:
    assert tls_ocpd.tls is not None
    with trio.fail_after(DAEMON_DEADLINE):
        report = await run_suite(
            SuiteConfig(targets=tls_ocpd.targets, level="full", ca_file=tls_ocpd.tls.ca)
        )
    assert len(report.results) == len(REQUIREMENTS)
    not_tested = [r for r in report.results if r.status == "not_tested"]
    unimplemented = {r.id for r in REQUIREMENTS} - IMPLEMENTED
    # Without --anchor-keys the knowledge and collaboration checks cannot judge.
    collab = set(COLLAB_CHECKS)
    assert {r.requirement.id for r in not_tested} == unimplemented | PEER_UNOBSERVABLE | collab
    for r in not_tested:
        if r.requirement.id in PEER_UNOBSERVABLE:
            assert r.detail.startswith(SIGNAL_SKIPPED), r.detail
        elif r.requirement.id in collab:
            assert r.detail.startswith("needs --anchor-keys"), r.detail
        else:
            assert r.detail == "no check implemented yet", r.requirement.id
    assert {r.requirement.level for r in not_tested} == {"core", "knowledge", "full"}
    # The custodian checks need no anchor keys: against ocpd they pass.
    for rid in CUSTODIAN_CHECKS:
        assert _results(report)[rid].status == "pass", (rid, _results(report)[rid].detail)
    summary = report.summary()
    assert summary["passed"] == len(IMPLEMENTED - PEER_UNOBSERVABLE - collab)
    assert summary["failed"] == 0
    assert summary["not_tested"] == len(not_tested)
    assert summary["total"] == len(REQUIREMENTS)
    # Untested MUSTs are not met: the level fails, honestly.
    must_untested = [r for r in not_tested if r.requirement.strength == "MUST"]
    assert summary["must_unmet"] == len(must_untested) > 0
    assert summary["conformant"] is False
    assert not report.conformant


async def test_plaintext_ocpd_fails_the_tls_requirements(tmp_path: Path) -> None:
    process = ocpd_process(tmp_path / "ocpd", tls=None)
    with trio.fail_after(DAEMON_DEADLINE):
        async with trio.open_nursery() as nursery:
            ready = await nursery.start(process.run)
            targets = targets_from_ready(ready)
            assert targets.node.startswith("http://")
            report = await run_suite(SuiteConfig(targets=targets, level="core"))
            # Plain HTTP on loopback is deliverable: the registry's URLs can refuse instead.
            routing = await TARGET_CHECKS["OCP-CORE-ROUTE-001"](
                Probe(targets.components(), suite_ssl_context(), 5.0, route_listener="off")
            )
            nursery.cancel_scope.cancel()
    assert routing.status == "pass", routing.detail
    assert "the registry's URLs as refusing endpoints" in routing.detail
    results = _results(report)
    for rid in TARGET_CHECKED - TLS_CHECKED - {"NET-HS-001"}:
        assert results[rid].status == "pass", (rid, results[rid].detail)
    for rid in TLS_CHECKED:
        assert results[rid].status == "fail"
        assert "plaintext" in results[rid].detail
    # The peer checks run over ws:// all the same; only the handshake check holds D8's WSS.
    assert targets.node_ws is not None
    peer_url = targets.node_ws.replace("http://", "ws://") + "/ocp/v1/peer"
    assert results["NET-HS-001"].status == "fail"
    assert results["NET-HS-001"].detail == f"{peer_url} is not WSS (D8, FR-008)"
    assert report.summary()["failed"] == 3


async def test_daemon_without_rate_limits_fails_the_rate_limits(tmp_path: Path) -> None:
    tls = write_tls_files(tmp_path / "tls")
    process = ocpd_process(
        tmp_path / "ocpd", tls=tls, extra_env={"OCP_RATE_LIMIT_ENABLED": "false"}
    )
    with trio.fail_after(DAEMON_DEADLINE):
        async with trio.open_nursery() as nursery:
            ready = await nursery.start(process.run)
            report = await run_suite(
                SuiteConfig(targets=targets_from_ready(ready), level="core", ca_file=tls.ca)
            )
            nursery.cancel_scope.cancel()
    results = _results(report)
    limited = results["OCP-CORE-RATE-002"]
    assert limited.status == "fail"
    assert re.fullmatch(
        r"1\d\d queries by one agent in \d+\.\d s, none limited \(OCP §9\)", limited.detail
    ), limited.detail
    # A SHOULD: reported, never the reason the level fails.
    assert limited.requirement.strength == "SHOULD"
    messages = results["OCP-CORE-RATE-001"]
    assert messages.status == "fail"
    assert re.fullmatch(
        r"7 broadcasts by one agent in \d+\.\d s, none limited \(OCP §9: 5 per 60 s\)",
        messages.detail,
    ), messages.detail
    assert messages.requirement.strength == "MUST"
    failed = [r.requirement.id for r in report.results if r.status == "fail"]
    assert failed == ["OCP-CORE-RATE-001", "OCP-CORE-RATE-002"]


async def test_daemon_without_peering_skips_the_peer_checks(tmp_path: Path) -> None:
    """No /ocp/v1/peer: the peer requirements are unchecked (not_tested, saying why), not failed."""
    tls = write_tls_files(tmp_path / "tls")
    process = ocpd_process(tmp_path / "ocpd", tls=tls, extra_env={"OCP_PEERING_ENABLED": "false"})
    with trio.fail_after(DAEMON_DEADLINE):
        async with trio.open_nursery() as nursery:
            ready = await nursery.start(process.run)
            targets = targets_from_ready(ready)
            probe = Probe(targets.components(), suite_ssl_context(ca_file=tls.ca), 5.0)
            outcomes = {rid: await check(probe) for rid, check in PEER_CHECKS.items()}
            nursery.cancel_scope.cancel()
    assert targets.node_ws is not None
    peer_url = targets.node_ws.replace("https://", "wss://") + "/ocp/v1/peer"
    for rid, outcome in outcomes.items():
        assert outcome.status == "not_tested", (rid, outcome.detail)
        # ocpd answers an upgrade to a path it does not serve with 403.
        assert outcome.detail == (
            f"skipped: no peer endpoint at {peer_url}: the upgrade to ocp.peer.v1 was "
            "refused with HTTP 403"
        ), rid


async def test_local_ocpd_exits_0_on_sigterm(tmp_path: Path) -> None:
    tls = write_tls_files(tmp_path / "tls")
    process = ocpd_process(tmp_path / "ocpd", tls=tls)
    with trio.fail_after(DAEMON_DEADLINE):
        async with trio.open_nursery() as nursery:
            ready = await nursery.start(process.run)
            assert set(ready["listeners"]) == {"http", "ws", "registry", "custodian"}
            nursery.cancel_scope.cancel()
    assert process.returncode == 0
    assert any('"shutdown_requested"' in line for line in process.output)


async def test_process_that_never_gets_ready_is_reported(tmp_path: Path) -> None:
    script = "import sys; print('starting'); sys.exit(3)"
    process = ReadyProcess(command=[sys.executable, "-c", script], name="broken", cwd=tmp_path)
    with trio.fail_after(30), pytest.RaisesGroup(pytest.RaisesExc(ProcessFailed)):
        async with trio.open_nursery() as nursery:
            await nursery.start(process.run)
    assert process.returncode == 3
    assert list(process.output) == ["starting"]


# --- the requirement registry ----------------------------------------------------------------


def test_requirements_are_well_formed() -> None:
    ids = [r.id for r in REQUIREMENTS]
    assert len(ids) == len(set(ids))
    for r in REQUIREMENTS:
        assert r.strength in ("MUST", "SHOULD")
        assert r.title
        assert r.section
        assert "\n" not in r.title
        assert r.id.startswith(("OCP-", "NET-"))
    assert by_id("OCP-CORE-HEALTH-001").level == "core"
    # Levels are cumulative.
    core, knowledge, full = (set(for_level(level)) for level in ("core", "knowledge", "full"))
    assert core < knowledge < full == set(REQUIREMENTS)
    # Every implemented check belongs to a listed requirement.
    assert IMPLEMENTED <= set(ids)
    assert all(by_id(rid).kind == "vector" for rid in VECTOR_CHECKS)
    assert all(by_id(rid).kind == "target" for rid in TARGET_CHECKS)


# --- validators --------------------------------------------------------------------------------

HEALTHY: dict[str, Any] = {
    "status": "healthy",
    "component": "registry",
    "version": "0.1.0",
    "network": "testnet",
    "uptime_seconds": 12,
    "database": "connected",
    "checks": {"database_writable": True, "disk_space_ok": True, "memory_ok": True},
}


def _health(body: object, *, role: str = "registry", code: int = 200) -> list[str]:
    raw = json.dumps(body).encode()
    problems, _ = health_problems(role, code, "application/json", raw)
    return problems


def test_health_accepts_the_docker_shape() -> None:
    assert _health(HEALTHY) == []
    degraded = HEALTHY | {"status": "degraded", "checks": HEALTHY["checks"] | {"memory_ok": False}}
    assert _health(degraded) == []


@pytest.mark.parametrize(
    ("body", "code", "expected"),
    [
        (HEALTHY | {"extra": 1}, 200, "fields outside Docker §7.1 ['extra']"),
        ({k: v for k, v in HEALTHY.items() if k != "network"}, 200, "missing fields ['network']"),
        (HEALTHY | {"uptime_seconds": True}, 200, "uptime_seconds is bool, not int"),
        (HEALTHY | {"uptime_seconds": 1.5}, 200, "uptime_seconds is float, not int"),
        (HEALTHY | {"component": "node"}, 200, "component is 'node', expected 'registry'"),
        (HEALTHY | {"status": "ok"}, 200, "status 'ok' is not healthy, degraded or unhealthy"),
        (HEALTHY, 503, "status 'healthy' answered with HTTP 503"),
        (HEALTHY | {"status": "unhealthy", "database": "unavailable"}, 503, "reports unhealthy"),
        (HEALTHY | {"database": "up"}, 200, "database 'up' is not connected or unavailable"),
        (HEALTHY | {"checks": {"database_writable": True}}, 200, "checks has"),
        (HEALTHY | {"checks": HEALTHY["checks"] | {"memory_ok": "yes"}}, 200, "not booleans"),
        ([1, 2], 200, "not a JSON object"),
    ],
)
def test_health_problems(body: object, code: int, expected: str) -> None:
    problems = _health(body, code=code)
    assert any(expected in p for p in problems), problems


def test_health_needs_json_content_type() -> None:
    problems, status = health_problems("registry", 200, "text/html", json.dumps(HEALTHY).encode())
    assert status == "healthy"
    assert problems == ["Content-Type is 'text/html', not application/json"]
    problems, status = health_problems("node", 200, "application/json", b"<html>")
    assert status is None
    assert problems == ["HTTP 200, body is not JSON"]


METRICS = """\
# HELP ocp_request_duration_seconds Request latency
# TYPE ocp_request_duration_seconds histogram
ocp_request_duration_seconds_bucket{endpoint="/health",le="0.1"} 1.0
ocp_request_duration_seconds_bucket{endpoint="/health",le="+Inf"} 1.0
ocp_request_duration_seconds_count{endpoint="/health"} 1.0
ocp_request_duration_seconds_sum{endpoint="/health"} 0.004
# HELP ocp_database_size_bytes SQLite database size
# TYPE ocp_database_size_bytes gauge
ocp_database_size_bytes{component="node"} 4096.0
"""
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"


def test_metrics_accepts_prometheus_text() -> None:
    assert metrics_problems(PROMETHEUS, METRICS) == []
    assert metrics_problems("text/plain; version=1.0.0; charset=utf-8", METRICS) == []
    # A histogram that has seen no request yet has no samples; that is fine.
    no_samples = "\n".join(line for line in METRICS.splitlines() if "_seconds_" not in line)
    assert metrics_problems(PROMETHEUS, no_samples + "\n") == []


def test_metrics_problems() -> None:
    assert metrics_problems("application/json", METRICS) == [
        "Content-Type is 'application/json', not Prometheus text/plain"
    ]
    gauge = METRICS.replace("ocp_database_size_bytes gauge", "ocp_database_size_bytes counter")
    assert metrics_problems(PROMETHEUS, gauge) == [
        "ocp_database_size_bytes is a counter, not a gauge"
    ]
    assert metrics_problems(PROMETHEUS, "# TYPE other gauge\nother 1\n") == [
        "no ocp_request_duration_seconds",
        "no ocp_database_size_bytes",
    ]
    no_inf = METRICS.replace('le="+Inf"', 'le="1.0"')
    assert metrics_problems(PROMETHEUS, no_inf) == [
        "ocp_request_duration_seconds lacks _bucket (le=+Inf), _count or _sum samples"
    ]
    assert metrics_problems(PROMETHEUS, "not { metrics")[0].startswith("does not parse")


WEIGHTS = {
    "identity_verification": 0.2,
    "vouch_count_normalized": 0.25,
    "bond_count_normalized": 0.25,
    "interaction_reputation": 0.2,
    "uptime_ratio": 0.1,
}
INFO: dict[str, Any] = {
    "mode": "centralized",
    "network": "testnet",
    "trust_weights": WEIGHTS,
    "taxonomy_version": "v1-ae34edbb06a5",
}
AGENT = "did:ocp:testnet:agent-0123456789ab"
COMPONENTS = {
    "identity_verification": 1.0,
    "vouch_count_normalized": 0.0,
    "bond_count_normalized": 0.0,
    "interaction_reputation": 0.5,
    "uptime_ratio": 0.0,
}
TRUST: dict[str, Any] = {
    "agent_id": AGENT,
    "trust_level": 1,
    "trust_score": 0.3,
    "components": COMPONENTS,
    "weights": WEIGHTS,
    "vouch_count": 0,
    "bond_count": 0,
}


def test_info_problems() -> None:
    assert info_problems(INFO) == []
    assert info_problems(INFO | {"mode": "dht", "extra": 1}) == []
    assert info_problems([]) == ["body is not a JSON object"]
    assert info_problems(INFO | {"mode": "p2p"}) == [
        "mode 'p2p' is not one of federated, dht, centralized"
    ]
    assert info_problems(INFO | {"network": "Main Net"}) == [
        "network 'Main Net' is not a network name"
    ]
    assert info_problems(INFO | {"trust_weights": WEIGHTS | {"uptime_ratio": 0.2}}) == [
        "trust_weights sum to 1.1, not 1"
    ]
    assert info_problems(INFO | {"trust_weights": {"uptime_ratio": 1.0}})[0].startswith(
        "trust_weights has ['uptime_ratio']"
    )
    assert info_problems({k: v for k, v in INFO.items() if k != "taxonomy_version"}) == [
        "taxonomy_version None is not a non-empty string"
    ]


def test_trust_problems() -> None:
    assert sorted(COMPONENTS) == sorted(TRUST_COMPONENTS)
    assert trust_problems(TRUST, AGENT) == []
    assert trust_problems(TRUST, "did:ocp:testnet:agent-ffffffffffff") == [
        f"agent_id is {AGENT!r}, not did:ocp:testnet:agent-ffffffffffff"
    ]
    assert trust_problems(TRUST | {"trust_level": 5}, AGENT) == [
        "trust_level 5 is not an integer from 0 to 4"
    ]
    assert trust_problems(TRUST | {"trust_level": True}, AGENT) == [
        "trust_level True is not an integer from 0 to 4"
    ]
    assert trust_problems(TRUST | {"trust_score": 0.5}, AGENT) == [
        "trust_score 0.5 is not the weighted sum 0.3"
    ]
    assert trust_problems(TRUST | {"trust_score": 1.5}, AGENT)[0] == (
        "trust_score 1.5 is not in [0, 1]"
    )
    assert trust_problems(TRUST | {"components": COMPONENTS | {"uptime_ratio": 2}}, AGENT) == [
        "components are not all in [0, 1]"
    ]
    assert trust_problems(TRUST | {"components": {}}, AGENT) == [
        f"components are not exactly {list(TRUST_COMPONENTS)}"
    ]
    assert trust_problems(TRUST | {"vouch_count": -1, "bond_count": 1.0}, AGENT) == [
        "vouch_count -1 is not a count",
        "bond_count 1.0 is not a count",
    ]
    assert trust_problems(None, AGENT) == ["body is not a JSON object"]


def test_answers_are_refusals_only_with_the_matching_code() -> None:
    def answer(status: int, body: object) -> Answer:
        return Answer(status, body, {})

    assert answer(403, {"error_code": "OCP-403", "message": "no"}).refused_with(403)
    assert answer(401, {"error_code": "OCP-401", "message": "no"}).refused_with(400, 401)
    # D6: the status is the number of the code.
    assert not answer(400, {"error_code": "OCP-403", "message": "no"}).refused_with(400, 403)
    assert not answer(403, "<html>forbidden</html>").refused_with(403)
    assert not answer(201, {"agent_id": AGENT}).refused_with(400)
    assert answer(409, {"error_code": "E_ADV_STALE_SEQ"}).describe() == "HTTP 409 E_ADV_STALE_SEQ"
    assert answer(500, None).describe() == "HTTP 500"
    with pytest.raises(Unexpected, match="body is not a JSON object"):
        answer(200, [1]).object("GET info")


async def test_registry_checks_report_an_unreachable_registry() -> None:
    url = f"https://127.0.0.1:{_closed_port()}"
    probe = Probe(
        components=Targets(node=url, registry=url, custodian=url).components(),
        context=suite_ssl_context(insecure=True),
        request_timeout=5.0,
    )
    outcome = await CHECKS["OCP-CORE-REG-002"](probe)
    assert outcome.status == "fail"
    assert outcome.detail.startswith("no answer")


# --- vectors -----------------------------------------------------------------------------------


def test_vector_checks_detect_tampering(tmp_path: Path) -> None:
    vectors = tmp_path / "vectors"
    shutil.copytree(VECTORS_DIR, vectors)
    assert check_manifest(vectors).ok
    path = vectors / "message-signing.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    case = data["cases"][0]
    case["signed_message"]["ttl"] += 1
    path.write_text(json.dumps(data), encoding="utf-8")

    manifest = check_manifest(vectors)
    assert not manifest.ok
    assert manifest.failures == [
        f"message-signing.json: SHA-256 {manifest.failures[0].split()[2]} differs from the manifest"
    ]
    outcome = VECTOR_CHECKS["OCP-CORE-VEC-JCS-001"](vectors)
    assert outcome.cases == len(data["cases"])
    assert len(outcome.failures) == 1
    assert outcome.failures[0].startswith(f"message-signing/{case['name']}: ")
    (vectors / "did-key.json").unlink()
    assert "did-key.json: listed but missing" in check_manifest(vectors).failures
    assert VECTOR_CHECKS["NET-VEC-001"](vectors).failures[0].startswith("did-key.json: unreadable")


# --- report, verdict and writers -----------------------------------------------------------------


def _report() -> Report:
    targets = Targets(
        node="https://127.0.0.1:8420",
        registry="https://127.0.0.1:8422",
        custodian="https://127.0.0.1:8423",
    )
    started = datetime(2026, 4, 3, 12, 0, tzinfo=UTC)
    report = Report(level="core", targets=targets, started_at=started, finished_at=started)
    report.results = [
        Result(by_id("OCP-CORE-HEALTH-001"), "pass", "node healthy (200)", 0.01),
        Result(by_id("OCP-CORE-METRICS-001"), "fail", "node: no ocp_database_size_bytes", 0.02),
        Result(by_id("OCP-CORE-TLS-002"), "fail", "node: accepted a TLS 1.2-only client", 0.03),
        Result(by_id("OCP-CORE-WS-001"), "not_tested", "no check implemented yet"),
        Result(by_id("NET-VEC-001"), "pass", "24 cases verified", 0.1),
    ]
    return report


def test_verdict_counts_not_tested_as_unmet_and_ignores_should() -> None:
    report = _report()
    assert report.summary() == {
        "passed": 2,
        "failed": 2,
        "not_tested": 1,
        "total": 5,
        "must_unmet": 2,
        "should_unmet": 1,
        "conformant": False,
    }
    # Only the SHOULD failure left: conformant.
    report.results = [
        r for r in report.results if r.requirement.strength == "SHOULD" or r.status == "pass"
    ]
    assert report.summary()["should_unmet"] == 1
    assert report.conformant
    # A MUST that nobody checked is not met.
    report.results.append(Result(by_id("OCP-CORE-HTTP-001"), "not_tested", "no check"))
    assert not report.conformant
    # An empty report proves nothing.
    empty = _report()
    empty.results = []
    assert not empty.conformant


def test_json_report(tmp_path: Path) -> None:
    path = tmp_path / "out" / "report.json"
    write_json(_report(), path)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["suite"] == "ocpd-conformance"
    assert data["suite_version"]
    assert data["started_at"] == "2026-04-03T12:00:00Z"
    assert data["level"] == "core"
    assert data["targets"]["node"] == "https://127.0.0.1:8420"
    assert data["targets"]["node_ws"] is None
    assert data["targets"]["node_peer"] is None
    assert data["summary"]["total"] == 5
    assert "not the target" in data["vector_note"]
    first = data["requirements"][0]
    assert set(first) >= {"id", "level", "strength", "title", "status", "detail"}
    assert first["id"] == "OCP-CORE-HEALTH-001"
    assert first["status"] == "pass"
    assert [r["status"] for r in data["requirements"]] == [
        "pass",
        "fail",
        "fail",
        "not_tested",
        "pass",
    ]
    assert data["requirements"][4]["kind"] == "vector"


def test_junit_report(tmp_path: Path) -> None:
    path = tmp_path / "junit.xml"
    write_junit(_report(), path)
    assert path.read_bytes() == junit_xml(_report())
    root = ET.fromstring(path.read_bytes())  # noqa: S314 - our own output
    assert root.tag == "testsuites"
    [suite] = root.findall("testsuite")
    assert suite.get("tests") == "5"
    assert suite.get("failures") == "3"
    cases = {case.get("name"): case for case in suite.findall("testcase")}
    assert list(cases) == [r.requirement.id for r in _report().results]
    assert cases["OCP-CORE-HEALTH-001"].find("failure") is None
    assert cases["NET-VEC-001"].find("failure") is None
    failed = cases["OCP-CORE-TLS-002"].find("failure")
    assert failed is not None
    assert failed.get("type") == "failed"
    assert failed.get("message") == "node: accepted a TLS 1.2-only client"
    should = cases["OCP-CORE-METRICS-001"].find("failure")
    assert should is not None
    assert should.get("message", "").startswith("SHOULD, does not fail the run: ")
    untested = cases["OCP-CORE-WS-001"].find("failure")
    assert untested is not None
    assert untested.get("type") == "not_tested"
    properties = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert properties["level"] == "core"
    assert properties["conformant"] == "false"
    assert properties["target.node"] == "https://127.0.0.1:8420"


def test_table() -> None:
    table = format_table(_report())
    lines = table.splitlines()
    assert any(line.startswith("PASS") and "OCP-CORE-HEALTH-001" in line for line in lines)
    assert any(line.startswith("NOT TESTED") and "OCP-CORE-WS-001" in line for line in lines)
    assert "2 passed, 2 failed, 1 not tested, 5 requirements at level core" in table
    assert "MUST not met: 2 (1 failed, 1 not tested); SHOULD not met: 1" in table
    assert lines[-1] == "verdict: NOT CONFORMANT to level core: 2 MUST requirement(s) not met"
    # A check that could not judge says why, in full; an unchecked requirement shows its title.
    skipped = _report()
    reason = (
        "skipped: no peer endpoint at wss://127.0.0.1:8421/ocp/v1/peer: the upgrade to "
        "ocp.peer.v1 was refused with HTTP 404"
    )
    skipped.results.append(Result(by_id("NET-HS-001"), "not_tested", reason))
    flat = " ".join(format_table(skipped).split())
    assert f"NOT TESTED MUST target NET-HS-001 {reason}" in flat
    assert f"NOT TESTED MUST target OCP-CORE-WS-001 {by_id('OCP-CORE-WS-001').title[:20]}" in flat


# --- command line --------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_cli_reports_an_unreachable_node(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"https://127.0.0.1:{_closed_port()}"
    status = suite_main(
        [
            *("--node", url, "--registry", url, "--custodian", url),
            *("--report-json", str(tmp_path / "r.json"), "--junit", str(tmp_path / "j.xml")),
            *("--insecure", "--timeout", "10"),
        ]
    )
    assert status == 1
    data = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    results = {r["id"]: r for r in data["requirements"]}
    assert results["OCP-CORE-HEALTH-001"]["status"] == "fail"
    assert "no answer" in results["OCP-CORE-HEALTH-001"]["detail"]
    assert results["OCP-CORE-VEC-JCS-001"]["status"] == "pass"
    assert (tmp_path / "j.xml").is_file()
    assert "verdict: NOT CONFORMANT to level core" in capsys.readouterr().out


def test_cli_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        suite_main(["--node", "ftp://x", "--registry", "https://a", "--custodian", "https://b"])
    assert exc.value.code == 2
    assert "not an http(s) base URL" in capsys.readouterr().err
    missing = ["--node", "https://a", "--registry", "https://a", "--custodian", "https://b"]
    assert suite_main([*missing, "--ca-file", "/nonexistent/ca.pem"]) == 2
    with pytest.raises(SystemExit) as exc:
        suite_main([*missing, "--route-listener", "maybe"])
    assert exc.value.code == 2


def test_cli_passes_the_peer_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[SuiteConfig] = []

    async def fake_run_suite(config: SuiteConfig) -> Report:
        seen.append(config)
        return Report(level=config.level, targets=config.targets, started_at=datetime.now(UTC))

    monkeypatch.setattr("conformance.__main__.run_suite", fake_run_suite)
    urls = ["--node", "https://a", "--registry", "https://a", "--custodian", "https://b"]
    assert suite_main(urls) == 1
    assert suite_main([*urls, "--node-peer", "wss://a:9443/ocp/v1/peer"]) == 1
    assert [c.targets.node_peer for c in seen] == [None, "wss://a:9443/ocp/v1/peer"]
    with pytest.raises(SystemExit) as exc:
        suite_main([*urls, "--node-peer", "ftp://a/ocp/v1/peer"])
    assert exc.value.code == 2


@pytest.mark.parametrize(("argv", "expected"), [([], "auto"), (["--route-listener", "off"], "off")])
def test_cli_passes_the_route_listener_setting(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], expected: str
) -> None:
    seen: list[SuiteConfig] = []

    async def fake_run_suite(config: SuiteConfig) -> Report:
        seen.append(config)
        return Report(level=config.level, targets=config.targets, started_at=datetime.now(UTC))

    monkeypatch.setattr("conformance.__main__.run_suite", fake_run_suite)
    urls = ["--node", "https://a", "--registry", "https://a", "--custodian", "https://b"]
    assert suite_main([*urls, *argv]) == 1
    assert [c.route_listener for c in seen] == [expected]
