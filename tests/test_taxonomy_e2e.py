"""Taxonomy extensions from configuration, through a real registry."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from daemon_process import Daemon, TlsFiles
from ocpd.client import AgentKey, RegistryClient, RegistryError
from ocpd.proto.crypto import SigningKey
from ocpd.proto.taxonomy import Taxonomy

NETWORK = "testnet"
CAPS = [{"id": "cap:data:clustering", "name": "Clustering", "version": "1.0"}]
ENDPOINTS = [{"transport": "ocp-http", "url": "https://a.example/ocp/v1/messages", "priority": 1}]


async def test_configured_domains_register_and_discover(tmp_path: Path) -> None:
    tls = TlsFiles(tmp_path)
    daemon = Daemon(
        tmp_path / "data",
        component="registry",
        tls=tls,
        env={"OCP_TAXONOMY_EXTENSIONS": "energy.grid.balancing, energy.storage"},
    )
    daemon.start()
    try:
        url = daemon.wait_ready()["registry"]
        agent = AgentKey(SigningKey(bytes([7]) * 32), NETWORK)
        with trio.fail_after(30):
            async with RegistryClient(url, agent, verify=tls.client_context()) as registry:
                info = await registry.info()
                assert info["taxonomy_version"] != Taxonomy.load_default().version

                def record(domains: list[str]) -> dict[str, object]:
                    return registry.build_record(
                        display_name="grid", capabilities=CAPS, domains=domains, endpoints=ENDPOINTS
                    )

                with pytest.raises(RegistryError) as refused:
                    await registry.register(record(["water"]))
                assert refused.value.code == "OCP-400" and "unknown domain" in refused.value.message
                # a unique bare leaf of an added path, and an ancestor added with it
                await registry.register(record(["balancing"]))
                found = await registry.discover(domains=["energy"])
                assert [r["agent_id"] for r in found["results"]] == [agent.agent_id]
                assert (await registry.discover(domains=["energy.storage"]))["total"] == 0
    finally:
        assert daemon.stop() == 0


async def test_unknown_domain_stores_nothing_and_restarts(tmp_path: Path) -> None:
    tls = TlsFiles(tmp_path)
    daemon = Daemon(tmp_path / "data", component="registry", tls=tls)
    agent = AgentKey(SigningKey(bytes([8]) * 32), NETWORK)
    for attempt in range(2):
        daemon.start()
        try:
            url = daemon.wait_ready()["registry"]
            with trio.fail_after(30):
                async with RegistryClient(url, agent, verify=tls.client_context()) as registry:
                    if attempt == 0:
                        record = registry.build_record(
                            display_name="x", capabilities=CAPS, domains=["water"],
                            endpoints=ENDPOINTS,
                        )  # fmt: skip
                        with pytest.raises(RegistryError, match="unknown domain"):
                            await registry.register(record)
                    with pytest.raises(RegistryError) as missing:
                        await registry.get_agent(agent.agent_id)
                    assert missing.value.status == 404
        finally:
            assert daemon.stop() == 0
