"""How llama.cpp loads a model's weights, and what that means for huge pages.

Under its default (mmap), llama.cpp maps the model file and, on x86, copies
the weights of the types people serve (Q4_0, Q4_K, Q6_K, Q8_0, IQ4_NL,
MXFP4...) into repack buffers on the heap; the mapped copy of those weights
is never read again. The wrapper serves the file mapping from huge pages, so
that dead copy would hold huge pages for nothing. Measured (docs/benchmarks.md),
the agent therefore has llama.cpp read the weights itself with direct I/O
(`--load-mode dio`): every weight lands in heap buffers that the wrapper
serves from huge pages, once, with no page cache left behind.

An operator who chooses a load mode in a model's args keeps it; the agent
says what it means for huge page coverage.
"""

from __future__ import annotations

import functools
import mmap
import os
from collections.abc import Sequence
from dataclasses import dataclass

# llama.cpp's options that choose how the weights are loaded, by generation:
# --load-mode/-lm (2026), --direct-io/--no-mmap/--mlock (earlier).
LOAD_MODE_FLAGS = ("--load-mode", "-lm")
LEGACY_FLAGS = {"--mmap": "mmap", "--no-mmap": "none", "--mlock": "mlock",
                "--direct-io": "dio", "-dio": "dio", "--no-direct-io": "mmap",
                "-ndio": "mmap"}
HEAP_MODES = ("dio", "none", "mlock")  # the weights end up in heap buffers

NOTES = {
    "dio": "weights read with direct I/O into heap buffers served from huge pages; "
           "no copy of the file, no page cache",
    "none": "weights read into heap buffers served from huge pages; the page cache "
            "keeps a copy of the file",
    "mmap": "the model file is mapped: the wrapper copies it into huge pages, and the "
            "part llama.cpp repacks (quantized weights) stays there unused",
    "mlock": "weights read into heap buffers served from huge pages",
    "auto": "llama.cpp maps the model file (see mmap)",
}


@dataclass(frozen=True)
class LoadMode:
    mode: str  # dio, none, mmap, mlock, auto
    chosen_by: str  # "agent", "operator" or "llama.cpp" (its default)
    added: tuple[str, ...]  # the arguments the agent adds

    @property
    def note(self) -> str:
        return NOTES.get(self.mode, "unknown load mode")

    @property
    def heap(self) -> bool:
        return self.mode in HEAP_MODES


def operator_choice(args: Sequence[str]) -> str | None:
    """The load mode a model's own args choose, or None."""
    for i, a in enumerate(args):
        flag, eq, value = a.partition("=")
        if flag in LOAD_MODE_FLAGS:
            if eq:
                return value
            return args[i + 1] if i + 1 < len(args) else "auto"
        if a in LEGACY_FLAGS:
            return LEGACY_FLAGS[a]
    return None


def _binary_has(binary: str, needle: bytes) -> bool:
    """Whether the server binary knows an option, from its string table (no exec).
    Each binary is searched once per version of it, however many models ask."""
    try:
        st = os.stat(binary)
    except OSError:
        return True  # cannot tell: assume a current llama.cpp
    return _search(binary, st.st_size, st.st_mtime_ns, needle)


@functools.lru_cache(maxsize=32)
def _search(binary: str, size: int, mtime_ns: int, needle: bytes) -> bool:
    del mtime_ns  # the cache key
    if size == 0:
        return False
    try:
        fd = os.open(binary, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return True
    try:
        with mmap.mmap(fd, size, prot=mmap.PROT_READ) as m:
            return m.find(needle) >= 0
    except (OSError, ValueError):
        return True
    finally:
        os.close(fd)


def resolve(configured: str, binary: str, args: Sequence[str]) -> LoadMode:
    """What a server will run with: the operator's choice, else the configured
    `server.load_mode` ("keep": llama.cpp's default)."""
    own = operator_choice(args)
    if own is not None:
        return LoadMode(own, "operator", ())
    if configured == "keep":
        return LoadMode("auto", "llama.cpp", ())
    if _binary_has(binary, b"--load-mode"):
        return LoadMode(configured, "agent", ("--load-mode", configured))
    # an older llama.cpp: its own flags for the same
    if configured == "dio" and _binary_has(binary, b"--direct-io"):
        return LoadMode("dio", "agent", ("--direct-io",))
    if _binary_has(binary, b"--no-mmap"):
        return LoadMode("none", "agent", ("--no-mmap",))
    return LoadMode("auto", "llama.cpp", ())


def is_llama_server(argv0: str) -> bool:
    return os.path.basename(argv0).startswith("llama-server")
