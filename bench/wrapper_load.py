"""Benchmark: load a 4 GiB file from the page cache into memory, three ways,
in one run, and print seconds, GiB/s and the page cache left behind.

  - hugepage-wrapper: llama.cpp's mmap under LD_PRELOAD=libhugepage-wrapper.so
  - seed: anonymous MAP_HUGETLB memory, one thread, one pread per chunk
  - plain mmap: MAP_SHARED | MAP_POPULATE (llama.cpp's default)

Needs root (it sizes the 2 MiB pool and restores it). Usage:
  sudo ~/.cache/hugepage-agent/venv/bin/python -m bench.wrapper_load [--size-gib 4] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "wrapper_c" / "build"
LIBRARY = BUILD / "libhugepage-wrapper.so"
LOADBENCH = BUILD / "tests" / "loadbench"
MAPTOOL = BUILD / "tests" / "maptool"
NR = Path("/proc/sys/vm/nr_hugepages")


def run(mode: str, path: Path, preload: bool) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUGEPAGE_WRAPPER")}
    if preload:
        env["LD_PRELOAD"] = str(LIBRARY)
        env["HUGEPAGE_WRAPPER_LOG"] = "quiet"
    out = subprocess.run([str(LOADBENCH), mode, str(path)], env=env, capture_output=True,
                         text=True, check=True).stdout
    return {k: float(v) for k, v in (line.split("=") for line in out.split())}


def warm_cache(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(64 << 20):
            pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gib", type=float, default=4.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root: sizes the huge page pool", file=sys.stderr)
        return 2
    subprocess.run(["make", "-s", "-C", str(REPO / "wrapper_c"), "all"], check=True)
    size = int(args.size_gib * (1 << 30))
    path = Path(args.dir) / "hugepage-bench.gguf"
    subprocess.run([str(MAPTOOL), "mkfile", str(path), str(size)], check=True)
    saved = NR.read_text().strip()
    need = -(-size // (2 << 20)) + 4
    try:
        NR.write_text(str(need))
        if int(NR.read_text()) < need:
            print(f"the kernel gave only {NR.read_text().strip()} of {need} 2 MiB pages",
                  file=sys.stderr)
            return 1
        contenders = [("hugepage-wrapper", "plain", True), ("seed (1 thread pread)", "seed", False),
                      ("plain mmap+POPULATE", "plain", False)]
        warm_cache(path)
        run("seed", path, False)  # warm-up: first touch of the pool's memory
        results: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in contenders}
        for _ in range(args.runs):
            for name, mode, preload in contenders:
                warm_cache(path)
                results[name].append(run(mode, path, preload))
        print(f"Loading a {args.size_gib:g} GiB file from the page cache "
              f"({os.cpu_count()} CPUs), median of {args.runs} runs")
        print(f"{'contender':<24} {'seconds':>8} {'GiB/s':>7} {'page cache after':>17}")
        med = {}
        for name, _, _ in contenders:
            secs = statistics.median(r["seconds"] for r in results[name])
            cache = statistics.median(r["cache_kb"] for r in results[name]) / (1 << 20)
            med[name] = secs
            print(f"{name:<24} {secs:>8.3f} {args.size_gib / secs:>7.2f} {cache:>13.2f} GiB")
        speedup = med["seed (1 thread pread)"] / med["hugepage-wrapper"]
        print(f"hugepage-wrapper vs seed: {speedup:.2f}x the load speed (target >= 1.3x)")
    finally:
        NR.write_text(saved)
        path.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
