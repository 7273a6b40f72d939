#!/usr/bin/env bash
# Builds the RPM with `rpmbuild -bb` from this tree (Debian's rpm package
# provides rpmbuild). The RPM lands in OUTDIR (default dist/). Prints its path.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="$(realpath -m "${1:-dist}")"
. packaging/common.sh
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$OUT"
copy_tree "$work/src"
rpmbuild -bb --nodeps --define "_topdir $work/top" --define "_sourcedir $work/src" \
    --define "version_from_tree $VERSION" packaging/rpm/hugepage-agent.spec \
    >"$work/build.log" 2>&1 || { tail -n 40 "$work/build.log" >&2; exit 1; }
rpm=$(find "$work/top/RPMS" -name "hugepage-agent-$VERSION-*.rpm" | head -n1)
cp "$rpm" "$OUT/"
echo "$OUT/$(basename "$rpm")"
