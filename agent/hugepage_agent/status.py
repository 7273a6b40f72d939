"""`hugepage-agent status`: is the host as configured?

Collects plain data (the JSON schema, version 2, documented in the README)
and renders it for people. Reads only; works without root.
"""

from __future__ import annotations

import contextlib
import logging
import os

from hugepage_agent import (
    __version__,
    amounts,
    containerfind,
    coverage,
    execwrap,
    footprint,
    journal,
    loadmode,
    numamaps,
    numanodes,
    pagecache,
    persist,
    pools,
    preload,
    procs,
    startrecord,
    thp,
    unitfiles,
)
from hugepage_agent import state as state_file
from hugepage_agent.config import Config, ModelConfig
from hugepage_agent.errors import AgentError, HostError
from hugepage_agent.host import Host
from hugepage_agent.plan import Plan, plan_with
from hugepage_agent.statusdoc import (
    SCHEMA_VERSION,
    ModelEntry,
    NumaEntry,
    PoolEntry,
    ProcessEntry,
    StatusDoc,
)
from hugepage_agent.systemd import Systemd, SystemdError, UnitState

log = logging.getLogger(__name__)



def _pool_entry(p: pools.PoolState, plan: Plan | None) -> PoolEntry:
    target: int | None = None
    need: int | None = None  # what the models' projections put here, before headroom
    if plan is not None and p.page_size_kb == plan.page_size_kb:
        if p.node is None:
            target = plan.target
            need = plan.model_pages
        elif plan.per_node:
            target = dict(plan.per_node).get(p.node)
            need = sum(dict(split).get(p.node, 0) for _, split in plan.model_nodes) \
                if plan.model_nodes else None
    held = p.in_use + (p.reserved or 0)  # what no write can take back now
    above = max(0, p.total - target) if target is not None else None
    free = pools.free_above_target(p.total, held, target) if target is not None else 0
    return {
        "page_size_kb": p.page_size_kb,
        "node": p.node,
        "total": p.total,
        "free": p.free,
        "reserved": p.reserved,
        "surplus": p.surplus,
        "in_use": p.in_use,
        "target": target,
        "models_need": need,
        "shortfall": max(0, target - p.total) if target is not None else None,
        # above target: held by running servers (the pool shrinks as they free
        # them), or free (the next apply gives them back)
        "above_target": above,
        "above_target_held": above - free if above is not None else None,
    }


def _numa_entry(host: Host, m: ModelConfig, pids: list[int],
                topo: numanodes.Topology) -> NumaEntry:
    """Where the server's huge pages sit per node (numa_maps), against the
    nodes its placement names: the configured ones, or for auto, those the
    wrapper's policies name (none when it kept a policy the server had)."""
    use = numamaps.NodeUse()
    for pid in pids:
        u = numamaps.read(host, pid)
        if u is not None:
            use.add(u)
    nodes = numanodes.placement_nodes(m, topo)
    if m.numa == "auto" and nodes:
        nodes = use.policy_nodes()
    off = use.off(nodes) if nodes else 0
    return {
        "placement": list(m.numa_nodes) if m.numa == "nodes" else m.numa,
        "multi_node": topo.multi,
        "nodes": list(nodes),
        "policies": sorted(use.policies),
        "node_bytes": {str(n): b for n, b in sorted(use.node_bytes.items())},
        "off_node_bytes": off,
        # one node: nothing can be off it (0, so that the metric and its alert
        # exist on every host); several, with no placement named: unknown
        "off_node_ratio": (round(off / use.total, 4) if use.total and nodes
                           else None if topo.multi else 0.0),
    }


MISPLACED_SHARE = 0.02  # of a model's huge pages outside its nodes: misplaced


def _model_entry(host: Host, cfg: Config, m: ModelConfig,
                 ctx: tuple[Systemd | None, footprint.Footprint | None, numanodes.Topology],
                 problems: list[str]) -> ModelEntry:
    systemd, fp, topo = ctx
    unit = unitfiles.unit_for(m)
    lm = footprint.load_mode(cfg.server.load_mode,
                             loadmode.server_binary(cfg.server.binary, m.image), m.path, m.args,
                             cfg.wrapper.min_size) \
        if m.kind in ("template", "image") else loadmode.LoadMode(
            "unknown", f"operator's {m.kind}", (),
            evidence="the unit's own ExecStart=" if m.kind == "unit"
            else "the container's own command")
    res = pagecache.residency(m.path)
    entry: ModelEntry = {
        "name": m.name, "path": m.path, "unit": unit, "active": None, "state": None,
        "pid": None, "model_bytes": m.size, "hugetlb_bytes": None,
        "hugetlb_file_bytes": None, "hugetlb_alloc_bytes": None, "fallback_bytes": None,
        "dead_bytes": None, "used_bytes": None, "coverage": None,
        "page_size_kb": None, "wrapper_loaded": None, "file_pmd_bytes": None,
        "load_mode": {"mode": lm.mode, "chosen_by": lm.chosen_by, "note": lm.note,
                      "evidence": lm.evidence, "at_start": None},
        "page_cache_bytes": res.cached if res is not None else None,
        "processes": [], "main_pid": None, "restart": m.restart, "restart_pending": None,
        "numa": None, "container": None, "verdict": "unknown",
    }
    servers, unit_state = _find_servers(host, m, systemd, entry, cfg.wrapper.alloc_min_size)
    refused = _refused(host, m, unit_state)
    if refused is not None:  # what its unit runs is the check again, or nothing
        entry["pid"], entry["verdict"] = None, f"refused: {refused}"
        problems.append(f"model {m.name}: {entry['verdict']}")
        return entry
    pid = servers[0][0] if servers else 0
    if pid:
        entry["pid"] = pid
        entry["load_mode"]["at_start"] = _start_choice(host, m, pid)
    if not pid:
        if systemd is None and m.kind != "container":
            entry["verdict"] = "unknown: systemd not reachable, no process holds the model"
        elif entry["verdict"] == "unknown":
            entry["verdict"] = "not running"
            if m.autostart:
                problems.append(f"model {m.name}: {unit} is {entry['state']}")
        return entry
    readable = [c for _, c in servers if c is not None]
    if not readable:
        entry["verdict"] = f"unknown: cannot read /proc/{pid}/smaps (run as root)"
        return entry
    cov = coverage.combine(readable)
    entry["processes"] = [_process_entry(host, p, c, fp) for p, c in servers if c is not None]
    dead, used, covered = _figures(cov, fp)
    share = covered or 0.0
    entry["hugetlb_bytes"] = cov.hugetlb_bytes
    entry["hugetlb_file_bytes"] = cov.file_hugetlb_bytes
    entry["hugetlb_alloc_bytes"] = cov.heap_hugetlb_bytes
    entry["fallback_bytes"] = cov.fallback_bytes
    entry["dead_bytes"] = dead
    entry["used_bytes"] = used
    entry["coverage"] = round(min(share, 1.0), 4)
    entry["page_size_kb"] = cov.page_size_kb
    entry["wrapper_loaded"] = cov.wrapper_loaded
    entry["file_pmd_bytes"] = cov.file_pmd_bytes
    entry["verdict"] = _verdict(host, m, cov, entry, (pid, lm, fp), dead=dead, used=used)
    numa = entry["numa"] = _numa_entry(host, m, [p for p, c in servers if c is not None], topo)
    if numa["off_node_ratio"] is not None and numa["off_node_ratio"] > MISPLACED_SHARE:
        misplaced = (f"misplaced: {numa['off_node_ratio'] * 100:.0f} % of its huge pages off "
                     f"node(s) {numanodes.compact_list(numa['nodes'])}")
        entry["verdict"] = (misplaced if entry["verdict"] == "loaded"
                            else f"{entry['verdict']}; {misplaced}")
    pending = pending_changes(host, cfg, m, unit_state)
    if pending:
        entry["restart_pending"] = pending
        entry["verdict"] = (startrecord.describe(pending) if entry["verdict"] == "loaded"
                            else f"{entry['verdict']}; {startrecord.describe(pending)}")
    if entry["verdict"] != "loaded":
        problems.append(f"model {m.name}: {entry['verdict']} "
                        f"({share * 100:.1f}% of {amounts.human_bytes(used)} in huge pages)")
    return entry


def _refused(host: Host, m: ModelConfig, unit_state: UnitState | None) -> str | None:
    """Why the last start of a model's container was refused (its image),
    while its unit runs no server: failed, or trying again (systemd restarts it
    a few times, each start checking the image anew)."""
    if m.kind != "image" or (unit_state is not None and unit_state.sub_state == "running"):
        return None
    record = startrecord.read(host, m.name)
    if record is None or record.get("image") != m.image or not record.get("refused"):
        return None
    return str(record["refused"])


def _container_pid(m: ModelConfig, entry: ModelEntry) -> int:
    """The pid of the server in the model's container (0: none running)."""
    found, errors = containerfind.find(m)
    if found is not None:
        entry["container"] = {"runtime": found.runtime, "name": found.name, "pid": found.pid}
        return found.pid
    if m.kind == "container":
        if not errors or len(errors) < (1 if m.runtime else 2):
            entry["state"] = f"container {containerfind.container_name(m)} not running"
        else:  # no runtime could be asked: not installed, daemon down, not root
            entry["state"] = entry["verdict"] = f"unknown: {'; '.join(errors)}"
    return 0


def pending_changes(host: Host, cfg: Config, m: ModelConfig,
                    unit_state: UnitState | None) -> list[str]:
    """What the model's running server was not started with (startrecord);
    empty when it runs the configuration, or when its start was not recorded."""
    if unit_state is None or unit_state.active_state not in ("active", "activating",
                                                             "reloading"):
        return []
    record = startrecord.for_invocation(host, m.name, unit_state.invocation_id)
    if record is None:
        return []
    env = execwrap.configured_env(cfg)
    return startrecord.changes(record, cfg, m,
                               execwrap.model_env(env, m) if env is not None else None)


def _figures(cov: coverage.Coverage,
             fp: footprint.Footprint | None) -> tuple[int, int, float | None]:
    """(dead bytes, used bytes, the share of used in huge pages; None when
    nothing is used) of one server's memory, or of several summed."""
    # a file copy in huge pages: the weights llama.cpp repacked are read no more
    dead = min(cov.file_hugetlb_bytes, fp.repacked) if fp is not None else 0
    live = cov.hugetlb_bytes - dead
    used = live + cov.fallback_bytes
    return dead, used, (live / used if used else None)


def _process_entry(host: Host, pid: int, cov: coverage.Coverage,
                   fp: footprint.Footprint | None) -> ProcessEntry:
    dead, used, share = _figures(cov, fp)
    return {"pid": pid, "comm": procs.comm(host, pid), "wrapper_loaded": cov.wrapper_loaded,
            "hugetlb_bytes": cov.hugetlb_bytes, "hugetlb_file_bytes": cov.file_hugetlb_bytes,
            "hugetlb_alloc_bytes": cov.heap_hugetlb_bytes, "fallback_bytes": cov.fallback_bytes,
            "dead_bytes": dead, "used_bytes": used,
            "coverage": round(min(share, 1.0), 4) if share is not None else None}


Servers = list[tuple[int, coverage.Coverage | None]]


def _find_servers(host: Host, m: ModelConfig, systemd: Systemd | None, entry: ModelEntry,
                  large: int) -> tuple[Servers, UnitState | None]:
    """The processes that serve the model, with their memory, the first one
    shown as the model's pid: of the processes in the unit's cgroup, those that
    hold large memory (a supervisor that started the server holds none), else
    those with the wrapper loaded (a server still starting), else the unit's
    main process; without a unit, a process holding the model."""
    pid = 0
    group = ""
    st: UnitState | None = None
    if systemd is not None and entry["unit"]:
        try:
            st = systemd.state(entry["unit"])
            entry["active"] = st.active_state == "active"
            entry["state"] = f"{st.active_state}/{st.sub_state}"
            entry["pid"] = entry["main_pid"] = st.main_pid or None
            pid = st.main_pid
            group = st.control_group
        except SystemdError as e:
            entry["verdict"] = f"unknown: {e}"
    pids = procs.cgroup_pids(host, group) if group else []
    if m.kind == "container" or (m.kind == "image" and entry["active"] is not False):
        # docker's server is outside the unit's cgroup, and podman's too where
        # it cannot split (cgroup v1): ask the runtime
        cpid = _container_pid(m, entry)
        if cpid:
            # the container's processes: those of its own cgroup (not the
            # runtime's client or conmon in the unit's)
            group_of = procs.unified_cgroup(host, cpid)
            pids = (procs.cgroup_pids(host, group_of) if group_of not in (None, "/") else []) \
                or [cpid]
            pid = cpid  # the model's pid: the container's server
            if m.kind == "container":
                entry["active"], entry["state"] = True, f"running (container {m.container})"
                entry["main_pid"] = cpid
    if m.kind == "image":  # of the unit's processes, not the runtime's own
        pids = [p for p in pids if procs.comm(host, p) not in containerfind.RUNTIME_COMMS]
    path = containerfind.served_path(host, m, pid)
    covs = {p: coverage.read_coverage(host, p, path, large) for p in pids}
    for keep in (coverage.large, lambda c: c.wrapper_loaded):
        found = [(p, c) for p, c in covs.items() if c is not None and keep(c)]
        if found:
            return sorted(found, key=lambda pc: (pc[0] != pid, pc[0])), st
    if pid:  # its smaps read once, in the cgroup or here
        return [(pid, covs[pid] if pid in covs else
                 coverage.read_coverage(host, pid, path, large))], st
    # no unit running it (or no systemd): a process started another way, e.g. exec
    holders = coverage.pids_holding(host, m.path)
    if not holders:
        return [], st
    if systemd is None:
        entry["active"] = True
        entry["state"] = "running (not a unit)"
    return [(holders[0], coverage.read_coverage(host, holders[0], m.path, large))], st


def _start_choice(host: Host, m: ModelConfig, pid: int) -> dict[str, str] | None:
    """How the running server loaded this time: what run-model or exec put in
    its environment (readable by root), else the unit's record, else its
    command line."""
    chosen = (procs.environ(host, pid) or {}).get(loadmode.ENV_CHOICE)
    if chosen is not None:
        mode, _, why = chosen.partition(": ")
        return {"mode": mode, "why": why}
    data = startrecord.read(host, m.name)
    if data is not None and isinstance(data.get("mode"), str):
        return {"mode": data["mode"], "why": str(data.get("why", ""))}
    with contextlib.suppress(HostError):
        cmd = (host.read_optional(f"/proc/{pid}/cmdline") or "").split("\0")
        chosen = loadmode.operator_choice(cmd)
        if chosen is not None:
            return {"mode": chosen, "why": "from its command line"}
    return None


def _verdict(host: Host, m: ModelConfig, cov: coverage.Coverage, entry: ModelEntry,
             server: tuple[int, loadmode.LoadMode, footprint.Footprint | None], *,
             dead: int, used: int) -> str:
    pid, lm, fp = server
    if not cov.wrapper_loaded:
        without = [str(p["pid"]) for p in entry["processes"] if not p["wrapper_loaded"]]
        why = _not_loaded_reason(host, pid)
        return "wrapper not loaded" + (f" (pid {', '.join(without)})"
                                       if len(entry["processes"]) > 1 else "") + \
            (f": {why}" if why else "")
    if cov.filling:
        return "loading into huge pages"
    if cov.fallback_bytes > used * 0.01:
        verdict = ("fell back to the file mapping" if cov.file_mapped_bytes
                   and not cov.large_anon_bytes else
                   f"fell back: {amounts.human_bytes(cov.fallback_bytes)} of large allocations "
                   "in 4 KiB pages")
        reason = journal.fallback_reason(
            journal.wrapper_lines(pid, entry["unit"] if entry["state"] else None,
                                  procs.own_pid(host, pid)), m.path) \
            if host.is_real else None
        return verdict + (f" ({reason})" if reason else "")
    if dead > used * 0.01:
        return (f"holds {amounts.human_bytes(dead)} of dead huge pages (load mode {lm.mode}: "
                "the file copy of weights llama.cpp repacked)")
    # what the weights alone take once loaded: a server holding less is loading
    expected = (fp.weights + fp.file_copy - fp.dead) if fp is not None else m.size
    if cov.hugetlb_bytes - dead < expected * 0.99:
        return "loading into huge pages" if cov.hugetlb_bytes else "model not mapped yet"
    return "loaded"


def _not_loaded_reason(host: Host, pid: int) -> str | None:
    """Why a server has not loaded the wrapper, where it can be told (its
    environment is readable by root only)."""
    env = procs.environ(host, pid)
    try:
        exe = os.readlink(host.path(f"/proc/{pid}/exe"))
    except OSError:
        return None
    if env is None:
        return None
    preloads = preload.listed(env.get("LD_PRELOAD", ""))
    if not preloads:
        return "LD_PRELOAD is not in its environment (a supervisor that clears it?)"
    return preload.problem(preloads[0], exe, str(host.path(f"/proc/{pid}/root")))


NO_MODELS_HINT = ("no models are configured yet, so the pool is empty: add one in a drop-in "
                  "such as /etc/hugepage-agent/config.d/50-MODEL.toml ([[model]] with name, "
                  "path and args), then `systemctl reload hugepage-agent`; see \"Serving a "
                  "model\" in /usr/share/doc/hugepage-agent/README.md and "
                  "hugepage-agent.toml(5)")


def collect(host: Host, cfg: Config | None, cfg_error: str | None = None,
            systemd: Systemd | None = None) -> StatusDoc:
    problems: list[str] = []
    plan: Plan | None = None
    topo = numanodes.read_topology(host)  # for the plan and for each model's placement
    if cfg_error is not None:
        problems.append(f"configuration: {cfg_error}")
    fps: dict[str, footprint.Footprint] = {}
    if cfg is not None:
        fps = footprint.project_models(host, cfg, fresh=False)
        try:
            plan = plan_with(host, cfg, fps, topo)
        except AgentError as e:
            problems.append(f"configuration: {e}")

    pool_list = [_pool_entry(p, plan) for p in pools.read_pools(host)]
    for p in pool_list:
        where = f" on node {p['node']}" if p["node"] is not None else ""
        if p["shortfall"]:
            problems.append(f"{p['page_size_kb']} kB pool{where} is short by "
                            f"{p['shortfall']} pages ({p['total']} of {p['target']})")
        if p["above_target_held"]:
            problems.append(f"{p['page_size_kb']} kB pool{where} is shrinking: "
                            f"{p['above_target_held']} pages above target held by running "
                            f"servers ({p['total']} of {p['target']})")
        if p["above_target"] and p["above_target"] > (p["above_target_held"] or 0):
            free = p["above_target"] - (p["above_target_held"] or 0)
            problems.append(f"{p['page_size_kb']} kB pool{where} is {free} free pages above "
                            f"its target ({p['total']} of {p['target']}); the daemon gives "
                            "them back at its next apply (systemctl reload hugepage-agent)")

    state = thp.read_state(host)
    want_enabled = cfg.thp.enabled if cfg else None
    want_defrag = cfg.thp.defrag if cfg else None
    as_configured = (thp.matches(state, want_enabled, want_defrag)
                     if want_enabled is not None and want_defrag is not None else None)
    if as_configured is False:
        problems.append(f"THP is {state.enabled} (defrag {state.defrag}), configured "
                        f"{want_enabled} (defrag {want_defrag})")

    conflicts = persist.find_conflicts(host)
    persisted = persist.persisted_value(host)
    for c in conflicts:
        if c.overrides:
            problems.append(f"{c.file}:{c.line} overrides {persist.SYSCTL_KEY} with {c.value}")

    models = [_model_entry(host, cfg, m, (systemd, fps.get(m.name), topo), problems)
              for m in cfg.models] if cfg else []
    hints = [NO_MODELS_HINT] if cfg is not None and not cfg.models else []

    return {
        "version": SCHEMA_VERSION,
        "agent_version": __version__,
        "config": {"files": list(cfg.files) if cfg else [], "error": cfg_error},
        "hints": hints,
        "metrics_interval": cfg.metrics.interval if cfg and cfg.metrics.textfile_dir else None,
        "pools": pool_list,
        "thp": {
            "enabled": state.enabled,
            "defrag": state.defrag,
            "sizes": {str(kb): mode for kb, mode in state.sizes},
            "cmdline": state.cmdline,
            "configured_enabled": want_enabled,
            "configured_defrag": want_defrag,
            "as_configured": as_configured,
        },
        "persisted": {
            "file": persist.SYSCTL_FILE,
            "value": persisted,
            "conflicts": [{"file": c.file, "line": c.line, "value": c.value,
                           "overrides": c.overrides} for c in conflicts],
        },
        "last_apply": state_file.read_last_apply(host),
        "models": models,
        "problems": problems,
        "degraded": bool(problems),
    }


def _fmt(v: object) -> str:
    return "-" if v is None else str(v)


def _bytes(v: int | None) -> str:
    return "-" if v is None else amounts.human_bytes(v)


def _host_lines(data: StatusDoc) -> list[str]:
    """The pools, THP, the persisted size and the last apply."""
    lines = []
    lines.append(f"{'POOL':<12} {'NODE':>4} {'TOTAL':>7} {'FREE':>7} {'RSVD':>6} {'SURP':>6} "
                 f"{'NEED':>7} {'TARGET':>7} {'SHORT':>6}")
    for p in data["pools"]:
        name = amounts.page_size_name(p["page_size_kb"] * 1024)
        lines.append(f"{name:<12} {_fmt(p['node']) if p['node'] is not None else 'all':>4} "
                     f"{p['total']:>7} {p['free']:>7} {_fmt(p['reserved']):>6} "
                     f"{p['surplus']:>6} {_fmt(p.get('models_need')):>7} "
                     f"{_fmt(p['target']):>7} {_fmt(p['shortfall']):>6}")
    t = data["thp"]
    thp_line = f"THP: enabled={t['enabled']} defrag={t['defrag']}"
    if t["cmdline"] is not None:
        thp_line += f" (set on the kernel command line: transparent_hugepage={t['cmdline']})"
    elif t["as_configured"] is not None:
        thp_line += " (as configured)" if t["as_configured"] else (
            f" (configured: enabled={t['configured_enabled']} "
            f"defrag={t['configured_defrag']})")
    lines.append(thp_line)
    per = data["persisted"]
    lines.append(f"persisted: {per['file']}: "
                 + (f"vm.nr_hugepages = {per['value']}" if per["value"] is not None
                    else "not written"))
    for c in per["conflicts"]:
        effect = "overrides it at boot" if c["overrides"] else "overridden"
        lines.append(f"  conflict: {c['file']}:{c['line']} vm.nr_hugepages = {c['value']} "
                     f"({effect})")
    la = data["last_apply"]
    if la:
        lines.append(f"last apply: {la.get('achieved')} of {la.get('target')} pages in "
                     f"{la.get('rounds')} rounds, {la.get('seconds')} s"
                     + (f" ({la['why']})" if la.get("why") and la.get("stop") != "met"
                        else "")
                     + (f"; pre-touched {la['pretouch']['pages']} pages in "
                        f"{la['pretouch']['seconds']} s"
                        if isinstance(la.get("pretouch"), dict) and la["pretouch"].get("pages")
                        else ""))
    return lines


def _model_lines(m: ModelEntry) -> list[str]:
    """One model: its row, its processes, huge pages, NUMA, load mode, page cache."""
    lines: list[str] = []
    cover = f"{m['coverage'] * 100:.1f}%" if m["coverage"] is not None else "-"
    page = amounts.page_size_name(m["page_size_kb"] * 1024) if m["page_size_kb"] else "-"
    wrapper = {True: "yes", False: "no", None: "-"}[m["wrapper_loaded"]]
    lines.append(f"{m['name']:<16} {m['unit']:<32} {_fmt(m['state']):<18} "
                 f"{_fmt(m['pid']):>7} {amounts.human_bytes(m['model_bytes']):>10} "
                 f"{_bytes(m['hugetlb_bytes']):>10} {_bytes(m['fallback_bytes']):>10} "
                 f"{cover:>6} {page:>5} {wrapper:<8} {m['verdict']}")
    procs_ = m.get("processes") or []
    if len(procs_) > 1 or (procs_ and procs_[0]["pid"] != m.get("main_pid")
                           and m.get("main_pid")):
        for proc in procs_:
            cov = f"{proc['coverage'] * 100:.1f}%" if proc["coverage"] is not None else "-"
            lines.append(f"  process {proc['pid']} ({proc['comm'] or '?'}"
                         + (", the unit's main process" if proc["pid"] == m.get("main_pid")
                            else f", main process {m.get('main_pid')}") + "): "
                         f"{_bytes(proc['hugetlb_bytes'])} huge, "
                         f"{_bytes(proc['fallback_bytes'])} 4 KiB, {cov} covered, wrapper "
                         f"{'yes' if proc['wrapper_loaded'] else 'no'}")
    if m["hugetlb_bytes"] is not None:
        lines.append(f"  huge pages: {_bytes(m['hugetlb_alloc_bytes'])} allocations, "
                     f"{_bytes(m['hugetlb_file_bytes'])} file copy, "
                     f"{_bytes(m['dead_bytes'])} dead; 4 KiB: "
                     f"{_bytes(m['fallback_bytes'])}")
    numa = m.get("numa")
    if numa and numa["multi_node"]:
        where = ", ".join(f"node {n} {amounts.human_bytes(b)}"
                          for n, b in numa["node_bytes"].items()) or "no huge pages"
        placement = numa["placement"]
        asked = (f"nodes {numanodes.compact_list(placement)}" if isinstance(placement, list)
                 else placement)
        lines.append(f"  NUMA: {where} (placement {asked}; policy "
                     f"{', '.join(numa['policies']) or 'default'})")
    lm = m["load_mode"]
    lines.append(f"  load mode {lm['mode']} ({lm['chosen_by']}): {lm['note']}")
    at_start = lm["at_start"]
    if at_start:
        lines.append(f"    this start: {at_start['mode']} ({at_start['why']})")
    if lm.get("evidence"):
        lines.append(f"    evidence: {lm['evidence']}")
    pc = m.get("page_cache_bytes")
    share = pc / m["model_bytes"] * 100 if pc is not None and m["model_bytes"] else 0.0
    lines.append("  page cache: " + ("unknown (the kernel tells it only to the file's "
                                     "owner, a writer, or root; run as root)"
                                     if pc is None else
                                     f"{amounts.human_bytes(pc)} of the model file "
                                     f"({share:.0f}%)"))
    return lines


def render(data: StatusDoc) -> str:
    lines = _host_lines(data)
    if data["models"]:
        lines.append(f"{'MODEL':<16} {'UNIT':<32} {'STATE':<18} {'PID':>7} {'SIZE':>10} "
                     f"{'HUGE':>10} {'4K':>10} {'COVER':>6} {'PAGE':>5} {'WRAPPER':<8} VERDICT")
    for m in data["models"]:
        lines += _model_lines(m)
    if data["problems"]:
        lines.append("DEGRADED:")
        lines.extend(f"  - {p}" for p in data["problems"])
    else:
        lines.append("OK: as configured")
    lines.extend(f"hint: {h}" for h in data.get("hints", []))
    return "\n".join(lines)
