"""Command line: argument parsing, logging set-up, and the one place where
errors become exit codes (0 as configured, 1 degraded, 2 error)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from hugepage_agent import __version__, config, execwrap, status
from hugepage_agent import apply as apply_mod
from hugepage_agent.errors import AgentError, ConfigError, PermissionDenied
from hugepage_agent.host import Host

EXIT_OK = 0
EXIT_DEGRADED = 1
EXIT_ERROR = 2

log = logging.getLogger("hugepage_agent")

DESCRIPTION = """\
Reserve explicit huge pages for llama.cpp model servers and serve their model
files from them.

commands:
  apply    compute the pool the configured models need, set THP, reserve the
           pool (compacting memory and retrying while short), persist it in
           /etc/sysctl.d/80-hugepage-agent.conf
  status   show pools, THP, persistence and models; exit 0 when all is as
           configured, 1 when degraded
  exec     run a program with the huge page wrapper preloaded

exit codes: 0 as configured, 1 degraded (pool short), 2 error or invalid input.
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
    s.add_argument("--json", action="store_true", help="machine-readable output (schema v1)")
    e = sub.add_parser("exec", parents=[common], help="run a program with the wrapper preloaded",
                       description="Run CMD with the huge page wrapper preloaded and configured "
                                   "from [wrapper], for hosts or containers without systemd.")
    e.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ARGS",
                   help="the program and its arguments")
    return p


def _require_root(host: Host, what: str) -> None:
    if host.is_real and os.geteuid() != 0:
        raise PermissionDenied(f"{what} changes the host and must be run as root "
                               "(try --dry-run, or sudo)")


def _cmd_apply(args: argparse.Namespace, host: Host) -> int:
    cfg = config.load(host, args.config)
    if not args.dry_run:
        _require_root(host, "apply")
    report = apply_mod.apply(host, cfg, dry_run=args.dry_run)
    print(apply_mod.render(report))
    return EXIT_OK if report.met else EXIT_DEGRADED


def _cmd_status(args: argparse.Namespace, host: Host) -> int:
    cfg = None
    cfg_error = None
    try:
        cfg = config.load(host, args.config)
    except ConfigError as e:
        cfg_error = str(e)
    data = status.collect(host, cfg, cfg_error)
    print(json.dumps(data, indent=2) if args.json else status.render(data))
    if cfg_error is not None:
        return EXIT_ERROR
    return EXIT_DEGRADED if data["degraded"] else EXIT_OK


def _cmd_exec(args: argparse.Namespace, host: Host) -> int:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    cfg = config.load(host, args.config)
    execwrap.exec_command(cfg, cmd)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _setup_logging(args.verbose)
    host = Host(args.root)
    handlers = {"apply": _cmd_apply, "status": _cmd_status, "exec": _cmd_exec}
    try:
        return handlers[args.command](args, host)
    except AgentError as e:
        return die(str(e))
    except KeyboardInterrupt:
        return die("interrupted")


def die(message: str) -> int:
    """The one exit path for expected failures: one line on stderr, exit 2."""
    print(f"hugepage-agent: error: {message}", file=sys.stderr)
    return EXIT_ERROR
