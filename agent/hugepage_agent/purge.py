"""What the agent wrote at run time, for `hugepage-agent purge-files`: the
persisted pool (sysctl.d, tmpfiles.d), the metrics file, the drop-ins marked
as its own, its state directories. The modules that write those files name
them; this one only gathers the names, so that the package's maintainer
scripts remove exactly what was written, and nothing an operator wrote.

The Debian package removes the files after prerm and runs `postrm purge`
after that, when this command is gone: prerm saves the list (`--list`) in
LIST_FILE, and postrm removes what it names."""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass

from hugepage_agent import consts, metrics, modelfiles, persist, unitfiles
from hugepage_agent.config import DEFAULT_TEXTFILE_DIR, Config
from hugepage_agent.errors import HostError
from hugepage_agent.host import Host

STATE_DIR = "/var/lib/hugepage-agent"
LIST_FILE = f"{STATE_DIR}/purge-files.list"
CONFIG_DIRS = ("/etc/hugepage-agent/config.d", "/etc/hugepage-agent")


@dataclass(frozen=True)
class Owned:
    kind: str  # "file" (removed), "tree" (removed whole), "dir" (removed if empty)
    path: str

    def line(self) -> str:
        return f"{self.kind} {self.path}"


def _metrics_dirs(host: Host, cfg: Config | None) -> list[str]:
    dirs = [DEFAULT_TEXTFILE_DIR]
    text = host.read_optional(modelfiles.AGENT_DROPIN)
    if text is not None:
        found = modelfiles.agent_dropin_metrics_dir(text)
        if found:
            dirs.append(found)
    if cfg is not None and cfg.metrics.textfile_dir:
        dirs.append(cfg.metrics.textfile_dir.rstrip("/"))
    return list(dict.fromkeys(dirs))


def owned(host: Host, cfg: Config | None) -> list[Owned]:
    """Everything the agent wrote that exists now, in the order to remove it."""
    out = [Owned("file", p) for p in (persist.SYSCTL_FILE, persist.TMPFILES_FILE)
           if host.exists(p)]
    out += [Owned("file", f"{d}/{metrics.FILE_NAME}") for d in _metrics_dirs(host, cfg)
            if host.exists(f"{d}/{metrics.FILE_NAME}")]
    for path in host.glob(f"{unitfiles.UNIT_DIR}/*.d/{unitfiles.DROPIN_NAME}"):
        text = host.read_optional(path) or ""
        if text.startswith(consts.GENERATED):
            out += [Owned("file", path), Owned("dir", os.path.dirname(path))]
    out += [Owned("tree", d) for d in (STATE_DIR, consts.RUN_DIR) if host.exists(d)]
    out += [Owned("dir", d) for d in CONFIG_DIRS if host.exists(d)]
    return out


def remove(host: Host, items: list[Owned]) -> list[str]:
    """Remove them (never following a link out of a tree); what was removed."""
    for it in items:  # refused before anything is removed
        if it.kind == "tree" and host.path(it.path).is_symlink():
            raise HostError(f"{it.path} is a symbolic link: not removing it (nothing was "
                            "removed)", path=it.path)
    done = []
    for it in items:
        p = host.path(it.path)
        if it.kind == "file":
            if host.remove(it.path):
                done.append(it.path)
        elif it.kind == "tree":
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(p)
                done.append(it.path)
        else:
            with contextlib.suppress(OSError):  # not empty: someone else's files stay
                p.rmdir()
                done.append(it.path)
    return done
