#!/usr/bin/env bash
# Builds (once) the root file systems of the container images the container
# tests run llama-server in, as no image registry is reachable here: Debian
# roots made with debootstrap (minbase, with libgomp1 for llama.cpp and curl
# for the image's health check), without documentation or apt lists, cached
# as tarballs under ~/.cache/hugepage-agent/. The tests add llama-server at
# /app/llama-server and import them (`podman import` / `docker import`) with
# llama-server as the entrypoint, as llama.cpp's official server image has.
#   scripts/images.sh [SUITE...]   default: bookworm trixie bullseye
# Prints each tarball's path. bookworm is Debian 12 (glibc 2.36), trixie 13
# (2.41), bullseye 11 (2.31: older than the wrapper library needs).
set -euo pipefail
# $HOME may be unset (env -i, a unit): the home directory of the user, then
CACHE="${HUGEPAGE_AGENT_CACHE:-${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}/.cache/hugepage-agent}"
VERSION=1  # bump when the package list changes
INCLUDE=libgomp1,libstdc++6,curl,ca-certificates
suites=("$@")
((${#suites[@]})) || suites=(bookworm trixie bullseye)
mirror=""
for suite in "${suites[@]}"; do
    case $suite in bookworm|trixie|bullseye) ;; *) echo "images: unknown suite $suite" >&2; exit 2 ;; esac
    tarball="$CACHE/image-$suite-v$VERSION.tar"
    if [[ ! -s "$tarball" ]]; then
        [[ -n $mirror ]] || mirror=$(bash "$(dirname "$0")/debian-mirror.sh")
        mkdir -p "$CACHE"
        work=$(mktemp -d "$CACHE/image.XXXXXX")
        echo "images: debootstrap $suite from $mirror (about a minute)" >&2
        if ! debootstrap --variant=minbase --include="$INCLUDE" "$suite" "$work/root" "$mirror" \
                >"$work/log" 2>&1; then
            tail -n 30 "$work/log" >&2
            rm -rf "$work"
            exit 1
        fi
        rm -rf "$work"/root/var/cache/apt/archives/*.deb "$work"/root/var/lib/apt/lists/* \
            "$work"/root/usr/share/doc "$work"/root/usr/share/man "$work"/root/usr/share/info \
            "$work"/root/usr/share/locale
        tar -C "$work/root" -cf "$tarball.tmp" .
        mv "$tarball.tmp" "$tarball"
        rm -rf "$work"
    fi
    echo "$tarball"
done
