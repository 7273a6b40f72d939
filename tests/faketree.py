"""Fake /proc, /sys and /etc trees for unit tests of the agent (no root needed)."""

from __future__ import annotations

import os
from pathlib import Path

from hugepage_agent.host import Host

GIB_KB = 1024 * 1024


def _write(root: Path, rel: str, text: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def make_tree(root: Path, *, mem_total_kb: int = 24 * GIB_KB, nodes: tuple[int, ...] = (0,),
              cmdline: str = "console=ttyS0 quiet", thp: str = "madvise",
              pools: dict[int, int] | None = None, mthp: bool = True) -> Host:
    pools = pools if pools is not None else {2048: 0, 1048576: 0}
    _write(root, "proc/meminfo",
           f"MemTotal:       {mem_total_kb} kB\nMemFree:        {mem_total_kb - 1000000} kB\n"
           "HugePages_Total:       0\nHugepagesize:       2048 kB\n")
    _write(root, "proc/cmdline", cmdline + "\n")
    _write(root, "proc/sys/vm/compact_memory", "")
    _write(root, "proc/sys/vm/drop_caches", "0\n")
    for kb, n in pools.items():
        d = f"sys/kernel/mm/hugepages/hugepages-{kb}kB"
        for name, v in (("nr_hugepages", n), ("free_hugepages", n), ("resv_hugepages", 0),
                        ("surplus_hugepages", 0), ("nr_overcommit_hugepages", 0)):
            _write(root, f"{d}/{name}", f"{v}\n")
        for node in nodes:
            nd = f"sys/devices/system/node/node{node}/hugepages/hugepages-{kb}kB"
            for name, v in (("nr_hugepages", 0), ("free_hugepages", 0),
                            ("surplus_hugepages", 0)):
                _write(root, f"{nd}/{name}", f"{v}\n")
    for i, node in enumerate(nodes):
        _write(root, f"sys/devices/system/node/node{node}/compact", "")
        # two CPUs a node, memory split evenly
        _write(root, f"sys/devices/system/node/node{node}/cpulist", f"{2 * i}-{2 * i + 1}\n")
        _write(root, f"sys/devices/system/node/node{node}/meminfo",
               f"Node {node} MemTotal:       {mem_total_kb // len(nodes)} kB\n")
    _write(root, "sys/devices/system/node/online",
           ",".join(str(n) for n in nodes) + "\n")
    _write(root, "sys/devices/system/node/has_memory",
           ",".join(str(n) for n in nodes) + "\n")
    (root / "proc/sys/vm/nr_hugepages").symlink_to(
        os.path.relpath(root / "sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages",
                        root / "proc/sys/vm"))
    modes = ["always", "madvise", "never"]
    _write(root, "sys/kernel/mm/transparent_hugepage/enabled",
           " ".join(f"[{m}]" if m == thp else m for m in modes) + "\n")
    _write(root, "sys/kernel/mm/transparent_hugepage/defrag",
           "always defer defer+madvise [madvise] never\n")
    if mthp:
        _write(root, "sys/kernel/mm/transparent_hugepage/hugepages-64kB/enabled",
               "[always] inherit madvise never\n")
        _write(root, "sys/kernel/mm/transparent_hugepage/hugepages-2048kB/enabled",
               "always [inherit] madvise never\n")
    (root / "etc/sysctl.d").mkdir(parents=True, exist_ok=True)
    (root / "run").mkdir(exist_ok=True)
    return Host(root)


def snapshot(root: Path) -> dict[str, str]:
    """Every file (and link) under root with its contents, for 'nothing changed' checks."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + dirnames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            out[rel] = (p.read_bytes().decode("utf-8", "surrogateescape") if p.is_file()
                        else "<dir>")
    return out
