"""The wrapper's own words about a process, from the journal: its one line
per mapping says 'loaded ...' or why it fell back."""

from __future__ import annotations

import shutil
import subprocess

PREFIX = "hugepage-wrapper["


def wrapper_lines(pid: int, unit: str | None = None) -> list[str]:
    """The wrapper's lines logged by a process (empty when there is no journal)."""
    journalctl = shutil.which("journalctl")
    if journalctl is None:
        return []
    cmd = [journalctl, "--no-pager", "-o", "cat", f"_PID={pid}"]
    if unit:
        cmd.append(f"_SYSTEMD_UNIT={unit}")
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=5,
                             check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line for line in out.splitlines() if line.startswith(f"{PREFIX}{pid}]")]


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
