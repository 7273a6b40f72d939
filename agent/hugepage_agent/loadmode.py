"""How llama.cpp loads a model's weights, what that means for huge pages, and
the choice the agent makes at each start.

Under its default (mmap), llama.cpp maps the model file and, on x86, copies
the weights of the types people serve (Q4_0, Q4_K, Q6_K, Q8_0, IQ4_NL,
MXFP4...) into repack buffers on the heap; the mapped copy of those weights
is never read again, and would hold huge pages for nothing. So the agent has
llama.cpp read the weights itself, into heap buffers that the wrapper serves
from huge pages. How it reads is chosen at each start (`server.load_mode =
"auto"`, docs/benchmarks.md):
  - the page cache holds at least half of the file: a buffered read
    (`--load-mode none`), the fastest path from memory; when it is done, the
    wrapper drops the whole file from the page cache (`server.page_cache =
    "drop"`): every cached page is then a second copy of weights the server
    holds in huge pages. For a model llama.cpp repacks nothing of (F16),
    a mapping instead (`--load-mode mmap`): it leaves no dead copy, and the
    wrapper copies it with its threads, faster than llama.cpp's one-thread
    read, dropping what it read;
  - otherwise: direct I/O (`--load-mode dio`), which reads the disk at its
    speed and puts nothing in the page cache; what little was cached is
    dropped before the start, since dio does not use it.
`server.page_cache = "keep"` reads through the page cache at every start and
drops nothing, so that restarts find the file in memory, at the cost of
that memory.

Which options the server knows is read from its binary and, for a server
built with shared libraries, from the libraries it loads (elflibs), never by
running it. An operator who chooses a load mode in a model's args keeps it.
"""

from __future__ import annotations

import functools
import mmap
import os
from collections.abc import Sequence
from dataclasses import dataclass

from hugepage_agent import elflibs
from hugepage_agent.pagecache import Residency

# llama.cpp's options that choose how the weights are loaded, by generation:
# --load-mode/-lm (2026), --direct-io/--no-mmap/--mlock (earlier).
LOAD_MODE_FLAGS = ("--load-mode", "-lm")
LEGACY_FLAGS = {"--mmap": "mmap", "--no-mmap": "none", "--mlock": "mlock",
                "--direct-io": "dio", "-dio": "dio", "--no-direct-io": "mmap",
                "-ndio": "mmap"}
HEAP_MODES = ("dio", "none", "mlock")  # the weights end up in heap buffers
CACHED_SHARE = 0.5  # from this share of the file in the page cache, read buffered
AUTO = "auto"  # the agent's per-start choice (server.load_mode)
LLAMA_DEFAULT = "mmap"  # what llama.cpp does when nothing is chosen

NOTES = {
    "dio": "weights read with direct I/O into heap buffers served from huge pages; "
           "no copy of the file, no page cache",
    "none": "weights read into heap buffers served from huge pages, through the page "
            "cache",
    "mmap": "the model file is mapped: the wrapper copies it into huge pages, and the "
            "part llama.cpp repacks (quantized weights) stays there unused",
    "mlock": "weights read into heap buffers served from huge pages",
    "auto": "llama.cpp's auto: it maps the model file (see mmap)",
}
AGENT_AUTO_NOTE = ("chosen at each start: when at least half of the model file is in the "
                   "page cache, a buffered read (none), or a mapping the wrapper copies "
                   "(mmap) for a model llama.cpp repacks nothing of; else direct I/O (dio); "
                   "the weights in huge pages, no dead copy")
ENV_CHOICE = "HUGEPAGE_AGENT_LOAD"  # in the server's environment: what was chosen, and why


@dataclass(frozen=True)
class LoadMode:
    mode: str  # dio, none, mmap, mlock, auto (the agent's per-start choice, or the operator's)
    chosen_by: str  # "agent", "operator" or "llama.cpp" (its default)
    added: tuple[str, ...]  # the arguments the agent adds (auto: for a file not cached)
    cached: tuple[str, ...] | None = None  # auto: the arguments for a cached file
    evidence: str = ""  # how the agent knows which options the server has

    @property
    def note(self) -> str:
        if self.mode == AUTO and self.chosen_by == "agent":
            return AGENT_AUTO_NOTE
        return NOTES.get(self.mode, "unknown load mode")

    @property
    def heap(self) -> bool:
        return self.mode in HEAP_MODES or self.cached is not None

    @property
    def cached_mode(self) -> str | None:
        """auto: how a cached file is read (none, or mmap for a model with
        nothing to repack, which the wrapper copies in parallel)."""
        if self.cached is None:
            return None
        return "none" if "none" in self.cached or "--no-mmap" in self.cached else "mmap"

    def to_json(self) -> dict[str, object]:
        return {"mode": self.mode, "chosen_by": self.chosen_by, "note": self.note,
                "evidence": self.evidence}


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


IMAGE_SERVER = "the llama-server of image "  # server_binary's name for an image's


def server_binary(configured: str, image: str | None) -> str:
    """The server whose options choose a model's load mode: server.binary, or
    for a model with image, the image's (named, not read)."""
    return configured if image is None else f"{IMAGE_SERVER}{image}"


def find_option(binary: str, option: str) -> tuple[bool, str]:
    """Whether the server knows an option, and the evidence: the binary or the
    library whose string table names it (nothing is run). Each binary is
    searched once per version of it, however many models ask."""
    if binary.startswith(IMAGE_SERVER):
        return True, (f"{binary} is not read (it is in the image): a current llama.cpp "
                      "assumed, as in llama.cpp's server image")
    try:
        st = os.stat(binary)
    except OSError as e:
        return True, f"{binary} cannot be read ({e.strerror}): a current llama.cpp assumed"
    return _find(binary, st.st_size, st.st_mtime_ns, option)


def _has(path: str, needle: bytes) -> bool | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return False
        with mmap.mmap(fd, size, prot=mmap.PROT_READ) as m:
            return m.find(needle) >= 0
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)


@functools.lru_cache(maxsize=64)
def _find(binary: str, size: int, mtime_ns: int, option: str) -> tuple[bool, str]:
    del size, mtime_ns  # the cache key
    loose = option.encode()
    found = _has(binary, loose)
    if found is None:
        return True, f"{binary} cannot be read: a current llama.cpp assumed"
    if found:
        return True, f"{option} found in {binary}"
    libs = list(elflibs.libraries(binary))
    for lib in libs:
        if _has(lib, loose):
            return True, f"{option} found in {lib}, a library of {binary}"
    where = f"{binary} and its {len(libs)} libraries" if libs else binary
    return False, f"{option} not found in {where}"


def resolve(configured: str, binary: str, args: Sequence[str],
            mapped_ok: bool = False) -> LoadMode:
    """What a server will run with: the operator's choice, else the configured
    `server.load_mode` (auto: chosen at each start; keep: llama.cpp's default).
    `mapped_ok`: llama.cpp repacks none of the model's weights and the wrapper
    copies a mapping of its size, so that a cached file is best mapped (no dead
    copy; the wrapper's parallel copy is faster than llama.cpp's buffered read)."""
    own = operator_choice(args)
    if own is not None:
        return LoadMode(own, "operator", (), evidence="the model's args")
    if configured == "keep":
        return LoadMode(LLAMA_DEFAULT, "llama.cpp", (), evidence="server.load_mode = keep")
    has_mode, evidence = find_option(binary, "--load-mode")
    if has_mode:
        if configured == AUTO:
            return LoadMode(AUTO, "agent", ("--load-mode", "dio"),
                            cached=("--load-mode", "mmap" if mapped_ok else "none"),
                            evidence=evidence)
        return LoadMode(configured, "agent", ("--load-mode", configured), evidence=evidence)
    # an older llama.cpp: its own flags for the same
    has_dio, dio_evidence = find_option(binary, "--direct-io")
    has_nommap, nommap_evidence = find_option(binary, "--no-mmap")
    if configured in ("dio", AUTO) and has_dio:
        if configured == AUTO and has_nommap:
            return LoadMode(AUTO, "agent", ("--direct-io",),
                            cached=() if mapped_ok else ("--no-mmap",),
                            evidence=f"{evidence}; {dio_evidence}")
        return LoadMode("dio", "agent", ("--direct-io",), evidence=f"{evidence}; {dio_evidence}")
    if has_nommap:
        return LoadMode("none", "agent", ("--no-mmap",),
                        evidence=f"{evidence}; {nommap_evidence}")
    return LoadMode(LLAMA_DEFAULT, "llama.cpp", (),
                    evidence=f"{evidence}; no --direct-io or --no-mmap either: "
                             "llama.cpp's default")


@dataclass(frozen=True)
class StartChoice:
    """How one start of a server loads its weights."""
    args: tuple[str, ...]  # what the agent puts before the model's own arguments
    mode: str
    why: str
    drop_before: bool  # drop the file's page cache before the start (dio does not use it)
    drop_after: bool  # the wrapper drops it when the load has read the file

    def summary(self) -> str:
        return f"{self.mode}: {self.why}"


def _share(res: Residency) -> str:
    return f"{res.share * 100:.0f}% of the model file in the page cache"


def at_start(lm: LoadMode, res: Residency | None, page_cache: str) -> StartChoice:
    """The choice for one start, from what the page cache holds of the file
    now (None: it could not be measured) and `server.page_cache`."""
    drop = page_cache == "drop"
    if lm.cached is None:
        mode = lm.mode
        why = {"operator": "chosen by the model's args", "agent": "server.load_mode",
               "llama.cpp": "llama.cpp's default"}.get(lm.chosen_by, lm.chosen_by)
        return StartChoice(lm.added, mode, why, drop_before=drop and mode == "dio",
                           drop_after=drop and mode == "none")
    cached_mode = lm.cached_mode or "none"
    # a buffered read is dropped by the wrapper at fclose; a mapping's copy drops
    # what it read itself
    how = ("a buffered read from memory, the file dropped from the page cache after the load"
           if cached_mode == "none" else
           "the mapped file copied into huge pages from memory by the wrapper's threads, "
           "and dropped from the page cache")
    if not drop:
        return StartChoice(lm.cached, cached_mode,
                           "server.page_cache = keep: read through the page cache, the file "
                           "kept there for the next start" + (f" ({_share(res)})" if res else ""),
                           drop_before=False, drop_after=False)
    if res is None:
        return StartChoice(lm.added, "dio", "the page cache could not be measured: direct I/O",
                           drop_before=False, drop_after=False)
    if res.share >= CACHED_SHARE:
        return StartChoice(lm.cached, cached_mode, f"{_share(res)}: {how}", drop_before=False,
                           drop_after=cached_mode == "none")
    return StartChoice(lm.added, "dio", f"{_share(res)}: direct I/O from the disk",
                       drop_before=res.cached > 0, drop_after=False)


def is_llama_server(argv0: str) -> bool:
    return os.path.basename(argv0).startswith("llama-server")
