#!/usr/bin/env bash
# The whole test suite: installs what it needs (scripts/deps.sh), builds the
# wrapper with warnings as errors, runs ruff, mypy and pytest. Run as root: the
# kernel tests (huge pages, THP, sysctl) skip, saying why, without it.
# The tests are laid out by what they need: tests/unit (pure logic, no root,
# under a minute), tests/kernel (root and the real kernel), tests/systemd (a
# real systemd booted in a container), tests/e2e (llama.cpp end to end, and
# the two-NUMA-node QEMU guest).
#   scripts/test.sh            everything (what CI runs)
#   scripts/test.sh --unit     the pure tier only, without its slow fuzzing: what
#                              to run on every edit (no root, no heavy set-up)
#   scripts/test.sh --quick    everything but the slow tests (large files,
#                              fragmentation, fuzzing, the QEMU guest)
#   scripts/test.sh -- ARGS    extra pytest arguments, e.g. -- -k wrapper
set -euo pipefail
cd "$(dirname "$0")/.."
pytest_args=()
unit=0
for a in "$@"; do
    case "$a" in
        --quick) pytest_args+=(-m "not slow") ;;
        --unit) unit=1; pytest_args+=(-m "not slow and not root" tests/unit) ;;
        --) ;;
        *) pytest_args+=("$a") ;;
    esac
done
if ((unit)); then
    # the venv and the Debian packages only: no root file system, no llama.cpp build
    bash scripts/deps.sh --light
    VENV="${HUGEPAGE_AGENT_CACHE:-${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}/.cache/hugepage-agent}/venv"
    "$VENV/bin/ruff" check agent tests bench
    "$VENV/bin/mypy"
    exec "$VENV/bin/python" -m pytest "${pytest_args[@]}"
fi
bash scripts/deps.sh
VENV="${HUGEPAGE_AGENT_CACHE:-${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}/.cache/hugepage-agent}/venv"
echo "== C build (wrapper_c, -Wall -Wextra -Werror)"
make -s -C wrapper_c WERROR=1 all
echo "== ruff"
"$VENV/bin/ruff" check agent tests bench
echo "== mypy"
"$VENV/bin/mypy"
echo "== shellcheck (scripts, packaging, the Debian maintainer scripts, CI)"
shellcheck scripts/*.sh packaging/*.sh packaging/debian/postinst packaging/debian/postrm \
    packaging/debian/prerm .ci/run
echo "== pytest"
exec "$VENV/bin/python" -m pytest "${pytest_args[@]}"
