#!/usr/bin/env bash
# The whole test suite: installs what it needs (scripts/deps.sh), builds the
# wrapper with warnings as errors, runs ruff, mypy and pytest. Run as root: the
# kernel tests (huge pages, THP, sysctl) skip, saying why, without it.
#   scripts/test.sh            everything (what CI runs)
#   scripts/test.sh --quick    skip the slow tests (large files, fragmentation)
#   scripts/test.sh -- ARGS    extra pytest arguments, e.g. -- -k wrapper
set -euo pipefail
cd "$(dirname "$0")/.."
pytest_args=()
for a in "$@"; do
    case "$a" in
        --quick) pytest_args+=(-m "not slow") ;;
        --) ;;
        *) pytest_args+=("$a") ;;
    esac
done
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
