"""The unprivileged user the model servers run as (llama-server@.service), and
whether that user can read a model file.

The packages create the user with systemd-sysusers
(/usr/lib/sysusers.d/hugepage-agent.conf). The agent reads the user from the
host's /etc/passwd and /etc/group (under the root prefix), and checks a model
file's permissions the way the kernel would: search permission on every
directory on the way and read permission on the file, by owner, group or
others. A file with an ACL is not judged (the ACL may allow what the mode
bits do not). The sandbox hides /tmp, /var/tmp and /dev/shm from the
servers, so a model there cannot be read either."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from hugepage_agent.host import Host

SERVER_USER = "hugepage-llama"
HIDDEN = ("/tmp/", "/var/tmp/", "/dev/shm/")  # PrivateTmp=yes, PrivateDevices=yes


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    groups: frozenset[int]


def lookup(host: Host, name: str = SERVER_USER) -> User | None:
    """The user from the host's passwd and group files, or None."""
    passwd = host.read_optional("/etc/passwd") or ""
    for line in passwd.splitlines():
        f = line.split(":")
        if len(f) >= 4 and f[0] == name and f[2].isdigit() and f[3].isdigit():
            uid, gid = int(f[2]), int(f[3])
            groups = {gid}
            for gl in (host.read_optional("/etc/group") or "").splitlines():
                g = gl.split(":")
                if len(g) >= 4 and g[2].isdigit() and name in g[3].split(","):
                    groups.add(int(g[2]))
            return User(name, uid, gid, frozenset(groups))
    return None


def _allowed(st: os.stat_result, user: User, bit: int) -> bool:
    if st.st_uid == user.uid:
        return bool(st.st_mode & (bit << 6))
    if st.st_gid in user.groups:
        return bool(st.st_mode & (bit << 3))
    return bool(st.st_mode & bit)


def _has_acl(path: str) -> bool:
    try:
        return "system.posix_acl_access" in os.listxattr(path)
    except OSError:
        return False


def cannot_read(path: str, user: User) -> str | None:
    """Why `user` cannot read the file at `path` from inside the server's
    sandbox, or None when it can (or when an ACL makes it impossible to tell)."""
    real = os.path.realpath(path)
    for hidden in HIDDEN:
        if real.startswith(hidden):
            return (f"{real} is under {hidden.rstrip('/')}, which the server's sandbox "
                    "replaces with a private, empty one")
    parts = real.strip("/").split("/")
    steps = [("/" + "/".join(parts[:i]), 1, "searchable") for i in range(len(parts))]
    for path_, bit, what in [*steps, (real, 4, "readable")]:
        try:
            st = os.stat(path_)
        except OSError as e:
            return f"{path_}: {e.strerror or e}"
        if not _allowed(st, user, bit) and not _has_acl(path_):
            return (f"{path_} is not {what} by {user.name} (mode {stat.filemode(st.st_mode)}, "
                    f"owner uid {st.st_uid}, group gid {st.st_gid})")
    return None
