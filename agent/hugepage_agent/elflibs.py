"""The shared libraries a program loads, found as the dynamic loader finds them,
without running anything.

A llama-server built with shared libraries (a default cmake build, Debian's
own package) keeps its command line options in a library (libllama-common),
not in the binary: to learn which options the server knows, the agent reads
the binary's DT_NEEDED entries and looks each one up the loader's way:
DT_RPATH (when there is no DT_RUNPATH), DT_RUNPATH (with $ORIGIN), the
directories of /etc/ld.so.conf, then the default ones.
"""

from __future__ import annotations

import glob
import os
import struct
from collections.abc import Callable, Iterator

DT_NEEDED, DT_RPATH, DT_RUNPATH, DT_STRTAB = 1, 15, 29, 5
PT_LOAD, PT_DYNAMIC = 1, 2
DEFAULT_DIRS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu",
                "/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
                "/lib64", "/usr/lib64", "/lib", "/usr/lib", "/usr/local/lib")
MAX_DEPTH = 3


class NotElf(ValueError):
    pass


DT_VERDEF, DT_VERNEED = 0x6FFFFFFC, 0x6FFFFFFE


def dynamic_entries(data: bytes) -> tuple[list[str], list[str], list[str]]:
    """(needed, rpath, runpath) of an ELF image. Raises NotElf."""
    entries, _, string = _dynamic(data)
    needed = [string(v) for t, v in entries if t == DT_NEEDED]
    rpath = [p for t, v in entries if t == DT_RPATH for p in string(v).split(":") if p]
    runpath = [p for t, v in entries if t == DT_RUNPATH for p in string(v).split(":") if p]
    return needed, rpath, runpath


def symbol_versions(data: bytes) -> tuple[set[str], set[str]]:
    """(the symbol versions an ELF image needs, those it defines): GLIBC_2.34
    and the like, from DT_VERNEED and DT_VERDEF. Raises NotElf."""
    entries, offset, string = _dynamic(data)
    needed: set[str] = set()
    defined: set[str] = set()
    try:
        at = offset(next((v for t, v in entries if t == DT_VERNEED), 0))
        while at:  # Elf_Verneed, each with its Elf_Vernaux list
            _, cnt, _, aux, nxt = struct.unpack_from("<HHIII", data, at)
            a = at + aux
            for _ in range(cnt):
                _, _, _, name, anext = struct.unpack_from("<IHHII", data, a)
                needed.add(string(name))
                a += anext
            at = at + nxt if nxt else 0
        at = offset(next((v for t, v in entries if t == DT_VERDEF), 0))
        while at:  # Elf_Verdef, its first Elf_Verdaux naming the version
            _, flags, _, cnt, _, aux, nxt = struct.unpack_from("<HHHHIII", data, at)
            if cnt and not flags & 1:  # VER_FLG_BASE: the file's own name
                defined.add(string(struct.unpack_from("<I", data, at + aux)[0]))
            at = at + nxt if nxt else 0
    except struct.error as err:
        raise NotElf("truncated version tables") from err
    return needed, defined


def _segments(data: bytes, e: str, wide: bool
              ) -> tuple[list[tuple[int, int, int]], tuple[int, int] | None]:
    """From the program headers: the loaded segments (vaddr, offset, filesz)
    and the dynamic section (offset, size), None in a static file. Raises
    struct.error when the file is truncated."""
    if wide:
        phoff, = struct.unpack_from(e + "Q", data, 32)
        phentsize, phnum = struct.unpack_from(e + "HH", data, 54)
    else:
        phoff, = struct.unpack_from(e + "I", data, 28)
        phentsize, phnum = struct.unpack_from(e + "HH", data, 42)
    loads: list[tuple[int, int, int]] = []
    dyn: tuple[int, int] | None = None
    for i in range(phnum):
        at = phoff + i * phentsize
        if wide:
            ptype, _, off, vaddr, _, filesz = struct.unpack_from(e + "IIQQQQ", data, at)
        else:
            ptype, off, vaddr, _, filesz = struct.unpack_from(e + "IIIII", data, at)
        if ptype == PT_LOAD:
            loads.append((vaddr, off, filesz))
        elif ptype == PT_DYNAMIC:
            dyn = (off, filesz)
    return loads, dyn


def _dynamic(data: bytes) -> tuple[list[tuple[int, int]], Callable[[int], int],
                                   Callable[[int], str]]:
    """The dynamic section's (tag, value) entries, a map from addresses to file
    offsets (0 for none), and the dynamic string table's lookup."""
    def nothing(_: int) -> str:
        return ""

    if data[:4] != b"\x7fELF" or len(data) < 64:
        raise NotElf("not an ELF file")
    cls, endian = data[4], data[5]
    if cls not in (1, 2) or endian not in (1, 2):
        raise NotElf("unknown ELF class or byte order")
    e = "<" if endian == 1 else ">"
    wide = cls == 2
    try:
        loads, dyn = _segments(data, e, wide)
        if dyn is None:
            return [], lambda _: 0, nothing  # static
        entries: list[tuple[int, int]] = []
        size = 16 if wide else 8
        fmt = e + ("qQ" if wide else "iI")
        for at in range(dyn[0], dyn[0] + dyn[1], size):
            tag, val = struct.unpack_from(fmt, data, at)
            if tag == 0:
                break
            entries.append((tag, val))
    except struct.error as err:
        raise NotElf("truncated ELF file") from err
    def offset(addr: int) -> int:
        return next((off + addr - vaddr for vaddr, off, filesz in loads
                     if vaddr <= addr < vaddr + filesz), 0) if addr else 0

    strtab = next((v for t, v in entries if t == DT_STRTAB), None)
    if strtab is None:
        return entries, offset, nothing
    base = offset(strtab)
    if not base:
        raise NotElf("string table outside the loaded segments")

    def string(at: int) -> str:
        end = data.find(b"\0", base + at)
        return data[base + at:end if end >= 0 else len(data)].decode("utf-8", "replace")

    return entries, offset, string


def ld_so_conf(path: str = "/etc/ld.so.conf", depth: int = 0) -> list[str]:
    """The directories /etc/ld.so.conf names, includes followed."""
    dirs: list[str] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return dirs
    for raw in lines:
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("include ") and depth < 4:
            pattern = line.split(None, 1)[1]
            if not pattern.startswith("/"):
                pattern = os.path.join(os.path.dirname(path), pattern)
            for inc in sorted(glob.glob(pattern)):
                dirs += ld_so_conf(inc, depth + 1)
        elif line.startswith("/"):
            dirs.append(line)
    return dirs


def _expand(entry: str, origin: str) -> str:
    return entry.replace("${ORIGIN}", origin).replace("$ORIGIN", origin)


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(64 << 20)  # the dynamic section sits near the start
    except OSError:
        return None


def libraries(binary: str, root: str = "/") -> Iterator[str]:
    """The paths of the shared libraries `binary` needs, nearest first,
    each once, as far as they can be found (MAX_DEPTH levels); with `root`,
    the loader's directories are looked up in that root (a chroot, a
    container's root; `binary` is a path on this host)."""
    system = ld_so_conf(os.path.join(root, "etc/ld.so.conf")) + list(DEFAULT_DIRS)
    if root not in ("", "/"):
        system = [os.path.join(root, d.lstrip("/")) for d in system]
    seen: set[str] = set()
    queue: list[tuple[str, int, list[str]]] = [(os.path.realpath(binary), 0, [])]
    while queue:
        path, depth, inherited = queue.pop(0)
        data = _read(path)
        if data is None:
            continue
        try:
            needed, rpath, runpath = dynamic_entries(data)
        except NotElf:
            continue
        origin = os.path.dirname(path)
        # DT_RPATH applies when there is no DT_RUNPATH, and to the libraries below
        own_rpath = [_expand(p, origin) for p in rpath] if not runpath else []
        chain = own_rpath + inherited
        dirs = chain + [_expand(p, origin) for p in runpath] + system
        for name in needed:
            found = None
            if "/" in name:
                found = name if os.path.isfile(name) else None
            else:
                found = next((os.path.join(d, name) for d in dirs
                              if os.path.isfile(os.path.join(d, name))), None)
            if found is None:
                continue
            real = os.path.realpath(found)
            if real in seen:
                continue
            seen.add(real)
            yield real
            if depth + 1 < MAX_DEPTH:
                queue.append((real, depth + 1, chain))
