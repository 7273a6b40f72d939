"""How much of a model file sits in huge pages, from /proc/PID/smaps.

The wrapper names its hugetlb memfd `hugepage-wrapper:<path>`, so smaps shows
`/memfd:hugepage-wrapper:<path> (deleted)` with the huge page bytes; a plain
file mapping shows the path itself (with FilePmdMapped, the part the kernel
maps with 2 MiB entries from the page cache)."""

from __future__ import annotations

from dataclasses import dataclass

from hugepage_agent.host import Host

MEMFD_PREFIX = "/memfd:hugepage-wrapper:"
LIBRARY_NAME = "libhugepage-wrapper.so"


@dataclass(frozen=True)
class Coverage:
    hugetlb_bytes: int
    page_size_kb: int | None
    file_mapped_bytes: int  # the file mapped directly (fallback or no wrapper)
    file_pmd_bytes: int
    wrapper_loaded: bool
    filling: bool  # the copy is still being written (the wrapper makes it read-only after)


def parse_smaps(text: str, model_path: str) -> Coverage:
    hugetlb = file_rss = pmd = 0
    page_kb: int | None = None
    wrapper = False
    filling = False
    target = None  # "memfd" | "file" | None for the current mapping
    want_memfd = f"{MEMFD_PREFIX}{model_path}"
    for line in text.splitlines():
        head = line.split(None, 5)
        if head and "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
            name = head[5] if len(head) > 5 else ""
            if name.endswith(" (deleted)"):
                name = name[: -len(" (deleted)")]
            if name.endswith(LIBRARY_NAME):
                wrapper = True
            target = "memfd" if name == want_memfd else "file" if name == model_path else None
            if target == "memfd" and "w" in head[1]:
                filling = True
            continue
        if target is None:
            continue
        key, _, rest = line.partition(":")
        parts = rest.split()
        if not parts or not parts[0].isdigit():
            continue
        kb = int(parts[0])
        if target == "memfd" and key in ("Private_Hugetlb", "Shared_Hugetlb"):
            hugetlb += kb * 1024
        elif target == "memfd" and key == "KernelPageSize":
            page_kb = kb
        elif target == "file" and key == "Rss":
            file_rss += kb * 1024
        elif target == "file" and key == "FilePmdMapped":
            pmd += kb * 1024
    return Coverage(hugetlb, page_kb, file_rss, pmd, wrapper, filling)


def read_coverage(host: Host, pid: int, model_path: str) -> Coverage | None:
    """None when the process's smaps cannot be read (gone, or another user's)."""
    try:
        text = host.read_optional(f"/proc/{pid}/smaps")
    except Exception:
        return None
    return parse_smaps(text, model_path) if text is not None else None


def pids_holding(host: Host, model_path: str) -> list[int]:
    """Processes that map this model, those holding the huge page copy first
    (for hosts without systemd, or programs started with `hugepage-agent
    exec`). Only the processes whose maps the caller may read are seen."""
    copy = f"{MEMFD_PREFIX}{model_path} (deleted)\n"
    plain = f" {model_path}\n"  # a fallback maps the file itself
    copies, plains = [], []
    for p in host.glob("/proc/[0-9]*/maps"):
        try:
            text = host.read_optional(p)
        except Exception:
            continue
        if text and copy in text:
            copies.append(int(p.split("/")[2]))
        elif text and plain in text:
            plains.append(int(p.split("/")[2]))
    return sorted(copies) + sorted(plains)
