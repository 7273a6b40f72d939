"""What of a model file sits in the page cache, and dropping it.

Measured with cachestat(2) (Linux 6.5 and later: exact, in one call, without
mapping the file), else mincore(2) over a mapping of the file. The kernel
answers both truthfully only to a caller that owns the file, may write it, or
has CAP_FOWNER: cachestat refuses the others (EPERM) and mincore reports to
them only the pages they map themselves, which would read as "not cached".
So residency() returns None for such a caller instead of a wrong figure; the
agent measures from root (the unit's privileged ExecStartPre, `status` as
root). A read with RWF_NOWAIT is no probe either: a miss starts the read it
declines to wait for, so the probes fill the cache they measure.

Dropping is POSIX_FADV_DONTNEED, which needs only a read-only descriptor;
pages other processes map, or dirty ones, stay.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import platform
from dataclasses import dataclass

from hugepage_agent.libc import libc, mapped

_CACHESTAT = {"x86_64": 451, "aarch64": 451, "ppc64le": 451, "s390x": 451, "riscv64": 451}


@dataclass(frozen=True)
class Residency:
    size: int  # the file's size
    cached: int  # bytes of it in the page cache

    @property
    def share(self) -> float:
        return self.cached / self.size if self.size else 1.0


class _Range(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _Stat(ctypes.Structure):
    _fields_ = [("nr_cache", ctypes.c_uint64), ("nr_dirty", ctypes.c_uint64),
                ("nr_writeback", ctypes.c_uint64), ("nr_evicted", ctypes.c_uint64),
                ("nr_recently_evicted", ctypes.c_uint64)]




def _cachestat(fd: int, size: int) -> int | None:
    """Cached bytes by cachestat(2), or None where the kernel lacks it or refuses."""
    nr = _CACHESTAT.get(platform.machine())
    if nr is None:
        return None
    rng, st = _Range(0, size), _Stat()
    if libc().syscall(ctypes.c_long(nr), ctypes.c_uint(fd), ctypes.byref(rng),
                     ctypes.byref(st), ctypes.c_uint(0)) != 0:
        return None  # ENOSYS (before 6.5), EPERM (not the owner), EOPNOTSUPP
    return min(size, int(st.nr_cache) * os.sysconf("SC_PAGE_SIZE"))


CAP_FOWNER = 3


def _may_know(st: os.stat_result, fd: int) -> bool:
    """Whether the kernel tells this process the truth about the file's cache."""
    if os.geteuid() == st.st_uid:
        return True
    if os.access(f"/proc/self/fd/{fd}", os.W_OK, effective_ids=True):
        return True
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_FOWNER & 1)
    except (OSError, ValueError):
        pass
    return False


def _mincore(fd: int, size: int) -> int:
    """Cached bytes by mincore(2) over a mapping of the file, 1 GiB at a time."""
    lib = libc()
    page = os.sysconf("SC_PAGE_SIZE")
    chunk = 1 << 30
    cached = 0
    for off in range(0, size, chunk):
        n = min(chunk, size - off)
        addr = lib.mmap(None, n, mmap.PROT_READ, mmap.MAP_SHARED, fd, off)
        if not mapped(addr):
            raise OSError(ctypes.get_errno(), "mmap failed")
        try:
            vec = ctypes.create_string_buffer((n + page - 1) // page)
            if lib.mincore(addr, n, vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore failed")
            # bit 0 of each byte: resident (the others are reserved); counted in C
            cached += vec.raw.translate(_RESIDENT_BIT).count(1) * page
        finally:
            lib.munmap(addr, n)
    return min(size, cached)


_RESIDENT_BIT = bytes(b & 1 for b in range(256))


def residency_fd(fd: int) -> Residency | None:
    """None when the kernel would not tell this process the truth."""
    size = os.fstat(fd).st_size
    if size == 0:
        return Residency(0, 0)
    exact = _cachestat(fd, size)
    if exact is not None:
        return Residency(size, exact)
    if not _may_know(os.fstat(fd), fd):
        return None
    return Residency(size, _mincore(fd, size))


def residency(path: str) -> Residency | None:
    """None when the file cannot be opened by this process."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        return residency_fd(fd)
    except OSError:  # a system call filter (EPERM), a file without a page cache (EINVAL)
        return None
    finally:
        os.close(fd)


def drop(path: str) -> bool:
    """Drop the file's clean, unmapped pages from the page cache."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
