"""Reading the journal: the wrapper's own words about a process (its one line
per mapping says 'loaded ...' or why it fell back), and a unit's last lines."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass

from hugepage_agent import consts

PREFIX = f"{consts.LOG_PREFIX}["


def _journalctl(*args: str, timeout: float = 5) -> list[str]:
    """journalctl's lines (none when there is no journal, or it fails)."""
    journalctl = shutil.which("journalctl")
    if journalctl is None:
        return []
    try:
        out = subprocess.run([journalctl, "--no-pager", *args], capture_output=True, text=True,
                             timeout=timeout, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return out.splitlines()


def wrapper_lines(pid: int, unit: str | None = None, own_pid: int | None = None) -> list[str]:
    """The wrapper's lines logged by a process (empty when there is no journal).
    `own_pid`: the pid the process knows itself by, in a container's pid
    namespace (the wrapper prints that one, and the runtime's client, not the
    process, hands its lines to the unit's journal)."""
    said = own_pid if own_pid is not None else pid
    match = ([f"_PID={pid}"] if said == pid or not unit else []) + \
        ([f"_SYSTEMD_UNIT={unit}"] if unit else [])
    return [line for line in _journalctl("-o", "cat", *match)
            if line.startswith(f"{PREFIX}{said}]")]


def unit_tail(unit: str, invocation: str, lines: int) -> tuple[str, ...]:
    """A unit's last journal lines, of one start (its invocation id) if given."""
    match = [f"_SYSTEMD_INVOCATION_ID={invocation}"] if invocation else []
    out = _journalctl("-o", "short-iso", "-n", str(lines), "-u", unit, *match, timeout=10)
    return tuple(line for line in out if line and not line.startswith("--"))


@dataclass(frozen=True)
class Fallback:
    """One fallback line of the wrapper (its format: wrapper.h, hpw_log_fallback)."""
    pid: int
    subject: str  # the file's path, or "allocation of N MiB"
    why: str  # "huge page pool short: need 16 x 2 MiB pages, 3 free"
    now: str  # what it did instead
    reason: str  # one of consts.REASONS

    @property
    def allocation(self) -> bool:
        return self.subject.startswith("allocation of ")


_FALLBACK_RE = re.compile(r"^" + re.escape(consts.LOG_PREFIX) + r"\[(\d+)\]: (.*); ([^;]*) "
                          r"reason=([a-z-]+)$")
# how each WHY begins (alloc.c, takeover.c): a path may itself hold ": "
_WHY_STARTS = ("huge page pool short", "cgroup hugetlb limit", "no hugetlb memfd", "too many",
               "size too large", "huge pages could not", "read failed",
               "faulting in huge pages failed", "node ")


def parse_fallback(line: str) -> Fallback | None:
    """The fallback a line reports (by its reason= token), or None."""
    m = _FALLBACK_RE.match(line)
    if m is None or m.group(4) not in consts.REASONS:
        return None
    head = m.group(2)  # SUBJECT: WHY
    starts = [i for i in (head.find(": " + w) for w in _WHY_STARTS) if i >= 0]
    if starts:
        subject, why = head[:min(starts)], head[min(starts) + 2:]
    else:  # a why of another wording: the subject holds no ": "
        subject, _, why = head.partition(": ")
    return Fallback(int(m.group(1)), subject, why, m.group(3), m.group(4))


def fallback_reason(lines: list[str], model_path: str) -> str | None:
    """'huge page pool short: need 151 x 2 MiB pages, 3 free' from the last
    fallback of the model file; else the allocations that fell back
    ('allocation of 256.0 MiB: huge page pool short: need 128 x 2 MiB pages, 4 free')."""
    found = [f for f in map(parse_fallback, lines) if f is not None]
    for f in reversed(found):
        if f.subject == model_path:
            return f.why
    allocs = [f"{f.subject}: {f.why}" for f in found if f.allocation]
    if allocs:
        more = f" (and {len(allocs) - 1} more)" if len(allocs) > 1 else ""
        return allocs[0] + more
    return None
