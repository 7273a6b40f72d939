#!/usr/bin/env bash
# Builds the Debian package from this tree: copies the tree, puts
# packaging/debian in place, writes debian/changelog with the one version
# (agent/hugepage_agent/__init__.py), runs `dpkg-buildpackage -us -uc -b` and
# lintian. The .deb lands in OUTDIR (default dist/). Prints its path.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="$(realpath -m "${1:-dist}")"
. packaging/common.sh
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
src="$work/hugepage-agent-$VERSION"
mkdir -p "$OUT"
copy_tree "$src"
cp -r packaging/debian "$src/debian"
cat >"$src/debian/changelog" <<CL
hugepage-agent ($VERSION) unstable; urgency=medium

  * Release $VERSION.

 -- hugepage-agent developers <dev@hugepage-agent.invalid>  $(date -R)
CL
(cd "$src" && dpkg-buildpackage -us -uc -b) >"$work/build.log" 2>&1 \
    || { tail -n 40 "$work/build.log" >&2; exit 1; }
deb=$(ls "$work"/hugepage-agent_"$VERSION"_*.deb)
lintian --fail-on error "$deb" >&2
cp "$deb" "$OUT/"
echo "$OUT/$(basename "$deb")"
