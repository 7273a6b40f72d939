"""The C library through ctypes, with the signatures the agent calls: memory
mappings (pagecache's mincore, pretouch's populate) and raw system calls
(cachestat, mbind) that Python has no wrapper for."""

from __future__ import annotations

import ctypes
import functools

MAP_FAILED = ctypes.c_void_p(-1).value


@functools.lru_cache(maxsize=1)
def libc() -> ctypes.CDLL:
    lib = ctypes.CDLL(None, use_errno=True)
    lib.mmap.restype = ctypes.c_void_p
    lib.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                         ctypes.c_int, ctypes.c_long]
    lib.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    lib.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    lib.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    lib.memset.restype = ctypes.c_void_p
    return lib


def mapped(addr: int | None) -> bool:
    """Whether mmap's result is a mapping (not NULL or MAP_FAILED)."""
    return addr is not None and addr != MAP_FAILED
