#!/usr/bin/env bash
# Prints the Debian mirror apt is configured with on this machine (deb822
# .sources first, then sources.list), for debootstrap in rootfs.sh and
# guest.sh: the package client's own configuration, no host named here.
set -euo pipefail
mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security \
    | head -n1 || true)
mirror=${mirror:-$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)}
if [[ -z $mirror ]]; then
    echo "no Debian mirror in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list:" \
        "configure apt (and run apt-get update) first" >&2
    exit 1
fi
echo "${mirror%% *}"
