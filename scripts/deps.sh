#!/usr/bin/env bash
# Install everything the project needs on a fresh Debian 12 machine, idempotently.
#
# Python: the project runs on Debian's /usr/bin/python3 (3.11) on purpose. The agent
# ships as a Debian package that depends on Debian's python3-pydbus, python3-gi and
# python3-pyudev, which are built for that interpreter only. Development tools
# (pytest, ruff, mypy) live in a venv made from the same interpreter with
# --system-site-packages, cached under ~/.cache/hugepage-agent/ so later runs skip it.
set -euo pipefail

# $HOME may be unset (env -i, a unit): the home directory of the user, then
CACHE="${HUGEPAGE_AGENT_CACHE:-${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}/.cache/hugepage-agent}"
VENV="$CACHE/venv"
APT_PACKAGES=(
    build-essential make gcc
    python3 python3-venv python3-pip
    python3-gi python3-pydbus python3-pyudev
    libhugetlbfs-bin
    debootstrap systemd-container
    qemu-system-x86  # the two-NUMA-node guest (TCG) of the placement tests
    debhelper dpkg-dev fakeroot lintian rpm
    cmake curl procps util-linux
    shellcheck  # the scripts and the packages' maintainer scripts, in the test command
    prometheus  # for promtool: the alerting rules' checks and unit tests
    ansible ansible-lint  # the fleet role, its test (nsenter connection) and lint
    podman runc  # the image check and the container benchmark on this host (crun
                 # refuses the hybrid cgroups of these machines; runc does not)
    musl-tools   # a musl program, for the image check's Alpine-like image
)
PIP_PACKAGES=(
    "pytest>=7"
    "ruff>=0.6"
    "mypy>=1.10"
    "gguf>=0.10"
    "prometheus_client>=0.17"
    "hypothesis>=6.80"
)

need_apt=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$p")
done
if ((${#need_apt[@]})); then
    echo "deps: installing Debian packages: ${need_apt[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # Install only: no package's service is started on this machine (promtool
    # comes with the prometheus server, which must not run here).
    policy=/usr/sbin/policy-rc.d
    had_policy=0
    [[ -e $policy ]] && had_policy=1
    ((had_policy)) || printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    rc=0
    apt-get install -y -q --no-install-recommends "${need_apt[@]}" || rc=$?
    ((had_policy)) || rm -f "$policy"
    ((rc == 0)) || exit "$rc"
fi

stamp="$VENV/.hugepage-agent-deps"
want="$(printf '%s\n' "${PIP_PACKAGES[@]}")"
if [[ ! -x "$VENV/bin/python" ]] || [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
    echo "deps: creating development venv in $VENV" >&2
    mkdir -p "$CACHE"
    rm -rf "$VENV"
    /usr/bin/python3 -m venv --system-site-packages "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "${PIP_PACKAGES[@]}"
    printf '%s' "$want" >"$stamp"
fi

# `--light` (scripts/test.sh --unit): the packages and the venv are all the
# pure tier needs.
[[ ${1:-} != --light ]] || exit 0

# The Debian root file system that the tests boot a real systemd in.
bash "$(dirname "$0")/rootfs.sh" >/dev/null

# llama.cpp's llama-server and llama-bench for the end-to-end tests (cached).
bash "$(dirname "$0")/llama.sh" >/dev/null

# For the NUMA tests: a llama-server any AVX2 CPU runs (QEMU's TCG emulates no
# AVX-512) and the Debian 12 guest with two NUMA nodes they boot (cached).
bash "$(dirname "$0")/llama.sh" --portable >/dev/null
bash "$(dirname "$0")/guest.sh" >/dev/null

# The container tests' images: Debian roots (bookworm, trixie, bullseye) that
# llama-server is added to (cached).
bash "$(dirname "$0")/images.sh" >/dev/null
