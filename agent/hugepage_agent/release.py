"""`hugepage-agent release`: the explicit act that gives the pool back.

Stopping the daemon never does this (a pool freed on stop took down
OpenShift nodes: OCPBUGS-13065)."""

from __future__ import annotations

import logging

from hugepage_agent import persist, reserve
from hugepage_agent.apply import controls, plan_for
from hugepage_agent.config import Config
from hugepage_agent.host import Host

log = logging.getLogger(__name__)


def release(host: Host, cfg: Config) -> str:
    plan = plan_for(host, cfg)
    ctls = controls(host, plan)
    result = reserve.reserve([reserve.Target(c, 0) for c in ctls], timeout=0)
    removed = [p for p in (persist.SYSCTL_FILE, persist.TMPFILES_FILE) if host.remove(p)]
    lines = [f"{label}: {have} pages left (in use)" if have else f"{label}: released"
             for label, _goal, have in result.per_pool]
    lines += [f"removed {p}" for p in removed]
    return "\n".join(lines)
