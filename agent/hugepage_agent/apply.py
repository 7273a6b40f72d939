"""`hugepage-agent apply`: plan, THP, reserve, persist, report.

Everything that can be refused is checked before anything changes, so an
invalid configuration leaves the host as it was.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import NamedTuple

from hugepage_agent import (
    amounts,
    footprint,
    loadmode,
    persist,
    pools,
    pretouch,
    reserve,
    thp,
)
from hugepage_agent import state as state_file
from hugepage_agent.config import Config
from hugepage_agent.errors import HostError
from hugepage_agent.host import Host
from hugepage_agent.plan import Plan, plan_with

log = logging.getLogger(__name__)

STATE_FILE = state_file.LAST_APPLY_FILE


class PoolBefore(NamedTuple):
    """One pool before an apply: its label, its pages then, its target."""
    label: str
    pages: int
    target: int


@dataclass(frozen=True)
class ApplyReport:
    plan: Plan
    dry_run: bool
    footprints: dict[str, footprint.Footprint]
    pools_before: tuple[PoolBefore, ...]
    thp_changes: tuple[thp.Change, ...]
    thp_cmdline: str | None
    files: tuple[persist.FileChange, ...]
    conflicts: tuple[persist.Conflict, ...]
    result: reserve.ReserveResult | None
    boot_hint: str | None  # kernel command line for 1 GiB pages that fell short
    touched: pretouch.Pretouch | None = None
    load_modes: tuple[tuple[str, loadmode.LoadMode], ...] = ()  # per template model

    @property
    def met(self) -> bool:
        return self.result is None or self.result.met


def controls(host: Host, plan: Plan) -> list[pools.KernelPool]:
    if plan.per_node:
        return [pools.KernelPool(host, plan.page_size_kb, node) for node, _ in plan.per_node]
    return [pools.KernelPool(host, plan.page_size_kb)]


def boot_hint(plan: Plan) -> str:
    if plan.per_node:
        counts = ",".join(f"{node}:{pages}" for node, pages in plan.per_node)
        return f"hugepagesz=1G hugepages={counts}"
    return f"hugepagesz=1G hugepages={plan.target}"


def apply(host: Host, cfg: Config, dry_run: bool = False) -> ApplyReport:
    fps = footprint.project_models(host, cfg, fresh=True)
    plan = plan_with(host, cfg, fps)
    modes: list[tuple[str, loadmode.LoadMode]] = []
    for m in cfg.models:
        if m.kind not in ("template", "image"):
            continue  # an operator's own unit or container runs its own command line
        lm = footprint.load_mode(cfg.server.load_mode,
                                 loadmode.server_binary(cfg.server.binary, m.image), m.path,
                                 m.args, cfg.wrapper.min_size)
        modes.append((m.name, lm))
        if lm.chosen_by == "operator" and not lm.heap:
            log.warning("model %s: its args choose load mode %s: %s", m.name, lm.mode, lm.note)
    if plan.page_size_kb not in pools.supported_sizes_kb(host):
        raise HostError(f"the kernel has no {amounts.page_size_name(plan.page_size)} huge pages "
                        f"({pools.HUGEPAGES_DIR}/hugepages-{plan.page_size_kb}kB is missing)")
    default_kb = pools.default_page_size_kb(host)
    ctls = controls(host, plan)
    targets = [reserve.Target(c, pages) for c, pages in
               zip(ctls, [p for _, p in plan.per_node] or [plan.target])]
    before = tuple(PoolBefore(t.control.label, t.control.total(), t.pages) for t in targets)

    state = thp.read_state(host)
    changes = thp.plan_changes(state, cfg.thp.enabled, cfg.thp.defrag)
    if state.cmdline is not None:
        log.info("THP is set on the kernel command line (transparent_hugepage=%s): "
                 "leaving it alone", state.cmdline)
    files = persist.plan_files(host, plan, default_kb)

    result = None
    hint = None
    touched = None
    if not dry_run:
        thp.apply_changes(host, changes)
        for c in changes:
            log.info("THP: %s: %s -> %s", c.path, c.old, c.new)
        footprint.remember(host, cfg, fps)
        result = reserve.reserve(
            targets, cfg.reserve.timeout,
            drop_caches=(lambda: pools.drop_caches(host)) if cfg.reserve.drop_caches else None)
        gains = [(c.node, max(0, c.total() - b.pages)) for c, b in zip(ctls, before)]
        touched = pretouch.after_reserve(host, cfg.reserve.pretouch, plan.page_size_kb, gains)
        persist.write_files(host, files)
        for f in files:
            if f.changed:
                log.info("%s %s", "removed" if f.new is None else "wrote", f.path)
        if not result.met and plan.page_size == amounts.GIB:
            hint = boot_hint(plan)
        _save_state(host, plan, result, touched)
    conflicts = persist.find_conflicts(host)
    for cf in conflicts:
        if cf.overrides:
            log.warning("%s:%d sets %s = %s, which overrides %s at boot; remove it",
                        cf.file, cf.line, persist.SYSCTL_KEY, cf.value, persist.SYSCTL_FILE)
    return ApplyReport(plan=plan, dry_run=dry_run, footprints=fps, pools_before=before,
                       thp_changes=tuple(changes), thp_cmdline=state.cmdline,
                       files=tuple(files), conflicts=tuple(conflicts), result=result,
                       boot_hint=hint, touched=touched, load_modes=tuple(modes))


def _save_state(host: Host, plan: Plan, result: reserve.ReserveResult,
                touched: pretouch.Pretouch | None = None) -> None:
    state = {
        "time": time.time(),
        "page_size_kb": plan.page_size_kb,
        "target": result.target,
        "achieved": result.achieved,
        "start": result.start,
        "rounds": result.rounds,
        "seconds": round(result.seconds, 3),
        "stop": result.stop,
        "why": result.explain(),
        "first_write": result.first_write,
        "measures": [{"name": m.name, "runs": m.runs, "gained": m.gained}
                     for m in result.measures],
        "missing_bytes": result.missing_bytes,
        "room_bytes": result.room_bytes,
        # per pool: per node on a host with several (each node's pool is its own)
        "per_pool": [{"pool": r.label, "target": r.target, "achieved": r.achieved}
                     for r in result.per_pool],
        "pretouch": touched.to_json() if touched is not None else None,
    }
    state_file.write_last_apply(host, state)


def pod_request(pages: int, page_size: int) -> str:
    """What a pod serving the model asks for: `hugepages-2Mi: 600Mi`."""
    if page_size == amounts.GIB:
        return f"hugepages-1Gi: {pages}Gi"
    return f"hugepages-{page_size // amounts.MIB}Mi: {pages * page_size // amounts.MIB}Mi"


def _plan_lines(report: ApplyReport) -> list[str]:
    """The target, its split per node and per model, the load modes."""
    p = report.plan
    ps = amounts.page_size_name(p.page_size)
    how = (f"auto: {p.model_pages} pages for the models plus headroom" if p.auto
           else "configured")
    lines = [f"target: {p.target} x {ps} pages ({amounts.human_bytes(p.target_bytes)}, {how}); "
             f"limit {amounts.human_bytes(p.limit_bytes)}"]
    if p.per_node:
        lines.append("  per node: " + ", ".join(f"node {n}: {c}" for n, c in p.per_node))
    if p.auto:
        for name, pages in p.per_model:
            fp = report.footprints.get(name)
            detail = fp.breakdown() if fp else "the file size (not a GGUF model)"
            lines.append(f"  model {name}: {pages} pages: {detail}")
            lines.append(f"    in a Kubernetes pod: {pod_request(pages, p.page_size)} "
                         "(requests and limits)")
            split = dict(p.model_nodes).get(name)
            if split:
                lines.append("    per node: " + ", ".join(f"node {n}: {k}" for n, k in split))
            if fp and fp.dead:
                lines.append(f"    of which {amounts.human_bytes(fp.dead)} dead: "
                             f"{loadmode.NOTES['mmap']}")
    for name, lm in report.load_modes:
        lines.append(f"  model {name}: load mode {lm.mode} ({lm.chosen_by}): {lm.note}; "
                     f"evidence: {lm.evidence}")
    return lines


def _change_lines(report: ApplyReport) -> list[str]:
    """What changed (or would): the pools, THP, the persisted files, conflicts."""
    lines = []
    if report.dry_run:
        for label, pages, goal in report.pools_before:
            lines.append(f"would set {label}: {pages} -> {goal} pages")
    if report.thp_cmdline is not None:
        lines.append(f"THP: left alone (kernel command line: "
                     f"transparent_hugepage={report.thp_cmdline})")
    elif report.thp_changes:
        verb = "would set" if report.dry_run else "set"
        lines += [f"THP: {verb} {c.path}: {c.old} -> {c.new}" for c in report.thp_changes]
    else:
        lines.append("THP: already as configured")
    for f in report.files:
        if not f.changed:
            if f.old is not None:
                lines.append(f"{f.path}: unchanged")
        elif report.dry_run:
            lines += [f"would change {f.path}:", f.diff().rstrip("\n")]
        else:
            lines.append(f"{'removed' if f.new is None else 'wrote'} {f.path}")
    for cf in report.conflicts:
        effect = "overrides ours at boot" if cf.overrides else "is overridden by ours"
        lines.append(f"warning: {cf.file}:{cf.line} sets {persist.SYSCTL_KEY} = {cf.value} "
                     f"({effect})")
    return lines


def _result_lines(report: ApplyReport, r: reserve.ReserveResult) -> list[str]:
    """What the reservation reached, and what to do when it fell short."""
    ps = amounts.page_size_name(report.plan.page_size)
    status = "met" if r.met else f"SHORT by {r.target - r.achieved} pages"
    lines = [f"reserved: {r.achieved} of {r.target} x {ps} pages ({status}); "
             f"started from {r.start}, {r.rounds} rounds, {r.seconds:.2f} s",
             f"  measures: {r.measures_text()}"]
    if not r.met:
        lines.append(f"  stopped: {r.explain()}")
    if report.touched is not None:
        lines.append(f"  {report.touched.text()}")
    if len(r.per_pool) > 1:
        lines += [f"  {label}: {have} of {goal}" for label, goal, have in r.per_pool]
    if not r.met and r.stop == reserve.STOP_NO_MEMORY:
        lines.append("the pool is short because memory is in use: stop memory-hungry "
                     "services, lower pool.size, or reserve at boot.")
    elif not r.met:
        lines.append("the pool is short: free memory is fragmented or pinned. Try "
                     "`hugepage-agent apply` again after stopping memory-hungry services, "
                     "set [reserve] drop_caches = true, or reserve at boot.")
    return lines


def render(report: ApplyReport) -> str:
    """The human report printed by the CLI."""
    lines = _plan_lines(report) + _change_lines(report)
    if report.result is not None:
        lines += _result_lines(report, report.result)
    if report.boot_hint:
        lines.append(f"1 GiB pages are best reserved at boot: add `{report.boot_hint}` to "
                     "the kernel command line")
    if report.dry_run:
        lines.append("dry run: nothing was changed")
    return "\n".join(lines)
