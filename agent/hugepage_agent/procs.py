"""The processes that serve a model: every process in its unit's cgroup.

A unit's main process is not always the server: a supervisor (ollama runs
llama-server as a child, passing its environment on), a shell wrapper, or a
container runtime's monitor (podman's conmon) starts it. So the servers are
found in the unit's control group (systemd's ControlGroup property), its
sub-groups included, on the unified hierarchy (cgroup v2, or its hybrid mount
at /sys/fs/cgroup/unified) or else systemd's own v1 hierarchy.
"""

from __future__ import annotations

import os

from hugepage_agent.errors import HostError
from hugepage_agent.host import Host

CGROUP_MOUNTS = ("/sys/fs/cgroup/unified", "/sys/fs/cgroup", "/sys/fs/cgroup/systemd")
MAX_PIDS = 4096


def parse_procs(text: str) -> list[int]:
    return [int(w) for w in text.split() if w.isdigit()]


def cgroup_pids(host: Host, control_group: str) -> list[int]:
    """The pids in a control group and every group below it, sorted; [] when
    the group cannot be found or read."""
    if not control_group.startswith("/") or ".." in control_group.split("/"):
        return []
    for base in CGROUP_MOUNTS:
        top = f"{base}{control_group.rstrip('/')}"
        if not host.exists(f"{top}/cgroup.procs"):
            continue
        pids: set[int] = set()
        for dirpath, _, files in os.walk(host.path(top)):
            if "cgroup.procs" in files:
                try:
                    with open(os.path.join(dirpath, "cgroup.procs"), encoding="ascii") as f:
                        pids.update(parse_procs(f.read()))
                except (OSError, UnicodeDecodeError):
                    continue
            if len(pids) > MAX_PIDS:
                break
        return sorted(pids)
    return []


def _proc_line(host: Host, pid: int, name: str, prefix: str) -> str | None:
    """The rest of the first line of /proc/PID/NAME that starts with `prefix`."""
    try:
        text = host.read_optional(f"/proc/{pid}/{name}") or ""
    except HostError:  # another user's, or gone
        return None
    return next((line[len(prefix):] for line in text.splitlines() if line.startswith(prefix)),
                None)


def own_pid(host: Host, pid: int) -> int:
    """The pid a process has in its own pid namespace (a container's), from
    the last NSpid field of its status; `pid` when it cannot be told."""
    fields = (_proc_line(host, pid, "status", "NSpid:") or "").split()
    return int(fields[-1]) if fields and fields[-1].isdigit() else pid


def unified_cgroup(host: Host, pid: int) -> str | None:
    """A process's control group on the unified hierarchy (its "0::" line)."""
    return (_proc_line(host, pid, "cgroup", "0::") or "").strip() or None


def comm(host: Host, pid: int) -> str:
    try:
        return (host.read_optional(f"/proc/{pid}/comm") or "").strip()
    except HostError:  # another user's
        return ""


def environ(host: Host, pid: int) -> dict[str, str] | None:
    """A process's environment (root, or its owner, may read it); None when
    it cannot be read."""
    try:
        raw = host.read_optional(f"/proc/{pid}/environ")
    except (HostError, UnicodeDecodeError):
        return None
    if raw is None:
        return None
    return dict(v.split("=", 1) for v in raw.split("\0") if "=" in v)
