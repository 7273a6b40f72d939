"""Prometheus metrics in the text format, for node_exporter's textfile
collector: rendered from the status data (pure), written atomically as
<dir>/hugepage_agent.prom."""

from __future__ import annotations

from typing import Any

from hugepage_agent.host import Host
from hugepage_agent.statusdoc import ModelEntry, PoolEntry, StatusDoc, ThpEntry

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
    """Samples gathered by metric, written as one group per metric (the text
    format wants every sample of a metric together, whatever order they come in)."""

    def __init__(self) -> None:
        self.families: dict[str, tuple[str, str, list[str]]] = {}

    def metric(self, name: str, help_text: str, value: float | None, *, mtype: str = "gauge",
               **labels: str) -> None:
        """One sample; none for a value the status does not know (None)."""
        if value is None:
            return
        full = f"hugepage_agent_{name}"
        samples = self.families.setdefault(full, (help_text, mtype, []))[2]
        number = int(value) if float(value).is_integer() else float(value)
        samples.append(f"{full}{_labels(**labels)} {number!r}")

    def text(self) -> str:
        lines = []
        for full, (help_text, mtype, samples) in self.families.items():
            lines += [f"# HELP {full} {help_text}", f"# TYPE {full} {mtype}", *samples]
        return "\n".join(lines) + "\n"


def _pool(out: _Out, p: PoolEntry) -> None:
    node = "all" if p["node"] is None else str(p["node"])
    lab = {"page_size_kb": str(p["page_size_kb"]), "node": node}
    for state, pages in (("total", p["total"]), ("free", p["free"]),
                         ("reserved", p["reserved"]), ("surplus", p["surplus"])):
        out.metric("pool_pages", "Huge pages in the pool, by page size, node and state",
                   pages, state=state, **lab)
    for state, pages in (("total", p["total"]), ("free", p["free"])):
        out.metric("pool_bytes", "The pool in bytes, by page size, node and state",
                   pages * p["page_size_kb"] * 1024, state=state, **lab)
    if p["target"] is None:
        return
    out.metric("pool_target_pages", "Configured target of the pool", p["target"], **lab)
    out.metric("pool_shortfall_pages", "Pages the pool is short of its target",
               p["shortfall"], **lab)
    out.metric("pool_models_need_pages",
               "Pages the models' projections put in this pool, before headroom",
               p["models_need"], **lab)
    if p["above_target"] is not None:
        out.metric("pool_above_target_pages",
                   "Pages the pool is above its target: held by running servers (it "
                   "shrinks as they free them), or free", p["above_target"], **lab)
        out.metric("pool_above_target_held_pages",
                   "Pages above the target held by running servers",
                   p["above_target_held"] or 0, **lab)


def _last_apply(out: _Out, la: dict[str, Any]) -> None:
    out.metric("reserve_rounds", "Rounds of the last reservation", la.get("rounds", 0))
    out.metric("reserve_duration_seconds", "Duration of the last reservation",
               la.get("seconds", 0))
    out.metric("reserve_timestamp_seconds", "When the last reservation ran", la.get("time", 0))


def _thp(out: _Out, thp: ThpEntry) -> None:
    for knob, current in (("enabled", thp["enabled"]), ("defrag", thp["defrag"])):
        if current is None:
            continue
        for mode in THP_MODES:
            if knob == "enabled" and mode.startswith("defer"):
                continue
            out.metric("thp_mode", "Transparent Huge Pages mode (1 for the current one)",
                       1 if current == mode else 0, knob=knob, mode=mode)
    out.metric("thp_cmdline_override", "1 when the kernel command line sets THP",
               1 if thp["cmdline"] is not None else 0)
    if thp["as_configured"] is not None:
        out.metric("thp_as_configured", "1 when THP is as configured (or left alone: keep)",
                   1 if thp["as_configured"] else 0)


def _flag(value: bool | None) -> int | None:
    return None if value is None else int(bool(value))


def _model(out: _Out, m: ModelEntry) -> None:
    lab = {"model": m["name"], "unit": m["unit"]}
    out.metric("model_bytes", "Size of the model file", m["model_bytes"], **lab)
    out.metric("model_hugetlb_bytes", "Bytes the model's server holds in huge pages",
               m["hugetlb_bytes"], **lab)
    for kind, nbytes in (("file", m["hugetlb_file_bytes"]), ("alloc", m["hugetlb_alloc_bytes"])):
        out.metric("model_hugetlb_kind_bytes",
                   "Bytes in huge pages by kind: the model file's copy, allocations",
                   nbytes, kind=kind, **lab)
    out.metric("model_fallback_bytes", "Large memory of the server not in huge pages (fell back)",
               m["fallback_bytes"], **lab)
    out.metric("model_dead_bytes", "Huge pages the server holds but never reads",
               m["dead_bytes"], **lab)
    out.metric("model_used_bytes", "Large memory the server uses", m["used_bytes"], **lab)
    out.metric("model_coverage_ratio", "Share of the used memory in huge pages",
               m["coverage"], **lab)
    out.metric("model_unit_active", "1 when the model's unit is active",
               1 if m["active"] else 0, **lab)
    out.metric("model_wrapper_loaded",
               "1 when every server process of the model has the wrapper loaded",
               _flag(m["wrapper_loaded"]), **lab)
    out.metric("model_server_processes", "Processes serving the model, found in its unit's cgroup",
               len(m["processes"]), **lab)
    out.metric("model_server_pid", "The pid of the model's (first) server process",
               m["pid"] or None, **lab)
    numa = m["numa"]
    if numa:
        for node, b in numa["node_bytes"].items():
            out.metric("model_numa_hugetlb_bytes",
                       "Bytes of the model's huge pages on each NUMA node (numa_maps)",
                       b, node=node, **lab)
        out.metric("model_off_node_ratio",
                   "Share of the model's huge pages outside the NUMA nodes its placement names",
                   numa["off_node_ratio"], **lab)
    out.metric("model_restart_pending",
               "1 when the running server was started with other arguments, model file, "
               "binary or wrapper settings than configured",
               1 if m["restart_pending"] else 0, **lab)


def render(data: StatusDoc) -> str:
    out = _Out()
    for p in data["pools"]:
        _pool(out, p)
    if data["last_apply"]:
        _last_apply(out, data["last_apply"])
    _thp(out, data["thp"])
    for m in data["models"]:
        _model(out, m)
    out.metric("degraded", "1 when the host is not as configured", 1 if data["degraded"] else 0)
    out.metric("metrics_interval_seconds", "How often the daemon rewrites this file",
               data["metrics_interval"])
    return out.text()


def write(host: Host, directory: str, data: StatusDoc) -> str:
    path = f"{directory.rstrip('/')}/{FILE_NAME}"
    host.write_atomic(path, render(data))
    return path
