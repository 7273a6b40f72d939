"""What to reserve: the target pages from the configuration and the host."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from hugepage_agent import amounts, footprint, pools
from hugepage_agent.config import Config
from hugepage_agent.errors import ConfigError
from hugepage_agent.host import Host


@dataclass(frozen=True)
class Plan:
    page_size: int
    target: int  # pages, whole machine
    per_node: tuple[tuple[int, int], ...]  # (node, pages); empty: no NUMA split
    auto: bool
    model_pages: int  # what the models need before headroom
    limit_bytes: int
    mem_total: int
    per_model: tuple[tuple[str, int], ...] = ()  # (model, pages) behind an auto target

    @property
    def page_size_kb(self) -> int:
        return self.page_size // amounts.KIB

    @property
    def target_bytes(self) -> int:
        return self.target * self.page_size


def make_plan(cfg: Config, mem_total: int, nodes_online: list[int],
              needs: Mapping[str, int] | None = None) -> Plan:
    """`needs`: bytes each model's server takes from the pool at its peak (by
    name; a model not named needs its file size). Raises ConfigError for a
    target above the limit or a missing NUMA node."""
    pool = cfg.pool
    ps = pool.page_size
    needs = needs or {}
    per_model = tuple((m.name, amounts.pages_for(needs.get(m.name, m.size), ps))
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
    per_node: list[tuple[int, int]] = []
    for node, share in pool.nodes:
        if node not in nodes_online:
            raise ConfigError(cfg.origin("pool.nodes"), f"pool.nodes.{node}",
                              f"NUMA node {node} is not online (online: "
                              f"{', '.join(map(str, nodes_online)) or 'none'})")
        per_node.append((node, math.ceil(target * share - 1e-9)))
    if per_node:
        target = sum(n for _, n in per_node)
    return Plan(page_size=ps, target=target, per_node=tuple(per_node),
                auto=pool.size is None, model_pages=model_pages, limit_bytes=limit_bytes,
                mem_total=mem_total, per_model=per_model)


def plan_with(host: Host, cfg: Config, fps: Mapping[str, footprint.Footprint]) -> Plan:
    """The plan for these projections of the models (footprint), on this host."""
    needs = {name: fp.pool_bytes(cfg.pool.page_size) for name, fp in fps.items()}
    return make_plan(cfg, pools.mem_total_bytes(host), pools.online_nodes(host), needs)


def plan_for(host: Host, cfg: Config) -> Plan:
    """The plan from what the last apply projected for each model, or an estimate."""
    return plan_with(host, cfg, footprint.project_models(host, cfg, fresh=False))
