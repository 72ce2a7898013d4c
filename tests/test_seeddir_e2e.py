"""The seed directory in the real daemon: publish, fetch, feed, restart (NET FR-004f, FR-007a)."""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import Agent
from daemon_process import Daemon, TlsFiles
from ocpd.proto.ids import format_node_id
from ocpd.proto.netartifacts import build_node_advertisement

ENDPOINTS = [{"url": "wss://node.example:443/ocp/v1/peer", "transport": "wss", "priority": 0}]


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return TlsFiles(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.stop()


def _start(daemons: list[Daemon], data_dir: Path, tls: TlsFiles) -> Daemon:
    daemon = Daemon(data_dir, component="registry", tls=tls)
    daemons.append(daemon)
    daemon.start()
    daemon.wait_ready()
    return daemon


def _request(
    daemon: Daemon, method: str, path: str, body: bytes | None = None
) -> tuple[int, bytes, dict[str, str]]:
    assert daemon.tls is not None
    request = urllib.request.Request(
        daemon.listeners["registry"] + path,
        data=body,
        method=method,
        headers={"Content-Type": "application/json"} if body is not None else {},
    )
    context = daemon.tls.client_context()
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return (
                response.status,
                response.read(),
                {k.lower(): v for k, v in response.headers.items()},
            )
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), {k.lower(): v for k, v in exc.headers.items()}


def _advertisement(agent: Agent, sequence: int) -> bytes:
    # The daemon reads the real wall clock.
    adv = build_node_advertisement(
        agent.key, sequence=sequence, endpoints=ENDPOINTS, now=time.time()
    )
    return json.dumps(adv, indent=2).encode()


def _counter(daemon: Daemon, outcome: str) -> float:
    status, text, _ = _request(daemon, "GET", "/metrics")
    assert status == 200
    for family in text_string_to_metric_families(text.decode()):
        if family.name == "ocpd_seed_advertisements":
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels == {"outcome": outcome}:
                    return float(sample.value)
    return 0.0


def test_publish_fetch_feed_and_restart(
    tmp_path: Path, tls: TlsFiles, daemons: list[Daemon], alice: Agent, bob: Agent
) -> None:
    alice_id, bob_id = format_node_id(alice.public_key), format_node_id(bob.public_key)
    daemon = _start(daemons, tmp_path, tls)

    first = _advertisement(alice, 1)
    status, body, _ = _request(daemon, "PUT", f"/adv/{alice_id}", first)
    assert status == 201, body
    assert json.loads(body) == {"node/id": alice_id, "sequence/no": 1, "cursor": 1}
    status, body, _ = _request(daemon, "PUT", f"/adv/{bob_id}", _advertisement(bob, 1))
    assert status == 201, body

    current = _advertisement(alice, 2)
    status, body, _ = _request(daemon, "PUT", f"/adv/{alice_id}", current)
    assert (status, json.loads(body)["cursor"]) == (200, 3)

    status, body, headers = _request(daemon, "GET", f"/adv/{alice_id}")
    assert (status, body) == (200, current)
    assert headers["content-type"] == "application/json"

    status, body, _ = _request(daemon, "GET", "/adv?since=1&limit=1")
    page: dict[str, Any] = json.loads(body)
    assert status == 200
    assert [a["node/id"] for a in page["advertisements"]] == [bob_id]
    assert (page["cursor"], page["more"]) == (2, True)
    status, body, _ = _request(daemon, "GET", "/adv?since=2")
    page = json.loads(body)
    assert page["advertisements"] == [json.loads(current)]
    assert (page["cursor"], page["more"]) == (3, False)

    for stale in (first, current):
        status, body, _ = _request(daemon, "PUT", f"/adv/{alice_id}", stale)
        assert (status, json.loads(body)["error_code"]) == (409, "E_ADV_STALE_SEQ")
    status, body, _ = _request(daemon, "PUT", f"/adv/{bob_id}", current)
    assert (status, json.loads(body)["error_code"]) == (400, "E_PROTO_INVALID")
    status, body, _ = _request(daemon, "PUT", f"/adv/{alice_id}", b" " * 70_000)
    assert (status, json.loads(body)["error_code"]) == (413, "OCP-413")
    assert _counter(daemon, "accepted") == 3
    assert _counter(daemon, "E_ADV_STALE_SEQ") == 2

    events = daemon.events()
    published = [e for e in events if e.get("event") == "advertisement/published"]
    rejected = [e for e in events if e.get("event") == "advertisement/rejected"]
    assert [(e["node/id"], e["sequence/no"]) for e in published] == [
        (alice_id, 1),
        (bob_id, 1),
        (alice_id, 2),
    ]
    assert [e["error/code"] for e in rejected] == ["E_ADV_STALE_SEQ"] * 2 + [
        "E_PROTO_INVALID",
        "OCP-413",
    ]
    assert all(e["component"] == "registry" for e in published + rejected)
    assert not any("signature" in json.dumps(e) for e in rejected)

    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0

    # Same data directory: the advertisements and the cursor survived.
    daemon = _start(daemons, tmp_path, tls)
    status, body, _ = _request(daemon, "GET", f"/adv/{alice_id}")
    assert (status, body) == (200, current)
    status, body, _ = _request(daemon, "GET", "/adv")
    page = json.loads(body)
    assert page["cursor"] == 3
    assert [a["node/id"] for a in page["advertisements"]] == [bob_id, alice_id]
    status, body, _ = _request(daemon, "PUT", f"/adv/{alice_id}", current)
    assert status == 409
    status, body, _ = _request(daemon, "PUT", f"/adv/{alice_id}", _advertisement(alice, 3))
    assert (status, json.loads(body)["cursor"]) == (200, 4)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0
