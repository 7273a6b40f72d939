#!/usr/bin/env bash
# Installs hugepage-agent on this machine from the checkout and runs its main
# job: builds the wrapper, installs the agent for Debian's /usr/bin/python3, the
# library, the configuration (kept if present) and the units (scripts/install-files.sh); then starts the
# daemon where systemd is PID 1, or applies once where it is not; then prints
# `hugepage-agent status`.
#   ./scripts/install.sh                install (real hosts)
#   ./scripts/install.sh --demo         install, then serve a small demo model from
#                                       huge pages on 127.0.0.1 (scripts/demo.sh)
#   ./scripts/install.sh --remove-demo  remove the demo, leaving the install
set -euo pipefail
cd "$(dirname "$0")/.."
demo=""
for a in "$@"; do
    case "$a" in
        --demo) demo=install ;;
        --remove-demo) demo=remove ;;
        -h|--help) sed -n '2,11s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option $a (try --help)" >&2; exit 2 ;;
    esac
done
if [[ $EUID -ne 0 ]]; then
    echo "install.sh: must be run as root (it installs packages and reserves huge pages):" \
         "in a root shell, ./scripts/install.sh; from a user account, sudo ./scripts/install.sh" >&2
    exit 2
fi
if [[ $demo == remove ]]; then
    exec bash scripts/demo.sh remove
fi
packages=(make gcc libc6-dev python3 python3-gi python3-pydbus python3-pyudev)
# the demo builds llama-server (scripts/llama.sh) and writes its model with gguf
if [[ $demo == install ]] && ! bash scripts/demo.sh cached; then
    packages+=(g++ cmake curl python3-pip python3-venv)
fi
need=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if ((${#need[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${need[@]}"
fi

bash scripts/install-files.sh /
agent=/usr/bin/hugepage-agent
# systemd is running when /run/systemd/system exists (sd_booted(3)); a
# minimal root has no procps to ask ps.
if [[ -d /run/systemd/system ]]; then
    systemctl reload dbus.service || true
    systemctl daemon-reload
    systemctl enable --now hugepage-agent.service
else
    echo "install.sh: systemd is not PID 1 here: applying once" >&2
    rc=0
    "$agent" apply || rc=$?
    ((rc <= 1)) || exit "$rc"
fi
"$agent" status || true
if [[ $demo == install ]]; then
    bash scripts/demo.sh install
fi
