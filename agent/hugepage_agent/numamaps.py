"""Where a process's huge pages sit, per NUMA node, from /proc/PID/numa_maps.

A hugetlb line, as the kernel writes it:
  7f..000 interleave:0-1 file=/memfd:hugepage-wrapper-heap\\040(deleted) huge anon=8
  dirty=8 N0=4 N1=4 kernelpagesize_kB=2048
The N<k>= counts are pages of that line's size. The policy is the mapping's
own (mbind), "default" where it has none; the wrapper sets it on its own
mappings (memfds named hugepage-wrapper...).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field

from hugepage_agent import consts, pools
from hugepage_agent.errors import HostError
from hugepage_agent.host import Host

_NODE_RE = re.compile(r"N([0-9]+)=([0-9]+)")


@dataclass
class NodeUse:
    """One process's (or several processes') huge pages by node."""
    node_bytes: dict[int, int] = field(default_factory=dict)
    policies: set[str] = field(default_factory=set)  # of the wrapper's mappings

    @property
    def total(self) -> int:
        return sum(self.node_bytes.values())

    def add(self, other: NodeUse) -> None:
        for n, b in other.node_bytes.items():
            self.node_bytes[n] = self.node_bytes.get(n, 0) + b
        self.policies |= other.policies

    def off(self, nodes: tuple[int, ...]) -> int:
        """Bytes outside `nodes`."""
        return sum(b for n, b in self.node_bytes.items() if n not in nodes)

    def policy_nodes(self) -> tuple[int, ...]:
        """The nodes the wrapper's policies name (bind:1, interleave:0-1)."""
        out: set[int] = set()
        for p in self.policies:
            mode, _, nodes = p.partition(":")
            if mode in ("bind", "interleave", "preferred", "prefer") and nodes:
                with contextlib.suppress(ValueError):  # a list this parser cannot read
                    out.update(pools.parse_node_list(nodes))
        return tuple(sorted(out))


def parse(text: str) -> NodeUse:
    use = NodeUse()
    for line in text.splitlines():
        words = line.split()
        if len(words) < 3 or "huge" not in words[2:]:
            continue
        size_kb = 0
        for w in words:
            if w.startswith("kernelpagesize_kB="):
                size_kb = int(w.partition("=")[2] or 0)
        if size_kb < 2048:
            continue
        for w in words[2:]:
            m = _NODE_RE.fullmatch(w)
            if m:
                node, pages = int(m.group(1)), int(m.group(2))
                use.node_bytes[node] = use.node_bytes.get(node, 0) + pages * size_kb * 1024
        if any(w.startswith(f"file=/memfd:{consts.LOG_PREFIX}") for w in words[2:]):
            # the policy is the second field; its flags (bind=static:1) dropped
            use.policies.add(re.sub(r"=[a-z|]+", "", words[1]))
    return use


def read(host: Host, pid: int) -> NodeUse | None:
    """None when the file cannot be read (another user's process, gone)."""
    try:
        text = host.read_optional(f"/proc/{pid}/numa_maps")
    except (HostError, OSError):
        return None
    return parse(text) if text is not None else None
