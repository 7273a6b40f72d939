#!/usr/bin/env bash
# Builds the RPM with `rpmbuild -bb` from this tree (Debian's rpm package
# provides rpmbuild). The RPM lands in OUTDIR (default dist/). Prints its path.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="$(realpath -m "${1:-dist}")"
VERSION=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' agent/hugepage_agent/__init__.py)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$OUT" "$work/src"
git ls-files -z 2>/dev/null | xargs -0 -I{} cp --parents {} "$work/src/" 2>/dev/null \
    || cp -r agent wrapper_c systemd config scripts packaging README.md "$work/src/"
rm -rf "$work/src/wrapper_c/build"
rpmbuild -bb --nodeps --define "_topdir $work/top" --define "_sourcedir $work/src" \
    --define "version_from_tree $VERSION" packaging/rpm/hugepage-agent.spec \
    >"$work/build.log" 2>&1 || { tail -n 40 "$work/build.log" >&2; exit 1; }
rpm=$(find "$work/top/RPMS" -name "hugepage-agent-$VERSION-*.rpm" | head -n1)
cp "$rpm" "$OUT/"
echo "$OUT/$(basename "$rpm")"
