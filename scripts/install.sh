#!/usr/bin/env bash
# Installs hugepage-agent on this machine from the checkout and runs its main
# job: builds the wrapper, installs the agent for Debian's /usr/bin/python3, the
# library, the configuration (kept if present) and the units; then starts the
# daemon where systemd is PID 1, or applies once where it is not; then prints
# `hugepage-agent status`.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $EUID -ne 0 ]]; then
    echo "install.sh: must be run as root (it installs packages and reserves huge pages)" >&2
    exit 2
fi
need=()
for p in build-essential make python3 python3-pip python3-setuptools python3-gi \
         python3-pydbus python3-pyudev; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if ((${#need[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${need[@]}"
fi

make -s -C wrapper_c lib
make -s -C wrapper_c install PREFIX=/usr
/usr/bin/python3 -m pip install -q --break-system-packages --no-deps --no-build-isolation \
    --root-user-action=ignore --disable-pip-version-check --upgrade .
rm -rf build agent/*.egg-info
install -d -m 0755 /etc/hugepage-agent /etc/hugepage-agent/config.d
[[ -e /etc/hugepage-agent/config.toml ]] || install -m 0644 config/default.toml /etc/hugepage-agent/config.toml

agent=$(command -v hugepage-agent)
if [[ "$(ps -p 1 -o comm= 2>/dev/null)" == systemd ]] && [[ -e systemd/hugepage-agent.service ]]; then
    install -m 0644 systemd/*.service /etc/systemd/system/
    [[ -e systemd/net.hugepage_agent.conf ]] && install -D -m 0644 systemd/net.hugepage_agent.conf /usr/share/dbus-1/system.d/net.hugepage_agent.conf
    systemctl daemon-reload
    systemctl enable --now hugepage-agent.service
else
    echo "install.sh: systemd is not PID 1 here: applying once" >&2
    rc=0
    "$agent" apply || rc=$?
    ((rc <= 1)) || exit "$rc"
fi
"$agent" status || true
