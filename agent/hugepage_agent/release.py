"""`hugepage-agent release`: the explicit act that gives the pool back.

Stopping the daemon never does this (a pool freed on stop took down
OpenShift nodes: OCPBUGS-13065)."""

from __future__ import annotations

import logging

from hugepage_agent import persist, pools, reserve
from hugepage_agent.config import Config
from hugepage_agent.host import Host

log = logging.getLogger(__name__)


def release(host: Host, cfg: Config) -> str:
    """Gives back the configured pools (per node where configured). Needs
    neither the model files nor a plan: only the page size and the nodes."""
    kb = cfg.pool.page_size // 1024
    ctls = ([pools.KernelPool(host, kb, node) for node, _ in cfg.pool.nodes]
            or [pools.KernelPool(host, kb)])
    result = reserve.reserve([reserve.Target(c, 0) for c in ctls], timeout=0)
    removed = [p for p in (persist.SYSCTL_FILE, persist.TMPFILES_FILE) if host.remove(p)]
    lines = [f"{label}: {have} pages left (in use)" if have else f"{label}: released"
             for label, _goal, have in result.per_pool]
    lines += [f"removed {p}" for p in removed]
    return "\n".join(lines)
