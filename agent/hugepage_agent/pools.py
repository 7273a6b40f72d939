"""The kernel's explicit huge page pools, per page size and NUMA node.

Pure parsers (`parse_*`) beside thin readers that go through the Host.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass

from hugepage_agent.errors import HostError
from hugepage_agent.host import Host

MEMINFO = "/proc/meminfo"
NR_HUGEPAGES = "/proc/sys/vm/nr_hugepages"
COMPACT_MEMORY = "/proc/sys/vm/compact_memory"
DROP_CACHES = "/proc/sys/vm/drop_caches"
HUGEPAGES_DIR = "/sys/kernel/mm/hugepages"
NODE_DIR = "/sys/devices/system/node"

_SIZE_DIR_RE = re.compile(r"hugepages-(\d+)kB$")


@dataclass(frozen=True)
class PoolState:
    page_size_kb: int
    node: int | None  # None: the whole machine
    total: int
    free: int
    reserved: int | None  # the kernel counts reservations only globally
    surplus: int

    @property
    def in_use(self) -> int:
        return self.total - self.free


def parse_meminfo(text: str) -> dict[str, int]:
    """'MemTotal:  24576 kB' -> {'MemTotal': 24576}; counts stay counts."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[key.strip()] = int(parts[0])
    return out


def parse_node_meminfo(text: str) -> dict[str, int]:
    """A node's meminfo ('Node 0 MemFree:  123 kB') as parse_meminfo gives it."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        words = line.split(None, 2)
        if len(words) == 3 and words[0] == "Node":
            out.update(parse_meminfo(words[2]))
    return out


def room_bytes(info: dict[str, int]) -> tuple[int, int]:
    """(free, reclaimable) bytes from a meminfo: free pages, then the file LRU
    (page cache the kernel can write back and drop) and reclaimable slab."""
    free = info.get("MemFree", 0)
    reclaimable = (info.get("Active(file)", 0) + info.get("Inactive(file)", 0)
                   + info.get("SReclaimable", 0))
    return free * 1024, reclaimable * 1024


def parse_node_list(text: str) -> list[int]:
    """'0-2,4' -> [0, 1, 2, 4]."""
    nodes: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        nodes.extend(range(int(lo), int(hi or lo) + 1))
    return nodes


def read_meminfo(host: Host) -> dict[str, int]:
    return parse_meminfo(host.read(MEMINFO))


def mem_total_bytes(host: Host) -> int:
    return read_meminfo(host)["MemTotal"] * 1024


def default_page_size_kb(host: Host) -> int:
    return read_meminfo(host).get("Hugepagesize", 2048)


def supported_sizes_kb(host: Host) -> list[int]:
    sizes = []
    for p in host.glob(f"{HUGEPAGES_DIR}/hugepages-*kB"):
        m = _SIZE_DIR_RE.search(p)
        if m:
            sizes.append(int(m.group(1)))
    return sorted(sizes)


def online_nodes(host: Host) -> list[int]:
    text = host.read_optional(f"{NODE_DIR}/online")
    if text is None:
        return [0] if host.exists(f"{NODE_DIR}/node0") else []
    return parse_node_list(text)


def size_dir(page_size_kb: int, node: int | None = None) -> str:
    if node is None:
        return f"{HUGEPAGES_DIR}/hugepages-{page_size_kb}kB"
    return f"{NODE_DIR}/node{node}/hugepages/hugepages-{page_size_kb}kB"


def knob_path(host: Host, page_size_kb: int, node: int | None = None) -> str:
    """Where the pool size is written: vm.nr_hugepages for the default size."""
    if node is None and page_size_kb == default_page_size_kb(host):
        return NR_HUGEPAGES
    return f"{size_dir(page_size_kb, node)}/nr_hugepages"


def read_pool(host: Host, page_size_kb: int, node: int | None = None) -> PoolState:
    d = size_dir(page_size_kb, node)
    resv = host.read_int(f"{d}/resv_hugepages") if node is None else None
    return PoolState(
        page_size_kb=page_size_kb,
        node=node,
        total=host.read_int(f"{d}/nr_hugepages"),
        free=host.read_int(f"{d}/free_hugepages"),
        reserved=resv,
        surplus=host.read_int(f"{d}/surplus_hugepages"),
    )


def read_pools(host: Host) -> list[PoolState]:
    """Every pool: per size globally, then per size and node where nodes exist."""
    out = []
    sizes = supported_sizes_kb(host)
    for kb in sizes:
        out.append(read_pool(host, kb))
    for node in online_nodes(host):
        for kb in sizes:
            if host.exists(size_dir(kb, node)):
                out.append(read_pool(host, kb, node))
    return out


def compact(host: Host, node: int | None = None) -> None:
    if node is None:
        host.write_knob(COMPACT_MEMORY, "1")
    else:
        host.write_knob(f"{NODE_DIR}/node{node}/compact", "1")


def drop_caches(host: Host) -> None:
    """Drop clean page cache only (1), never dentries and inodes."""
    host.write_knob(DROP_CACHES, "1")


class KernelPool:
    """One real pool (a page size, globally or on one node) as a PoolControl."""

    def __init__(self, host: Host, page_size_kb: int, node: int | None = None) -> None:
        self.host = host
        self.page_size_kb = page_size_kb
        self.node = node
        self.knob = knob_path(host, page_size_kb, node)
        self.page_bytes = page_size_kb * 1024
        where = f" on node {node}" if node is not None else ""
        self.label = f"{page_size_kb // 1024 if page_size_kb < 1048576 else 1}" \
                     f"{'M' if page_size_kb < 1048576 else 'G'} pool{where}"

    def total(self) -> int:
        return self.host.read_int(f"{size_dir(self.page_size_kb, self.node)}/nr_hugepages")

    def in_use(self) -> int:
        st = read_pool(self.host, self.page_size_kb, self.node)
        return st.in_use + (st.reserved or 0)

    def write(self, pages: int) -> None:
        self.host.write_knob(self.knob, str(pages))

    def compact(self) -> None:
        compact(self.host, self.node)

    def compact_nodes(self) -> None:
        for node in ([self.node] if self.node is not None else online_nodes(self.host)):
            compact(self.host, node)

    def nodes_differ(self) -> bool:
        return self.node is None and len(online_nodes(self.host)) > 1

    def evacuate(self, pages: int) -> bool:
        gib_kb = 1048576
        knob = f"{size_dir(gib_kb, self.node)}/nr_hugepages"
        if self.page_size_kb == gib_kb or not self.host.exists(knob):
            return False
        try:
            before = self.host.read_int(knob)
        except HostError:
            return False
        try:
            self.write(self.in_use())  # its free pages must not pin the ranges to empty
            gib = -(-pages * self.page_size_kb // gib_kb)
            # no more 1 GiB pages than free memory can hold: asking for more makes
            # the kernel try, and fail, to empty ranges for every one of them
            free, _ = self.room()
            gib = max(1, min(gib, free // (gib_kb * 1024)))
            self.host.write_knob(knob, str(before + gib))
        except HostError:
            return False
        finally:
            with contextlib.suppress(HostError):
                self.host.write_knob(knob, str(before))
        return True

    def reclaim(self, nbytes: int) -> bool:
        nodes = [self.node] if self.node is not None else online_nodes(self.host)
        knobs = [f"{NODE_DIR}/node{n}/reclaim" for n in nodes]
        knobs = [k for k in knobs if self.host.exists(k)]
        for k in knobs:  # a global pool: each node its share
            with contextlib.suppress(HostError):  # EAGAIN: less was reclaimable
                self.host.write_knob(k, str(max(nbytes // len(knobs), 1 << 20)))
        return bool(knobs)

    def room(self) -> tuple[int, int]:
        if self.node is None:
            return room_bytes(read_meminfo(self.host))
        text = self.host.read_optional(f"{NODE_DIR}/node{self.node}/meminfo")
        return room_bytes(parse_node_meminfo(text or ""))


def free_above_target(total: int, held: int, target: int) -> int:
    """A pool's pages above its target that nothing holds (`held`: in use or
    reserved): what an apply gives back now. The rest above the target goes
    back as the servers holding it free it."""
    return max(0, total - max(target, held))
