"""`hugepage-agent exec`: run a program with the wrapper preloaded, for hosts
or containers without systemd. Also the one place that turns the [wrapper]
configuration into the library's environment (the drop-ins use it too)."""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NoReturn

from hugepage_agent import consts, footprint, loadmode, modelstart, numanodes, pools, preload
from hugepage_agent.config import DEFAULT_LIBRARY, Config, ModelConfig
from hugepage_agent.errors import AgentError, ConfigError
from hugepage_agent.host import Host

LIBRARY_NAME = consts.LIBRARY_NAME


def library_candidates() -> list[str]:
    checkout = Path(__file__).resolve().parents[2] / "wrapper_c" / "build" / LIBRARY_NAME
    return [DEFAULT_LIBRARY, "/usr/local/lib/hugepage-agent/" + LIBRARY_NAME, str(checkout)]


def find_library(cfg: Config) -> str:
    if cfg.wrapper.library:
        if not os.path.isfile(cfg.wrapper.library):
            raise ConfigError(cfg.origin("wrapper.library"), "wrapper.library",
                              f"'{cfg.wrapper.library}' does not exist")
        return cfg.wrapper.library
    for c in library_candidates():
        if os.path.isfile(c):
            return c
    raise AgentError("the wrapper library was not found (looked in "
                     f"{', '.join(library_candidates())}); build it with `make -C wrapper_c` "
                     "or set [wrapper] library")


def wrapper_env(cfg: Config, library: str) -> dict[str, str]:
    """The environment variables that configure the library."""
    w = cfg.wrapper
    env = {
        "LD_PRELOAD": library,
        consts.ENV_MIN_SIZE: str(w.min_size),
        consts.ENV_ALLOC_MIN_SIZE: str(w.alloc_min_size),
        consts.ENV_PAGE_SIZE: w.page_size,
        consts.ENV_STRICT: "1" if w.strict else "0",
        consts.ENV_LOG: w.log,
        # a file copy leaves what it read in the page cache only when asked to
        consts.ENV_KEEP_CACHE: "1" if cfg.server.page_cache == "keep" else "0",
    }
    if w.threads:
        env[consts.ENV_THREADS] = str(w.threads)
    return env


def model_env(env: Mapping[str, str], m: ModelConfig) -> dict[str, str]:
    """The library's environment for one model: the [wrapper] settings and its
    NUMA placement (left out when it is the library's default, auto)."""
    out = dict(env)
    value = numanodes.wrapper_value(m)
    if value is not None:
        out[consts.ENV_NUMA] = value
    return out


def configured_env(cfg: Config) -> dict[str, str] | None:
    """wrapper_env with the library the configuration names or the installed
    one; None when there is none (what a drop-in sets cannot be told then)."""
    try:
        return wrapper_env(cfg, find_library(cfg))
    except AgentError:
        return None


def merged_env(base: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    env = dict(base)
    env.update(extra)
    old = base.get("LD_PRELOAD", "")
    parts = [p for p in preload.listed(old) if p != extra["LD_PRELOAD"]]
    env["LD_PRELOAD"] = " ".join([extra["LD_PRELOAD"], *parts])
    return env


def numa_option(value: str, online: Sequence[int]) -> str:
    """`exec --numa`: the library's HUGEPAGE_WRAPPER_NUMA, checked."""
    if value in ("auto", "interleave", "off"):
        return value
    if not re.fullmatch(r"[0-9]{1,4}(-[0-9]{1,4})?(,[0-9]{1,4}(-[0-9]{1,4})?)*", value):
        raise AgentError(f"exec: --numa {value!r}: expected auto, interleave, off or NUMA "
                         "nodes such as 1 or 0-1")
    for node in pools.parse_node_list(value):
        if node not in (online or [0]):
            raise AgentError(f"exec: --numa {value}: NUMA node {node} does not exist on this "
                             f"host (online: {', '.join(map(str, online or [0]))})")
    return value


def exec_command(cfg: Config, argv: Sequence[str], numa: str | None = None) -> NoReturn:
    if not argv:
        raise AgentError("exec: no command given (usage: hugepage-agent exec -- CMD ARGS...)")
    env = merged_env(os.environ, wrapper_env(cfg, find_library(cfg)))
    if numa is not None:
        env[consts.ENV_NUMA] = numa_option(numa, pools.online_nodes(Host("/")))
    argv = list(argv)
    if loadmode.is_llama_server(argv[0]):
        # as for the model units: weights into huge page heap buffers, unless chosen
        binary = shutil.which(argv[0]) or argv[0]
        path = modelstart.model_path_in(argv[1:])
        lm = (footprint.load_mode(cfg.server.load_mode, binary, path, argv[1:],
                                  cfg.wrapper.min_size) if path is not None else
              loadmode.resolve(cfg.server.load_mode, binary, argv[1:]))
        if path is not None:
            choice = modelstart.choose(lm, path, cfg.server.page_cache)
            argv[1:1] = choice.args
            env.update(modelstart.choice_env(choice, path))
            print(f"hugepage-agent: load mode {choice.summary()}", file=sys.stderr, flush=True)
        else:
            argv[1:1] = lm.added
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as e:
        raise AgentError(f"exec: cannot run {argv[0]}: {e.strerror or e}") from e
