"""Where a model's server runs when a container runtime runs it: the
container's first process (asked of the runtime: `inspect`), and the model
file as that server opened it (where it is mounted in the container)."""

from __future__ import annotations

import contextlib
from typing import NamedTuple

from hugepage_agent import containerargs, runtimes, serverargs, unitfiles
from hugepage_agent.config import ModelConfig
from hugepage_agent.errors import AgentError, HostError
from hugepage_agent.host import Host

# The container runtimes' own processes: in a unit's cgroup beside the server
# (podman's --cgroups=split puts its client, conmon and the payload there),
# never servers, though a Go client maps large memory.
RUNTIME_COMMS = frozenset({"podman", "conmon", "docker", "runc", "crun", "catatonit",
                           "docker-init", "containerd-shim", "containerd-shim-runc-v2"})


class Found(NamedTuple):
    runtime: str  # podman or docker
    name: str
    pid: int  # in this pid namespace


def container_name(m: ModelConfig) -> str:
    """The agent's container of a model with image, or the operator's."""
    return containerargs.container_name(m.name) if m.kind == "image" else m.container or ""


def find(m: ModelConfig) -> tuple[Found | None, list[str]]:
    """The running container of a model with image or container, and what the
    runtimes that could not be asked said (not installed, daemon down, no
    permission): the runtime it names, or for an operator's container without
    one, docker then podman."""
    name = container_name(m)
    if m.kind == "image":
        candidates = [unitfiles.image_runtime(m)]
    else:
        candidates = [m.runtime] if m.runtime else ["docker", "podman"]
    errors = []
    for runtime in candidates:
        try:
            pid = runtimes.container_pid(runtime, name)
        except AgentError as e:
            errors.append(str(e))
            continue
        if pid:
            return Found(runtime, name, pid), errors
    return None, errors


def served_path(host: Host, m: ModelConfig, pid: int) -> str:
    """The model file as its server opened it: in a container, where it is
    mounted (the agent's: a fixed place; the operator's: its --model)."""
    if m.kind == "image":
        return containerargs.model_path(m.path)
    if m.kind == "container" and pid:
        with contextlib.suppress(HostError):
            cmd = (host.read_optional(f"/proc/{pid}/cmdline") or "").split("\0")
            return serverargs.value(cmd[1:], "-m", "--model") or m.path
    return m.path
