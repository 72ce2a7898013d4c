#!/usr/bin/env bash
# Build the ocpd container image with podman and check it for real: the
# custodian's refusal to start without its database key, each component
# read-only and unprivileged (health, user, read-only root, JSON logs,
# SIGTERM; the custodian's key as a podman secret), then
# contrib/docker/docker-compose.yml through podman's Docker API (the key as a
# Compose file secret), then contrib/systemd/ocpd.service and ocpd@.service
# under real systemd (PID 1 of a container; the key through the ocpd-secrets
# group). Prints PASS/FAIL per check and timings; exits 1 if anything failed.
#
#   .ci/containers.sh          all of it (about 2 minutes cold, 1 warm)
#   .ci/containers.sh image    only build the image (what `make image` runs)
#
# Needs root, podman, runc and mmdebstrap, and docker-compose for the Compose
# checks (Debian: apt-get install podman runc mmdebstrap uidmap slirp4netns
# fuse-overlayfs docker-compose). No registry is used: the base
# images are Debian bookworm minbase trees made with mmdebstrap from the Debian
# mirror, cached under $XDG_CACHE_HOME/ocpd-ci (rebuilt weekly), and ocpd and
# its dependencies come from wheels built on this host (`make wheels`).
# With CI=true a missing prerequisite fails; otherwise it is skipped.
#
# Environment:
#   OCPD_BASE          base of the ocpd image instead of the local minbase,
#                      e.g. docker.io/library/python:3.11-slim-bookworm
#   OCPD_IMAGE         tag to build (default localhost/ocpd:ci)
#   OCPD_CI_MIRROR     Debian mirror (default http://deb.debian.org/debian)
#   OCPD_CI_SECURITY   security mirror (default http://deb.debian.org/debian-security)
#   OCPD_CI_PORT_BASE  first of the four loopback ports used by the checks (28420)
#   OCPD_CI_REFRESH=1  rebuild the cached base tarballs now
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MODE=${1:-all}
case $MODE in all | image) ;; *)
    echo "usage: $0 [image]" >&2
    exit 2
    ;;
esac

export CONTAINERS_CONF=${CONTAINERS_CONF:-$ROOT/.ci/containers.conf}
IMAGE=${OCPD_IMAGE:-localhost/ocpd:ci}
BASE_IMAGE=localhost/ocpd-base:bookworm
SD_BASE_IMAGE=localhost/ocpd-systemd-base:bookworm
SD_IMAGE=localhost/ocpd-systemd:ci
SUITE=bookworm
MIRROR=${OCPD_CI_MIRROR:-http://deb.debian.org/debian}
SECURITY=${OCPD_CI_SECURITY:-http://deb.debian.org/debian-security}
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/ocpd-ci
PORT0=${OCPD_CI_PORT_BASE:-28420}
P_HTTP=$PORT0 P_WS=$((PORT0 + 1)) P_REG=$((PORT0 + 2)) P_CUS=$((PORT0 + 3))
STOP_LIMIT_MS=5000 # a graceful stop with nothing in flight must be this quick
HEALTH_WAIT_S=20
LABEL=org.ocpd.ci=containers-sh
SECRET=ocpd-ci-custodian-key # the podman secret of the single-container runs

# --- reporting -----------------------------------------------------------------------
FAILURES=0
declare -a TIMINGS=()
now_ms() { date +%s%3N; }
pass() { printf 'PASS: %s\n' "$*"; }
fail() {
    printf 'FAIL: %s\n' "$*"
    FAILURES=$((FAILURES + 1))
}
check() { # check DESCRIPTION COMMAND...: PASS/FAIL on the command's status
    local what=$1
    shift
    if "$@"; then pass "$what"; else fail "$what"; fi
}
timing() { # timing LABEL START_MS
    local ms=$(($(now_ms) - $2))
    TIMINGS+=("$(printf '%-50s %7.1f s' "$1" "$(awk "BEGIN{print $ms/1000}")")")
}
indent() { sed 's/^/  | /'; }
# absent PATTERN: stdin has no line with PATTERN. (Negating the whole pipeline
# instead would pass when grep -q stops early and its writer dies of SIGPIPE.)
absent() { ! grep -q -- "$1"; }
section() { printf '\n== %s\n' "$*"; }
skip_or_fail() {
    if [ "${CI:-}" = true ]; then
        echo "FAIL: $*" >&2
        exit 1
    fi
    echo "SKIP: $* (set CI=true to make this a failure)"
    exit 0
}

# --- prerequisites -------------------------------------------------------------------
[ "$(id -u)" = 0 ] || skip_or_fail "containers.sh needs root (rootful podman, mmdebstrap)"
for tool in podman runc; do
    command -v "$tool" >/dev/null || skip_or_fail "$tool is not installed"
done
if [ -z "${OCPD_BASE:-}" ] || [ "$MODE" = all ]; then
    command -v mmdebstrap >/dev/null || skip_or_fail "mmdebstrap is not installed"
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ocpd-ci.XXXXXX")
SERVICE_PID= # podman system service for the compose checks, while it runs
cleanup() {
    local ids label
    [ -z "$SERVICE_PID" ] || kill "$SERVICE_PID" 2>/dev/null || true
    # Only what this script creates: its label, and its compose project.
    for label in "$LABEL" com.docker.compose.project=ocpd-ci; do
        ids=$(podman ps -aq --filter "label=$label" 2>/dev/null || true)
        # shellcheck disable=SC2086
        [ -z "$ids" ] || podman rm -f -t 0 $ids >/dev/null 2>&1 || true
        ids=$(podman volume ls -q --filter "label=$label" 2>/dev/null || true)
        # shellcheck disable=SC2086
        [ -z "$ids" ] || podman volume rm -f $ids >/dev/null 2>&1 || true
    done
    ids=$(podman network ls -q --filter label=com.docker.compose.project=ocpd-ci 2>/dev/null || true)
    # shellcheck disable=SC2086
    [ -z "$ids" ] || podman network rm -f $ids >/dev/null 2>&1 || true
    podman secret rm "$SECRET" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
cleanup_leftovers() { # from an interrupted earlier run
    local keep=$WORK
    WORK=/nonexistent-ocpd-ci
    cleanup
    WORK=$keep
}
cleanup_leftovers

T_TOTAL=$(now_ms)

# --- base images: Debian minbase trees, cached, imported into podman ------------------
# base_image IMAGE NAME PACKAGES: build (or reuse) NAME.tar and import it as IMAGE.
base_image() {
    local image=$1 name=$2 packages=$3 t0 key tar
    t0=$(now_ms)
    local -a dpkgopts=(
        --dpkgopt='path-exclude=/usr/share/man/*'
        --dpkgopt='path-exclude=/usr/share/info/*'
        --dpkgopt='path-exclude=/usr/share/locale/*'
        --dpkgopt='path-include=/usr/share/locale/locale.alias'
        --dpkgopt='path-exclude=/usr/share/doc/*'
        --dpkgopt='path-include=/usr/share/doc/*/copyright'
    )
    local -a sources=(
        "deb $MIRROR $SUITE main"
        "deb $MIRROR $SUITE-updates main"
        "deb $SECURITY $SUITE-security main"
    )
    key=$(printf '%s\n' "$SUITE" "$packages" "${dpkgopts[@]}" "${sources[@]}" | sha256sum | cut -c1-12)
    tar=$CACHE/$name-$SUITE-$key.tar
    mkdir -p "$CACHE"
    if [ -s "$tar" ] && [ -z "${OCPD_CI_REFRESH:-}" ] && [ -z "$(find "$tar" -mtime +7)" ]; then
        echo "$name: reusing $tar"
    else
        echo "$name: mmdebstrap --variant=minbase --include=$packages $SUITE"
        rm -rf "$CACHE/$name-$SUITE-"*.tar "$CACHE/$name-$SUITE-"*.partial
        if ! mmdebstrap --quiet --format=tar --variant=minbase --include="$packages" "${dpkgopts[@]}" \
            "$SUITE" "$tar.partial" "${sources[@]}" </dev/null >"$WORK/$name.mmdebstrap.log" 2>&1; then
            tail -n 30 "$WORK/$name.mmdebstrap.log"
            rm -rf "$tar.partial"
            fail "mmdebstrap $name"
            exit 1
        fi
        mv "$tar.partial" "$tar"
    fi
    local have
    have=$(podman image inspect --format '{{index .Config.Labels "org.ocpd.ci.tarball"}}' \
        "$image" 2>/dev/null || true)
    if [ "$have" != "$(basename "$tar")" ]; then
        podman import --quiet --change "LABEL org.ocpd.ci.tarball=$(basename "$tar")" \
            "$tar" "$image" >/dev/null
        echo "$name: imported as $image"
    fi
    timing "base image $image" "$t0"
}

# --- wheels ----------------------------------------------------------------------------
build_wheels() {
    local t0
    t0=$(now_ms)
    if ! make --no-print-directory -s wheels >"$WORK/wheels.log" 2>&1; then
        tail -n 30 "$WORK/wheels.log"
        fail "make wheels"
        exit 1
    fi
    echo "wheels: $(find build/wheels -name '*.whl' | wc -l) in build/wheels"
    timing "wheels (make wheels)" "$t0"
}

# context DIR FILE...: a build context with build/wheels and the given files.
context() {
    local dir=$1
    shift
    mkdir -p "$dir"
    cp -r build/wheels "$dir/wheels"
    cp "$@" "$dir/"
}

# --- the ocpd image ------------------------------------------------------------------
build_image() {
    local base=${OCPD_BASE:-$BASE_IMAGE} t0 version revision
    if [ -z "${OCPD_BASE:-}" ]; then
        base_image "$BASE_IMAGE" base python3,python3-venv,ca-certificates
    fi
    build_wheels
    version=$(find build/wheels -name 'ocpd-*.whl' | sed -E 's|.*/ocpd-([^-]+)-.*|\1|' | head -n1)
    revision=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
    # build/docker-context is also the build context of contrib/docker/docker-compose.yml.
    rm -rf build/docker-context
    context build/docker-context contrib/docker/Dockerfile
    section "podman build $IMAGE (BASE=$base)"
    t0=$(now_ms)
    if ! podman build --format docker --layers \
        --build-arg "BASE=$base" --build-arg "OCPD_VERSION=$version" \
        --build-arg "OCPD_REVISION=$revision" \
        -t "$IMAGE" -t "localhost/ocpd:$version" -t localhost/ocpd:latest \
        -f build/docker-context/Dockerfile build/docker-context >"$WORK/build.log" 2>&1; then
        tail -n 40 "$WORK/build.log"
        fail "podman build $IMAGE"
        exit 1
    fi
    timing "image build (podman build)" "$t0"
    pass "built $IMAGE = localhost/ocpd:$version = localhost/ocpd:latest ($(podman image \
        inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"
}

# --- runtime checks of the image -------------------------------------------------------
health_port() {
    case $1 in node | all) echo "$P_HTTP" ;; registry) echo "$P_REG" ;; custodian) echo "$P_CUS" ;; esac
}

# wait_healthy NAME: `podman healthcheck run` until it passes (or the container dies).
wait_healthy() {
    local name=$1 deadline=$(($(date +%s) + HEALTH_WAIT_S)) t0
    t0=$(now_ms)
    while [ "$(date +%s)" -lt "$deadline" ]; do
        if [ "$(podman inspect --format '{{.State.Running}}' "$name")" != true ]; then
            echo "  $name exited: $(podman inspect --format '{{.State.ExitCode}}' "$name")"
            podman logs "$name" 2>&1 | tail -n 20 | indent
            return 1
        fi
        if podman healthcheck run "$name" >/dev/null 2>&1; then
            echo "  healthy after $(($(now_ms) - t0)) ms"
            return 0
        fi
        sleep 0.5
    done
    podman logs "$name" 2>&1 | tail -n 20 | indent
    return 1
}

# status_field NAME FIELD: a field of /proc/1/status in the container (ocpd is PID 1).
status_field() { podman exec "$1" cat /proc/1/status | awk -v f="$2:" '$1 == f {print $2}'; }

not_root() {
    local uid
    uid=$(status_field "$1" Uid)
    echo "  ocpd runs as uid $uid ($(podman exec "$1" id -un 2>/dev/null || echo '?'))"
    [ -n "$uid" ] && [ "$uid" != 0 ]
}
no_capabilities() {
    [ "$(status_field "$1" CapEff)" = 0000000000000000 ] &&
        [ "$(status_field "$1" CapBnd)" = 0000000000000000 ] &&
        [ "$(status_field "$1" NoNewPrivs)" = 1 ]
}
rootfs_read_only() { ! podman exec "$1" touch /ci-probe 2>/dev/null; }
data_writable() { podman exec "$1" touch /app/data/.ci-probe && podman exec "$1" rm /app/data/.ci-probe; }

# json_logs NAME PORTS...: every log line is a JSON object and `ready` lists the ports.
json_logs() {
    local name=$1
    shift
    podman logs "$name" 2>&1 | python3 -c '
import json, sys
ports = {int(p) for p in sys.argv[1:]}
events = []
for n, line in enumerate(sys.stdin, 1):
    try:
        record = json.loads(line)
    except ValueError:
        sys.exit(f"  line {n} is not JSON: {line[:120]!r}")
    events.append(record)
ready = [e for e in events if e.get("event") == "ready"]
if not ready:
    sys.exit("  no ready event")
bound = {int(url.rsplit(":", 1)[1]) for url in ready[-1]["listeners"].values()}
if bound != ports:
    sys.exit(f"  ready lists ports {sorted(bound)}, expected {sorted(ports)}")
' "$@"
}

# shutdown_ms NAME: ocpd's own stop time, from its last shutdown_requested and stopped events.
shutdown_ms() {
    podman logs "$1" 2>/dev/null | python3 -c '
import datetime, json, sys
t = {}
for line in sys.stdin:
    try:
        e = json.loads(line)
    except ValueError:
        continue
    if e.get("event") in ("shutdown_requested", "stopped"):
        t[e["event"]] = datetime.datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00"))
try:
    print(round((t["stopped"] - t["shutdown_requested"]).total_seconds() * 1000))
except KeyError:
    print("?")
'
}

# sigterm_stop NAME LABEL: SIGTERM, wait, exit status 0 within STOP_LIMIT_MS.
sigterm_stop() {
    local name=$1 what=$2 t0 code ms
    t0=$(now_ms)
    podman kill --signal TERM "$name" >/dev/null
    code=$(podman wait "$name")
    ms=$(($(now_ms) - t0))
    TIMINGS+=("$(printf '%-50s %7d ms' "SIGTERM to exit: $what" "$ms")")
    if [ "$code" = 0 ] && [ "$ms" -lt "$STOP_LIMIT_MS" ]; then
        pass "$what: SIGTERM -> exit status $code in $ms ms (limit $STOP_LIMIT_MS ms;" \
            "ocpd itself: $(shutdown_ms "$name") ms from shutdown_requested to stopped)"
    else
        fail "$what: SIGTERM -> exit status $code in $ms ms (want 0 within $STOP_LIMIT_MS ms)"
        podman logs "$name" 2>&1 | tail -n 10 | indent
    fi
}

# --- the custodian's database key ------------------------------------------------------
# custodian_key DIR: DIR/custodian.key, made as contrib/docker/README.md says:
# a root-owned 0700 directory, `ocpd custodian keygen` as root in a throwaway
# container without network, then mode 0444 (for UID 10001 in /run/secrets).
custodian_key() {
    local dir=$1
    install -d -m 0700 -o root -g root "$dir"
    podman run --rm --label "$LABEL" --network=none --user 0 -v "$dir:/secrets" "$IMAGE" \
        custodian keygen /secrets/custodian.key 2>>"$WORK/podman.log" | indent &&
        chmod 0444 "$dir/custodian.key" || return 1
    echo "  $(stat -c '%n: %U:%G %a' "$dir"), $(stat -c '%n: %U:%G %a, %s bytes' "$dir/custodian.key")"
    [ "$(stat -c %a "$dir")" = 700 ] && [ "$(stat -c %a "$dir/custodian.key")" = 444 ] &&
        grep -Eqx '[A-Za-z0-9_-]{43}' "$dir/custodian.key"
}

# refuses COMPONENT [KEY_FILE]: ocpd exits with status 1 and names custodian.key_file.
# Without KEY_FILE, no key at all; with it, KEY_FILE bind-mounted at
# /tmp/custodian.key, i.e. outside /run/secrets.
refuses() {
    local comp=$1 out code=0
    local -a key=()
    [ -z "${2:-}" ] || key=(-v "$2:/tmp/custodian.key:ro" -e OCP_CUSTODIAN_KEY_FILE=/tmp/custodian.key)
    out=$(podman run --rm --label "$LABEL" --network=none --read-only \
        --tmpfs /tmp:rw,noexec,nosuid,size=64m --cap-drop=all --security-opt=no-new-privileges \
        "${key[@]}" "$IMAGE" run --component "$comp" 2>&1) || code=$?
    echo "  exit status $code: $(grep -o 'ocpd: configuration error: .*' <<<"$out" | head -n1 | cut -c1-150)"
    [ "$code" = 1 ] && grep -q '^ocpd: configuration error: custodian\.key_file: ' <<<"$out"
}

key_checks() {
    local t0 dir=$WORK/secrets
    section "the custodian's database key (contrib/docker/README.md)"
    t0=$(now_ms)
    check "custodian: refuses to start without a database key" refuses custodian
    check "all (the image's default command): refuses to start without a database key" refuses all
    if ! custodian_key "$dir"; then
        fail "key made as contrib/docker/README.md says (keygen in a container; 0700 directory, 0444 file)"
        return
    fi
    pass "key made as contrib/docker/README.md says (keygen in a container; 0700 directory, 0444 file)"
    install -m 0444 "$dir/custodian.key" "$WORK/open.key"
    check "custodian: refuses a world-readable key outside /run/secrets" refuses custodian "$WORK/open.key"
    if podman secret create "$SECRET" "$dir/custodian.key" >/dev/null 2>>"$WORK/podman.log"; then
        pass "podman secret create $SECRET"
    else
        tail -n 5 "$WORK/podman.log"
        fail "podman secret create $SECRET"
    fi
    timing "custodian key checks" "$t0"
}

# key_from_secret NAME: the key is the secret's file, and ocpd did not fall back to
# a development key.
key_from_secret() {
    local mode
    mode=$(podman exec "$1" stat -c %a /run/secrets/custodian_key) || return 1
    echo "  /run/secrets/custodian_key: mode $mode"
    [ "$mode" = 444 ] && podman logs "$1" 2>&1 | absent custodian_development_mode
}

run_component() {
    local comp=$1 name=ocpd-ci-$1 volume=ocpd-ci-$1-data port t0
    local -a ports key=()
    port=$(health_port "$comp")
    case $comp in
    node) ports=("$P_HTTP" "$P_WS") ;;
    registry) ports=("$P_REG") ;;
    custodian) ports=("$P_CUS") ;;
    all) ports=("$P_HTTP" "$P_WS" "$P_REG" "$P_CUS") ;;
    esac
    # The custodian's database key as a podman secret, as contrib/docker/README.md
    # says: mode 0444 at /run/secrets/custodian_key. (podman 4.3 cannot mount a
    # secret into a --read-only container unless /run/secrets is a mount of its
    # own: hence the read-only tmpfs, which adds no writable place.)
    case $comp in custodian | all)
        key=(--tmpfs "/run/secrets:ro,nosuid,nodev,noexec,mode=0755,size=64k"
            --secret "$SECRET,target=custodian_key"
            -e OCP_CUSTODIAN_KEY_FILE=/run/secrets/custodian_key)
        ;;
    esac
    section "ocpd run --component $comp (loopback ports ${ports[*]})"
    t0=$(now_ms)
    podman volume create --label "$LABEL" "$volume" >/dev/null
    # Host network, bound to 127.0.0.1 only; the hardening of docker-compose.yml.
    # (podman's healthcheck timers need systemd; its complaints go to the log.)
    if ! podman run -d --name "$name" --label "$LABEL" --network=host \
        --read-only --tmpfs /tmp:rw,noexec,nosuid,size=64m \
        --cap-drop=all --security-opt=no-new-privileges --pids-limit=100 --memory=512m \
        -v "$volume:/app/data" \
        -e OCP_HOST=127.0.0.1 -e OCP_TLS_UPSTREAM=false \
        -e OCP_HTTP_PORT="$P_HTTP" -e OCP_WS_PORT="$P_WS" \
        -e OCP_REGISTRY_PORT="$P_REG" -e OCP_CUSTODIAN_PORT="$P_CUS" \
        -e OCP_HEALTH_PORT="$port" "${key[@]}" \
        "$IMAGE" run --component "$comp" >/dev/null 2>>"$WORK/podman.log"; then
        tail -n 5 "$WORK/podman.log"
        fail "$comp: podman run"
        return
    fi
    check "$comp: healthy (podman healthcheck run, ocpd healthcheck on $port)" wait_healthy "$name"
    check "$comp: ocpd (PID 1) is not root" not_root "$name"
    check "$comp: no capabilities, no_new_privs" no_capabilities "$name"
    check "$comp: root filesystem is read-only (touch /ci-probe fails)" rootfs_read_only "$name"
    check "$comp: /app/data is writable" data_writable "$name"
    check "$comp: logs are JSON lines; ready lists ${ports[*]}" json_logs "$name" "${ports[@]}"
    if [ "${#key[@]}" -gt 0 ]; then
        check "$comp: runs on the key of the podman secret, not in development mode" \
            key_from_secret "$name"
    fi
    sigterm_stop "$name" "$comp"
    if [ "$comp" = node ]; then
        # Same volume, second start: the identity and database persist.
        podman start "$name" >/dev/null 2>>"$WORK/podman.log"
        check "node: restarts healthy on its volume" wait_healthy "$name"
        check "node: identity persisted (identity/loaded)" \
            sh -c "podman logs $name 2>&1 | grep -q '\"event\": \"identity/loaded\"'"
        sigterm_stop "$name" "node (second start)"
    fi
    podman rm -f "$name" >/dev/null 2>>"$WORK/podman.log"
    podman volume rm -f "$volume" >/dev/null
    timing "component $comp (start, checks, stop)" "$t0"
}

# --- compose: contrib/docker/docker-compose.yml through podman's Docker API ------------
COMPOSE_PROJECT=ocpd-ci
COMPOSE_SECRETS= # the directory of the Compose file's custodian_key, while it exists
compose() {
    (cd contrib/docker && DOCKER_HOST="unix://$WORK/podman.sock" OCPD_IMAGE="$IMAGE" \
        OCP_HTTP_PORT="$P_HTTP" OCP_WS_PORT="$P_WS" OCP_REGISTRY_PORT="$P_REG" \
        OCPD_CUSTODIAN_KEY="$COMPOSE_SECRETS/custodian.key" \
        docker-compose --no-ansi -p "$COMPOSE_PROJECT" "$@")
}
in_compose() { # in_compose SERVICE COMMAND...
    podman exec "${COMPOSE_PROJECT}_$1_1" "${@:2}"
}
compose_hardening() {
    local service=$1 memory=$2 got
    got=$(podman inspect --format '{{.HostConfig.ReadonlyRootfs}} {{.HostConfig.PidsLimit}} {{.HostConfig.Memory}} {{.Config.User}} {{.Config.StopTimeout}} {{.HostConfig.SecurityOpt}}' \
        "${COMPOSE_PROJECT}_${service}_1")
    echo "  $service: read-only, pids, memory, user, stop timeout, security_opt = $got"
    [ "$got" = "true 100 $memory 10001:10001 45 [no-new-privileges]" ] &&
        in_compose "$service" cat /proc/1/status | grep -q '^CapEff:[[:space:]]*0000000000000000$'
}
has_default_route() { in_compose "$1" cat /proc/net/route | awk '$2 == "00000000" {f=1} END {exit !f}'; }
custodian_isolated() { ! has_default_route ocp-custodian && has_default_route ocp-node; }
# Only the custodian has the key: its file secret, mode 0444, read-only.
compose_key_wiring() {
    local mode options
    mode=$(in_compose ocp-custodian stat -c %a /run/secrets/custodian_key) || return 1
    options=$(in_compose ocp-custodian cat /proc/self/mounts |
        awk '$2 == "/run/secrets/custodian_key" {print $4}')
    echo "  ocp-custodian: /run/secrets/custodian_key mode $mode, mounted ${options%%,*}"
    [ "$mode" = 444 ] && [ "${options%%,*}" = ro ] &&
        ! in_compose ocp-node test -e /run/secrets/custodian_key &&
        ! in_compose ocp-registry test -e /run/secrets/custodian_key
}
compose_log_lacks() { podman logs "${COMPOSE_PROJECT}_$1_1" 2>&1 | absent "\"event\": \"$2\""; }
reach_registry() {
    fetch ocp-custodian http://ocp-registry:8422/health && fetch ocp-node http://ocp-registry:8422/health
}
registry_configured() {
    compose_log_lacks ocp-custodian no_registry && compose_log_lacks ocp-node no_registry
}
fetch() { # fetch SERVICE URL: GET from inside a service's container
    in_compose "$1" python3 -c 'import sys, urllib.request as u; u.urlopen(sys.argv[1], timeout=3)' "$2"
}

compose_checks() {
    local t0 pid ready=0 service code all_zero=1 ms
    section "compose: contrib/docker/docker-compose.yml (docker-compose via podman's Docker API)"
    if ! command -v docker-compose >/dev/null; then
        if [ "${CI:-}" = true ]; then fail "docker-compose is not installed"; else
            echo "SKIP: docker-compose is not installed"
        fi
        return
    fi
    t0=$(now_ms)
    podman system service --time=0 "unix://$WORK/podman.sock" >"$WORK/podman-service.log" 2>&1 &
    pid=$!
    SERVICE_PID=$pid
    for _ in $(seq 50); do [ -S "$WORK/podman.sock" ] && break; sleep 0.1; done
    # The custodian's key, as contrib/docker/README.md makes secrets/custodian.key
    # (here in $WORK, named by OCPD_CUSTODIAN_KEY, so a key in the tree is untouched).
    COMPOSE_SECRETS=$WORK/compose-secrets
    if custodian_key "$COMPOSE_SECRETS"; then
        pass "compose: key for the custodian_key secret made as contrib/docker/README.md says"
    else
        fail "compose: key for the custodian_key secret made as contrib/docker/README.md says"
    fi
    if ! compose up -d >"$WORK/compose.log" 2>&1; then
        indent <"$WORK/compose.log" | tail -n 15
        fail "docker-compose up -d"
    else
        pass "docker-compose up -d: ocp-node, ocp-registry, ocp-custodian"
        for _ in $(seq 40); do
            ready=1
            for service in ocp-node ocp-registry ocp-custodian; do
                podman healthcheck run "${COMPOSE_PROJECT}_${service}_1" >/dev/null 2>&1 || ready=0
            done
            [ "$ready" = 1 ] && break
            sleep 0.5
        done
        check "compose: the three services are healthy ($(($(now_ms) - t0)) ms)" test "$ready" = 1
        check "compose: ocp-node hardening as written" compose_hardening ocp-node 1073741824
        check "compose: ocp-registry hardening as written" compose_hardening ocp-registry 536870912
        check "compose: ocp-custodian hardening as written" compose_hardening ocp-custodian 268435456
        check "compose: node and registry answer on 127.0.0.1:$P_HTTP and :$P_REG" \
            python3 -c 'import sys, urllib.request as u; [u.urlopen(f"http://127.0.0.1:{p}/health", timeout=3) for p in sys.argv[1:]]' \
            "$P_HTTP" "$P_REG"
        check "compose: ocp-node reaches ocp-custodian:8423 on ocp-internal" \
            fetch ocp-node http://ocp-custodian:8423/health
        check "compose: only ocp-custodian has the key (/run/secrets/custodian_key, 0444, read-only)" \
            compose_key_wiring
        check "compose: the custodian runs on that key, not in development mode" \
            compose_log_lacks ocp-custodian custodian_development_mode
        check "compose: ocp-custodian and ocp-node reach ocp-registry:8422 (OCP_REGISTRY_URL)" \
            reach_registry
        check "compose: neither ocp-custodian nor ocp-node logs no_registry" \
            registry_configured
        check "compose: the custodian publishes no port" \
            test -z "$(podman port "${COMPOSE_PROJECT}_ocp-custodian_1")"
        check "compose: the custodian has no default route (internal network only); the node has" \
            custodian_isolated
        local t1
        t1=$(now_ms)
        compose stop >>"$WORK/compose.log" 2>&1
        ms=$(($(now_ms) - t1))
        TIMINGS+=("$(printf '%-50s %7d ms' "docker-compose stop (three services)" "$ms")")
        for service in ocp-node ocp-registry ocp-custodian; do
            code=$(podman inspect --format '{{.State.ExitCode}}' "${COMPOSE_PROJECT}_${service}_1")
            [ "$code" = 0 ] || all_zero=0
        done
        check "compose: docker-compose stop: every service exited 0 ($ms ms)" test "$all_zero" = 1
    fi
    compose down -v >>"$WORK/compose.log" 2>&1 || true
    rm -rf "$COMPOSE_SECRETS"
    COMPOSE_SECRETS=
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    SERVICE_PID=
    timing "compose checks" "$t0"
}

# --- systemd: the units under a real systemd -------------------------------------------
sd() { podman exec ocpd-ci-systemd "$@"; }
sd_prop() { sd systemctl show -p "$2" --value "$1"; }

# wait_units STATE UNIT...: until every unit is STATE (or one failed), up to 30 s.
wait_units() {
    local want=$1 deadline=$(($(date +%s) + 30)) unit state all
    shift
    while [ "$(date +%s)" -lt "$deadline" ]; do
        all=1
        for unit in "$@"; do
            state=$(sd systemctl is-active "$unit" 2>/dev/null || true)
            [ "$state" = failed ] && return 1
            [ "$state" = "$want" ] || all=0
        done
        [ "$all" = 1 ] && return 0
        sleep 0.3
    done
    return 1
}

# sandbox_applied UNIT: what the kernel says about the unit's main process.
sandbox_applied() {
    local unit=$1 pid status mounts ok=0
    pid=$(sd_prop "$unit" MainPID)
    status=$(sd cat "/proc/$pid/status")
    mounts=$(sd cat "/proc/$pid/mountinfo")
    field() { awk -v f="$1:" '$1 == f {print $2}' <<<"$status"; }
    [ "$(field Uid)" != 0 ] || { echo "  runs as root" && ok=1; }
    [ "$(field CapEff)" = 0000000000000000 ] || { echo "  CapEff $(field CapEff)" && ok=1; }
    [ "$(field CapBnd)" = 0000000000000000 ] || { echo "  CapBnd $(field CapBnd)" && ok=1; }
    [ "$(field NoNewPrivs)" = 1 ] || { echo "  NoNewPrivs off" && ok=1; }
    [ "$(field Seccomp)" = 2 ] || { echo "  no seccomp filter" && ok=1; }
    awk '$5 == "/" {print $6}' <<<"$mounts" | grep -q '^ro' ||
        { echo "  / is not read-only (ProtectSystem=strict)" && ok=1; }
    awk '$5 == "/proc" {print $NF}' <<<"$mounts" | grep -q 'hidepid=invisible' ||
        { echo "  /proc without hidepid=invisible (ProtectProc=)" && ok=1; }
    awk '$5 == "/tmp" {print $4}' <<<"$mounts" | grep -q systemd-private ||
        { echo "  /tmp is not private (PrivateTmp=)" && ok=1; }
    for ns in mnt user uts ipc; do
        [ "$(sd readlink "/proc/$pid/ns/$ns")" != "$(sd readlink "/proc/1/ns/$ns")" ] ||
            { echo "  shares the $ns namespace with PID 1" && ok=1; }
    done
    echo "  main PID $pid: uid $(field Uid), CapEff/CapBnd 0, NoNewPrivs 1, seccomp," \
        "read-only /, /proc hidepid=invisible, private /tmp, own mnt/user/uts/ipc namespaces"
    return "$ok"
}

healthy_on() { sd /opt/ocpd/bin/ocpd healthcheck --port "$1" | sed 's/^/  /'; }
metrics_have_process() {
    sd /opt/ocpd/bin/python -c \
        'import urllib.request as u; print(u.urlopen("http://127.0.0.1:8420/metrics").read().decode())' |
        grep -q '^process_resident_memory_bytes'
}
verify_units() {
    local out
    out=$(sd systemd-analyze verify /etc/systemd/system/ocpd.service \
        /etc/systemd/system/ocpd@node.service /etc/systemd/system/ocpd@registry.service \
        /etc/systemd/system/ocpd@custodian.service 2>&1) || true
    [ -z "$out" ] || { indent <<<"$out" && return 1; }
}
stopped_cleanly() { # UNIT
    local result code status
    result=$(sd_prop "$1" Result)
    code=$(sd_prop "$1" ExecMainCode)
    status=$(sd_prop "$1" ExecMainStatus)
    echo "  $1: Result=$result ExecMainCode=$code ExecMainStatus=$status"
    [ "$result" = success ] && [ "$code" = 1 ] && [ "$status" = 0 ]
}
# custodian_on_key UNIT: custodian-key.conf is in force and the custodian runs on
# /etc/ocpd/custodian.key (root:ocpd-secrets 0640), with the group, and no
# development key anywhere.
custodian_on_key() {
    local unit=$1 dropins owner gid groups
    dropins=$(sd_prop "$unit" DropInPaths)
    owner=$(sd stat -c '%U:%G %a' /etc/ocpd/custodian.key)
    gid=$(sd getent group ocpd-secrets | cut -d: -f3)
    # shellcheck disable=SC2016 # awk's $1, not the shell's
    groups=$(sd awk '$1 == "Groups:" {$1 = ""; print}' "/proc/$(sd_prop "$unit" MainPID)/status")
    echo "  $unit: drop-ins ${dropins//\/etc\/systemd\/system\//}; key $owner;" \
        "groups$groups (ocpd-secrets: $gid)"
    [[ $dropins == *"/$unit.d/custodian-key.conf"* ]] && [ "$owner" = "root:ocpd-secrets 640" ] &&
        [[ "$groups " == *" $gid "* ]] &&
        sd journalctl -o cat -u "$unit" | absent custodian_development_mode &&
        [ -z "$(sd find /var/lib/private -name custodian-dev.key)" ]
}
journal_lacks() { sd journalctl -o cat -u "$1" | absent "\"event\": \"$2\""; }
distinct_users() {
    local uids
    uids=$(for c in node registry custodian; do
        # shellcheck disable=SC2016 # awk's $1, not the shell's
        sd awk '$1 == "Uid:" {print $2}' "/proc/$(sd_prop "ocpd@$c.service" MainPID)/status"
    done | sort -u | wc -l)
    [ "$uids" = 3 ]
}
data_dirs() {
    local c
    for c in "$@"; do
        sd stat -c '  %n mode %a, uid %u' "/var/lib/private/ocpd/$c" || return 1
        [ "$(sd stat -c %a "/var/lib/private/ocpd/$c")" = 700 ] || return 1
    done
}

# systemd's transient UIDs are 61184-65519; they may be recycled, so no file
# may keep one once the units stopped, except under /var/lib/private.
owns_nothing_else() {
    local found
    found=$(sd find / -xdev -path /var/lib/private -prune -o \
        -uid +61183 -uid -65520 -print 2>/dev/null | head -n 5)
    [ -z "$found" ] || { indent <<<"$found" && return 1; }
}

systemd_checks() {
    local t0 t1 name=ocpd-ci-systemd status
    base_image "$SD_BASE_IMAGE" systemd python3,python3-venv,ca-certificates,systemd,systemd-sysv,dbus
    context "$WORK/systemd" .ci/systemd-test.Containerfile contrib/systemd/ocpd.service \
        contrib/systemd/ocpd@.service contrib/systemd/custodian-key.conf .ci/sandbox-selftest.py
    section "systemd: build $SD_IMAGE"
    t0=$(now_ms)
    if ! podman build --format docker --layers --build-arg "BASE=$SD_BASE_IMAGE" \
        -f "$WORK/systemd/systemd-test.Containerfile" -t "$SD_IMAGE" "$WORK/systemd" \
        >"$WORK/systemd-build.log" 2>&1; then
        tail -n 30 "$WORK/systemd-build.log"
        fail "podman build $SD_IMAGE"
        return
    fi
    timing "systemd test image build" "$t0"

    section "systemd: ocpd.service (Type=notify) under systemd as PID 1"
    # SYS_ADMIN and SYS_PTRACE are for systemd (PID 1 of the test container),
    # which needs them to build the unit's sandbox as on a real host; the unit
    # itself drops every capability (checked below). README.md explains why.
    t0=$(now_ms)
    podman run -d --name "$name" --label "$LABEL" --systemd=always --network=none \
        --cap-add=SYS_ADMIN,SYS_PTRACE "$SD_IMAGE" >/dev/null
    if wait_units active ocpd.service; then
        pass "ocpd.service is active: READY=1 reached systemd ($(($(now_ms) - t0)) ms after container start)"
    else
        fail "ocpd.service did not become active"
        sd systemctl status --no-pager ocpd.service 2>&1 | tail -n 20 | indent
    fi
    timing "systemd boot to ocpd.service active" "$t0"
    check "systemd-analyze verify of the installed units prints nothing" verify_units
    status=$(sd_prop ocpd.service StatusText)
    check "StatusText from ocpd: \"$status\"" test "${status#serving }" != "$status"
    check "sandbox applied to ocpd.service" sandbox_applied ocpd.service
    check "data directory /var/lib/ocpd/all is 0700, owned by the transient user" data_dirs all
    for port in 8420 8422 8423; do
        check "ocpd healthcheck --port $port" healthy_on "$port"
    done
    check "/metrics still has process_* families (/proc/stat readable)" metrics_have_process
    check "ocpd.service: the custodian runs on its key (custodian-key.conf, group ocpd-secrets)" \
        custodian_on_key ocpd.service
    t1=$(now_ms)
    if sd systemctl start ocpd-selftest.service; then
        pass "sandbox selftest in the same sandbox: $(sd journalctl -o cat -u ocpd-selftest.service |
            grep 'selftest OK' | tail -n1) ($(($(now_ms) - t1)) ms)"
    else
        fail "sandbox selftest (ocpd-selftest.service)"
        sd journalctl -o cat --no-pager -u ocpd-selftest.service | tail -n 20 | indent
    fi
    t1=$(now_ms)
    sd systemctl stop ocpd.service
    local ms=$(($(now_ms) - t1))
    TIMINGS+=("$(printf '%-50s %7d ms' "systemctl stop ocpd.service" "$ms")")
    check "systemctl stop ocpd.service: clean exit in $ms ms" stopped_cleanly ocpd.service

    section "systemd: ocpd@node, ocpd@registry, ocpd@custodian"
    # Not a relaxation: a 2 s watchdog (instead of 30 s) proves within seconds
    # that ocpd pings at WATCHDOG_USEC/2; a silent daemon would be killed.
    sd mkdir -p /run/systemd/system/ocpd@.service.d
    sd sh -c 'printf "[Service]\nWatchdogSec=2s\n" > /run/systemd/system/ocpd@.service.d/ci-watchdog.conf'
    sd systemctl daemon-reload
    local units=(ocpd@node.service ocpd@registry.service ocpd@custodian.service)
    # enable --now, as README.md says (enabled units also stay loaded after
    # they stop, so their exit status can be read below).
    sd systemctl enable --now --quiet "${units[@]}" || true
    check "the three instances are active" wait_units active "${units[@]}"
    check "each instance has its own transient user" distinct_users
    check "data directories /var/lib/ocpd/{node,registry,custodian} are 0700" \
        data_dirs node registry custodian
    for unit in "${units[@]}"; do
        check "sandbox applied to $unit" sandbox_applied "$unit"
    done
    check "ocpd@custodian.service: the custodian runs on its key (custodian-key.conf, group ocpd-secrets)" \
        custodian_on_key ocpd@custodian.service
    for unit in ocpd@node.service ocpd@custodian.service; do
        check "$unit: registry configured (registry.conf; no no_registry in the journal)" \
            journal_lacks "$unit" no_registry
    done
    for port in 8420 8422 8423; do
        check "ocpd healthcheck --port $port" healthy_on "$port"
    done
    sleep 5
    local restarts
    restarts=$(for u in "${units[@]}"; do sd_prop "$u" NRestarts; done | sort -u | tr '\n' ' ')
    check "watchdog: still active after 5 s with WatchdogSec=2s, NRestarts $restarts" \
        sh -c "[ '$restarts' = '0 ' ] && podman exec $name systemctl is-active --quiet ${units[*]}"
    t1=$(now_ms)
    sd systemctl stop "${units[@]}"
    ms=$(($(now_ms) - t1))
    TIMINGS+=("$(printf '%-50s %7d ms' "systemctl stop (three instances)" "$ms")")
    for unit in "${units[@]}"; do
        check "systemctl stop $unit: clean exit" stopped_cleanly "$unit"
    done

    section "systemd: ocpd@registry.service with TLS (README.md recipe: the key through a group)"
    # (/etc/ocpd and the group ocpd-secrets exist already: the custodian key's recipe.)
    sd sh -ec 'install -d -m 0750 -g ocpd-secrets /etc/ocpd/tls
        /opt/ocpd/bin/python /usr/local/lib/ocpd-ci/sandbox-selftest.py \
            --write-certificate /etc/ocpd/tls >/dev/null
        chgrp ocpd-secrets /etc/ocpd/tls/cert.pem /etc/ocpd/tls/key.pem
        chmod 0640 /etc/ocpd/tls/cert.pem /etc/ocpd/tls/key.pem
        mkdir -p /etc/systemd/system/ocpd@registry.service.d
        printf "%s\n" "[Service]" "SupplementaryGroups=ocpd-secrets" \
            "Environment=OCP_TLS_CERT=/etc/ocpd/tls/cert.pem OCP_TLS_KEY=/etc/ocpd/tls/key.pem" \
            "Environment=OCP_HOST=0.0.0.0" >/etc/systemd/system/ocpd@registry.service.d/tls.conf
        systemctl daemon-reload'
    sd systemctl start ocpd@registry.service || true
    check "TLS: ocpd@registry.service is active" wait_units active ocpd@registry.service
    check "TLS: ready lists https://0.0.0.0:8422" sh -c "podman exec $name journalctl -o cat \
        -u ocpd@registry.service | grep '\"event\": \"ready\"' | tail -n1 | grep -q https://0.0.0.0:8422"
    check "TLS: ocpd healthcheck over TLS 1.3" sd env OCP_TLS_CERT=/etc/ocpd/tls/cert.pem \
        OCP_TLS_KEY=/etc/ocpd/tls/key.pem /opt/ocpd/bin/ocpd healthcheck --port 8422
    check "TLS: sandbox applied" sandbox_applied ocpd@registry.service
    sd systemctl stop ocpd@registry.service
    check "TLS: systemctl stop ocpd@registry.service: clean exit" stopped_cleanly ocpd@registry.service
    check "transient users own nothing outside /var/lib/private" owns_nothing_else
    if [ "$FAILURES" -gt 0 ]; then
        sd journalctl --no-pager -o short-monotonic -u 'ocpd*' | grep -v '"level": "info"' |
            tail -n 40 | indent
    fi
    podman stop -t 10 "$name" >/dev/null
    podman rm -f "$name" >/dev/null
    timing "systemd checks" "$t0"
}

# --- main ------------------------------------------------------------------------------
section "build"
build_image
if [ "$MODE" = all ]; then
    key_checks
    for comp in node registry custodian all; do
        run_component "$comp"
    done
    compose_checks
    systemd_checks
fi

section "timings"
printf '%s\n' "${TIMINGS[@]}"
timing "total" "$T_TOTAL"
printf '%s\n' "${TIMINGS[-1]}"
if [ "$FAILURES" -gt 0 ]; then
    echo "containers.sh: $FAILURES check(s) FAILED"
    exit 1
fi
if [ "$MODE" = image ]; then echo "containers.sh image: built $IMAGE"; else
    echo "containers.sh: all checks passed"
fi
