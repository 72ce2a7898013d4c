#!/usr/bin/env bash
# Installs the Debian tools the container and systemd checks use, when they
# are missing and we may (root, or CI=true). A fresh CI machine has none of
# them; a developer machine without root simply skips those checks.
set -euo pipefail

packages=(podman runc mmdebstrap uidmap slirp4netns fuse-overlayfs docker-compose systemd)
declare -A provides=(
    [podman]=podman [runc]=runc [mmdebstrap]=mmdebstrap [uidmap]=newuidmap
    [slirp4netns]=slirp4netns [fuse-overlayfs]=fuse-overlayfs
    [docker-compose]=docker-compose [systemd]=systemd-analyze
)
missing=()
for package in "${packages[@]}"; do
    command -v "${provides[$package]}" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "tools: all present"
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    if [ "${CI:-}" = true ]; then
        echo "tools: missing ${missing[*]} and cannot install them (need root and apt-get)" >&2
        exit 1
    fi
    echo "tools: missing ${missing[*]}; the checks that need them will be skipped"
    exit 0
fi
echo "tools: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
