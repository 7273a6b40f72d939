"""Benchmark: reserving a 2 MiB pool in fragmented memory, in one run.

A helper holds about 10 GiB as 4 KiB pages interleaved with as many freed
ones (caches dropped first so that runs compare); with fresh fragmentation
for each contender and run, it compares the pages reached and the seconds
taken by:
  - a plain write of the target to /proc/sys/vm/nr_hugepages (`echo N >`)
  - `hugeadm --pool-pages-min 2MB:N --hard` (Debian's libhugetlbfs-bin)
  - `hugepage-agent apply` with its default timeout
and prints the median of each. Needs root; restores nr_hugepages.
  sudo ~/.cache/hugepage-agent/venv/bin/python -m bench.reserve_fragmented [--target 5200]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MEMHOLD = REPO / "wrapper_c" / "build" / "tests" / "memhold"
NR = Path("/proc/sys/vm/nr_hugepages")


def plain_write(target: int, _cfg: Path) -> None:
    NR.write_text(str(target))


def hugeadm(target: int, _cfg: Path) -> None:
    subprocess.run(["hugeadm", "--pool-pages-min", f"2MB:{target}", "--hard"],
                   capture_output=True, check=False)


def agent(_target: int, cfg: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO / "agent"))
    subprocess.run([sys.executable, "-m", "hugepage_agent", "apply", "--config", str(cfg)],
                   env=env, capture_output=True, check=False)


def one_run(contender: object, target: int, hold_mib: int, cfg: Path) -> tuple[int, float]:
    NR.write_text("0")
    Path("/proc/sys/vm/drop_caches").write_text("3")
    holder = subprocess.Popen([str(MEMHOLD), str(hold_mib), "--fragment"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        Path("/proc/sys/vm/nr_overcommit_hugepages").write_text("0")
        t0 = time.monotonic()
        contender(target, cfg)  # type: ignore[operator]
        secs = time.monotonic() - t0
        return int(NR.read_text()), secs
    finally:
        holder.kill()
        holder.wait()
        NR.write_text("0")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", type=int, default=5200)
    ap.add_argument("--hold-gib", type=float, default=10.0)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 2
    subprocess.run(["make", "-s", "-C", str(REPO / "wrapper_c"), "all"], check=True)
    contenders = [("plain write (echo N >)", plain_write), ("agent apply", agent)]
    if shutil.which("hugeadm"):
        contenders.insert(1, ("hugeadm --hard", hugeadm))
    else:
        print("hugeadm not found (apt-get install libhugetlbfs-bin): left out")
    saved = NR.read_text().strip()
    # hugeadm --hard also sets the overcommit (surplus) limit: keep the host as it was
    knobs = [Path("/proc/sys/vm/nr_overcommit_hugepages"), Path("/proc/sys/vm/min_free_kbytes")]
    saved_knobs = {k: k.read_text().strip() for k in knobs}
    tmp = Path(tempfile.mkdtemp())
    cfg = tmp / "config.toml"
    cfg.write_text(f"[pool]\nsize = {args.target}\n[thp]\nenabled = \"keep\"\n"
                   "defrag = \"keep\"\n")
    sysctl = Path("/etc/sysctl.d/80-hugepage-agent.conf")
    saved_sysctl = sysctl.read_bytes() if sysctl.exists() else None
    results: dict[str, list[tuple[int, float]]] = {n: [] for n, _ in contenders}
    try:
        for run in range(args.runs):
            for name, fn in contenders:
                r = one_run(fn, args.target, int(args.hold_gib * 1024), cfg)
                results[name].append(r)
                print(f"run {run + 1}: {name}: {r[0]} pages in {r[1]:.2f} s", flush=True)
    finally:
        NR.write_text(saved)
        for k, v in saved_knobs.items():
            k.write_text(v)
        shutil.rmtree(tmp)
        if saved_sysctl is None:
            sysctl.unlink(missing_ok=True)
        else:
            sysctl.write_bytes(saved_sysctl)
    print(f"\nTarget {args.target} x 2 MiB pages, {args.hold_gib:g} GiB held as interleaved "
          f"4 KiB pages, median of {args.runs} runs (fresh fragmentation each)")
    print(f"{'contender':<26} {'pages':>6} {'of target':>9} {'seconds':>8}   runs")
    med = {}
    for name, _ in contenders:
        pages = statistics.median(p for p, _ in results[name])
        secs = statistics.median(s for _, s in results[name])
        med[name] = pages
        runs = ", ".join(str(p) for p, _ in results[name])
        print(f"{name:<26} {pages:>6.0f} {pages / args.target:>8.0%} {secs:>8.2f}   {runs}")
    base = med["plain write (echo N >)"]
    print(f"agent apply vs plain write: {med['agent apply'] / max(base, 1):.2f}x the pages "
          "(target >= 2x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
