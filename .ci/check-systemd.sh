#!/usr/bin/env bash
# Static checks of contrib/systemd/ocpd.service and ocpd@.service, alone and,
# for the two units that run the custodian (ocpd.service and
# ocpd@custodian.service), with the drop-in custodian-key.conf installed as
# README.md says:
#
# 1. `systemd-analyze verify` prints nothing. It exits 0 on unknown keys and
#    bad values, so any output at all is a failure. It also checks that
#    ExecStart exists: ocpd is installed at /opt/ocpd, the way README.md says,
#    from the wheels of `make wheels`, inside a private mount namespace (a
#    tmpfs over /opt), so the host is left untouched.
# 2. `systemd-analyze security --offline=true` for each unit: the overall
#    exposure must not exceed THRESHOLD, and every remaining finding (✗) must
#    be one of ACCEPTED below, each of which a network daemon cannot avoid
#    (with custodian-key.conf also SupplementaryGroups=, the key's group).
#    The score moves little (dropping ProtectHome=, ProtectKernelTunables=,
#    MemoryDenyWriteExecute=, LockPersonality=, ProtectProc= and UMask= all at
#    once takes it from 1.1 to 1.6), so the list is what catches a weakened
#    sandbox: any new ✗ fails until it is fixed or accepted here with a reason.
#    (NoNewPrivileges= and PrivateTmp= are implied by DynamicUser=yes and so
#    never show up; tests/test_contrib.py requires them to be written out.)
#
# Needs systemd-analyze (Debian: apt-get install systemd; PID 1 need not be
# systemd) and root or unprivileged user namespaces (unshare).
set -euo pipefail
cd "$(dirname "$0")/.."

# 1.1 today (systemd 252). The headroom absorbs scoring changes between systemd
# versions; "OK" in systemd's own scale ends at 2.0.
THRESHOLD=${OCPD_SECURITY_THRESHOLD:-1.5}
# The findings we accept, by the name systemd-analyze prints:
ACCEPTED=(
    "PrivateNetwork=" # it serves the network
    "RestrictAddressFamilies=~AF_(INET|INET6)" # ditto
    "IPAddressDeny=" # peers and clients can be anywhere; firewall per site
    "RestrictAddressFamilies=~AF_UNIX" # sd_notify needs AF_UNIX
    "RootDirectory=/RootImage=" # a venv on the host's /usr; ProtectSystem=strict instead
    "DeviceAllow=" # char-rtc:r, which ProtectClock= itself adds
    "ProcSubset=" # /proc/stat, /proc/meminfo feed process_* metrics and memory_ok
)
# With custodian-key.conf, one more: the group ocpd-secrets reads the key file.
ACCEPTED_WITH_KEY=("${ACCEPTED[@]}" "SupplementaryGroups=")
UNITS=(ocpd.service ocpd@node.service ocpd@registry.service ocpd@custodian.service)
KEYED_UNITS=(ocpd.service ocpd@custodian.service) # with custodian-key.conf

if ! command -v systemd-analyze >/dev/null; then
    if [ "${CI:-}" = true ]; then
        echo "FAIL: systemd-analyze is not installed (apt-get install systemd)" >&2
        exit 1
    fi
    echo "SKIP: systemd-analyze is not installed"
    exit 0
fi
echo "systemd-analyze: $(systemd-analyze --version | head -n1)"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ocpd-check-systemd.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
# $WORK/plain: the units as shipped; $WORK/keyed: the same with the drop-in.
for dir in plain keyed; do
    mkdir "$WORK/$dir"
    cp contrib/systemd/ocpd.service contrib/systemd/ocpd@.service "$WORK/$dir/"
done
for unit in "${KEYED_UNITS[@]}"; do
    install -D -m 0644 contrib/systemd/custodian-key.conf "$WORK/keyed/$unit.d/custodian-key.conf"
done
failures=0

# --- 1. verify -----------------------------------------------------------------
if [ ! -d build/wheels ] || [ -z "$(find build/wheels -name 'ocpd-*.whl')" ]; then
    make --no-print-directory -s wheels >"$WORK/wheels.log" 2>&1 || {
        tail -n 20 "$WORK/wheels.log"
        exit 1
    }
fi
unit_paths=()
for unit in "${UNITS[@]}"; do unit_paths+=("$WORK/plain/$unit"); done
for unit in "${KEYED_UNITS[@]}"; do unit_paths+=("$WORK/keyed/$unit"); done
if [ "$(id -u)" = 0 ]; then ns=(unshare --mount --propagation private); else
    ns=(unshare --user --map-root-user --mount --propagation private)
fi
if ! "${ns[@]}" true 2>/dev/null; then
    if [ "${CI:-}" = true ]; then
        echo "FAIL: cannot create a private mount namespace (${ns[*]}) to install ocpd at /opt/ocpd"
        exit 1
    fi
    echo "SKIP: systemd-analyze verify needs root or user namespaces (${ns[*]})"
    unit_paths=()
fi
# shellcheck disable=SC2016 # expanded by the inner shell
if [ "${#unit_paths[@]}" -eq 0 ]; then
    : # skipped above
elif ! "${ns[@]}" sh -euc '
    mount -t tmpfs -o mode=0755 tmpfs /opt
    python3 -m venv /opt/ocpd
    /opt/ocpd/bin/pip install --isolated --quiet --no-index --find-links="$1" \
        --disable-pip-version-check "$1"/ocpd-*.whl
    echo "installed $(/opt/ocpd/bin/ocpd --version) at /opt/ocpd (private mount namespace)"
    shift
    # One unit at a time: plain/ and keyed/ hold units of the same names.
    for unit in "$@"; do systemd-analyze verify "$unit" 2>&1 || true; done >"$0"
' "$WORK/verify.out" "$PWD/build/wheels" "${unit_paths[@]}"; then
    echo "FAIL: could not install ocpd at /opt/ocpd in a private mount namespace"
    exit 1
fi
if [ "${#unit_paths[@]}" -eq 0 ]; then
    :
elif [ -s "$WORK/verify.out" ]; then
    echo "FAIL: systemd-analyze verify ${UNITS[*]} (${KEYED_UNITS[*]} also with custodian-key.conf):"
    sed 's/^/  | /' "$WORK/verify.out"
    failures=$((failures + 1))
else
    echo "PASS: systemd-analyze verify ${UNITS[*]} (${KEYED_UNITS[*]} also with custodian-key.conf): no output"
fi

# --- 2. security ------------------------------------------------------------------
targets=()
for unit in "${UNITS[@]}"; do targets+=("plain/$unit"); done
for unit in "${KEYED_UNITS[@]}"; do targets+=("keyed/$unit"); done
for target in "${targets[@]}"; do
    unit=${target#*/}
    accepted=("${ACCEPTED[@]}")
    if [ "${target%%/*}" = keyed ]; then
        unit="$unit with custodian-key.conf"
        accepted=("${ACCEPTED_WITH_KEY[@]}")
    fi
    out=$(systemd-analyze security --offline=true --no-pager "$WORK/$target" 2>&1 || true)
    exposure=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' <<<"$out")
    if [ -z "$exposure" ]; then
        echo "FAIL: $unit: no overall exposure in the output of systemd-analyze security:"
        tail -n 20 <<<"$out" | sed 's/^/  | /'
        failures=$((failures + 1))
        continue
    fi
    unexpected=()
    while IFS= read -r finding; do
        name=$(awk '{print $2}' <<<"$finding")
        known=0
        for ok in "${accepted[@]}"; do [ "$name" = "$ok" ] && known=1; done
        [ "$known" = 1 ] || unexpected+=("$finding")
    done < <(grep '^✗' <<<"$out" || true)
    if awk -v e="$exposure" -v t="$THRESHOLD" 'BEGIN{exit !(e <= t)}'; then
        echo "PASS: $unit: overall exposure $exposure (threshold $THRESHOLD)"
    else
        echo "FAIL: $unit: overall exposure $exposure is above the threshold $THRESHOLD"
        failures=$((failures + 1))
    fi
    if [ "${#unexpected[@]}" -eq 0 ]; then
        echo "PASS: $unit: every remaining finding is an accepted one ($(grep -c '^✗' <<<"$out"))"
    else
        echo "FAIL: $unit: findings not accepted in .ci/check-systemd.sh:"
        printf '  | %s\n' "${unexpected[@]}"
        failures=$((failures + 1))
    fi
done

if [ "$failures" -gt 0 ]; then
    echo "check-systemd: $failures check(s) FAILED"
    exit 1
fi
echo "check-systemd: all checks passed"
