"""Command lines and files for llama.cpp servers in containers. Pure functions.

A model with `image` runs in llama-container@NAME.service as
`RUNTIME run ... IMAGE --model /models/FILE ARGS`: the image's entrypoint is
llama-server (as in llama.cpp's official server image). Into the container go,
read-only, the model file at a fixed path and the wrapper library, with
LD_PRELOAD and the wrapper's settings in its environment. The server runs as
the servers' unprivileged user, with no capabilities and no new privileges,
on the host's network (its --host and --port mean what they mean for the
other models). Podman puts the payload in a sub-cgroup of the unit
(--cgroups=split), so that `status` finds it there; Docker's containers are
found by name.

`hugepage-agent compose NAME` prints the same for an existing Docker Compose
service (a model with `container`): its volumes and environment.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hugepage_agent import __version__, consts, loadmode

MODEL_DIR = "/models"  # where the model file is mounted in the container
LIBRARY = f"/opt/hugepage-agent/{consts.LIBRARY_NAME}"  # and the wrapper library
NAME_PREFIX = "hugepage-agent-"  # the container of model NAME: hugepage-agent-NAME
# the environment a container gets from the unit's (its drop-in's and run-container's)
FORWARD = (*consts.ENV_NAMES, loadmode.ENV_CHOICE)


def container_name(model: str) -> str:
    return f"{NAME_PREFIX}{model}"


def model_path(host_path: str) -> str:
    """The model file as the server in the container sees it."""
    return f"{MODEL_DIR}/{os.path.basename(host_path)}"


def container_env(env: Mapping[str, str]) -> dict[str, str]:
    """What of the unit's environment the container gets: LD_PRELOAD naming the
    library where it is mounted, the wrapper's settings, this start's load
    choice; a file the wrapper drops from the page cache, as mounted."""
    out = {k: v for k, v in env.items() if k in FORWARD}
    if env.get("LD_PRELOAD"):
        out["LD_PRELOAD"] = LIBRARY
    drop = out.get(consts.ENV_DROP_CACHE)
    if drop:
        out[consts.ENV_DROP_CACHE] = model_path(drop)
    return out


@dataclass(frozen=True)
class RunSpec:
    """What `run-container` needs from the model file and the host."""
    runtime: str  # "podman" or "docker"
    image: str
    name: str  # the model's name
    model: str  # the model file on the host
    args: tuple[str, ...]  # the server's, after --model
    runtime_args: tuple[str, ...] = ()
    library: str | None = None  # the wrapper library on the host; None: not preloaded
    user: tuple[int, int] | None = None  # uid, gid; None: the image's user
    groups: tuple[int, ...] = ()  # the user's supplementary groups
    split: bool = True  # podman: the payload in a sub-cgroup of the unit (cgroup v2 only)
    cpuset: tuple[str, str] | None = None  # a pinned model's CPUs and memory nodes
    numa_policy: bool = False  # let the wrapper set memory policies (a host of several nodes)


def run_argv(spec: RunSpec, runtime_path: str, env: Mapping[str, str],
             added: Sequence[str] = ()) -> list[str]:
    """`RUNTIME run` for a model's unit: in the foreground, removed when it
    stops, replacing a container of the same name left behind. `added`: this
    start's load mode arguments; `env`: the unit's environment."""
    argv = [runtime_path, "run", "--rm", "--name", container_name(spec.name),
            "--network=host", "--cap-drop=all", "--security-opt=no-new-privileges",
            "--read-only", "--tmpfs=/tmp", "--pull=never",
            "--label", f"net.hugepageagent.model={spec.name}",
            "--mount", _bind(spec.model, model_path(spec.model))]
    if spec.runtime == "podman":
        # a container of the same name is replaced; the payload in a
        # sub-cgroup of the unit's, where status looks, conmon in the unit's
        argv.append("--replace")
        if spec.split:
            argv.append("--cgroups=split")
    if spec.cpuset is not None:  # the unit's AllowedCPUs= does not reach docker's containers
        if spec.cpuset[0]:
            argv.append(f"--cpuset-cpus={spec.cpuset[0]}")
        argv.append(f"--cpuset-mems={spec.cpuset[1]}")
    if spec.numa_policy and spec.runtime == "docker":
        # Docker's seccomp profile allows mbind and set_mempolicy only with
        # CAP_SYS_NICE, and the wrapper places every huge page with them
        argv.append("--cap-add=SYS_NICE")
    if spec.user is not None:
        argv += ["--user", f"{spec.user[0]}:{spec.user[1]}"]
        for g in spec.groups:
            argv += ["--group-add", str(g)]
    if spec.library is not None:
        argv += ["--mount", _bind(spec.library, LIBRARY)]
    for key, value in sorted(container_env(env).items()):
        argv += ["--env", f"{key}={value}"]
    argv += [*spec.runtime_args, "--", spec.image,
             "--model", model_path(spec.model), *added, *spec.args]
    return argv


def _bind(source: str, target: str) -> str:
    """A read-only bind mount, in --mount's syntax (CSV: a comma or a quote in
    a path would need quoting; the callers' paths have none, see check_path)."""
    return f"type=bind,source={source},target={target},readonly"


def check_path(path: str) -> str | None:
    """Why a host path cannot be mounted with --mount; None when it can."""
    if any(c in path for c in ',"\n'):
        return f"{path!r} contains a comma, a quote or a newline, which --mount cannot take"
    return None


def compose_override(service: str, model: str, library: str, env: Mapping[str, str], *,
                     added: Sequence[str] = (), args: Sequence[str] = (),
                     numa_policy: bool = False) -> str:
    """A docker-compose.override.yml for an existing service: the library
    mounted read-only, LD_PRELOAD and the wrapper's settings in its
    environment, CAP_SYS_NICE on a host of several NUMA nodes (`numa_policy`),
    and the load mode's arguments: in `command:` when the model's
    args are the service's whole command line (they name --model), else in a
    comment (the service's own command is the operator's). JSON strings are
    YAML strings."""
    lines = [consts.generated_line(__version__, f"for model {model}").rstrip("\n"),
             "# It serves the service's llama-server from huge pages. Keep it beside",
             "# docker-compose.yml as docker-compose.override.yml (docker compose reads",
             "# that by itself), or pass it with -f.",
             "services:", f"  {json.dumps(service)}:", "    volumes:",
             f"      - {json.dumps(f'{library}:{LIBRARY}:ro')}", "    environment:"]
    for key, value in sorted(container_env(env).items()):
        lines.append(f"      {key}: {json.dumps(value)}")
    if numa_policy:  # as run_argv gives docker's containers on such hosts
        lines += ["    # Several NUMA nodes: Docker's seccomp profile lets the wrapper place",
                  "    # its pages (mbind, set_mempolicy) only with CAP_SYS_NICE.",
                  '    cap_add: ["SYS_NICE"]']
    if added and any(a in ("-m", "--model") or a.startswith("--model=") for a in args):
        lines.append(f"    command: {json.dumps([*added, *args])}")
    elif added:
        lines += ["    # The load mode the agent's own units get: add these to the service's",
                  f"    # command, before its other arguments: {' '.join(added)}"]
    return "\n".join(lines) + "\n"
