"""Will the wrapper library load into a server? Without running anything.

ld.so ignores an LD_PRELOAD library it cannot find (one line on stderr, and
the server runs on 4 KiB pages), and stops the program before main when the
library needs a newer glibc than the program's. Both are checked here: the
library exists in the server's root, and the GLIBC_x.y versions it needs are
ones the C library the server's binary loads defines.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

from hugepage_agent import elflibs
from hugepage_agent.config import Config
from hugepage_agent.errors import AgentError

_GLIBC_RE = re.compile(r"GLIBC_(\d+)\.(\d+)(?:\.(\d+))?$")
MUSL_NAMES = ("libc.musl-", "ld-musl-")


class PreloadError(AgentError):
    """The wrapper library cannot load into the server."""


def listed(value: str) -> list[str]:
    """The libraries an LD_PRELOAD value names (ld.so separates them with
    colons or spaces)."""
    return value.replace(":", " ").split()


def newest_glibc(versions: set[str]) -> tuple[int, ...] | None:
    found = [tuple(int(g) for g in m.groups() if g is not None)
             for m in map(_GLIBC_RE.match, versions) if m]
    return max(found) if found else None


_RELEASE_RE = re.compile(rb"release version (\d+\.\d+(?:\.\d+)?)")


def glibc_release(libc: bytes, versions: tuple[int, ...]) -> str:
    """The glibc release a libc.so.6 says it is (its banner: "... release
    version 2.31"); else the newest symbol version it defines, which a release
    that added none (2.31 defines GLIBC_2.30 at most) understates."""
    m = _RELEASE_RE.search(libc)
    return m.group(1).decode() if m else version_name(versions)


def version_name(v: tuple[int, ...]) -> str:
    return ".".join(map(str, v))


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def in_root(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/")) if root not in ("", "/") else path


def problem(library: str, binary: str | None, root: str = "/") -> str | None:
    """Why `library` would not load into `binary` (both paths as the server
    sees them, in `root`); None when it would, or when it cannot be told."""
    where = f" in the server's root {root}" if root not in ("", "/") else ""
    data = _read(in_root(root, library))
    if data is None:
        return f"the wrapper library {library} does not exist{where} (or cannot be read)"
    try:
        needed, _ = elflibs.symbol_versions(data)
    except elflibs.NotElf as e:
        return f"the wrapper library {library} is not a shared library ({e})"
    needs = newest_glibc(needed)
    if binary is None:
        return None
    exe = in_root(root, binary)
    if not os.path.isfile(exe):
        return None  # reported where the binary is run
    libs = list(elflibs.libraries(exe, root))
    musl = [p for p in libs if os.path.basename(p).startswith(MUSL_NAMES)]
    if musl:
        return (f"{binary} runs with musl libc ({musl[0]}); the wrapper library {library} "
                "is built for glibc")
    libc = next((p for p in libs if os.path.basename(p) == "libc.so.6"), None)
    if libc is None or needs is None:
        return None  # statically linked, or nothing to compare
    data = _read(libc) or b""
    try:
        has = newest_glibc(elflibs.symbol_versions(data)[1])
    except elflibs.NotElf:
        return None
    if has is not None and has < needs:
        return (f"the wrapper library {library} needs glibc {version_name(needs)}; {binary} runs "
                f"with glibc {glibc_release(data, has)} ({libc}): ld.so would stop the server "
                "before it "
                "starts. Use a llama-server built for this distribution's glibc or newer")
    return None


def check(library: str, binary: str | None, root: str = "/") -> None:
    """Raises PreloadError naming the library, the glibc it needs and the
    server's."""
    why = problem(library, binary, root)
    if why is not None:
        raise PreloadError(why)


ExecInfo = Callable[[str], tuple[str | None, str]]  # unit -> (its binary, its root)


def model_problems(cfg: Config, library: str, exec_info: ExecInfo | None = None) -> list[str]:
    """One line per model whose server the library would not load into: the
    template's server.binary; an operator's own unit, its ExecStart= binary and
    RootDirectory= where systemd says (else the host's root)."""
    out = []
    for m in cfg.models:
        if m.kind in ("image", "container"):
            continue  # an image is read by imagecheck, per model, before its unit starts
        binary: str | None = cfg.server.binary
        root = "/"
        if m.unit is not None:
            binary, root = exec_info(m.unit) if exec_info is not None else (None, "/")
        why = problem(library, binary, root or "/")
        if why is not None:
            out.append(f"model {m.name}: {why}")
    return out
