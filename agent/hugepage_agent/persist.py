"""Persistence across reboots: /etc/sysctl.d/80-hugepage-agent.conf for
vm.nr_hugepages, and /etc/tmpfiles.d/80-hugepage-agent.conf for what only
sysfs can set (another page size, per NUMA node). Rendering and conflict
finding are pure; writes are atomic through the Host.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass

from hugepage_agent import __version__, consts
from hugepage_agent.host import Host
from hugepage_agent.plan import Plan
from hugepage_agent.pools import knob_path

SYSCTL_FILE = "/etc/sysctl.d/80-hugepage-agent.conf"
TMPFILES_FILE = "/etc/tmpfiles.d/80-hugepage-agent.conf"
SYSCTL_KEY = "vm.nr_hugepages"
# systemd-sysctl's search path, highest priority first for files of one name.
SYSCTL_DIRS = ("/etc/sysctl.d", "/run/sysctl.d", "/usr/local/lib/sysctl.d", "/usr/lib/sysctl.d",
               "/lib/sysctl.d")
SYSCTL_CONF = "/etc/sysctl.conf"


def header(what: str) -> str:
    return (consts.generated_line(__version__, f"for {what}") +
            "# Do not edit: it is rewritten by `hugepage-agent apply` and the daemon.\n"
            "# Change /etc/hugepage-agent/config.toml instead.\n")


@dataclass(frozen=True)
class FileChange:
    path: str
    old: str | None
    new: str | None  # None: the file is removed

    @property
    def changed(self) -> bool:
        return self.old != self.new

    def diff(self) -> str:
        return "".join(difflib.unified_diff(
            (self.old or "").splitlines(keepends=True), (self.new or "").splitlines(keepends=True),
            fromfile=self.path if self.old is not None else "/dev/null",
            tofile=self.path if self.new is not None else "/dev/null"))


@dataclass(frozen=True)
class Conflict:
    file: str
    line: int
    value: str
    overrides: bool  # applied after ours, so it wins at boot


def render_sysctl(plan: Plan, default_kb: int) -> str:
    text = header("the huge page pool to reserve at boot")
    if plan.page_size_kb == default_kb:
        text += f"{SYSCTL_KEY} = {plan.target}\n"
    else:
        text += (f"# The {plan.page_size_kb} kB pool has no sysctl; it is set in "
                 f"{TMPFILES_FILE}.\n")
    return text


def render_tmpfiles(host: Host, plan: Plan, default_kb: int) -> str | None:
    lines = []
    if plan.page_size_kb != default_kb and not plan.per_node:
        lines.append(f"w {knob_path(host, plan.page_size_kb)} - - - - {plan.target}")
    for node, pages in plan.per_node:
        lines.append(f"w {knob_path(host, plan.page_size_kb, node)} - - - - {pages}")
    if not lines:
        return None
    return header("huge page pools that only sysfs can set") + "\n".join(lines) + "\n"


def plan_files(host: Host, plan: Plan, default_kb: int) -> list[FileChange]:
    return [
        FileChange(SYSCTL_FILE, host.read_optional(SYSCTL_FILE), render_sysctl(plan, default_kb)),
        FileChange(TMPFILES_FILE, host.read_optional(TMPFILES_FILE),
                   render_tmpfiles(host, plan, default_kb)),
    ]


def write_files(host: Host, changes: list[FileChange]) -> None:
    for c in changes:
        if not c.changed:
            continue
        if c.new is None:
            host.remove(c.path)
        else:
            host.write_atomic(c.path, c.new)


def parse_sysctl(text: str, key: str) -> list[tuple[int, str]]:
    """(line number, value) of every assignment of key; '/' separators and '-' accepted."""
    out = []
    for i, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        k, sep, v = line.partition("=")
        if not sep:
            continue
        k = k.strip().lstrip("-").replace("/", ".")
        if k == key:
            out.append((i, v.strip()))
    return out


def sysctl_files(host: Host) -> list[str]:
    """The files systemd-sysctl applies, in order; /etc/sysctl.conf (procps) last."""
    by_name: dict[str, str] = {}
    for d in reversed(SYSCTL_DIRS):
        for p in host.glob(f"{d}/*.conf"):
            by_name[os.path.basename(p)] = p
    ordered = [by_name[n] for n in sorted(by_name)]
    if host.exists(SYSCTL_CONF):
        ordered.append(SYSCTL_CONF)
    return ordered


def find_conflicts(host: Host) -> list[Conflict]:
    files = sysctl_files(host)
    ours = files.index(SYSCTL_FILE) if SYSCTL_FILE in files else None
    out = []
    seen_real: set[str] = set()
    for i, f in enumerate(files):
        if f == SYSCTL_FILE:
            continue
        real = os.path.realpath(host.path(f))
        if real in seen_real:  # Debian's 99-sysctl.conf -> ../sysctl.conf
            continue
        seen_real.add(real)
        text = host.read_optional(f) or ""
        for line, value in parse_sysctl(text, SYSCTL_KEY):
            out.append(Conflict(f, line, value, overrides=ours is None or i > ours))
    return out


def persisted_value(host: Host) -> int | None:
    text = host.read_optional(SYSCTL_FILE)
    if text is None:
        return None
    values = parse_sysctl(text, SYSCTL_KEY)
    try:
        return int(values[-1][1]) if values else None
    except ValueError:
        return None

