"""Touching the pages a reservation adds, once, before the models start.

In a virtual machine whose host backs guest memory lazily (free page
reporting, ballooning: many cloud VMs), a huge page the guest has just
reserved from memory it had freed is not backed yet: the first write to it is
a fault on the host, for every 4 KiB of it. Measured on this machine kind, a
5 GB load into freshly reserved pages took 17.5 s, and 2.8 s once the pool had
been touched. The agent pays that once, right after the reservation and
before the models start: it maps the pages the reservation added (the pool's
free list is last in, first out, so a mapping made at once takes exactly
those), populates it (MADV_POPULATE_WRITE, from several threads) and unmaps
it; the pages go back to the pool, backed. At the first apply after boot every
free page is touched (the boot's reservation came from sysctl.d, unseen).

On bare metal it gains nothing and costs the zeroing (about 0.1 s per GiB),
so `reserve.pretouch = "auto"` does it only in a virtual machine
(`/proc/cpuinfo`'s hypervisor flag, /sys/hypervisor, or the DMI vendor).
"""

from __future__ import annotations

import ctypes
import json
import logging
import mmap
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from hugepage_agent import consts, pools
from hugepage_agent.errors import HostError
from hugepage_agent.host import Host
from hugepage_agent.libc import libc, mapped

log = logging.getLogger(__name__)

STATE_FILE = consts.PRETOUCH_STATE
BOOT_ID = "/proc/sys/kernel/random/boot_id"
MAP_HUGETLB = 0x40000
MAP_HUGE_SHIFT = 26
MADV_POPULATE_WRITE = 23
SYS_MBIND = {"x86_64": 237, "aarch64": 235}
MPOL_BIND = 2
MAX_THREADS = 8
VM_VENDORS = ("QEMU", "KVM", "VMware", "Xen", "Microsoft Corporation", "innotek", "Amazon EC2",
              "Google", "Red Hat", "OpenStack", "DigitalOcean", "Hetzner", "Parallels",
              "Bochs", "BHYVE", "Alibaba Cloud", "Oracle Corporation")


@dataclass(frozen=True)
class Pretouch:
    pages: int  # touched
    seconds: float
    skipped: str | None = None  # why nothing was touched
    failed: str | None = None  # why fewer than planned were touched

    def text(self) -> str:
        if self.skipped is not None:
            return f"pre-touch: skipped ({self.skipped})"
        line = f"pre-touched {self.pages} pages in {self.seconds:.2f} s"
        return line + (f" ({self.failed})" if self.failed else "")

    def to_json(self) -> dict[str, object]:
        return {"pages": self.pages, "seconds": round(self.seconds, 3),
                "skipped": self.skipped, "failed": self.failed}


def virtual_machine(host: Host) -> str | None:
    """What says this is a virtual machine, or None."""
    cpuinfo = host.read_optional("/proc/cpuinfo") or ""
    for line in cpuinfo.splitlines():
        if line.startswith("flags") and "hypervisor" in line.split(":", 1)[-1].split():
            return "the CPU flag hypervisor"
    kind = (host.read_optional("/sys/hypervisor/type") or "").strip()
    if kind:
        return f"/sys/hypervisor/type is {kind}"
    vendor = (host.read_optional("/sys/class/dmi/id/sys_vendor") or "").strip()
    if any(vendor.startswith(v) for v in VM_VENDORS):
        return f"the DMI vendor is {vendor}"
    return None


def touch(page_kb: int, pages: int, node: int | None = None,
          threads: int = 0) -> tuple[int, str | None]:
    """Map `pages` huge pages of `page_kb` (from `node`), write each once,
    unmap them. Returns (pages touched, why fewer)."""
    if pages <= 0:
        return 0, None
    lib = libc()
    page = page_kb * 1024
    length = pages * page
    flags = (mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_HUGETLB
             | (page.bit_length() - 1) << MAP_HUGE_SHIFT)
    addr = lib.mmap(None, length, mmap.PROT_READ | mmap.PROT_WRITE, flags, -1, 0)
    if not mapped(addr):
        return 0, f"mmap of {pages} pages: {os.strerror(ctypes.get_errno())}"
    try:
        if node is not None:
            nr = SYS_MBIND.get(os.uname().machine)
            mask = ctypes.c_ulong(1 << node)
            if nr is None or lib.syscall(ctypes.c_long(nr), ctypes.c_void_p(addr),
                                          ctypes.c_ulong(length), ctypes.c_int(MPOL_BIND),
                                          ctypes.byref(mask), ctypes.c_ulong(node + 2),
                                          ctypes.c_uint(0)) != 0:
                return 0, f"cannot bind the pages to node {node}"
        n = max(1, min(threads or os.cpu_count() or 1, MAX_THREADS, pages))
        errors: list[str] = []

        def work(first: int, count: int) -> None:
            start = addr + first * page
            if lib.madvise(start, count * page, MADV_POPULATE_WRITE) == 0:
                return
            err = ctypes.get_errno()
            if err != 22:  # EINVAL: a kernel before 5.14; write a byte per page instead
                errors.append(os.strerror(err))
                return
            for i in range(count):
                lib.memset(start + i * page, 0, 1)

        share = -(-pages // n)
        workers = [threading.Thread(target=work, args=(i * share, min(share, pages - i * share)))
                   for i in range(n) if i * share < pages]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        if errors:
            return 0, f"populating: {errors[0]}"
        return pages, None
    finally:
        lib.munmap(addr, length)


def _boot_id(host: Host) -> str:
    try:
        return (host.read_optional(BOOT_ID) or "").strip()
    except HostError:
        return ""


def _touched_this_boot(host: Host, page_kb: int) -> bool:
    try:
        data = json.loads(host.read_optional(STATE_FILE) or "{}")
    except (ValueError, HostError):
        return False
    return isinstance(data, dict) and data.get(str(page_kb)) == _boot_id(host) != ""


def _remember(host: Host, page_kb: int) -> None:
    try:
        data = json.loads(host.read_optional(STATE_FILE) or "{}")
    except (ValueError, HostError):
        data = {}
    if not isinstance(data, dict):
        data = {}
    data[str(page_kb)] = _boot_id(host)
    try:
        host.write_atomic(STATE_FILE, json.dumps(data) + "\n")
    except HostError as e:
        log.warning("could not record the pre-touch: %s", e)


def after_reserve(host: Host, setting: str, page_kb: int,
                  gains: Sequence[tuple[int | None, int]]) -> Pretouch:
    """Touch what a reservation added: `gains` is (node or None, pages added)
    per pool. At the first reservation of a boot, every free page."""
    if setting == "never":
        return Pretouch(0, 0.0, skipped="reserve.pretouch = never")
    if not host.is_real:
        return Pretouch(0, 0.0, skipped="not the running kernel (--root)")
    why_vm = virtual_machine(host)
    if setting == "auto" and why_vm is None:
        return Pretouch(0, 0.0, skipped="not a virtual machine: on bare metal it would only "
                                        "cost time (reserve.pretouch = auto)")
    t0 = time.monotonic()
    first = not _touched_this_boot(host, page_kb)
    state = pools.read_pool(host, page_kb)
    available = max(0, state.free - (state.reserved or 0))
    plan = [(None, available)] if first else [(n, g) for n, g in gains if g > 0]
    if not any(count for _, count in plan):
        return Pretouch(0, 0.0, skipped="no pages were added since the last pre-touch")
    touched, failed = 0, None
    for node, count in plan:
        got, why = touch(page_kb, min(count, available - touched), node)
        touched += got
        failed = failed or why
    if failed is None:
        _remember(host, page_kb)
    result = Pretouch(touched, time.monotonic() - t0, failed=failed)
    what = "every free page (the first reservation since boot)" if first else \
        "the pages the reservation added"
    if failed:
        log.warning("%s of %s: %s", result.text(), what, failed)
    elif touched:
        log.info("%s: %s, so that the first model start does not pay a host fault per page "
                 "(%s)", result.text(), what, why_vm or "reserve.pretouch = always")
    return result
