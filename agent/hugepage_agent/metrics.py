"""Prometheus metrics in the text format, for node_exporter's textfile
collector: rendered from the status data (pure), written atomically as
<dir>/hugepage_agent.prom."""

from __future__ import annotations

from hugepage_agent.host import Host
from hugepage_agent.statusdoc import StatusDoc

FILE_NAME = "hugepage_agent.prom"
THP_MODES = ("always", "madvise", "never", "defer", "defer+madvise")


def _escape(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: object) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return "{" + inner + "}"


class _Out:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.seen: set[str] = set()

    def metric(self, name: str, help_text: str, value: float | None, mtype: str = "gauge",
               **labels: object) -> None:
        """One sample; none for a value the status does not know (None)."""
        if value is None:
            return
        full = f"hugepage_agent_{name}"
        if full not in self.seen:
            self.seen.add(full)
            self.lines.append(f"# HELP {full} {help_text}")
            self.lines.append(f"# TYPE {full} {mtype}")
        number = int(value) if float(value).is_integer() else float(value)
        self.lines.append(f"{full}{_labels(**labels)} {number!r}")


def render(data: StatusDoc) -> str:
    out = _Out()
    for p in data["pools"]:
        node = "all" if p["node"] is None else str(p["node"])
        for state, pages in (("total", p["total"]), ("free", p["free"]),
                             ("reserved", p["reserved"]), ("surplus", p["surplus"])):
            out.metric("pool_pages", "Huge pages in the pool, by page size, node and state",
                       pages, page_size_kb=p["page_size_kb"], node=node, state=state)
    for p in data["pools"]:
        node = "all" if p["node"] is None else str(p["node"])
        for state, pages in (("total", p["total"]), ("free", p["free"])):
            out.metric("pool_bytes", "The pool in bytes, by page size, node and state",
                       pages * p["page_size_kb"] * 1024, page_size_kb=p["page_size_kb"],
                       node=node, state=state)
    for p in data["pools"]:
        if p["target"] is not None:
            node = "all" if p["node"] is None else str(p["node"])
            out.metric("pool_target_pages", "Configured target of the pool", p["target"],
                       page_size_kb=p["page_size_kb"], node=node)
            out.metric("pool_shortfall_pages", "Pages the pool is short of its target",
                       p["shortfall"], page_size_kb=p["page_size_kb"], node=node)
            if p.get("models_need") is not None:
                out.metric("pool_models_need_pages",
                           "Pages the models' projections put in this pool, before headroom",
                           p["models_need"], page_size_kb=p["page_size_kb"], node=node)
            if p.get("above_target") is not None:
                out.metric("pool_above_target_pages",
                           "Pages the pool is above its target: held by running servers (it "
                           "shrinks as they free them), or free", p["above_target"],
                           page_size_kb=p["page_size_kb"], node=node)
                out.metric("pool_above_target_held_pages",
                           "Pages above the target held by running servers",
                           p["above_target_held"] or 0, page_size_kb=p["page_size_kb"],
                           node=node)
    la = data.get("last_apply") or {}
    if la:
        out.metric("reserve_rounds", "Rounds of the last reservation", la.get("rounds", 0))
        out.metric("reserve_duration_seconds", "Duration of the last reservation",
                   la.get("seconds", 0))
        out.metric("reserve_timestamp_seconds", "When the last reservation ran",
                   la.get("time", 0))
    thp = data["thp"]
    for knob in ("enabled", "defrag"):
        if thp[knob] is not None:
            for mode in THP_MODES:
                if knob == "enabled" and mode.startswith("defer"):
                    continue
                out.metric("thp_mode", "Transparent Huge Pages mode (1 for the current one)",
                           1 if thp[knob] == mode else 0, knob=knob, mode=mode)
    out.metric("thp_cmdline_override", "1 when the kernel command line sets THP",
               1 if thp["cmdline"] is not None else 0)
    if thp.get("as_configured") is not None:
        out.metric("thp_as_configured", "1 when THP is as configured (or left alone: keep)",
                   1 if thp["as_configured"] else 0)
    for m in data["models"]:
        lab = {"model": m["name"], "unit": m["unit"]}
        out.metric("model_bytes", "Size of the model file", m["model_bytes"], **lab)
        if m["hugetlb_bytes"] is not None:
            out.metric("model_hugetlb_bytes", "Bytes the model's server holds in huge pages",
                       m["hugetlb_bytes"], **lab)
            for kind, nbytes in (("file", m["hugetlb_file_bytes"]),
                                 ("alloc", m["hugetlb_alloc_bytes"])):
                out.metric("model_hugetlb_kind_bytes",
                           "Bytes in huge pages by kind: the model file's copy, allocations",
                           nbytes, kind=kind, **lab)
            out.metric("model_fallback_bytes",
                       "Large memory of the server not in huge pages (fell back)",
                       m["fallback_bytes"], **lab)
            out.metric("model_dead_bytes", "Huge pages the server holds but never reads",
                       m["dead_bytes"], **lab)
            out.metric("model_used_bytes", "Large memory the server uses",
                       m["used_bytes"], **lab)
            out.metric("model_coverage_ratio", "Share of the used memory in huge pages",
                       m["coverage"], **lab)
        out.metric("model_unit_active", "1 when the model's unit is active",
                   1 if m["active"] else 0, **lab)
        if m.get("wrapper_loaded") is not None:
            out.metric("model_wrapper_loaded",
                       "1 when every server process of the model has the wrapper loaded",
                       1 if m["wrapper_loaded"] else 0, **lab)
        if m.get("processes") is not None:
            out.metric("model_server_processes",
                       "Processes serving the model, found in its unit's cgroup",
                       len(m["processes"]), **lab)
        if m.get("pid"):
            out.metric("model_server_pid", "The pid of the model's (first) server process",
                       m["pid"], **lab)
        numa = m.get("numa")
        if numa:
            for node, b in numa["node_bytes"].items():
                out.metric("model_numa_hugetlb_bytes",
                           "Bytes of the model's huge pages on each NUMA node (numa_maps)",
                           b, node=node, **lab)
            if numa["off_node_ratio"] is not None:
                out.metric("model_off_node_ratio",
                           "Share of the model's huge pages outside the NUMA nodes its "
                           "placement names", numa["off_node_ratio"], **lab)
        out.metric("model_restart_pending",
                   "1 when the running server was started with other arguments, model file, "
                   "binary or wrapper settings than configured", 1 if m.get("restart_pending")
                   else 0, **lab)
    out.metric("degraded", "1 when the host is not as configured", 1 if data["degraded"] else 0)
    if data.get("metrics_interval") is not None:
        out.metric("metrics_interval_seconds", "How often the daemon rewrites this file",
                   data["metrics_interval"])
    return "\n".join(out.lines) + "\n"


def write(host: Host, directory: str, data: StatusDoc) -> str:
    path = f"{directory.rstrip('/')}/{FILE_NAME}"
    host.write_atomic(path, render(data))
    return path
