"""Will the wrapper library load into the llama-server of a container image?

Read from the image, nothing run: its entrypoint's binary and the C library
it would load (copied out of a container created for that, never started).
The library needs the glibc symbol versions it was built against (GLIBC_2.34
when built on Debian 12); an image with an older glibc (Debian 11, Ubuntu
20.04, RHEL 8), or with musl (Alpine), would have ld.so stop the server
before it starts, so such an image is refused before its unit starts.
"""

from __future__ import annotations

import posixpath

from hugepage_agent import elflibs, preload, runtimes
from hugepage_agent.errors import AgentError

LIBC_DIRS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu",
             "/usr/lib/aarch64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib")
MUSL_LOADERS = ("/lib/ld-musl-x86_64.so.1", "/lib/ld-musl-aarch64.so.1")
FLOOR = "Debian 12 or 13, Ubuntu 22.04 or 24.04, RHEL 9 or later, as llama.cpp's server image"


def needed_glibc(library_bytes: bytes) -> tuple[int, ...] | None:
    """The newest GLIBC_x.y the library needs. Raises elflibs.NotElf."""
    return preload.newest_glibc(elflibs.symbol_versions(library_bytes)[0])


def judge(image: str, library: str, needs: tuple[int, ...] | None, entry: str,
          files: dict[str, tuple[str, bytes]]) -> str | None:
    """Why the library would not load into the image's `entry` binary, from
    the files read out of it; None when it would, or when it cannot be told."""
    musl = [p for p in MUSL_LOADERS if p in files]
    binary = files.get(entry)
    if binary is not None:
        try:
            needed = elflibs.dynamic_entries(binary[1])[0]
        except elflibs.NotElf:
            needed = []
        musl += [n for n in needed if n.startswith(preload.MUSL_NAMES)]
    libc = next((files[p] for p in files if posixpath.basename(p) == "libc.so.6"), None)
    if musl and libc is None:
        return (f"image {image} runs with musl libc ({musl[0]}); the wrapper library {library} "
                "is built for glibc and no musl build is shipped: ld.so would stop the server "
                "before it starts. Use a glibc image: " + FLOOR)
    if libc is None or needs is None:
        return None
    try:
        has = preload.newest_glibc(elflibs.symbol_versions(libc[1])[1])
    except elflibs.NotElf:
        return None
    if has is not None and has < needs:
        return (f"image {image} runs glibc {preload.glibc_release(libc[1], has)} ({libc[0]}); "
                f"the wrapper library {library} needs glibc {preload.version_name(needs)}: ld.so "
                f"would stop the server before it starts. Use an image with glibc "
                f"{preload.version_name(needs)} or newer: {FLOOR}")
    return None


def problem(runtime: str, image: str, library: str, argv: list[str]) -> str | None:
    """Why the wrapper library would not load into the image's server (`argv`:
    its entrypoint and command, runtimes.image_info's); None when it would or
    cannot be told. Raises AgentError when the runtime cannot read the image."""
    try:
        with open(library, "rb") as f:
            needs = needed_glibc(f.read())
    except (OSError, elflibs.NotElf) as e:
        raise AgentError(f"the wrapper library {library} cannot be read ({e})") from e
    if not argv:
        raise AgentError(f"image {image} has no ENTRYPOINT or CMD: the agent runs images whose "
                         "entrypoint is llama-server, as llama.cpp's server image")
    entry = argv[0]
    wanted = [entry, *MUSL_LOADERS, *(f"{d}/libc.so.6" for d in LIBC_DIRS)]
    return judge(image, library, needs, entry, runtimes.read_files(runtime, image, wanted))
