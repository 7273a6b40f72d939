# shellcheck shell=bash
# Sourced by build-deb.sh and build-rpm.sh from the top of the tree.
# VERSION: the one version, from agent/hugepage_agent/__init__.py.
# shellcheck disable=SC2034  # used by the scripts that source this file
VERSION=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' agent/hugepage_agent/__init__.py)

# copy_tree DEST: the tracked source files (or, outside git, the source
# directories), without build output.
copy_tree() {
    mkdir -p "$1"
    git ls-files -z 2>/dev/null | xargs -0 -I{} cp --parents {} "$1/" 2>/dev/null \
        || cp -r agent wrapper_c systemd config scripts packaging README.md pyproject.toml "$1/"
    rm -rf "$1/wrapper_c/build"
}
