"""What to reserve: the target pages from the configuration and the host."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

from hugepage_agent import amounts, footprint, numanodes, pools
from hugepage_agent.config import Config
from hugepage_agent.errors import ConfigError
from hugepage_agent.host import Host


class NodePages(NamedTuple):
    node: int
    pages: int


class ModelPages(NamedTuple):
    model: str
    pages: int


class ModelSplit(NamedTuple):
    """Where one model's pages go: its pages on each node."""
    model: str
    nodes: tuple[NodePages, ...]


@dataclass(frozen=True)
class Plan:
    page_size: int
    target: int  # pages, whole machine
    per_node: tuple[NodePages, ...]  # empty: no NUMA split
    auto: bool
    model_pages: int  # what the models need before headroom
    limit_bytes: int
    mem_total: int
    per_model: tuple[ModelPages, ...] = ()  # behind an auto target
    # where each model's pages go, on a host with several nodes and an auto pool
    model_nodes: tuple[ModelSplit, ...] = ()

    @property
    def page_size_kb(self) -> int:
        return self.page_size // amounts.KIB

    @property
    def target_bytes(self) -> int:
        return self.target * self.page_size


def _auto_per_node(cfg: Config, per_model: tuple[ModelPages, ...], headroom: int,
                   topo: numanodes.Topology, node_mem: Mapping[int, int]
                   ) -> tuple[list[NodePages], tuple[ModelSplit, ...]]:
    """Each node's pool from the models' placements: a model's pages all on
    its node, or evenly over its nodes (a model with placement off, evenly
    over every node with memory, as the kernel spreads a global pool), and the
    headroom in proportion. Raises ConfigError for a node above pool.limit."""
    ps = cfg.pool.page_size
    need = {n: 0 for n in topo.memory}
    on_node: dict[int, list[str]] = {n: [] for n in topo.memory}
    splits = []
    for m, (name, pages) in zip(cfg.models, per_model):
        split = numanodes.split_pages(pages, numanodes.placement_nodes(m, topo) or topo.memory)
        splits.append(ModelSplit(name, tuple(NodePages(n, k) for n, k in sorted(split.items()))))
        for n, k in split.items():
            need[n] = need.get(n, 0) + k
            if k:
                on_node.setdefault(n, []).append(name)
    total = sum(need.values())
    per_node = []
    for n in sorted(need):
        share = need[n] / total if total else 1 / len(need)
        pages = need[n] + math.ceil(headroom * share - 1e-9)
        per_node.append(NodePages(n, pages))
        limit = cfg.pool.limit.resolve_bytes(ps, node_mem.get(n, 0)) if n in node_mem else None
        if limit is not None and pages * ps > limit:
            names = ", ".join(on_node.get(n, [])) or "none"
            raise ConfigError(
                cfg.origin("pool.limit"), "pool.limit",
                f"NUMA node {n} would need {pages} x {amounts.page_size_name(ps)} pages "
                f"({amounts.human_bytes(pages * ps)}) for models {names} plus headroom, above "
                f"its limit of {amounts.human_bytes(limit)} (pool.limit of node {n}'s "
                f"{amounts.human_bytes(node_mem[n])} MemTotal): pin fewer models there "
                "(model.numa) or raise pool.limit")
    return per_node, tuple(splits)


def make_plan(cfg: Config, mem_total: int, nodes_online: list[int],
              needs: Mapping[str, int] | None = None, *,
              topo: numanodes.Topology | None = None,
              node_mem: Mapping[int, int] | None = None) -> Plan:
    """`needs`: bytes each model's server takes from the pool at its peak (by
    name; a model not named needs its file size). `topo`, `node_mem` (bytes
    per node): on a host with several NUMA nodes, an auto pool is split per
    node. Raises ConfigError for a target above the limit (the whole machine's,
    or a node's) or a missing NUMA node."""
    pool = cfg.pool
    ps = pool.page_size
    needs = needs or {}
    per_model = tuple(ModelPages(m.name, amounts.pages_for(needs.get(m.name, m.size), ps))
                      for m in cfg.models)
    model_pages = sum(p for _, p in per_model)
    if pool.size is None:
        target = model_pages + pool.headroom.resolve_pages(ps, model_pages * ps)
    else:
        target = pool.size.resolve_pages(ps, mem_total)
    limit_bytes = pool.limit.resolve_bytes(ps, mem_total)
    if target * ps > limit_bytes:
        key = "pool.size" if pool.size is not None else "model"
        what = ("the configured size" if pool.size is not None
                else f"the models ({len(cfg.models)}) plus headroom")
        raise ConfigError(
            cfg.origin(key) if pool.size is not None else cfg.origin("pool.limit"),
            "pool.limit" if pool.size is None else "pool.size",
            f"{what} needs {target} x {amounts.page_size_name(ps)} pages "
            f"({amounts.human_bytes(target * ps)}), above the limit of "
            f"{amounts.human_bytes(limit_bytes)} (pool.limit of "
            f"{amounts.human_bytes(mem_total)} MemTotal)")
    per_node: list[NodePages] = []
    model_nodes: tuple[ModelSplit, ...] = ()
    if pool.size is None and not pool.nodes and topo is not None and topo.multi:
        per_node, model_nodes = _auto_per_node(cfg, per_model, target - model_pages, topo,
                                               node_mem or {})
    for node, share in pool.nodes:
        if node not in nodes_online:
            raise ConfigError(cfg.origin("pool.nodes"), f"pool.nodes.{node}",
                              f"NUMA node {node} is not online (online: "
                              f"{', '.join(map(str, nodes_online)) or 'none'})")
        per_node.append(NodePages(node, math.ceil(target * share - 1e-9)))
    if per_node:
        target = sum(n for _, n in per_node)
    return Plan(page_size=ps, target=target, per_node=tuple(per_node),
                auto=pool.size is None, model_pages=model_pages, limit_bytes=limit_bytes,
                mem_total=mem_total, per_model=per_model, model_nodes=model_nodes)


def plan_with(host: Host, cfg: Config, fps: Mapping[str, footprint.Footprint],
              topo: numanodes.Topology | None = None) -> Plan:
    """The plan for these projections of the models (footprint), on this host
    (`topo`: its NUMA nodes, when the caller has read them)."""
    needs = {name: fp.pool_bytes(cfg.pool.page_size) for name, fp in fps.items()}
    topo = topo or numanodes.read_topology(host)
    node_mem = {}
    for n in topo.nodes if topo.multi else ():
        text = host.read_optional(f"{pools.NODE_DIR}/node{n}/meminfo")
        if text:
            node_mem[n] = pools.parse_node_meminfo(text).get("MemTotal", 0) * amounts.KIB
    return make_plan(cfg, pools.mem_total_bytes(host), pools.online_nodes(host), needs,
                     topo=topo, node_mem=node_mem)


def plan_for(host: Host, cfg: Config) -> Plan:
    """The plan from what the last apply projected for each model, or an estimate."""
    return plan_with(host, cfg, footprint.project_models(host, cfg, fresh=False))
