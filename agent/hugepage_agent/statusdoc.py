"""The status document: what `status` collects, `--json` prints, the D-Bus
Status() method returns and the metrics are rendered from. Described here
once, as TypedDicts, with its one SCHEMA_VERSION (the README documents the
same fields). Pure: no I/O, cheap to import."""

from __future__ import annotations

from typing import Any, TypedDict

SCHEMA_VERSION = 2


class PoolEntry(TypedDict):
    page_size_kb: int
    node: int | None  # None: the whole machine
    total: int
    free: int
    reserved: int | None  # global pools only
    surplus: int
    in_use: int
    target: int | None
    models_need: int | None  # what the models' projections put here, before headroom
    shortfall: int | None
    above_target: int | None
    above_target_held: int | None


class LoadModeEntry(TypedDict):
    mode: str
    chosen_by: str
    note: str
    evidence: str
    at_start: dict[str, str] | None  # mode and why of the running server's start


class ProcessEntry(TypedDict):
    pid: int
    comm: str | None
    wrapper_loaded: bool
    hugetlb_bytes: int
    hugetlb_file_bytes: int
    hugetlb_alloc_bytes: int
    fallback_bytes: int
    dead_bytes: int
    used_bytes: int
    coverage: float | None


class NumaEntry(TypedDict):
    placement: str | list[int]  # auto, interleave, off, or the pinned nodes
    multi_node: bool
    nodes: list[int]  # the nodes its placement names
    policies: list[str]  # of its huge page mappings (numa_maps)
    node_bytes: dict[str, int]  # huge page bytes per node
    off_node_bytes: int
    off_node_ratio: float | None


class ContainerEntry(TypedDict):
    """The container a model's server runs in, as its runtime reports it."""
    runtime: str  # podman or docker
    name: str
    pid: int  # its server, in this pid namespace


class ModelEntry(TypedDict):
    name: str
    path: str
    unit: str
    active: bool | None
    state: str | None
    pid: int | None
    model_bytes: int
    hugetlb_bytes: int | None
    hugetlb_file_bytes: int | None
    hugetlb_alloc_bytes: int | None
    fallback_bytes: int | None
    dead_bytes: int | None
    used_bytes: int | None
    coverage: float | None
    page_size_kb: int | None
    wrapper_loaded: bool | None
    file_pmd_bytes: int | None
    load_mode: LoadModeEntry
    page_cache_bytes: int | None
    processes: list[ProcessEntry]
    main_pid: int | None
    restart: str
    restart_pending: list[str] | None
    numa: NumaEntry | None
    container: ContainerEntry | None  # found through the runtime (docker, compose)
    verdict: str


class ThpEntry(TypedDict):
    enabled: str | None
    defrag: str | None
    sizes: dict[str, str]
    cmdline: str | None
    configured_enabled: str | None
    configured_defrag: str | None
    as_configured: bool | None


class ConflictEntry(TypedDict):
    file: str
    line: int
    value: str
    overrides: bool


class PersistedEntry(TypedDict):
    file: str
    value: int | None
    conflicts: list[ConflictEntry]


class ConfigEntry(TypedDict):
    files: list[str]
    error: str | None


class StatusDoc(TypedDict):
    version: int
    agent_version: str
    config: ConfigEntry
    hints: list[str]
    metrics_interval: float | None
    pools: list[PoolEntry]
    thp: ThpEntry
    persisted: PersistedEntry
    last_apply: dict[str, Any] | None  # the agent's last-apply.json, as written
    models: list[ModelEntry]
    problems: list[str]
    degraded: bool
