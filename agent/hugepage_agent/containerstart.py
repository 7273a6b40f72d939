"""One start of a model's container (a model with `image`), in
llama-container@NAME.service: the check before it (`prepare-model`, as
root) and the command it runs (`run-container`), and the clean-up after it
(`remove-container`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import NamedTuple

from hugepage_agent import (
    containerargs,
    imagecheck,
    numanodes,
    preload,
    runtimes,
    serveruser,
    unitfiles,
)
from hugepage_agent.config import Config
from hugepage_agent.errors import AgentError
from hugepage_agent.host import Host
from hugepage_agent.unitfiles import ModelFile

log = logging.getLogger(__name__)

CGROUP2_MARK = "/sys/fs/cgroup/cgroup.controllers"  # the unified hierarchy is mounted there


class ImageCheck(NamedTuple):
    image_id: str | None  # None: not in the runtime's local store
    refused: str | None  # why the container must not start, naming the model


def check_image(name: str, runtime: str, image: str, model: str,
                library: str | None) -> ImageCheck:
    """Whether model `name`'s container may start: not when its image is not
    in the runtime's local store, or the wrapper library (None: none
    preloaded) would not load into its server (the two glibc versions named),
    or a path cannot be mounted."""
    image_id = None
    why = _mount_problem(model, library)
    if why is None:
        try:
            image_id, argv = runtimes.image_info(runtime, image)  # raises when not local
            if library is not None:
                why = imagecheck.problem(runtime, image, library, argv)
        except AgentError as e:
            why = str(e)
    return ImageCheck(image_id, f"model {name}: {why}" if why is not None else None)


def _mount_problem(model: str, library: str | None) -> str | None:
    """Why the model file or the library cannot be mounted with --mount."""
    for path in (model, library):
        why = containerargs.check_path(path) if path is not None else None
        if why is not None:
            return why
    return None


def refused_images(cfg: Config, library: str) -> dict[str, str]:
    """The models with image whose container would be refused at its start:
    name -> why (check_image)."""
    out = {}
    for m in cfg.models:
        if m.image is not None:
            why = check_image(m.name, unitfiles.image_runtime(m), m.image, m.path,
                              library).refused
            if why is not None:
                out[m.name] = why
    return out


def run_command(host: Host, name: str, mf: ModelFile, added: tuple[str, ...],
                extra: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """What run-container execs: the runtime's `run` and its environment (the
    unit's, without the wrapper: the runtime's own processes are not served)."""
    assert mf.image is not None
    env = {**os.environ, **extra}
    library = preload.listed(env.get("LD_PRELOAD", ""))
    user = serveruser.lookup(host)
    if user is None:
        raise AgentError(f"the servers' user {serveruser.SERVER_USER} does not exist "
                         "(systemd-sysusers creates it when the agent is installed)")
    why = _mount_problem(mf.model, library[0] if library else None)
    if why is not None:
        raise AgentError(f"model {name}: {why}")
    spec = containerargs.RunSpec(
        runtime=mf.runtime, image=mf.image, name=name, model=mf.model, args=mf.args,
        runtime_args=mf.runtime_args, library=library[0] if library else None,
        user=(user.uid, user.gid), groups=tuple(sorted(user.groups - {user.gid})),
        # podman splits only on the unified hierarchy; elsewhere (cgroup v1 or
        # hybrid) its payload goes to podman's own cgroup, found by name
        split=host.exists(CGROUP2_MARK), cpuset=mf.cpuset,
        numa_policy=numanodes.read_topology(host).multi)
    runtime = runtimes.find(mf.runtime)
    # a container of this name left behind (a crash, a killed unit) would stop
    # docker's run; podman replaces it itself
    if mf.runtime == "docker" and runtimes.remove(mf.runtime, containerargs.container_name(name)):
        log.info("model %s: removed the container a previous start left behind", name)
    argv = containerargs.run_argv(spec, runtime, env, added)
    clean = {k: v for k, v in env.items()
             if k != "LD_PRELOAD" and k not in containerargs.FORWARD}
    return argv, clean


def remove(runtime: str, name: str) -> bool:
    """After the unit stops: its container gone, whatever ended it."""
    return runtimes.remove(runtime, containerargs.container_name(name))
