"""Transparent Huge Pages: read the state, plan and apply the configured one.

Leaves THP alone when the kernel command line sets `transparent_hugepage=`
(the operator decided at boot), as tuned does. The per-size mTHP knobs
(kernel >= 6.8) are covered too: with the top knob at "never", a size set to
"always" or "madvise" would still be in use.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hugepage_agent.host import Host

THP_DIR = "/sys/kernel/mm/transparent_hugepage"
CMDLINE = "/proc/cmdline"
_SELECTED_RE = re.compile(r"\[([^\]]+)\]")
_SIZE_RE = re.compile(r"hugepages-(\d+)kB$")


@dataclass(frozen=True)
class ThpState:
    enabled: str | None
    defrag: str | None
    sizes: tuple[tuple[int, str], ...]  # (size in kB, mode) per mTHP size
    cmdline: str | None  # the value of transparent_hugepage= on the kernel command line


@dataclass(frozen=True)
class Change:
    path: str
    old: str | None
    new: str


def parse_selected(text: str) -> str | None:
    """'always [madvise] never' -> 'madvise'."""
    m = _SELECTED_RE.search(text)
    return m.group(1) if m else (text.strip() or None)


def parse_cmdline_thp(cmdline: str) -> str | None:
    for word in cmdline.split():
        if word == "--":
            break
        if word.startswith("transparent_hugepage="):
            return word.split("=", 1)[1]
    return None


def read_state(host: Host) -> ThpState:
    def mode(path: str) -> str | None:
        text = host.read_optional(path)
        return parse_selected(text) if text is not None else None

    sizes = []
    for d in host.glob(f"{THP_DIR}/hugepages-*kB"):
        m = _SIZE_RE.search(d)
        value = mode(f"{d}/enabled")
        if m and value is not None:
            sizes.append((int(m.group(1)), value))
    return ThpState(
        enabled=mode(f"{THP_DIR}/enabled"),
        defrag=mode(f"{THP_DIR}/defrag"),
        sizes=tuple(sorted(sizes)),
        cmdline=parse_cmdline_thp(host.read_optional(CMDLINE) or ""),
    )


def plan_changes(state: ThpState, enabled: str, defrag: str) -> list[Change]:
    """The knob writes that bring the state to the configured one."""
    if state.cmdline is not None or state.enabled is None:
        return []
    out: list[Change] = []
    if enabled != "keep" and state.enabled != enabled:
        out.append(Change(f"{THP_DIR}/enabled", state.enabled, enabled))
    if defrag != "keep" and state.defrag is not None and state.defrag != defrag:
        out.append(Change(f"{THP_DIR}/defrag", state.defrag, defrag))
    if enabled == "never":
        for kb, value in state.sizes:
            if value in ("always", "madvise"):
                out.append(Change(f"{THP_DIR}/hugepages-{kb}kB/enabled", value, "never"))
    return out


def matches(state: ThpState, enabled: str, defrag: str) -> bool:
    """Whether THP is as configured (or left alone on purpose)."""
    if state.cmdline is not None or state.enabled is None:
        return True
    return not plan_changes(state, enabled, defrag)


def apply_changes(host: Host, changes: list[Change]) -> None:
    for c in changes:
        host.write_knob(c.path, c.new)
