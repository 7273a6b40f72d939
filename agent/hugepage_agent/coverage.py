"""What a model server's memory sits in, from /proc/PID/smaps.

The wrapper names its hugetlb memory, so smaps attributes it:
  - `/memfd:hugepage-wrapper:<path> (deleted)`: the model file mapping, copied;
  - `/memfd:hugepage-wrapper-heap (deleted)`: large heap allocations (weights
    read by llama.cpp itself, repack buffers, KV cache, compute buffers).
What is not in huge pages: the model file mapped directly (a fallback, or no
wrapper; FilePmdMapped is the part the kernel maps with 2 MiB entries from
the page cache) and large anonymous mappings (allocations of at least the
wrapper's threshold that libc served, in 4 KiB pages, when the pool was short).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hugepage_agent import consts
from hugepage_agent.errors import HostError
from hugepage_agent.host import Host

MEMFD_PREFIX = f"/memfd:{consts.FILE_MEMFD_PREFIX}"  # as /proc/PID/maps names them
HEAP_MEMFD = f"/memfd:{consts.HEAP_MEMFD}"
LIBRARY_NAME = consts.LIBRARY_NAME

_FILE, _HEAP, _PLAIN, _ANON = "file", "heap", "plain", "anon"


@dataclass(frozen=True)
class Coverage:
    file_hugetlb_bytes: int  # the model file's copy in huge pages
    heap_hugetlb_bytes: int  # allocations in huge pages
    page_size_kb: int | None
    file_mapped_bytes: int  # the file mapped directly (fallback or no wrapper)
    file_pmd_bytes: int
    large_anon_bytes: int  # large allocations in 4 KiB pages
    wrapper_loaded: bool
    filling: bool  # the file copy is still being written (the wrapper makes it read-only after)

    @property
    def hugetlb_bytes(self) -> int:
        return self.file_hugetlb_bytes + self.heap_hugetlb_bytes

    @property
    def fallback_bytes(self) -> int:
        """Large memory of the server that is not in huge pages."""
        return self.file_mapped_bytes + self.large_anon_bytes


def _vma_kind(head: list[str], model_path: str, large: int) -> str | None:
    name = head[5] if len(head) > 5 else ""
    if name.endswith(" (deleted)"):
        name = name[: -len(" (deleted)")]
    if name == f"{MEMFD_PREFIX}{model_path}":
        return _FILE
    if name == HEAP_MEMFD:
        return _HEAP
    if name == model_path:
        return _PLAIN
    if name == "" and large and "rw" in head[1]:
        lo, _, hi = head[0].partition("-")
        if int(hi, 16) - int(lo, 16) >= large:
            return _ANON
    return None


def parse_smaps(text: str, model_path: str, large: int = 0) -> Coverage:
    """`large`: the size from which an anonymous mapping counts as a large
    allocation (the wrapper's threshold; 0: not counted)."""
    sums = {_FILE: 0, _HEAP: 0, _PLAIN: 0, _ANON: 0}
    pmd = 0
    page_kb: int | None = None
    wrapper = filling = False
    kind: str | None = None
    for line in text.splitlines():
        head = line.split(None, 5)
        if head and "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
            if (head[5] if len(head) > 5 else "").removesuffix(" (deleted)").endswith(
                    LIBRARY_NAME):
                wrapper = True  # loaded, even when the file was replaced since
            kind = _vma_kind(head, model_path, large)
            if kind == _FILE and "w" in head[1]:
                filling = True
            continue
        if kind is None:
            continue
        key, _, rest = line.partition(":")
        parts = rest.split()
        if not parts or not parts[0].isdigit():
            continue
        kb = int(parts[0])
        if kind in (_FILE, _HEAP):
            if key in ("Private_Hugetlb", "Shared_Hugetlb"):
                sums[kind] += kb * 1024
            elif key == "KernelPageSize":
                page_kb = kb
        elif key == "Rss":
            sums[kind] += kb * 1024
        elif kind == _PLAIN and key == "FilePmdMapped":
            pmd += kb * 1024
    return Coverage(file_hugetlb_bytes=sums[_FILE], heap_hugetlb_bytes=sums[_HEAP],
                    page_size_kb=page_kb, file_mapped_bytes=sums[_PLAIN], file_pmd_bytes=pmd,
                    large_anon_bytes=sums[_ANON], wrapper_loaded=wrapper, filling=filling)


def large(cov: Coverage) -> bool:
    """Whether a process holds large memory: huge pages, or large 4 KiB memory."""
    return cov.hugetlb_bytes > 0 or cov.fallback_bytes > 0


def combine(covs: Sequence[Coverage]) -> Coverage:
    """The memory of several server processes (a unit that runs more than one)."""
    return Coverage(
        file_hugetlb_bytes=sum(c.file_hugetlb_bytes for c in covs),
        heap_hugetlb_bytes=sum(c.heap_hugetlb_bytes for c in covs),
        page_size_kb=next((c.page_size_kb for c in covs if c.page_size_kb), None),
        file_mapped_bytes=sum(c.file_mapped_bytes for c in covs),
        file_pmd_bytes=sum(c.file_pmd_bytes for c in covs),
        large_anon_bytes=sum(c.large_anon_bytes for c in covs),
        wrapper_loaded=bool(covs) and all(c.wrapper_loaded for c in covs),
        filling=any(c.filling for c in covs))


def read_coverage(host: Host, pid: int, model_path: str, large: int = 0) -> Coverage | None:
    """None when the process's smaps cannot be read (gone, or another user's)."""
    try:
        text = host.read_optional(f"/proc/{pid}/smaps")
    except HostError:  # another user's process
        return None
    return parse_smaps(text, model_path, large) if text is not None else None


def pids_holding(host: Host, model_path: str) -> list[int]:
    """Processes that map this model, those holding the huge page copy first
    (for hosts without systemd, or programs started with `hugepage-agent
    exec`). A server that read its weights itself (load mode dio or none) maps
    no file: it is found by its command line naming the model. Only the
    processes whose maps the caller may read are seen."""
    copy = f"{MEMFD_PREFIX}{model_path} (deleted)\n"
    plain = f" {model_path}\n"  # a fallback maps the file itself
    copies, plains, named = [], [], []
    for p in host.glob("/proc/[0-9]*/maps"):
        pid = int(p.split("/")[2])
        try:
            text = host.read_optional(p)
        except (HostError, UnicodeDecodeError):  # gone, or not ours to read
            continue
        if text and copy in text:
            copies.append(pid)
        elif text and plain in text:
            plains.append(pid)
        elif text and LIBRARY_NAME in text and _cmdline_names(host, pid, model_path):
            named.append(pid)
    return sorted(copies) + sorted(plains) + sorted(named)


def _cmdline_names(host: Host, pid: int, model_path: str) -> bool:
    try:
        raw = host.read_optional(f"/proc/{pid}/cmdline")
    except (HostError, UnicodeDecodeError):
        return False
    return raw is not None and model_path in raw.split("\0")
