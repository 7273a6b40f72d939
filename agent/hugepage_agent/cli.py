"""Command line: argument parsing, logging set-up, and the one place where
errors become exit codes (0 as configured, 1 degraded, 2 error)."""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import NoReturn

from hugepage_agent import __version__, config
from hugepage_agent.errors import (
    AgentError,
    ConfigError,
    HostError,
    PermissionDenied,
    printable,
)
from hugepage_agent.host import Host
from hugepage_agent.statusdoc import SCHEMA_VERSION, StatusDoc
from hugepage_agent.systemd import Systemd, bus_available

EXIT_OK = 0
EXIT_DEGRADED = 1
EXIT_ERROR = 2

log = logging.getLogger("hugepage_agent")

DESCRIPTION = """\
Reserve explicit huge pages for llama.cpp model servers and serve what they
read from them: weights, repacked weights, KV cache and compute buffers.

commands:
  apply    compute the pool the configured models' servers need (weights, KV
           cache for their -c, compute buffers), set THP, reserve the pool
           (compacting memory and retrying while short), persist it in
           /etc/sysctl.d/80-hugepage-agent.conf; --dry-run shows it per model
  status   show pools, THP, persistence and, per model, what its server holds
           in huge pages and what not; exit 0 when all is as configured, 1
           when degraded
  exec     run a program with the huge page wrapper preloaded (llama-server
           gets the load mode the units get unless its arguments choose)
  daemon   what hugepage-agent.service runs: apply, write the model units'
           drop-ins, start the models, then serve D-Bus and watch memory events
  reload   make the running daemon re-read its configuration (systemctl reload
           runs this); exit 2 when the new configuration is invalid and the
           daemon goes on with the old one
  release  give the pool back to the kernel and remove the persisted size
  purge-files
           remove every file the agent wrote at run time (what the package's
           removal runs; --list shows them)
  run-model NAME
           what llama-server@NAME.service runs: exec llama-server with the
           model's path and arguments from the file the agent wrote
  prepare-model NAME
           what llama-server@NAME.service (and llama-container@NAME) runs
           first, as root: choose this start's load mode from what the page
           cache holds of the model; for an image, refuse one the wrapper
           library would not load into (its glibc too old, or musl)
  run-container NAME
           what llama-container@NAME.service runs for a model with image:
           podman (or docker) run of the image, the model file and the
           wrapper library mounted read-only, the server unprivileged
  remove-container NAME
           what llama-container@NAME.service runs when it stops
  compose NAME
           print the docker-compose override (volumes, environment) that has
           an existing Compose service, the model's container, served from
           huge pages

exit codes: 0 as configured, 1 degraded (pool short, a model not wholly in
huge pages), 2 error or invalid input.
Configuration: /etc/hugepage-agent/config.toml and config.d/*.toml (see
config/example.toml).
"""


def _setup_logging(verbose: int) -> None:
    level = logging.INFO
    env = os.environ.get("SYSTEMD_LOG_LEVEL", "").lower()
    if env in ("debug", "7"):
        level = logging.DEBUG
    elif env in ("warning", "4", "err", "3", "error"):
        level = logging.WARNING
    if verbose:
        level = logging.DEBUG
    logging.basicConfig(stream=sys.stderr, level=level, format="%(levelname)s: %(message)s")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE",
                        help="read only this file instead of /etc/hugepage-agent/config.toml "
                             "and config.d/")
    common.add_argument("--root", metavar="DIR", default="/",
                        help="prefix for every /proc, /sys, /etc and /run path (testing)")
    common.add_argument("-v", "--verbose", action="count", default=0, help="debug logging")

    p = argparse.ArgumentParser(prog="hugepage-agent", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"hugepage-agent {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    a = sub.add_parser("apply", parents=[common], help="reserve the pool, set THP, persist",
                       description="Reserve the configured huge page pool, set THP and "
                                   "persist the pool size. Needs root (except --dry-run).")
    a.add_argument("--dry-run", action="store_true",
                   help="show what would change (files, pool, THP) and change nothing")
    s = sub.add_parser("status", parents=[common], help="show whether the host is as configured",
                       description="Show pools, THP, persistence and models. Readable by "
                                   "anyone. Exit 0 as configured, 1 degraded, 2 error.")
    s.add_argument("--json", action="store_true",
                   help=f"machine-readable output (schema v{SCHEMA_VERSION})")
    s.add_argument("--wait", type=float, metavar="SECONDS", default=0,
                   help="wait up to SECONDS for the host to be as configured (models still "
                        "loading, say) before reporting")
    s.add_argument("--prometheus", action="store_true",
                   help="Prometheus text format (what the daemon writes for node_exporter)")
    e = sub.add_parser("exec", parents=[common], help="run a program with the wrapper preloaded",
                       description="Run CMD with the huge page wrapper preloaded and configured "
                                   "from [wrapper], for hosts or containers without systemd.")
    e.add_argument("--numa", metavar="PLACEMENT",
                   help="where its huge pages go on a host with several NUMA nodes: auto "
                        "(the default: the nodes of its CPUs, or the memory policy it already "
                        "has, from numactl), interleave, off, or nodes such as 1 or 0-1")
    e.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ARGS",
                   help="the program and its arguments")
    sub.add_parser("daemon", parents=[common], help="run as the boot-time service",
                       description="Apply, write drop-ins and per-model files, start the "
                                   "models marked autostart, notify systemd, then serve "
                                   "D-Bus and react to memory events, SIGHUP (reload) and "
                                   "SIGTERM (exit, leaving the pool as it is).")
    sub.add_parser("reload", parents=[common], help="make the daemon re-read its configuration",
                   description="Ask the running daemon (over D-Bus) to re-read its "
                               "configuration, and wait for the result. Needs root.")
    sub.add_parser("release", parents=[common], help="give the pool back to the kernel",
                       description="Set the configured pool to zero (never below the pages "
                                   "in use) and remove the persisted pool size. Needs root.")
    pf = sub.add_parser("purge-files", parents=[common],
                        help="remove every file the agent wrote at run time",
                        description="Remove what the agent wrote while running: the persisted "
                                    "pool (sysctl.d, tmpfiles.d), the metrics file, the "
                                    "drop-ins marked as its own, /var/lib/hugepage-agent and "
                                    "/run/hugepage-agent, and the configuration directories "
                                    "if empty. The package's removal runs it; the pool and "
                                    "THP are left as they are (see release). Needs root.")
    pf.add_argument("--list", action="store_true",
                    help="print what would be removed (KIND PATH per line), remove nothing")
    rm = sub.add_parser("run-model", parents=[common], help="exec llama-server for a model",
                        description="Used by llama-server@.service: exec the configured "
                                    "llama-server with the model's path and arguments.")
    rm.add_argument("name", help="the model name (the unit's instance)")
    pm = sub.add_parser("prepare-model", parents=[common],
                        help="choose how a model's server loads, before it starts",
                        description="Used by llama-server@.service (ExecStartPre=+, as root): "
                                    "measure what the page cache holds of the model file, "
                                    "choose this start's load mode (server.load_mode), drop "
                                    "from the page cache what direct I/O will not use, and "
                                    "record the choice for run-model.")
    pm.add_argument("name", help="the model name (the unit's instance)")
    rc = sub.add_parser("run-container", parents=[common],
                        help="exec the container runtime for a model with image",
                        description="Used by llama-container@.service: exec `podman run` (or "
                                    "docker's) of the model's image, with the model file and "
                                    "the wrapper library mounted read-only, LD_PRELOAD and the "
                                    "wrapper's settings in its environment, the server as the "
                                    "unprivileged user hugepage-llama, on the host's network.")
    rc.add_argument("name", help="the model name (the unit's instance)")
    xc = sub.add_parser("remove-container", parents=[common],
                        help="remove a model's container after its unit stops",
                        description="Used by llama-container@.service (ExecStopPost=): remove "
                                    "the model's container, whatever ended it. Needs root.")
    xc.add_argument("name", help="the model name (the unit's instance)")
    co = sub.add_parser("compose", parents=[common],
                        help="print the Compose override that serves a container from huge pages",
                        description="For a model with container = \"SERVICE\" (an existing "
                                    "Docker Compose service the operator runs): print a "
                                    "docker-compose.override.yml with the wrapper library "
                                    "mounted read-only and LD_PRELOAD and the wrapper's "
                                    "settings in its environment. Changes nothing.")
    co.add_argument("name", help="the model name (or its container's name)")
    return p


def _require_root(host: Host, what: str) -> None:
    if host.is_real and os.geteuid() != 0:
        raise PermissionDenied(f"{what} changes the host and must be run as root "
                               "(try --dry-run, or sudo)")


def _cmd_apply(args: argparse.Namespace, host: Host) -> int:
    from hugepage_agent import apply as apply_mod
    from hugepage_agent import containerstart, execwrap, modelfiles, serveruser

    cfg = config.load(host, args.config)
    if not args.dry_run:
        _require_root(host, "apply")
    _check_preload(host, cfg)
    report = apply_mod.apply(host, cfg, dry_run=args.dry_run)
    print(apply_mod.render(report))
    for name, why in modelfiles.unreadable_models(host, cfg).items():
        print(f"warning: model {name}: its server (user {serveruser.SERVER_USER}) cannot "
              f"read the model: {why}; the agent will not start its unit")
    for warning in modelfiles.exposed_secrets(host, cfg):
        print(f"warning: {warning}")
    refused = containerstart.refused_images(cfg, execwrap.find_library(cfg))
    for why in refused.values():
        print(f"error: {why}; the agent will not start its unit")
    return EXIT_OK if report.met and not refused else EXIT_DEGRADED


def _check_preload(host: Host, cfg: config.Config) -> None:
    """Refuse, before anything changes, a configuration whose servers the
    wrapper library would not load into, or that has models and no library."""
    from hugepage_agent import execwrap, preload

    if not cfg.models:
        return
    library = execwrap.find_library(cfg)
    sd = _local_systemd(host) if any(m.unit for m in cfg.models) else None
    cannot = preload.model_problems(cfg, library, sd.exec_info if sd is not None else None)
    if cannot:
        raise preload.PreloadError("; ".join(cannot))


def _local_systemd(host: Host) -> Systemd | None:
    if not host.is_real or not bus_available():
        return None
    try:
        from hugepage_agent.systemd import system_bus

        return Systemd(system_bus())
    except AgentError as e:
        log.debug("systemd not reachable: %s", e)
        return None


def _collect_status(args: argparse.Namespace, host: Host) -> StatusDoc:
    from hugepage_agent import status

    if host.is_real and args.config is None and bus_available():
        from hugepage_agent.dbus_service import call_status

        data = call_status()  # the daemon's view, when it runs
        if data is not None:
            return data
    cfg = None
    cfg_error = None
    try:
        cfg = config.load(host, args.config)
    except (ConfigError, HostError) as e:
        cfg_error = str(e) + advice(e)
    return status.collect(host, cfg, cfg_error, systemd=_local_systemd(host))


def _cmd_status(args: argparse.Namespace, host: Host) -> int:
    deadline = time.monotonic() + max(0.0, args.wait)
    data = _collect_status(args, host)
    while data["degraded"] and data["config"]["error"] is None and time.monotonic() < deadline:
        time.sleep(0.5)
        data = _collect_status(args, host)
    from hugepage_agent import metrics, status

    if args.prometheus:
        print(metrics.render(data), end="")
    else:
        print(json.dumps(data, indent=2) if args.json else status.render(data))
    if data["config"]["error"] is not None:
        return EXIT_ERROR
    return EXIT_DEGRADED if data["degraded"] else EXIT_OK


def _cmd_exec(args: argparse.Namespace, host: Host) -> int:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    # Each command imports what it needs: exec, run-model and prepare-model run at
    # every server start, and importing status and apply too cost them 70 ms.
    from hugepage_agent import execwrap

    cfg = config.load(host, args.config)
    execwrap.exec_command(cfg, cmd, numa=args.numa)


def _cmd_daemon(args: argparse.Namespace, host: Host) -> int:
    _require_root(host, "the daemon")
    from hugepage_agent import daemon

    return daemon.run(host, args.config)


def _cmd_reload(args: argparse.Namespace, host: Host) -> int:
    _require_root(host, "reload")
    from hugepage_agent.dbus_service import call_reload

    ok, message = call_reload()
    if not ok:
        return die(f"reload failed: {message}")
    print(message)
    return EXIT_OK


def _cmd_release(args: argparse.Namespace, host: Host) -> int:
    from hugepage_agent import release

    cfg = config.load(host, args.config, models_present=False)
    _require_root(host, "release")
    print(release.release(host, cfg))
    return EXIT_OK


def _cmd_purge_files(args: argparse.Namespace, host: Host) -> int:
    from hugepage_agent import purge

    cfg = None
    with contextlib.suppress(AgentError):  # a configuration already gone is no error here
        cfg = config.load(host, args.config, models_present=False)
    items = purge.owned(host, cfg)
    if args.list:
        print("\n".join(it.line() for it in items))
        return EXIT_OK
    _require_root(host, "purge-files")
    for path in purge.remove(host, items):
        print(f"removed {path}")
    return EXIT_OK


def _cmd_run_model(args: argparse.Namespace, host: Host) -> int:
    from hugepage_agent import modelstart

    argv, extra = modelstart.run_command(host, args.name)
    _say_load_mode(args.name, extra)
    _exec(argv, {**os.environ, **extra}, " (set [server] binary)")


def _say_load_mode(name: str, env: dict[str, str]) -> None:
    """What a server's start prints first, into its journal: this start's load mode."""
    from hugepage_agent import loadmode

    if env.get(loadmode.ENV_CHOICE):
        print(f"hugepage-agent: model {name}: load mode {env[loadmode.ENV_CHOICE]}",
              file=sys.stderr, flush=True)


def _exec(argv: list[str], env: dict[str, str], hint: str = "") -> NoReturn:
    log.debug("exec %s", argv)
    try:
        os.execve(argv[0], argv, env)
    except OSError as e:
        raise AgentError(f"cannot run {argv[0]}: {e.strerror or e}{hint}") from e


def _cmd_prepare_model(args: argparse.Namespace, host: Host) -> int:
    from hugepage_agent import modelstart
    from hugepage_agent.preload import PreloadError

    _require_root(host, "prepare-model")
    try:
        choice = modelstart.prepare(host, args.name)
    except PreloadError:
        raise  # fails the unit's start, with the reason
    except Exception as e:  # the units run this without "-": only the check may stop it
        log.warning("model %s: %s; run-model measures itself", args.name, e)
        return EXIT_OK
    if choice is not None:
        print(f"hugepage-agent: model {args.name}: load mode {choice.summary()}",
              file=sys.stderr)
    return EXIT_OK


def _cmd_run_container(args: argparse.Namespace, host: Host) -> int:
    from hugepage_agent import modelstart

    argv, env, choice = modelstart.container_command(host, args.name)
    _say_load_mode(args.name, choice)
    _exec(argv, env)


def _cmd_remove_container(args: argparse.Namespace, host: Host) -> int:
    from hugepage_agent import containerstart, modelstart

    _require_root(host, "remove-container")
    runtime = "podman"
    with contextlib.suppress(AgentError):  # the model may be gone from the configuration
        runtime = modelstart.read_model_file(host, args.name).runtime
    for r in dict.fromkeys((runtime, "podman", "docker")):
        with contextlib.suppress(AgentError):  # not installed, or not running
            if containerstart.remove(r, args.name):
                print(f"hugepage-agent: model {args.name}: removed its {r} container",
                      file=sys.stderr)
    return EXIT_OK


def _cmd_compose(args: argparse.Namespace, host: Host) -> int:
    from hugepage_agent import containerargs, execwrap, footprint, loadmode, numanodes

    cfg = config.load(host, args.config)
    found = [m for m in cfg.models if args.name in (m.name, m.container)]
    if not found:
        raise AgentError(f"no model {args.name!r} in the configuration")
    m = found[0]
    if m.container is None:
        raise AgentError(f"model {m.name} has no container: set model.container to the Compose "
                         "service's container name")
    library = execwrap.find_library(cfg)
    env = execwrap.model_env(execwrap.wrapper_env(cfg, library), m)
    lm = footprint.load_mode(cfg.server.load_mode, loadmode.server_binary(
        cfg.server.binary, m.container), m.path, m.args, cfg.wrapper.min_size)
    print(containerargs.compose_override(m.container, m.name, library, env,
                                         added=lm.added, args=m.args,
                                         numa_policy=numanodes.read_topology(host).multi),
          end="")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _setup_logging(args.verbose)
    host = Host(args.root)
    handlers = {"apply": _cmd_apply, "status": _cmd_status, "exec": _cmd_exec,
                "purge-files": _cmd_purge_files,
                "daemon": _cmd_daemon, "reload": _cmd_reload, "release": _cmd_release,
                "run-model": _cmd_run_model, "prepare-model": _cmd_prepare_model,
                "run-container": _cmd_run_container, "remove-container": _cmd_remove_container,
                "compose": _cmd_compose}
    try:
        return handlers[args.command](args, host)
    except AgentError as e:
        return die(str(e) + advice(e))
    except KeyboardInterrupt:
        return die("interrupted")


CONFIG_DIR = "/etc/hugepage-agent"


def advice(e: AgentError) -> str:
    """What the operator can do about an error, from its kind (the I/O layer
    says only what failed)."""
    cause = e if isinstance(e, HostError) else e.__cause__  # a ConfigError wraps it
    if isinstance(cause, HostError) and cause.errno == errno.EACCES and \
            (cause.path or "").startswith(CONFIG_DIR + "/"):
        return (" (the configuration is readable by root only: run this as root; `status` "
                "asks the daemon, which answers anyone)")
    return ""


def die(message: str) -> int:
    """The one exit path for expected failures: one line on stderr, exit 2."""
    print(f"hugepage-agent: error: {printable(message)}", file=sys.stderr)
    return EXIT_ERROR
