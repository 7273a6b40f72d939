#!/usr/bin/env bash
# Installs the project's files under DESTDIR (default /), in the layout of the
# Debian package: the Python package for Debian's python3, the command, the
# wrapper library, the units, the D-Bus policy and the configuration (an
# existing /etc/hugepage-agent/config.toml is kept). Used by install.sh, the
# systemd container tests and the packaging. Builds the wrapper if needed.
set -euo pipefail
cd "$(dirname "$0")/.."
DESTDIR="${1:-${DESTDIR:-/}}"
UNITDIR="${UNITDIR:-$DESTDIR/usr/lib/systemd/system}"  # Debian 12's debhelper: /lib/...
PYDIR="${PYDIR:-$DESTDIR/usr/lib/python3/dist-packages}"  # RPM: its python3_sitelib
make -s -C wrapper_c lib
install -d "$PYDIR/hugepage_agent" "$DESTDIR/usr/bin" "$UNITDIR" \
    "$DESTDIR/usr/share/dbus-1/system.d" "$DESTDIR/etc/hugepage-agent/config.d" \
    "$DESTDIR/usr/share/doc/hugepage-agent"
install -m 0644 agent/hugepage_agent/*.py "$PYDIR/hugepage_agent/"
cat >"$DESTDIR/usr/bin/hugepage-agent.tmp" <<'PY'
#!/usr/bin/python3
import sys

from hugepage_agent.cli import main

sys.exit(main())
PY
chmod 0755 "$DESTDIR/usr/bin/hugepage-agent.tmp"
mv "$DESTDIR/usr/bin/hugepage-agent.tmp" "$DESTDIR/usr/bin/hugepage-agent"
# -C: an unchanged library keeps its inode, so that running servers' maps
# still name it (a replaced one shows as "(deleted)" there)
install -C -D -m 0644 wrapper_c/build/libhugepage-wrapper.so \
    "$DESTDIR/usr/lib/hugepage-agent/libhugepage-wrapper.so"
install -m 0644 systemd/hugepage-agent.service systemd/llama-server@.service \
    systemd/llama-container@.service "$UNITDIR/"
install -m 0644 systemd/net.hugepageagent.Agent1.conf "$DESTDIR/usr/share/dbus-1/system.d/"
install -D -m 0644 systemd/hugepage-agent.sysusers "$DESTDIR/usr/lib/sysusers.d/hugepage-agent.conf"
# The servers' user; the packages create it in their scripts instead (SYSUSERS=0).
if [[ "${SYSUSERS:-1}" == 1 ]] && command -v systemd-sysusers >/dev/null; then
    systemd-sysusers --root="$DESTDIR" "$DESTDIR/usr/lib/sysusers.d/hugepage-agent.conf"
fi
install -m 0644 README.md config/example.toml "$DESTDIR/usr/share/doc/hugepage-agent/"
# The manual pages, generated from the parser and the README's configuration
# reference (agent/hugepage_agent/manpages.py), and bash completion.
PYTHONPATH=agent /usr/bin/python3 -m hugepage_agent.manpages README.md \
    "$DESTDIR/usr/share/man" >/dev/null
install -D -m 0644 packaging/bash-completion/hugepage-agent \
    "$DESTDIR/usr/share/bash-completion/completions/hugepage-agent"
# Prometheus alerting and recording rules (and their unit tests).
install -d "$DESTDIR/usr/share/hugepage-agent/prometheus"
install -m 0644 packaging/prometheus/hugepage-agent.rules.yml \
    packaging/prometheus/hugepage-agent.test.yml "$DESTDIR/usr/share/hugepage-agent/prometheus/"
# The configuration may hold secrets (a model's --api-key): root only.
[[ -e "$DESTDIR/etc/hugepage-agent/config.toml" ]] || \
    install -m 0600 config/default.toml "$DESTDIR/etc/hugepage-agent/config.toml"
