"""The deployment files in contrib/ keep the promises the operator docs make.

Quick, static checks: the systemd units, the Dockerfile and the Compose file
are parsed and their security-relevant settings asserted, and the ports, the
variables and the stop timeouts are checked against ocpd's own configuration
so that the two cannot drift apart. Running them for real is
.ci/check-systemd.sh, .ci/check-docker.sh and .ci/containers.sh.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from ocpd.config import COMPONENTS, ENVIRONMENT, Config
from ocpd.custodian.store import SECRETS_MOUNT, DatabaseKey, DatabaseKeyError

ROOT = Path(__file__).resolve().parent.parent
CONTRIB = ROOT / "contrib"
UNITS = ("ocpd.service", "ocpd@.service")
# The drop-in that gives the custodian its database key (README.md installs it).
KEY_DROPIN = CONTRIB / "systemd" / "custodian-key.conf"
KEY_FILE = "/etc/ocpd/custodian.key"
# Variables ocpd reads besides the configuration keys of ENVIRONMENT.
EXTRA_VARIABLES = {"OCP_CONFIG", "OCP_HEALTH_PORT"}
DEFAULTS = Config()


# --- systemd --------------------------------------------------------------------------


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> every value in order (keys such as SystemCallFilter= repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{line!r} outside a section"
        assert not line.endswith("\\"), "no continuation lines, please"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(params=UNITS)
def unit(request: pytest.FixtureRequest) -> tuple[str, dict[str, dict[str, list[str]]]]:
    name = request.param
    return name, parse_unit((CONTRIB / "systemd" / name).read_text(encoding="utf-8"))


def last(service: dict[str, list[str]], key: str) -> str:
    assert key in service, f"{key}= missing"
    return service[key][-1]


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(s|min)?", value)
    assert match, f"unexpected time span {value!r}"
    return float(match[1]) * (60 if match[2] == "min" else 1)


def test_unit_notify_watchdog_restart(unit: tuple[str, dict[str, dict[str, list[str]]]]) -> None:
    _, sections = unit
    service = sections["Service"]
    assert last(service, "Type") == "notify"
    assert last(service, "NotifyAccess") == "main"
    assert seconds(last(service, "WatchdogSec")) >= 10
    assert last(service, "Restart") == "on-failure"
    assert seconds(last(service, "RestartSec")) >= 1
    # SIGTERM lets requests drain for shutdown_grace_seconds; systemd must
    # wait longer than that before SIGKILL.
    assert seconds(last(service, "TimeoutStopSec")) > DEFAULTS.node.shutdown_grace_seconds
    assert sections["Install"]["WantedBy"] == ["multi-user.target"]


def test_unit_runs_ocpd_from_the_venv(unit: tuple[str, dict[str, dict[str, list[str]]]]) -> None:
    name, sections = unit
    component = "%i" if name == "ocpd@.service" else "all"
    assert last(sections["Service"], "ExecStart") == (
        f"/opt/ocpd/bin/ocpd run --component {component}"
    )


def test_unit_state_and_configuration(unit: tuple[str, dict[str, dict[str, list[str]]]]) -> None:
    name, sections = unit
    service = sections["Service"]
    assert last(service, "DynamicUser") == "yes"
    expected = "ocpd/%i" if name == "ocpd@.service" else "ocpd/all"
    assert last(service, "StateDirectory") == expected
    assert last(service, "StateDirectoryMode") == "0700"
    # systemd would create a missing /etc/ocpd owned by the transient UID.
    assert "ConfigurationDirectory" not in service
    assert last(service, "UMask") == "0077"
    # An explicitly named configuration file must exist, so the unit must not
    # name one: ocpd reads /etc/ocpd/ocpd.yml by itself when it is there.
    environment = " ".join(service.get("Environment", []))
    assert "OCP_CONFIG" not in environment
    for variable in re.findall(r"\b(OCP_[A-Z_]+)=", environment):
        assert variable in ENVIRONMENT or variable in EXTRA_VARIABLES


def test_unit_sandbox(unit: tuple[str, dict[str, dict[str, list[str]]]]) -> None:
    _, sections = unit
    service = sections["Service"]
    required = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "ProtectClock": "yes",
        "ProtectHostname": "yes",
        "ProtectProc": "invisible",
        "RestrictNamespaces": "yes",
        "RestrictRealtime": "yes",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "RemoveIPC": "yes",
        "SystemCallArchitectures": "native",
        "LimitNOFILE": "20000",
    }
    for key, value in required.items():
        assert last(service, key) == value, key
    assert service["CapabilityBoundingSet"] == [""]
    assert service["AmbientCapabilities"] == [""]
    assert set(last(service, "RestrictAddressFamilies").split()) == {
        "AF_INET",
        "AF_INET6",
        "AF_UNIX",
    }
    filters = service["SystemCallFilter"]
    assert "@system-service" in filters
    denied = {f for line in filters if line.startswith("~") for f in line[1:].split()}
    assert {"@privileged", "@resources"} <= denied


def test_template_and_main_unit_differ_only_where_they_must() -> None:
    main, template = (
        parse_unit((CONTRIB / "systemd" / name).read_text(encoding="utf-8"))["Service"]
        for name in UNITS
    )
    differing = {key for key in main.keys() | template.keys() if main.get(key) != template.get(key)}
    assert differing == {"ExecStart", "User", "Group", "StateDirectory"}


def test_units_leave_the_custodian_key_to_the_dropin(
    unit: tuple[str, dict[str, dict[str, list[str]]]],
) -> None:
    # A SupplementaryGroups= group that does not exist fails the unit (216/GROUP):
    # in the template it would take ocpd@node and ocpd@registry down too.
    _, sections = unit
    service = sections["Service"]
    assert "SupplementaryGroups" not in service
    environment = " ".join(service.get("Environment", []))
    assert "OCP_CUSTODIAN_KEY_FILE" not in environment
    assert "OCP_CUSTODIAN_DEV_MODE" not in environment


def test_custodian_key_dropin() -> None:
    sections = parse_unit(KEY_DROPIN.read_text(encoding="utf-8"))
    assert set(sections) == {"Service"}
    service = sections["Service"]
    assert set(service) == {"SupplementaryGroups", "Environment"}
    assert service["SupplementaryGroups"] == ["ocpd-secrets"]
    assert service["Environment"] == [f"OCP_CUSTODIAN_KEY_FILE={KEY_FILE}"]
    assert ENVIRONMENT["OCP_CUSTODIAN_KEY_FILE"][0] == "custodian.key_file"


def test_systemd_readme_installs_the_key_as_the_dropin_expects() -> None:
    readme = (CONTRIB / "systemd" / "README.md").read_text(encoding="utf-8")
    assert f"ocpd custodian keygen {KEY_FILE}" in readme
    assert f"chgrp ocpd-secrets {KEY_FILE}" in readme
    assert f"chmod 0640 {KEY_FILE}" in readme
    assert "groupadd --system ocpd-secrets" in readme
    assert "/etc/systemd/system/ocpd@custodian.service.d/custodian-key.conf" in readme
    assert "/etc/systemd/system/ocpd.service.d/custodian-key.conf" in readme


@pytest.mark.parametrize(("mode", "accepted"), [(0o640, True), (0o600, True), (0o444, False)])
def test_key_file_modes_of_the_recipes(tmp_path: Path, mode: int, accepted: bool) -> None:
    # systemd: root:ocpd-secrets 0640 is accepted. Compose: 0444 is accepted only
    # in /run/secrets (see the Compose tests), not in an ordinary directory.
    path = tmp_path / "custodian.key"
    DatabaseKey.generate().write(path)
    path.chmod(mode)
    if accepted:
        DatabaseKey.from_file(path)
    else:
        with pytest.raises(DatabaseKeyError, match="open to other users"):
            DatabaseKey.from_file(path)


# --- Dockerfile -----------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (CONTRIB / "docker" / "Dockerfile").read_text(encoding="utf-8")
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    assert not pending, "dangling line continuation"
    result = []
    for line in logical:
        instruction, _, rest = line.partition(" ")
        result.append((instruction.upper(), rest.strip()))
    return result


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    starts = [i for i, (name, _) in enumerate(instructions) if name == "FROM"]
    return instructions[starts[-1] :]


def test_dockerfile_base_and_offline_install() -> None:
    instructions = dockerfile_instructions()
    assert ("ARG", "BASE=python:3.11-slim-bookworm") in instructions
    assert all(rest.split()[0] == "${BASE}" for name, rest in instructions if name == "FROM")
    runs = " ".join(rest for name, rest in instructions if name == "RUN")
    assert "python3 -m venv /opt/ocpd" in runs
    assert "--no-index" in runs
    assert "--find-links" in runs


def test_dockerfile_runs_ocpd_as_non_root() -> None:
    stage = final_stage()
    users = [rest for name, rest in stage if name == "USER"]
    assert users, "the final stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    assert "--uid 10001" in " ".join(rest for name, rest in stage if name == "RUN")


def test_dockerfile_healthcheck_and_entrypoint() -> None:
    stage = dict(final_stage())
    health = stage["HEALTHCHECK"]
    assert "--interval=30s" in health
    assert "--timeout=5s" in health
    assert "--retries=3" in health
    assert "--start-period=10s" in health
    assert json.loads(health.split("CMD", 1)[1]) == ["ocpd", "healthcheck"]
    assert json.loads(stage["ENTRYPOINT"]) == ["ocpd"]
    assert json.loads(stage["CMD"]) == ["run", "--component", "all"]
    assert stage["WORKDIR"] == "/app"
    exposed = {int(p) for p in stage["EXPOSE"].split()}
    assert exposed == {p for c in COMPONENTS for p in DEFAULTS.ports(c).values()}


def test_dockerfile_environment() -> None:
    env = " ".join(rest for name, rest in final_stage() if name == "ENV")
    pairs = dict(re.findall(r"(\w+)=(\S+)", env))
    assert pairs["OCP_DATA_DIR"] == "/app/data"
    assert pairs["OCP_HOST"] == "0.0.0.0"
    assert pairs["OCP_TLS_UPSTREAM"] == "true"
    assert pairs["PYTHONUNBUFFERED"] == "1"
    assert pairs["PYTHONDONTWRITEBYTECODE"] == "1"
    assert pairs["PATH"].startswith("/opt/ocpd/bin:")
    for variable in pairs:
        if variable.startswith("OCP_"):
            assert variable in ENVIRONMENT or variable in EXTRA_VARIABLES, variable


# --- Compose --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((CONTRIB / "docker" / "docker-compose.yml").read_text("utf-8"))
    assert isinstance(loaded, dict)
    return loaded


SERVICES = {"ocp-node": "node", "ocp-registry": "registry", "ocp-custodian": "custodian"}


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_compose_service_hardening(compose: dict[str, Any], name: str) -> None:
    service = compose["services"][name]
    assert service["read_only"] is True
    assert service["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in service["security_opt"]
    assert service["pids_limit"] == 100
    tmpfs = service["tmpfs"]
    tmp = [t for t in tmpfs if t.split(":")[0] == "/tmp"]  # noqa: S108 - a mount in the container
    assert len(tmp) == 1
    assert "noexec" in tmp[0]
    assert "nosuid" in tmp[0]
    assert service["restart"] == "unless-stopped"
    limits = service["deploy"]["resources"]["limits"]
    assert float(limits["cpus"]) > 0
    assert re.fullmatch(r"\d+[MG]", limits["memory"])
    assert service["logging"] == {
        "driver": "json-file",
        "options": {"max-size": "50m", "max-file": "5"},
    }
    stop = re.fullmatch(r"(\d+)s", service["stop_grace_period"])
    assert stop
    assert int(stop[1]) > DEFAULTS.node.shutdown_grace_seconds


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_compose_service_component(compose: dict[str, Any], name: str) -> None:
    component = SERVICES[name]
    service = compose["services"][name]
    assert service["command"] == ["run", "--component", component]
    assert service["volumes"] == [f"{component}-data:/app/data"]
    health = service["healthcheck"]
    assert health["test"] == ["CMD", "ocpd", "healthcheck"]
    assert (health["interval"], health["timeout"], health["retries"]) == ("30s", "5s", 3)
    assert health["start_period"] == "10s"
    ports = DEFAULTS.ports(component)
    # ocpd healthcheck probes OCP_HEALTH_PORT: the component's first port.
    assert int(service["environment"]["OCP_HEALTH_PORT"]) == next(iter(ports.values()))
    for variable in service["environment"]:
        assert variable in ENVIRONMENT or variable in EXTRA_VARIABLES, variable
    published = {int(p.rsplit(":", 1)[1]) for p in service.get("ports", [])}
    if component == "custodian":
        assert published == set(), "the custodian must not publish a port"
    else:
        assert published == set(ports.values())


def test_compose_volumes_and_networks(compose: dict[str, Any]) -> None:
    assert set(compose["volumes"]) == {f"{c}-data" for c in SERVICES.values()}
    networks = compose["networks"]
    assert networks["ocp-internal"]["internal"] is True
    custodian = compose["services"]["ocp-custodian"]
    assert custodian["networks"] == ["ocp-internal"]


def test_compose_custodian_key_secret(compose: dict[str, Any]) -> None:
    services = compose["services"]
    custodian = services["ocp-custodian"]
    # The short syntax: mounted at /run/secrets/custodian_key, where ocpd accepts
    # a mode of 0444 (Compose keeps the host file's mode; ocpd runs as UID 10001).
    assert custodian["secrets"] == ["custodian_key"]
    assert custodian["environment"]["OCP_CUSTODIAN_KEY_FILE"] == f"{SECRETS_MOUNT}/custodian_key"
    assert "OCP_CUSTODIAN_DEV_MODE" not in custodian["environment"]
    for name in ("ocp-node", "ocp-registry"):
        assert "secrets" not in services[name], f"{name} must not get the custodian's key"
        assert "OCP_CUSTODIAN_KEY_FILE" not in services[name]["environment"]
    # A file secret, nothing else: Compose applies no uid/gid/mode to those.
    assert compose["secrets"] == {
        "custodian_key": {"file": "${OCPD_CUSTODIAN_KEY:-./secrets/custodian.key}"}
    }


def test_compose_registry_url(compose: dict[str, Any]) -> None:
    registry_port = next(iter(DEFAULTS.ports("registry").values()))
    for name in ("ocp-node", "ocp-custodian"):
        environment = compose["services"][name]["environment"]
        assert environment["OCP_REGISTRY_URL"] == f"http://ocp-registry:{registry_port}"
        networks = compose["services"][name]["networks"]
        assert "ocp-internal" in networks
    assert "ocp-internal" in compose["services"]["ocp-registry"]["networks"]


def test_compose_key_directory_is_not_committed() -> None:
    ignored = (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()
    assert "/contrib/docker/secrets/" in ignored
