#!/usr/bin/env bash
# Builds (once) the Debian 12 root file system that the tests boot a real
# systemd in, and caches it as a tarball outside the repo. Prints its path.
set -euo pipefail
# $HOME may be unset (env -i, a unit): the home directory of the user, then
CACHE="${HUGEPAGE_AGENT_CACHE:-${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}/.cache/hugepage-agent}"
VERSION=3  # bump when the package list changes
INCLUDE=make,gcc,libc6-dev,libgomp1,libstdc++6,systemd,systemd-sysv,dbus,python3,python3-pydbus,python3-gi,python3-pyudev,procps,apt
TARBALL="$CACHE/rootfs-bookworm-v$VERSION.tar"
if [[ -s "$TARBALL" ]]; then
    echo "$TARBALL"
    exit 0
fi
mirror=$(bash "$(dirname "$0")/debian-mirror.sh")
mkdir -p "$CACHE"
work=$(mktemp -d "$CACHE/rootfs.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "rootfs: debootstrap bookworm from $mirror (about a minute)" >&2
debootstrap --variant=minbase --include="$INCLUDE" bookworm "$work/root" "$mirror" >"$work/log" 2>&1 \
    || { tail -n 30 "$work/log" >&2; exit 1; }
rm -f "$work"/root/var/cache/apt/archives/*.deb
tar -C "$work/root" -cf "$TARBALL.tmp" .
mv "$TARBALL.tmp" "$TARBALL"
echo "$TARBALL"
