"""The host's NUMA topology and where each model's huge pages should go.

A model's `numa` placement (config: "auto", "interleave", "off", or nodes) is
turned here into the nodes its pages belong on, the wrapper's setting
(HUGEPAGE_WRAPPER_NUMA) and, for a pinned model, the cpuset of its unit. On a
host with one node, placement changes nothing: no setting, no cpuset.
"""

from __future__ import annotations

from dataclasses import dataclass

from hugepage_agent import pools
from hugepage_agent.config import ModelConfig
from hugepage_agent.host import Host

NODE_DIR = pools.NODE_DIR


@dataclass(frozen=True)
class Topology:
    nodes: tuple[int, ...]  # online
    cpus: tuple[tuple[int, tuple[int, ...]], ...]  # (node, its CPUs)
    memory: tuple[int, ...]  # nodes with memory

    @property
    def multi(self) -> bool:
        return len(self.nodes) > 1

    def cpus_of(self, nodes: tuple[int, ...]) -> list[int]:
        return sorted(c for n, cs in self.cpus if n in nodes for c in cs)

    def with_cpus(self) -> tuple[int, ...]:
        return tuple(n for n, cs in self.cpus if cs) or self.nodes


def read_topology(host: Host) -> Topology:
    nodes = tuple(pools.online_nodes(host))
    cpus = []
    for n in nodes:
        text = host.read_optional(f"{NODE_DIR}/node{n}/cpulist")
        cpus.append((n, tuple(pools.parse_node_list(text)) if text else ()))
    mem_text = host.read_optional(f"{NODE_DIR}/has_memory")
    memory = tuple(pools.parse_node_list(mem_text)) if mem_text else nodes
    return Topology(nodes=nodes, cpus=tuple(cpus), memory=memory)


def compact_list(values: list[int] | tuple[int, ...]) -> str:
    """[0, 1, 2, 5] -> '0-2,5', the kernel's and systemd's list syntax."""
    out: list[str] = []
    vs = sorted(set(values))
    i = 0
    while i < len(vs):
        j = i
        while j + 1 < len(vs) and vs[j + 1] == vs[j] + 1:
            j += 1
        out.append(str(vs[i]) if i == j else f"{vs[i]}-{vs[j]}")
        i = j + 1
    return ",".join(out)


def wrapper_value(m: ModelConfig) -> str | None:
    """HUGEPAGE_WRAPPER_NUMA for the model, or None for the library's default
    (auto), which the drop-in then leaves out."""
    if m.numa == "nodes":
        return compact_list(m.numa_nodes)
    return None if m.numa == "auto" else m.numa


def placement_nodes(m: ModelConfig, topo: Topology) -> tuple[int, ...]:
    """The nodes the model's huge pages belong on; () when placement is off or
    the host has one node (nothing to say)."""
    if not topo.multi or m.numa == "off":
        return ()
    if m.numa == "nodes":
        return m.numa_nodes
    if m.numa == "interleave":
        return topo.memory
    # auto: the nodes the server's CPUs span; its unit allows every CPU
    return tuple(n for n in topo.with_cpus() if n in topo.memory) or topo.memory


def cpuset(m: ModelConfig, topo: Topology) -> tuple[str, str] | None:
    """(AllowedCPUs=, AllowedMemoryNodes=) for a model pinned to nodes on a
    host with several; None otherwise."""
    if m.numa != "nodes" or not topo.multi:
        return None
    cpus = topo.cpus_of(m.numa_nodes)
    return (compact_list(cpus) if cpus else "", compact_list(m.numa_nodes))


def split_pages(pages: int, nodes: tuple[int, ...]) -> dict[int, int]:
    """A model's pages over its nodes: all on one, evenly over several (the
    wrapper interleaves each mapping from the first node, so a remainder goes
    to the first nodes)."""
    if not nodes:
        return {}
    base, extra = divmod(pages, len(nodes))
    return {n: base + (1 if i < extra else 0) for i, n in enumerate(nodes)}
