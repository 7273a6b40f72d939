"""Reading the journal: the wrapper's own words about a process (its one line
per mapping says 'loaded ...' or why it fell back), and a unit's last lines."""

from __future__ import annotations

import shutil
import subprocess

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


def wrapper_lines(pid: int, unit: str | None = None) -> list[str]:
    """The wrapper's lines logged by a process (empty when there is no journal)."""
    match = [f"_PID={pid}"] + ([f"_SYSTEMD_UNIT={unit}"] if unit else [])
    return [line for line in _journalctl("-o", "cat", *match)
            if line.startswith(f"{PREFIX}{pid}]")]


def unit_tail(unit: str, invocation: str, lines: int) -> tuple[str, ...]:
    """A unit's last journal lines, of one start (its invocation id) if given."""
    match = [f"_SYSTEMD_INVOCATION_ID={invocation}"] if invocation else []
    out = _journalctl("-o", "short-iso", "-n", str(lines), "-u", unit, *match, timeout=10)
    return tuple(line for line in out if line and not line.startswith("--"))


def fallback_reason(lines: list[str], model_path: str) -> str | None:
    """'huge page pool short: need 151 x 2 MiB pages, 3 free' from the last line
    about the model file; else the allocations that fell back, from their lines
    ('allocation of 256.0 MiB: huge page pool short: need 128 x 2 MiB pages, 4 free')."""
    for line in reversed(lines):
        _, _, rest = line.partition(f"]: {model_path}: ")
        if rest and not rest.startswith("loaded"):
            return rest.split("; falling back")[0].split("; not falling back")[0]
    allocs = [line.partition("]: ")[2].split("; served by libc")[0]
              for line in lines if "]: allocation of " in line and "; served by libc" in line]
    if allocs:
        more = f" (and {len(allocs) - 1} more)" if len(allocs) > 1 else ""
        return allocs[0] + more
    return None
